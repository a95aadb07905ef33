"""Whether the peers named with ``--join`` answered: Serf's ``retry_join``, made visible.

The membership core already pushes to each join address again, backing off, until one
answers (membership rule 11). A node whose seeds never answer would otherwise run as a
cluster of one and say nothing; here it says so, at growing intervals, and, with
``mesh.join_required``, gives up after ``mesh.join_timeout`` seconds and exits. Pure: the
control plane feeds it the addresses still unanswered and its clock, and logs what it says.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

WARN_FIRST = 5.0  # seconds without an answer before the first warning
WARN_MAX = 60.0  # warnings double their interval up to this


@dataclass(frozen=True, slots=True)
class JoinNews:
    """What to log: ``event`` is join_unanswered (warning), join_answered or join_failed."""

    event: str
    addrs: tuple[str, ...]
    waited: float


class JoinWatch:
    __slots__ = ("_addrs", "_started", "_required", "_timeout", "_next_warning", "_warned", "done")

    def __init__(self, addrs: Sequence[str], started: float, *, required: bool = False, timeout: float = 30.0) -> None:
        self._addrs = tuple(dict.fromkeys(addrs))
        self._started = started
        self._required = required
        self._timeout = timeout
        self._next_warning = started + WARN_FIRST
        self._warned = False
        self.done = not self._addrs  # nothing to watch, or some peer answered, or gave up

    def check(self, unanswered: Collection[str], now: float) -> JoinNews | None:
        """``unanswered``: the join addresses the membership still pushes to."""
        if self.done:
            return None
        waited = now - self._started
        answered = tuple(a for a in self._addrs if a not in unanswered)
        if answered:
            self.done = True
            return JoinNews("join_answered", answered, waited) if self._warned else None
        if self._required and waited >= self._timeout:
            self.done = True
            return JoinNews("join_failed", self._addrs, waited)
        if now >= self._next_warning:
            self._warned = True
            self._next_warning = now + min(WARN_MAX, 2 * (now - self._started))
            return JoinNews("join_unanswered", self._addrs, waited)
        return None
