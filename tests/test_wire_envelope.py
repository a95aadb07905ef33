"""Message envelope: round trips for every type, hostile frames, reasons (SPEC.md s.2-15)."""

from __future__ import annotations

import dataclasses
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corec_node.wire import (
    ENTITY_DTYPE,
    PROTOCOL_MAJOR,
    PROTOCOL_MINOR,
    SCHEMAS,
    TOPIC_DIRECT,
    TOPIC_ENTITIES_ALL,
    TOPIC_MEMBERSHIP,
    Ack,
    AggregateColumns,
    Aggregates,
    Alert,
    BatchReply,
    CopyDone,
    EntityBatch,
    Envelope,
    EvolutionPlan,
    Flow,
    FusionPlan,
    Gossip,
    Heartbeat,
    HeartbeatAck,
    Learners,
    MemberState,
    MemberStatus,
    MsgType,
    Nack,
    NanoWeights,
    Owner,
    Ping,
    PingReq,
    Placement,
    PlacementRequest,
    Ready,
    SeqEvent,
    SequenceCounter,
    SequenceHandoff,
    SequenceTracker,
    StatePush,
    StateReply,
    Vote,
    Voter,
    VoteRequest,
    WireError,
    decode_message,
    encode_message,
    entity_channel,
    entity_topic,
    limits,
    make_batch,
    message_type,
    topic_for,
)
from corec_node.wire.overlay_messages import (
    Disconnect,
    ForwardJoin,
    Graft,
    IHave,
    Join,
    JoinReply,
    Neighbor,
    NeighborReply,
    Prune,
    Shuffle,
    ShuffleReply,
    TreeGossip,
)

