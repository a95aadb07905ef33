"""The block row the engine produces each tick, and the rules both databases share.

A row is ``(block, channel, owner, tick, count, active, mean, min, max, std, error_rate,
fitness)``; a dict with those keys is accepted too. ``ts``, the wall time of the tick, is
float epoch seconds (a timezone-aware ``datetime`` is accepted; a naive one is read as
UTC). NaN in a float column means "no value" and is stored as NULL in both databases.

Timestamps reach PostgreSQL as whole microseconds, ``round(ts * 1e6)``, computed by
:func:`epoch_us` and nowhere else: the same float always gives the same ``timestamptz``, so
the history key ``(block, owner, tick, ts)`` of a replayed row is the key it had the first time.

Which row of a block is the latest is decided without any wall clock (:func:`newer`): ``ts``
comes from the owner's clock, and two hosts' clocks may be an hour apart. A row carries its
owner's placement ``epoch`` (``engine/host.py``: a cluster-wide count of placement maps that
every node raises to the highest it hears and that an owner taking over a block has already
passed); the engine puts it in the row dict under ``"epoch"``. In PostgreSQL's 14-field rows it
follows ``ts``; a 13-field row (no epoch known, e.g. a state snapshot from SQLite) has epoch 0.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime, timedelta, timezone
from typing import Any

BLOCK_COLUMNS = (
    "block", "channel", "owner", "tick", "count", "active",
    "mean", "min", "max", "std", "error_rate", "fitness",
)
NCOL = len(BLOCK_COLUMNS)  # 12; a row with its ts appended has 13 fields, with ts and epoch 14
TS = NCOL  # index of ts in a 13- or 14-field row
EPOCH_INDEX = NCOL + 1  # index of the placement epoch in a 14-field row
EPOCH_KEY = "epoch"  # the placement epoch in an engine row dict (and in AGGREGATES rows)

Row = tuple[Any, ...]

_UTC = timezone.utc
_EPOCH = datetime(1970, 1, 1, tzinfo=_UTC)
DAY = 86_400


def _float(x: Any) -> float | None:
    if x is None:
        return None
    x = float(x)
    return None if x != x else x  # NaN -> NULL


_by_name = operator.itemgetter(*BLOCK_COLUMNS)


def normalize_row(r: Mapping[str, Any] | Iterable[Any]) -> Row:
    """One engine row as a plain 12-tuple of Python ints, str and floats (NaN -> None).

    numpy scalars are converted here: neither sqlite3 nor msgpack takes ``numpy.int64``.
    """
    return normalize_rows([r])[0]


def normalize_rows(rows: Iterable[Mapping[str, Any] | Iterable[Any]]) -> list[Row]:
    """:func:`normalize_row` over a batch, written inline: it runs for every row of every tick."""
    out = []
    append = out.append
    for r in rows:
        if type(r) is dict:
            v = _by_name(r)
        elif type(r) is tuple:
            v = r
        elif isinstance(r, Mapping):
            v = _by_name(r)
        else:
            v = tuple(r)
        if len(v) < NCOL:
            raise ValueError(f"a block row needs {NCOL} fields {BLOCK_COLUMNS}, got {len(v)}")
        m0, m1, m2, m3, m4, m5 = v[6], v[7], v[8], v[9], v[10], v[11]
        # float(None) raises: None is allowed and kept; NaN becomes None (x != x only for NaN)
        m0 = None if m0 is None else float(m0)
        m1 = None if m1 is None else float(m1)
        m2 = None if m2 is None else float(m2)
        m3 = None if m3 is None else float(m3)
        m4 = None if m4 is None else float(m4)
        m5 = None if m5 is None else float(m5)
        append((
            int(v[0]), int(v[1]), str(v[2]), int(v[3]), int(v[4]), int(v[5]),
            None if m0 != m0 else m0, None if m1 != m1 else m1, None if m2 != m2 else m2,
            None if m3 != m3 else m3, None if m4 != m4 else m4, None if m5 != m5 else m5,
        ))
    return out


def to_epoch(ts: float | int | datetime) -> float:
    """Float epoch seconds from a float or a datetime (naive means UTC); must be finite."""
    if isinstance(ts, datetime):
        if ts.tzinfo is None:
            ts = ts.replace(tzinfo=_UTC)
        return (ts - _EPOCH) / timedelta(seconds=1)
    value = float(ts)
    if not math.isfinite(value):
        raise ValueError(f"ts must be finite epoch seconds, got {ts!r}")
    return value


def epoch_us(ts: float) -> int:
    """Whole microseconds since the Unix epoch: the one float -> timestamp rule (see module doc)."""
    return round(ts * 1_000_000)


def to_datetime(ts: float) -> datetime:
    return _EPOCH + timedelta(microseconds=epoch_us(ts))


def utc_day(ts: float) -> date:
    return date(1970, 1, 1) + timedelta(days=int(ts // DAY))


def row_epoch(r: Row) -> int:
    """The placement epoch of a 13- or 14-field row (0 when it carries none)."""
    return r[EPOCH_INDEX] if len(r) > EPOCH_INDEX else 0


def tick_epochs(rows: Sequence[Mapping[str, Any] | Sequence[Any]]) -> int | list[int]:
    """The placement epochs of one tick's engine rows, for the outbox: one int when every row
    has the same (the usual case: one map, one epoch), else one per row. A row without one: 0."""
    epochs = [int(r.get(EPOCH_KEY) or 0) if isinstance(r, Mapping) else 0 for r in rows]
    if epochs and epochs.count(epochs[0]) == len(epochs):
        return epochs[0]
    return epochs


def newer(a: Row, b: Row) -> bool:
    """The block_state rule on 13- or 14-field rows: does ``a`` replace ``b``?

    Same owner: a strictly higher tick wins (ticks are per owner and must rise across the
    owner's restarts, see ``LocalStore.last_tick``). Another owner (the block moved): a
    placement epoch at least as high wins. An owner that takes a block over has a higher epoch
    than any row the previous owner published; at an equal epoch the row that arrives last wins,
    because the owner still writing is the live one, so a dead owner's row never stays.
    ``ts`` never decides: it is one host's clock. Equal rows of one owner keep what is stored,
    so replaying an owner's outbox never moves its state back.
    """
    if a[2] == b[2]:
        return a[3] > b[3]
    return row_epoch(a) >= row_epoch(b)


def merged_epoch(a: Row, b: Row) -> int:
    """The epoch stored when ``a`` replaces ``b``: an owner's row keeps the highest epoch that
    owner has written for the block (its epoch may restart lower after a restart, its ticks do not)."""
    return max(row_epoch(a), row_epoch(b)) if a[2] == b[2] else row_epoch(a)


def latest_per_block(rows: list[Row]) -> dict[int, int]:
    """Index of the winning row per block under :func:`newer`, for one batch (later rows are
    the later arrivals)."""
    best: dict[int, int] = {}
    for i, r in enumerate(rows):
        j = best.get(r[0])
        if j is None or newer(r, rows[j]):
            best[r[0]] = i
    return best
