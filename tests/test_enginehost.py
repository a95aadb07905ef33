"""EngineHost: which records a node keeps (placement over the live members)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from records import aggregate_row, entities

from corec_node.engine.blocks import block_ids_of
from corec_node.engine.host import EngineHost
from corec_node.engine.placement import PlacementMap
from corec_node.engine.wire_rows import DRIFT, ROWS_REFRESH, rows_for_the_wire


@settings(max_examples=30, deadline=None)
@given(
    sweeps=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 50_000), st.integers(1, 3000)),
                    min_size=1, max_size=6),
    scattered=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_ingest_keeps_exactly_the_records_of_owned_blocks(sweeps, scattered, seed):
    # runs of consecutive ids (a producer's sweep) or the same records shuffled: each node
    # keeps the records of the blocks placement gives it, and together they keep them all.
    channels = np.concatenate([np.full(n, ch) for ch, _, n in sweeps])
    ids = np.concatenate([np.arange(first, first + n) for _, first, n in sweeps])
    recs = entities(ids, channels, 1.0)
    if scattered:
        recs = recs[np.random.default_rng(seed).permutation(len(recs))]
    hosts = {name: EngineHost(name, block_size=100) for name in ("a", "b", "c")}
    for host in hosts.values():
        host.set_members(hosts)
    held = []
    for name, host in hosts.items():
        host.ingest(recs)
        blocks = block_ids_of(recs["channel"], recs["id"], 100)
        owned = np.array([host.placement.owner(int(b)) == name for b in blocks], bool)
        expected = np.unique((recs["channel"][owned].astype(np.uint64) << np.uint64(32)) | recs["id"][owned])
        assert np.array_equal(host.store.keys, expected)
        held.append(host.store.count())
    distinct = len(np.unique((recs["channel"].astype(np.uint64) << np.uint64(32)) | recs["id"]))
    assert sum(held) == distinct


def test_a_view_is_acted_on_only_once_the_nucleus_confirms_it():
    a, b = EngineHost("a", block_size=100), EngineHost("b", block_size=100)
    for host in (a, b):
        host.set_members(["a", "b"])
    recs = entities(np.arange(20_000), 0, 1.0)
    b.ingest(recs)
    held = b.store.count()
    # b sees c join; nothing moves until the leader's heartbeat carries the same member set
    b.observe_view(["a", "b", "c"])
    assert b.placement.members == ("a", "b")
    assert b.confirm(PlacementMap(0, ["a", "b"]).digest()) is None  # the leader has not seen c yet
    assert b.store.count() == held and b.placement.members == ("a", "b")
    handoffs = b.confirm(PlacementMap(0, ["c", "b", "a"]).digest())
    assert handoffs is not None and b.placement.members == ("a", "b", "c")
    moved = sum(len(r) for r in handoffs.values())
    assert set(handoffs) == {"c"} and moved > 0 and b.store.count() == held - moved


def test_while_a_view_waits_the_blocks_it_would_give_are_kept():
    # c died: until the nucleus confirms {a, b}, a keeps the records of c's blocks that
    # {a, b} gives it as well as its own, so c's blocks are rebuilt from that data
    a = EngineHost("a", block_size=100)
    a.set_members(["a", "b", "c"])
    recs = entities(np.arange(50_000), 0, 1.0)
    blocks = block_ids_of(recs["channel"], recs["id"], 100)
    before = np.array([a.placement.owner(int(x)) == "a" for x in blocks])
    a.observe_view(["a", "b"])
    a.ingest(recs)
    after = PlacementMap(0, ["a", "b"])
    want = before | np.array([after.owner(int(x)) == "a" for x in blocks])
    assert a.store.count() == int(want.sum()) > int(before.sum())
    assert a.confirm(PlacementMap(0, ["a", "b"]).digest()) == {}  # nothing to hand away: all a's now
    assert a.store.count() == int(want.sum())


def test_cluster_rows_follow_new_rows_and_a_new_map():
    # cluster_rows is cached: a new row, a member leaving and a forgotten owner all show
    host = EngineHost("a", block_size=100)
    host.set_members(["a", "b"])
    blocks = [1 << 32 | n for n in range(40)]
    owner = {blk: host.placement.owner(blk) for blk in blocks}
    host.observe_rows("a", [aggregate_row(blk, mean=1.0) for blk in blocks if owner[blk] == "a"])
    host.observe_rows("b", [aggregate_row(blk, mean=2.0) for blk in blocks if owner[blk] == "b"])
    assert [r["block"] for r in host.cluster_rows()] == blocks
    assert host.cluster_rows(channel=2) == []
    host.set_members(["a"])  # b left: its rows are no longer the owner's
    assert {r["owner"] for r in host.cluster_rows()} == {"a"}
    host.observe_rows("a", [aggregate_row(blk, mean=3.0) for blk in blocks if owner[blk] == "b"])
    assert [r["block"] for r in host.cluster_rows()] == blocks
    host.forget_owner("a")
    assert host.cluster_rows() == []


@pytest.mark.parametrize("copies", [1, 2])
def test_rows_of_a_member_that_left_the_map_are_forgotten_and_blocks_with_no_copy_left_counted_lost(copies):
    # one answer everywhere: a dead owner's rows never linger, nor come back with it
    host = EngineHost("a", block_size=100, copies=copies)
    host.set_members(["a", "b", "c"])
    blocks = [1 << 32 | n for n in range(60)]
    owner = {blk: host.placement.owner(blk) for blk in blocks}
    for name in ("a", "b", "c"):
        host.observe_rows(name, [aggregate_row(blk, count=10, mean=1.0)
                                 for blk in blocks if owner[blk] == name])
    of_c = sum(1 for blk in blocks if owner[blk] == "c")
    assert of_c and len(host.cluster_rows()) == 60
    host.set_members(["a", "b"])  # c died
    assert {r["owner"] for r in host.rows.values()} <= {"a", "b"}
    held_elsewhere = sum(1 for blk in blocks if owner[blk] == "c" and set(host.placement.holders(blk, copies)) - {"c"})
    if copies == 1:
        assert host.lost == [(("c",), of_c, 10 * of_c)]
    else:  # every block of c had a replica on a or b: nothing lost (b and c may both have held some)
        assert host.lost == [] and held_elsewhere == of_c
    host.lost.clear()
    host.set_members(["a", "b", "c"])  # c back, empty: its old rows stay gone
    assert len(host.cluster_rows()) == 60 - of_c and host.lost == []


GONE = object()  # a key the row lacks


@pytest.mark.parametrize("change", [
    {"count": "many"}, {"active": True}, {"tick": -1}, {"block": 1 << 40}, {"channel": 2}, {"mean": "x"},
    {"fitness": None}, {"fitness": float("nan")}, {"epoch": 1.5}, {"generation": -2}, {"genome": 5},
    {"anomaly": 1}, {"forecast": "soon"}, {"error_rate": GONE}, {"max": GONE}, {"tick": GONE},
    {"count": 1 << 63}, {"epoch": (1 << 64) - 1}, {"epoch": 1 << 62}, {"generation": 1 << 63}, {"fitness": 1.5}, {"error_rate": -0.1},
    {"fitness": float("inf")}, {"active": 5, "count": 3},
])
def test_a_row_spec_9_2_does_not_allow_is_ignored_and_counted_and_the_rest_of_its_message_kept(change):
    host = EngineHost("a", block_size=100)
    host.set_members(["a", "b"])
    theirs = [blk for blk in (1 << 32 | n for n in range(40)) if host.placement.owner(blk) == "b"]
    bad = aggregate_row(theirs[0], **{k: v for k, v in change.items() if v is not GONE})
    for key in [k for k, v in change.items() if v is GONE]:
        del bad[key]
    good = [aggregate_row(blk, count=3, mean=float(blk & 7)) for blk in theirs[1:]]
    host.observe_rows("b", [good[0], bad, *good[1:]])
    assert host.rows_ignored == 1
    assert [r["block"] for r in host.cluster_rows()] == theirs[1:]


def test_a_nan_reads_as_nil_and_an_int_as_the_number_it_is():
    host = EngineHost("a", block_size=100)
    host.set_members(["a", "b"])
    blk = next(b for b in (1 << 32 | n for n in range(40)) if host.placement.owner(b) == "b")
    host.observe_rows("b", [aggregate_row(blk, mean=float("nan"), std=2, forecast=float("nan"), anomaly=True)])
    [row] = host.cluster_rows()
    assert host.rows_ignored == 0 and row["mean"] is None and row["forecast"] is None and row["std"] == 2


@pytest.mark.parametrize("change", [{"count": 10.0}, {"active": True}, {"epoch": 3.0}, {"tick": -1}, {"tick": 2.0}])
def test_a_refresh_of_a_row_held_is_checked_too(change):
    # a refresh that differs from the row held only in types (10.0 == 10, True == 1) or in
    # a bad tick is ignored too
    host = EngineHost("a", block_size=100)
    host.set_members(["a", "b"])
    blk = next(b for b in (1 << 32 | n for n in range(40)) if host.placement.owner(b) == "b")
    host.observe_rows("b", [aggregate_row(blk, count=10, active=1, epoch=3, tick=1)])
    host.observe_rows("b", [aggregate_row(blk, count=10, active=1, epoch=3, tick=6)])
    assert host.rows_ignored == 0 and host.cluster_rows()[0]["tick"] == 6  # a refresh: its tick shows
    host.observe_rows("b", [aggregate_row(blk, count=10, active=1, epoch=3, tick=7) | change])
    assert host.rows_ignored == 1 and host.cluster_rows()[0]["tick"] == 6


_ROW_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-3, 1 << 41), st.integers(0, (1 << 64) - 1),
                        st.floats(allow_nan=True), st.text(max_size=8))
_ROW_KEYS = st.sampled_from(["block", "channel", "count", "active", "mean", "min", "max", "std", "error_rate",
                             "fitness", "tick", "epoch", "forecast", "generation", "genome", "genome_spec",
                             "anomaly", "other"])


@settings(max_examples=200, deadline=None)
@given(rows=st.lists(st.dictionaries(_ROW_KEYS, _ROW_VALUES, max_size=18), max_size=6))
def test_no_row_a_peer_sends_breaks_what_a_node_answers_from_rows(rows):
    # what the wire lets through (a flat map of nil, bool, int, float and str) reaches the
    # engine; whatever it is, the node's answers from rows still come (a node never dies
    # from a peer's bytes, and one peer's row must not break status on every node)
    host = EngineHost("a", block_size=100, copies=2)
    host.set_members(["a", "b", "c"])
    valid = [aggregate_row(1 << 32 | 5, count=4, mean=1.5)]
    host.observe_rows("b", [*rows, *valid])
    shown = host.rows_with_holders()
    assert max((int(r.get("tick") or 0) for r in shown), default=0) >= 0
    assert all(type(r["count"]) is int and r["owner"] in ("a", "b", "c") for r in shown)
    host.plan(0.5)
    assert host.rows_ignored <= len(rows)
    host.set_members(["a", "b"])  # a map adopted above every epoch heard: its rows are still everyone's
    assert host.epoch < 1 << 63  # other nodes keep them, and PostgreSQL stores them (bigint)


@settings(max_examples=40, deadline=None)
@given(
    held=st.lists(st.tuples(st.integers(0, 2), st.integers(0, 5_000), st.integers(1, 2_000)), min_size=1, max_size=4),
    sweep=st.tuples(st.integers(0, 2), st.integers(0, 6_000), st.integers(1, 3_000)),
    bad=st.sampled_from(["none", "nan", "gap", "reversed", "two_channels"]),
    fused=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_a_sweep_of_known_entities_ends_as_the_general_path_does(held, sweep, bad, fused, seed):
    # ingest_sweep is only a faster road: after any batch, a node that may take it and a
    # node that stores the same batch through the store's general ingest hold the same state.
    rng = np.random.default_rng(seed)
    channels = np.concatenate([np.full(n, ch) for ch, _, n in held])
    ids = np.concatenate([np.arange(first, first + n) for _, first, n in held])
    ch, first, n = sweep
    recs = entities(np.arange(first, first + n), ch, 1.0)
    recs["value"] = rng.normal(20, 3, n)
    recs["active"] = rng.random(n) < 0.9
    if bad == "nan":
        recs["value"][rng.integers(n)] = np.nan
    elif bad == "gap" and n > 2:
        recs = np.delete(recs, n // 2)
    elif bad == "reversed":
        recs = recs[::-1]
    elif bad == "two_channels":
        recs["channel"][-1] = (ch + 1) % 3
    fast, slow = EngineHost("a", block_size=100), EngineHost("a", block_size=100)
    for host in (fast, slow):
        host.set_members(["a", "b"])
        host.store.put_records(entities(ids, channels, 1.0))
        if fused:
            host.store.fusions.merge(int(block_ids_of(np.array([ch]), np.array([first]), 100)[0]),
                                   int(block_ids_of(np.array([ch]), np.array([first + 500]), 100)[0]))
    fast.ingest(recs)
    mine = slow._mine(recs)
    slow.store.ingest(recs[mine])
    got, want = fast.store.state(), slow.store.state()
    for name in got.dtype.names:
        assert np.array_equal(got[name], want[name], equal_nan=name == "value"), name
    assert np.array_equal(fast.store.block_errors(), slow.store.block_errors())
    assert fast.ingested + fast.entity_errors == int(mine.sum())


def test_ingest_sweep_takes_only_what_it_can_write_as_runs():
    host = EngineHost("a", block_size=100)
    host.set_members(["a", "b"])
    host.store.put_records(entities(np.arange(1000), 0, 1.0))
    sweep = entities(np.arange(1000), 0, 1.0)
    sweep["value"] = 7.0
    result = host.ingest_sweep(sweep)
    mine = host._mine(sweep)
    assert result is not None and result.updated == int(mine.sum()) > 0
    assert np.array_equal(host.store.values == 7.0, mine)  # written where owned, nowhere else
    # one entity of an owned block is missing: nothing is written, the caller goes the general way
    owned = host.placement.blocks_of("a", host.store.block_ids())
    host.store.drop_blocks(owned[:1])
    sweep["value"] = 8.0
    assert host.ingest_sweep(sweep) is None
    assert not np.any(host.store.values == 8.0)
    assert host.ingest(sweep).updated == int(mine.sum()) - 100  # the general path takes it


def test_a_tick_makes_at_most_tick_rows_rows_changed_blocks_first_and_every_row_in_turn():
    """Rule 7: past tick_rows blocks a tick makes rows for the changed blocks first, then a
    rotating share of the rest; every block gets its row within blocks / tick_rows ticks,
    and a block that changed always gets one before it would merely be refreshed."""
    host = EngineHost("a", block_size=10, tick_rows=100)
    host.ingest(entities(np.arange(1000), 0, 1.0))  # 100 blocks: every tick is full
    rows, _ = host.tick()
    assert len(rows) == 100
    host.ingest(entities(np.arange(1000, 3500), 0, 1.0))  # 350 blocks now, 250 of them new
    seen: set[int] = set()
    for _ in range(3):  # the 250 new blocks take 3 ticks of 100 rows, nothing else meanwhile
        rows, _ = host.tick()
        assert len(rows) == 100
        seen |= {r["block"] for r in rows}
    new_blocks = {int(b) for b in np.unique(block_ids_of(np.zeros(2500, np.uint8), np.arange(1000, 3500), 10))}
    assert new_blocks <= seen
    host.ingest(entities(np.array([5]), 0, 7.0))  # one value changes in block 0
    rows, _ = host.tick()
    changed = [r for r in rows if r["block"] == int(block_ids_of(np.zeros(1, np.uint8), np.array([5]), 10)[0])]
    assert len(rows) == 100 and changed and changed[0]["max"] == 7.0
    refreshed: set[int] = set()
    for _ in range(4):  # nothing changes: a rotating refresh reaches every block
        rows, _ = host.tick()
        assert len(rows) == 100
        refreshed |= {r["block"] for r in rows}
    assert len(refreshed) == 350


def test_a_new_placement_epoch_gives_every_block_a_row_again():
    host = EngineHost("a", block_size=10, tick_rows=100)
    host.ingest(entities(np.arange(2000), 0, 1.0))
    for _ in range(3):
        host.tick()
    host.set_members(["a", "b"])
    epoch = host.epoch
    stamped: set[int] = set()
    for _ in range(3):
        rows, _ = host.tick()
        stamped |= {r["block"] for r in rows if r["epoch"] >= epoch - 1}
    assert stamped == {int(b) for b in host.store.block_ids()}


def test_blocks_a_settled_map_does_not_give_are_dropped_but_not_while_a_view_waits():
    host = EngineHost("b", block_size=100)
    host.set_members(["a", "b"])
    recs = entities(np.arange(20_000), 0, 1.0)
    host.store.put_records(recs)  # copies of every block, as if sent under a map that never came
    mine = int(host._mine(recs).sum())
    host.observe_view(["a", "b", "c"])  # c is seen: our view waits for the nucleus
    assert host.drop_unheld() == 0 and host.store.count() == len(recs)  # what the view gives us stays
    host.observe_view(["a", "b"])  # the view is the map again
    assert host.drop_unheld() == len(recs) - mine
    assert host.store.count() == mine == int(host._mine(recs).sum())


@pytest.mark.parametrize(("genes", "repaired"), [({}, True), ({"repair_threshold": 0.5}, False)])
def test_a_channels_repair_threshold_gene_decides_its_blocks_repair(genes, repaired):
    host = EngineHost("a", block_size=10, max_errors=0.1)
    host.use_kernels({}, {3: genes})  # engine.genomes: the genes channel 3's blocks start with
    host.ingest(entities(np.arange(10), 3, 1.0))
    host.tick()  # the block gets its genome
    host.ingest(entities([0, 1, 2], 3, np.nan))  # 30 % erroring
    _rows, records = host.tick()
    assert [r.kind for r in records] == (["block_repair"] if repaired else [])


def test_the_wire_gets_changed_rows_and_each_unchanged_one_every_refresh_ticks():
    """engine/wire_rows.py: the hooks get every row each tick; the wire the rows that say
    something new, each unchanged one again every ROWS_REFRESH ticks, and all on a new epoch."""
    host = EngineHost("a", block_size=10)
    host.ingest(entities(np.arange(200), 0, 1.0))  # 20 blocks
    rows, _ = host.tick()
    assert len(host.wire_rows) == len(rows) == 20  # new blocks: all of them
    block = int(block_ids_of(np.zeros(1, np.uint8), np.array([5]), 10)[0])
    sent: dict[int, list[int]] = {}
    for n in range(2 * ROWS_REFRESH):
        if n == 3:
            host.ingest(entities(np.array([5]), 0, 9.0))
        rows, _ = host.tick()
        assert len(rows) == 20 and {r["tick"] for r in rows} == {host.tick_no}  # hooks: every row
        for r in host.wire_rows:
            sent.setdefault(r["block"], []).append(r["tick"])
        assert all(r in rows for r in host.wire_rows)
    for b, ticks in sent.items():
        due = [t for t in range(2, 2 + 2 * ROWS_REFRESH) if (t + b) % ROWS_REFRESH == 0]
        if b == block:  # its values changed at tick 5 (and its forecast moves on for a while)
            assert 5 in ticks and set(due) <= set(ticks)
        else:
            assert ticks == due, b
    assert len(sent) == 20
    host.set_members(["a", "b"])  # a new map: every row carries the new epoch
    host.tick()
    owned = {r["block"] for r in host.cluster_rows() if r["owner"] == "a"}
    assert {r["block"] for r in host.wire_rows} == owned and owned


def test_a_scaled_error_creeping_at_rest_is_no_news_but_a_move_is():
    row = {"block": 1, "mean": 2.0, "tick": 9, "forecast": 2.0, "forecast_error": 0.25, "nano_error": 0.5}
    for crept in ({"forecast_error": 0.25 * (1 + 1e-4)}, {"nano_error": 0.5 * (1 - 5e-4)}):
        assert rows_for_the_wire([dict(row, tick=10, **crept)], {1: row}, tick=10, refresh=7) == []
    for moved in ({"forecast_error": 0.26}, {"nano_error": None}, {"forecast": 2.0 * (1 + 1e-4)}, {"mean": 2.0001}):
        assert rows_for_the_wire([dict(row, tick=10, **moved)], {1: row}, tick=10, refresh=7) != []
    # the refresh still sends it: a receiver is at most ROWS_REFRESH ticks of creeping off
    assert rows_for_the_wire([dict(row, forecast_error=0.250001)], {1: row}, tick=13, refresh=7) != []


def test_a_creeping_scaled_error_is_sent_before_it_is_drift_away_from_what_was_sent():
    # compared with the row last sent, not the last one made: the creep never adds up unsent
    host = EngineHost("a", block_size=10)
    host.ingest(entities(np.arange(100), 0, 1.0))

    def creep(rows, tick):
        for row in rows:
            row["forecast_error"] = 0.25 * 1.0009 ** tick

    shown: dict[int, float] = {}  # what a receiver holds, block by block
    published = 0
    for _ in range(100):
        rows, _ = host.tick(creep)
        shown.update((r["block"], r["forecast_error"]) for r in host.wire_rows)
        published += len(host.wire_rows)
        assert all(abs(shown[r["block"]] / r["forecast_error"] - 1) <= DRIFT for r in rows)
    assert 100 * 10 / ROWS_REFRESH < published < 100 * 10  # more than the refreshes, less than every row


def test_the_shells_keys_are_on_the_rows_before_the_wire_compares_them():
    # nano_forecast and nano_error come from the shell; added after the comparison, every
    # row of an intelligent channel went out every tick
    host = EngineHost("a", block_size=10)
    host.ingest(entities(np.arange(100), 0, 1.0))

    def nano(rows, tick):
        for row in rows:
            row["nano_forecast"], row["nano_error"] = 1.0, 0.5

    counts = [len(host.tick(nano)[0]) and len(host.wire_rows) for _ in range(3 * ROWS_REFRESH)]
    assert counts[0] == 10 and sum(counts[ROWS_REFRESH:]) == 2 * 10  # then each row once every refresh
    assert all(r["nano_error"] == 0.5 for r in host.cluster_rows())


def test_rows_with_the_same_values_but_another_owner_epoch_or_key_go_on_the_wire():
    row = {"block": 1, "count": 3, "mean": 2.0, "tick": 9, "owner": "a", "epoch": 4}
    assert rows_for_the_wire([dict(row, tick=10)], {1: row}, tick=10, refresh=7) == []
    for changed in ({"owner": "b"}, {"epoch": 5}, {"mean": None}, {"forecast": 1.0}):
        assert rows_for_the_wire([dict(row, **changed)], {1: row}, tick=10, refresh=7) != []
    assert rows_for_the_wire([dict(row)], {}, tick=10, refresh=7) != []
    assert rows_for_the_wire([dict(row)], {1: row}, tick=13, refresh=7) != []  # (13 + 1) % 7: its turn
