"""The message envelope codec (SPEC.md s.2-6, 15): typed dataclasses <-> multipart frames.

Rules of this module:

1. Pure: bytes in, dataclasses out. No sockets, no asyncio, no clock.
2. One table, :data:`SCHEMAS`, says what every message type looks like on the wire (its
   class, each body field and that field's validator, whether it takes a payload frame).
   Adding a message is one MsgType value, one dataclass, one entry here and one topic in
   ``topics.FIXED_TOPICS``.
3. ``decode_message`` raises :class:`WireError` and nothing else, whatever the bytes
   (a remote peer's fault). ``encode_message`` raises ValueError or TypeError when the
   caller hands it something the protocol cannot carry (local misuse), so a node never
   sends a frame its peers would reject.
4. Encoding is canonical (fixed key order, smallest msgpack formats), so the golden vectors
   in protocol/vectors can be compared byte for byte.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

from corec_node.wire import limits
from corec_node.wire.batch import check_batch_payload
from corec_node.wire.errors import WireError
from corec_node.wire.fields import (
    _ADDR,
    _BOOL,
    _COUNT,
    _DIGEST,
    _LABEL,
    _MEMBERS,
    _MSG_ID,
    _NAME,
    _PEERS,
    _REASONS,
    _ROWS,
    _TEXT,
    _U8,
    _U32,
    _U64,
    _VOTERS,
    _Array,
    _Bad,
    _Columns,
    _expected,
    _Kind,
    _Row,
    _Struct,
    _Tuple,
)
from corec_node.wire.messages import (
    COLUMNS_FEATURE,
    Ack,
    AggregateColumns,
    Aggregates,
    Alert,
    BatchReply,
    CopyDone,
    EntityBatch,
    EvolutionPlan,
    Flow,
    FusionPlan,
    Gossip,
    Heartbeat,
    HeartbeatAck,
    Learners,
    Message,
    MsgType,
    Nack,
    NanoWeights,
    Owner,
    Ping,
    PingReq,
    Placement,
    PlacementRequest,
    Ready,
    SequenceHandoff,
    StatePush,
    StateReply,
    Vote,
    VoteRequest,
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
from corec_node.wire.topics import FIXED_TOPICS, entity_channel, topic_for

PROTOCOL_MAJOR = 1
PROTOCOL_MINOR = 16
PROTOCOL = f"{PROTOCOL_MAJOR}.{PROTOCOL_MINOR}"
FEATURES = ("placement", "flow", "voters", "batch_reply", "owner_routing", "replicas", "ring", "evolution",
            "hb_direct", COLUMNS_FEATURE)
"""What this implementation adds to 1.0 that changes the wire (1.1, 1.2, 1.3, 1.4), as
members announce it: a feature is used cluster-wide only when every voter announces it.
``batch_reply`` is between a node and its producers, who announce it with their minor.
A node that runs the overlay (``mesh.overlay``) announces ``overlay`` too (SPEC 7.1,
``shell/control_plane.py``), and since 1.16 ``tree_data`` (TREE_DATA_FEATURE)."""

HEADER_KEYS = ("v", "m", "t", "c", "s", "q", "b")
"""Envelope keys in canonical order: major, minor, type, cluster, sender, seq, body."""

MAX_TOPIC_BYTES = 32
"""Longer than any 1.0 topic; a longer first frame is refused before it is copied."""

DECODE_EXCEPTIONS: tuple[type[BaseException], ...] = (
    msgpack.UnpackException,
    ValueError,  # includes msgpack's ExtraData/FormatError/StackError, UnicodeDecodeError
    TypeError,
    OverflowError,
    RecursionError,
)
"""What the libraries may raise on hostile bytes; each becomes a WireError."""

_UNPACK_OPTIONS: dict[str, Any] = {
    "raw": False,
    "strict_map_key": True,
    "use_list": False,
    "max_str_len": limits.MSGPACK_MAX_STR_LEN,
    "max_bin_len": limits.MSGPACK_MAX_BIN_LEN,
    "max_array_len": limits.MSGPACK_MAX_ARRAY_LEN,
    "max_map_len": limits.MSGPACK_MAX_MAP_LEN,
    "max_ext_len": limits.MSGPACK_MAX_EXT_LEN,
}


@dataclass(frozen=True, slots=True)
class Envelope:
    """A decoded message: the header and the typed body.

    ``version`` is the sender's major version (always PROTOCOL_MAJOR once decoded),
    ``minor`` its minor version (informational: a higher minor only adds keys).
    """

    version: int
    type: MsgType
    cluster: str
    sender: str
    seq: int
    msg: Message
    minor: int = 0




@dataclass(frozen=True, slots=True)
class Schema:
    """How one message type travels: its body (a _Struct) and whether a payload follows."""

    type: MsgType
    body: _Struct
    payload: bool = False


def _schema(msg_type: MsgType, cls: type, *, payload: bool = False, **kinds: _Kind) -> Schema:
    return Schema(msg_type, _Struct(cls, **kinds), payload)


CORE_CARRIED_TYPES = frozenset({MsgType.GOSSIP, MsgType.HEARTBEAT})
"""What a TREE_GOSSIP carries since 1.15 (SPEC 7.1): what the mesh core broadcasts."""
DATA_CARRIED_TYPES = frozenset({MsgType.AGGREGATE_COLUMNS, MsgType.ALERT, MsgType.FUSION_PLAN,
                                MsgType.EVOLUTION_PLAN, MsgType.LEARNERS, MsgType.FLOW})
"""What a TREE_GOSSIP carries since 1.16 (SPEC 7.1): the data plane's broadcasts, which a node
whose members all announce ``tree_data`` sends over the tree instead of its PUB stream."""
CARRIED_TYPES = CORE_CARRIED_TYPES | DATA_CARRIED_TYPES
_CARRIED_NAMES = ", ".join(f"{t.name} ({int(t)})" for t in sorted(CARRIED_TYPES))


class _BodyMemo:
    """The written bodies of the last few carried data messages, by identity. A node on
    the tree forwards each one it takes to its eager peers and hands it to its node process:
    without this, a block's rows were written again (checked, converted) for every copy,
    the mesh process's largest cost while a cluster holds data. A message is immutable
    once built, so the body it was read from, or first written as, is its body."""

    __slots__ = ("_entries", "_size")

    def __init__(self, size: int) -> None:
        self._entries: dict[int, tuple[Message, Any]] = {}
        self._size = size

    def get(self, msg: Message) -> Any:
        entry = self._entries.get(id(msg))
        return entry[1] if entry is not None and entry[0] is msg else None

    def put(self, msg: Message, body: Any) -> None:
        entries = self._entries
        entries[id(msg)] = (msg, body)
        if len(entries) > self._size:
            del entries[next(iter(entries))]  # the oldest


_CARRIED_BODIES = _BodyMemo(32)


class _Carried(_Kind):
    """A TREE_GOSSIP's payload: ``[origin, t, body]``, the originating member's name and one
    message of a type in CARRIED_TYPES, its body checked by that type's schema; decoded to
    ``(origin, message)``."""

    __slots__ = ()
    spec = "array [name, carried type, body]"

    def load(self, value: Any) -> tuple[str, Message]:
        if (type(value) is not tuple and type(value) is not list) or len(value) != 3:
            raise _expected(self.spec, value)
        origin, type_id, body = value
        try:
            origin = _NAME.load(origin)
        except _Bad as exc:
            raise exc.at("[0]") from None
        if type(type_id) is not int or type_id not in CARRIED_TYPES:
            raise _expected(f"carried type {_CARRIED_NAMES}", type_id).at("[1]")
        try:
            msg = SCHEMAS[MsgType(type_id)].body.load(body)
        except _Bad as exc:
            raise exc.at("[2]") from None
        if type_id in DATA_CARRIED_TYPES:
            _CARRIED_BODIES.put(msg, body)
        return origin, msg

    def dump(self, value: Any) -> list:
        if type(value) is not tuple or len(value) != 2:
            raise _expected("(origin, message)", value)
        origin, msg = value
        schema = _BY_CLASS.get(type(msg))
        if schema is None or schema.type not in CARRIED_TYPES:
            raise _expected(f"a message of {_CARRIED_NAMES}", msg).at("[2]")
        try:
            origin = _NAME.dump(origin)
        except _Bad as exc:
            raise exc.at("[0]") from None
        body = _CARRIED_BODIES.get(msg) if schema.type in DATA_CARRIED_TYPES else None
        if body is None:
            try:
                body = schema.body.dump(msg)
            except _Bad as exc:
                raise exc.at("[2]") from None
            if schema.type in DATA_CARRIED_TYPES:
                _CARRIED_BODIES.put(msg, body)
        return [origin, int(schema.type), body]


# THE table. Keys of each body are the dataclass field names, in declaration order.
SCHEMAS: dict[MsgType, Schema] = {
    s.type: s
    for s in (
        _schema(MsgType.PING, Ping, probe=_U64, target=_NAME, reply_to=_ADDR),
        _schema(MsgType.ACK, Ack, probe=_U64, target=_NAME),
        _schema(
            MsgType.PING_REQ, PingReq, probe=_U64, target=_NAME, target_addr=_ADDR, reply_to=_ADDR
        ),
        _schema(MsgType.NACK, Nack, probe=_U64, target=_NAME),
        _schema(MsgType.GOSSIP, Gossip, updates=_MEMBERS, quiet=_U64),
        _schema(MsgType.STATE_PUSH, StatePush, join=_BOOL, reply_to=_ADDR, members=_MEMBERS),
        _schema(MsgType.STATE_REPLY, StateReply, members=_MEMBERS),
        _schema(MsgType.VOTE_REQUEST, VoteRequest, term=_U64, pre=_BOOL, reply_to=_ADDR,
                cfg_term=_U64, cfg_index=_U64, cfg_cluster=_DIGEST),
        _schema(MsgType.VOTE, Vote, term=_U64, granted=_BOOL, pre=_BOOL),
        _schema(MsgType.HEARTBEAT, Heartbeat, term=_U64, leader=_NAME, placement=_DIGEST,
                seq=_U64, cfg_term=_U64, cfg_index=_U64, voters=_VOTERS, commit=_U64,
                cfg_cluster=_DIGEST, settings=_Array(_NAME, limits.MAX_SETTINGS)),
        _schema(MsgType.HEARTBEAT_ACK, HeartbeatAck, term=_U64, seq=_U64, cfg_term=_U64,
                cfg_index=_U64),
        _schema(
            MsgType.ENTITY_BATCH, EntityBatch, payload=True,
            channel=_U8, count=_COUNT, compressed=_BOOL, producer=_U64, pseq=_U64, acks=_U8, epoch=_U64,
            hops=_U8, replica=_U8, delete=_BOOL,
        ),
        _schema(MsgType.AGGREGATES, Aggregates, tick=_U64, rows=_ROWS),
        _schema(MsgType.ALERT, Alert, kind=_NAME, text=_TEXT, facts=_Row()),
        _schema(MsgType.FUSION_PLAN, FusionPlan, term=_U64, fusions=_ROWS),
        _schema(MsgType.FLOW, Flow, hold_ms=_U64),
        _schema(MsgType.BATCH_REPLY, BatchReply, seq=_U64, accepted=_COUNT, rejected=_REASONS, stage=_U8,
                epoch=_U64),
        _schema(MsgType.PLACEMENT_REQUEST, PlacementRequest, epoch=_U64),
        _schema(MsgType.PLACEMENT, Placement, epoch=_U64, digest=_DIGEST, block_size=_U32,
                owners=_Array(_Struct(Owner, name=_NAME, data=_ADDR), limits.MAX_MEMBERS_PER_MESSAGE),
                fusions=_ROWS, replicas=_U8, rule=_NAME),
        _schema(MsgType.SEQUENCE_HANDOFF, SequenceHandoff, rows=_ROWS),
        _schema(MsgType.COPY_DONE, CopyDone, digest=_DIGEST, records=_COUNT, epoch=_U64),
        _schema(MsgType.READY, Ready, digest=_DIGEST),
        _schema(MsgType.LEARNERS, Learners, term=_U64, names=_Array(_NAME, limits.MAX_MEMBERS_PER_MESSAGE)),
        _schema(MsgType.EVOLUTION_PLAN, EvolutionPlan, term=_U64, challenges=_ROWS),
        _schema(MsgType.NANO_WEIGHTS, NanoWeights, payload=True, rows=_ROWS),
        _schema(MsgType.AGGREGATE_COLUMNS, AggregateColumns, tick=_U64, columns=_Columns()),
        _schema(MsgType.VIEW_JOIN, Join, sender=_ADDR),
        _schema(MsgType.VIEW_JOIN_REPLY, JoinReply, sender=_ADDR, peers=_PEERS),
        _schema(MsgType.FORWARD_JOIN, ForwardJoin, sender=_ADDR, joiner=_ADDR, ttl=_U8),
        _schema(MsgType.NEIGHBOR, Neighbor, sender=_ADDR, high=_BOOL),
        _schema(MsgType.NEIGHBOR_REPLY, NeighborReply, sender=_ADDR, accepted=_BOOL),
        _schema(MsgType.DISCONNECT, Disconnect, sender=_ADDR, leaving=_BOOL),
        _schema(MsgType.SHUFFLE, Shuffle, sender=_ADDR, origin=_ADDR, peers=_PEERS, ttl=_U8),
        _schema(MsgType.SHUFFLE_REPLY, ShuffleReply, sender=_ADDR, peers=_PEERS),
        Schema(MsgType.TREE_GOSSIP,  # its field ``payload`` is no payload frame: not through _schema
               _Struct(TreeGossip, sender=_ADDR, msg_id=_MSG_ID, payload=_Carried(), hops=_U8)),
        _schema(MsgType.IHAVE, IHave, sender=_ADDR,
                ids=_Array(_Tuple(_MSG_ID, _U8), limits.MAX_PEERS_PER_MESSAGE)),
        _schema(MsgType.GRAFT, Graft, sender=_ADDR, ids=_Array(_MSG_ID, limits.MAX_PEERS_PER_MESSAGE)),
        _schema(MsgType.PRUNE, Prune, sender=_ADDR),
    )
}
_BY_CLASS: dict[type, Schema] = {s.body.cls: s for s in SCHEMAS.values()}

assert set(SCHEMAS) == set(MsgType), "every MsgType needs a schema"
assert set(FIXED_TOPICS) == set(_BY_CLASS) - {EntityBatch}, "every message needs a topic"


def message_type(msg: Message) -> MsgType:
    """The MsgType of a message dataclass (TypeError if it is not one)."""
    try:
        return _BY_CLASS[type(msg)].type
    except KeyError:
        raise TypeError(f"not a protocol message: {type(msg).__name__}") from None


# -- encode ----------------------------------------------------------------------------


def encode_message(
    msg: Message, *, sender: str, seq: int, cluster: str = "", payload: Any = None
) -> list[Any]:
    """Frames ``[topic, envelope]`` or ``[topic, envelope, payload]`` for ``msg``.

    ``payload`` is bytes or any contiguous buffer, which is put in the frames as a view,
    not copied (the sender must not change it before it is sent).

    ``seq`` is the sender's counter for the topic ``msg`` travels on (SPEC.md, "Sequence
    numbers"); the caller keeps it. Raises ValueError/TypeError if ``msg`` or the header
    values cannot be carried (field out of range, name too long, payload missing, ...).
    """
    schema = _BY_CLASS.get(type(msg))
    if schema is None:
        raise TypeError(f"not a protocol message: {type(msg).__name__}")
    name = type(msg).__name__
    root = "b"
    try:
        root = "sender"
        header_s = _NAME.dump(sender)
        root = "seq"
        header_q = _U64.dump(seq)
        root = "cluster"
        header_c = _LABEL.dump(cluster)
        root = "b"
        body = _CARRIED_BODIES.get(msg) if schema.type in DATA_CARRIED_TYPES else None
        if body is None:
            body = schema.body.dump(msg)
        if schema.payload != (payload is not None):
            raise WireError("payload", "required" if schema.payload else "not allowed")
        if payload is not None:
            payload = payload if type(payload) is bytes else _view(payload, "payload")  # not copied
            if len(payload) > limits.MAX_PAYLOAD_BYTES:
                raise WireError("too_large", f"payload {len(payload)} > {limits.MAX_PAYLOAD_BYTES}")
            if type(msg) is EntityBatch:
                check_batch_payload(msg, payload)
    except _Bad as exc:
        raise ValueError(f"cannot encode {name}: {exc.where(root)}") from None
    except WireError as exc:
        raise ValueError(f"cannot encode {name}: {exc}") from None
    envelope = {
        "v": PROTOCOL_MAJOR,
        "m": PROTOCOL_MINOR,
        "t": int(schema.type),
        "c": header_c,
        "s": header_s,
        "q": header_q,
        "b": body,
    }
    try:
        data = msgpack.packb(envelope, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:  # e.g. a lone surrogate in a str
        raise ValueError(f"cannot encode {name}: {exc}") from None
    if len(data) > limits.MAX_ENVELOPE_BYTES:
        raise ValueError(
            f"cannot encode {name}: envelope {len(data)} > {limits.MAX_ENVELOPE_BYTES} bytes"
        )
    frames = [topic_for(msg), data]
    if payload is not None:
        frames.append(payload)
    return frames


# -- decode ----------------------------------------------------------------------------


def _view(frame: Any, what: str) -> memoryview:
    try:
        view = memoryview(frame)
        if not view.c_contiguous:
            raise ValueError("not contiguous")
        return view if view.ndim == 1 and view.itemsize == 1 else view.cast("B")
    except (TypeError, ValueError) as exc:
        raise WireError("frames", f"{what} frame is not a contiguous buffer: {exc}") from None


def _unpack(view: memoryview) -> Any:
    try:
        return msgpack.unpackb(view, **_UNPACK_OPTIONS)
    except msgpack.ExtraData:
        raise WireError("msgpack", "bytes after the envelope") from None
    except DECODE_EXCEPTIONS as exc:
        # msgpack reports an input that ends too early as a plain ValueError.
        if type(exc) is ValueError and "incomplete" in str(exc):
            raise WireError("truncated", "envelope ends before its msgpack object") from None
        raise WireError("msgpack", f"{type(exc).__name__}: {str(exc)[:80]}") from None


def _header(obj: dict, key: str, kind: _Kind) -> Any:
    try:
        value = obj[key]
    except KeyError:
        raise WireError("header", f"missing header key {key!r}") from None
    try:
        return kind.load(value)
    except _Bad as exc:
        raise WireError("header", exc.where(key)) from None


def decode_message(
    frames: Sequence[bytes],
    *,
    cluster: str | None = None,
    max_payload: int = limits.MAX_PAYLOAD_BYTES,
    skip_body: frozenset[MsgType] = frozenset(),
) -> tuple[bytes, Envelope, bytes | memoryview | None]:
    """Decode and validate one multipart message: ``(topic, envelope, payload)``.

    ``skip_body``: types whose body is left unchecked and unbuilt (the envelope's ``msg``
    is None): for a process that only forwards them to one that decodes them whole.

    Raises WireError (and nothing else) for anything that does not follow SPEC.md; when
    ``cluster`` is given, a message with another cluster label is refused ("cluster").
    The payload is returned as given when it is ``bytes``; any other buffer (bytearray,
    memoryview, zmq.Frame) comes back as a memoryview of it, without a copy.
    """
    try:
        count = len(frames)
    except TypeError:
        raise WireError("frames", f"not a frame sequence: {type(frames).__name__}") from None
    if count not in (2, 3):
        raise WireError("frames", f"{count} frames; a message has 2 or 3")
    try:
        raw_topic, raw_envelope = frames[0], frames[1]
        raw_payload = frames[2] if count == 3 else None
    except (LookupError, *DECODE_EXCEPTIONS) as exc:
        raise WireError("frames", f"cannot index frames: {exc}") from None

    topic_view = _view(raw_topic, "topic")
    if topic_view.nbytes > MAX_TOPIC_BYTES:
        raise WireError("topic", f"topic frame of {topic_view.nbytes} bytes")
    topic = topic_view.tobytes()
    envelope_view = _view(raw_envelope, "envelope")
    if envelope_view.nbytes > limits.MAX_ENVELOPE_BYTES:
        size = envelope_view.nbytes
        raise WireError("too_large", f"envelope {size} > {limits.MAX_ENVELOPE_BYTES} bytes")
    payload: bytes | memoryview | None = None
    if raw_payload is not None:
        payload = raw_payload if type(raw_payload) is bytes else _view(raw_payload, "payload")
        if len(payload) > max_payload:
            raise WireError("too_large", f"payload {len(payload)} > {max_payload} bytes")

    obj = _unpack(envelope_view)
    if type(obj) is not dict:
        raise WireError("header", f"envelope is a {type(obj).__name__}, not a map")
    version = _header(obj, "v", _U64)
    if version != PROTOCOL_MAJOR:
        raise WireError("version", f"major version {version}, this node speaks {PROTOCOL_MAJOR}")
    minor = _header(obj, "m", _U64) if "m" in obj else 0
    type_id = _header(obj, "t", _U64)
    schema = SCHEMAS.get(type_id)  # type: ignore[call-overload]
    if schema is None:
        raise WireError("type", f"unknown message type {type_id}")
    label = _header(obj, "c", _LABEL)
    sender = _header(obj, "s", _NAME)
    seq = _header(obj, "q", _U64)
    if "b" not in obj:
        raise WireError("header", "missing header key 'b'")
    if cluster is not None and label != cluster:
        raise WireError("cluster", f"cluster {label[:60]!r}, expected {cluster[:60]!r}")

    fixed_topic = FIXED_TOPICS.get(schema.body.cls)
    channel = None
    if fixed_topic is not None:
        if topic != fixed_topic:
            raise WireError(
                "topic", f"{schema.type.name} on topic {topic!r}, expected {fixed_topic!r}"
            )
    else:
        channel = entity_channel(topic)
        if channel is None:
            raise WireError("topic", f"{schema.type.name} on topic {topic!r}, expected b'ent.NNN'")
    if schema.payload and payload is None:
        raise WireError("payload", f"{schema.type.name} needs a payload frame")
    if not schema.payload and payload is not None:
        raise WireError("payload", f"{schema.type.name} takes no payload frame")

    if schema.type in skip_body:
        return topic, Envelope(PROTOCOL_MAJOR, schema.type, label, sender, seq, None, minor), payload  # type: ignore[arg-type]
    try:
        msg = schema.body.load(obj["b"])
    except _Bad as exc:
        raise WireError(exc.reason, exc.where("b")) from None
    if type(msg) is EntityBatch:
        if msg.channel != channel:
            raise WireError("topic", f"channel {msg.channel} batch on topic {topic!r}")
        check_batch_payload(msg, payload)
    return topic, Envelope(PROTOCOL_MAJOR, schema.type, label, sender, seq, msg, minor), payload