FAST = settings(max_examples=100, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
U64 = (1 << 64) - 1

# -- strategies ------------------------------------------------------------------------------

_printable = st.characters(categories=("L", "N", "P", "S"), include_characters=" ", codec="utf-8")
names = st.one_of(
    st.text(_printable, min_size=1, max_size=30),
    st.sampled_from(["a" * 255, "ñ" * 127 + "a", "node-1", "nodo ñandú"]),
)
labels = st.one_of(st.just(""), names)
hosts = st.one_of(
    st.from_regex(r"[0-9A-Za-z._-]{1,40}", fullmatch=True),
    st.sampled_from(["[::1]", "[fe80::1%eth0]", "[2001:db8::7]", "127.0.0.1"]),
)
addrs = st.builds(lambda h, p: f"{h}:{p}", hosts, st.integers(1, 65535))
u64 = st.integers(0, U64)
members = st.builds(MemberState, name=names, addr=addrs, pub=addrs, inc=u64,
                    status=st.sampled_from(MemberStatus), version=labels, protocol=labels,
                    features=st.lists(names, max_size=5).map(tuple),
                    data=st.one_of(st.just(""), addrs))  # "" (a member older than 1.5) is not written
member_lists = st.lists(members, max_size=6).map(tuple)
row_values = st.one_of(
    st.none(), st.booleans(), st.integers(-(1 << 63), U64), st.floats(allow_nan=False),
    st.text(max_size=40),
)
rows = st.lists(st.dictionaries(names, row_values, max_size=8), max_size=4).map(tuple)
u8 = st.integers(0, 255)
peer_lists = st.lists(addrs, max_size=6).map(tuple)
msg_ids = st.tuples(addrs, u64)

MESSAGES: dict[MsgType, st.SearchStrategy[Any]] = {
    MsgType.PING: st.builds(Ping, probe=u64, target=names, reply_to=addrs),
    MsgType.ACK: st.builds(Ack, probe=u64, target=names),
    MsgType.PING_REQ: st.builds(
        PingReq, probe=u64, target=names, target_addr=addrs, reply_to=addrs
    ),
    MsgType.NACK: st.builds(Nack, probe=u64, target=names),
    MsgType.GOSSIP: st.builds(Gossip, updates=member_lists),
    MsgType.STATE_PUSH: st.builds(
        StatePush, join=st.booleans(), reply_to=addrs, members=member_lists
    ),
    MsgType.STATE_REPLY: st.builds(StateReply, members=member_lists),
    MsgType.VOTE_REQUEST: st.builds(VoteRequest, term=u64, pre=st.booleans(), reply_to=addrs,
                                    cfg_term=u64, cfg_index=u64),
    MsgType.VOTE: st.builds(Vote, term=u64, granted=st.booleans(), pre=st.booleans()),
    MsgType.HEARTBEAT: st.builds(Heartbeat, term=u64, leader=names, placement=st.sampled_from(["", "9f86d081884c7d65"]),
                                 seq=u64, cfg_term=u64, cfg_index=u64,
                                 voters=st.lists(st.builds(Voter, name=names, addr=addrs), max_size=7).map(tuple),
                                 commit=u64),
    MsgType.HEARTBEAT_ACK: st.builds(HeartbeatAck, term=u64, seq=u64, cfg_term=u64, cfg_index=u64),
    MsgType.AGGREGATES: st.builds(Aggregates, tick=u64, rows=rows),
    MsgType.ALERT: st.builds(Alert, kind=names, text=st.text(max_size=200)),
    MsgType.FUSION_PLAN: st.builds(FusionPlan, term=u64, fusions=rows),
    MsgType.FLOW: st.builds(Flow, hold_ms=u64),
    MsgType.BATCH_REPLY: st.builds(BatchReply, seq=u64, accepted=st.integers(0, limits.MAX_BATCH_RECORDS),
                                   rejected=st.dictionaries(names, st.integers(0, limits.MAX_BATCH_RECORDS), max_size=16),
                                   stage=u8, epoch=u64),
    MsgType.PLACEMENT_REQUEST: st.builds(PlacementRequest, epoch=u64),
    MsgType.PLACEMENT: st.builds(Placement, epoch=u64, digest=st.sampled_from(["", "e78319b292e39e89"]),
                                 block_size=st.integers(0, (1 << 32) - 1),
                                 owners=st.lists(st.builds(Owner, name=names, data=addrs), max_size=6).map(tuple),
                                 fusions=rows),
    MsgType.SEQUENCE_HANDOFF: st.builds(SequenceHandoff, rows=rows),
    MsgType.COPY_DONE: st.builds(CopyDone, digest=st.sampled_from(["", "e78319b292e39e89"]),
                                 records=st.integers(0, limits.MAX_BATCH_RECORDS)),
    MsgType.READY: st.builds(Ready, digest=st.sampled_from(["", "e78319b292e39e89"])),
    MsgType.LEARNERS: st.builds(Learners, term=u64, names=st.lists(names, max_size=6).map(tuple)),
    MsgType.EVOLUTION_PLAN: st.builds(EvolutionPlan, term=u64, challenges=rows),
    MsgType.AGGREGATE_COLUMNS: st.builds(AggregateColumns, tick=u64, columns=st.integers(0, 4).flatmap(
        lambda n: st.dictionaries(names, st.lists(row_values, min_size=n, max_size=n).map(tuple), max_size=6))),
    MsgType.VIEW_JOIN: st.builds(Join, sender=addrs),
    MsgType.VIEW_JOIN_REPLY: st.builds(JoinReply, sender=addrs, peers=peer_lists),
    MsgType.FORWARD_JOIN: st.builds(ForwardJoin, sender=addrs, joiner=addrs, ttl=u8),
    MsgType.NEIGHBOR: st.builds(Neighbor, sender=addrs, high=st.booleans()),
    MsgType.NEIGHBOR_REPLY: st.builds(NeighborReply, sender=addrs, accepted=st.booleans()),
    MsgType.DISCONNECT: st.builds(Disconnect, sender=addrs, leaving=st.booleans()),
    MsgType.SHUFFLE: st.builds(Shuffle, sender=addrs, origin=addrs, peers=peer_lists, ttl=u8),
    MsgType.SHUFFLE_REPLY: st.builds(ShuffleReply, sender=addrs, peers=peer_lists),
    MsgType.TREE_GOSSIP: st.builds(
        TreeGossip, sender=addrs, msg_id=msg_ids, hops=u8,
        payload=st.tuples(names, st.one_of(
            st.builds(Gossip, updates=member_lists),
            st.builds(Heartbeat, term=u64, leader=names, seq=u64, commit=u64),
        )),
    ),
    MsgType.IHAVE: st.builds(IHave, sender=addrs, ids=st.lists(st.tuples(msg_ids, u8), max_size=6).map(tuple)),
    MsgType.GRAFT: st.builds(Graft, sender=addrs, ids=st.lists(msg_ids, max_size=6).map(tuple)),
    MsgType.PRUNE: st.builds(Prune, sender=addrs),
}


@st.composite
def batches(draw: st.DrawFn) -> tuple[EntityBatch, bytes]:
    channel = draw(st.integers(0, 255))
    n = draw(st.integers(0, 40))
    arr = np.zeros(n, dtype=ENTITY_DTYPE)
    arr["id"] = draw(st.lists(st.integers(0, 2**32 - 1), min_size=n, max_size=n))
    arr["channel"] = channel
    arr["value"] = draw(st.lists(st.floats(width=32), min_size=n, max_size=n))
    arr["active"] = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    msg, payload = make_batch(arr, channel, compress=draw(st.booleans()))
    # since 1.5 (SPEC 9.6): owner-routed batches, forwarded parts
    routed = {"producer": draw(u64), "pseq": draw(u64), "acks": draw(u8), "epoch": draw(u64), "hops": draw(u8)}
    return dataclasses.replace(msg, **draw(st.sampled_from([{}, routed]))), payload


@st.composite
def nano_weights(draw: st.DrawFn) -> tuple[NanoWeights, bytes]:
    """NANO_WEIGHTS (since 1.12): rows of block, ticks, size, and the blocks' bytes as payload."""
    blobs = draw(st.lists(st.binary(min_size=1, max_size=64), max_size=5))
    rows = tuple({"block": draw(st.integers(0, 2**40 - 1)), "ticks": draw(u64), "size": len(b)} for b in blobs)
    return NanoWeights(rows=rows), b"".join(blobs)


messages_with_payload = st.one_of(
    *(s.map(lambda m: (m, None)) for s in MESSAGES.values()), batches(), nano_weights()
)
headers = st.fixed_dictionaries({"sender": names, "seq": u64, "cluster": labels})


def test_every_type_has_a_strategy() -> None:
    assert set(MESSAGES) | {MsgType.ENTITY_BATCH, MsgType.NANO_WEIGHTS} == set(MsgType) == set(SCHEMAS)


# -- round trips -----------------------------------------------------------------------------


@FAST
@given(messages_with_payload, headers)
def test_round_trip_every_type(msg_payload: tuple[Any, bytes | None], header: dict) -> None:
    msg, payload = msg_payload
    frames = encode_message(msg, payload=payload, **header)
    assert len(frames) == (2 if payload is None else 3)
    assert all(type(f) is bytes for f in frames)
    assert frames[0] == topic_for(msg)
    topic, env, got_payload = decode_message(frames, cluster=header["cluster"])
    assert topic == frames[0]
    assert env == Envelope(PROTOCOL_MAJOR, message_type(msg), header["cluster"], header["sender"],
                           header["seq"], msg, PROTOCOL_MINOR)
    assert got_payload == payload
    # canonical: re-encoding the decoded message gives the same bytes
    again = encode_message(
        env.msg, sender=env.sender, seq=env.seq, cluster=env.cluster, payload=got_payload
    )
    assert again == frames


@settings(FAST, max_examples=30)
@given(MESSAGES[MsgType.GOSSIP])
def test_decoded_member_status_is_the_enum(msg: Gossip) -> None:
    _, env, _ = decode_message(encode_message(msg, sender="n", seq=0))
    assert all(type(m.status) is MemberStatus for m in env.msg.updates)
    assert all(type(m) is MemberState for m in env.msg.updates)


def test_frames_may_be_any_buffer() -> None:
    msg, payload = make_batch({"id": [1, 2], "channel": 3, "value": 1.0, "active": True}, 3)
    frames = encode_message(msg, sender="p", seq=1, payload=payload)
    for wrap in (bytearray, memoryview):
        topic, env, got = decode_message([wrap(f) for f in frames])
        assert topic == b"ent.003" and env.msg == msg
        assert isinstance(got, memoryview) and got.tobytes() == payload
    zmq = pytest.importorskip("zmq")
    topic, env, got = decode_message([zmq.Frame(f) for f in frames])
    assert bytes(got) == payload and env.msg == msg


def test_envelope_layout_is_as_specified() -> None:
    update = MemberState("a", "h:1", "h:2", 3, MemberStatus.DEAD)
    frames = encode_message(Gossip(updates=(update,), quiet=4), sender="n1", seq=7, cluster="prod")
    assert frames[0] == TOPIC_MEMBERSHIP
    obj = msgpack.unpackb(frames[1], raw=False)
    assert list(obj) == ["v", "m", "t", "c", "s", "q", "b"]
    assert obj == {"v": 1, "m": 16, "t": 5, "c": "prod", "s": "n1", "q": 7,
                   "b": {"updates": [
                       {"name": "a", "addr": "h:1", "pub": "h:2", "inc": 3, "status": 2}
                   ], "quiet": 4}}


def test_a_gossip_without_quiet_is_a_1_12_gossip() -> None:
    """``quiet`` (1.13) is optional both ways: not told, it is not written, and a 1.12
    sender's body decodes to None (every gap may have lost something)."""
    update = MemberState("a", "h:1", "h:2", 3, MemberStatus.DEAD)
    frames = encode_message(Gossip(updates=(update,)), sender="n1", seq=7)
    assert "quiet" not in msgpack.unpackb(frames[1], raw=False)["b"]
    assert decode_message(frames)[1].msg == Gossip(updates=(update,), quiet=None)
    told = decode_message(encode_message(Gossip(updates=(update,), quiet=0), sender="n1", seq=8))[1].msg
    assert told.quiet == 0


# -- topics ----------------------------------------------------------------------------------


def test_topics() -> None:
    assert entity_topic(7) == b"ent.007" and entity_topic(0) == b"ent.000"
    assert entity_topic(255) == b"ent.255"
    assert entity_topic(np.uint8(12)) == b"ent.012"
    assert all(entity_topic(c).startswith(TOPIC_ENTITIES_ALL) for c in range(256))
    topics = [entity_topic(c) for c in range(256)]
    assert not any(a != b and b.startswith(a) for a in topics for b in topics)  # no prefix clashes
    assert entity_channel(b"ent.042") == 42 and entity_channel(b"ent.42") is None
    assert entity_channel(b"ent.256") is None and entity_channel(b"mbr") is None
    for bad in (-1, 256):
        with pytest.raises(ValueError):
            entity_topic(bad)
    assert topic_for(Ping(1, "a", "h:1")) == TOPIC_DIRECT
    assert topic_for(Heartbeat(1, "a")) == b"nuc"
    assert topic_for(Aggregates(1)) == b"agg" and topic_for(Alert("k", "t")) == b"alr"
    assert topic_for(AggregateColumns(1)) == b"col"  # not under agg: its subscribers expect row maps
    with pytest.raises(TypeError):
        topic_for(object())  # type: ignore[arg-type]


# -- hostile input: only WireError -----------------------------------------------------------


def _only_wire_error(frames: Any, **kw: Any) -> WireError | None:
    try:
        decode_message(frames, **kw)
    except WireError as exc:
        assert exc.reason and exc.reason.replace("_", "").isalpha()
        return exc
    return None


@FAST
@given(st.lists(st.binary(max_size=120), max_size=5))
def test_arbitrary_frames_only_raise_wire_error(frames: list[bytes]) -> None:
    _only_wire_error(frames)


msgpack_objects = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(1 << 63), U64), st.floats(),
              st.text(max_size=20), st.binary(max_size=20)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=20,
)
topics = st.sampled_from([b"dir", b"mbr", b"nuc", b"agg", b"alr", b"ent.007", b"ent.", b""])


