"""Per-sender, per-topic sequence tracking for the PUB stream: spot what PUB/SUB dropped.

PUB/SUB loses messages without a word (slow joiner, high-water mark); ZeroMQ's Clone
pattern answers with a sequence number per publisher and a resync on a gap. Senders number
each topic separately (a subscriber filters topics, so a global counter would look like
gaps), from 0 or 1. One publisher's messages arrive in order over one TCP connection, so:

- the first number seen from a (sender, topic) is ``"ok"``: we may have joined mid-stream;
- last + 1 is ``"ok"``;
- higher than last + 1 is ``"gap"`` (the shell calls ``Membership.on_gap`` for topic mbr);
- equal to last is ``"duplicate"`` (the same stream reached us twice): drop it;
- lower than last is ``"restart"``: the sender restarted its counters; take the message
  and track from the new number.

Pure bookkeeping, no clock. Call ``forget(sender)`` when a member is reaped.
"""

from __future__ import annotations

from typing import Literal

__all__ = ["SeqVerdict", "SequenceTracker"]

SeqVerdict = Literal["ok", "gap", "restart", "duplicate"]

UINT64_MAX = 2**64 - 1  # the envelope's seq field is a uint64 that wraps to 0


class SequenceTracker:
    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last: dict[tuple[str, bytes], int] = {}

    def observe(self, sender: str, topic: bytes, seq: int) -> SeqVerdict:
        key = (sender, topic)
        last = self._last.get(key)
        if last is not None and seq == last:
            return "duplicate"
        self._last[key] = seq
        if last is None or seq == last + 1 or (last == UINT64_MAX and seq == 0):
            return "ok"
        return "gap" if seq > last else "restart"

    def last(self, sender: str, topic: bytes) -> int | None:
        return self._last.get((sender, topic))

    def forget(self, sender: str) -> None:
        for key in [k for k in self._last if k[0] == sender]:
            del self._last[key]
