"""Sequence numbers (SPEC.md, "Sequence numbers"): per sender, per PUB topic.

PUB/SUB drops messages silently (slow joiner, high-water mark). Each sender numbers what it
publishes on each topic 0, 1, 2, ...; a receiver that sees a gap knows it missed something
and resyncs (membership: a state push-pull with that sender) instead of diverging.
"""

from __future__ import annotations

import enum

from corec_node.wire.fields import UINT64_MAX


class SeqEvent(enum.Enum):
    FIRST = "first"  # first message seen from this sender on this topic
    NEXT = "next"  # exactly the expected number
    GAP = "gap"  # numbers were skipped: messages were lost
    DUPLICATE = "duplicate"  # the number seen last again: drop the message
    RESTART = "restart"  # a lower number: the sender restarted its counters


class SequenceCounter:
    """The sending side: the next number for each topic, from 0."""

    __slots__ = ("_next",)

    def __init__(self) -> None:
        self._next: dict[bytes, int] = {}

    def next(self, topic: bytes) -> int:
        seq = self._next.get(topic, 0)
        self._next[topic] = 0 if seq == UINT64_MAX else seq + 1
        return seq


class SequenceTracker:
    """The receiving side: classifies each (sender, topic, seq) it is shown.

    Pure bookkeeping, no clock: call ``forget(sender)`` when a member is reaped.
    """

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last: dict[tuple[str, bytes], int] = {}

    def observe(self, sender: str, topic: bytes, seq: int) -> SeqEvent:
        key = (sender, topic)
        last = self._last.get(key)
        if last is not None and seq == last:
            return SeqEvent.DUPLICATE
        self._last[key] = seq
        if last is None:
            return SeqEvent.FIRST
        if seq == last + 1 or (last == UINT64_MAX and seq == 0):  # the counter wraps
            return SeqEvent.NEXT
        return SeqEvent.GAP if seq > last else SeqEvent.RESTART

    def last(self, sender: str, topic: bytes) -> int | None:
        """The last number seen (read it before ``observe`` to count a gap's size)."""
        return self._last.get((sender, topic))

    def forget(self, sender: str) -> None:
        for key in [k for k in self._last if k[0] == sender]:
            del self._last[key]
