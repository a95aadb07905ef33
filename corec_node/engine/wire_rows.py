"""Which of an owner's rows of one tick go on the wire, in what messages, and which rows
heard from another owner a node may keep (``heard``).

Every other node takes in each row an owner publishes (2-4 us a row to decode and keep),
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

So a row shown for another owner's block carries the tick of its last change or refresh,
at most ``ROWS_REFRESH`` ticks behind; a static cluster costs its receivers a fifth of a
row a block a tick, and one whose every block changes each tick (entities streaming in
everywhere) costs the same as before. A scaled error (``forecast_error``, ``nano_error``)
that moved by less than ``DRIFT`` of itself does not count as a change (``_drift``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

ROWS_REFRESH = 5  # ticks between two sends of an unchanged row (its tick in others' answers)
ROWS_PER_MESSAGE = 2_000  # aggregate rows per AGGREGATES message: ~300 KB, under the envelope limit
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


def chunks(rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Rows split into messages of at most ``ROWS_PER_MESSAGE`` (one empty list for none)."""
    return [rows[i:i + ROWS_PER_MESSAGE] for i in range(0, len(rows), ROWS_PER_MESSAGE)] or [[]]


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