@FAST
@given(topics, msgpack_objects, st.one_of(st.none(), st.binary(max_size=40)))
def test_arbitrary_msgpack_only_raises_wire_error(
    topic: bytes, obj: Any, payload: bytes | None
) -> None:
    env = msgpack.packb(obj, use_bin_type=True)
    _only_wire_error([topic, env] + ([] if payload is None else [payload]))


@FAST
@given(
    topics,
    st.sampled_from(list(MsgType) + [0, 8, 99]),
    msgpack_objects,
    st.dictionaries(st.sampled_from(["v", "m", "c", "s", "q"]), msgpack_objects, max_size=2),
    st.one_of(st.none(), st.binary(max_size=40)),
)
def test_arbitrary_bodies_only_raise_wire_error(topic: bytes, t: int, body: Any, over: dict,
                                                payload: bytes | None) -> None:
    env = {"v": 1, "m": 0, "t": int(t), "c": "", "s": "x", "q": 0, "b": body, **over}
    frames = [topic, msgpack.packb(env, use_bin_type=True)]
    _only_wire_error(frames + ([] if payload is None else [payload]))


@FAST
@given(messages_with_payload, st.data())
def test_one_bad_field_only_raises_wire_error(
    msg_payload: tuple[Any, bytes | None], data: st.DataObject
) -> None:
    """Replace one body field (or one member-state field) with an arbitrary value."""
    msg, payload = msg_payload
    frames = encode_message(msg, sender="n", seq=0, payload=payload)
    env = msgpack.unpackb(frames[1], raw=False)
    target = env["b"]
    for key in ("updates", "members"):
        if target.get(key):
            target = target[key][0]
    # a body of defaults only (PLACEMENT_REQUEST {}) gets one of its optional keys
    keys = sorted(target) or [name for name, _kind, _seg in SCHEMAS[message_type(msg)].body.kinds]
    key = data.draw(st.sampled_from(keys))
    target[key] = data.draw(msgpack_objects)
    frames[1] = msgpack.packb(env, use_bin_type=True)
    _only_wire_error(frames)


