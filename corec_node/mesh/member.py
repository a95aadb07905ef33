"""One member's record and the precedence between updates about it (membership rules 2, 4).

Also the read-only queries over a member table (name -> Member) that membership, probing and
push-pull share: who is live, how many, a random pick of alive members from the rng, the
voters, and who is due to be forgotten (rule 13).
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from corec_node.wire.messages import MemberState, MemberStatus

__all__ = [
    "ALIVE",
    "DEAD",
    "DOWN",
    "LEFT",
    "LIVE",
    "SUSPECT",
    "Member",
    "MemberTable",
    "SharedMembers",
    "SharedRecords",
    "n_live",
    "change_reason",
    "due_to_reap",
    "random_alive",
    "sorted_states",
    "status_counts",
    "supersedes",
    "voter_addrs",
]

ALIVE, SUSPECT, DEAD, LEFT = (
    MemberStatus.ALIVE,
    MemberStatus.SUSPECT,
    MemberStatus.DEAD,
    MemberStatus.LEFT,
)
LIVE = frozenset({ALIVE, SUSPECT})  # still members: probed, counted in n, listed by alive()
DOWN = frozenset({DEAD, LEFT})  # members kept only until reaped (membership rule 13)
_RANK = {ALIVE: 0, SUSPECT: 1, DEAD: 2, LEFT: 3}  # rule 2, at equal incarnation


def supersedes(
    new_inc: int, new_status: MemberStatus, old_inc: int, old_status: MemberStatus
) -> bool:
    """Rule 2: does an update ``(new_inc, new_status)`` replace ``(old_inc, old_status)``?"""
    if new_inc != old_inc:
        return new_inc > old_inc
    return _RANK[new_status] > _RANK[old_status]


NO_BUILD: tuple[str, str, tuple[str, ...], str, tuple[str, ...], tuple[str, ...]] = ("", "", (), "", (), ())
"""A member that announced nothing of itself: version, protocol, features, data socket, tags,
settings."""

BUILDS_KEPT = 4_096
_BUILDS: dict[tuple[object, ...], tuple[object, ...]] = {}
"""One tuple per distinct build, shared by every member record that holds it: a cluster has
a few builds, and a process of simulated nodes holds each member once per node."""


@dataclass(slots=True)
class Member:
    """This node's view of one member. Views hand out copies."""

    name: str
    addr: str
    pub: str
    inc: int
    status: MemberStatus
    since: float  # the ``now`` of the last status change
    # version, protocol, features it announced, its data socket ("" none: before 1.5), its tags (1.8),
    # its settings (1.10)
    build: tuple[str, str, tuple[str, ...], str, tuple[str, ...], tuple[str, ...]] = NO_BUILD
    # the last ``state()`` and the build it was made from: a push-pull sends every member's
    # state, and building one (a frozen dataclass) costs ten times checking that nothing changed
    _state: MemberState | None = field(default=None, init=False, repr=False, compare=False)
    _built: tuple[object, ...] | None = field(default=None, init=False, repr=False, compare=False)

    def state(self) -> MemberState:
        st = self._state
        if (st is not None and self._built is self.build and st.inc == self.inc and st.status == self.status
                and st.addr == self.addr and st.pub == self.pub):
            return st
        *build, settings = self.build  # pruned (1.9) sits between tags and settings: never set from here
        st = MemberState(self.name, self.addr, self.pub, self.inc, self.status, *build, settings=settings)
        self._state, self._built = st, self.build
        return st

    def adopt(self, st: MemberState) -> None:
        """Hold ``st`` itself as our state when it says exactly what we hold: cores that
        share a process (the simulator) then share one object per member and version, and
        a push-pull's no-op finds it by identity."""
        held = self.state()
        if held is not st and held == st:
            self._state = st

    def would_learn(self, st: MemberState) -> bool:
        """``learn_build(st)`` would change our record."""
        return bool(st.version) and st.inc >= self.inc and (
            st.version, st.protocol, st.features, st.data, st.tags, st.settings) != self.build

    def learn_build(self, st: MemberState) -> None:
        """What the member announced of itself (not a verdict: it never orders updates)."""
        if self.would_learn(st):
            build = (st.version, st.protocol, st.features, st.data, st.tags, st.settings)
            self.build = _BUILDS.setdefault(build, build) if len(_BUILDS) < BUILDS_KEPT else build


def change_reason(m: Member, status: MemberStatus, sender: str, gossip: bool) -> str:
    """Why ``m`` takes ``status`` from ``sender``'s news (the reason a MemberChanged gives)."""
    if status == LEFT:
        return "left"
    if status == ALIVE and m.status != ALIVE:
        return "rejoined" if m.status == LEFT else "refuted"
    if status == SUSPECT and gossip:
        return f"suspected by {sender}"
    return f"gossip from {sender}" if gossip else "push-pull"


