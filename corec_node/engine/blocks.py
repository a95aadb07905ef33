"""Block identity and fusion aliases. Pure: no I/O, no clock.

Rule 1. A block id is a pure function of an entity's key, the same on every node, and it
    never changes while the entity lives::

        block_id(channel, id) = channel << 32 | (id // block_size)

    a non-negative int64 (channel < 2**8 and id // block_size < 2**32, so 40 bits). The
    channel is ``block_id >> 32``, the block number ``block_id & 0xFFFF_FFFF``; block
    number ``b`` of a channel covers ids ``[b * block_size, (b + 1) * block_size)``.
    ``block_size`` is cluster-wide: nodes with different sizes disagree on every block.

Rule 2. Entities are ordered by their key ``channel << 32 | id`` (uint64). The block id is
    monotone in that key, so the key order is also the block order: a store kept in key
    order holds every block as one contiguous run (what makes aggregation a reduceat).

Rule 3. Fusion never re-keys an entity (its id is its identity, and ids are what producers
    send). Fusing a weak block W into a strong block S records the alias ``W -> root(S)``
    in a :class:`FusionTable`. From then on the *group* of a root is the root plus every
    block aliased to it, and a group is aggregated as one row under the root's id, and is
    placed as one unit: the shell computes placement on ``table.resolve(block_id)`` so the
    whole group lives on the root's owner. Aliases are flattened (always point at a root),
    so resolving is one lookup and there are no chains or cycles. Both blocks must be of
    the same channel. A group is undone with :meth:`FusionTable.release`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

DEFAULT_BLOCK_SIZE = 1000
"""The seeds' block size: 1,000 blocks (aggregate rows a tick) per million entities."""

MAX_BLOCK_SIZE = 1 << 24
"""Counts per block are summed in int32 at worst; 16 M entities a block is far past use."""

ID_MASK = 0xFFFF_FFFF
CHANNEL_SHIFT = 32

_U32 = np.uint64(ID_MASK)
_SHIFT = np.uint64(CHANNEL_SHIFT)


def check_block_size(block_size: int) -> int:
    """Return ``block_size`` as an int, or raise ValueError when outside [1, MAX_BLOCK_SIZE]."""
    size = int(block_size)
    if not 1 <= size <= MAX_BLOCK_SIZE:
        raise ValueError(f"block_size must be in [1, {MAX_BLOCK_SIZE}], got {block_size!r}")
    return size


def block_id(channel: int, entity_id: int, block_size: int = DEFAULT_BLOCK_SIZE) -> int:
    """The block of entity ``(channel, entity_id)``: ``channel << 32 | entity_id // block_size``."""
    channel, entity_id = int(channel), int(entity_id)
    if not 0 <= channel <= 0xFF or not 0 <= entity_id <= ID_MASK:
        raise ValueError(f"no entity (channel={channel}, id={entity_id})")
    return channel << CHANNEL_SHIFT | entity_id // check_block_size(block_size)


def block_channel(block: int) -> int:
    """The channel of a block id."""
    return int(block) >> CHANNEL_SHIFT


def block_number(block: int) -> int:
    """The block's number within its channel (its id range starts at number * block_size)."""
    return int(block) & ID_MASK


def entity_keys(channel: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Sort keys ``channel << 32 | id`` (uint64) of columns of channels and ids, vectorized."""
    keys = np.asarray(channel).astype(np.uint64)
    np.left_shift(keys, _SHIFT, out=keys)
    np.bitwise_or(keys, np.asarray(ids).astype(np.uint64), out=keys)
    return keys


def block_ids_of_keys(keys: np.ndarray, block_size: int) -> np.ndarray:
    """Block ids (int64) of entity keys (uint64), vectorized."""
    keys = np.asarray(keys, dtype=np.uint64)
    out = (keys & _U32) // np.uint64(block_size)
    out |= (keys >> _SHIFT) << _SHIFT
    return out.view(np.int64)


def block_ids_of(channel: np.ndarray, ids: np.ndarray, block_size: int) -> np.ndarray:
    """Block ids (int64) of columns of channels and ids, vectorized (Rule 1)."""
    return block_ids_of_keys(entity_keys(channel, ids), block_size)


class FusionTable:
    """Aliases ``weak block -> root block`` (Rule 3), flattened. Pure and deterministic.

    Every node that applies the same fusions in the same order holds the same table; the
    nucleus decides them, so the shell applies them in the nucleus's order.
    """

    __slots__ = ("_alias", "_sorted", "version")

    def __init__(self, aliases: Mapping[int, int] | None = None) -> None:
        self._alias: dict[int, int] = {}
        self._sorted: tuple[np.ndarray, np.ndarray] | None = None
        self.version = 0
        for weak, strong in (aliases or {}).items():
            self.merge(weak, strong)

    def __len__(self) -> int:
        return len(self._alias)

    def __bool__(self) -> bool:
        return bool(self._alias)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FusionTable) and other._alias == self._alias

    def __repr__(self) -> str:
        return f"FusionTable({self._alias!r})"

    def root(self, block: int) -> int:
        """The root a block is aggregated and placed under (itself when not fused)."""
        block = int(block)
        return self._alias.get(block, block)

    def resolve(self, blocks: np.ndarray | Iterable[int]) -> np.ndarray:
        """Roots of many block ids (int64 array), vectorized."""
        arr = np.asarray(blocks, dtype=np.int64)
        if not self._alias:
            return arr.copy()
        if self._sorted is None:
            weak = np.fromiter(self._alias.keys(), np.int64, len(self._alias))
            root = np.fromiter(self._alias.values(), np.int64, len(self._alias))
            order = np.argsort(weak)
            self._sorted = (weak[order], root[order])
        weak, root = self._sorted
        idx = np.minimum(np.searchsorted(weak, arr), len(weak) - 1)
        return np.where(weak[idx] == arr, root[idx], arr)

    def members(self, root: int) -> list[int]:
        """Blocks of ``root``'s group, root first, then the others in id order."""
        root = int(root)
        return [root] + sorted(w for w, r in self._alias.items() if r == root)

    def as_dict(self) -> dict[int, int]:
        """A copy of the aliases ``{weak: root}`` (to persist or gossip)."""
        return dict(self._alias)

    def merge(self, weak: int, strong: int) -> tuple[int, int] | None:
        """Fuse ``weak``'s group into ``strong``'s. Returns ``(weak_root, strong_root)``,
        or None when they already share a root. Raises ValueError across channels."""
        weak, strong = int(weak), int(strong)
        if block_channel(weak) != block_channel(strong):
            raise ValueError(f"cannot fuse block {weak:#x} into {strong:#x}: channels differ")
        wr, sr = self.root(weak), self.root(strong)
        if wr == sr:
            return None
        for member, root in self._alias.items():
            if root == wr:
                self._alias[member] = sr
        self._alias[wr] = sr
        self._changed()
        return wr, sr

    def release(self, block: int) -> list[int]:
        """Undo fusion for ``block``: a root frees its whole group, a member leaves its
        group. Returns the blocks that became their own roots again."""
        block = int(block)
        if block in self._alias:
            del self._alias[block]
            self._changed()
            return [block]
        freed = [w for w, r in self._alias.items() if r == block]
        for w in freed:
            del self._alias[w]
        if freed:
            self._changed()
        return sorted(freed)

    def _changed(self) -> None:
        self._sorted = None
        self.version += 1
