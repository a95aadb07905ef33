"""The "live" clock of membership rule 16: time that counts against others.

It advances with the shell's ``now`` but, between two calls, by at most ``stall_gap`` or
up to the deadline last planned (``plan``), whichever is later: time past that was our
own loop's stall, when Acks we wait for sat unread. Pure: ``now`` is always passed in.
"""

from __future__ import annotations

__all__ = ["LiveClock"]


class LiveClock:
    """``advance(now)`` returns the live time; ``plan(due)`` records the shell's next wake."""

    __slots__ = ("_gap", "_last_now", "_quiet_until", "live")

    def __init__(self, now: float, stall_gap: float | None) -> None:
        self._gap = stall_gap  # None: no guard (a simulator with coarse ticks)
        self.live = now
        self._last_now = now
        self._quiet_until = now  # the shell's planned sleep: sleeping until then is no stall

    def advance(self, now: float) -> float:
        dt = now - self._last_now
        if dt > 0:
            gap = self._gap
            self.live += dt if gap is None else min(dt, max(self._quiet_until - self._last_now, gap))
            self._last_now = now
        return self.live

    def plan(self, due_live: float, now: float, cap: float) -> float:
        """The ``now`` at which live time ``due_live`` comes (never before ``now``, never
        after ``cap``), recorded as the shell's next wake."""
        due = max(now, min(self._last_now + (due_live - self.live), cap))
        self._quiet_until = due
        return due