class _Adds:
    """``add`` for both tables: a record of a new name (``put`` replaces one)."""

    __slots__ = ()

    def add(self, m: Member) -> None:
        if m.name in self:  # type: ignore[operator]
            raise ValueError(f"{m.name} has a record already")
        self.put(m)  # type: ignore[attr-defined]


class MemberTable(_Adds, dict[str, Member]):
    """One node's member records by name, with what the rules read every round (how many are
    live, which are dead) kept as records come, change status and go: no rule scans every
    member per round, which at thousands of members is most of a node's work. Records come
    with ``add``, change status with ``set_status`` and go with ``pop``; everything else is
    a read."""

    __slots__ = ("dead", "live")

    def __init__(self) -> None:
        super().__init__()
        self.live = 0  # ALIVE or SUSPECT
        self.dead: dict[str, None] = {}  # names of DEAD members

    shared = False

    def put(self, m: Member) -> None:
        """Add ``m``, or put it in place of the record of that name."""
        old = self.get(m.name)
        if old is not None:
            _count(self, old, -1)
        self[m.name] = m
        _count(self, m, 1)

    def mutable(self, name: str) -> Member:
        """The record of ``name`` to change (KeyError: none)."""
        return self[name]

    def set_status(self, m: Member, status: MemberStatus) -> None:
        _count(self, m, -1)
        m.status = status
        _count(self, m, 1)

    def pop(self, name: str) -> Member:  # type: ignore[override]
        m = super().pop(name)
        _count(self, m, -1)
        return m


class SharedRecords:
    """The records of a running cluster that the simulator's nodes start with, and what every
    push-pull would otherwise work out again per node: their states sorted by name, where
    each name sits, and which state objects they are. Never changed once made."""

    __slots__ = ("ids", "index", "states", "table")

    def __init__(self, table: MemberTable) -> None:
        self.table = table
        self.states = tuple(sorted_states(table))
        self.index = {st.name: i for i, st in enumerate(self.states)}
        self.ids = frozenset(id(st) for st in self.states)  # alive as long as ``states`` holds them


class SharedMembers(_Adds):
    """A node's member table over records it shares with the other nodes of one process (the
    simulator's running cluster of thousands, whose N x N records would not fit in memory):
    it reads the shared ``base`` until it changes a record (``mutable``), and reads its own
    copy from then on. The interface of ``MemberTable``; ``base`` is never changed."""

    __slots__ = ("_added", "_base", "_gone", "_own", "_records", "dead", "live")
    shared = True

    def __init__(self, records: SharedRecords) -> None:
        self._records = records
        base = self._base = records.table
        self._own: dict[str, Member] = {}  # our copies of shared records, and records of our own
        self._gone: set[str] = set()  # shared records we let go
        self._added: dict[str, None] = {}  # names of our records not in base
        self.live = base.live
        self.dead = dict(base.dead)

    def get(self, name: str, default: Member | None = None) -> Member | None:
        m = self._own.get(name)
        if m is not None:
            return m
        if name in self._gone:
            return default
        return self._base.get(name, default)

    def __getitem__(self, name: str) -> Member:
        m = self.get(name)
        if m is None:
            raise KeyError(name)
        return m

    def __contains__(self, name: object) -> bool:
        return self.get(name) is not None  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self._base) - len(self._gone) + len(self._added)

    def __iter__(self) -> Iterator[str]:
        gone = self._gone
        yield from (n for n in self._base if n not in gone)
        yield from self._added

    def keys(self) -> Iterator[str]:
        return iter(self)

    def items(self) -> Iterator[tuple[str, Member]]:
        get = self.get
        return ((n, get(n)) for n in self)  # type: ignore[misc]

    def values(self) -> Iterator[Member]:
        get = self.get
        return (get(n) for n in self)  # type: ignore[misc]

    def put(self, m: Member) -> None:
        old = self.get(m.name)
        if old is not None:
            _count(self, old, -1)
        elif m.name not in self._base:
            self._added[m.name] = None
        self._own[m.name] = m
        self._gone.discard(m.name)
        _count(self, m, 1)

    def mutable(self, name: str) -> Member:
        m = self._own.get(name)
        if m is None:
            if name in self._gone:
                raise KeyError(name)
            m = self._own[name] = copy.copy(self._base[name])
        return m

    def set_status(self, m: Member, status: MemberStatus) -> None:
        if self._own.get(m.name) is not m:
            raise ValueError(f"{m.name}: change a record only through mutable()")
        _count(self, m, -1)
        m.status = status
        _count(self, m, 1)

    def states(self) -> list[MemberState]:
        """``sorted_states`` of this table: the shared states with ours in their place."""
        records = self._records
        out: list[MemberState | None] = list(records.states)
        index = records.index
        extra = []
        for name, m in self._own.items():
            i = index.get(name)
            if i is None:
                extra.append(m.state())
            else:
                out[i] = m.state()
        for name in self._gone:
            if name not in self._own:
                out[index[name]] = None
        kept = [st for st in out if st is not None] if self._gone else out
        if extra:
            kept += extra
            kept.sort(key=lambda st: st.name)  # type: ignore[union-attr]
        return kept  # type: ignore[return-value]

    def news(self, states: Iterable[MemberState]) -> list[MemberState]:
        """The states a merge must look at: those that are not a shared record's own state
        where we hold that record as shared (for those a merge is a no-op, by identity)."""
        ids, own, gone = self._records.ids, self._own, self._gone
        if not own and not gone:
            return [st for st in states if id(st) not in ids]
        return [st for st in states if id(st) not in ids or st.name in own or st.name in gone]

    def random_alive(self, rng: random.Random, k: int, exclude: set[str]) -> list[Member]:
        """As ``random_alive``, by drawing names until k fit (no sort of every name), then
        the scan if draws keep missing (few of them alive)."""
        shared, added, chosen = self._records.states, list(self._added), {}
        for _ in range(4 * k + 8):
            if len(chosen) == k:
                break
            i = rng.randrange(len(shared) + len(added))
            m = self.get(shared[i].name if i < len(shared) else added[i - len(shared)])
            if m is not None and m.status == ALIVE and m.name not in exclude:
                chosen[m.name] = m
        if len(chosen) < k:
            return _random_alive_scan(self, rng, k, exclude)
        return list(chosen.values())

    def pop(self, name: str) -> Member:
        m = self[name]
        self._own.pop(name, None)
        if name in self._base:
            self._gone.add(name)
        else:
            del self._added[name]
        _count(self, m, -1)
        return m


