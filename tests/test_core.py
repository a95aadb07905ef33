"""The mesh core (mesh/core.py): the rules that join membership to the election, tested
once, on the object both the node shell and the simulator drive."""

from __future__ import annotations

import random

from corec_node.mesh.core import HEARTBEATS_DIRECT, MEMBER_ACK_EVERY, MeshCore
from corec_node.mesh.effects import Broadcast, Effect, LeaderChanged, MemberChanged, Send
from corec_node.mesh.election import LEADER, ElectionConfig
from corec_node.mesh.membership import MembershipConfig
from corec_node.mesh.voters import Configuration, VoterConfig
from corec_node.wire import FEATURES
from corec_node.wire.messages import (
    Gossip,
    Heartbeat,
    MemberState,
    MemberStatus,
    StatePush,
    Vote,
    Voter,
    VoteRequest,
)

ALIVE, DEAD, LEFT = MemberStatus.ALIVE, MemberStatus.DEAD, MemberStatus.LEFT
TICK = 0.02


class Net:
    """Cores on a lossless in-memory network, a broadcast reaching the nodes that know its
    sender (as a SUB socket connects to known members); ``down`` nodes neither send nor
    receive, and ``cut`` pairs do not reach each other."""

    def __init__(self) -> None:
        self.now = 0.0
        self.cores: dict[str, MeshCore] = {}
        self.down: set[str] = set()
        self.cut: set[frozenset[str]] = set()  # pairs that cannot reach each other
        self.log: dict[str, list[Effect]] = {}
        self._queue: list[tuple[str, str, object]] = []

    def addr(self, name: str) -> str:
        return f"{name}:7400"

    def add(self, name: str, *, join: tuple[str, ...] = (), snapshot: list[MemberState] | None = None,
            term: int = 0, config: Configuration | None = None,
            build: tuple[str, str, tuple[str, ...], str] = ("", "", (), "")) -> MeshCore:
        core = MeshCore(name, self.addr(name), f"{name}:7401", MembershipConfig.test(),
                        ElectionConfig.test(), random.Random(name), self.now, term=term,
                        config=config, voter_config=VoterConfig(promote_after=0.5), build=build)
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
            elif isinstance(eff, Broadcast):  # to the nodes that know us: their SUB is connected
                self._queue.extend((name, dst, eff.msg) for dst, core in self.cores.items()
                                   if dst != name and core.membership.member(name) is not None)

    def run(self, seconds: float) -> None:
        end = self.now + seconds
        while self.now < end:
            while self._queue:
                src, dst, msg = self._queue.pop(0)
                if (src in self.down or dst in self.down or dst not in self.cores
                        or frozenset((src, dst)) in self.cut):
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


def test_a_node_started_with_join_is_a_member_not_a_voter_until_a_leader_adds_it() -> None:
    """Core rule 6 and voters rule 6: no bootstrap of its own, so nodes that joined each
    other while their seed was unreachable elect nobody."""
    net = Net()
    net.add("seed")
    net.down.add("seed")  # our seed is unreachable for now
    fresh = net.add("fresh", join=("seed",))
    assert fresh.config.index == 0 and fresh.election.voters() == {}
    other = net.add("other", join=("fresh",))  # another fresh node joins us
    net.run(4.0)  # several election timeouts of the test profile
    assert fresh.membership.member("other").status == ALIVE
    assert not leaders(net) or leaders(net) == ["seed"]
    assert fresh.election.voters() == {} and other.election.voters() == {}
    net.down.discard("seed")  # the seed answers a join retry: its leader promotes them
    net.run(10.0)
    assert leaders(net) == ["seed"]
    assert all(set(c.config.names()) == {"seed", "fresh", "other"} for c in net.cores.values())


def test_a_minority_side_never_adds_voters_or_elects() -> None:
    """The issue's scenario: 3|2 partition, then fresh nodes join the minority side."""
    net = Net()
    names = ["a", "b", "c", "d", "e"]
    for name in names:
        net.add(name, join=("a",) if name != "a" else ())
    net.run(15.0)
    config = net.cores["a"].config
    assert config.names() == frozenset(names), config
    leader = leaders(net)[0]
    minority = [n for n in names if n != leader][:2]
    net.cut = {frozenset((x, y)) for x in minority for y in names if y not in minority}
    for fresh in ("f", "g", "h", "i"):
        net.add(fresh, join=(minority[0],))
        net.cut |= {frozenset((fresh, y)) for y in names if y not in minority}
    net.run(15.0)
    side = minority + ["f", "g", "h", "i"]
    assert not [n for n in side if net.cores[n].election.role == LEADER]
    assert all(net.cores[n].config == config or net.cores[n].config.index == 0 for n in side)
    assert net.cores["f"].membership.member(minority[1]).status == ALIVE  # they did meet
    assert [n for n in leaders(net) if n not in side], "the majority keeps a leader"


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
    """Rule 3: DEAD -> LEFT does not call member_alive; rule 7: the leader removes it."""
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
    assert core.election.live_voters() == 2  # still down, not back
    for name in net.cores:  # the others force-leave it too (the CLI's gossip does this)
        if name not in (victim, keeper):
            net.apply(name, net.cores[name].force_leave(victim, net.now))
    net.run(3.0)
    for name, other in net.cores.items():
        if name != victim:
            assert victim not in other.election.voters() and victim not in other.config.names()


