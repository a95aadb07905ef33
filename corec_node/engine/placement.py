"""Block placement: rendezvous (highest random weight) hashing over live members. Pure.

Rule 1. The owner of block ``b`` among members ``M`` is the member with the highest
    ``score(m, b)``; ties (probability about 2**-64 a pair) go to the smaller name in
    UTF-8 byte order. The result depends on the SET of names, never on their order.
Rule 2. The score is part of the protocol (every node must compute the same owner, in any
    process, on any machine; Python's ``hash()`` of a str is salted per process and is
    never used)::

        seed(m)     = blake2b(utf8(m), digest_size=8, person=b"corec-placement").digest()
                      read as a big-endian uint64
        mix(x)      = splitmix64 finalizer (x ^= x >> 30; x *= 0xBF58476D1CE4E5B9;
                      x ^= x >> 27; x *= 0x94D049BB133111EB; x ^= x >> 31), mod 2**64
        score(m, b) = mix(mix(b + 0x9E3779B97F4A7C15) ^ seed(m))

    with ``b`` the block id (blocks.py: ``channel << 32 | id // block_size``) as a uint64,
    or its fusion root (the shell places ``store.fusions.resolve(block_ids)``).
Rule 3. Minimal movement follows from Rule 1: a block's owner changes only if the new
    owner is a member that joined (it now has the highest score), or the old owner left.
    A join moves about 1/n of the blocks, all to the newcomer; a leave moves exactly the
    leaver's blocks, spread over the others.
Rule 4. Copies (``holders``). With ``copies`` = c, a block is held by the c members of
    highest score: the first is its owner (primary), the others its replicas. Ranking a
    subset keeps the order, so when the primary leaves the next holder is the new primary
    and already holds the block: promotion moves no data. A learner (a member catching up,
    not yet trusted with ownership) is ranked with the members but never owns: it holds
    a block when it is among the c highest of members and learners together, besides the
    c highest members, so a block keeps its c copies while a learner copies it.

Vectorized: ``owners`` scores blocks x members with numpy uint64 arithmetic (10^5 blocks x
10 members in about 10 ms). ``partition`` splits an entity batch by owner (what the
shell forwards where), ``moves`` lists the handovers between two maps.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from corec_node.engine.blocks import CHANNEL_SHIFT, block_ids_of
from corec_node.engine.ring import TokenRing

PERSON = b"corec-placement"
RENDEZVOUS, RING = "rendezvous", "ring"  # rules 1 and 4; rule 5 (engine/ring.py), since 1.7
GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)


def members_digest(members: Iterable[str]) -> str:
    """The digest the nucleus confirms a map with (SPEC 9.1): 16 hex digits of BLAKE2b over
    the sorted names, each followed by a zero byte. Equal digests: equal member sets."""
    h = hashlib.blake2b(digest_size=8, person=b"corec-members")
    for name in sorted(n.encode("utf-8") for n in members):
        h.update(name + b"\0")
    return h.hexdigest()


def map_digest(members: Iterable[str], learners: Iterable[str] = (), rule: str = RENDEZVOUS) -> str:
    """The digest of a map with learners (rule 4): ``members_digest`` when there are none
    (what a 1.5 node confirms), else over both sets, learners after a one byte; a ring map
    (rule 5) ends with a two byte and the rule's name, so no 1.6 node confirms one."""
    learners = sorted(n.encode("utf-8") for n in learners)
    if not learners and rule == RENDEZVOUS:
        return members_digest(members)
    h = hashlib.blake2b(digest_size=8, person=b"corec-members")
    for name in sorted(n.encode("utf-8") for n in members):
        h.update(name + b"\0")
    h.update(b"\1")
    for name in learners:
        h.update(name + b"\0")
    if rule != RENDEZVOUS:
        h.update(b"\2" + rule.encode("ascii"))
    return h.hexdigest()


def member_seed(name: str) -> int:
    """Rule 2's per-member seed (a uint64 as a Python int)."""
    digest = hashlib.blake2b(name.encode("utf-8"), digest_size=8, person=PERSON).digest()
    return int.from_bytes(digest, "big")


def _mix(x: np.ndarray, tmp: np.ndarray | None = None) -> np.ndarray:
    """splitmix64 finalizer, in place on a uint64 array (wraps mod 2**64)."""
    if tmp is None:
        tmp = np.empty_like(x)
    np.right_shift(x, _S30, out=tmp)
    x ^= tmp
    x *= _M1
    np.right_shift(x, _S27, out=tmp)
    x ^= tmp
    x *= _M2
    np.right_shift(x, _S31, out=tmp)
    x ^= tmp
    return x


_CHUNK = 1 << 15  # blocks scored at a time: three uint64 buffers of 256 KiB stay in cache


