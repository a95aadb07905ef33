"""What a node sends to each holder of its blocks, in order, with block copies paced.

A holder must apply a block's copy before the owner's later writes of it (the copy is
stored over what the holder has). Copies of many blocks at a join or after a death can be
hundreds of megabytes: sent at once they would fill the socket and starve ingest. So each
holder has one lane: messages leave in the order they were given; a copy leaves only
when the lane's budget (``engine.copy_mb_per_s``, a token bucket) allows it, and whatever
was given after it waits behind it. A lane with nothing waiting sends at once: writes to
holders that are not catching up never wait.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

BURST_SECONDS = 0.25  # a lane's budget fills up to this many seconds of its rate


@dataclass(slots=True)
class _Item:
    msg: Any
    payload: Any
    nbytes: int  # counted against the budget (copies only)
    sent: Callable[[int | None], None] | None  # told the seq it left under (None: not sent)
    unless: Callable[[], bool] | None  # asked when its turn comes: True drops it unsent


class HolderLanes:
    """One ordered lane per holder; ``send(holder, msg, payload) -> seq or None``."""

    def __init__(self, send: Callable[[str, Any, Any], int | None], rate_bytes: float,
                 now: Callable[[], float]) -> None:
        self._send = send
        self.rate = rate_bytes  # 0: copies are not paced
        self._now = now
        self._lanes: dict[str, collections.deque[_Item]] = {}
        self._budget: dict[str, tuple[float, float]] = {}  # holder -> (bytes allowed, at)
        self.copied_bytes = 0
        self.waits = 0  # copies that waited for budget

    def send(self, holder: str, msg: Any, payload: Any = None, *, copy_bytes: int = 0,
             sent: Callable[[int | None], None] | None = None, unless: Callable[[], bool] | None = None) -> None:
        """Queue ``msg`` for ``holder`` behind what waits there (at once if nothing does and,
        for a copy of ``copy_bytes``, the budget allows); ``sent`` hears its seq. ``unless``
        is asked when its turn comes (a marker that what went before it left: a copy ahead
        of it may fail after it was queued)."""
        lane = self._lanes.get(holder)
        if lane is None:
            lane = self._lanes[holder] = collections.deque()
        lane.append(_Item(msg, payload, copy_bytes, sent, unless))
        if len(lane) == 1:
            self._drain(holder, lane)

    def pump(self) -> float | None:
        """Send what the budgets allow; seconds until a lane can send again (None: all empty)."""
        wait: float | None = None
        for holder, lane in list(self._lanes.items()):
            left = self._drain(holder, lane)
            if left is not None:
                wait = left if wait is None else min(wait, left)
            elif not lane:
                del self._lanes[holder]
        return wait

    def waiting(self) -> int:
        return sum(len(lane) for lane in self._lanes.values())

    def waiting_for(self, holder: str) -> int:
        lane = self._lanes.get(holder)
        return len(lane) if lane else 0

    def _drain(self, holder: str, lane: collections.deque[_Item]) -> float | None:
        """Send from the head while allowed; the seconds the head must wait, or None."""
        while lane:
            item = lane[0]
            if item.nbytes and self.rate > 0:
                short = item.nbytes - self._allowed(holder)
                if short > 0:
                    self.waits += 1
                    return short / self.rate
                allowed, at = self._budget[holder]
                self._budget[holder] = (allowed - item.nbytes, at)
            lane.popleft()
            if item.unless is not None and item.unless():
                continue
            seq = self._send(holder, item.msg, item.payload)
            self.copied_bytes += item.nbytes if seq is not None else 0
            if item.sent is not None:
                item.sent(seq)
        return None

    def _allowed(self, holder: str) -> float:
        """Bytes the holder's lane may send now (its bucket, refilled since last asked); a
        copy larger than the burst goes once the bucket is full."""
        now = self._now()
        burst = self.rate * BURST_SECONDS
        allowed, at = self._budget.get(holder, (burst, now))
        allowed = min(burst, allowed + (now - at) * self.rate)
        self._budget[holder] = (allowed, now)
        return allowed if allowed < burst else float("inf")
