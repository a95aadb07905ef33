"""The field kinds of the envelope's bodies (SPEC 5): each checks a value msgpack decoded
(``load``) or normalizes one a caller put in a message (``dump``), and raises ``_Bad`` with
the path to the bad value. ``wire/envelope.py`` builds its schemas from them.

load(value) gets what msgpack decoded and returns the typed value. dump(value) gets what
a caller put in a dataclass, normalizes it (numpy scalars, IntEnum) and returns the wire
value. Both raise _Bad; composites add their path segment on the way up, so the hot path
never formats a string, and the codec turns it into WireError (decode) or ValueError
(encode: the caller's fault there)."""

from __future__ import annotations

import re
import reprlib
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, fields
from typing import Any

import numpy as np

from corec_node.wire import limits
from corec_node.wire.messages import MemberState, MemberStatus, Voter

UINT64_MAX = (1 << 64) - 1

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


class _Tuple(_Kind):
    """An array of exactly one item per kind given, in order (a tuple once decoded):
    an overlay message id is ``[addr, uint64]``."""

    __slots__ = ("items", "spec")

    def __init__(self, *items: _Kind) -> None:
        self.items = items
        self.spec = f"array [{', '.join(k.spec for k in items)}]"

    def load(self, value: Any) -> tuple:
        if (type(value) is not tuple and type(value) is not list) or len(value) != len(self.items):
            raise _expected(self.spec, value)
        return tuple(self._each(value, "load"))

    def dump(self, value: Any) -> list:
        if not isinstance(value, (tuple, list)) or len(value) != len(self.items):
            raise _expected(self.spec, value)
        return self._each(value, "dump")

    def _each(self, value: Sequence, how: str) -> list:
        out: list = []
        for i, (kind, item) in enumerate(zip(self.items, value)):
            try:
                out.append(getattr(kind, how)(item))
            except _Bad as exc:
                raise exc.at(f"[{i}]") from None
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
_PEERS = _Array(_ADDR, limits.MAX_PEERS_PER_MESSAGE)
_MSG_ID = _Tuple(_ADDR, _U64)