@FAST
@given(messages_with_payload, st.data())
def test_mutated_frames_only_raise_wire_error(
    msg_payload: tuple[Any, bytes | None], data: st.DataObject
) -> None:
    msg, payload = msg_payload
    frames = [bytearray(f) for f in encode_message(msg, sender="n", seq=0, payload=payload)]
    which = data.draw(st.integers(0, len(frames) - 1))
    frame = frames[which]
    action = data.draw(st.sampled_from(["flip", "truncate", "insert"]))
    pos = data.draw(st.integers(0, max(0, len(frame) - 1)))
    if action == "flip" and frame:
        frame[pos] ^= data.draw(st.integers(1, 255))
    elif action == "truncate":
        del frame[pos:]
    else:
        frame[pos:pos] = data.draw(st.binary(min_size=1, max_size=4))
    if _only_wire_error([bytes(f) for f in frames]) is None:
        # whatever decoded must re-encode: the decoder never lets an invalid value through
        _, env, got = decode_message([bytes(f) for f in frames])
        encode_message(env.msg, sender=env.sender, seq=env.seq, cluster=env.cluster,
                       payload=None if got is None else bytes(got))


@pytest.mark.parametrize(
    "frames",
    [None, 42, "dir", [1, 2], [b"dir", None], [b"dir", 3.5, b""], iter([b"a", b"b"]),
     {"a": b"dir", "b": b""}],
)
def test_non_frame_input_is_a_wire_error(frames: Any) -> None:
    exc = _only_wire_error(frames)
    assert exc is not None and exc.reason in ("frames", "topic")


