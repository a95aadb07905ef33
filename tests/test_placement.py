"""Placement: rendezvous hashing is deterministic across processes, balanced, and moves
only what it must when a member joins or leaves."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from records import entities

from corec_node.engine.blocks import FusionTable, block_id, block_ids_of
from corec_node.engine.placement import (
    RENDEZVOUS,
    PlacementMap,
    by_holders,
    member_seed,
    moves,
    owners,
    partition,
)

BLOCKS = np.array([block_id(c, i * 1000) for c in range(4) for i in range(25_000)], np.int64)
NAMES = [f"node-{i}" for i in range(10)]


def test_golden_values():
    # The score is protocol (placement.py Rule 2): these must never change. Another
    # implementation of the mesh must reproduce them.
    assert member_seed("node-0") == 0x40C50760A3130312
    m = PlacementMap(1, ["alpha", "beta", "gamma"], rule=RENDEZVOUS)
    blocks = [0, 1, 2, 3, 4, 5, 1 << 32, (7 << 32) | 12345, (255 << 32) | 0xFFFF_FFFF]
    assert m.owner_names(blocks) == [
        "gamma", "gamma", "gamma", "alpha", "gamma", "beta", "beta", "gamma", "beta",
    ]


def test_same_map_in_another_process():
    code = (
        "import json, sys; from corec_node.engine.placement import owners;"
        "blocks = json.loads(sys.argv[1]); names = json.loads(sys.argv[2]);"
        "print(json.dumps(owners(blocks, names).tolist()))"
    )
    blocks = BLOCKS[::997].tolist()
    out = subprocess.run(
        [sys.executable, "-c", code, json.dumps(blocks), json.dumps(NAMES)],
        capture_output=True, text=True, check=True, env={"PYTHONHASHSEED": "12345"},
    )
    assert json.loads(out.stdout) == owners(blocks, NAMES).tolist()


def test_owner_does_not_depend_on_member_order():
    a = np.asarray(NAMES)[owners(BLOCKS, NAMES)]
    shuffled = NAMES[::-1][3:] + NAMES[::-1][:3]
    b = np.asarray(shuffled)[owners(BLOCKS, shuffled)]
    assert np.array_equal(a, b)
    m = PlacementMap(3, shuffled, rule=RENDEZVOUS)
    assert m.members == tuple(sorted(NAMES))
    assert np.array_equal(np.asarray(m.members)[m.owners(BLOCKS)], a)
    assert m.owner(int(BLOCKS[5])) == a[5]


def test_balance():
    counts = np.bincount(owners(BLOCKS, NAMES), minlength=len(NAMES))
    expected = len(BLOCKS) / len(NAMES)  # 10,000; binomial sd about 95
    assert (np.abs(counts - expected) < 6 * np.sqrt(expected)).all(), counts


def test_join_moves_only_to_the_newcomer_and_about_one_in_n():
    old = PlacementMap(1, NAMES)
    new = PlacementMap(2, NAMES + ["node-new"])
    mv = moves(old, new, BLOCKS)
    assert all(dst == "node-new" for _, dst in mv.values())
    share = len(mv) / len(BLOCKS)
    assert abs(share - 1 / 11) < 0.01
    assert len(new.blocks_of("node-new", BLOCKS)) == len(mv)


def test_leave_moves_only_the_leavers_blocks():
    old = PlacementMap(1, NAMES)
    new = PlacementMap(2, [n for n in NAMES if n != "node-3"])
    mv = moves(old, new, BLOCKS)
    theirs = old.blocks_of("node-3", BLOCKS)
    assert sorted(mv) == sorted(theirs.tolist())
    assert all(src == "node-3" and dst != "node-3" for src, dst in mv.values())
    # spread over the others, not dumped on one
    dests = {dst for _, dst in mv.values()}
    assert len(dests) == len(NAMES) - 1


@settings(max_examples=40, deadline=None)
@given(
    members=st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=8, unique=True),
    extra=st.text(min_size=1, max_size=12),
    blocks=st.lists(st.integers(0, (255 << 32) | 0xFFFF_FFFF), min_size=1, max_size=200),
)
def test_minimal_movement_property(members, extra, blocks):
    before = PlacementMap(1, members)
    if extra not in members:
        after = PlacementMap(2, members + [extra])
        assert all(dst == extra for _, dst in moves(before, after, blocks).values())
    if len(members) > 1:
        gone = members[0]
        after = PlacementMap(2, members[1:])
        assert all(src == gone for src, _ in moves(before, after, blocks).values())


def test_errors():
    with pytest.raises(ValueError):
        owners([1], [])
    with pytest.raises(ValueError):
        PlacementMap(1, ["a", "a"])
    assert PlacementMap(1, ["solo"]).owner(123) == "solo"
    assert len(PlacementMap(1, ["a"]).blocks_of("b", [1, 2])) == 0


def test_partition_records_by_owner():
    m = PlacementMap(1, ["a", "b", "c"])
    r = entities(np.arange(5000) * 37, np.arange(5000) % 3, active=0)
    parts = partition(r, m, 1000)
    assert sum(len(p) for p in parts.values()) == 5000
    for name, part in parts.items():
        blocks = (part["channel"].astype(np.int64) << 32) | (part["id"] // 1000)
        assert set(m.owner_names(blocks)) == {name}
        assert np.all(np.diff(np.flatnonzero(np.isin(r, part))) > 0)  # input order kept
    # a fused group goes to its root's owner
    t = FusionTable()
    weak = block_id(0, 0)
    strong = next(b for b in (block_id(0, i * 1000) for i in range(1, 50))
                  if m.owner(b) != m.owner(weak))
    t.merge(weak, strong)
    one = entities([0], active=0)
    assert list(partition(one, m, 1000, t.resolve)) == [m.owner(strong)]
    assert partition(one[:0], m, 1000) == {}


def test_partition_keeps_the_records_dtype_and_order_on_both_paths() -> None:
    """The wire's records are big-endian: a part must keep that dtype (a promotion to native
    order would send every id byte-swapped), and the three paths (consecutive ids, ids in
    order, scattered ids) place every record with its block's owner."""
    from corec_node.wire import ENTITY_DTYPE

    pm = PlacementMap(1, ["a", "b", "c"])
    runs = np.zeros(20_000, dtype=ENTITY_DTYPE)
    runs["id"] = np.arange(20_000)
    runs["value"] = np.arange(20_000, dtype=np.float32)
    scattered = runs[np.random.default_rng(3).permutation(20_000)]
    gaps = runs[runs["id"] % 3000 < 2000]  # in order, not consecutive: the runs path
    for records in (runs, gaps, scattered):
        parts = partition(records, pm, 1000)
        assert sum(len(p) for p in parts.values()) == len(records)
        for owner, part in parts.items():
            assert part.dtype == ENTITY_DTYPE
            blocks = block_ids_of(part["channel"], part["id"], 1000)
            assert set(pm.owner_names(np.unique(blocks))) == {owner}
            assert (part["value"] == part["id"].astype(np.float32)).all()  # whole records, not mixed
        if records is not scattered:
            assert all((np.diff(p["id"].astype(np.int64)) > 0).all() for p in parts.values())  # input order kept


