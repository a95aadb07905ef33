"""Self-repair and fusion: pure decisions and their application to a store.

Each function returns :class:`RepairRecord` values (what, which block, why) for the
caller to log, count and put in the audit log; nothing here logs or reads a clock.

Rules:

1. Regeneration (the seeds: "after 2 faults"). An entity whose error streak reaches
   ``streak_limit`` (2: two non-finite reports in a row) is regenerated: streak 0, active,
   value = its block's current active mean (the aggregate row just computed; a fused block
   inherits its group's mean), passed through the channel's kernel when one is given
   ("inherits its block's kernel": e.g. a bound ``random_walk`` adds the channel's noise,
   a ``sine`` generator replaces the value). When there is nothing finite to inherit (the
   block has no active entity and no kernel gives a finite value), the streak is still
   cleared but the entity stays inactive with its old value, and the record says so.
2. Block repair. A block (aggregate row) whose ``error_rate`` is above ``max_errors`` is
   repaired: every erroring entity in it (streak > 0, not only >= the limit) is
   regenerated as in rule 1. Block repair goes first, so an entity is regenerated once.
3. Fusion (blocks.py Rule 3). ``plan_fusions`` is the nucleus's pure decision over the
   cluster's aggregate rows: each row under ``min_fitness`` is fused into a strong row of
   its channel, a row whose fitness is at least ``strong_fitness`` (default halfway from
   min_fitness to 1, so that the merged group does not fall under the threshold at once
   and cascade). Weak rows go weakest first, each to the strong group that is currently
   smallest (ties: fitter, then lower id), never past ``max_count`` entities. Fusion
   re-keys nothing: ``apply_fusion`` records the alias in ``store.fusions``, so the next
   aggregate reports the weak block inside the strong block's row. Every node applies the
   same fusions in the nucleus's order; the shell then places blocks by their root
   (``store.fusions.resolve``) and hands the weak group to the root's owner.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from corec_node.engine.blocks import block_channel
from corec_node.engine.store import EntityStore

STREAK_LIMIT = 2
"""Consecutive errors before an entity is regenerated: the seeds' "after 2 faults"."""

ChannelKernels = Mapping[int, Callable[[np.ndarray], np.ndarray]]
"""channel -> ``values -> values`` (``kernels.bind(kernel, state)``), applied to the
inherited block means of the entities being regenerated."""


@dataclass(frozen=True, slots=True)
class RepairRecord:
    """One repair or fusion, for the log and the audit trail."""

    kind: str  # "regenerate" | "block_repair" | "fusion" | "release"
    block: int  # raw block id (fusion: the weak block)
    channel: int
    entities: int  # entities regenerated (fusion: entities of the weak group held here)
    reason: str
    target: int | None = None  # fusion: the root the block now belongs to


@dataclass(frozen=True, slots=True)
class Fusion:
    """A nucleus decision: fuse ``weak_block``'s group into ``strong_block``'s."""

    weak_block: int
    strong_block: int
    channel: int
    reason: str