# -- reasons ---------------------------------------------------------------------------------

PING = Ping(probe=1, target="b", reply_to="h:1")


def _env(t: int = MsgType.PING, body: Any = None, /, **over: Any) -> bytes:
    env = {"v": 1, "m": 0, "t": int(t), "c": "", "s": "a", "q": 0,
           "b": {"probe": 1, "target": "b", "reply_to": "h:1"} if body is None else body}
    env.update(over)
    return msgpack.packb(env, use_bin_type=True)


@pytest.mark.parametrize(
    ("frames", "reason", "kw"),
    [
        ([_env()], "frames", {}),
        ([b"dir", _env(), b"", b""], "frames", {}),
        ([b"dir", _env()[:-3]], "truncated", {}),
        ([b"dir", _env() + b"\x01"], "msgpack", {}),
        ([b"dir", b"\xc1"], "msgpack", {}),
        ([b"dir", msgpack.packb([1, 2])], "header", {}),
        ([b"dir", _env(v=2)], "version", {}),
        ([b"dir", _env(v=2, b=[], t="x")], "version", {}),
        ([b"dir", _env(t=13)], "type", {}),
        ([b"dir", _env(q=-1)], "header", {}),
        ([b"dir", _env(s=7)], "header", {}),
        ([b"dir", _env(c="other")], "cluster", {"cluster": "mine"}),
        ([b"mbr", _env()], "topic", {}),
        ([b"dir", _env(), b"x"], "payload", {}),
        ([b"dir", _env(MsgType.PING, {"probe": "1", "target": "b", "reply_to": "h:1"})],
         "field", {}),
        ([b"dir", _env(MsgType.PING, {"probe": 1, "target": "b", "reply_to": "h"})], "field", {}),
        ([b"dir", _env(MsgType.PING, {"probe": 1, "target": "b"})], "field", {}),
        ([b"dir" * 20, _env()], "topic", {}),
    ],
)
def test_reasons(frames: list[bytes], reason: str, kw: dict) -> None:
    with pytest.raises(WireError) as info:
        decode_message(frames, **kw)
    assert info.value.reason == reason


