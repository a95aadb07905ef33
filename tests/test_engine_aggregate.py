"""Tick aggregation: conservation over a million entities against an independent numpy
reference, definitions of error rate and fitness, fusion groups, row dicts."""

from __future__ import annotations

import math

import numpy as np
import pytest
from records import entities as recs

from corec_node.engine import store as store_mod
from corec_node.engine.aggregate import AGGREGATE_DTYPE, ROW_KEYS, aggregate, aggregate_rows
from corec_node.engine.blocks import block_id
from corec_node.engine.store import EntityStore


def reference(ids, chans, vals, act, block_size):
    """Per-block stats computed independently: last finite record of each key wins (the
    batch carries no errors after data here), grouped with np.unique and ufunc.at."""
    keys = chans.astype(np.int64) << 32 | ids.astype(np.int64)
    # last occurrence of each key
    rev_keys = keys[::-1]
    uk, first_rev = np.unique(rev_keys, return_index=True)
    last = len(keys) - 1 - first_rev
    v = vals[last].astype(np.float64)
    a = act[last].astype(bool) & np.isfinite(vals[last])
    blocks = (uk >> 32) << 32 | (uk & 0xFFFF_FFFF) // block_size
    ub, g = np.unique(blocks, return_inverse=True)
    nb = len(ub)
    count = np.bincount(g, minlength=nb)
    nact = np.bincount(g[a], minlength=nb)
    mean = np.full(nb, np.nan)
    std = np.full(nb, np.nan)
    lo = np.full(nb, np.inf)
    hi = np.full(nb, -np.inf)
    s = np.bincount(g[a], weights=v[a], minlength=nb)
    has = nact > 0
    mean[has] = s[has] / nact[has]
    dev = v[a] - mean[g[a]]
    std[has] = np.sqrt(np.bincount(g[a], weights=dev * dev, minlength=nb)[has] / nact[has])
    np.minimum.at(lo, g[a], v[a])
    np.maximum.at(hi, g[a], v[a])
    lo[~has] = np.nan
    hi[~has] = np.nan
    return ub, count, nact, mean, std, lo, hi


