"""Placement rule 5, the token ring (engine/ring.py): copies among a bounded set of peers."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from corec_node.engine.placement import (
    RENDEZVOUS,
    RING,
    PlacementMap,
    map_digest,
    members_digest,
    owners,
)
from corec_node.engine.ring import RING_TOKENS

BLOCKS = np.arange(20_000, dtype=np.int64) | (3 << 32)


def test_golden_values():
    # rule 5 is protocol: another implementation must place these blocks the same way
    m = PlacementMap(1, ["alpha", "beta", "gamma"])
    assert m.rule == RING
    blocks = [0, 1, 2, 3, 4, 5, 1 << 32, (7 << 32) | 12345, (255 << 32) | 0xFFFF_FFFF]
    assert m.owner_names(blocks) == GOLDEN
    assert m.digest() == map_digest(["alpha", "beta", "gamma"], (), RING) != members_digest(["alpha", "beta", "gamma"])


GOLDEN = ["alpha", "gamma", "gamma", "beta", "alpha", "gamma", "gamma", "beta", "alpha"]


def _spec_owner(block: int, names: list[str]) -> str:
    """SPEC 9.1's ring rule written out with Python integers, apart from the code under test."""
    mask = (1 << 64) - 1

    def mix(x: int) -> int:
        x ^= x >> 30
        x = (x * 0xBF58476D1CE4E5B9) & mask
        x ^= x >> 27
        x = (x * 0x94D049BB133111EB) & mask
        return x ^ (x >> 31)

    def seed(name: str) -> int:
        return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8, person=b"corec-placement").digest(), "big")

    ring = sorted((mix(mix((j + 0xD1B54A32D192ED03) & mask) ^ seed(n)), n.encode()) for n in names for j in range(32))
    point = mix((block + 0x9E3779B97F4A7C15) & mask)
    after = [n for t, n in ring if t >= point] + [n for t, n in ring]
    return after[0].decode()


def test_the_golden_values_follow_the_spec_text():
    names = ["alpha", "beta", "gamma"]
    blocks = [0, 1, 2, 3, 4, 5, 1 << 32, (7 << 32) | 12345, (255 << 32) | 0xFFFF_FFFF]
    assert [_spec_owner(b, names) for b in blocks] == GOLDEN
    m = PlacementMap(1, [f"n{i}" for i in range(9)])
    for b in BLOCKS[::401].tolist():
        assert m.owner(b) == _spec_owner(b, list(m.members))


def test_the_rendezvous_rule_is_still_there_for_older_members():
    names = [f"n{i}" for i in range(7)]
    m = PlacementMap(0, names, rule=RENDEZVOUS)
    assert np.array_equal(np.asarray(m.members)[m.owners(BLOCKS)], np.asarray(names)[owners(BLOCKS, names)])
    assert m.digest() == members_digest(names)
    with pytest.raises(ValueError):
        PlacementMap(0, names, rule="round-robin")


@pytest.mark.parametrize("copies", [2, 3])
def test_a_dead_owner_hands_each_block_to_a_member_that_holds_it(copies):
    names = [f"node-{i}" for i in range(12)]
    before = PlacementMap(1, names)
    held = before.holder_mask(BLOCKS, copies)
    assert (held.sum(axis=1) == copies).all()
    owner = before.owners(BLOCKS)
    assert held[np.arange(len(BLOCKS)), owner].all()
    for dead in ("node-0", "node-7"):
        after = PlacementMap(2, [n for n in names if n != dead])
        new_owner = [before.members.index(n) for n in after.owner_names(BLOCKS)]
        assert held[np.arange(len(BLOCKS)), new_owner].all()  # promoted: it held the block already
        moved = np.asarray(before.owner_names(BLOCKS)) != np.asarray(after.owner_names(BLOCKS))
        assert set(np.asarray(before.owner_names(BLOCKS))[moved]) == {dead}  # only the dead one's blocks


def test_a_join_takes_blocks_only_for_the_newcomer():
    names = [f"node-{i}" for i in range(9)]
    before, after = PlacementMap(1, names), PlacementMap(2, names + ["node-new"])
    moved = np.asarray(before.owner_names(BLOCKS)) != np.asarray(after.owner_names(BLOCKS))
    assert set(np.asarray(after.owner_names(BLOCKS))[moved]) == {"node-new"}
    assert 0.03 < moved.mean() < 0.2  # about a tenth


def test_a_learner_holds_what_it_will_own_and_the_members_keep_their_copies():
    names = [f"node-{i}" for i in range(6)]
    learning = PlacementMap(1, names, ["node-new"])
    joined = PlacementMap(2, names + ["node-new"])
    held = learning.holder_mask(BLOCKS, 2)
    column = learning.everyone.index("node-new")
    will_hold = joined.holder_mask(BLOCKS, 2)[:, joined.everyone.index("node-new")]
    assert held[will_hold, column].all()
    members = [learning.everyone.index(n) for n in names]
    assert (held[:, members].sum(axis=1) == 2).all()  # two member copies while it learns
    assert "node-new" not in learning.owner_names(BLOCKS)


def test_the_holders_of_a_block_start_with_its_owner():
    m = PlacementMap(1, [f"node-{i}" for i in range(10)])
    for block in BLOCKS[:200].tolist():
        holders = m.holders(block, 3)
        assert holders[0] == m.owner(block) and len(set(holders)) == 3
        mask = m.holder_mask([block], 3)[0]
        assert set(holders) == {m.everyone[i] for i in np.flatnonzero(mask).tolist()}


@pytest.mark.parametrize("rule", [RING, RENDEZVOUS])
@pytest.mark.parametrize("copies", [1, 2, 3, 5, 6])
def test_the_holders_of_many_blocks_at_once_are_each_blocks_holders(rule, copies):
    # ``blocks`` lists every block's holders in one go; a learner among the names, and
    # copies up to and past the number of names
    m = PlacementMap(1, [f"node-{i}" for i in range(4)], learners=["node-new"], rule=rule)
    blocks = np.concatenate([BLOCKS[:300], np.arange(50, dtype=np.int64)])
    assert m.holders_of(blocks, copies) == [m.holders(b, copies) for b in blocks.tolist()]
    assert m.holders_of(blocks[:0], copies) == []


@pytest.mark.parametrize("size", [40, 400])
def test_copies_stay_among_a_bounded_set_of_peers(size):
    # rendezvous spreads every node's copies over every other node; the ring keeps each
    # node's co-holders among the neighbours of its tokens, at any size
    names = [f"node-{i}" for i in range(size)]
    m = PlacementMap(1, names)
    blocks = np.arange(size * 500, dtype=np.int64) | (1 << 32)
    held = m.holder_mask(blocks, 2)
    peers = [set() for _ in names]
    for row in np.flatnonzero(held.sum(axis=1) == 2).tolist():
        a, b = np.flatnonzero(held[row]).tolist()
        peers[a].add(b)
        peers[b].add(a)
    assert max(len(p) for p in peers) <= 2 * RING_TOKENS
    share = np.bincount(m.owners(blocks), minlength=size) / len(blocks)
    assert share.max() < 2.5 / size and share.min() > 0.2 / size  # tokens keep shares near even
    if size == 400:
        assert max(len(p) for p in peers) < size / 4
