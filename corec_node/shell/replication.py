"""Acknowledgements of every holder (``acks`` all, SPEC 9.7): a producer's records are
acknowledged once their owner has queued them and every other holder of their blocks has
answered that it queued its copy.

The owner sends each holder its part of what it stores (``EngineHost.replica_parts``)
through the holder's lane (``lanes.py``) to its data socket, behind the block's copy, so
a holder applies them in the owner's order; a part is timed from when it leaves its lane. A holder that does not answer within
``REPLICA_WAIT`` (dead, partitioned, its queue stalled), or a part that cannot leave, makes
the records ``not_replicated``: the owner stored them, but not every copy is known to
hold them, and the producer hears so; its retry is refused ``duplicate`` where applied.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from corec_node.shell.routing import Relay
from corec_node.wire.messages import BatchReply

REPLICA_WAIT = 8.0  # seconds a holder has to answer (as a forwarded part's owner)
NOT_REPLICATED = "not_replicated"
NOT_ENOUGH_REPLICAS = "not_enough_replicas"
NO_LEADER = "no_leader"


@dataclass(slots=True)
class _Quorum:
    """The owner's part of one producer batch, waiting for its holders."""

    relay: Relay
    count: int  # records the owner accepted
    refused: dict[str, int]  # records the owner refused (answered with the part)
    waiting: int  # holders yet to answer
    failed: bool = False


class Replicator:
    """Matches holders' answers to the producer batches waiting for them."""

    def __init__(self, now: Callable[[], float]) -> None:
        self._now = now
        self._waiting: dict[tuple[str, int], tuple[_Quorum, float, int]] = {}
        self.sent_records = 0  # records sent to holders
        self.unsent = 0  # records that could not leave (no data socket, queue full)
        self.not_replicated = 0  # records answered not_replicated

    def wait(self, relay: Relay, count: int, refused: dict[str, int], holders: int) -> _Quorum:
        """The owner's part of a batch (``count`` records accepted) goes to ``holders``
        holders (``sent`` tells each one's seq once it leaves its lane); ``relay`` hears
        once every holder answered or failed."""
        quorum = _Quorum(relay, count, refused, waiting=holders)
        if holders == 0:
            self._finish(quorum)
        return quorum

    def sent(self, quorum: _Quorum, holder: str, records: int) -> Callable[[int | None], None]:
        """What a holder's lane calls with the seq its part left under (None: it could not)."""
        def on_sent(seq: int | None) -> None:
            if seq is None:
                quorum.failed = True
                self.unsent += records
                self._settle(quorum)
                return
            self.sent_records += records
            self._waiting[(holder, seq)] = (quorum, self._now() + REPLICA_WAIT, records)
        return on_sent

    def _settle(self, quorum: _Quorum) -> None:
        quorum.waiting -= 1
        if quorum.waiting == 0:
            self._finish(quorum)

    def answered(self, holder: str, reply: BatchReply) -> bool:
        """A holder's answer; False when it matches none of ours."""
        entry = self._waiting.pop((holder, reply.seq), None)
        if entry is None:
            return False
        quorum, _deadline, records = entry
        if reply.accepted + reply.rejected.get("duplicate", 0) < records:  # a duplicate is held already
            quorum.failed = True
        self._settle(quorum)
        return True

    def holders_left(self, holders: set[str], *, enough: bool) -> int:
        """The map no longer names some holders we wait for (dead, left): the in-sync set is
        the holders left, so their answers are waited for no more; ``enough``: the set left
        still has ``min_insync`` members (else those batches fail). Returns answers dropped."""
        gone = [key for key in self._waiting if key[0] not in holders]
        for key in gone:
            quorum, _deadline, _records = self._waiting.pop(key)
            if not enough:
                quorum.failed = True
            self._settle(quorum)
        return len(gone)

    def expire(self) -> int:
        """Holders that did not answer in time fail their batches."""
        now = self._now()
        late = [key for key, (_q, deadline, _n) in self._waiting.items() if deadline <= now]
        for key in late:
            quorum, _deadline, _records = self._waiting.pop(key)
            quorum.failed = True
            self._settle(quorum)
        return len(late)

    def _finish(self, quorum: _Quorum) -> None:
        if quorum.failed:
            self.not_replicated += quorum.count
            refused = dict(quorum.refused)
            refused[NOT_REPLICATED] = refused.get(NOT_REPLICATED, 0) + quorum.count
            quorum.relay.part(0, refused)
        else:
            quorum.relay.part(quorum.count, quorum.refused)

    def waiting(self) -> int:
        return len(self._waiting)