def test_conservation_one_million_entities():
    rng = np.random.default_rng(42)
    n_keys = 1_000_000
    block_size = 1000
    # 4 channels, ids spread over a sparse range per channel, plus 150,000 duplicate
    # records that rewrite earlier keys (the later record must win).
    chans = rng.integers(0, 4, n_keys).astype(np.uint8)
    ids = rng.choice(3_000_000, n_keys, replace=False).astype(np.uint32)
    vals = rng.normal(50.0, 10.0, n_keys).astype(np.float32)
    act = (rng.random(n_keys) > 0.1).astype(np.uint8)
    dup = rng.choice(n_keys, 150_000, replace=False)
    all_ids = np.concatenate([ids, ids[dup]])
    all_ch = np.concatenate([chans, chans[dup]])
    all_vals = np.concatenate([vals, rng.normal(-5.0, 2.0, len(dup)).astype(np.float32)])
    all_act = np.concatenate([act, rng.integers(0, 2, len(dup)).astype(np.uint8)])
    perm = rng.permutation(len(all_ids))
    # keep "later record wins" meaningful: duplicates stay after their originals
    order = np.concatenate([np.sort(perm[perm < n_keys]), np.arange(n_keys, len(all_ids))])
    batch = recs(all_ids[order], all_ch[order], all_vals[order], all_act[order])

    s = EntityStore(block_size=block_size)
    total = 0
    for start in range(0, len(batch), 100_000):
        r = s.ingest(batch[start : start + 100_000])
        total += r.new
    assert total == n_keys == s.count()

    agg = aggregate(s, tick=7)
    ub, count, nact, mean, std, lo, hi = reference(
        batch["id"], batch["channel"], batch["value"], batch["active"], block_size
    )
    assert agg.dtype == AGGREGATE_DTYPE
    assert int(agg["count"].sum()) == n_keys
    assert agg["block"].tolist() == ub.tolist()
    assert np.array_equal(agg["count"], count)
    assert np.array_equal(agg["active"], nact)
    np.testing.assert_allclose(agg["mean"], mean, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(agg["std"], std, rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(agg["min"], lo)
    np.testing.assert_array_equal(agg["max"], hi)
    assert (agg["tick"] == 7).all() and (agg["error_rate"] == 0).all()
    assert ((agg["fitness"] >= 0) & (agg["fitness"] <= 1)).all()


@pytest.mark.parametrize("chunk", [1, 5, 1 << 16])
def test_chunking_does_not_change_results(monkeypatch, chunk):
    rng = np.random.default_rng(3)
    n = 5000
    ids = rng.choice(20_000, n, replace=False)
    batch = recs(ids, rng.integers(0, 3, n), rng.normal(0, 5, n), rng.random(n) > 0.3)
    batch = np.concatenate([batch, recs(np.arange(50_000, 50_010), 0, 1.0, active=0)])
    monkeypatch.setattr(store_mod, "CHUNK", chunk)
    s = EntityStore(block_size=100)
    s.ingest(batch)
    agg = aggregate(s, 0)
    ub, count, nact, mean, std, lo, hi = reference(
        batch["id"], batch["channel"], batch["value"], batch["active"], 100
    )
    assert np.array_equal(agg["count"], count) and np.array_equal(agg["active"], nact)
    np.testing.assert_allclose(agg["mean"], mean, rtol=1e-9)
    np.testing.assert_allclose(agg["std"], std, rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(agg["min"], lo)
    np.testing.assert_array_equal(agg["max"], hi)


def test_non_finite_values_are_not_data():
    s = EntityStore(block_size=10)
    s.ingest(recs([0, 1, 2, 3], 0, [1.0, 2.0, 3.0, 4.0]))
    s.ingest(recs([0, 1, 5], 0, [np.nan, np.inf, np.nan]))
    (row,) = aggregate(s, 1)
    assert row["count"] == 5 and row["active"] == 4  # 5 was created by an error: inactive
    assert row["mean"] == 2.5 and row["min"] == 1.0 and row["max"] == 4.0  # old values kept
    assert row["erroring"] == 3 and row["error_rate"] == pytest.approx(3 / 5)
    assert row["errors"] == 3


def test_block_without_active_entity():
    s = EntityStore(block_size=10)
    s.ingest(recs([0, 1], 0, [1.0, 2.0], active=0))
    (row,) = aggregate(s, 0)
    assert row["active"] == 0 and row["fitness"] == 0.0
    assert all(math.isnan(row[k]) for k in ("mean", "min", "max", "std"))


def test_fitness_definition():
    s = EntityStore(block_size=100)
    # block 0: uniform and all active -> 1.0
    s.ingest(recs(np.arange(10), 0, 5.0))
    # block 1: half active, no errors, uniform -> 0.5
    s.ingest(recs(np.arange(100, 110), 0, 5.0, active=np.arange(10) % 2))
    # block 2: mean 0 (cv infinite) -> stability 0.5
    s.ingest(recs(np.arange(200, 210), 0, np.tile([-1.0, 1.0], 5)))
    # block 3: mean 2, std 1 -> 1/(1+cv) = 2/3 -> stability 5/6; 2 of 10 erroring -> 0.8
    s.ingest(recs(np.arange(300, 310), 0, np.tile([1.0, 3.0], 5)))
    s.ingest(recs([300, 301], 0, np.nan))
    agg = aggregate(s, 0)
    np.testing.assert_allclose(agg["fitness"], [1.0, 0.5, 0.5, 0.8 * 5 / 6])
    np.testing.assert_allclose(agg["error_rate"], [0, 0, 0, 0.2])


def test_empty_store():
    agg = aggregate(EntityStore(), 0)
    assert len(agg) == 0 and agg.dtype == AGGREGATE_DTYPE
    assert aggregate_rows(agg) == []


def test_fused_blocks_report_as_one_row():
    s = EntityStore(block_size=10)
    s.ingest(recs(np.arange(30), 2, np.arange(30.0)))
    s.ingest(recs(np.arange(0, 5), 3, 100.0))
    weak, strong = block_id(2, 25, 10), block_id(2, 15, 10)
    s.fusions.merge(weak, strong)
    agg = aggregate(s, 0)
    assert agg["block"].tolist() == [block_id(2, 0, 10), strong, block_id(3, 0, 10)]
    row = agg[1]
    both = np.r_[10:20, 20:30].astype(np.float64)
    assert row["count"] == 20 and row["blocks"] == 2
    assert row["mean"] == pytest.approx(both.mean())
    assert row["std"] == pytest.approx(both.std())
    assert row["min"] == 10 and row["max"] == 29
    assert agg["blocks"].tolist() == [1, 2, 1]


def test_aggregate_rows_have_exact_keys():
    s = EntityStore(block_size=10)
    s.ingest(recs([0, 1, 20], 1, [1.0, 2.0, 3.0], active=[1, 1, 0]))
    rows = aggregate_rows(aggregate(s, 9), owner="node-a")
    assert [tuple(r) for r in rows] == [ROW_KEYS, ROW_KEYS]
    assert set(ROW_KEYS) == {
        "block", "channel", "owner", "count", "active", "mean", "min", "max", "std",
        "error_rate", "fitness", "tick",
    }
    assert rows[0]["owner"] == "node-a" and rows[0]["tick"] == 9
    assert isinstance(rows[0]["block"], int) and isinstance(rows[0]["mean"], float)
    assert math.isnan(rows[1]["mean"])
    assert aggregate_rows(aggregate(s, 9), ["a", "b"], nan_as_none=True)[1]["mean"] is None
    with pytest.raises(ValueError):
        aggregate_rows(aggregate(s, 9), ["a"])


def test_aggregate_is_a_pure_read():
    s = EntityStore(block_size=10)
    s.ingest(recs(np.arange(25), 0, np.arange(25.0)))
    s.ingest(recs([3], 0, np.nan))
    before = s.state()
    a1, a2 = aggregate(s, 1), aggregate(s, 1)
    assert all(np.array_equal(a1[f], a2[f], equal_nan=True) for f in AGGREGATE_DTYPE.names)
    after = s.state()
    assert all(np.array_equal(after[f], before[f], equal_nan=True) for f in after.dtype.names)
