"""Lifeguard suspicion timer: how long a suspected member has to refute before it is dead.

A suspicion starts at ``max`` and shrinks towards ``min`` as independent members confirm it
(each by its own failed probe), following memberlist's suspicion.go:

    timeout(c) = max(min, max - (max - min) * log(c + 1) / log(k + 1))

where ``c`` is the number of confirmations so far and ``k`` the number we expect. One lone
accuser (perhaps the slow one) gives the accused the long timeout; when k others agree, the
verdict comes at ``min``. Pure: the caller passes times and reads deadlines.
"""

from __future__ import annotations

import heapq
import math

from corec_node.mesh.membership_config import MembershipConfig

__all__ = ["Suspicion", "Suspicions", "expected_confirmations", "suspicion_timeouts"]


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


class Suspicions:
    """Every suspicion one node holds, by member name, with the verdicts in a heap.

    Half a cluster crashed at once is thousands of suspicions, and a timer wake must not look
    at each: the earliest verdict is the heap's top. A heap entry whose suspicion is gone, or
    whose time has moved since (a confirmation), is skipped when it comes up; a new local
    health (``scale``) retimes them all. Also holds the evidence of refused reconnects
    (membership rule 17), which shortens a suspicion begun while it is fresh.
    """

    __slots__ = ("_by_name", "_cfg", "_fresh_for", "_heap", "_refused", "_refused_timeout", "_scale")

    def __init__(self, config: MembershipConfig, refused_periods: float, fresh_periods: float) -> None:
        """``refused_periods``: probe intervals a suspect has left once a refused reconnect
        shows nobody is left to refute; ``fresh_periods``: how long such evidence counts for
        a suspicion to come."""
        self._cfg = config
        self._by_name: dict[str, Suspicion] = {}
        self._heap: list[tuple[float, str]] = []  # (verdict time, name); stale entries skipped
        self._scale: float = 1  # the local health the heap's times were taken at
        self._refused: dict[str, tuple[int, float]] = {}  # name -> (incarnation, when)
        self._refused_timeout = refused_periods * config.probe_interval
        self._fresh_for = fresh_periods * config.probe_interval

    def __len__(self) -> int:
        return len(self._by_name)

    def get(self, name: str) -> Suspicion | None:
        return self._by_name.get(name)

    def pop(self, name: str) -> Suspicion | None:
        return self._by_name.pop(name, None)

    def start(self, name: str, inc: int, live: float, n: int, accuser: str) -> None:
        """Suspect ``name`` at ``inc`` from ``live`` on, in a cluster of ``n`` live members,
        in place of whatever we suspected of it; a fresh refusal shortens it."""
        cfg = self._cfg
        lo, hi = suspicion_timeouts(cfg.suspicion_mult, cfg.suspicion_max_mult, n, cfg.probe_interval)
        k = expected_confirmations(cfg.indirect_checks, n)
        self._by_name[name] = s = Suspicion(
            inc=inc, start=live, k=k, min_timeout=lo, max_timeout=hi, accuser=accuser
        )
        refused = self._refused.pop(name, None)
        if refused is not None and refused[0] == s.inc and s.start - refused[1] < self._fresh_for:
            s.shorten(self._refused_timeout)
        self._moved(name, s)

    def confirm(self, name: str, accuser: str) -> bool:
        """``accuser`` suspects ``name`` too; True if that was new (the verdict came nearer)."""
        s = self._by_name.get(name)
        if s is None or not s.confirm(accuser):
            return False
        self._moved(name, s)
        return True

    def refused(self, name: str, inc: int, live: float) -> None:
        """``name``'s port refused a reconnect at incarnation ``inc``: its suspicion at that
        incarnation, now or begun soon, has only ``refused_timeout`` left."""
        self._refused[name] = (inc, live)
        s = self._by_name.get(name)
        if s is not None and s.inc == inc:
            s.shorten(self._refused_timeout)
            self._moved(name, s)

    def next_verdict(self, scale: float) -> float:
        """The earliest verdict at local health ``scale``; infinity when nothing is suspected."""
        heap, by_name = self._heap, self._by_name
        if scale != self._scale:
            self._scale = scale
            heap[:] = [(s.deadline(scale), n) for n, s in by_name.items()]
            heapq.heapify(heap)
        while heap:
            at, name = heap[0]
            s = by_name.get(name)
            if s is not None and s.deadline(scale) == at:
                return at
            heapq.heappop(heap)
        return math.inf

    def due(self, live: float, scale: float) -> list[tuple[str, Suspicion]]:
        """Take out the suspicions whose verdict is due at ``live``, in the order they began
        (as a scan of every suspicion would take them)."""
        names: dict[str, None] = {}
        while self.next_verdict(scale) <= live:
            names[heapq.heappop(self._heap)[1]] = None
        if len(names) > 1:
            names = dict.fromkeys(n for n in self._by_name if n in names)
        return [(n, self._by_name.pop(n)) for n in names]

    def _moved(self, name: str, s: Suspicion) -> None:
        heapq.heappush(self._heap, (s.deadline(self._scale), name))