def test_start_restores_the_snapshot_and_raises_our_incarnation() -> None:
    """Rule 6: a restart uses its stored configuration, and its own snapshot record raises
    its incarnation (membership rule 15)."""
    net = Net()
    snapshot = [MemberState("a", "a:7400", "a:7401", 4, ALIVE), MemberState("b", "b:7400", "b:7401", 0, ALIVE)]
    stored = Configuration(3, 2, (("a", "a:7400"), ("b", "b:7400")))
    core = net.add("a", join=("b",), snapshot=snapshot, config=stored)
    assert core.config == stored and set(core.election.voters()) == {"a", "b"}
    assert core.election.config_id == (2, 3)
    assert core.membership.incarnation == 5


def test_an_upgraded_node_founds_its_configuration_from_its_snapshot() -> None:
    """Rule 6: no stored configuration, no join, peers remembered: every such node derives
    the same configuration, so a whole cluster upgraded at once agrees."""
    net = Net()
    snapshot = [MemberState(n, f"{n}:7400", f"{n}:7401", 0, ALIVE) for n in ("a", "b", "c")]
    cores = [net.add(n, snapshot=snapshot) for n in ("a", "b", "c")]
    (config,) = {c.config for c in cores}  # one configuration, one cluster id, on every node
    assert (config.index, config.term, config.voters) == (1, 0, tuple((n, f"{n}:7400") for n in "abc"))
    assert config.cluster
    net.run(5.0)
    assert len(leaders(net)) == 1


def test_a_new_leader_commits_the_configuration_again_in_its_term() -> None:
    """Voters rule 4 (Ongaro 2015): no change before an entry of the leader's own term commits."""
    net = Net()
    for name in ("a", "b", "c"):
        net.add(name, join=("a",) if name != "a" else ())
    net.run(10.0)
    leader = net.cores[leaders(net)[0]]
    assert leader.config.term == leader.term and leader.voters.committed
    net.down.add(leader.name)
    net.run(6.0)
    new = net.cores[leaders(net)[0]]
    assert new.name != leader.name and new.term > leader.term
    assert new.config.term == new.term and new.config.index > leader.config.index
    assert new.voters.committed


def test_a_voter_refuses_a_candidate_with_an_older_configuration() -> None:
    """Election rule 13, on the real cores: a VoteRequest carrying an older (term, index)."""
    net = Net()
    for name in ("a", "b", "c"):
        net.add(name, join=("a",) if name != "a" else ())
    net.run(10.0)
    follower = next(c for n, c in net.cores.items() if n not in leaders(net))
    net.down.add(leaders(net)[0])  # no lease in the way
    net.run(1.0)
    old = follower.config
    effects = follower.handle("x", VoteRequest(follower.term + 5, False, "x:7400", old.term, old.index - 1), net.now)
    votes = [e.msg for e in effects if isinstance(e, Send) and isinstance(e.msg, Vote)]
    assert votes and not votes[0].granted


def test_a_cut_off_leader_steps_down_before_anyone_else_is_elected() -> None:
    """Rule 9: the lease counts acknowledged heartbeats, not SWIM's verdicts."""
    net = Net()
    for name in ("a", "b", "c"):
        net.add(name, join=("a",) if name != "a" else ())
    net.run(10.0)
    old = leaders(net)[0]
    others = [n for n in net.cores if n != old]
    net.cut = {frozenset((old, o)) for o in others}
    cut_at, stepped_down, replaced = net.now, None, None
    while net.now - cut_at < 5.0 and (stepped_down is None or replaced is None):
        net.run(TICK)
        if stepped_down is None and net.cores[old].election.role != LEADER:
            stepped_down = net.now
        if replaced is None and any(net.cores[o].election.role == LEADER for o in others):
            replaced = net.now
    assert stepped_down is not None and replaced is not None
    assert stepped_down < replaced
    span = ElectionConfig.test().election_timeout_min
    assert stepped_down - cut_at <= span + 2 * TICK  # virtual seconds: the lease, not SWIM's verdict


