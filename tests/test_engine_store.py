"""EntityStore: ingest rules against a one-record-at-a-time reference model, handoff,
block table, memory."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from records import entities as recs

from corec_node.engine import store as store_mod
from corec_node.engine.blocks import (
    FusionTable,
    block_channel,
    block_id,
    block_ids_of,
    block_number,
)
from corec_node.engine.runs import stable_order
from corec_node.engine.store import EntityStore, IngestResult
from corec_node.wire import ENTITY_DTYPE, decode_entities, encode_entities


class Model:
    """The ingest rules applied one record at a time, with dicts: the reference."""

    def __init__(self, block_size: int) -> None:
        self.bs = block_size
        self.e: dict[tuple[int, int], list] = {}  # (channel, id) -> [value, active, streak]
        self.berr: dict[int, int] = {}

    def ingest(self, batch) -> IngestResult:
        before = set(self.e)
        keys = set()
        updated = set()
        errors = 0
        for i, ch, v, a in batch.tolist():
            k = (ch, i)
            keys.add(k)
            if math.isfinite(v):
                self.e[k] = [np.float32(v), bool(a), 0]
                if k in before:
                    updated.add(k)
            else:
                errors += 1
                b = block_id(ch, i, self.bs)
                self.berr[b] = self.berr.get(b, 0) + 1
                if k in self.e:
                    self.e[k][2] = min(self.e[k][2] + 1, 255)
                else:
                    self.e[k] = [np.float32(np.nan), False, 1]
        new = len(keys - before)
        return IngestResult(len(batch), new, len(updated), errors, len(batch) - len(keys))

    def check(self, s: EntityStore) -> None:
        state = s.state()
        assert len(state) == len(self.e) == s.count()
        got = {
            (c, i): (v, a, k)
            for i, c, v, a, k in zip(
                state["id"].tolist(), state["channel"].tolist(), state["value"].tolist(),
                state["active"].tolist(), state["streak"].tolist(), strict=True,
            )
        }
        for k, (v, a, streak) in self.e.items():
            gv, ga, gs = got[k]
            assert (math.isnan(gv) and math.isnan(v)) or gv == v, k
            assert bool(ga) == a and gs == streak, k
        # key order and the block table
        keys = state["channel"].astype(np.uint64) << np.uint64(32) | state["id"].astype(np.uint64)
        assert np.all(keys[1:] > keys[:-1])
        blocks = s.blocks()
        bids = block_ids_of(state["channel"], state["id"], self.bs)
        uniq, counts = np.unique(bids, return_counts=True)
        assert blocks["block"].tolist() == uniq.tolist()
        assert blocks["count"].tolist() == counts.tolist()
        errs = {int(b): int(e) for b, e in zip(blocks["block"], blocks["errors"], strict=True)}
        assert {b: e for b, e in errs.items() if e} == {b: e for b, e in self.berr.items() if e}
        starts = s.block_starts()
        assert starts[0] == 0 and starts[-1] == s.count()
        assert np.array_equal(np.diff(starts), counts)


VALUES = st.sampled_from([1.0, -2.5, 3.25, 100.0, float("nan"), float("inf"), -float("inf")])


@st.composite
def batches(draw, max_id=400, max_len=80):
    n = draw(st.integers(0, max_len))
    ids = draw(st.lists(st.integers(0, max_id), min_size=n, max_size=n))
    chans = draw(st.lists(st.integers(0, 2), min_size=n, max_size=n))
    vals = draw(st.lists(VALUES, min_size=n, max_size=n))
    act = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    return recs(ids, chans, vals, act)


@pytest.mark.parametrize(("small_insert", "max_runs", "lookup_run"), [(0, 0, 4), (0, 10_000, 4), (10_000, 64, 1024)])
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(bs=st.sampled_from([1, 7, 100]), seq=st.lists(batches(), min_size=1, max_size=6))
def test_ingest_matches_one_by_one_model(monkeypatch, small_insert, max_runs, lookup_run, bs, seq):
    # small_insert 0 and max_runs 0: every insert takes the scatter path; max_runs 10_000:
    # the run-by-run slice moves; small_insert 10_000: the memmove path, key by key.
    # lookup_run 4: batches span many runs, so both the guess and the sparse path run.
    monkeypatch.setattr(store_mod, "SMALL_INSERT", small_insert)
    monkeypatch.setattr(store_mod, "MAX_RUNS", max_runs)
    monkeypatch.setattr(store_mod, "LOOKUP_RUN", lookup_run)
    s, model = EntityStore(block_size=bs), Model(bs)
    for batch in seq:
        assert s.ingest(batch) == model.ingest(batch)
        model.check(s)


def test_lookup_run_boundaries(monkeypatch):
    # Runs of LOOKUP_RUN keys with gaps and new keys in between: the guess must fall back.
    monkeypatch.setattr(store_mod, "LOOKUP_RUN", 4)
    s, model = EntityStore(block_size=10), Model(10)
    for batch in (
        recs(np.arange(0, 100, 2), 1, 1.0),
        recs(np.arange(0, 100, 3), 1, 2.0),
        recs(np.arange(50, 150), 1, 3.0),
        recs(np.arange(0, 150), 1, 4.0),
    ):
        assert s.ingest(batch) == model.ingest(batch)
        model.check(s)


def test_non_finite_is_an_error_never_data():
    s = EntityStore(block_size=10)
    s.ingest(recs([1, 2], 0, [5.0, 6.0]))
    r = s.ingest(recs([1, 2, 3], 0, [np.nan, np.inf, -np.inf]))
    assert r == IngestResult(records=3, new=1, updated=0, errors=3, duplicates=0)
    st_ = s.state()
    assert st_["value"][:2].tolist() == [5.0, 6.0]  # left as it was
    assert st_["active"].tolist() == [1, 1, 0]  # a key first seen erroring is inactive
    assert math.isnan(st_["value"][2])
    assert st_["streak"].tolist() == [1, 1, 1]
    assert s.blocks()["errors"].tolist() == [3]
    r = s.ingest(recs([1], 0, [7.0]))
    assert r.updated == 1 and s.state()["streak"].tolist() == [0, 1, 1]


def test_duplicates_apply_in_order():
    s = EntityStore(block_size=10)
    # key 1: finite, error, finite, error -> value 3, streak 1; key 2: two errors then new
    r = s.ingest(recs([1, 2, 1, 1, 2, 1], 0, [1.0, np.nan, np.nan, 3.0, np.nan, np.nan]))
    assert r == IngestResult(records=6, new=2, updated=0, errors=4, duplicates=4)
    st_ = s.state()
    assert st_["value"][0] == 3.0 and st_["streak"].tolist() == [1, 2]
    assert st_["active"].tolist() == [1, 0]


def test_active_flag_and_channels_are_separate_keys():
    s = EntityStore()
    s.ingest(recs([5, 5], [1, 2], [1.0, 2.0], [1, 0]))
    assert s.count() == 2
    assert s.block_ids().tolist() == [block_id(1, 5), block_id(2, 5)]
    assert s.lookup([1, 2, 3], 5).tolist() == [0, 1, -1]


def test_block_id_formula():
    assert block_id(3, 12_345, 1000) == 3 << 32 | 12
    assert block_id(255, 0xFFFF_FFFF, 1) == 255 << 32 | 0xFFFF_FFFF
    b = block_id(7, 4_000_999)
    assert block_channel(b) == 7 and block_number(b) == 4000
    ids = np.array([0, 999, 1000, 0xFFFF_FFFF], np.uint32)
    assert block_ids_of(np.full(4, 9, np.uint8), ids, 1000).tolist() == [
        block_id(9, int(i)) for i in ids
    ]
    with pytest.raises(ValueError):
        block_id(256, 0)
    with pytest.raises(ValueError):
        EntityStore(block_size=0)


def test_take_and_put_round_trip():
    rng = np.random.default_rng(1)
    a = EntityStore(block_size=100)
    ids = rng.choice(10_000, 3000, replace=False)
    batch = recs(ids, rng.integers(0, 3, 3000), rng.normal(0, 1, 3000), rng.random(3000) > 0.2)
    a.ingest(batch)
    a.ingest(recs(ids[:5], batch["channel"][:5], np.nan))  # some state with NaN-free values
    before = a.state()
    blocks = a.block_ids()
    moving = blocks[::3]
    kept_state = a.state(np.setdiff1d(blocks, moving))
    moved_state = a.state(moving)

    wire = encode_entities(a.take_blocks(moving))  # what travels to the new owner
    assert a.block_ids().tolist() == np.setdiff1d(blocks, moving).tolist()
    assert np.array_equal(a.state(), kept_state)

    b = EntityStore(block_size=100)
    assert b.put_records(decode_entities(wire)) == len(moved_state)
    got = b.state()
    for f in ("id", "channel", "value", "active"):
        assert np.array_equal(got[f], moved_state[f], equal_nan=True), f
    assert not got["streak"].any()  # streaks do not travel in wire records
    # and back: the union is the original
    a.put_records(b.take_blocks(b.block_ids()))
    after = a.state()
    for f in ("id", "channel", "value", "active"):
        assert np.array_equal(after[f], before[f], equal_nan=True), f
    assert b.count() == 0 and len(b.block_ids()) == 0


def test_put_records_keeps_newer_data_unless_overwrite():
    s = EntityStore(block_size=10)
    s.ingest(recs([1, 2], 0, [10.0, 20.0]))
    assert s.put_records(recs([1, 3, 3], 0, [1.0, 3.0, 4.0])) == 1  # 1 kept, 3 inserted
    assert s.state()["value"].tolist() == [10.0, 20.0, 4.0]  # last duplicate wins
    assert s.put_records(recs([2], 0, [np.nan]), overwrite=True, streak=[5]) == 1
    st_ = s.state()
    assert math.isnan(st_["value"][1]) and st_["active"][1] == 0 and st_["streak"][1] == 5
    assert s.blocks()["errors"].tolist() == [0]  # a handoff is not an ingest


def test_drop_blocks_and_entities_of():
    s = EntityStore(block_size=10)
    s.ingest(recs(np.arange(100), 4, np.arange(100.0)))
    e = s.entities_of(block_id(4, 35, 10))
    assert e["id"].tolist() == list(range(30, 40)) and e.dtype == ENTITY_DTYPE
    assert len(s.entities_of(block_id(5, 0, 10))) == 0
    assert s.drop_blocks([block_id(4, 0, 10), block_id(4, 95, 10), 12345]) == 20
    assert s.count() == 80
    assert s.state()["id"].tolist() == list(range(10, 90))
    assert np.diff(s.block_starts()).tolist() == [10] * 8
    s.ingest(recs([5, 95], 4, 1.0))  # blocks come back
    assert s.count() == 82 and len(s.block_ids()) == 10


def test_capacity_doubles_and_shrinks():
    s = EntityStore(block_size=1000)
    caps = []
    for i in range(8):
        s.ingest(recs(np.arange(i * 5000, (i + 1) * 5000), 0, 1.0))
        caps.append(s.capacity)
    assert caps == sorted(caps) and len(set(caps)) < len(caps)  # not a realloc every batch
    assert s.capacity >= 40_000 and s.capacity <= 2 * 40_000 + store_mod.MIN_CAPACITY
    s.drop_blocks(s.block_ids()[:-2])
    assert s.count() == 2000 and s.capacity <= 4 * 2000 + store_mod.MIN_CAPACITY


def test_bytes_per_entity_budget():
    s = EntityStore()
    for i in range(10):
        ids = np.arange(i * 20_000, (i + 1) * 20_000)
        s.ingest(recs(ids, ids % 3, 1.0))
    from corec_node.engine.aggregate import aggregate

    aggregate(s, 0)  # the layout and its scratch buffers count too
    assert s.nbytes() / s.count() <= 48


def test_layout_rebuilt_only_on_key_or_fusion_change():
    s = EntityStore(block_size=10)
    s.ingest(recs(np.arange(50), 0, 1.0))
    lay = s.layout()
    s.ingest(recs(np.arange(50), 0, 2.0))  # values only
    assert s.layout() is lay
    s.ingest(recs([60], 0, 2.0))
    assert s.layout() is not lay
    lay = s.layout()
    s.fusions.merge(block_id(0, 0, 10), block_id(0, 10, 10))
    assert s.layout() is not lay


def test_views_are_read_only():
    s = EntityStore()
    s.ingest(recs([1], 0, 1.0))
    for view in (s.keys, s.values, s.active, s.streaks, s.block_starts()):
        with pytest.raises(ValueError):
            view[0] = 0


def test_fusion_table_flattens_and_releases():
    t = FusionTable()
    a, b, c = (block_id(1, i * 1000) for i in range(3))
    assert t.merge(a, b) == (a, b)
    assert t.merge(b, c) == (b, c)
    assert t.root(a) == c and t.resolve([a, b, c, 99]).tolist() == [c, c, c, 99]
    assert t.merge(a, c) is None
    assert t.members(c) == [c, a, b]
    with pytest.raises(ValueError):
        t.merge(a, block_id(2, 0))
    assert t.release(a) == [a] and t.root(a) == a
    assert t.release(c) == [b] and len(t) == 0


@pytest.mark.parametrize("key_bits", [40, 63])
def test_stable_order_is_a_stable_argsort(key_bits):
    # key_bits 63 leaves no room for the index: the argsort fallback runs.
    rng = np.random.default_rng(5)
    keys = rng.integers(0, 50, 5000).astype(np.uint64) << np.uint64(30)
    assert np.array_equal(stable_order(keys, key_bits), np.argsort(keys, kind="stable"))


@settings(max_examples=200, deadline=None)
@given(
    runs=st.lists(
        st.tuples(st.integers(0, 1 << 39), st.integers(1, 300), st.integers(0, 3)),
        min_size=1, max_size=12,
    ),
    repeat=st.booleans(),
)
def test_stable_order_of_sorted_runs(runs, repeat):
    # A node's backlog: sorted runs (disjoint, overlapping, with repeated keys), sometimes
    # the same run twice; the order must be exactly numpy's stable argsort.
    parts = [np.uint64(start) + np.arange(length, dtype=np.uint64) * np.uint64(step)
             for start, length, step in runs]
    if repeat:
        parts += parts[:1]
    keys = np.concatenate(parts)
    assert np.array_equal(stable_order(keys, store_mod.KEY_BITS), np.argsort(keys, kind="stable"))


@settings(max_examples=50, deadline=None)
@given(
    held=st.lists(st.tuples(st.integers(0, 2), st.integers(0, 3_000), st.integers(1, 700)), min_size=1, max_size=5),
    queries=st.lists(st.tuples(st.integers(0, 2), st.integers(0, 4_000), st.integers(1, 900)), min_size=1, max_size=8),
)
def test_run_position_finds_exactly_the_runs_held_whole(held, queries):
    # the position of m consecutive keys, or -1 when one of them is missing; asked while
    # the key set changes (binary search) and once it is stable (the block index)
    store = EntityStore(block_size=100)
    for ch, first, n in held:
        store.put_records(recs(np.arange(first, first + n), ch, 1.0))
    keys = store.keys.tolist()
    where = {k: i for i, k in enumerate(keys)}
    for _ in range(2):  # the first pass finds the key set new, the second uses the index
        for ch, first, m in queries:
            k0 = (ch << 32) | first
            want = where[k0] if all((k0 + j) in where for j in range(m)) else -1
            assert store.run_position(k0, m) == want