def test_higher_minor_and_unknown_keys_are_accepted() -> None:
    body = {"probe": 1, "target": "b", "reply_to": "h:1", "new_field": [1, {"x": 2}]}
    _, env, _ = decode_message([b"dir", _env(MsgType.PING, body, m=9, extra="yes")])
    assert env.msg == PING and env.minor == 9 and env.version == 1


def test_cluster_label() -> None:
    frames = encode_message(PING, sender="a", seq=0, cluster="prod")
    assert decode_message(frames, cluster="prod")[1].cluster == "prod"
    assert decode_message(frames)[1].cluster == "prod"  # no label configured: accept any
    with pytest.raises(WireError) as info:
        decode_message(encode_message(PING, sender="a", seq=0), cluster="prod")
    assert info.value.reason == "cluster"


def test_size_limits() -> None:
    big = b"\x00" * (limits.MAX_ENVELOPE_BYTES + 1)
    with pytest.raises(WireError) as info:
        decode_message([b"dir", big])
    assert info.value.reason == "too_large"
    msg, payload = make_batch({"id": np.arange(100), "channel": 1, "value": 0.0, "active": True}, 1)
    frames = encode_message(msg, sender="p", seq=0, payload=payload)
    with pytest.raises(WireError) as info:
        decode_message(frames, max_payload=999)
    assert info.value.reason == "too_large"
    assert decode_message(frames, max_payload=1000)[1].msg == msg
    member = {"name": "n", "addr": "h:1", "pub": "h:2", "inc": 0, "status": 0}
    many = _env(MsgType.GOSSIP, {"updates": [member] * (limits.MAX_MEMBERS_PER_MESSAGE + 1)})
    with pytest.raises(WireError) as info:
        decode_message([b"mbr", many])
    assert info.value.reason == "too_large"
    ok = _env(MsgType.GOSSIP, {"updates": [member] * limits.MAX_MEMBERS_PER_MESSAGE})
    assert len(decode_message([b"mbr", ok])[1].msg.updates) == limits.MAX_MEMBERS_PER_MESSAGE


def test_hostile_container_headers_are_refused_cheaply() -> None:
    for marker in (b"\xdd", b"\xdf", b"\xdb", b"\xc6"):  # array32, map32, str32, bin32
        data = marker + b"\xff\xff\xff\xff"
        with pytest.raises(WireError):
            decode_message([b"dir", data])


# -- encode refuses what peers would reject (local misuse: ValueError / TypeError) ------------


