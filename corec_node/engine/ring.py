"""Rule 5 of block placement: a token ring, so that a block's copies stay among a bounded
set of peers whatever the cluster's size. Pure.

With rendezvous hashing (rules 1 and 4) a block's second holder is any member: every node
ends up holding copies for every other, so links and copy traffic grow with the mesh. On a
ring, a block's holders are the members that follow its point clockwise: a node shares
blocks only with the members whose tokens neighbour its own, at most
``2 * RING_TOKENS * (copies - 1)`` of them, at any size. The property rule 4 needs is
kept: removing a member hands each of its arcs to the next member clockwise, which is the
block's next holder already, so a dead primary's replica is its new primary and no data
moves; a joining member takes arcs only from the members after it.

    point(b)     = mix(b + GOLDEN)                     (b: the block id or its fusion root)
    token(m, j)  = mix(mix(j + RING_SALT) ^ seed(m))   for j in 0 .. RING_TOKENS - 1

(``mix``, ``seed`` and GOLDEN as in rule 2.) A block's walk visits the tokens at or after
its point in ascending order, wrapping, each member or learner counted at its first
token; equal tokens go to the smaller name. Its owner is the first member of the walk;
its holders are taken as rule 4 takes them from the rendezvous ranking: members until
``copies`` are taken, and a learner when it comes among the first ``copies`` of the walk.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

RING_TOKENS = 32  # per member: shares within about 1 / sqrt(32) of even, spread bounded by 64 (copies - 1)
RING_SALT = np.uint64(0xD1B54A32D192ED03)


def _mix(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        x = x ^ (x >> np.uint64(30))
        x = x * np.uint64(0xBF58476D1CE4E5B9)
        x = x ^ (x >> np.uint64(27))
        x = x * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def block_points(block_ids: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return _mix(np.asarray(block_ids, np.int64).ravel().astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15))


def member_tokens(seed: int) -> np.ndarray:
    with np.errstate(over="ignore"):
        return _mix(_mix(np.arange(RING_TOKENS, dtype=np.uint64) + RING_SALT) ^ np.uint64(seed))


class TokenRing:
    """The ring over ``names`` (sorted) with their ``seeds``; ``learner[i]``: that name owns
    nothing. Walks are remembered per token position and number of copies."""

    def __init__(self, names: Sequence[str], seeds: Sequence[int], learner: Sequence[bool]) -> None:
        tokens = np.concatenate([member_tokens(s) for s in seeds])
        node = np.repeat(np.arange(len(names), dtype=np.intp), RING_TOKENS)
        order = np.lexsort((node, tokens))  # by token, then by name (names are sorted): ties to the smaller
        self.tokens, self.node = tokens[order], node[order]
        self.learner = np.asarray(learner, bool)
        self.n = len(names)
        members = ~self.learner[self.node]
        self._member_tokens, self._member_node = self.tokens[members], self.node[members]
        member_index = np.cumsum(~self.learner) - 1  # node index -> index among members
        self._member_owner = member_index[self._member_node]
        self._walks: dict[tuple[int, int], tuple[int, ...]] = {}
        self._tables: dict[int, np.ndarray] = {}

    def owners(self, block_ids: np.ndarray) -> np.ndarray:
        """Index among the members (the learners left out) of each block's owner."""
        points = block_points(block_ids)
        pos = np.searchsorted(self._member_tokens, points, side="left") % len(self._member_tokens)
        return self._member_owner[pos]

    def holder_mask(self, block_ids: np.ndarray, copies: int) -> np.ndarray:
        """(blocks, names) bool: who holds each block (see the module)."""
        points = block_points(block_ids)
        if len(points) == 0:
            return np.zeros((0, self.n), bool)
        pos = np.searchsorted(self.tokens, points, side="left") % len(self.tokens)
        table = self._table(copies)
        held = np.zeros((len(points), self.n + 1), bool)  # the last column takes the padding
        rows = np.arange(len(points))[:, None]
        held[rows, table[pos]] = True
        return held[:, :self.n]

    def _table(self, copies: int) -> np.ndarray:
        """Every token position's walk as one row (padded with ``n``), made once per map."""
        table = self._tables.get(copies)
        if table is None:
            walks = [self.walk(i, copies) for i in range(len(self.tokens))]
            table = np.full((len(walks), max(len(w) for w in walks)), self.n, np.intp)
            for i, w in enumerate(walks):
                table[i, :len(w)] = w
            self._tables[copies] = table
            self._walks.clear()  # the table has them all
        return table

    def walks(self, block_ids: np.ndarray, copies: int) -> np.ndarray:
        """Each block's holders in walk order, one row a block, padded with ``n`` (what
        ``ordered_holders`` gives one block, for many at once)."""
        points = block_points(block_ids)
        if len(points) == 0:
            return np.zeros((0, 1), np.intp)
        pos = np.searchsorted(self.tokens, points, side="left") % len(self.tokens)
        return self._table(copies)[pos]

    def ordered_holders(self, block: int, copies: int) -> tuple[int, ...]:
        """One block's holders in walk order (its owner is the first member)."""
        pos = int(np.searchsorted(self.tokens, block_points(np.array([block]))[0], side="left")) % len(self.tokens)
        return self.walk(pos, copies)

    def walk(self, start: int, copies: int) -> tuple[int, ...]:
        """The holders of a block whose walk starts at token ``start``, in walk order."""
        key = (start, copies)
        found = self._walks.get(key)
        if found is not None:
            return found
        taken: list[int] = []
        seen: set[int] = set()
        members = 0
        total = len(self.tokens)
        for step in range(total):
            node = int(self.node[(start + step) % total])
            if node in seen:
                continue
            depth = len(seen)
            seen.add(node)
            member = not self.learner[node]
            if member or depth < copies:
                taken.append(node)
            members += member
            if members >= copies or len(seen) == self.n:
                break
        found = self._walks[key] = tuple(taken)
        return found
