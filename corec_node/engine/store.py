"""The entity store: numpy struct-of-arrays columns kept in key order. Pure: no I/O, no clock.

Layout. Four capacity-sized columns, physically sorted by the key ``channel << 32 | id``:

    key     uint64   8 B   (channel and id; blocks.py Rule 2: key order is block order)
    value   float32  4 B   last finite value (NaN only for an entity that never had one)
    active  bool     1 B   invariant: active implies a finite value
    streak  uint8    1 B   consecutive non-finite reports, saturating at 255

14 bytes a slot, so 14-28 bytes an entity with the capacity slack, and no separate index:
the key column is the index (``np.searchsorted``). Each block is one contiguous run, so a
tick is a handful of ``np.add.reduceat`` calls over the columns with no gather. A small
block table (``block_ids()``, starts, cumulative errors: about 24 bytes a block) is kept
alongside and updated in O(blocks + batch) on every change, never rebuilt from the columns.

Costs. A batch of m records is sorted by key first (skipped when already sorted; a stable
order from one SIMD sort of key|index composites). Updating known entities then costs
one comparison when the batch is exactly a contiguous run of the store (a producer's
sweep of its ids), O(m) guess-and-verify for runs of consecutive keys, and O(m log n)
binary searches for a sparse subset. New keys are merged in place, which shifts the
columns: O(n) a batch (a few milliseconds per million entities held), so feed new
entities in batches (a tick's worth), not one by one. Capacity doubles when full and
halves when under a quarter used: growth is amortized and a store that handed blocks away
gives memory back. Measured (bench/engine.py): about 23 B an entity at 1 M entities.

Ingest rules (what a record does to its entity):

1. A finite value is data: it sets value and active, and resets the error streak to 0.
2. A non-finite value (NaN, +-inf) is an entity error, never data: the entity's streak
   grows by one, its block's error count grows by one, value and active stay as they were.
   A key first seen with a non-finite value is created with value NaN, inactive.
3. Several records for one key in one batch apply in order (the last finite one wins,
   errors after it count and set the streak), exactly as if sent one by one.

Expiry. A store made with ``stamps=True`` (a channel has a TTL) keeps a fifth column,
``stamp`` uint32, the ``now`` (whole seconds on the owner's clock, set by its caller) at
which each entity was last written with data, and ``expired`` lists the entities a TTL
has passed; ``delete`` removes entities (deletes and expiry alike). Without TTLs the
column does not exist and costs nothing.

``put_records`` is the receiving side of a block handoff and is not an ingest: it stores
state as given (NaN is "no data", not an error) and by default keeps any entity the
receiver already holds, since what arrived directly is newer than a handed-over snapshot.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from corec_node.engine.blocks import (
    CHANNEL_SHIFT,
    DEFAULT_BLOCK_SIZE,
    ID_MASK,
    FusionTable,
    block_ids_of_keys,
    check_block_size,
    entity_keys,
)
from corec_node.engine.runs import merge_runs, merge_segments, stable_order
from corec_node.wire.entities import ENTITY_DTYPE, as_entity_array

MIN_CAPACITY = 1024
"""Smallest allocation: below this, doubling costs more in calls than it saves in bytes."""

LOOKUP_RUN = 1024
"""Keys per anchor in the guess-and-verify lookup: one binary search per run of this many
sorted keys; a run that matches the store contiguously needs no other search."""

SMALL_INSERT = 256
"""Inserting up to this many new keys moves the columns segment by segment (memmove);
above it one masked scatter per column is cheaper than a Python loop per key."""

MAX_RUNS = 64
"""Above SMALL_INSERT, new keys that land at fewer insertion points than this (new ids in
order: whole blocks) move as that many slices; more scattered ones take the masked scatter."""

CHUNK = 1 << 16
"""Entities per aggregation chunk: the scratch buffers (21 B an entity, 1.4 MB) stay in cache."""

STREAK_MAX = 255

KEY_BITS = 40
"""Bits an entity key uses: channel (8) << 32 | id (32)."""

STATE_DTYPE = np.dtype(
    [("id", "<u4"), ("channel", "u1"), ("value", "<f4"), ("active", "u1"), ("streak", "u1")]
)
"""An entity's full state in native byte order (inspection, persistence, tests)."""


