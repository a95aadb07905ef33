"""Which of an owner's rows of one tick go on the wire, in what messages, and which rows
heard from another owner a node may keep (``heard``).

Every other node takes in each row an owner publishes (3-4 us a row to decode and keep),
so rows sent to the whole cluster cost the cluster N times what they cost the owner. A
row that says what the owner's previous row of that block already said is not worth it:
the owner's hooks, store and audit get every row of every tick as before, but the wire
gets the rows that changed (any value but ``tick``) and, so that a node that missed one
(a lost frame, a subscription made late) is right again soon, each unchanged row every
``ROWS_REFRESH`` ticks, blocks taking turns (``(tick + block) % ROWS_REFRESH``). A new
placement epoch changes every row (its ``epoch``), so a map change, a joiner's included,
still sends them all at once.

The wire checks only a row's form (a flat map of nil, bool, int, float and str); what
its keys must hold is SPEC 9.2, checked here on every row heard from another owner
(SPEC 19, step 23): a row that lacks a key of the table, or has one of the wrong type, is
ignored and counted, and the rest of its message is kept. So one peer's bad row never
reaches ``blocks``, ``status`` or the nucleus's plans, where a str for a count would break
them on every node.

The rows go out twice (``wire_messages``): as AGGREGATES row maps, which subscribers written
against 1.13 and before read, and as AGGREGATE_COLUMNS (1.14), which nodes read. Columns
write each key once a message, and ``heard_columns`` checks them a column at a time (a set
of types, a min and a max), with ``heard`` row by row only for a message that fails: 3.0 us
a row to decode, check and keep, against 5.0 as row maps (``bench/wire.py``).

So a row shown for another owner's block carries the tick of its last change or refresh,
at most ``ROWS_REFRESH`` ticks behind; a static cluster costs its receivers a fifth of a
row a block a tick, and one whose every block changes each tick (entities streaming in
everywhere) costs the same as before. A scaled error (``forecast_error``, ``nano_error``)
that moved by less than ``DRIFT`` of itself does not count as a change (``_drift``).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping, Sequence
from itertools import repeat
from typing import Any

from corec_node.wire.messages import AggregateColumns, Aggregates

ROWS_REFRESH = 5  # ticks between two sends of an unchanged row (its tick in others' answers)
ROWS_PER_MESSAGE = 2_000  # rows per AGGREGATES or AGGREGATE_COLUMNS message: ~450 / 210 KB, under the envelope limit
_ANY_TICK = "tick"
DRIFT_KEYS = frozenset(("forecast_error", "nano_error"))  # scaled errors (SPEC 9.8)
DRIFT = 1e-2  # a relative move of a scaled error below this is not news (``_drift``)
BLOCK_LIMIT = 1 << 40  # block ids are channel << 32 | index (SPEC 9.1)
INT_LIMIT = 1 << 63  # an int a row holds fits an int64 (PostgreSQL's bigint)
EPOCH_LIMIT = 1 << 62  # epochs are term << 32 | maps: a billion terms, and room to count maps above any heard
_INTS = ("block", "channel", "count", "active", "tick")  # ints >= 0, required (SPEC 9.2)
_STATISTICS = ("mean", "min", "max", "std")  # a number or nil, required; a float NaN reads as nil
_SHARES = ("error_rate", "fitness")  # a number in [0, 1], required
_OPTIONAL_INTS = (("epoch", EPOCH_LIMIT), ("generation", INT_LIMIT))  # ints >= 0 where present (9.2, 9.8)
_OPTIONAL_NUMBERS = ("forecast", "forecast_error", "nano_forecast", "nano_error")  # a number or nil (9.8)
_OPTIONAL_TEXTS = ("genome", "genome_spec")  # str where present (9.8)


def rows_for_the_wire(rows: list[dict[str, Any]], previous: Mapping[int, dict[str, Any]], tick: int,
                      refresh: int = ROWS_REFRESH) -> list[dict[str, Any]]:
    """The rows of ``rows`` (this tick's, of our blocks) to publish: each whose block's row in
    ``previous`` (the last row of it we published) is missing or says something else, and
    each whose block's turn to be refreshed this tick is. (Compared with what receivers
    have, not with the last row made, so a scaled error's creep never adds up past
    ``DRIFT`` unsent.)"""
    out = []
    for row in rows:
        block = row["block"]
        if (tick + block) % refresh == 0 or not _same(previous.get(block), row):
            out.append(row)
    return out


def _same(old: dict[str, Any] | None, new: dict[str, Any]) -> bool:
    if old is None or len(old) != len(new):
        return False
    for key, value in new.items():
        if key != _ANY_TICK and (key not in old or old[key] != value) and not _drift(key, old.get(key), value):
            return False
    return True


def _drift(key: str, old: Any, new: Any) -> bool:
    """A scaled error that moved by less than ``DRIFT`` of itself: no news. These are
    ratios of sums that forget slowly, and at rest they creep in their fourth digit every
    tick (a third of a cluster's rows went out each tick for that alone). The owner
    compares with the row it last sent, so what a receiver shows is never further off."""
    return (key in DRIFT_KEYS and type(old) is float and type(new) is float
            and abs(new - old) <= DRIFT * max(abs(new), abs(old)))


def wire_messages(tick: int, rows: list[dict[str, Any]]) -> list[Aggregates | AggregateColumns]:
    """The messages that carry ``rows`` (``rows_for_the_wire``'s), none for none:
    AGGREGATE_COLUMNS, one message per list of keys (a row carrying its genome has more),
    which members read; then AGGREGATES row maps, for subscribers written against 1.13 and
    before (a PUB drops what nobody subscribes to, so they cost the owner their encoding
    only). Columns first: if the lane to the mesh process is full, the row maps are lost.
    Each message holds at most ``ROWS_PER_MESSAGE`` rows."""
    out: list[Aggregates | AggregateColumns] = []
    groups: dict[tuple[str, ...], list[tuple[Any, ...]]] = {}
    for row in rows:
        groups.setdefault(tuple(row), []).append(tuple(row.values()))
    for keys, values in groups.items():
        for i in range(0, len(values), ROWS_PER_MESSAGE):
            out.append(AggregateColumns(tick=tick, columns=dict(zip(keys, zip(*values[i:i + ROWS_PER_MESSAGE]),
                                                                        strict=True))))
    out.extend(Aggregates(tick=tick, rows=tuple(rows[i:i + ROWS_PER_MESSAGE]))
               for i in range(0, len(rows), ROWS_PER_MESSAGE))
    return out


def heard(rows: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """The rows of another owner's message that SPEC 9.2 lets a node keep, and how many it
    ignores. A float NaN where a statistic may be nil is read as nil (in place). (Every
    row is checked whole: comparing a refresh with the row held costs more, since the
    rows held are cold in memory and at rest a refresh differs in its scaled errors.)"""
    kept = [row for row in rows if _usable(row)]
    return kept, len(rows) - len(kept)


def _usable(row: dict[str, Any]) -> bool:
    for key in _INTS:
        value = row.get(key)
        if type(value) is not int or not 0 <= value < INT_LIMIT:  # a bool is no int here
            return False
    block = row["block"]
    if block >= BLOCK_LIMIT or row["channel"] != block >> 32 or row["active"] > row["count"]:
        return False
    for key in _STATISTICS:
        if key not in row or not _number_or_nil(row, key):
            return False
    for key in _SHARES:
        value = row.get(key)
        if (type(value) is not float and type(value) is not int) or not 0 <= value <= 1:  # NaN fails too
            return False
    for key, limit in _OPTIONAL_INTS:
        value = row.get(key, 0)
        if type(value) is not int or not 0 <= value < limit:
            return False
    for key in _OPTIONAL_NUMBERS:
        if key in row and not _number_or_nil(row, key):
            return False
    for key in _OPTIONAL_TEXTS:
        if type(row.get(key, "")) is not str:
            return False
    return type(row.get("anomaly", False)) is bool


def _number_or_nil(row: dict[str, Any], key: str) -> bool:
    """Whether ``row[key]`` is a number or nil; a float NaN becomes nil."""
    value = row[key]
    kind = type(value)
    if kind is float:
        if value != value:
            row[key] = None
        return True
    return kind is int or value is None


def heard_columns(columns: Mapping[str, Sequence[Any]]) -> tuple[list[dict[str, Any]], int]:
    """``heard`` for an AGGREGATE_COLUMNS message: the same rows kept and the same count
    ignored, found a column at a time (the set of its values' types, its range by min and
    max: C loops, not a Python test per value); only a message with a column that fails is
    checked row by row, by ``heard`` itself. The columns are of one length (the wire
    checks that: ``zip`` would cut the longer ones)."""
    by = checked_columns(columns)
    if by is not None:
        return rows_of(by), 0
    keys = tuple(columns)
    return heard([dict(zip(keys, row, strict=True)) for row in zip(*columns.values())])


def checked_columns(columns: Mapping[str, Sequence[Any]]) -> dict[str, list[Any]] | None:
    """The columns as lists when every row they hold is one ``heard`` keeps (a NaN of a
    statistic made nil), else None: then check them row by row (``heard_columns``)."""
    by = {key: list(column) for key, column in columns.items()}  # lists: a NaN becomes nil in place
    if not by or not next(iter(by.values())):
        return {}
    return by if _columns_usable(by) else None


def rows_of(by: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """One row map a row of the columns ``by`` (of one length: the wire checks that)."""
    keys = tuple(by)
    return [dict(zip(keys, row)) for row in zip(*by.values())]


def _columns_usable(by: dict[str, list[Any]]) -> bool:
    """Whether every row of the columns ``by`` (of one length, not empty) is ``_usable``; a
    float NaN of a statistic or an optional number becomes nil, as there."""
    try:
        for key in _INTS:
            if not _ints(by.get(key), INT_LIMIT):
                return False
        blocks = by["block"]
        if max(blocks) >= BLOCK_LIMIT or list(map(operator.rshift, blocks, repeat(32))) != by["channel"] \
                or not all(map(operator.le, by["active"], by["count"])):
            return False
        for key in _STATISTICS:
            if key not in by or not _numbers_or_nil(by[key]):
                return False
        for key in _SHARES:
            column = by.get(key)
            if column is None or not set(map(type, column)) <= _NUMBERS or any(map(math.isnan, column)) \
                    or not 0 <= min(column) <= max(column) <= 1:
                return False
        for key, limit in _OPTIONAL_INTS:
            if key in by and not _ints(by[key], limit):
                return False
        for key in _OPTIONAL_NUMBERS:
            if key in by and not _numbers_or_nil(by[key]):
                return False
        for key in _OPTIONAL_TEXTS:
            if key in by and set(map(type, by[key])) != {str}:
                return False
        return "anomaly" not in by or set(map(type, by["anomaly"])) == {bool}
    except (TypeError, ValueError, OverflowError):  # an int past a float's range, say: row by row
        return False


_NUMBERS = frozenset((int, float))
_NUMBERS_OR_NIL = frozenset((int, float, type(None)))


def _ints(column: list[Any] | None, limit: int) -> bool:
    return column is not None and set(map(type, column)) == {int} and 0 <= min(column) and max(column) < limit


def _numbers_or_nil(column: list[Any]) -> bool:
    """Whether ``column`` holds numbers and nils only; a float NaN in it becomes nil."""
    kinds = set(map(type, column))
    if not kinds <= _NUMBERS_OR_NIL:
        return False
    if float in kinds and (any(v != v for v in column) if type(None) in kinds else any(map(math.isnan, column))):
        for i, value in enumerate(column):
            if value != value:
                column[i] = None
    return True
