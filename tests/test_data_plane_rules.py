"""Rules of a node's data plane around a change of the cluster, driven by hand: the data
plane of a real node (not started: no sockets), its sends captured where they would leave.

1. A placement map change stores everything queued before it cuts the copies it sends. A
   holder answers an owner's write once it is queued (acks all, SPEC 9.7), and the write is
   stored later by the ingest worker. A map change that gives a block to a new holder
   copies it from the store at once: a write still queued then would be stored here after
   the copy left and would never reach the new holder, which may own the block next.
2. A node that does not know the data socket of a live member yet (it has just restarted)
   refuses a batch that asks for every holder's acknowledgement (``no_leader``, offered
   again by producers): it could only republish it on the lossy PUB stream, and no holder
   would answer for it. Without replicas it refuses any answered batch while a member it
   has not heard from since its start lacks one (a member heard without one is an old
   node: its batches go by the stream, as before owner routing).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from records import aggregate_row, entities

from corec_node.config import load_config
from corec_node.shell.control_plane import ClusterView
from corec_node.shell.learning import REPLICA_COPY, REPLICA_WRITE
from corec_node.shell.node import Node
from corec_node.wire import decode_batch, make_batch
from corec_node.wire.envelope import Envelope
from corec_node.wire.messages import BatchReply, EntityBatch, MsgType, Ready

CHANNEL = 3
DATA = {"a": "tcp://127.0.0.1:9001", "b": "tcp://127.0.0.1:9002", "c": "tcp://127.0.0.1:9003"}


def _plane(tmp_path, name: str = "a", replicas: int = 2):
    config = load_config(env={"COREC_ENGINE_REPLICAS": str(replicas)},
                         overrides={"node.name": name, "node.data_dir": str(tmp_path)})
    plane = Node(config).data
    sent: list[tuple[str, object, object]] = []
    plane.data_send = lambda addr, msg, payload: sent.append((addr, msg, payload)) or len(sent)
    return plane, sent


def _producer_batch(*, seq: int, acks: int) -> tuple[Envelope, bytes]:
    """A producer's batch of 3,000 records of CHANNEL as the node decodes it, and its payload."""
    header, payload = make_batch(entities(np.arange(3000), CHANNEL, 5.0), CHANNEL)
    return Envelope(version=1, type=MsgType.ENTITY_BATCH, cluster="", sender="producer", seq=seq, minor=11,
                    msg=dataclasses.replace(header, acks=acks, producer=99, pseq=1)), payload


def _copied_to(sent, addr: str) -> np.ndarray:
    parts = [decode_batch(msg, payload) for to, msg, payload in sent
             if to == addr and isinstance(msg, EntityBatch) and msg.replica == REPLICA_COPY]
    return np.concatenate(parts) if parts else np.zeros(0, entities([]).dtype)


def test_a_write_queued_before_a_map_change_travels_with_the_copies(tmp_path):
    plane, sent = _plane(tmp_path)
    two = ClusterView(members={m: f"tcp://127.0.0.1:800{i}" for i, m in enumerate("ab")}, live=("a", "b"),
                      leader="a", term=1, data=DATA, replicating=frozenset("abc"))
    plane.view_changed(two)  # b learns first, then says it caught up
    plane.ready("b", Ready(digest=plane.engine.placement_digest()))
    assert plane.engine.placement.members == ("a", "b")

    # b's write for us as a holder: answered once queued, not stored yet
    records = entities(np.arange(40_000), CHANNEL, 7.0)
    header, payload = make_batch(records, CHANNEL)
    env = Envelope(version=1, type=MsgType.ENTITY_BATCH, cluster="", sender="b", seq=1,
                   msg=dataclasses.replace(header, replica=REPLICA_WRITE))
    plane.queue().add((env, payload, "replica", records))
    assert plane.engine.store.count() == 0

    # c joins: a learner of the new map; as nucleus we copy it the blocks we own that it holds
    three = dataclasses.replace(two, members={**two.members, "c": "tcp://127.0.0.1:8002"}, live=("a", "b", "c"))
    plane.view_changed(three)
    assert plane.engine.placement.learners == ("c",)
    for _ in range(50):
        plane.lanes.pump()

    blocks = plane.engine.blocks_of(records)
    placement = plane.engine.placement
    owned_by_a = placement.owners(blocks) == placement.members.index("a")
    held_by_c = placement.holder_mask(blocks, 2)[:, placement.everyone.index("c")]
    owed = np.flatnonzero(owned_by_a & held_by_c)
    assert len(owed) > 0  # 40 blocks: some are ours and c's
    copied = _copied_to(sent, DATA["c"])
    assert sorted(copied["id"].tolist()) == sorted(records["id"][owed].tolist())
    assert (copied["value"] == 7.0).all()


def test_a_node_that_knows_no_data_socket_of_a_member_refuses_acks_all(tmp_path):
    plane, _sent = _plane(tmp_path, "c")
    # just restarted: a and b alive (from its snapshot), b leads, a's data socket not heard yet
    view = ClusterView(members={m: f"tcp://127.0.0.1:800{i}" for i, m in enumerate("abc")}, live=("a", "b", "c"),
                       leader="b", term=2, data={"b": DATA["b"], "c": DATA["c"]}, replicating=frozenset("bc"))
    plane.view_changed(view)
    plane.leader_placement(plane.engine.view_digest())  # the nucleus confirms the map c sees
    assert plane.placement_confirmed() and not view.routed

    answers: list[BatchReply] = []
    env, payload = _producer_batch(seq=7, acks=2)
    plane.batch(env, payload, "direct", answers.append)
    assert [(a.seq, a.accepted, a.rejected) for a in answers] == [(7, 0, {"no_leader": 3000})]
    assert plane.queue().qsize() == 0  # nothing taken, nothing republished as if stored

    # once a's data socket is known the same batch is taken (and waits for its holders' answers)
    plane.view_changed(dataclasses.replace(view, data=DATA, replicating=frozenset("abc")))
    plane.leader_placement(plane.engine.view_digest())
    plane.batch(env, payload, "direct", answers.append)
    assert plane.queue().qsize() == 1 and len(answers) == 1


