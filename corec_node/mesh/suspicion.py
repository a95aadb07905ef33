"""Lifeguard suspicion timer: how long a suspected member has to refute before it is dead.

A suspicion starts at ``max`` and shrinks towards ``min`` as independent members confirm it
(each by its own failed probe), following memberlist's suspicion.go:

    timeout(c) = max(min, max - (max - min) * log(c + 1) / log(k + 1))

where ``c`` is the number of confirmations so far and ``k`` the number we expect. One lone
accuser (perhaps the slow one) gives the accused the long timeout; when k others agree, the
verdict comes at ``min``. Pure: the caller passes times and reads deadlines.
"""

from __future__ import annotations

import math

__all__ = ["Suspicion", "expected_confirmations", "suspicion_timeouts"]


def suspicion_timeouts(
    mult: int, max_mult: int, n: int, probe_interval: float
) -> tuple[float, float]:
    """``(min, max)`` for a cluster of ``n`` live members (memberlist's suspicionTimeout).

    min = mult * max(1, log10(n)) * probe_interval: the log grows the time with the cluster
    (gossip takes longer to reach everyone), and the floor of 1 keeps tiny clusters from a
    timeout shorter than ``mult`` probe intervals. max = max_mult * min.
    """
    scale = max(1.0, math.log10(max(n, 1)))
    lo = mult * scale * probe_interval
    return lo, max_mult * lo


def expected_confirmations(indirect_checks: int, n: int) -> int:
    """k = min(indirect_checks, n - 2): everyone but us and the suspect could confirm."""
    return max(0, min(indirect_checks, n - 2))


class Suspicion:
    """One member's suspicion at one incarnation, as this node holds it."""

    __slots__ = ("_confirmations", "_seen", "_timeout", "inc", "k", "max", "min", "start")

    def __init__(
        self,
        *,
        inc: int,
        start: float,
        k: int,
        min_timeout: float,
        max_timeout: float,
        accuser: str | None,
    ) -> None:
        self.inc = inc
        self.start = start
        self.k = k
        self.min = min_timeout
        self.max = max(max_timeout, min_timeout)
        # the first accuser started the timer: it is not a confirmation of itself
        self._seen: set[str] = {accuser} if accuser is not None else set()
        self._confirmations = 0
        self._timeout: float | None = None  # timeout(), kept until a confirmation or shorten() changes it

    @property
    def confirmations(self) -> int:
        return self._confirmations

    def confirm(self, name: str) -> bool:
        """Count ``name``'s independent suspicion; True if it was new (and counted)."""
        if name in self._seen:
            return False
        self._seen.add(name)
        if self._confirmations >= self.k:
            return False
        self._confirmations += 1
        self._timeout = None
        return True

    def accused_by(self, name: str) -> bool:
        """``name`` suspected this member itself: the first accuser or a confirmation."""
        return name in self._seen

    def shorten(self, timeout: float) -> None:
        """Evidence that nobody is left to refute (membership rule 17): at most ``timeout``."""
        self.min = min(self.min, timeout)
        self.max = min(self.max, timeout)
        self._timeout = None

    def timeout(self) -> float:
        """Read on every wake of a timer-driven shell (``next_deadline``): computed once
        per confirmation."""
        if self._timeout is not None:
            return self._timeout
        if self.k < 1:
            t = self.min  # nobody could confirm: waiting longer would buy nothing
        else:
            frac = math.log(self._confirmations + 1) / math.log(self.k + 1)
            t = max(self.min, self.max - frac * (self.max - self.min))
        self._timeout = t
        return t

    def deadline(self, scale: float = 1.0) -> float:
        """When the suspect becomes dead; ``scale`` is Lifeguard's local health (score + 1)."""
        return self.start + self.timeout() * scale
