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

import re
import reprlib
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass, fields
from typing import Any

import msgpack
import numpy as np

from corec_node.wire import limits
from corec_node.wire.batch import check_batch_payload
from corec_node.wire.errors import WireError
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
    MemberState,
    MemberStatus,
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
    Voter,
    VoteRequest,
)
from corec_node.wire.topics import FIXED_TOPICS, entity_channel, topic_for

PROTOCOL_MAJOR = 1
PROTOCOL_MINOR = 14
PROTOCOL = f"{PROTOCOL_MAJOR}.{PROTOCOL_MINOR}"
FEATURES = ("placement", "flow", "voters", "batch_reply", "owner_routing", "replicas", "ring", "evolution",
            "hb_direct", COLUMNS_FEATURE)
"""What this implementation adds to 1.0 that changes the wire (1.1, 1.2, 1.3, 1.4), as
members announce it: a feature is used cluster-wide only when every voter announces it.
``batch_reply`` is between a node and its producers, who announce it with their minor."""

HEADER_KEYS = ("v", "m", "t", "c", "s", "q", "b")
"""Envelope keys in canonical order: major, minor, type, cluster, sender, seq, body."""

MAX_TOPIC_BYTES = 32
"""Longer than any 1.0 topic; a longer first frame is refused before it is copied."""

UINT64_MAX = (1 << 64) - 1

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


# -- field kinds: validate a wire value (load) or a local value (dump) -----------------
#
# load(value) gets what msgpack decoded and returns the typed value. dump(value) gets what
# a caller put in a dataclass, normalizes it (numpy scalars, IntEnum) and returns the wire
# value. Both raise _Bad; composites add their path segment on the way up, so the hot path
# never formats a string, and the codec turns it into WireError (decode) or ValueError
# (encode: the caller's fault there).


class _Bad(Exception):
    """Internal: one value failed validation (``path`` is built innermost first)."""

    def __init__(self, reason: str, msg: str) -> None:
        super().__init__(reason, msg)
        self.reason = reason
        self.msg = msg
        self.path: list[str] = []

    def at(self, segment: str) -> _Bad:
        self.path.append(segment)
        return self

    def where(self, root: str) -> str:
        return f"{root}{''.join(reversed(self.path))}: {self.msg}"


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 3, 40, 40


def _expected(what: str, value: Any) -> _Bad:
    text = _REPR.repr(value)  # bounded: a hostile array nested a thousand deep must not recurse
    shown = f"{type(value).__name__} {text[:40]}{'...' if len(text) > 40 else ''}"
    return _Bad("field", f"expected {what}, got {shown}")


_MISSING = object()


class _Kind:
    __slots__ = ()
    spec = "?"

    def load(self, value: Any) -> Any:
        raise NotImplementedError

    def dump(self, value: Any) -> Any:
        return self.load(value)


class _UInt(_Kind):
    __slots__ = ("hi", "spec", "reason_hi")

    def __init__(self, hi: int, spec: str, reason_hi: str = "field") -> None:
        self.hi = hi
        self.spec = spec
        self.reason_hi = reason_hi

    def load(self, value: Any) -> int:
        if type(value) is not int or value < 0:
            raise _expected(self.spec, value)
        if value > self.hi:
            raise _Bad(self.reason_hi, f"{value} > {self.hi}")
        return value

    def dump(self, value: Any) -> int:
        if isinstance(value, np.integer):
            value = int(value)
        elif isinstance(value, int) and not isinstance(value, bool):
            value = int(value)  # IntEnum and other int subclasses pack as plain ints
        return self.load(value)


class _Bool(_Kind):
    __slots__ = ()
    spec = "bool"

    def load(self, value: Any) -> bool:
        if type(value) is not bool:
            raise _expected(self.spec, value)
        return value

    def dump(self, value: Any) -> bool:
        return self.load(bool(value) if isinstance(value, np.bool_) else value)


