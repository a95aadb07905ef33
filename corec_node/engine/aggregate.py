"""Tick aggregation: one row per block (per fusion group), vectorized. Pure: reads a store.

Definitions (what a consumer of the rows may rely on):

- ``count``: entities of the block held here, erroring ones included. ``active``: how many
  of them are active. ``mean``, ``min``, ``max``, ``std`` (population, ddof=0): over the
  ACTIVE entities' values only; NaN when the block has no active entity. An erroring
  entity that is still active counts with its last finite value (errors are not data).
- ``error_rate``: the share of the block's entities whose last report was an error
  (error streak > 0), in [0, 1]. Chosen over "errors since the last tick / count" because
  it is bounded, it describes the block as it is now (an entity that recovered no longer
  counts), and it needs no per-tick reset, so ``aggregate`` only reads the store and may
  be called any number of times. Cumulative error counts are in the ``errors`` field.
- ``fitness`` in [0, 1]::

      fitness = active_share * (1 - error_rate) * stability
      active_share = active / count
      stability = (1 + 1 / (1 + cv)) / 2,   cv = std / |mean|

  and 0 for a block with no active entity. Dead entities (inactive) and erroring ones are
  direct evidence that a block is unhealthy, so each scales fitness fully. Dispersion is
  weaker evidence: ``1/(1+cv)`` alone (the usual choice) sends a healthy signal centred on
  zero (cv -> inf) to 0, so it is mapped to [0.5, 1]: dispersion can at most halve fitness,
  and a perfectly uniform block keeps 1. ``1/(1+cv)`` is computed as ``|mean| / (|mean| +
  std)``, which is defined for a zero mean, and taken as 1 when std is 0.

Fused blocks (blocks.py Rule 3) are reported as one row under the root's id, with
``blocks`` = how many raw blocks held here the row covers.

Cost: a few passes over the columns in chunks of CHUNK entities (``store.Layout``), with
scratch buffers that live in the layout, so a tick allocates only its output rows. Sums are
taken in float64 (``std`` from E[x^2] - E[x]^2: exact enough for sensor data; relative
error about 1e-16 * (mean/std)^2).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from corec_node.engine.store import EntityStore

AGGREGATE_DTYPE = np.dtype(
    [
        ("block", "<i8"),
        ("channel", "u1"),
        ("count", "<i8"),
        ("active", "<i8"),
        ("mean", "<f8"),
        ("min", "<f8"),
        ("max", "<f8"),
        ("std", "<f8"),
        ("error_rate", "<f8"),
        ("fitness", "<f8"),
        ("tick", "<i8"),
        ("erroring", "<i8"),  # entities with error streak > 0
        ("errors", "<i8"),  # non-finite records counted since the blocks came here
        ("blocks", "<i4"),  # raw blocks in the row (> 1 for a fusion group)
    ]
)
"""One aggregate row per block (or fusion group), struct-of-arrays."""

ROW_KEYS = (
    "block", "channel", "owner", "count", "active", "mean", "min", "max", "std",
    "error_rate", "fitness", "tick",
)
"""Keys of the plain dicts :func:`aggregate_rows` makes (the published row)."""

_INF32 = np.float32(np.inf)
_INF_BITS = np.uint32(0x7F80_0000)  # float32 +inf


def aggregate(store: EntityStore, tick: int) -> np.ndarray:
    """Aggregate every block of ``store`` (AGGREGATE_DTYPE, rows sorted by block id)."""
    lay = store.layout()
    nb = len(lay.blocks)
    if nb == 0:
        return np.empty(0, AGGREGATE_DTYPE)
    cdt = np.int16 if store.block_size < (1 << 15) else np.int32
    value, active, streak = store._value, store._active, store._streak
    nact = np.empty(nb, np.int64)
    bad = np.empty(nb, np.int64)
    s1 = np.empty(nb, np.float64)
    s2 = np.empty(nb, np.float64)
    lo = np.empty(nb, np.float32)
    hi = np.empty(nb, np.float32)
    for c in lay.chunks:
        n, o, sl, out = c.stop - c.start, c.offsets, slice(c.start, c.stop), slice(c.b0, c.b1)
        v, a = value[sl], active[sl]
        na = np.add.reduceat(a.view(np.uint8), o, dtype=cdt)
        nact[out] = na
        x64 = lay.f64[:n]
        if int(na.sum(dtype=np.int64)) == n:  # every entity active: no masking
            lo[out] = np.minimum.reduceat(v, o)
            hi[out] = np.maximum.reduceat(v, o)
            np.copyto(x64, v)
        else:
            # Masking with bit operations (cheaper than copyto(where=...), NaN-safe):
            # keep = all ones where active; x = v & keep (inactive -> +0.0);
            # pen = +inf where inactive else +0.0; min over x + pen, max over x - pen.
            keep = lay.u32[:n]
            np.negative(a.view(np.uint8), out=keep, dtype=np.uint32)
            x32 = lay.f32[:n]
            np.bitwise_and(v.view(np.uint32), keep, out=x32.view(np.uint32))
            pen = lay.f32b[:n]
            np.invert(keep, out=keep)
            np.bitwise_and(keep, _INF_BITS, out=pen.view(np.uint32))
            tmp = keep.view(np.float32)  # keep is spent: reuse it
            np.add(x32, pen, out=tmp)
            lo[out] = np.minimum.reduceat(tmp, o)
            np.subtract(x32, pen, out=tmp)
            hi[out] = np.maximum.reduceat(tmp, o)
            np.copyto(x64, x32)
        s1[out] = np.add.reduceat(x64, o)
        np.square(x64, out=x64)
        s2[out] = np.add.reduceat(x64, o)
        st = streak[sl]
        if np.count_nonzero(st):
            flag = lay.mask[:n]
            np.not_equal(st, 0, out=flag)
            bad[out] = np.add.reduceat(flag.view(np.uint8), o, dtype=cdt)
        else:
            bad[out] = 0

    count = lay.counts
    errors = store.block_errors()
    nblocks = np.ones(nb, np.int64)
    rows = lay.roots
    if lay.group is not None:  # fold fused blocks into their group's row
        g, ng = lay.group, len(rows)
        count, nact, bad, errors, nblocks, s1, s2 = (
            np.bincount(g, weights=x, minlength=ng)
            for x in (count, nact, bad, errors, nblocks, s1, s2)
        )
        count, nact, bad, errors, nblocks = (
            x.astype(np.int64) for x in (count, nact, bad, errors, nblocks)
        )
        glo = np.full(ng, _INF32)
        ghi = np.full(ng, -_INF32)
        np.minimum.at(glo, g, lo)
        np.maximum.at(ghi, g, hi)
        lo, hi = glo, ghi

    out = np.empty(len(rows), AGGREGATE_DTYPE)
    out["block"] = rows
    out["channel"] = rows >> 32
    out["count"] = count
    out["active"] = nact
    out["tick"] = tick
    out["erroring"] = bad
    out["errors"] = errors
    out["blocks"] = nblocks
    none = nact == 0
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = s1 / nact
        var = s2 / nact - mean * mean
        std = np.sqrt(np.maximum(var, 0.0))
        denom = np.maximum(count, 1)
        error_rate = bad / denom
        share = nact / denom
        absm = np.abs(mean)
        inv_cv = np.where(std > 0, absm / (absm + std), 1.0)
        fitness = share * (1.0 - error_rate) * (1.0 + inv_cv) / 2.0
    out["mean"] = mean
    out["std"] = np.where(none, np.nan, std)
    out["min"] = np.where(none, np.nan, lo)
    out["max"] = np.where(none, np.nan, hi)
    out["error_rate"] = error_rate
    out["fitness"] = np.where(none, 0.0, np.clip(fitness, 0.0, 1.0))
    return out


def aggregate_rows(
    aggregates: np.ndarray,
    owner: str | Sequence[str] | None = None,
    *,
    nan_as_none: bool = False,
) -> list[dict]:
    """Plain dicts with exactly the keys ROW_KEYS, one per row. ``owner``: one name for
    every row, one name per row, or None (the caller fills it). NaN stays a float NaN
    unless ``nan_as_none`` (for JSON)."""
    n = len(aggregates)
    if owner is None or isinstance(owner, str):
        owners: Sequence[str | None] = [owner] * n
    else:
        owners = list(owner)
        if len(owners) != n:
            raise ValueError(f"{len(owners)} owners for {n} rows")
    cols = {k: aggregates[k].tolist() for k in ROW_KEYS if k != "owner"}
    rows = []
    for i in range(n):
        row = {k: (owners[i] if k == "owner" else cols[k][i]) for k in ROW_KEYS}
        if nan_as_none:
            for k in ("mean", "min", "max", "std"):
                if math.isnan(row[k]):
                    row[k] = None
        rows.append(row)
    return rows