def _owner_index(blocks: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """Index (into ``seeds``) of the highest score per block; the first index wins ties."""
    b = np.asarray(blocks, dtype=np.int64).ravel().astype(np.uint64)
    out = np.zeros(len(b), np.intp)
    with np.errstate(over="ignore"):
        for lo in range(0, len(b), _CHUNK):
            base = b[lo : lo + _CHUNK] + GOLDEN
            tmp = np.empty_like(base)
            _mix(base, tmp)
            best = _mix(base ^ seeds[0], tmp)
            idx = out[lo : lo + _CHUNK]
            x = np.empty_like(base)
            for j in range(1, len(seeds)):
                np.bitwise_xor(base, seeds[j], out=x)
                _mix(x, tmp)
                idx[x > best] = j
                np.maximum(best, x, out=best)
    return out


def scores(block_ids: np.ndarray | Iterable[int], members: Sequence[str]) -> np.ndarray:
    """Rule 2's scores, shape (len(members), len(block_ids)), uint64 (for inspection)."""
    b = np.asarray(block_ids, dtype=np.int64).astype(np.uint64).ravel()
    with np.errstate(over="ignore"):
        base = _mix(b + GOLDEN)
        seeds = np.array([member_seed(m) for m in members], dtype=np.uint64)
        return _mix(base[None, :] ^ seeds[:, None])


def _checked(members: Sequence[str]) -> list[str]:
    names = list(members)
    if not names:
        raise ValueError("placement needs at least one member")
    if len(set(names)) != len(names):
        raise ValueError("member names must be unique")
    for m in names:
        if not isinstance(m, str):
            raise TypeError(f"member names must be str, got {m!r}")
    return names


def owners(block_ids: np.ndarray | Iterable[int], members: Sequence[str]) -> np.ndarray:
    """Index into ``members`` of each block's owner (Rule 1), as an intp array."""
    names = _checked(members)
    order = sorted(range(len(names)), key=lambda i: names[i].encode("utf-8"))
    seeds = np.array([member_seed(names[i]) for i in order], dtype=np.uint64)
    # seeds are in name order and the first maximum wins: ties go to the smaller name.
    return np.asarray(order, dtype=np.intp)[_owner_index(np.asarray(block_ids), seeds)]


@dataclass(frozen=True)
class PlacementMap:
    """Who owns which block for one membership view. ``version`` is the caller's (e.g. the
    membership epoch or the nucleus term): it orders maps, placement ignores it.
    ``learners``: members catching up, which hold copies but own nothing (rule 4)."""

    version: int
    members: tuple[str, ...]
    learners: tuple[str, ...]
    _seeds: np.ndarray = field(init=False, repr=False, compare=False)
    _ranked: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _ranked_seeds: np.ndarray = field(init=False, repr=False, compare=False)
    rule: str = field(init=False, default=RING)
    _ring: TokenRing | None = field(init=False, repr=False, compare=False, default=None)

    def __init__(self, version: int, members: Iterable[str], learners: Iterable[str] = (), rule: str = RING) -> None:
        if rule not in (RING, RENDEZVOUS):
            raise ValueError(f"unknown placement rule {rule!r}")
        names = tuple(sorted(_checked(list(members)), key=lambda m: m.encode("utf-8")))
        extra = tuple(sorted(set(learners) - set(names), key=lambda m: m.encode("utf-8")))
        ranked = tuple(sorted(names + extra, key=lambda m: m.encode("utf-8")))
        object.__setattr__(self, "version", int(version))
        object.__setattr__(self, "members", names)
        object.__setattr__(self, "learners", extra)
        object.__setattr__(self, "_seeds", np.array([member_seed(m) for m in names], np.uint64))
        object.__setattr__(self, "_ranked", ranked)
        object.__setattr__(self, "_ranked_seeds", np.array([member_seed(m) for m in ranked], np.uint64))
        object.__setattr__(self, "rule", rule)
        ring = TokenRing(ranked, [member_seed(m) for m in ranked], [m in extra for m in ranked]) if rule == RING else None
        object.__setattr__(self, "_ring", ring)

    @property
    def everyone(self) -> tuple[str, ...]:
        """Members and learners, sorted: the columns of ``holder_mask``."""
        return self._ranked

    def digest(self) -> str:
        return map_digest(self.members, self.learners, self.rule)

    def holder_mask(self, block_ids: np.ndarray | Iterable[int], copies: int) -> np.ndarray:
        """Rule 4: (blocks, len(everyone)) bool, True where that member or learner holds the
        block (the owner included)."""
        b = np.asarray(block_ids, dtype=np.int64).ravel()
        n = len(self._ranked)
        held = np.zeros((len(b), n), bool)
        if len(b) == 0:
            return held
        if copies >= n:
            held[:] = True
            return held
        if self._ring is not None:
            return self._ring.holder_mask(b, copies)
        sc = scores(b, self._ranked).T  # (blocks, everyone)
        order = np.argsort(sc, axis=1)[:, ::-1]  # highest first
        is_member = np.array([m not in self.learners for m in self._ranked], bool)
        rows = np.arange(len(b))
        members_taken = np.zeros(len(b), np.intp)
        for depth in range(n):
            col = order[:, depth]
            member = is_member[col]
            take = (members_taken < copies) & (member | (depth < copies))
            held[rows[take], col[take]] = True
            members_taken += member
            if (members_taken >= copies).all():
                break
        return held

    def holders(self, block: int, copies: int) -> list[str]:
        """One block's holders, its owner first, then by score."""
        if self._ring is not None:
            walk = [self._ranked[i] for i in self._ring.ordered_holders(block, copies)]
            if copies >= len(self._ranked):
                walk += [m for m in self._ranked if m not in walk]
            owner = self.owner(block)
            return [owner, *(m for m in walk if m != owner)]
        mask = self.holder_mask([block], copies)[0]
        owner = self.owner(block)
        ranked = sorted((m for m, h in zip(self._ranked, mask.tolist(), strict=True) if h and m != owner),
                        key=lambda m: -int(scores([block], [m])[0, 0]))
        return [owner, *ranked]

    def holders_of(self, block_ids: np.ndarray | Iterable[int], copies: int) -> list[list[str]]:
        """``holders`` of many blocks at once (``blocks`` lists every block's holders)."""
        b = np.asarray(block_ids, dtype=np.int64).ravel()
        if len(b) == 0:
            return []
        if self._ring is None:  # rendezvous: the holders by score
            held_mask = self.holder_mask(b, copies)
            ranked = np.argsort(scores(b, self._ranked).T, axis=1)[:, ::-1]
            return [[owner, *(self._ranked[j] for j in order if held_mask[i, j] and self._ranked[j] != owner)]
                    for i, (order, owner) in enumerate(zip(ranked.tolist(), self.owner_names(b), strict=True))]
        names = (*self._ranked, "")  # the walks' padding is the index len(names) - 1
        rest = copies >= len(self._ranked)  # every name holds: the ones the walk missed follow it
        out = []
        for walk, owner in zip(self._ring.walks(b, copies).tolist(), self.owner_names(b), strict=True):
            held = [names[i] for i in walk if names[i]]
            if rest:
                held += [m for m in self._ranked if m not in held]
            out.append([owner, *(m for m in held if m != owner)])
        return out

    def owners(self, block_ids: np.ndarray | Iterable[int]) -> np.ndarray:
        """Index into ``self.members`` (sorted names) of each block's owner."""
        if self._ring is not None:
            return self._ring.owners(np.asarray(block_ids))
        return _owner_index(np.asarray(block_ids), self._seeds)

    def owner(self, block: int) -> str:
        """The owner of one block."""
        return self.members[int(self.owners([block])[0])]

    def owner_names(self, block_ids: np.ndarray | Iterable[int]) -> list[str]:
        return [self.members[i] for i in self.owners(block_ids).tolist()]

    def blocks_of(self, member: str, block_ids: np.ndarray | Iterable[int]) -> np.ndarray:
        """The blocks among ``block_ids`` that ``member`` owns (empty if not a member)."""
        b = np.asarray(block_ids, dtype=np.int64).ravel()
        if member not in self.members:
            return b[:0]
        return b[self.owners(b) == self.members.index(member)]

    def with_members(self, version: int, members: Iterable[str]) -> PlacementMap:
        return PlacementMap(version, members, self.learners, self.rule)


def moves(
    old: PlacementMap, new: PlacementMap, block_ids: np.ndarray | Iterable[int]
) -> dict[int, tuple[str, str]]:
    """``{block: (old_owner, new_owner)}`` for the blocks whose owner differs."""
    b = np.asarray(block_ids, dtype=np.int64).ravel()
    o = np.asarray(old.members, dtype=object)[old.owners(b)]
    n = np.asarray(new.members, dtype=object)[new.owners(b)]
    changed = np.flatnonzero(o != n)
    return {int(b[i]): (str(o[i]), str(n[i])) for i in changed.tolist()}


def _gather(records: np.ndarray, placement: PlacementMap, run_owner: np.ndarray, starts: np.ndarray,
            stops: np.ndarray) -> dict[str, np.ndarray]:
    """Each owner's runs ``records[start:stop]``, copied as raw bytes into one array viewed
    back as the records' own dtype (np.concatenate would promote a big-endian wire dtype to
    native byte order, and a structured copy goes field by field)."""
    raw = np.ascontiguousarray(records).view(np.dtype((np.void, records.dtype.itemsize)))
    parts: dict[str, np.ndarray] = {}
    for index in np.unique(run_owner).tolist():
        mine = np.flatnonzero(run_owner == index)
        spans = list(zip(starts[mine].tolist(), stops[mine].tolist(), strict=True))
        part = np.empty(sum(b - a for a, b in spans), dtype=raw.dtype)
        at = 0
        for a, b in spans:
            part[at:at + b - a] = raw[a:b]
            at += b - a
        parts[placement.members[index]] = part.view(records.dtype)
    return parts


def partition(
    records: np.ndarray,
    placement: PlacementMap,
    block_size: int,
    resolve: Callable[[np.ndarray], np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Split entity records (ENTITY_DTYPE) by the owner of their block: ``{member:
    records}`` (members owning none are absent; each part keeps the input order).
    ``resolve`` maps block ids to placement keys (``store.fusions.resolve``), so a fused
    group goes to its root's owner."""
    m = len(records)
    if m == 0:
        return {}
    ids, channels = records["id"], records["channel"]
    first, last, channel = int(ids[0]), int(ids[-1]), int(channels[0])
    if last - first == m - 1 and (channels == channel).all() and (np.diff(ids.astype(np.int64)) == 1).all():
        # consecutive ids of one channel (what producers send most): the runs are the blocks
        # from first // block_size to last // block_size, no per-record block id needed
        b0, b1 = first // block_size, last // block_size
        heads = np.arange(b0, b1 + 1, dtype=np.int64) | (channel << CHANNEL_SHIFT)
        starts = np.maximum(np.arange(b0, b1 + 1, dtype=np.int64) * block_size - first, 0)
        stops = np.append(starts[1:], m)
        run_owner = placement.owners(resolve(heads) if resolve is not None else heads)
        return _gather(records, placement, run_owner, starts, stops)
    blocks = block_ids_of(channels, ids, block_size)
    if resolve is not None:
        blocks = resolve(blocks)
    starts = np.flatnonzero(blocks[1:] != blocks[:-1]) + 1
    if len(starts) <= len(blocks) // 16:  # a few runs of one block each (ids in order): place each run once
        starts = np.concatenate(([0], starts))
        stops = np.append(starts[1:], len(blocks))
        run_owner = placement.owners(blocks[starts])
        return _gather(records, placement, run_owner, starts, stops)
    uniq, inverse = np.unique(blocks, return_inverse=True)
    owner = placement.owners(uniq)[inverse]
    order = np.argsort(owner, kind="stable")
    cuts = np.flatnonzero(np.diff(owner[order])) + 1
    return {
        placement.members[int(owner[part[0]])]: records[part]
        for part in np.split(order, cuts)
    }


def by_holders(
    records: np.ndarray,
    placement: PlacementMap,
    block_size: int,
    copies: int,
    resolve: Callable[[np.ndarray], np.ndarray] | None = None,
) -> np.ndarray:
    """One owner's records reordered so that records whose blocks have the same holders sit
    together (holder sets in the order they first appear; the input order kept within each,
    so a block's records, and an entity's, stay in order).

    Why: the owner forwards each batch to the other holders of its blocks, one message per
    holder (SPEC 9.7). Blocks in id order have holders in no order, so on 8 nodes a batch of
    ten blocks went out as about five replica messages of two blocks; cut from this order,
    a batch goes to one or two holders, and the replicas take a few full batches instead of
    many small ones."""
    m = len(records)
    if m == 0 or copies <= 1 or len(placement.members) <= copies:
        return records  # one holder set for every block: nothing to group
    blocks = block_ids_of(records["channel"], records["id"], block_size)
    if resolve is not None:
        blocks = resolve(blocks)
    starts = np.concatenate(([0], np.flatnonzero(blocks[1:] != blocks[:-1]) + 1))
    if len(starts) <= m // 16:  # a few runs of one block each (ids in order): a set per run
        held, per_record = placement.holder_mask(blocks[starts], copies), None
    else:  # scattered ids: a set per distinct block
        uniq, per_record = np.unique(blocks, return_inverse=True)
        held = placement.holder_mask(uniq, copies)
    packed = np.ascontiguousarray(np.packbits(held, axis=1))  # a holder set as a few bytes
    _, group = np.unique(packed.view(np.dtype((np.void, packed.shape[1]))).ravel(), return_inverse=True)
    group = group.ravel() if per_record is None else group.ravel()[per_record.ravel()]  # of each run or record
    _, first = np.unique(group, return_index=True)  # each set's first run or record
    rank = np.argsort(np.argsort(first, kind="stable"), kind="stable")[group]  # sets in order of first appearance
    if (np.diff(rank) >= 0).all():
        return records  # already grouped
    order = np.argsort(rank, kind="stable")
    if per_record is not None:
        return records[order]
    stops = np.append(starts[1:], m)
    return records[np.concatenate([np.arange(a, b) for a, b in zip(starts[order].tolist(), stops[order].tolist(), strict=True)])]