@pytest.mark.parametrize(
    ("msg", "kw"),
    [
        (Ping(probe=-1, target="b", reply_to="h:1"), {}),
        (Ping(probe=1 << 64, target="b", reply_to="h:1"), {}),
        (Ping(probe=True, target="b", reply_to="h:1"), {}),
        (Ping(probe=1, target="", reply_to="h:1"), {}),
        (Ping(probe=1, target="x" * 256, reply_to="h:1"), {}),
        (Ping(probe=1, target="b", reply_to="h"), {}),
        (Ping(probe=1, target="b", reply_to="h:70000"), {}),
        (Ping(probe=1, target="\ud800", reply_to="h:1"), {}),
        (Vote(term=1, granted=1, pre=False), {}),  # type: ignore[arg-type]
        (Gossip(updates=(MemberState("a", "h:1", "h:2", 0, 7),)), {}),  # type: ignore[arg-type]
        (Gossip(updates=[None]), {}),  # type: ignore[list-item]
        (Alert(kind="k", text="t" * 5000), {}),
        (Aggregates(tick=1, rows=({"a": [1]},)), {}),
        (Aggregates(tick=1, rows=({"a": 1 << 64},)), {}),
        (PING, {"sender": ""}),
        (PING, {"seq": -1}),
        (PING, {"cluster": "a\nb"}),
        (PING, {"payload": b"x"}),
        (EntityBatch(channel=1, count=1, compressed=False), {}),
        (EntityBatch(channel=1, count=2, compressed=False), {"payload": b"\x00" * 10}),
        (EntityBatch(channel=300, count=0, compressed=False), {"payload": b""}),
        (EntityBatch(channel=1, count=0, compressed=False, acks=256), {"payload": b""}),
        (EntityBatch(channel=1, count=0, compressed=False, hops=-1), {"payload": b""}),
        (Gossip(updates=(MemberState("a", "h:1", "h:2", 0, MemberStatus.ALIVE, data="h"),)), {}),
        (Placement(epoch=1, digest="", block_size=1 << 32), {}),
        (Placement(epoch=1, digest="", block_size=1000, owners=(Owner("a", ""),)), {}),
        (BatchReply(seq=1, accepted=0, epoch=-1), {}),
    ],
)
def test_encode_refuses_invalid_messages(msg: Any, kw: dict) -> None:
    kw = {"sender": "a", "seq": 0, **kw}
    with pytest.raises((ValueError, TypeError)) as info:
        encode_message(msg, **kw)
    assert not isinstance(info.value, WireError)


def test_encode_refuses_non_messages_and_huge_envelopes() -> None:
    with pytest.raises(TypeError):
        encode_message(object(), sender="a", seq=0)  # type: ignore[arg-type]
    long = "x" * 200
    huge = StateReply(members=tuple(MemberState(f"{long}{i}", "h:1", "h:2", 0, MemberStatus.ALIVE)
                                    for i in range(6000)))
    with pytest.raises(ValueError):
        encode_message(huge, sender="a", seq=0)


def test_encode_normalizes_numpy_and_enum_values() -> None:
    inc: Any = np.uint64(5)
    member = MemberState("a", "h:1", "h:2", inc, MemberStatus.ALIVE)
    msg = Gossip(updates=(member,))
    seq: Any = np.int64(3)
    _, env, _ = decode_message(encode_message(msg, sender="a", seq=seq))
    assert env.msg.updates[0].inc == 5 and env.seq == 3
    rows = ({"mean": np.float32(1.5), "n": np.int64(3), "ok": np.bool_(True)},)
    _, env, _ = decode_message(encode_message(Aggregates(tick=1, rows=rows), sender="a", seq=0))
    assert env.msg.rows == ({"mean": 1.5, "n": 3, "ok": True},)


# -- sequence numbers -----------------------------------------------------------------------


def test_sequence_counter_and_tracker() -> None:
    counter = SequenceCounter()
    assert [counter.next(b"mbr") for _ in range(3)] == [0, 1, 2]
    assert counter.next(b"ent.007") == 0
    tracker = SequenceTracker()
    assert tracker.observe("a", b"mbr", 0) is SeqEvent.FIRST
    assert tracker.observe("a", b"mbr", 1) is SeqEvent.NEXT
    assert tracker.observe("a", b"mbr", 1) is SeqEvent.DUPLICATE
    assert tracker.last("a", b"mbr") == 1
    assert tracker.observe("a", b"mbr", 5) is SeqEvent.GAP
    assert tracker.observe("a", b"mbr", 0) is SeqEvent.RESTART
    assert tracker.observe("a", b"nuc", 9) is SeqEvent.FIRST  # per topic
    tracker.forget("a")
    assert tracker.last("a", b"mbr") is None


def test_heartbeat_placement_is_a_minor_addition():
    # 1.1 adds Heartbeat.placement: a 1.0 heartbeat (no key) decodes with it empty, and an
    # empty one is not written, so a 1.0 peer sees the bytes it always saw.
    from corec_node.wire import Heartbeat

    old = encode_message(Heartbeat(term=3, leader="node-a"), sender="node-a", seq=1)
    assert b"placement" not in b"".join(old)
    assert decode_message(old)[1].msg == Heartbeat(term=3, leader="node-a", placement="")
    new = encode_message(Heartbeat(term=3, leader="node-a", placement="00ff00ff00ff00ff"), sender="node-a", seq=2)
    assert decode_message(new)[1].msg.placement == "00ff00ff00ff00ff"
