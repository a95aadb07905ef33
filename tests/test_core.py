"""The mesh core (mesh/core.py): the rules that join membership to the election, tested
once, on the object both the node shell and the simulator drive."""

from __future__ import annotations

import random

from corec_node.mesh.core import MeshCore
from corec_node.mesh.effects import Broadcast, Effect, LeaderChanged, MemberChanged, Send
from corec_node.mesh.election import LEADER, ElectionConfig
from corec_node.mesh.membership import MembershipConfig
from corec_node.wire.messages import MemberState, MemberStatus

ALIVE, DEAD, LEFT = MemberStatus.ALIVE, MemberStatus.DEAD, MemberStatus.LEFT
TICK = 0.02


class Net:
    """Cores on a lossless in-memory network; ``down`` nodes neither send nor receive."""

    def __init__(self) -> None:
        self.now = 0.0
        self.cores: dict[str, MeshCore] = {}
        self.down: set[str] = set()
        self.log: dict[str, list[Effect]] = {}
        self._queue: list[tuple[str, str, object]] = []

    def addr(self, name: str) -> str:
        return f"{name}:7400"

    def add(self, name: str, *, join: tuple[str, ...] = (), snapshot: list[MemberState] | None = None,
            term: int = 0) -> MeshCore:
        core = MeshCore(name, self.addr(name), f"{name}:7401", MembershipConfig.test(),
                        ElectionConfig.test(), random.Random(name), self.now, term=term)
        self.cores[name] = core
        self.log[name] = []
        self.apply(name, core.start(snapshot or [], [self.addr(j) for j in join], self.now))
        return core

    def apply(self, name: str, effects: list[Effect]) -> None:
        self.log[name] += effects
        for eff in effects:
            if isinstance(eff, Send):
                dst = eff.to.split(":")[0]
                self._queue.append((name, dst, eff.msg))
            elif isinstance(eff, Broadcast):
                self._queue.extend((name, dst, eff.msg) for dst in self.cores if dst != name)

    def run(self, seconds: float) -> None:
        end = self.now + seconds
        while self.now < end:
            while self._queue:
                src, dst, msg = self._queue.pop(0)
                if src in self.down or dst in self.down or dst not in self.cores:
                    continue
                self.apply(dst, self.cores[dst].handle(src, msg, self.now))
            self.now += TICK
            for name, core in list(self.cores.items()):
                if name not in self.down:
                    self.apply(name, core.tick(self.now))


def leaders(net: Net) -> list[str]:
    return [n for n, c in net.cores.items() if n not in net.down and c.election.role == LEADER]


def test_a_cluster_forms_and_elects_one_leader() -> None:
    net = Net()
    net.add("a")
    net.add("b", join=("a",))
    net.add("c", join=("a",))
    net.run(5.0)
    assert len(leaders(net)) == 1
    leader = leaders(net)[0]
    assert {c.leader for c in net.cores.values()} == {leader}
    assert all(set(c.election.voters()) == {"a", "b", "c"} for c in net.cores.values())


def test_voter_gate_opens_only_when_a_join_address_answers() -> None:
    """Rule 5: a node that joined *us* is no reason to vote before our seeds answered."""
    net = Net()
    net.add("seed")
    net.down.add("seed")  # our seed is unreachable for now
    fresh = net.add("fresh", join=("seed",))
    assert fresh.gated and fresh.election.voters() == {}
    other = net.add("other", join=("fresh",))  # another fresh node joins us
    net.run(3.0)  # several election timeouts of the test profile
    assert fresh.membership.member("other").status == ALIVE
    assert fresh.gated, "another member alive must not open the gate"
    assert fresh.election.voters() == {}
    assert fresh.election.role != LEADER and other.election.role != LEADER
    net.down.discard("seed")  # the seed answers a join retry
    net.run(5.0)
    assert not fresh.gated
    assert set(fresh.election.voters()) == {"seed", "fresh", "other"}
    assert len(leaders(net)) == 1


def test_a_join_asked_later_counts_for_the_gate() -> None:
    net = Net()
    net.add("a")
    fresh = net.add("fresh", join=("nowhere",))  # a seed that never answers
    net.run(1.0)
    assert fresh.gated
    net.apply("fresh", fresh.join([net.addr("a")], net.now))  # corec-node join a
    net.run(1.0)
    assert not fresh.gated and set(fresh.election.voters()) == {"a", "fresh"}


def test_dead_member_verdict_reaches_the_election_in_order() -> None:
    """Rules 1 and 3: the leader's DEAD verdict is followed at once by the follower losing
    its leader (LeaderChanged to None), in the same list."""
    net = Net()
    for name in ("a", "b", "c"):
        net.add(name, join=("a",) if name != "a" else ())
    net.run(5.0)
    leader = leaders(net)[0]
    follower = next(n for n in net.cores if n != leader)
    net.down.add(leader)
    mark = len(net.log[follower])
    net.run(10.0)
    seen = net.log[follower][mark:]
    dead_at = next(i for i, e in enumerate(seen) if isinstance(e, MemberChanged)
                   and e.name == leader and e.new == DEAD)
    lost = [i for i, e in enumerate(seen) if isinstance(e, LeaderChanged) and e.leader is None]
    assert lost and lost[0] <= dead_at + 1 or lost[0] < dead_at  # lost at the verdict, or earlier (lease)
    assert net.cores[follower].election.live_voters() == 2


def test_force_leave_of_a_dead_member_is_not_a_return() -> None:
    """Rule 3: DEAD -> LEFT does not call member_alive; rule 4: the voter set drops it."""
    net = Net()
    for name in ("a", "b", "c"):
        net.add(name, join=("a",) if name != "a" else ())
    net.run(5.0)
    victim = next(n for n in net.cores if n not in leaders(net))
    keeper = next(n for n in net.cores if n != victim)
    net.down.add(victim)
    net.run(10.0)
    core = net.cores[keeper]
    assert core.membership.member(victim).status == DEAD
    assert core.election.live_voters() == 2 and len(core.election.voters()) == 3
    effects = core.force_leave(victim, net.now)
    net.apply(keeper, effects)
    assert any(isinstance(e, MemberChanged) and e.name == victim and e.new == LEFT for e in effects)
    assert victim not in core.election.voters()
    assert core.election.live_voters() == 2


def test_start_restores_the_snapshot_and_raises_our_incarnation() -> None:
    """Rule 6: a restart from a snapshot knows its voters at once and is not gated, and
    its own record raises its incarnation (membership rule 15)."""
    net = Net()
    snapshot = [MemberState("a", "a:7400", "a:7401", 4, ALIVE), MemberState("b", "b:7400", "b:7401", 0, ALIVE)]
    core = net.add("a", join=("b",), snapshot=snapshot)
    assert not core.gated
    assert set(core.election.voters()) == {"a", "b"}
    assert core.membership.incarnation == 5