@dataclass(frozen=True, slots=True)
class IngestResult:
    """What one ``ingest`` call did. ``records`` = ``new + updated + errors_only +
    duplicates`` where errors_only are known keys whose records were all non-finite."""

    records: int  # records in the batch
    new: int  # entities created (including ones created by an error, rule 2)
    updated: int  # known entities that received at least one finite value
    errors: int  # non-finite records (each one counted, rule 2)
    duplicates: int  # records beyond the first for a key within the batch


@dataclass(frozen=True, slots=True)
class Chunk:
    """A run of whole blocks aggregated in one pass: blocks [b0, b1), entities [start, stop),
    ``offsets`` = block starts relative to ``start`` (the reduceat indices)."""

    b0: int
    b1: int
    start: int
    stop: int
    offsets: np.ndarray


class Layout:
    """Derived per-block structure, rebuilt only when the key set or fusions change.

    ``roots``: sorted root ids (one aggregate row each); ``group[i]``: the row of block i
    (None when no block is fused: rows are blocks). ``chunks`` split the blocks into runs of
    about CHUNK entities; the scratch buffers are sized for the longest chunk.
    """

    __slots__ = (
        "blocks", "starts", "counts", "roots", "group", "chunks", "f32", "f32b", "u32", "f64",
        "mask",
    )

    def __init__(self, blocks: np.ndarray, starts: np.ndarray, fusions: FusionTable) -> None:
        self.blocks = blocks
        self.starts = starts
        self.counts = np.diff(starts)
        if fusions:
            resolved = fusions.resolve(blocks)
            self.roots, group = np.unique(resolved, return_inverse=True)
            self.group: np.ndarray | None = group.astype(np.intp)
        else:
            self.roots, self.group = blocks, None
        self.chunks: list[Chunk] = []
        nb = len(blocks)
        longest = 0
        if nb:
            # A chunk is every block whose start falls in one CHUNK window (the last block
            # may overhang), so a chunk is at most CHUNK + block_size - 1 entities.
            cut = np.flatnonzero(np.diff(starts[:-1] // CHUNK)) + 1
            bounds = np.concatenate(([0], cut, [nb]))
            for b0, b1 in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
                s, e = int(starts[b0]), int(starts[b1])
                self.chunks.append(Chunk(b0, b1, s, e, (starts[b0:b1] - s).astype(np.intp)))
                longest = max(longest, e - s)
        self.f32 = np.empty(longest, np.float32)
        self.f32b = np.empty(longest, np.float32)
        self.u32 = np.empty(longest, np.uint32)
        self.f64 = np.empty(longest, np.float64)
        self.mask = np.empty(longest, np.bool_)

    def nbytes(self) -> int:
        arrays = [self.counts, self.f32, self.f32b, self.u32, self.f64, self.mask]
        if self.group is not None:
            arrays += [self.roots, self.group]
        return sum(a.nbytes for a in arrays) + sum(c.offsets.nbytes + 64 for c in self.chunks)


class EntityStore:
    """Entities keyed by (channel, id) in key-sorted numpy columns. See the module docstring.

    Not thread-safe; the shell owns one store and calls it from its loop.
    """

    __slots__ = (
        "block_size", "fusions", "_n", "_key", "_value", "_active", "_streak", "_stamp", "now",
        "_bkeys", "_bstart", "_berr", "_layout", "_layout_key", "_version", "_index", "_index_version",
        "_index_asked",
    )

    def __init__(self, block_size: int = DEFAULT_BLOCK_SIZE, capacity: int = 0, *, stamps: bool = False) -> None:
        self.block_size = check_block_size(block_size)
        self.fusions = FusionTable()
        self._n = 0
        cap = max(int(capacity), 0)
        self._key = np.empty(cap, np.uint64)
        self._value = np.empty(cap, np.float32)
        self._active = np.empty(cap, np.bool_)
        self._streak = np.empty(cap, np.uint8)
        self._stamp = np.empty(cap, np.uint32) if stamps else None  # last written (expiry)
        self.now = 0  # what a write stamps: seconds on the owner's clock (the caller sets it)
        self._bkeys = np.empty(0, np.int64)  # sorted raw block ids
        self._bstart = np.zeros(1, np.int64)  # block starts, then n
        self._berr = np.empty(0, np.int64)  # non-finite records ever counted, per block
        self._layout: Layout | None = None
        self._layout_key: tuple[int, int] = (-1, -1)
        self._version = 0
        self._index: dict[int, int] = {}
        self._index_version = -1
        self._index_asked = -1

    # -- reading ----------------------------------------------------------------------

    def __len__(self) -> int:
        return self._n

    def count(self) -> int:
        """Entities held."""
        return self._n

    @property
    def capacity(self) -> int:
        return len(self._key)

    @property
    def version(self) -> int:
        """Grows whenever the set of keys changes (not on value updates)."""
        return self._version

    def block_ids(self) -> np.ndarray:
        """Raw block ids held, sorted (int64; a copy)."""
        return self._bkeys.copy()

    def blocks(self) -> np.ndarray:
        """One row per raw block held: ``block``, ``channel``, ``count``, ``errors``
        (non-finite records counted since the block came here), ``root`` (fusion root)."""
        out = np.empty(len(self._bkeys), BLOCK_DTYPE)
        out["block"] = self._bkeys
        out["channel"] = self._bkeys >> CHANNEL_SHIFT
        out["count"] = np.diff(self._bstart)
        out["errors"] = self._berr
        out["root"] = self.fusions.resolve(self._bkeys)
        return out

    def has_block(self, block: int) -> bool:
        i = np.searchsorted(self._bkeys, block)
        return bool(i < len(self._bkeys) and self._bkeys[i] == block)

    def nbytes(self) -> int:
        """Bytes held by the columns (at capacity), the block table and the cached layout."""
        total = sum(getattr(self, name).nbytes for name in self._columns())
        total += self._bkeys.nbytes + self._bstart.nbytes + self._berr.nbytes
        if self._layout is not None:
            total += self._layout.nbytes()
        return total

    @property
    def keys(self) -> np.ndarray:
        """Read-only view of the sorted keys of the entities held."""
        return _ro(self._key[: self._n])

    @property
    def values(self) -> np.ndarray:
        """Read-only view of the value column (key order)."""
        return _ro(self._value[: self._n])

    @property
    def active(self) -> np.ndarray:
        """Read-only view of the active column (key order)."""
        return _ro(self._active[: self._n])

    @property
    def streaks(self) -> np.ndarray:
        """Read-only view of the error-streak column (key order)."""
        return _ro(self._streak[: self._n])

    def block_starts(self) -> np.ndarray:
        """Read-only view: position of each raw block's first entity, then ``count()``."""
        return _ro(self._bstart)

    def block_errors(self) -> np.ndarray:
        """Read-only view: non-finite records counted per raw block (block_ids() order)."""
        return _ro(self._berr)

    def layout(self) -> Layout:
        """The per-block structure aggregation runs on, rebuilt only after a change."""
        key = (self._version, self.fusions.version)
        if self._layout is None or self._layout_key != key:
            self._layout = Layout(self._bkeys, self._bstart, self.fusions)
            self._layout_key = key
        return self._layout

    def lookup(self, channel: np.ndarray | int, ids: np.ndarray | int) -> np.ndarray:
        """Positions (into the columns) of entities, -1 where not held."""
        ch, ii = np.broadcast_arrays(np.atleast_1d(channel), np.atleast_1d(ids))
        keys = entity_keys(ch, ii)
        n = self._n
        if n == 0:
            return np.full(keys.shape, -1, np.intp)
        pos = np.minimum(np.searchsorted(self._key[:n], keys), n - 1)
        return np.where(self._key[pos] == keys, pos, -1)

    def block_of_positions(self, positions: np.ndarray) -> np.ndarray:
        """Raw block index (into ``block_ids()``) of column positions."""
        return np.searchsorted(self._bstart, positions, side="right") - 1

    def state(self, block_ids: np.ndarray | list[int] | None = None) -> np.ndarray:
        """Full state (STATE_DTYPE, key order) of the given blocks, or of everything."""
        if block_ids is None:
            sl = np.arange(self._n)
        else:
            sl = self._positions_of_blocks(self._block_indices(block_ids, strict=True))
        out = np.empty(len(sl), STATE_DTYPE)
        keys = self._key[sl]
        out["id"] = keys & np.uint64(ID_MASK)
        out["channel"] = keys >> np.uint64(CHANNEL_SHIFT)
        out["value"] = self._value[sl]
        out["active"] = self._active[sl]
        out["streak"] = self._streak[sl]
        return out

    def records(self) -> np.ndarray:
        """Every entity as wire records (ENTITY_DTYPE, key order)."""
        return self._records_at(np.arange(self._n))

    def entities_of(self, block: int) -> np.ndarray:
        """The entities of one raw block as wire records (empty if not held)."""
        i = self._block_indices([block], strict=False)
        return self._records_at(self._positions_of_blocks(i))

    # -- ingest -----------------------------------------------------------------------

    def ingest(self, records: np.ndarray) -> IngestResult:
        """Upsert a batch of entity records (ENTITY_DTYPE, or anything ``as_entity_array``
        takes) under the ingest rules of the module docstring. Vectorized."""
        recs = as_entity_array(records)
        m = len(recs)
        if m == 0:
            return IngestResult(0, 0, 0, 0, 0)
        keys = entity_keys(recs["channel"], recs["id"])
        values = recs["value"].astype(np.float32)
        active = recs["active"].astype(np.bool_)
        finite = np.isfinite(values)
        n_errors = m - int(np.count_nonzero(finite))
        keys, values, active, finite, trail, nerr = _collapse(keys, values, active, finite)
        duplicates = m - len(keys)
        if n_errors == 0:
            run = self._run_of(keys)
            if run >= 0:  # a sweep over a contiguous run of known entities: slice copies
                sl = slice(run, run + len(keys))
                self._value[sl] = values
                self._active[sl] = active
                self._streak[sl] = 0
                if self._stamp is not None:
                    self._stamp[sl] = self.now
                return IngestResult(m, 0, len(keys), 0, duplicates)
        pos, found = self._lookup(keys)

        n_found = int(np.count_nonzero(found))
        if n_found == len(keys) and n_errors == 0:
            # Steady state: every key known, every value finite, no duplicates left.
            self._write(pos, values, active, None)
            return IngestResult(m, 0, n_found, 0, duplicates)

        upd = found & finite
        p = pos[upd]
        self._value[p] = values[upd]
        self._active[p] = active[upd]
        self._streak[p] = np.minimum(trail[upd], STREAK_MAX)
        if self._stamp is not None:
            self._stamp[p] = self.now
        err = found & ~finite
        if err.any():
            p = pos[err]
            self._streak[p] = np.minimum(self._streak[p] + trail[err], STREAK_MAX)
        new = ~found
        n_new = int(np.count_nonzero(new))
        if n_new:
            nf = finite[new]
            self._insert(
                keys[new],
                np.where(nf, values[new], np.float32(np.nan)),
                active[new] & nf,
                np.minimum(trail[new], STREAK_MAX).astype(np.uint8),
                pos[new],
            )
        if n_errors:
            has = nerr > 0
            bi = np.searchsorted(self._bkeys, block_ids_of_keys(keys[has], self.block_size))
            np.add.at(self._berr, bi, nerr[has])
        return IngestResult(m, n_new, int(np.count_nonzero(upd)), n_errors, duplicates)

    def run_position(self, first_key: int, m: int) -> int:
        """Column position of the ``m`` consecutive keys ``first_key ..`` when all are held,
        else -1. Held keys are sorted and unique, so the first and the last found m - 1
        positions apart means every key between them is held, in order. The first is looked
        for where it sits when its block is held whole from its start (a dict lookup and
        two reads), else by binary search."""
        n = self._n
        if m <= 0 or n < m:
            return -1
        key = self._key
        pos = -1
        index = self._block_index()
        if index is not None:
            i = index.get((first_key >> CHANNEL_SHIFT << CHANNEL_SHIFT) | (first_key & ID_MASK) // self.block_size)
            if i is None:
                return -1
            start = int(self._bstart[i])
            pos = start + first_key - int(key[start])
        if not (0 <= pos < n and int(key[pos]) == first_key):
            pos = int(np.searchsorted(key[:n], np.uint64(first_key)))  # np.uint64: no float64 cast
            if pos >= n or int(key[pos]) != first_key:
                return -1
        if pos + m > n or int(key[pos + m - 1]) != first_key + m - 1:
            return -1
        return pos

    def _block_index(self) -> dict[int, int] | None:
        """Raw block id -> index into the block table; None while the key set keeps changing
        (a first load), where rebuilding it, O(blocks), on every call would not pay."""
        if self._index_version != self._version:
            if self._index_asked != self._version:
                self._index_asked = self._version
                return None
            self._index = dict(zip(self._bkeys.tolist(), range(len(self._bkeys)), strict=True))
            self._index_version = self._version
        return self._index

    def update_run(self, pos: int, values: np.ndarray, active: np.ndarray) -> None:
        """Ingest rule 1 for the entities at positions ``pos ..`` (from ``run_position``):
        ``values`` must all be finite (the caller checked); three slice copies."""
        sl = slice(pos, pos + len(values))
        self._value[sl] = values
        self._active[sl] = active
        self._streak[sl] = 0
        if self._stamp is not None:
            self._stamp[sl] = self.now

    def put_records(
        self, records: np.ndarray, *, overwrite: bool = False, streak: np.ndarray | None = None
    ) -> int:
        """Store handed-over state (the receiving side of ``take_blocks``).

        NaN or inf values are "no data" (stored as NaN, inactive), not errors. Keys already
        held are kept unless ``overwrite`` (direct data is newer than a snapshot). ``streak``
        (one uint8 per record) carries error streaks when the sender shipped them, else 0.
        Duplicate keys: the last record wins. Returns entities inserted or overwritten.
        """
        recs = as_entity_array(records)
        m = len(recs)
        if m == 0:
            return 0
        keys = entity_keys(recs["channel"], recs["id"])
        values = recs["value"].astype(np.float32)
        finite = np.isfinite(values)
        values[~finite] = np.nan
        active = recs["active"].astype(np.bool_) & finite
        streaks = (
            np.zeros(m, np.uint8) if streak is None else np.asarray(streak, np.uint8).copy()
        )
        if len(streaks) != m:
            raise ValueError(f"streak has {len(streaks)} entries for {m} records")
        order = stable_order(keys, KEY_BITS)
        keys = keys[order]
        last = np.ones(m, np.bool_)
        last[:-1] = keys[1:] != keys[:-1]  # the last record of each key wins
        sel = order[last]
        keys, values, active, streaks = keys[last], values[sel], active[sel], streaks[sel]
        pos, found = self._lookup(keys)
        done = 0
        if overwrite and found.any():
            self._write(pos[found], values[found], active[found], streaks[found])
            done += int(np.count_nonzero(found))
        new = ~found
        if new.any():
            self._insert(keys[new], values[new], active[new], streaks[new], pos[new])
            done += int(np.count_nonzero(new))
        return done

    # -- blocks leaving ---------------------------------------------------------------

    def take_blocks(self, block_ids: np.ndarray | list[int]) -> np.ndarray:
        """Remove whole raw blocks and return their entities as wire records (key order),
        to hand to their new owner (who calls ``put_records``). Blocks not held are
        skipped. Error streaks are not in the records: use ``state(...)`` first to ship them.
        """
        idx = self._block_indices(block_ids, strict=False)
        recs = self._records_at(self._positions_of_blocks(idx))
        self._remove_blocks(idx)
        return recs

    def copy_blocks(self, block_ids: np.ndarray | list[int]) -> np.ndarray:
        """Whole raw blocks' entities as wire records (key order), kept here: a replica's
        copy (not held: skipped)."""
        return self._records_at(self._positions_of_blocks(self._block_indices(block_ids, strict=False)))

    def drop_blocks(self, block_ids: np.ndarray | list[int]) -> int:
        """Remove whole raw blocks (not held: skipped). Returns entities removed."""
        idx = self._block_indices(block_ids, strict=False)
        removed = int(np.sum(self._bstart[idx + 1] - self._bstart[idx]))
        self._remove_blocks(idx)
        return removed

    # -- deletes and expiry -----------------------------------------------------------

    def delete(self, channel: np.ndarray | int, ids: np.ndarray) -> int:
        """Remove the entities ``(channel, ids)`` held (the rest skipped); a block left
        empty goes. O(n): the columns are compacted once. Returns entities removed."""
        keys = np.unique(entity_keys(np.broadcast_to(np.asarray(channel), np.shape(ids)), np.asarray(ids)))
        if not len(keys) or not self._n:
            return 0
        pos, found = self._lookup(keys)
        return self._remove_positions(pos[found])

    def expired(self, ttl: dict[int, int], now: int) -> np.ndarray:
        """Keys (channel << 32 | id) of the entities of channels with a TTL (seconds) not
        written with data for longer than it, as of ``now``. Empty without stamps."""
        if self._stamp is None or not ttl or not self._n:
            return np.empty(0, np.uint64)
        out = []
        for channel, seconds in ttl.items():
            lo = int(np.searchsorted(self._key[: self._n], np.uint64(channel << CHANNEL_SHIFT)))
            hi = int(np.searchsorted(self._key[: self._n], np.uint64((channel + 1) << CHANNEL_SHIFT)))
            if hi > lo:
                old = np.flatnonzero(now - self._stamp[lo:hi].astype(np.int64) > seconds)
                if len(old):
                    out.append(self._key[lo:hi][old])
        return np.concatenate(out) if out else np.empty(0, np.uint64)

    def _remove_positions(self, pos: np.ndarray) -> int:
        if not len(pos):
            return 0
        n = self._n
        keep = np.ones(n, np.bool_)
        keep[pos] = False
        left = int(keep.sum())
        for name in self._columns():
            col = getattr(self, name)
            col[:left] = col[:n][keep]
        bi = np.searchsorted(self._bstart[1:], pos, side="right")  # the block of each position
        counts = np.diff(self._bstart) - np.bincount(bi, minlength=len(self._bkeys))
        alive = counts > 0
        self._bkeys, self._berr = self._bkeys[alive], self._berr[alive]
        self._bstart = np.concatenate(([0], np.cumsum(counts[alive]))).astype(np.int64)
        self._n = left
        self._version += 1
        return n - left

    def _columns(self) -> tuple[str, ...]:
        return ("_key", "_value", "_active", "_streak") + (("_stamp",) if self._stamp is not None else ())

    # -- low-level writes (repair.py) ---------------------------------------------------

    def reset_entities(self, positions: np.ndarray, values: np.ndarray) -> None:
        """Regenerate entities at column positions: streak 0; where ``values`` is finite,
        value = it and active; elsewhere the entity keeps its value and goes inactive."""
        positions = np.asarray(positions, np.intp)
        values = np.asarray(values, np.float32)
        ok = np.isfinite(values)
        self._streak[positions] = 0
        self._value[positions[ok]] = values[ok]
        self._active[positions] = ok

    # -- internals ----------------------------------------------------------------------

    def _run_of(self, keys: np.ndarray) -> int:
        """Where sorted unique ``keys`` are exactly a contiguous run of the store, its
        start; else -1. One binary search and one comparison."""
        m, n = len(keys), self._n
        if m == 0 or n < m:
            return -1
        start = int(np.searchsorted(self._key[:n], keys[0]))
        if start + m > n or self._key[start + m - 1] != keys[-1]:
            return -1
        return start if np.array_equal(self._key[start : start + m], keys) else -1

    def _lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Positions of sorted unique ``keys``: (pos, found). Where not found, pos is the
        insertion point. Guess-and-verify: each run of LOOKUP_RUN keys is assumed to sit
        contiguously after its first key's position; only misses are binary-searched."""
        m, n = len(keys), self._n
        if n == 0:
            return np.zeros(m, np.intp), np.zeros(m, np.bool_)
        held = self._key[:n]
        anchors = np.searchsorted(held, keys[::LOOKUP_RUN])
        if int(anchors[-1]) - int(anchors[0]) > 2 * m:
            # The batch is sparse over the store (a random subset): runs cannot match
            # contiguously, so skip the guess and binary-search everything.
            pos = np.searchsorted(held, keys)
            found = held[np.minimum(pos, n - 1)] == keys
            return pos, found
        pos = np.arange(m, dtype=np.intp)
        pos += np.repeat(anchors - np.arange(0, m, LOOKUP_RUN), LOOKUP_RUN)[:m]
        np.minimum(pos, n - 1, out=pos)
        found = held[pos] == keys
        miss = np.flatnonzero(~found)
        if len(miss):
            mk = keys[miss]
            p = np.searchsorted(held, mk)
            found[miss] = held[np.minimum(p, n - 1)] == mk
            pos[miss] = p
        return pos, found

    def _write(
        self, pos: np.ndarray, values: np.ndarray, active: np.ndarray, streak: np.ndarray | None
    ) -> None:
        """Overwrite entities at sorted unique positions (a slice copy when contiguous)."""
        if len(pos) and int(pos[-1]) - int(pos[0]) == len(pos) - 1:
            sl = slice(int(pos[0]), int(pos[-1]) + 1)
            self._value[sl] = values
            self._active[sl] = active
            self._streak[sl] = 0 if streak is None else streak
            if self._stamp is not None:
                self._stamp[sl] = self.now
        else:
            self._value[pos] = values
            self._active[pos] = active
            self._streak[pos] = 0 if streak is None else streak
            if self._stamp is not None:
                self._stamp[pos] = self.now

    def _insert(
        self,
        keys: np.ndarray,
        values: np.ndarray,
        active: np.ndarray,
        streak: np.ndarray,
        ins: np.ndarray,
    ) -> None:
        """Merge sorted new keys (absent from the store) at insertion points ``ins``."""
        k, n = len(keys), self._n
        n2 = n + k
        cap = len(self._key)
        grow = n2 > cap
        new_cap = max(n2, 2 * cap, MIN_CAPACITY) if grow else cap
        ins = np.asarray(ins, np.intp)
        runs = None
        if k > SMALL_INSERT:
            cuts = np.flatnonzero(ins[1:] != ins[:-1]) + 1  # new keys landing at one point: a run
            if len(cuts) < MAX_RUNS:  # few runs (new ids in order, whole blocks): moved as slices
                runs = list(zip([0, *cuts.tolist()], [*cuts.tolist(), k], strict=True))
            else:  # scattered: destinations of new and old entries, computed once
                at = ins + np.arange(k)
                old = np.ones(n2, np.bool_)
                old[at] = False
                old_at = np.flatnonzero(old)
        cols = []
        fields = [("_key", keys), ("_value", values), ("_active", active), ("_streak", streak)]
        if self._stamp is not None:
            fields.append(("_stamp", np.full(k, self.now, np.uint32)))
        for name, new_vals in fields:
            src = getattr(self, name)
            dst = np.empty(new_cap, src.dtype) if grow else src
            if k <= SMALL_INSERT:
                merge_segments(src, dst, n, new_vals, ins)
            elif runs is not None:
                merge_runs(src, dst, n, new_vals, ins, runs)
            else:
                dst[old_at] = src[:n] if grow else src[:n].copy()
                dst[at] = new_vals
            cols.append(dst)
        self._key, self._value, self._active, self._streak = cols[:4]
        if self._stamp is not None:
            self._stamp = cols[4]
        self._n = n2
        self._add_blocks(block_ids_of_keys(keys, self.block_size))
        self._version += 1

    def _add_blocks(self, new_bids: np.ndarray) -> None:
        """Update the block table for newly inserted keys whose (sorted) block ids are
        ``new_bids``: O(blocks + new) in a few array passes, with no sort and no search over
        every block held (a batch of one or two blocks into a node holding thousands is
        the common case)."""
        if len(new_bids) == 0:
            return
        old_b, old_start = self._bkeys, self._bstart
        first = np.empty(len(new_bids), np.bool_)
        first[0] = True
        np.not_equal(new_bids[1:], new_bids[:-1], out=first[1:])
        heads = np.flatnonzero(first)
        fresh = new_bids[heads]  # the blocks the new keys fall in, and how many in each
        counts = np.diff(np.append(heads, len(new_bids)))
        at = np.searchsorted(old_b, fresh)
        known = at < len(old_b)
        known[known] = old_b[at[known]] == fresh[known]
        before = old_start[:-1]  # old entries before each block
        if known.all():
            all_b, err = old_b, self._berr
        else:
            gap = at[~known]  # a new block starts where the old block after it started
            all_b = np.insert(old_b, gap, fresh[~known])
            err = np.insert(self._berr, gap, 0)
            before = np.insert(before, gap, old_start[gap])
        # new entries before each block: those of the fresh blocks below it
        added = np.zeros(len(all_b) + 1, np.int64)
        added[np.searchsorted(all_b, fresh) + 1] = counts
        starts = np.empty(len(all_b) + 1, np.int64)
        starts[:-1] = before + np.cumsum(added[:-1])
        starts[-1] = self._n
        self._bkeys, self._bstart, self._berr = all_b, starts, err

    def _block_indices(self, block_ids: np.ndarray | list[int], *, strict: bool) -> np.ndarray:
        want = np.unique(np.asarray(block_ids, dtype=np.int64).ravel())
        nb = len(self._bkeys)
        if nb == 0:
            if strict and len(want):
                raise KeyError(f"blocks not held: {want[:5].tolist()}")
            return np.empty(0, np.intp)
        i = np.minimum(np.searchsorted(self._bkeys, want), nb - 1)
        hit = self._bkeys[i] == want
        if strict and not hit.all():
            raise KeyError(f"blocks not held: {want[~hit][:5].tolist()}")
        return i[hit].astype(np.intp)

    def _positions_of_blocks(self, idx: np.ndarray) -> np.ndarray:
        if len(idx) == 0:
            return np.empty(0, np.intp)
        starts, stops = self._bstart[idx], self._bstart[idx + 1]
        return np.concatenate([np.arange(s, e) for s, e in zip(starts.tolist(), stops.tolist())])

    def _records_at(self, pos: np.ndarray) -> np.ndarray:
        out = np.empty(len(pos), ENTITY_DTYPE)
        keys = self._key[pos]
        out["id"] = keys & np.uint64(ID_MASK)
        out["channel"] = keys >> np.uint64(CHANNEL_SHIFT)
        out["value"] = self._value[pos]
        out["active"] = self._active[pos]
        return out

    def _remove_blocks(self, idx: np.ndarray) -> None:
        """Remove raw blocks (sorted unique indices): move the kept runs down (memmove)."""
        if len(idx) == 0:
            return
        n = self._n
        starts, stops = self._bstart[idx].tolist(), self._bstart[idx + 1].tolist()
        cols = [getattr(self, name) for name in self._columns()]
        w = starts[0]
        for j, stop in enumerate(stops):
            nxt = starts[j + 1] if j + 1 < len(starts) else n
            if nxt > stop:
                for col in cols:
                    col[w : w + nxt - stop] = col[stop:nxt]
                w += nxt - stop
        self._n = w
        keep = np.ones(len(self._bkeys), np.bool_)
        keep[idx] = False
        counts = np.diff(self._bstart)[keep]
        self._bkeys = self._bkeys[keep]
        self._berr = self._berr[keep]
        self._bstart = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
        self._version += 1
        cap = len(self._key)
        if cap > MIN_CAPACITY and self._n < cap // 4:
            new_cap = max(2 * self._n, MIN_CAPACITY)
            for name in self._columns():
                col = getattr(self, name)
                fresh = np.empty(new_cap, col.dtype)
                fresh[: self._n] = col[: self._n]
                setattr(self, name, fresh)


BLOCK_DTYPE = np.dtype(
    [("block", "<i8"), ("channel", "u1"), ("count", "<i8"), ("errors", "<i8"), ("root", "<i8")]
)


def _ro(a: np.ndarray) -> np.ndarray:
    v = a.view()
    v.flags.writeable = False
    return v


def _collapse(
    keys: np.ndarray, values: np.ndarray, active: np.ndarray, finite: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sort a batch by key and fold duplicate keys under ingest rule 3.

    Returns (keys, values, active, finite, trail, nerr) per unique key: ``finite`` = some
    record was finite, value/active from the last finite record, ``trail`` = non-finite
    records after it (all of them when none was finite), ``nerr`` = non-finite records.
    """
    m = len(keys)
    if m > 1 and not np.all(keys[1:] > keys[:-1]):
        order = stable_order(keys, KEY_BITS)
        keys, values, active, finite = keys[order], values[order], active[order], finite[order]
        head = np.empty(m, np.bool_)
        head[0] = True
        np.not_equal(keys[1:], keys[:-1], out=head[1:])
        if not head.all():
            starts = np.flatnonzero(head)
            ends = np.append(starts[1:], m)
            idx = np.where(finite, np.arange(m), -1)
            last_finite = np.maximum.reduceat(idx, starts)
            has = last_finite >= 0
            rep = np.where(has, last_finite, ends - 1)
            trail = (ends - 1 - np.where(has, last_finite, starts - 1)).astype(np.int64)
            nerr = np.add.reduceat((~finite).astype(np.int64), starts)
            return keys[starts], values[rep], active[rep], has, trail, nerr
    nerr = (~finite).astype(np.int64)
    return keys, values, active, finite, nerr, nerr

