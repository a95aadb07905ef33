"""The engine as one node runs it: its store, the placement map, the cluster's block rows.

Pure like the cores (no sockets, no clock): the node shell feeds it member changes,
batches and ticks, and sends what it returns.

Ownership rules:
1. A block's owner is rendezvous placement (``engine/placement.py``) over the names of the
   ALIVE and SUSPECT members (a suspect may still be fine; moving its blocks on every
   suspicion would thrash). Every node computes the same map from the same member set.
   The nucleus confirms maps (SPEC 9.1): a node records its live view (``observe_view``)
   and adopts it when the leader's heartbeat carries the same digest (``confirm``); the
   leader, or a node with no leader to confirm, adopts its view at once (``adopt_view``).
2. Every entity batch reaches every node (PUB stream, topic per channel); each node keeps
   only the records of the blocks it owns, so every record ends in exactly one store once
   the member views agree.
3. Copies (``copies``, placement rule 4): a block is held by its owner (primary) and the
   next ``copies - 1`` members of its ranking (replicas); the owner sends what it stores
   to the others (``replica_parts``). When the map changes, the block's sender (its new
   owner if it held the block, else the holder of smallest name still in the map) copies
   it to every new holder, and a node drops the blocks it no longer holds. So the blocks
   of a node that died are owned at once by a replica that holds them; with one copy (or
   every copy dead) they are rebuilt from fresh data. A learner (catching up) holds copies
   and owns nothing until the nucleus makes it a member.
4. ``cluster_rows`` answers for the whole cluster from the aggregates every owner
   publishes each tick, showing for each block the row of its current owner only
   (``engine/cluster_rows.py``).
5. Fusion: the nucleus plans fusions from the cluster's rows (``plan``) and every node
   applies the plan in the nucleus's order (``apply_fusions``): a weak block then lives,
   is aggregated and is placed under its strong block's id, and its state is handed to
   that block's owner. Ids never change; a fused group is reported as one row.
6. Placement epoch (``epoch``): what orders the rows of one block written by different
   owners (storage/rows.py ``newer``), since no host's clock may. It is a cluster-wide
   Lamport count of placement maps. A node raises it to the highest epoch it hears: every
   row it publishes carries its own (``observe_rows``), ``raise_epoch`` takes a floor (the
   highest in PostgreSQL), ``observe_term`` a nucleus term (``term << TERM_SHIFT``: a map
   adopted under a newer term outranks any adopted under an older one). Adopting a new map
   adds one. So a node that takes over a block, from a dead owner or a live one, stamps its
   rows above every row the previous owner published under the old map. A row of a block
   held but not owned under the adopted map (kept while a view waits, rule 1, or handed
   over before we adopted the map that gives it to us) carries one less: it never displaces
   the row of the block's owner at the same epoch.
7. Bounded ticks. Every tick aggregates every block (vectorized: milliseconds per million
   entities), but makes rows, the costly part downstream (published, stored, handed to the
   hooks and the audit; published only if changed or due, ``engine/wire_rows.py``), for at
   most ``tick_rows`` blocks. A node holding no more blocks than that gives every block its
   row every tick. Past it, a tick gives the blocks whose
   aggregates changed since their last row (taken in turn from a rotating cursor when they
   alone exceed the budget) and fills what is left of the budget with a rotating share of
   the unchanged ones, so each row is refreshed every ``blocks / tick_rows`` ticks at
   least. A new placement epoch makes every block changed (its rows must carry the epoch).
8. Adaptive blocks (``engine/adaptive.py``). Each tick, before any row is made, every
   block held (owned or replicated) feeds its mean to its forecaster and its shadow trial;
   rows carry the forecast, its scaled error, the genome's generation and id (and now and
   then the whole genome); a row from another owner that carries a genome teaches it to
   this node, and a holder that is not the owner takes it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from corec_node.engine import (
    AGGREGATE_DTYPE,
    EntityStore,
    Fusion,
    IngestResult,
    RepairRecord,
    aggregate,
    aggregate_rows,
    apply_fusion,
    plan_from_rows,
    repair,
)
from corec_node.engine.adaptive import DEFAULT as DEFAULT_GENOME
from corec_node.engine.adaptive import AdaptiveBlocks
from corec_node.engine.audit import AuditRecord
from corec_node.engine.blocks import CHANNEL_SHIFT, block_ids_of
from corec_node.engine.cluster_rows import EPOCH_KEY, ClusterRows
from corec_node.engine.genome import in_effect
from corec_node.engine.kernels import BUILTINS as KERNEL_BUILTINS
from corec_node.engine.kernels import Kernel, KernelState
from corec_node.engine.kernels import bind as bind_kernel
from corec_node.engine.kernels import guarded as guarded_kernel
from corec_node.engine.placement import (
    RING,
    PlacementMap,
    map_digest,
    partition,
)
from corec_node.engine.wire_rows import rows_for_the_wire
from corec_node.wire.entities import ENTITY_DTYPE

SWEEP_MIN = 64  # records below which a batch takes the general path: the fast one would not pay
TERM_SHIFT = 32  # epoch = term << 32 | maps adopted in the term: 4 billion maps a term, 2**31 terms
TICK_ROWS = 10_000  # rule 7: rows one tick makes at most (~0.1 s of publishing and storing)
_COMPARED = tuple(k for k in AGGREGATE_DTYPE.names if k not in ("block", "tick"))
MEAN_KERNEL = "mean"  # the kernel gene's default: a repaired entity takes its block's mean as is


class EngineHost(ClusterRows):
    def __init__(self, name: str, *, block_size: int = 1000, max_errors: float = 0.1,
                 tick_rows: int = TICK_ROWS, copies: int = 1, ttl: dict[int, int] | None = None) -> None:
        self.name = name
        self.copies = max(1, int(copies))  # rule 3: holders of each block, its owner included
        self.block_size = block_size
        self.max_errors = max_errors
        self.tick_rows = tick_rows  # rule 7
        self._published = np.empty(0, AGGREGATE_DTYPE)  # per block, the values of its last row (rule 7)
        self._published_epoch = -1
        self._changed_cursor = 0
        self._refresh_cursor = 0
        self.ttl = dict(ttl or {})  # channel -> seconds an entity lives unwritten
        self.store = EntityStore(block_size=block_size, stamps=bool(self.ttl))
        self.deleted = 0  # entities removed by producers' deletes (as owner or holder)
        self.expired = 0  # entities removed by a TTL (as owner)
        self._emptied: set[int] = set()  # blocks deletes or a TTL emptied: a last row says so
        self.rule = RING  # placement rule 5; RENDEZVOUS while a member older than 1.7 is live
        self.placement = PlacementMap(0, (name,))
        self.view: frozenset[str] = frozenset((name,))  # live members as this node sees them
        self.view_learners: frozenset[str] = frozenset()  # of them, those the nucleus names learners
        self._pending: PlacementMap | None = None  # the map of ``view`` while not adopted
        self._my_index = 0
        self.tick_no = 0
        self.epoch = 0  # placement epoch (rule 6)
        self.rows: dict[int, dict[str, Any]] = {}  # block -> latest row heard, from any owner
        self.rows_ignored = 0  # rows heard that SPEC 9.2 does not let us keep (engine/wire_rows.py)
        self.wire_rows: list[dict[str, Any]] = []  # the last tick's rows to publish (engine/wire_rows.py)
        self._sent: dict[int, dict[str, Any]] = {}  # block -> the last row of it we published, this epoch
        self._sent_epoch = -1
        # (members gone, blocks, entities) whose every holder left the map, for the shell to report
        self.lost: list[tuple[tuple[str, ...], int, int]] = []
        self._rows_version = 0  # grows when ``rows`` changes: cluster_rows is cached on it
        self._cluster: tuple[tuple[Any, ...], list[dict[str, Any]]] | None = None
        self.ingested = 0
        self.entity_errors = 0
        self.repairs = 0
        self.handed_off = 0  # records copied to new holders
        self.dropped_held = 0  # entities dropped: blocks no longer held
        self.received = 0
        self.replicated_in = 0  # records stored as a replica
        self._held_key: tuple[Any, ...] = ()
        self._held_memo: dict[int, bool] = {}
        self.fusions = 0
        self._owned_key: tuple[Any, ...] = ()
        self._owned_memo: dict[int, bool] = {}
        self.adaptive = AdaptiveBlocks()  # genomes, forecasts and trials of the blocks held (rule 8)
        self.adaptive_records: list[AuditRecord] = []  # trial verdicts of the last tick, for the shell
        self.kernels: dict[str, Kernel] = dict(KERNEL_BUILTINS)  # what a genome's kernel gene may name
        self.kernel_faults = 0  # kernel calls that raised or returned the wrong shape (the mean kept)

    # -- membership -------------------------------------------------------------------

    def set_members(self, live: Iterable[str], learners: Iterable[str] = ()) -> dict[str, np.ndarray]:
        """New live member set (``learners`` among them: catching up, owning nothing);
        returns the copies to send to each new holder (rule 3)."""
        everyone = frozenset(live) | {self.name}
        learners = frozenset(learners) & everyone
        members = everyone - learners
        if not members:  # nobody to learn from
            members, learners = everyone, frozenset()
        placement = PlacementMap(self.placement.version + 1, members, learners, self.rule)
        if (placement.members, placement.learners, placement.rule) == \
                (self.placement.members, self.placement.learners, self.placement.rule):
            return {}
        old, self.placement = self.placement, placement
        self._forget_departed(old)
        self.epoch += 1  # rule 6: already at the highest heard, now past it
        self._my_index = placement.members.index(self.name) if self.name in placement.members else -1
        if self._pending is not None and self._pending.digest() == placement.digest():
            self._pending = None
        return self._rebalance(old)

    def observe_view(self, live: Iterable[str], learners: Iterable[str] = ()) -> None:
        """The live members as this node now sees them, and the learners among them as the
        nucleus last named them. Until the view is adopted, records of the blocks it would
        give this node are kept too (``_mine``)."""
        live = frozenset(live) | {self.name}
        self.view_learners = frozenset(learners) & live
        self.view = live - self.view_learners
        if not self.view:
            self.view, self.view_learners = frozenset((self.name,)), frozenset()
        pending = PlacementMap(self.placement.version, self.view, self.view_learners, self.rule)
        same = pending.digest() == self.placement.digest()
        self._pending = None if same else pending

    def view_digest(self) -> str:
        return map_digest(self.view, self.view_learners, self.rule)

    def placement_digest(self) -> str:
        """What a leader's heartbeat carries: the digest of the map it acts on."""
        return self.placement.digest()

    def adopt_view(self) -> dict[str, np.ndarray]:
        """Act on this node's own view now; returns the copies (see ``set_members``)."""
        return self.set_members(self.view | self.view_learners, self.view_learners)

    def confirm(self, digest: str) -> dict[str, np.ndarray] | None:
        """The nucleus's digest: adopt our view if it is the same map (returns the
        copies), else keep the current map and return None."""
        if digest != self.view_digest():
            return None
        return self.adopt_view()

    def is_learner(self) -> bool:
        return self.name in self.placement.learners

    def _holder_columns(self, placement: PlacementMap, roots: np.ndarray, names: list[str]) -> np.ndarray:
        """``placement.holder_mask`` with its columns placed among ``names``."""
        out = np.zeros((len(roots), len(names)), bool)
        out[:, [names.index(m) for m in placement.everyone]] = placement.holder_mask(roots, self.copies)
        return out

    def _rebalance(self, old: PlacementMap, placed_before: dict[int, int] | None = None) -> dict[str, np.ndarray]:
        """Rule 3 on a map change (or fusions: ``placed_before`` each held block's placement
        key before them): the copies this node sends to new holders (grouped by holder),
        and the blocks it no longer holds dropped."""
        blocks = self.store.block_ids()
        if len(blocks) == 0:
            return {}
        new = self.placement
        roots = self.store.fusions.resolve(blocks)
        before = roots if placed_before is None else np.array([placed_before.get(b, r) for b, r in
                                                               zip(blocks.tolist(), roots.tolist(), strict=True)], np.int64)
        names = sorted(set(old.everyone) | set(new.everyone) | {self.name}, key=lambda m: m.encode("utf-8"))
        was, now = self._holder_columns(old, before, names), self._holder_columns(new, roots, names)
        was[:, [names.index(m) for m in set(new.learners) - set(old.learners)]] = False  # learning again: it lost them
        me = names.index(self.name)
        rows = np.arange(len(blocks))
        owner = np.array([names.index(m) for m in new.members], np.intp)[new.owners(roots)]
        present = np.array([m in new.everyone or m == self.name for m in names], bool)
        candidates = was & present[None, :]
        # the new owner if it held the block, else the smallest name that held it (names are
        # sorted), else (no map said anyone held it) we who hold it; a copy we hold without
        # the old map saying so never makes us a holder that needs no copy
        sender = np.where(was[rows, owner], owner,
                          np.where(candidates.any(axis=1), np.argmax(candidates, axis=1), me))
        mine = (sender == me) & (self._my_index >= 0)  # a learner sends nothing: it holds only what it was sent
        targets = now & ~was
        targets[:, me] = False
        out: dict[str, np.ndarray] = {}
        for col in np.flatnonzero((targets & mine[:, None]).any(axis=0)).tolist():
            records = self.store.copy_blocks(blocks[mine & targets[:, col]])
            if len(records):
                out[names[col]] = records
                self.handed_off += len(records)
        if len(gone := blocks[~now[:, me]]):
            self.dropped_held += self.store.drop_blocks(gone)
        return out

    def drop_unheld(self) -> int:
        """Drop the blocks our map does not make us hold: copies and writes that came for a
        map that never came to us, or for one we have left (the caller knows the map is
        settled). Nothing is dropped while our view differs from the map: what the view
        would give us is kept until it is adopted (``_mine``). Returns the entities dropped."""
        blocks = self.store.block_ids()
        if len(blocks) == 0 or self._pending is not None:
            return 0
        column = self.placement.everyone.index(self.name)
        held = self.placement.holder_mask(self.store.fusions.resolve(blocks), self.copies)[:, column]
        if held.all():
            return 0
        dropped = self.store.drop_blocks(blocks[~held])
        self.dropped_held += dropped
        return dropped

    def replica_parts(self, records: np.ndarray, blocks: np.ndarray) -> dict[str, np.ndarray]:
        """What we store as owner, split by the other holders of its blocks (rule 3):
        ``{holder: records}``. ``blocks``: each record's placed block."""
        if self.copies == 1 and not self.placement.learners:
            return {}
        return self.holder_parts(records, blocks)

    def holder_parts(self, records: np.ndarray, blocks: np.ndarray) -> dict[str, np.ndarray]:
        """``records`` split by the holders of their blocks under our map, ourselves left out."""
        if not len(records):
            return {}
        starts = np.flatnonzero(blocks[1:] != blocks[:-1]) + 1
        if len(starts) > len(blocks) // 16:
            uniq, inverse = np.unique(blocks, return_inverse=True)
            held = self.placement.holder_mask(uniq, self.copies)[inverse]
        else:
            starts = np.concatenate(([0], starts))
            held = np.repeat(self.placement.holder_mask(blocks[starts], self.copies), np.diff(np.append(starts, len(blocks))), axis=0)
        out: dict[str, np.ndarray] = {}
        for col, name in enumerate(self.placement.everyone):
            if name == self.name:
                continue
            sel = held[:, col]
            if sel.all():
                out[name] = records
            elif sel.any():
                out[name] = records[sel]
        return out

    def new_blocks(self, records: np.ndarray) -> np.ndarray:
        """Mask of the records of blocks this node does not hold yet (one lookup per run)."""
        if not len(records):
            return np.zeros(0, bool)
        raw = block_ids_of(records["channel"], records["id"], self.block_size)
        starts = np.concatenate(([0], np.flatnonzero(raw[1:] != raw[:-1]) + 1))
        new = np.array([not self.store.has_block(b) for b in raw[starts].tolist()], bool)
        return np.repeat(new, np.diff(np.append(starts, len(raw))))

    def delete(self, records: np.ndarray) -> int:
        """Remove the entities ``records`` name (any we hold, as owner or holder)."""
        removed = self._remove(records)
        self.deleted += removed
        return removed

    def _remove(self, records: np.ndarray) -> int:
        before = self.store.block_ids()
        removed = 0
        for channel in np.unique(records["channel"]).tolist():
            removed += self.store.delete(channel, records["id"][records["channel"] == channel])
        if removed:
            self._emptied.update(np.setdiff1d(before, self.store.block_ids()).tolist())
        return removed

    def expire(self, now: int) -> np.ndarray:
        """Stamp later writes with ``now`` (whole seconds, the shell's clock), and remove the
        entities of our own blocks that a TTL has passed; returned as records, for the
        blocks' other holders (the owner decides what expired: holders agree)."""
        self.store.now = now
        keys = self.store.expired(self.ttl, now)
        if not len(keys):
            return np.empty(0, ENTITY_DTYPE)
        records = np.zeros(len(keys), ENTITY_DTYPE)
        records["id"] = keys & np.uint64(0xFFFFFFFF)
        records["channel"] = keys >> np.uint64(CHANNEL_SHIFT)
        if self._my_index < 0:
            return records[:0]
        records = records[self.placement.owners(self.blocks_of(records)) == self._my_index]
        self.expired += self._remove(records)
        return records

    def owned_copy_for(self, holder: str) -> np.ndarray:
        """The entities of the blocks we own that ``holder`` holds under our map (a copy to
        send again when the first did not leave)."""
        blocks = self.store.block_ids()
        if not len(blocks) or self._my_index < 0 or holder not in self.placement.everyone:
            return np.empty(0, ENTITY_DTYPE)
        roots = self.store.fusions.resolve(blocks)
        mine = self.placement.owners(roots) == self._my_index
        held = self.placement.holder_mask(roots, self.copies)[:, self.placement.everyone.index(holder)]
        return self.store.copy_blocks(blocks[mine & held])

    def in_sync(self) -> int:
        """Members holding each block (the owner included; learners not counted)."""
        return min(self.copies, len(self.placement.members))

    def owned_entities(self) -> int:
        """Entities of the blocks this node owns (the rest it holds are replicas)."""
        blocks = self.store.block_ids()
        if len(blocks) == 0:
            return 0
        sizes = np.diff(self.store.block_starts())
        if self._my_index < 0:
            return 0
        owned = self.placement.owners(self.store.fusions.resolve(blocks)) == self._my_index
        return int(sizes[owned].sum())

    # -- data -------------------------------------------------------------------------

    def ingest(self, records: np.ndarray, *, sweep: bool = True) -> IngestResult | None:
        """A batch from the stream: keep the records of the blocks this node owns. ``sweep``:
        try ``ingest_sweep`` first (False when the caller already tried it)."""
        swept = self.ingest_sweep(records) if sweep else None
        if swept is not None:
            return swept
        if len(self.placement.members) > 1 or self._pending is not None:
            mine = self._mine(records)
            if not mine.any():
                return None
            if not mine.all():
                records = records[mine]
        result = self.store.ingest(records)
        self.ingested += result.records - result.errors
        self.entity_errors += result.errors
        return result

    def ingest_sweep(self, records: np.ndarray, channel: int | None = None, *,
                     owned_only: bool = True) -> IngestResult | None:
        """Fast path for what producers send most: a sweep of known entities. When the batch
        is one channel, its ids increasing in a few consecutive stretches (a whole batch, or
        an owner's part of one: SPEC 9.6), every value finite and every entity of the blocks
        this node owns already held, the owned part is written as slice copies (one per run
        of owned blocks), in O(blocks + records) with no key column, sort or per-record
        placement. Returns None, changing nothing, when the batch is anything
        else (the caller then uses ``ingest``). The result, like ``ingest``'s, is about the
        records this node keeps (``records`` = those of its blocks).
        ``channel``: every record is known to be of it (a decoded wire batch, whose channel
        decode_batch checked), so it is not checked again. ``owned_only`` False: every
        record is kept (a replica's writes), only held entities are checked."""
        m = len(records)
        if m < SWEEP_MIN:
            return None
        if channel is None:
            channels = records["channel"]
            channel = int(channels[0])
            if not (channels == channel).all():
                return None
        ids = records["id"].astype(np.uint32)  # native order: the comparisons below run on one copy
        if not (ids[1:] > ids[:-1]).all():
            return None
        # consecutive stretches: one for a whole batch, one per owned block range for a
        # producer's part of a batch split by owner (SPEC 9.6)
        breaks = np.flatnonzero(ids[1:] != ids[:-1] + 1) + 1
        if len(breaks) > m // SWEEP_MIN:
            return None  # scattered ids: the general path
        bs = self.block_size
        prefix = channel << CHANNEL_SHIFT
        runs: list[list[int]] = []  # [start, stop) positions in ``records`` of owned, consecutive ids
        starts = [0, *breaks.tolist()]
        stops = [*breaks.tolist(), m]
        for s0, s1 in zip(starts, stops, strict=True):
            first = int(ids[s0])
            b0, b1 = first // bs, (first + s1 - s0 - 1) // bs
            heads = [prefix | b for b in range(b0, b1 + 1)]
            for i, mine in enumerate(self._owned_blocks(heads) if owned_only else [True] * len(heads)):
                if not mine:
                    continue
                start = s0 + max((b0 + i) * bs - first, 0)
                stop = s0 + min((b0 + i + 1) * bs - first, s1 - s0)
                if runs and runs[-1][1] == start and int(ids[start]) == int(ids[start - 1]) + 1:
                    runs[-1][1] = stop  # runs of owned blocks, merged
                else:
                    runs.append([start, stop])
        if not runs:
            return IngestResult(0, 0, 0, 0, 0)
        located = [(self.store.run_position(prefix | int(ids[a]), b - a), a, b) for a, b in runs]
        if any(pos < 0 for pos, _, _ in located):
            return None
        values = records["value"].astype(np.float32)  # native and contiguous: checked and copied fast
        if not np.isfinite(values).all():
            return None
        active = records["active"]
        for pos, a, b in located:
            self.store.update_run(pos, values[a:b], active[a:b])
        kept = sum(b - a for _, a, b in located)
        if owned_only:
            self.ingested += kept
        return IngestResult(kept, 0, kept, 0, 0)

    def _owned_blocks(self, blocks: list[int]) -> list[bool]:
        """``_owned`` of raw block ids, remembered per block until the map, the pending view
        or the fusions change (a sweep's dozen blocks cost a dict lookup each, not a hash)."""
        key = (self.placement.members, self.placement.rule, self._my_index,
               None if self._pending is None else (self._pending.members, self._pending.rule), self.store.fusions.version)
        if key != self._owned_key:
            self._owned_key, self._owned_memo = key, {}
        memo = self._owned_memo
        out = [memo.get(b) for b in blocks]
        if None in out:
            out = self._owned(self.store.fusions.resolve(np.array(blocks, dtype=np.int64))).tolist()
            memo.update(zip(blocks, out, strict=True))
        return out

    def _mine(self, records: np.ndarray, blocks: np.ndarray | None = None) -> np.ndarray:
        """Mask of the records whose block this node owns. Producers send ids in order, so
        a batch is a few runs of one block each: each run is placed once (remembered per
        block, ``_owned_blocks``), in O(records). ``blocks``: ``blocks_of(records)``, when
        the caller has it already."""
        if not len(records):
            return np.zeros(0, bool)
        if blocks is None:
            blocks = self.blocks_of(records)
        starts = np.flatnonzero(blocks[1:] != blocks[:-1]) + 1
        if len(starts) > len(blocks) // 16:  # scattered ids: placing each record beats sorting
            return self._owned(blocks)
        starts = np.concatenate(([0], starts))
        owned = np.array(self._owned_blocks(blocks[starts].tolist()), dtype=bool)
        return np.repeat(owned, np.diff(np.append(starts, len(blocks))))

    def use_kernels(self, extra: dict[str, Kernel], first: dict[int, dict[str, Any]]) -> None:
        """Plugins' kernels (``corec_kernels``) beside the built-in ones, and the genes each
        channel's first genomes carry (``engine.genomes``); ValueError naming an unknown
        kernel or a gene out of range."""
        self.kernels.update(extra)
        for channel, genes in first.items():
            name = genes.get("kernel", MEAN_KERNEL)
            if name != MEAN_KERNEL and name not in self.kernels:
                raise ValueError(f"channel {channel}: no kernel {name!r} (known: {', '.join(sorted(self.kernels))})")
            self.adaptive.first[channel] = DEFAULT_GENOME.replace(**genes)

    def _kernel_of(self, root: int) -> Callable[[np.ndarray], np.ndarray] | None:
        """The kernel a block's genome chose for its regenerated entities (repair), or None
        for ``mean``: the inherited block mean as is. Seeded by the block and the tick, so
        replays agree. A kernel that raises, or returns the wrong shape, leaves the mean as
        is and is counted (``kernel_faults``): a plugin's kernel never stops the ticks."""
        genome = self.adaptive.genomes.get(root)
        name = genome["kernel"] if genome is not None else MEAN_KERNEL
        kernel = self.kernels.get(name) if name != MEAN_KERNEL else None
        if kernel is None:
            return None
        state = KernelState(np.random.default_rng([root, self.tick_no]), {}, self.tick_no)
        return guarded_kernel(bind_kernel(kernel, state), self._kernel_fault)

    def _kernel_fault(self) -> None:
        self.kernel_faults += 1

    def owned_mask(self, blocks: np.ndarray) -> np.ndarray:
        """Which of ``blocks`` (ids) this node owns under the adopted map."""
        return self._owned(self.store.fusions.resolve(blocks)) if len(blocks) else np.zeros(0, bool)

    def owns(self, block: int) -> bool:
        """Whether this node owns ``block`` (its fusion root) under the adopted map."""
        return bool(self._owned(self.store.fusions.resolve(np.array([block], np.int64)))[0])

    def _owned(self, blocks: np.ndarray) -> np.ndarray:
        mine = self.placement.owners(blocks) == self._my_index
        if self._pending is not None and self.name in self._pending.members:
            mine |= self._pending.owners(blocks) == self._pending.members.index(self.name)
        return mine

    def route(self, records: np.ndarray, blocks: np.ndarray | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Owner-routed ingest (SPEC 9.6): the mask of the records this node keeps (``_mine``:
        the adopted map, and the pending view's), and the rest split by their owner under
        the adopted map, where they are forwarded."""
        mine = self._mine(records, blocks)
        if mine.all():
            return mine, {}
        rest = partition(records[~mine], self.placement, self.block_size, self.store.fusions.resolve)
        rest.pop(self.name, None)  # cannot happen (``_mine`` covers the adopted map): never forward to self
        return mine, rest

    def blocks_of(self, records: np.ndarray) -> np.ndarray:
        """Each record's block as placed (its fusion root): what producer sequences key on."""
        return self.store.fusions.resolve(block_ids_of(records["channel"], records["id"], self.block_size))

    def map_message(self) -> tuple[int, str, tuple[str, ...], list[dict[str, int]]]:
        """The adopted map as a producer needs it: (epoch, digest, members, fusions)."""
        fusions = [{"block": int(w), "root": int(r)} for w, r in sorted(self.store.fusions.as_dict().items())]
        return self.epoch, self.placement_digest(), self.placement.members, fusions

    def receive_handoff(self, records: np.ndarray, *, overwrite: bool = False) -> int:
        """Block state copied by its sender (rule 3). ``overwrite``: it came on the same
        socket as the owner's later writes, so it is older than none of what we hold. A
        copy may come before we adopt the map that gives us the block: it is kept (the
        next map change drops what we do not hold)."""
        self.received += len(records)
        return self.store.put_records(records, overwrite=overwrite)

    def apply_replica(self, records: np.ndarray, channel: int | None = None, *, moved: bool = False) -> None:
        """Records the owner of their blocks stored, for us as a holder (kept even before
        we adopt the map that gives us their blocks; producer sequences refuse a write
        older than one applied). ``moved``: a previous owner's, accepted before the blocks
        came to us: counted as ingested by that owner when it sent them (our map may not
        give us the blocks yet; every holder gets them)."""
        if not moved:
            self.replicated_in += len(records)
        if self.ingest_sweep(records, channel, owned_only=False) is None:
            self.store.ingest(records)

    def _held(self, records: np.ndarray) -> np.ndarray:
        """Mask of the records of blocks this node holds under its map (rule 3), one
        placement per run of one block, remembered per block until the map changes."""
        if not len(records):
            return np.zeros(0, bool)
        blocks = self.blocks_of(records)
        key = (self.placement.members, self.placement.learners, self.placement.rule, self.store.fusions.version)
        if key != self._held_key:
            self._held_key, self._held_memo = key, {}
        starts = np.concatenate(([0], np.flatnonzero(blocks[1:] != blocks[:-1]) + 1))
        heads = blocks[starts].tolist()
        memo = self._held_memo
        if any(b not in memo for b in heads):
            unknown = np.array(sorted({b for b in heads if b not in memo}), np.int64)
            column = self.placement.everyone.index(self.name) if self.name in self.placement.everyone else -1
            held = self.placement.holder_mask(unknown, self.copies)[:, column] if column >= 0 else np.zeros(len(unknown), bool)
            memo.update(zip(unknown.tolist(), held.tolist(), strict=True))
        return np.repeat(np.array([memo[b] for b in heads], bool), np.diff(np.append(starts, len(blocks))))

    def tick(self, annotate: Callable[[list[dict[str, Any]], int], None] | None = None,
             ) -> tuple[list[dict[str, Any]], list[RepairRecord]]:
        """One engine tick: this node's block rows (for publishing) and the repairs made.
        ``annotate(rows, tick)``: the shell's own keys on the rows (nano_forecast and
        nano_error), added before the wire compares them with what it sent."""
        self.tick_no += 1
        aggs = aggregate(self.store, self.tick_no)
        self.adaptive_records = self.adaptive.step(aggs["block"], aggs["mean"], self.tick_no)  # rule 8
        if self.copies > 1 or self.placement.learners:  # rows and repairs of the blocks we own (rule 3)
            aggs = aggs[self._owned(self.store.fusions.resolve(aggs["block"]))]
        records = repair(self.store, aggs, max_errors=self.max_errors, block_kernel=self._kernel_of,
                         block_max_errors=lambda root: in_effect(self.adaptive.genomes.get(root), "repair_threshold",
                                                                 self.max_errors))
        self.repairs += len(records)
        aggs = self._select(aggs)
        aggs = self._with_emptied(aggs)
        rows = aggregate_rows(aggs, owner=self.name, nan_as_none=True)
        self._stamp_epochs(rows, aggs["block"])
        self.adaptive.annotate(rows, self.tick_no)
        if annotate is not None:
            annotate(rows, self.tick_no)
        if self._sent_epoch != self.epoch:  # every row carries the new epoch: no row sent before compares
            self._sent, self._sent_epoch = {}, self.epoch
        self.wire_rows = rows_for_the_wire(rows, self._sent, self.tick_no)  # of them, those worth publishing
        self._sent.update((row["block"], row) for row in self.wire_rows)
        self.observe_rows(self.name, rows)
        return rows, records

    def _with_emptied(self, aggs: np.ndarray) -> np.ndarray:
        """A row of count 0 for each block of ours deletes or a TTL emptied since the last
        tick: every node then stops showing it (``observe_rows``)."""
        if not self._emptied:
            return aggs
        gone = np.array(sorted(b for b in self._emptied if not self.store.has_block(b)), np.int64)
        self._emptied.clear()
        if self._my_index >= 0 and len(gone):
            gone = gone[self.placement.owners(self.store.fusions.resolve(gone)) == self._my_index]
        if not len(gone):
            return aggs
        empty = np.zeros(len(gone), AGGREGATE_DTYPE)
        empty["block"], empty["channel"], empty["tick"] = gone, gone >> CHANNEL_SHIFT, self.tick_no
        for key in ("mean", "min", "max", "std"):
            empty[key] = np.nan
        return np.sort(np.concatenate([aggs, empty]), order="block")

    def _select(self, aggs: np.ndarray) -> np.ndarray:
        """Rule 7: the aggregates of the blocks this tick makes rows for (sorted by block)."""
        nb = len(aggs)
        if nb <= self.tick_rows:
            self._published = aggs.copy()
            self._published_epoch = self.epoch
            return aggs
        prev = self._published
        if self._published_epoch != self.epoch:
            prev = np.empty(0, AGGREGATE_DTYPE)  # a new epoch: every row must carry it
        at = np.searchsorted(prev["block"], aggs["block"])
        at_clipped = np.minimum(at, max(len(prev) - 1, 0))
        known = (at < len(prev)) & (prev["block"][at_clipped] == aggs["block"]) if len(prev) else np.zeros(nb, bool)
        changed = ~known
        old = prev[at_clipped] if len(prev) else aggs
        for key in _COMPARED:
            a, b = aggs[key], old[key]
            differ = a != b
            if a.dtype.kind == "f":
                differ &= ~(np.isnan(a) & np.isnan(b))
            changed |= known & differ
        chosen = np.zeros(nb, bool)
        self._changed_cursor = _take_in_turn(chosen, np.flatnonzero(changed), self.tick_rows, self._changed_cursor)
        room = self.tick_rows - int(chosen.sum())
        if room > 0:
            self._refresh_cursor = _take_in_turn(chosen, np.flatnonzero(~changed), room, self._refresh_cursor)
        # what a row now says, per block: the new values where one was made, else the last row's
        published = aggs.copy()
        keep = ~chosen & known
        published[keep] = prev[at[keep]]
        self._published = published[chosen | known]  # a block never given a row stays "changed"
        self._published_epoch = self.epoch
        return aggs[chosen]

    def _stamp_epochs(self, rows: list[dict[str, Any]], blocks: np.ndarray) -> None:
        """Rule 6: our epoch on the rows of blocks the adopted map gives us, one less on the others."""
        epoch = self.epoch
        if len(self.placement.members) == 1 or not rows:
            for row in rows:
                row[EPOCH_KEY] = epoch
            return
        owned = self.placement.owners(self.store.fusions.resolve(blocks)) == self._my_index
        held = max(0, epoch - 1)
        for row, mine in zip(rows, owned.tolist(), strict=True):
            row[EPOCH_KEY] = epoch if mine else held

    def raise_epoch(self, floor: int) -> None:
        """Rule 6: never stamp below ``floor`` (e.g. the highest epoch already in PostgreSQL)."""
        if floor > self.epoch:
            self.epoch = int(floor)

    def observe_term(self, term: int) -> None:
        """Rule 6: the nucleus term we know; a newer one starts a higher range of epochs."""
        self.raise_epoch(int(term) << TERM_SHIFT)

    def plan(self, min_fitness: float) -> list[Fusion]:
        """The nucleus's fusion plan over the cluster's current rows (deterministic); a
        block's ``fusion_floor`` gene stands for ``min_fitness`` once set (``in_effect``)."""
        return plan_from_rows(self.cluster_rows(), min_fitness, max_count=4 * self.block_size,
                              floor_of=lambda r: in_effect(self.adaptive.spec_of(r), "fusion_floor", min_fitness))

    def apply_fusions(self, fusions: Iterable[Fusion]) -> tuple[list[RepairRecord], dict[str, np.ndarray]]:
        """Apply the nucleus's plan in order; returns the records and the copies it causes
        (a weak block now lives with its root's holders)."""
        held = self.store.block_ids()
        placed_before = dict(zip(held.tolist(), self.store.fusions.resolve(held).tolist(), strict=True))
        records = [r for f in fusions if (r := apply_fusion(self.store, f)) is not None]
        if not records:
            return [], {}
        self.fusions += len(records)
        return records, self._rebalance(self.placement, placed_before)

def _take_in_turn(chosen: np.ndarray, candidates: np.ndarray, budget: int, cursor: int) -> int:
    """Mark up to ``budget`` of ``candidates`` (positions, ascending) in ``chosen``, starting
    at block position ``cursor`` and wrapping; returns the cursor for the next tick."""
    if len(candidates) == 0 or budget <= 0:
        return cursor
    if len(candidates) <= budget:
        chosen[candidates] = True
        return cursor
    start = int(np.searchsorted(candidates, cursor))
    picked = np.roll(candidates, -start)[:budget]
    chosen[picked] = True
    return int(picked[-1]) + 1