def test_two_clusters_bootstrapped_apart_never_merge_their_elections() -> None:
    """Voters rule 8: nodes that hear each other's leaders keep their own configurations."""
    net = Net()
    for name in ("a", "b", "c"):
        net.add(name, join=("a",) if name != "a" else ())
    for name in ("x", "y", "z"):
        net.add(name, join=("x",) if name != "x" else ())
    net.run(10.0)
    first, second = net.cores["a"].config, net.cores["x"].config
    assert first.cluster != second.cluster
    net.apply("b", net.cores["b"].join([net.addr("y")], net.now))  # an operator's mistake
    net.run(10.0)
    assert {n for n in net.cores if net.cores[n].membership.member("y") is not None} >= {"a", "b", "x"}
    assert all(net.cores[n].config.names() == frozenset("abc") for n in "abc")
    assert all(net.cores[n].config.names() == frozenset("xyz") for n in "xyz")
    assert len(leaders(net)) == 2 and {net.cores[n].config.cluster for n in leaders(net)} == {
        first.cluster, second.cluster}
    assert any(net.cores[n].foreign for n in net.cores), "the foreign cluster is noticed"


def test_a_lone_founder_told_to_join_gives_its_cluster_of_one_up() -> None:
    """Voters rule 8: ``corec-node run`` alone, then ``corec-node join``: it becomes a
    member, then a voter, of the cluster it joined."""
    net = Net()
    for name in ("a", "b"):
        net.add(name, join=("a",) if name != "a" else ())
    lone = net.add("c")
    net.run(5.0)
    assert lone.config.names() == {"c"} and lone.election.role == LEADER
    net.apply("c", lone.join([net.addr("b")], net.now))
    net.run(8.0)
    assert leaders(net) != ["c"] and len(leaders(net)) == 1
    assert all(core.config.names() == frozenset("abc") for core in net.cores.values())
    assert len({core.config.cluster for core in net.cores.values()}) == 1


def test_a_feature_is_on_only_when_every_voter_announces_it() -> None:
    """Rule 12: versions, features and (since 1.5) the data socket travel with each
    member's own record: (version, protocol, features, data), data "" before 1.5."""
    net = Net()
    new = ("2.0", "1.5", ("voters", "shiny"))
    net.add("a", build=(*new, "a:7402"))
    net.add("b", join=("a",), build=(*new, "b:7402"))
    net.add("c", join=("a",), build=("1.9", "1.4", ("voters",), ""))
    net.run(10.0)
    a = net.cores["a"]
    assert a.config.names() == frozenset("abc")
    assert a.membership.member("c").build == ("1.9", "1.4", ("voters",), "", (), ())
    assert a.membership.member("b").build == (*new, "b:7402", (), ())
    assert net.cores["c"].membership.member("a").build == (*new, "a:7402", (), ())
    assert a.feature_on("voters") and not a.feature_on("shiny")
    net.down.add("c")
    net.run(1.0)
    for name in ("a", "b"):  # c is still a voter: until it is removed, "shiny" stays off
        assert not net.cores[name].feature_on("shiny")


def _time_to_dead(refused: bool | None) -> float:
    """Seconds from a member going down to a survivor's DEAD verdict; ``refused``: the
    survivor's transport hint at the moment it went down (None: no hint, a silent loss)."""
    net = Net()
    for name in ("a", "b", "c", "d"):
        net.add(name, join=("a",) if name != "a" else ())
    net.run(5.0)
    net.down.add("d")
    t0 = net.now
    if refused is not None:
        net.apply("a", net.cores["a"].hint("d", False, net.now))
        if refused:
            net.apply("a", net.cores["a"].hint("d", True, net.now))
    while net.now - t0 < 20:
        net.run(TICK)
        m = net.cores["a"].membership.member("d")
        if m is not None and m.status == DEAD:
            return net.now - t0
    raise AssertionError("d never declared dead")


def test_a_refused_reconnect_shortens_the_suspicion_never_skips_the_probes() -> None:
    """Core rule 13 / membership rule 17: a closed connection probes at once; a refused
    reconnect (the port is closed: nobody left to refute) shortens the suspicion the probes
    start to REFUSED_SUSPICION periods. The verdict still waits for the failed probes."""
    from corec_node.mesh.suspicion import suspicion_timeouts

    cfg = MembershipConfig.test()
    lifeguard_min, _ = suspicion_timeouts(cfg.suspicion_mult, cfg.suspicion_max_mult, 4, cfg.probe_interval)
    silent, closed, refused = _time_to_dead(None), _time_to_dead(False), _time_to_dead(True)
    assert refused < closed <= silent
    assert refused >= cfg.probe_timeout  # the direct probe had to fail first
    assert refused < lifeguard_min + cfg.probe_interval  # faster than any suspicion could end