def _holder_sets(records: np.ndarray, pm: PlacementMap, copies: int) -> list[tuple[str, ...]]:
    blocks = block_ids_of(records["channel"], records["id"], 1000)
    return [tuple(pm.holders(int(b), copies)) for b in blocks]


def test_an_owners_records_grouped_by_their_blocks_holders():
    """The records of blocks with the same holders come together, in the order the sets
    first appear, and each block's records (an entity's updates too) keep their order: a
    batch cut from it goes to one or two other holders, not to most of the cluster."""
    pm = PlacementMap(1, [f"n{i}" for i in range(8)])
    ids = np.arange(400_000)
    records = entities(np.concatenate([ids, ids[:5_000]]), 0, np.arange(405_000, dtype=np.float64))
    mine = partition(records, pm, 1000)["n3"]
    grouped = by_holders(mine, pm, 1000, 2)
    assert len(grouped) == len(mine) and sorted(grouped["value"].tolist()) == sorted(mine["value"].tolist())
    sets = _holder_sets(grouped, pm, 2)
    runs = [s for i, s in enumerate(sets) if i == 0 or s != sets[i - 1]]
    assert len(runs) == len(set(runs)) > 1  # each holder set in one run
    assert runs == list(dict.fromkeys(_holder_sets(mine, pm, 2)))  # in order of first appearance
    for block in np.unique(block_ids_of(mine["channel"], mine["id"], 1000)):
        of = lambda r: r[block_ids_of(r["channel"], r["id"], 1000) == block]["value"]  # noqa: E731
        assert np.array_equal(of(grouped), of(mine))  # a block's records in their order
    batches = [grouped[i:i + 10_000] for i in range(0, len(grouped), 10_000)]
    before = [mine[i:i + 10_000] for i in range(0, len(mine), 10_000)]
    others = lambda b: len({h for s in _holder_sets(b, pm, 2) for h in s} - {"n3"})  # noqa: E731
    # one holder a batch, and one more for each place where a batch crosses from one set to the next
    assert sum(map(others, batches)) <= len(batches) + len(runs) - 1 < sum(map(others, before))


def test_scattered_ids_are_grouped_by_holders_too():
    pm = PlacementMap(1, [f"n{i}" for i in range(8)])
    rng = np.random.default_rng(5)
    records = entities(rng.integers(0, 2_000_000, 50_000), rng.integers(0, 3, 50_000), np.arange(50_000.0))
    mine = partition(records, pm, 1000)["n2"]
    grouped = by_holders(mine, pm, 1000, 2)
    sets = _holder_sets(grouped, pm, 2)
    runs = [s for i, s in enumerate(sets) if i == 0 or s != sets[i - 1]]
    assert len(runs) == len(set(runs)) > 1 and runs == list(dict.fromkeys(_holder_sets(mine, pm, 2)))
    blocks_mine, blocks_grouped = (block_ids_of(r["channel"], r["id"], 1000) for r in (mine, grouped))
    for block in np.unique(blocks_mine)[:200]:
        assert np.array_equal(grouped["value"][blocks_grouped == block], mine["value"][blocks_mine == block])


def test_one_holder_set_leaves_the_records_as_they_are():
    records = entities(np.arange(5_000), 0)
    assert by_holders(records, PlacementMap(1, ["a", "b"]), 1000, 2) is records  # 2 nodes, 2 copies
    assert by_holders(records, PlacementMap(1, ["a", "b", "c"]), 1000, 1) is records  # one copy