def test_without_replicas_only_a_member_not_heard_yet_holds_answered_batches(tmp_path):
    plane, _sent = _plane(tmp_path, "c", replicas=1)
    members = {m: f"tcp://127.0.0.1:800{i}" for i, m in enumerate("abc")}
    view = ClusterView(members=members, live=("a", "b", "c"), leader="b", term=2,
                       data={"b": DATA["b"], "c": DATA["c"]}, unheard=frozenset("a"))
    plane.view_changed(view)
    answers: list[BatchReply] = []
    env, payload = _producer_batch(seq=8, acks=1)
    plane.batch(env, payload, "direct", answers.append)
    assert [(a.accepted, a.rejected) for a in answers] == [(0, {"no_leader": 3000})]

    # a heard from, without a data socket: an old node, whose blocks go by the stream
    plane.view_changed(dataclasses.replace(view, unheard=frozenset()))
    plane.batch(env, payload, "direct", answers.append)
    assert [(a.accepted, a.rejected) for a in answers[1:]] == [(3000, {})]


def test_the_nucleus_repeats_its_learners_every_tick_only_while_they_matter(tmp_path):
    """Published at once on a change, every tick while there are learners and for
    LEARNERS_SETTLE ticks after a change, then every LEARNERS_REFRESH ticks: an idle
    cluster is not told "no learners" every tick, and a member that missed it hears again."""
    from corec_node.shell.learning import LEARNERS_REFRESH, LEARNERS_SETTLE
    from corec_node.wire.messages import Learners

    plane, _sent = _plane(tmp_path)
    published: list[tuple[str, ...]] = []
    plane.outbox.publish = lambda msg, *a, **k: published.append(msg.names) if isinstance(msg, Learners) else None
    two = ClusterView(members={m: f"tcp://127.0.0.1:800{i}" for i, m in enumerate("ab")}, live=("a", "b"),
                      leader="a", term=1, data=DATA, replicating=frozenset("abc"))
    plane.view_changed(two)
    assert published == [("b",)]  # b joined: it learns, and the nucleus says so at once
    ticks = 4 * LEARNERS_REFRESH
    for _ in range(ticks):  # every tick until it is ready
        plane._publish_learners(tick=True)
    assert published == [("b",)] * (ticks + 1)

    published.clear()
    plane.ready("b", Ready(digest=plane.engine.placement_digest()))
    assert published == [()]  # at once
    for _ in range(ticks):
        plane._publish_learners(tick=True)
    assert LEARNERS_SETTLE < LEARNERS_REFRESH
    assert published == [()] * (1 + LEARNERS_SETTLE + ticks // LEARNERS_REFRESH)


def _nucleus_of_two(tmp_path, holder: str):
    """Nucleus a of a map of a and b (b caught up), and a block ``holder`` holds a copy of."""
    plane, _sent = _plane(tmp_path)
    two = ClusterView(members={m: f"tcp://127.0.0.1:800{i}" for i, m in enumerate("ab")}, live=("a", "b"),
                      leader="a", term=1, data=DATA, replicating=frozenset("ab"))
    plane.view_changed(two)
    plane.ready("b", Ready(digest=plane.engine.placement_digest()))
    engine = plane.engine
    assert engine.placement.members == ("a", "b")
    block = next(b for b in range(CHANNEL << 32, (CHANNEL << 32) + 100)
                 if engine.placement.holder_mask([b], engine.copies)[0, engine.placement.everyone.index(holder)])
    return plane, aggregate_row(block, count=10, epoch=engine.epoch)


def test_a_fresh_nucleus_judges_what_it_lacks_once_every_row_had_its_turn(tmp_path):
    """Restarted with nothing and elected: unchanged rows come every ROWS_REFRESH ticks, so
    the first rows heard may be a few; the nucleus decides whether it must learn first only
    once rows have been heard for that long, not on the first of them."""
    from corec_node.engine.wire_rows import ROWS_REFRESH

    plane, row = _nucleus_of_two(tmp_path, "a")
    plane.fresh = True  # as a node restarted with nothing that was a member of this map
    plane._check_ready()
    assert plane.fresh  # no rows yet: nothing to judge
    plane.engine.observe_rows("b", [row])
    for _ in range(ROWS_REFRESH):
        plane._check_ready()
        assert plane.fresh and "a" not in plane._relearn
        plane.engine.tick_no += 1
    plane._check_ready()
    assert not plane.fresh and "a" in plane._relearn  # a block we hold is shown: we learn it first


def test_a_nucleus_judges_a_restarted_member_once_its_own_rows_are_the_clusters(tmp_path):
    from corec_node.engine.wire_rows import ROWS_REFRESH

    plane, row = _nucleus_of_two(tmp_path, "b")
    plane.engine.observe_rows("b", [row])
    for _ in range(ROWS_REFRESH):  # rows heard a moment ago: maybe a few of them, b is not judged yet
        plane._check_ready()
        plane.ready("b", Ready(digest=""))
        assert "b" in plane._ready and "b" not in plane._relearn
        plane.engine.tick_no += 1
    plane._check_ready()
    plane.ready("b", Ready(digest=""))  # b restarted with nothing and holds a block the cluster shows
    assert "b" not in plane._ready and "b" in plane._relearn
