"""Ingest flow control (SPEC 9.3): a node that stores the stream slower than it arrives asks
the nodes that republish producer batches to pause, instead of dropping what PUB/SUB
cannot hold back. Pure: no sockets, no clock; the shell passes ``now`` (seconds).

Two sides in one object, since every node is both:

- *Backlog* (receiving). The shell reports the bytes of each stream batch queued
  (``stream_queued``) and taken for storing (``stream_taken``). When the backlog reaches
  ``high`` bytes the node asks for a pause of HOLD_MS, repeated every REFRESH while it
  stays above ``low``; once it is down to ``low`` it ends the pause (FLOW 0). The answer
  of each call is the ``hold_ms`` to publish, or None. The thresholds sit far below the
  queue's own limit: a stall of the node (a tick, a refit) lets a burst pile up in its
  socket before it can ask, and the room between them absorbs that burst.
- *Holds* (republishing). ``peer_flow`` records what a member asked; ``held_until`` says
  until when producer batches should wait (None: not now). A pause lasts at most
  MAX_HOLD_MS after it was received, so a member that died asking holds nothing for long.
  Holding a batch stops the socket it came on, which member probes share, so ``may_hold``
  allows one hold of at most MAX_WAIT at a time and none for HOLD_GAP after it: the socket
  is never stopped longer than MAX_WAIT, and between two stops it reads every peer's next
  message (the ROUTER takes one from each in turn), however many producers are waiting.
"""

from __future__ import annotations

HOLD_MS = 100  # one request's pause; refreshed while the backlog stays deep
REFRESH = 0.02  # seconds between two requests while the backlog stays deep
MAX_HOLD_MS = 1000  # a longer request is taken as this (SPEC 9.3)
MAX_WAIT = 0.02  # seconds a producer batch is held at most: member probes share its socket (probe timeout 0.1 s on lan)
HOLD_GAP = 0.005  # seconds after a hold with no hold: ample for one message from each peer


class FlowControl:
    def __init__(self, high: int, low: int) -> None:
        if not 0 <= low < high:
            raise ValueError(f"need 0 <= low < high, got low {low}, high {high}")
        self.high = high
        self.low = low
        self.backlog = 0  # bytes of stream batches queued and not yet taken
        self.asking = False  # a pause of ours may be in force
        self._asked_at = float("-inf")
        self._until: dict[str, float] = {}  # member -> end of the pause it asked for
        self.requests = 0  # pauses asked (first requests and refreshes)
        self.holds = 0  # producer batches this node held
        self.held_seconds = 0.0  # time they waited, summed
        self._next_hold = float("-inf")  # no hold before this (duty cycle, see the docstring)

    # -- receiving side -------------------------------------------------------------

    def stream_queued(self, nbytes: int, now: float) -> int | None:
        self.backlog += nbytes
        return self._ask(now)

    def stream_taken(self, nbytes: int, now: float) -> int | None:
        self.backlog = max(0, self.backlog - nbytes)
        if self.asking and self.backlog <= self.low:
            self.asking = False
            return 0
        return self._ask(now)

    def _ask(self, now: float) -> int | None:
        if self.asking:
            due = self.backlog > self.low and now - self._asked_at >= REFRESH
        else:
            due = self.backlog >= self.high
        if not due:
            return None
        self.asking, self._asked_at = True, now
        self.requests += 1
        return HOLD_MS

    # -- republishing side ----------------------------------------------------------

    def peer_flow(self, sender: str, hold_ms: int, now: float) -> None:
        if hold_ms <= 0:
            self._until.pop(sender, None)
        else:
            self._until[sender] = now + min(hold_ms, MAX_HOLD_MS) / 1000.0

    def held_until(self, now: float) -> float | None:
        """The end of the longest pause in force, or None (expired pauses are forgotten)."""
        if not self._until:
            return None
        for sender in [s for s, t in self._until.items() if t <= now]:
            del self._until[sender]
        return max(self._until.values(), default=None)

    def may_hold(self, now: float) -> bool:
        """Should a producer batch arriving now wait for a pause?"""
        return now >= self._next_hold and self.held_until(now) is not None

    def held(self, seconds: float, now: float) -> None:
        """A producer batch waited ``seconds``, until ``now``, for a pause."""
        self.holds += 1
        self.held_seconds += seconds
        self._next_hold = now + HOLD_GAP

    def status(self) -> dict[str, float | int | bool]:
        return {"backlog": self.backlog, "asking": self.asking, "requests": self.requests,
                "holds": self.holds, "held_seconds": round(self.held_seconds, 3),
                "paused_by": len(self._until)}