class _Str(_Kind):
    """A UTF-8 string of at most ``max_bytes`` bytes."""

    __slots__ = ("max_bytes", "empty", "printable", "spec")

    def __init__(self, max_bytes: int, *, empty: bool, printable: bool, spec: str) -> None:
        self.max_bytes = max_bytes
        self.empty = empty
        self.printable = printable
        self.spec = spec

    def load(self, value: Any) -> str:
        if type(value) is not str:
            raise _expected(self.spec, value)
        n = len(value)
        if n > self.max_bytes or (
            n * 4 > self.max_bytes and len(value.encode("utf-8", "surrogatepass")) > self.max_bytes
        ):
            raise _Bad("field", f"{self.spec} longer than {self.max_bytes} UTF-8 bytes")
        if not n and not self.empty:
            raise _Bad("field", f"empty {self.spec}")
        if self.printable and not value.isprintable():
            raise _Bad("field", f"{self.spec} has non-printable characters")
        return value


# host: a DNS name or IPv4 address, or an IPv6 address in brackets (with an optional zone).
_ADDR_RE = re.compile(
    r"(?:[0-9A-Za-z._-]+|\[[0-9A-Fa-f:.]+(?:%[0-9A-Za-z._~-]+)?\]):([0-9]{1,5})", re.ASCII
)
_ADDR_CACHE_MAX = 4096  # addresses repeat in every member list: validate each once


class _Addr(_Str):
    """``host:port`` with port 1..65535."""

    __slots__ = ("_valid",)

    def __init__(self) -> None:
        super().__init__(limits.MAX_ADDR_BYTES, empty=False, printable=True, spec="host:port")
        self._valid: set[str] = set()

    def load(self, value: Any) -> str:
        if type(value) is str and value in self._valid:
            return value
        super().load(value)
        m = _ADDR_RE.fullmatch(value)
        if m is None or not 1 <= int(m.group(1)) <= 65535:
            raise _Bad("field", f"{value[:60]!r} is not host:port")
        if len(self._valid) >= _ADDR_CACHE_MAX:
            self._valid.clear()
        self._valid.add(value)
        return value


_STATUS_BY_VALUE = {int(s): s for s in MemberStatus}


class _Status(_Kind):
    __slots__ = ()
    spec = "member status (0..3)"

    def load(self, value: Any) -> MemberStatus:
        if type(value) is int:
            status = _STATUS_BY_VALUE.get(value)
            if status is not None:
                return status
        raise _expected(self.spec, value)

    def dump(self, value: Any) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise _expected(self.spec, value)
        return int(self.load(int(value)))


class _Struct(_Kind):
    """A dataclass as a map: keys are the field names, in declaration order."""

    __slots__ = ("cls", "kinds", "spec", "defaults")

    def __init__(self, cls: type, **kinds: _Kind) -> None:
        names = tuple(f.name for f in fields(cls))
        if tuple(kinds) != names:
            raise AssertionError(f"{cls.__name__} schema {tuple(kinds)} != fields {names}")
        self.cls = cls
        self.kinds = tuple((name, kind, "." + name) for name, kind in kinds.items())
        self.spec = f"map ({cls.__name__})"
        # a field with a default was added by a minor version: absent means the default,
        # and the default is not written, so older peers see the bytes they always saw
        self.defaults = {f.name: f.default for f in fields(cls) if f.default is not MISSING}

    def load(self, value: Any) -> Any:
        if type(value) is not dict:
            raise _expected(self.spec, value)
        args = {}
        get = value.get
        for name, kind, segment in self.kinds:
            item = get(name, _MISSING)
            if item is _MISSING:
                if name in self.defaults:
                    continue
                raise _Bad("field", "missing").at(segment)
            try:
                args[name] = kind.load(item)
            except _Bad as exc:
                raise exc.at(segment) from None
        return self.cls(**args)  # unknown keys are ignored: that is how minors extend

    def dump(self, value: Any) -> dict[str, Any]:
        if type(value) is not self.cls:
            raise _expected(self.cls.__name__, value)
        out = {}
        for name, kind, segment in self.kinds:
            item = getattr(value, name)
            if name in self.defaults and item == self.defaults[name]:
                continue
            try:
                out[name] = kind.dump(item)
            except _Bad as exc:
                raise exc.at(segment) from None
        return out


