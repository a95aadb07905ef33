"""Self-repair (regeneration after 2 errors, block repair) and fusion (plan and apply)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from records import entities as recs

from corec_node.engine.aggregate import AGGREGATE_DTYPE, aggregate
from corec_node.engine.blocks import block_id
from corec_node.engine.genome import default_genome, in_effect
from corec_node.engine.kernels import KernelState, bind, random_walk
from corec_node.engine.repair import (
    Fusion,
    RepairRecord,
    apply_fusion,
    plan_fusions,
    release_fusion,
    repair,
)
from corec_node.engine.store import EntityStore


def tick(s: EntityStore, t: int = 0, **kw) -> list[RepairRecord]:
    return repair(s, aggregate(s, t), **{"max_errors": 1.0, **kw})


def test_regenerated_after_two_errors_in_a_row_not_one():
    s = EntityStore(block_size=100)
    s.ingest(recs(np.arange(10), 0, np.arange(10.0)))  # mean 4.5
    s.ingest(recs([3, 4], 0, np.nan))
    assert tick(s) == []  # one error is not enough
    s.ingest(recs([4], 0, 7.0))  # 4 recovers: streak back to 0
    s.ingest(recs([3, 4], 0, np.nan))  # 3: second in a row; 4: first again
    (rec,) = tick(s)
    assert rec.kind == "regenerate" and rec.block == block_id(0, 0, 100)
    assert rec.channel == 0 and rec.entities == 1 and "streak >= 2" in rec.reason
    st = s.state()
    # block mean at that tick: values 0..9 with 4 -> 7 = (45 + 3) / 10
    assert st["value"][3] == pytest.approx(4.8) and st["active"][3] == 1
    assert st["streak"].tolist() == [0, 0, 0, 0, 1, 0, 0, 0, 0, 0]


def test_no_active_mean_leaves_entity_inactive_with_streak_cleared():
    s = EntityStore(block_size=100)
    s.ingest(recs([1, 2], 0, np.nan))
    s.ingest(recs([1, 2], 0, np.nan))
    (rec,) = tick(s)
    assert rec.entities == 2 and "nothing finite to inherit" in rec.reason
    st = s.state()
    assert st["streak"].tolist() == [0, 0] and st["active"].tolist() == [0, 0]
    assert math.isnan(st["value"][0])


def test_regeneration_inherits_the_channel_kernel():
    s = EntityStore(block_size=100)
    s.ingest(recs(np.arange(4), 5, 10.0))
    s.ingest(recs(np.arange(100, 104), 6, 10.0))
    for _ in range(2):
        s.ingest(recs([0, 100], [5, 6], np.nan))
    state = KernelState.seeded(1, {"sigma": 0.5})
    recs_ = tick(s, kernels={5: bind(random_walk, state), 6: lambda v: v + 1000})
    assert [r.channel for r in recs_] == [5, 6]
    st = s.state()
    assert st["value"][0] != 10.0 and abs(st["value"][0] - 10.0) < 5
    assert st["value"][4] == 1010.0


def test_block_repair_above_max_errors():
    s = EntityStore(block_size=10)
    s.ingest(recs(np.arange(20), 0, 1.0))
    s.ingest(recs([0, 1, 2, 10], 0, np.nan))  # block 0: 30% erroring, block 1: 10%
    recs_ = tick(s, max_errors=0.2)
    assert [(r.kind, r.block, r.entities) for r in recs_] == [
        ("block_repair", block_id(0, 0, 10), 3)
    ]
    assert "error rate 0.300 > max_errors 0.2" in recs_[0].reason
    assert s.state()["streak"].tolist() == [0] * 10 + [1] + [0] * 9
    # block 1 at exactly max_errors is not repaired ("passes" means strictly above)
    assert tick(s, max_errors=0.1) == []


def test_block_repair_and_regeneration_count_each_entity_once():
    s = EntityStore(block_size=10)
    s.ingest(recs(np.arange(10), 0, 2.0))
    s.ingest(recs([0, 1, 2, 3], 0, np.nan))
    s.ingest(recs([0], 0, np.nan))  # streak 2 inside a block being repaired
    recs_ = tick(s, max_errors=0.1)
    assert [(r.kind, r.entities) for r in recs_] == [("block_repair", 4)]


def rows(*spec) -> np.ndarray:
    """(block, count, fitness) triples -> aggregate rows."""
    out = np.zeros(len(spec), AGGREGATE_DTYPE)
    for i, (b, count, fit) in enumerate(spec):
        out[i]["block"] = b
        out[i]["channel"] = b >> 32
        out[i]["count"] = count
        out[i]["fitness"] = fit
    return out


def test_plan_fusions():
    c1 = [block_id(1, i * 1000) for i in range(6)]
    c2 = [block_id(2, i * 1000) for i in range(2)]
    aggs = rows(
        (c1[0], 1000, 0.95), (c1[1], 1000, 0.05), (c1[2], 900, 0.9), (c1[3], 1000, 0.1),
        (c1[4], 1000, 0.5),  # neither weak nor strong (under the 0.6 default strong bar)
        (c1[5], 10, 0.15),
        (c2[0], 1000, 0.05),  # weak with no strong block of its channel: stays
        (c2[1], 1000, 0.5),
    )
    plan = plan_fusions(aggs, min_fitness=0.2)
    # weakest first, each to the currently smallest strong group
    assert [(f.weak_block, f.strong_block) for f in plan] == [
        (c1[1], c1[2]), (c1[3], c1[0]), (c1[5], c1[2]),
    ]
    assert all(f.channel == 1 for f in plan)
    assert "fitness 0.050 < min_fitness 0.2" in plan[0].reason
    # deterministic whatever the row order
    assert plan_fusions(aggs[::-1], 0.2) == plan
    # max_count bounds a group
    capped = plan_fusions(aggs, 0.2, max_count=1950)
    assert [(f.weak_block, f.strong_block) for f in capped] == [(c1[1], c1[2]), (c1[5], c1[0])]
    assert plan_fusions(aggs, 0.2, strong_fitness=0.99) == []


def test_apply_fusion_merges_aggregation_and_is_recorded():
    s = EntityStore(block_size=10)
    s.ingest(recs(np.arange(10), 3, 5.0))  # strong
    s.ingest(recs(np.arange(10, 20), 3, 1.0, active=np.arange(10) < 1))  # weak: 1 of 10 active
    aggs = aggregate(s, 0)
    (f,) = plan_fusions(aggs, min_fitness=0.2)
    assert f == Fusion(block_id(3, 10, 10), block_id(3, 0, 10), 3, f.reason)
    rec = apply_fusion(s, f)
    assert rec == RepairRecord("fusion", f.weak_block, 3, 10, f.reason, f.strong_block)
    assert apply_fusion(s, f) is None  # already fused
    (row,) = aggregate(s, 1)
    assert row["block"] == f.strong_block and row["count"] == 20 and row["active"] == 11
    assert row["mean"] == pytest.approx((50 + 1) / 11)
    # the group places as one unit: both blocks resolve to the root
    assert s.fusions.resolve(s.block_ids()).tolist() == [f.strong_block] * 2
    # repair of a fused block inherits the group mean
    for _ in range(2):
        s.ingest(recs([15], 3, np.nan))
    (r,) = tick(s)
    assert r.block == f.weak_block and s.state()["value"][15] == pytest.approx(51 / 11)
    (rel,) = release_fusion(s, f.strong_block, "recovered")
    assert rel.kind == "release" and rel.block == f.weak_block and rel.entities == 10
    assert len(aggregate(s, 2)) == 2


def test_apply_fusion_rejects_channel_mismatch():
    s = EntityStore()
    with pytest.raises(ValueError):
        apply_fusion(s, Fusion(block_id(1, 0), block_id(2, 0), 1, "x"))
    with pytest.raises(ValueError):
        apply_fusion(s, Fusion(block_id(1, 0), block_id(1, 1000), 2, "x"))


def test_a_blocks_repair_threshold_gene_stands_for_max_errors():
    s = EntityStore(block_size=10)
    s.ingest(recs(np.arange(20), 0, 1.0))
    s.ingest(recs([0, 1, 2, 10, 11, 12], 0, np.nan))  # both blocks 30% erroring
    b0, b1 = block_id(0, 0, 10), block_id(0, 10, 10)
    asked = []

    def threshold(root: int) -> float:
        asked.append(root)
        return 0.5 if root == b0 else 0.2  # block 0 tolerates more than the node's setting

    done = tick(s, max_errors=0.1, block_max_errors=threshold)
    assert [(r.kind, r.block) for r in done] == [("block_repair", b1)]
    assert "> max_errors 0.2" in done[0].reason
    assert sorted(asked) == [b0, b1]  # only blocks with errors are asked


def test_a_blocks_fusion_floor_gene_stands_for_min_fitness():
    c1 = [block_id(1, i * 1000) for i in range(3)]
    aggs = rows((c1[0], 1000, 0.95), (c1[1], 1000, 0.3), (c1[2], 1000, 0.1))
    assert [f.weak_block for f in plan_fusions(aggs, 0.2)] == [c1[2]]
    raised = plan_fusions(aggs, 0.2, floors={c1[1]: 0.4, c1[2]: 0.05})  # c1[1] fuses, c1[2] no longer
    assert [(f.weak_block, f.strong_block) for f in raised] == [(c1[1], c1[0])]
    assert "fitness 0.300 < its fusion_floor 0.4" in raised[0].reason
    # a floor over the strong bar: weak, never strong, never fused into itself or in a ring
    high = plan_fusions(rows((c1[0], 1000, 0.7), (c1[1], 1000, 0.65)), 0.2, floors={c1[0]: 0.9, c1[1]: 0.9})
    assert high == []


def test_genes_that_stand_for_settings_take_effect_once_set_away_from_their_default():
    g = default_genome()
    assert in_effect(None, "repair_threshold", 0.3) == 0.3
    assert in_effect(g, "repair_threshold", 0.3) == 0.3  # the default gene: the node's setting
    assert in_effect(g.replace(repair_threshold=0.05), "repair_threshold", 0.3) == 0.05
    assert in_effect(g.replace(fusion_floor=0.6), "fusion_floor", 0.2) == 0.6