def _count(table: MemberTable | SharedMembers, m: Member, step: int) -> None:
    """Keep a table's live count and dead names as record ``m`` comes (1) or goes (-1)."""
    if m.status in LIVE:
        table.live += step
    elif m.status == DEAD:
        if step > 0:
            table.dead[m.name] = None
        else:
            table.dead.pop(m.name, None)


def n_live(members: MemberTable | SharedMembers) -> int:
    """How many members are alive or suspect (at least 1: the cluster size n of the rules)."""
    return max(1, members.live)


def voter_addrs(members: Mapping[str, Member] | SharedMembers) -> dict[str, str]:
    """name -> direct address of every member that has not left, sorted by name."""
    return {n: members[n].addr for n in sorted(members) if members[n].status != LEFT}


def status_counts(members: Mapping[str, Member] | SharedMembers) -> dict[str, int]:
    """How many members hold each status, by label (every label present)."""
    out = {s.label: 0 for s in MemberStatus}
    for m in members.values():
        out[m.status.label] += 1
    return out


def due_to_reap(
    members: Mapping[str, Member] | SharedMembers, keep: str, now: float, reap_after: float
) -> tuple[list[str], float]:
    """Members dead or left for ``reap_after`` (never ``keep``, the node itself), and when
    the next of the others is due."""
    due: list[str] = []
    next_reap = math.inf
    for name, m in members.items():
        if name == keep or m.status not in DOWN:
            continue
        if now - m.since >= reap_after:
            due.append(name)
        else:
            next_reap = min(next_reap, m.since + reap_after)
    return due, next_reap


def sorted_states(members: Mapping[str, Member] | SharedMembers) -> list[MemberState]:
    """Every member's state, sorted by name (a snapshot, a push-pull's payload)."""
    if type(members) is SharedMembers:
        return members.states()
    return [members[n].state() for n in sorted(members)]


def random_alive(
    members: Mapping[str, Member] | SharedMembers, rng: random.Random, k: int, *, exclude: set[str]
) -> list[Member]:
    """Up to ``k`` ALIVE members not in ``exclude``, drawn with one ``rng.sample`` call."""
    if type(members) is SharedMembers and k > 0:
        return members.random_alive(rng, k, exclude)
    return _random_alive_scan(members, rng, k, exclude)


def _random_alive_scan(
    members: Mapping[str, Member] | SharedMembers, rng: random.Random, k: int, exclude: set[str]
) -> list[Member]:
    names = sorted(n for n, m in members.items() if m.status == ALIVE and n not in exclude)
    if k <= 0 or not names:
        return []
    return [members[n] for n in rng.sample(names, min(k, len(names)))]