def repair(
    store: EntityStore,
    aggregates: np.ndarray,
    *,
    max_errors: float,
    streak_limit: int = STREAK_LIMIT,
    kernels: ChannelKernels | None = None,
    block_kernel: Callable[[int], Callable[[np.ndarray], np.ndarray] | None] | None = None,
    block_max_errors: Callable[[int], float] | None = None,
) -> list[RepairRecord]:
    """Apply rules 1 and 2 to ``store`` using this tick's ``aggregates`` (from
    ``aggregate(store, tick)``). Returns one record per (kind, raw block) touched.
    ``block_kernel(root)``: the kernel a block's genome chose for its regenerated values
    (None: the inherited mean as is), applied after the channel's ``kernels``.
    ``block_max_errors(root)``: the block's own threshold (its ``repair_threshold`` gene),
    asked only of blocks with errors; ``max_errors`` for all when None."""
    if streak_limit < 1:
        raise ValueError(f"streak_limit must be >= 1, got {streak_limit}")
    n = store.count()
    if n == 0:
        return []
    streak = store.streaks
    if not np.count_nonzero(streak):
        return []
    lay = store.layout()
    starts = lay.starts
    roots = lay.roots[lay.group] if lay.group is not None else lay.blocks

    # Inherited value and error rate per raw block, from its row (missing row: NaN / 0).
    ref = np.full(len(roots), np.nan)
    rate = np.zeros(len(roots))
    if len(aggregates):
        rows = np.sort(aggregates, order="block")
        ri = np.minimum(np.searchsorted(rows["block"], roots), len(rows) - 1)
        has_row = rows["block"][ri] == roots
        ref[has_row] = rows["mean"][ri[has_row]]
        rate[has_row] = rows["error_rate"][ri[has_row]]

    records: list[RepairRecord] = []
    fixed = np.zeros(n, np.bool_)
    limit = np.full(len(roots), max_errors)
    if block_max_errors is not None:
        erring = np.flatnonzero(rate > 0)
        limit[erring] = [block_max_errors(int(r)) for r in roots[erring].tolist()]
    bad_blocks = np.flatnonzero(rate > limit)
    chunks = []
    for b in bad_blocks.tolist():
        s, e = int(starts[b]), int(starts[b + 1])
        p = s + np.flatnonzero(streak[s:e])
        if len(p):
            chunks.append(p)
    if chunks:
        pos = np.concatenate(chunks)
        fixed[pos] = True
        vals = _regenerated(store, pos, ref, kernels, roots, block_kernel)
        records += _records(store, "block_repair", pos, vals, lambda b, k, u: (
            f"error rate {rate[b]:.3f} > max_errors {limit[b]:g}: "
            f"{k} erroring entities regenerated" + _no_ref(u)
        ))
        store.reset_entities(pos, vals)

    pos = np.flatnonzero((streak >= streak_limit) & ~fixed)
    if len(pos):
        vals = _regenerated(store, pos, ref, kernels, roots, block_kernel)
        records += _records(store, "regenerate", pos, vals, lambda b, k, u: (
            f"{k} entities with error streak >= {streak_limit} regenerated from the block "
            f"mean {ref[b]:.6g}" + _no_ref(u)
        ))
        store.reset_entities(pos, vals)
    return records


def _no_ref(unresolved: int) -> str:
    return f"; {unresolved} with nothing finite to inherit left inactive" if unresolved else ""


def _regenerated(
    store: EntityStore, pos: np.ndarray, ref: np.ndarray, kernels: ChannelKernels | None,
    roots: np.ndarray | None = None,
    block_kernel: Callable[[int], Callable[[np.ndarray], np.ndarray] | None] | None = None,
) -> np.ndarray:
    raw = store.block_of_positions(pos)
    vals = ref[raw].astype(np.float32)
    if kernels:
        _apply(vals, (store.keys[pos] >> np.uint64(32)).astype(np.int64), kernels.get, "channel")
    if block_kernel is not None and roots is not None:
        _apply(vals, roots[raw], block_kernel, "block")
    return vals


def _apply(vals: np.ndarray, groups: np.ndarray, kernel_of: Callable[[int], Any], what: str) -> None:
    """Each group's kernel (``kernel_of(group)``, None: none) on its values, in place."""
    for g in np.unique(groups).tolist():
        fn = kernel_of(g)
        if fn is not None:
            sel = groups == g
            out = np.asarray(fn(vals[sel]), np.float32)
            if out.shape != (int(sel.sum()),):
                raise ValueError(f"kernel of {what} {g} returned shape {out.shape}")
            vals[sel] = out


def _records(
    store: EntityStore,
    kind: str,
    pos: np.ndarray,
    vals: np.ndarray,
    reason: Callable[[int, int, int], str],
) -> list[RepairRecord]:
    bi = store.block_of_positions(pos)
    blocks = store.layout().blocks
    uniq, first, counts = np.unique(bi, return_index=True, return_counts=True)
    unresolved = np.bincount(bi, weights=~np.isfinite(vals), minlength=len(blocks))
    out = []
    for b, k in zip(uniq.tolist(), counts.tolist(), strict=True):
        block = int(blocks[b])
        out.append(RepairRecord(kind, block, block_channel(block), k,
                                reason(b, k, int(unresolved[b]))))
    return out