class _Array(_Kind):
    """An array (a tuple once decoded) of at most ``max_len`` items of one kind."""

    __slots__ = ("item", "max_len", "spec")

    def __init__(self, item: _Kind, max_len: int) -> None:
        self.item = item
        self.max_len = max_len
        self.spec = f"array of {item.spec}"

    def load(self, value: Any) -> tuple:
        if type(value) is not tuple and type(value) is not list:
            raise _expected(self.spec, value)
        return tuple(self._each(value, self.item.load))

    def dump(self, value: Any) -> list:
        if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Sequence):
            raise _expected(self.spec, value)
        return self._each(value, self.item.dump)

    def _each(self, value: Sequence, convert: Any) -> list:
        if len(value) > self.max_len:
            raise _Bad("too_large", f"{len(value)} items > {self.max_len}")
        out: list = []
        try:
            for item in value:
                out.append(convert(item))
        except _Bad as exc:
            raise exc.at(f"[{len(out)}]") from None
        return out


class _Counts(_Kind):
    """A map of name -> count (BatchReply.rejected): at most ``max_len`` pairs, written
    sorted by name so that the encoding is canonical."""

    __slots__ = ("max_len", "spec")

    def __init__(self, max_len: int) -> None:
        self.max_len = max_len
        self.spec = "map of name to count"

    def load(self, value: Any) -> dict[str, int]:
        if type(value) is not dict:
            raise _expected(self.spec, value)
        if len(value) > self.max_len:
            raise _Bad("too_large", f"{len(value)} keys > {self.max_len}")
        for key, count in value.items():
            try:
                _NAME.load(key)
            except _Bad as exc:
                raise exc.at(" (a key)") from None
            try:
                _COUNT.load(count)
            except _Bad as exc:
                raise exc.at(f".{key}") from None
        return value

    def dump(self, value: Any) -> dict[str, int]:
        if not isinstance(value, Mapping):
            raise _expected(self.spec, value)
        out = {}
        for key in sorted(value, key=lambda k: k.encode("utf-8", "surrogatepass") if isinstance(k, str) else b""):
            try:
                out[key] = _COUNT.dump(value[key])
            except _Bad as exc:
                raise exc.at(f".{key}") from None
        return self.load(out)


_WRITTEN_AS_IS = frozenset((type(None), bool, int, float, str))  # a row's values needing no conversion to write
_ROW_KEY_CACHE_MAX = 1024  # column names repeat in every row of every tick: validate each once


class _Row(_Kind):
    """A row of Aggregates.rows or FusionPlan.fusions: a flat map of key -> nil/bool/int/float/str.

    Every node decodes every owner's rows each tick, so this is on a hot path: column names
    already validated are remembered (as _Addr remembers addresses), and a value is checked
    by its type alone unless it is text."""

    __slots__ = ("_keys",)
    spec = "row map"
    _VALUE_TYPES = frozenset((type(None), bool, int, float))

    def __init__(self) -> None:
        self._keys: set[str] = set()

    def load(self, value: Any) -> dict[str, Any]:
        if type(value) is not dict:
            raise _expected(self.spec, value)
        if len(value) > limits.MAX_ROW_KEYS:
            raise _Bad("too_large", f"{len(value)} keys > {limits.MAX_ROW_KEYS}")
        known, plain = self._keys, self._VALUE_TYPES
        if known.issuperset(value):  # known keys: each value by its type's set (C loops), texts alone
            kinds = set(map(type, value.values()))
            if kinds <= plain:
                return value
            if kinds <= _WRITTEN_AS_IS:
                for key, item in value.items():
                    if type(item) is str:
                        try:
                            _TEXT.load(item)
                        except _Bad as exc:
                            raise exc.at(f".{key}") from None
                return value
        for key, item in value.items():
            if type(key) is not str or key not in known:
                self._key(key)
            kind = type(item)
            if kind in plain:
                continue
            try:
                if kind is not str:
                    raise _expected("nil, bool, int, float or str", item)
                _TEXT.load(item)
            except _Bad as exc:
                raise exc.at(f".{key}") from None
        return value

    def _key(self, key: Any) -> None:
        try:
            _ROW_KEY.load(key)
        except _Bad as exc:
            raise exc.at(" (a key)") from None
        if len(self._keys) < _ROW_KEY_CACHE_MAX:
            self._keys.add(key)

    def dump(self, value: Any) -> dict[str, Any]:
        if not isinstance(value, Mapping):
            raise _expected(self.spec, value)
        if type(value) is dict and set(map(type, value.values())) <= _WRITTEN_AS_IS:  # an engine row: as it is
            return self.load(value)
        row = {k: v.item() if isinstance(v, np.generic) else v for k, v in value.items()}
        return self.load(row)


