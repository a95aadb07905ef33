"""Owner-routed ingest (SPEC 9.6): a producer's batch parts for other owners are forwarded
to them, and the producer gets one answer once every part is answered.

A producer that holds the current map sends each record straight to its block's owner, so
this path is the exception: a producer with a stale map, or one older than 1.5 that sends
everything to the node it was given. Its records of blocks this node does not own go, one
part per owner, to the owners' data sockets (one hop: a forwarded batch is never forwarded
again; what its receiver does not own is refused ``not_owner``). With ``acks`` 1 the
producer's answer waits for the owners' answers (a ``Relay``); a part left unanswered past
``FORWARD_WAIT`` is reported ``unconfirmed``: the node cannot say whether it was stored. A
part that cannot leave (its owner has no data socket in our view: it died and the map has
not moved yet; or the queue towards it is full) is refused ``busy``: nothing was stored,
and the producer offers it again.
The answer carries this node's placement epoch, so the producer refreshes its map.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from corec_node.wire import make_batch
from corec_node.wire.messages import BatchReply, EntityBatch

FORWARD_WAIT = 8.0  # seconds an owner has to answer a forwarded part (its own door waits 5 s)
UNCONFIRMED = "unconfirmed"
BUSY = "busy"
NOT_OWNER = "not_owner"

Answer = Callable[[Any], None]  # sends one message back to whoever sent the batch


@dataclass(slots=True)
class Relay:
    """One producer batch's answer, gathered from its parts (this node's, and each owner's)."""

    seq: int  # the producer's envelope seq: what its BatchReply names
    answer: Answer | None  # None: the producer reads no answers (acks 0, or older than 1.4)
    epoch: int  # this node's placement epoch, for the producer's map
    parts: int  # parts not yet answered
    accepted: int = 0
    rejected: collections.Counter[str] = field(default_factory=collections.Counter)

    def part(self, accepted: int, rejected: dict[str, int] | None = None) -> bool:
        """One part answered; True when it was the last (the answer has been sent)."""
        self.accepted += accepted
        if rejected:
            self.rejected.update(rejected)
        self.parts -= 1
        if self.parts > 0:
            return False
        if self.answer is not None:
            self.answer(BatchReply(seq=self.seq, accepted=self.accepted,
                                   rejected={k: v for k, v in self.rejected.items() if v}, epoch=self.epoch))
        return True


@dataclass(slots=True)
class _Forwarded:
    relay: Relay
    owner: str
    count: int
    deadline: float


class Forwarder:
    """Forwards parts to their owners and matches the owners' answers to their relays."""

    def __init__(self, send: Callable[[str, EntityBatch, Any], int | None], now: Callable[[], float]) -> None:
        """``send(owner, header, payload)``: the envelope seq it went out under, or None
        when it could not be sent (no data socket known, queue full)."""
        self._send = send
        self._now = now
        self._waiting: dict[tuple[str, int], _Forwarded] = {}
        self.forwarded = 0  # records sent on to their owner
        self.lost = 0  # records that could not be sent on

    def forward(self, env: Any, parts: dict[str, np.ndarray], relay: Relay) -> None:
        """Send each owner its part; parts that cannot leave are refused on ``relay``."""
        msg: EntityBatch = env.msg
        for owner, records in parts.items():
            header, payload = make_batch(records, msg.channel)
            header = dataclasses.replace(header, producer=msg.producer, pseq=msg.pseq,
                                         acks=1 if relay.answer is not None else 0,
                                         epoch=relay.epoch, hops=msg.hops + 1)
            seq = self._send(owner, header, payload)
            if seq is None:
                self.lost += len(records)
                relay.part(0, {BUSY: len(records)})
                continue
            self.forwarded += len(records)
            if relay.answer is None:
                relay.part(len(records))  # fire and forget: nobody waits for the owner
            else:
                self._waiting[(owner, seq)] = _Forwarded(relay, owner, len(records), self._now() + FORWARD_WAIT)

    def answered(self, owner: str, reply: BatchReply) -> bool:
        """An owner's answer to a part; False when it matches none (late, or not ours)."""
        entry = self._waiting.pop((owner, reply.seq), None)
        if entry is None:
            return False
        entry.relay.part(reply.accepted, dict(reply.rejected))
        return True

    def expire(self) -> int:
        """Parts whose owner did not answer in time: reported ``unconfirmed``. Returns how many."""
        now = self._now()
        late = [key for key, entry in self._waiting.items() if entry.deadline <= now]
        for key in late:
            entry = self._waiting.pop(key)
            entry.relay.part(0, {UNCONFIRMED: entry.count})
        return len(late)

    def waiting(self) -> int:
        return len(self._waiting)