def plan_fusions(
    aggregates: np.ndarray,
    min_fitness: float,
    *,
    strong_fitness: float | None = None,
    max_count: int | None = None,
    floors: Mapping[int, float] | None = None,
) -> list[Fusion]:
    """Rule 3: which weak rows fuse into which strong rows. Pure and deterministic (the
    same rows in any order give the same plan), so any node can check the nucleus.
    ``floors``: a block's own fitness floor (its ``fusion_floor`` gene), where it has one:
    it is weak under that floor instead of ``min_fitness``."""
    if strong_fitness is None:
        strong_fitness = (1.0 + min_fitness) / 2.0
    rows = np.sort(aggregates, order="block")
    plan: list[Fusion] = []
    for ch in np.unique(rows["channel"]).tolist():
        r = rows[rows["channel"] == ch]
        floor = np.array([floors.get(int(b), min_fitness) for b in r["block"].tolist()]) if floors else min_fitness
        weak = r[r["fitness"] < floor]
        # strong: over the strong bar and over its own floor (a block never both, nor fused into itself)
        strong = r[(r["fitness"] >= max(strong_fitness, min_fitness)) & (r["fitness"] >= floor)]
        if len(weak) == 0 or len(strong) == 0:
            continue
        weak = weak[np.lexsort((weak["block"], weak["fitness"]))]
        heap = [(int(s["count"]), -float(s["fitness"]), int(s["block"])) for s in strong]
        heapq.heapify(heap)
        for w in weak:
            size = int(w["count"])
            skipped = []
            choice = None
            while heap:
                cand = heapq.heappop(heap)
                if max_count is None or cand[0] + size <= max_count:
                    choice = cand
                    break
                skipped.append(cand)
            for s in skipped:
                heapq.heappush(heap, s)
            if choice is None:
                continue
            total, neg_fit, strong_id = choice
            heapq.heappush(heap, (total + size, neg_fit, strong_id))
            own = floors.get(int(w["block"])) if floors else None
            bar = f"min_fitness {min_fitness:g}" if own is None else f"its fusion_floor {own:g}"
            plan.append(Fusion(
                int(w["block"]), strong_id, ch,
                f"fitness {float(w['fitness']):.3f} < {bar}: fused into "
                f"block {strong_id:#x} (fitness {-neg_fit:.3f})",
            ))
    return plan


def plan_from_rows(rows: list[dict[str, Any]], min_fitness: float, *, max_count: int | None = None,
                   floor_of: Callable[[dict[str, Any]], float] | None = None) -> list[Fusion]:
    """``plan_fusions`` over cluster rows as nodes keep them (dicts); ``floor_of(row)``: the
    block's own floor (rows whose floor is ``min_fitness`` need no entry)."""
    if not rows:
        return []
    arr = np.zeros(len(rows), dtype=[("block", "<i8"), ("channel", "u1"), ("count", "<i8"), ("fitness", "<f8")])
    for i, r in enumerate(rows):
        arr[i] = (r["block"], r["channel"], r["count"], r["fitness"])
    floors = None
    if floor_of is not None:
        floors = {int(r["block"]): f for r in rows if (f := floor_of(r)) != min_fitness}
    return plan_fusions(arr, min_fitness, max_count=max_count, floors=floors)


def apply_fusion(store: EntityStore, fusion: Fusion) -> RepairRecord | None:
    """Record ``fusion`` in ``store.fusions`` (no entity moves; see rule 3). Returns the
    record, or None when the two blocks already share a root. ValueError across channels."""
    if block_channel(fusion.weak_block) != fusion.channel:
        raise ValueError(f"fusion channel {fusion.channel} is not block {fusion.weak_block:#x}'s")
    weak_group = store.fusions.members(store.fusions.root(fusion.weak_block))
    done = store.fusions.merge(fusion.weak_block, fusion.strong_block)
    if done is None:
        return None
    held = store.blocks()
    entities = int(held["count"][np.isin(held["block"], weak_group)].sum())
    return RepairRecord(
        "fusion", fusion.weak_block, fusion.channel, entities, fusion.reason, done[1]
    )


def release_fusion(store: EntityStore, block: int, reason: str) -> list[RepairRecord]:
    """Undo a fusion (``FusionTable.release``): one record per block that is its own
    root again."""
    freed = store.fusions.release(block)
    held = store.blocks()
    counts = dict(zip(held["block"].tolist(), held["count"].tolist(), strict=True))
    return [RepairRecord("release", b, block_channel(b), int(counts.get(b, 0)), reason, b)
            for b in freed]
