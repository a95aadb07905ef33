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
  A held batch waits in the node, unanswered (the data plane's door, which refuses it as
  busy once it has waited too long); the socket it came on is never stopped, since member
  probes and votes share it. Its producer is held by its answers instead: it keeps at most
  a window of unanswered batches (32 in the reference client; BatchReply, protocol 1.4,
  SPEC 9.4). ``held`` counts the batches that waited and for how long.
"""

from __future__ import annotations

HOLD_MS = 100  # one request's pause; refreshed while the backlog stays deep
REFRESH = 0.02  # seconds between two requests while the backlog stays deep
MAX_HOLD_MS = 1000  # a longer request is taken as this (SPEC 9.3)


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

    def held(self, seconds: float, now: float) -> None:
        """A producer batch waited ``seconds``, until ``now``, for a pause."""
        self.holds += 1
        self.held_seconds += seconds

    def status(self) -> dict[str, float | int | bool]:
        return {"backlog": self.backlog, "asking": self.asking, "requests": self.requests,
                "holds": self.holds, "held_seconds": round(self.held_seconds, 3),
                "paused_by": len(self._until)}