class _Columns(_Kind):
    """AggregateColumns.columns (since 1.14): a map of column name -> array of values, every
    array of one length, at most ``MAX_ROWS_PER_MESSAGE``; values as in a row map. Checked
    a column at a time, by the set of its values' types (the text ones one by one)."""

    __slots__ = ("_names",)
    spec = "column map"

    def __init__(self) -> None:
        self._names = _Row()  # its cache of column names already validated

    def load(self, value: Any) -> dict[str, tuple]:
        if type(value) is not dict:
            raise _expected(self.spec, value)
        if len(value) > limits.MAX_ROW_KEYS:
            raise _Bad("too_large", f"{len(value)} columns > {limits.MAX_ROW_KEYS}")
        out: dict[str, tuple] = {}
        length = None
        for key, column in value.items():
            if type(key) is not str or key not in self._names._keys:
                self._names._key(key)
            if type(column) is not tuple and type(column) is not list:
                raise _expected("array of values", column).at(f".{key}")
            if length is None:
                length = len(column)
                if length > limits.MAX_ROWS_PER_MESSAGE:
                    raise _Bad("too_large", f"{length} rows > {limits.MAX_ROWS_PER_MESSAGE}").at(f".{key}")
            elif len(column) != length:
                raise _Bad("field", f"{len(column)} values, the column before has {length}").at(f".{key}")
            if not set(map(type, column)) <= _Row._VALUE_TYPES:
                for i, item in enumerate(column):
                    try:
                        if type(item) is str:
                            _TEXT.load(item)
                        elif type(item) not in _Row._VALUE_TYPES:
                            raise _expected("nil, bool, int, float or str", item)
                    except _Bad as exc:
                        raise exc.at(f".{key}[{i}]") from None
            out[key] = column if type(column) is tuple else tuple(column)
        return out

    def dump(self, value: Any) -> dict[str, Any]:
        if not isinstance(value, Mapping):
            raise _expected(self.spec, value)
        out = {}
        for key, column in value.items():
            if isinstance(column, np.ndarray):
                column = column.tolist()
            elif isinstance(column, (list, tuple)) and not set(map(type, column)) <= _WRITTEN_AS_IS:
                column = [v.item() if isinstance(v, np.generic) else v for v in column]
            out[key] = column
        return self.load(out)


_U64 = _UInt(UINT64_MAX, "uint64")
_U8 = _UInt(0xFF, "uint8")
_U32 = _UInt(0xFFFFFFFF, "uint32")
_COUNT = _UInt(limits.MAX_BATCH_RECORDS, "record count", reason_hi="too_large")
_BOOL = _Bool()
_NAME = _Str(limits.MAX_NAME_BYTES, empty=False, printable=True, spec="name")
_LABEL = _Str(limits.MAX_NAME_BYTES, empty=True, printable=True, spec="cluster label")
_ROW_KEY = _Str(limits.MAX_NAME_BYTES, empty=False, printable=True, spec="column name")
_TEXT = _Str(limits.MAX_TEXT_BYTES, empty=True, printable=False, spec="text")
_ADDR = _Addr()
_DIGEST = _Str(32, empty=True, printable=True, spec="digest")
_MEMBER = _Struct(MemberState, name=_NAME, addr=_ADDR, pub=_ADDR, inc=_U64, status=_Status(),
                  version=_LABEL, protocol=_LABEL, features=_Array(_NAME, limits.MAX_FEATURES), data=_ADDR,
                  tags=_Array(_NAME, limits.MAX_TAGS), pruned=_BOOL, settings=_Array(_NAME, limits.MAX_SETTINGS))
_MEMBERS = _Array(_MEMBER, limits.MAX_MEMBERS_PER_MESSAGE)
_VOTERS = _Array(_Struct(Voter, name=_NAME, addr=_ADDR), limits.MAX_VOTERS)
_ROWS = _Array(_Row(), limits.MAX_ROWS_PER_MESSAGE)
_REASONS = _Counts(limits.MAX_REASONS)


@dataclass(frozen=True, slots=True)
class Schema:
    """How one message type travels: its body (a _Struct) and whether a payload follows."""

    type: MsgType
    body: _Struct
    payload: bool = False


def _schema(msg_type: MsgType, cls: type, *, payload: bool = False, **kinds: _Kind) -> Schema:
    return Schema(msg_type, _Struct(cls, **kinds), payload)


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
