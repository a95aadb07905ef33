"""Idempotent producers (engine/producers.py) and the forwarding relay (shell/routing.py):
pure, no sockets."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from corec_node.engine.producers import DUPLICATE, OUT_OF_ORDER, ProducerSeqs
from corec_node.shell.routing import BUSY, NOT_OWNER, UNCONFIRMED, Forwarder, Relay
from corec_node.wire import ENTITY_DTYPE, EntityBatch
from corec_node.wire.messages import BatchReply


def test_a_batch_applies_only_where_it_is_newer_and_says_why_not_elsewhere() -> None:
    seqs = ProducerSeqs()
    keep, refused = seqs.admit(7, 5, np.array([1, 1, 2]))
    assert keep.all() and refused == {}
    keep, refused = seqs.admit(7, 5, np.array([1, 3]))  # a retry of 5 reaching block 1 again
    assert keep.tolist() == [False, True] and refused == {DUPLICATE: 1}
    keep, refused = seqs.admit(7, 4, np.array([2, 2, 4]))  # an older batch overtook by 5 in block 2
    assert keep.tolist() == [False, False, True] and refused == {OUT_OF_ORDER: 2}
    keep, refused = seqs.admit(8, 1, np.array([1, 2]))  # another producer has its own sequence
    assert keep.all() and refused == {}
    keep, refused = seqs.admit(0, 0, np.array([1, 1]))  # anonymous: never checked
    assert keep.all() and refused == {}


def test_sequences_move_with_their_blocks() -> None:
    old, new = ProducerSeqs(), ProducerSeqs()
    old.admit(7, 9, np.array([1, 2]))
    rows = old.take([2])
    assert rows == [(7, 2, 9)] and len(old) == 1
    new.admit(7, 3, np.array([2]))  # the new owner saw an older one already
    new.merge(rows)
    keep, refused = new.admit(7, 9, np.array([2]))  # the retry the old owner had applied
    assert not keep.any() and refused == {DUPLICATE: 1}
    keep, _ = new.admit(7, 10, np.array([2]))
    assert keep.all()


def _records(n: int) -> np.ndarray:
    recs = np.zeros(n, dtype=ENTITY_DTYPE)
    recs["id"] = np.arange(n)
    recs["value"] = 1.0
    return recs


class _Clock:
    t = 0.0

    def __call__(self) -> float:
        return self.t


def test_the_producer_hears_once_every_part_is_answered() -> None:
    answers: list[BatchReply] = []
    sent: list[tuple[str, EntityBatch]] = []
    clock = _Clock()

    def send(owner: str, header: EntityBatch, payload) -> int:
        sent.append((owner, header))
        return len(sent)

    fwd = Forwarder(send, clock)
    env = SimpleNamespace(seq=41, msg=EntityBatch(channel=0, count=30, compressed=False, producer=7, pseq=3))
    relay = Relay(41, answers.append, epoch=12, parts=3)
    fwd.forward(env, {"b": _records(10), "c": _records(5)}, relay)
    assert [(o, h.producer, h.pseq, h.hops, h.acks, h.epoch, h.count) for o, h in sent] == [
        ("b", 7, 3, 1, 1, 12, 10), ("c", 7, 3, 1, 1, 12, 5)]
    relay.part(15)  # our own part
    assert answers == []
    assert fwd.answered("b", BatchReply(seq=1, accepted=8, rejected={DUPLICATE: 2}))
    assert not fwd.answered("b", BatchReply(seq=1, accepted=8))  # answered already
    assert answers == []
    clock.t = 100.0
    assert fwd.expire() == 1  # c never answered
    assert answers == [BatchReply(seq=41, accepted=23, rejected={DUPLICATE: 2, UNCONFIRMED: 5}, epoch=12)]


def test_a_part_that_cannot_leave_is_busy_and_acks_zero_waits_for_nothing() -> None:
    answers: list[BatchReply] = []
    fwd = Forwarder(lambda owner, header, payload: None, _Clock())
    env = SimpleNamespace(seq=1, msg=EntityBatch(channel=0, count=4, compressed=False))
    relay = Relay(1, answers.append, epoch=0, parts=2)
    fwd.forward(env, {"b": _records(4)}, relay)
    relay.part(0, {NOT_OWNER: 0})
    assert answers == [BatchReply(seq=1, accepted=0, rejected={BUSY: 4})]
    quiet = Forwarder(lambda owner, header, payload: 1, _Clock())
    relay = Relay(2, None, epoch=0, parts=2)
    quiet.forward(env, {"b": _records(4)}, relay)
    assert quiet.waiting() == 0 and relay.parts == 1


def test_runs_of_blocks_are_judged_as_a_scattered_batch_is() -> None:
    """A batch in id order (runs of one block each) takes the per-run path; the same
    records scattered take the per-block path: both keep and refuse the same records."""
    blocks = np.repeat(np.array([4, 5, 6, 4], dtype=np.int64), 500)  # block 4 in two runs
    for order in (np.arange(len(blocks)), np.random.default_rng(1).permutation(len(blocks))):
        seqs = ProducerSeqs()
        seqs.admit(7, 10, np.array([5] * 100))
        keep, refused = seqs.admit(7, 10, blocks[order])
        assert refused == {DUPLICATE: 500}
        assert (keep == (blocks[order] != 5)).all()
        keep, refused = seqs.admit(7, 9, blocks[order])
        assert not keep.any() and refused == {OUT_OF_ORDER: 2000}