def test_a_gap_costs_a_push_pull_only_when_a_missed_gossip_carried_an_updates_last_copy() -> None:
    """Rule 2 with membership rule 9: the Gossip after a gap says how many flushes before
    it sent no update for the last time (``quiet``); a gap within that count is covered
    (what was missed comes again), one beyond it, or from a 1.12 sender that does not
    tell, pushes to the sender."""
    net = Net()
    for name in ("a", "b", "c"):
        net.add(name, join=("a",) if name != "a" else ())
    net.run(3.0)
    a = net.cores["a"]

    def pushes(sender: str, quiet: int | None, missed: int) -> list[str]:
        state = net.cores[sender].membership.member(sender).state()
        effects = a.handle(sender, Gossip((state,), quiet), net.now, missed)
        return [e.to for e in effects if isinstance(e, Send) and isinstance(e.msg, StatePush)]

    assert pushes("b", quiet=3, missed=3) == [] and a.membership.gaps_covered == 1
    assert pushes("b", quiet=2, missed=3) == [net.addr("b")]
    net.run(1.0)  # past the node's bound on gap push-pulls (one a probe interval)
    assert pushes("c", quiet=None, missed=1) == [net.addr("c")]
    assert pushes("c", quiet=0, missed=0) == []  # no gap, nothing to cover


def _heartbeats(net: Net, leader: str, since: int) -> tuple[list[Heartbeat], list[Heartbeat]]:
    """The leader's heartbeats after its ``since``-th effect: (published, sent straight)."""
    effs = net.log[leader][since:]
    return ([e.msg for e in effs if isinstance(e, Broadcast) and isinstance(e.msg, Heartbeat)],
            [e.msg for e in effs if isinstance(e, Send) and isinstance(e.msg, Heartbeat)])


def test_heartbeats_go_straight_to_voters_and_one_in_ten_is_published() -> None:
    """Rule 15: with every live member announcing it, the voters hear every heartbeat and
    the rest one in ten (or one with news); the lease holds, and a member that is not a
    voter keeps its leader. A member without the feature turns it off for everyone."""
    assert HEARTBEATS_DIRECT in FEATURES  # what a node announces (wire/envelope.py)
    net = Net()
    build = ("2.0", "1.13", (HEARTBEATS_DIRECT,), "")
    for name in ("a", "b", "c", "d"):
        net.add(name, join=("a",) if name != "a" else (), build=build)
        net.cores[name].voters.config = VoterConfig(max_voters=3, promote_after=0.5)
    net.run(8.0)
    (leader,) = leaders(net)
    core = net.cores[leader]
    voters = core.config.names()
    member = next(n for n in net.cores if n not in voters)
    term = core.term
    start = len(net.log[leader])
    net.run(5.0)
    published, direct = _heartbeats(net, leader, start)
    assert published and all(hb.seq % MEMBER_ACK_EVERY == 0 for hb in published)
    assert {hb.seq for hb in direct}.isdisjoint(hb.seq for hb in published)
    assert len(direct) >= 2 * 8 * len(published) - 4  # 9 in 10 sent, to each of the 2 other voters
    assert leaders(net) == [leader] and core.term == term  # the lease held on the voters' acks
    assert net.cores[member].leader == leader
    core.placement = "0123456789abcdef"  # news: published at once, whatever its seq
    start = len(net.log[leader])
    net.run(0.2)
    published, _ = _heartbeats(net, leader, start)
    assert published and published[0].placement == "0123456789abcdef"
    net.add("old", join=("a",), build=("1.9", "1.13", (), ""))  # an older build: every heartbeat published
    net.run(3.0)
    start = len(net.log[leader])
    net.run(2.0)
    published, direct = _heartbeats(net, leader, start)
    assert len(published) >= 15 and not direct


def test_a_late_heartbeat_never_takes_a_follower_back_to_an_older_configuration() -> None:
    """Rule 5: a copy of an earlier heartbeat of the same leader and term (it came another
    way: published and direct, or a tree's repair) is no reason to undo a stored entry."""
    net = Net()
    for name in ("a", "b", "c"):
        net.add(name, join=("a",) if name != "a" else ())
    net.run(6.0)
    leader = leaders(net)[0]
    follower = next(c for n, c in net.cores.items() if n != leader)
    stored = follower.config
    assert stored.index >= 2 and stored.term == follower.term
    older = [Voter(n, a) for n, a in stored.voters][:-1]
    late = Heartbeat(follower.term, leader, "", 1, stored.term, stored.index - 1, tuple(older),
                     stored.index - 1, stored.cluster)
    effects = follower.handle(leader, late, net.now)
    assert follower.config == stored
    assert not [e for e in effects if type(e).__name__ == "PersistConfig"]
