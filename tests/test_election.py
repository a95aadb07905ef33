"""Unit tests of the pure election state machine: no sockets, no sleeps, virtual time."""

from __future__ import annotations

import random
from collections import defaultdict, deque

import pytest

from corec_node.mesh.effects import Broadcast, LeaderChanged, PersistVote, Send
from corec_node.mesh.election import CANDIDATE, FOLLOWER, LEADER, Election, ElectionConfig
from corec_node.wire.messages import Heartbeat, Vote, VoteRequest

CFG = ElectionConfig.test()  # heartbeat 0.1, timeout [0.5, 1.0)


def addr(name: str) -> str:
    return f"{name}:7400"


class Net:
    """Elections wired by an instant in-memory network, with partitions and a step clock."""

    def __init__(self, names: list[str], seed: int = 0, cfg: ElectionConfig = CFG) -> None:
        self.now = 0.0
        self.nodes = {
            n: Election(n, addr(n), cfg, random.Random(f"{seed}/{n}"), 0.0) for n in names
        }
        self.by_addr = {addr(n): n for n in names}
        self.queue: deque[tuple[str, str, object]] = deque()
        self.groups: dict[str, int] = {}  # name -> partition group; absent: group 0
        self.down: set[str] = set()
        self.leaders_by_term: dict[int, set[str]] = defaultdict(set)
        self.persisted: dict[str, tuple[int, str | None]] = {}
        voters = {n: addr(n) for n in names}
        for n, e in self.nodes.items():
            self.apply(n, e.set_voters(voters, 0.0))

    def reachable(self, a: str, b: str) -> bool:
        return (
            a not in self.down
            and b not in self.down
            and self.groups.get(a, 0) == self.groups.get(b, 0)
        )

    def apply(self, name: str, effects: list) -> None:
        for eff in effects:
            if isinstance(eff, Send):
                self.queue.append((name, self.by_addr[eff.to], eff.msg))
            elif isinstance(eff, Broadcast):
                self.queue.extend((name, other, eff.msg) for other in self.nodes if other != name)
            elif isinstance(eff, PersistVote):
                self.persisted[name] = (eff.term, eff.voted_for)
            elif isinstance(eff, LeaderChanged) and eff.leader == name:
                self.leaders_by_term[eff.term].add(name)

    def deliver(self) -> None:
        while self.queue:
            sender, to, msg = self.queue.popleft()
            if self.reachable(sender, to):
                self.apply(to, self.nodes[to].handle(sender, msg, self.now))

    def run(self, seconds: float, step: float = 0.01) -> None:
        end = self.now + seconds
        while self.now < end - 1e-9:
            self.now += step
            for n, e in self.nodes.items():
                if n not in self.down:
                    self.apply(n, e.tick(self.now))
            self.deliver()
            for term, leaders in self.leaders_by_term.items():
                assert len(leaders) <= 1, f"two leaders in term {term}: {leaders}"

    def leaders(self, among: set[str] | None = None) -> list[str]:
        names = among if among is not None else set(self.nodes) - self.down
        return sorted(n for n in names if self.nodes[n].role == LEADER)

    def views(self, among: set[str]) -> set[tuple[str | None, int]]:
        return {(self.nodes[n].leader, self.nodes[n].term) for n in among}


def test_config_profiles_are_ordered() -> None:
    for cfg in (ElectionConfig.lan(), ElectionConfig.edge(), ElectionConfig.test()):
        assert 0 < cfg.heartbeat_interval < cfg.election_timeout_min < cfg.election_timeout_max
    with pytest.raises(ValueError):
        ElectionConfig(heartbeat_interval=1.0, election_timeout_min=0.5, election_timeout_max=2.0)


def test_single_node_elects_itself_after_its_first_timeout() -> None:
    e = Election("a", addr("a"), CFG, random.Random(1), 0.0)
    assert e.set_voters({"a": addr("a")}, 0.0) == []  # rule 4: never before the first timeout
    assert e.role == FOLLOWER and e.leader is None
    effects = e.tick(CFG.election_timeout_max)
    assert e.role == LEADER and e.leader == "a" and e.term == 1
    kinds = [type(x) for x in effects]
    assert PersistVote(1, "a") in effects and Broadcast(Heartbeat(1, "a")) in effects
    assert LeaderChanged("a", 1) in effects
    assert kinds.index(PersistVote) < kinds.index(Broadcast)
    assert not any(isinstance(x, Send) for x in effects)  # alone: no messages needed


def test_sole_voter_after_start_elects_itself_at_once() -> None:
    net = Net(["a", "b", "c"])
    net.run(3.0)
    (leader,) = net.leaders()
    follower = next(n for n in net.nodes if n != leader)
    e = net.nodes[follower]
    effects = e.set_voters({follower: addr(follower)}, net.now)  # the others left
    assert e.role == LEADER and LeaderChanged(follower, e.term) in effects


def test_three_nodes_elect_exactly_one() -> None:
    for seed in range(20):
        net = Net(["a", "b", "c"], seed=seed)
        net.run(3.0)
        leaders = net.leaders()
        assert len(leaders) == 1, (seed, leaders)
        assert net.views(set(net.nodes)) == {(leaders[0], net.nodes[leaders[0]].term)}


def test_candidate_persists_its_own_vote_before_asking() -> None:
    e = Election("a", addr("a"), CFG, random.Random(2), 0.0, term=4, voted_for="b")
    e.set_voters({n: addr(n) for n in "abc"}, 0.0)
    pre = e.tick(CFG.election_timeout_max)
    assert e.term == 4 and e.prevoting  # pre-vote first: the term is not raised yet
    assert {x.to for x in pre if isinstance(x, Send)} == {addr("b"), addr("c")}
    assert all(x.msg == VoteRequest(5, True, addr("a")) for x in pre if isinstance(x, Send))
    assert not any(isinstance(x, PersistVote) for x in pre)
    effects = e.handle("b", Vote(5, True, True), CFG.election_timeout_max + 0.01)
    assert e.term == 5 and e.role == CANDIDATE and not e.prevoting
    assert effects[0] == PersistVote(5, "a")
    sends = [i for i, x in enumerate(effects) if isinstance(x, Send)]
    assert sends and min(sends) > 0
    assert all(effects[i].msg == VoteRequest(5, False, addr("a")) for i in sends)


def test_vote_is_persisted_before_it_is_sent() -> None:
    e = Election("a", addr("a"), CFG, random.Random(3), 0.0, term=2)
    e.set_voters({n: addr(n) for n in "abc"}, 0.0)
    effects = e.handle("b", VoteRequest(3, False, addr("b")), 0.1)
    assert effects[0] == PersistVote(3, "b")
    assert effects[-1] == Send(addr("b"), Vote(3, True, False))
    assert effects.index(PersistVote(3, "b")) < effects.index(Send(addr("b"), Vote(3, True, False)))


def test_one_vote_per_term_even_across_a_restart() -> None:
    e = Election("a", addr("a"), CFG, random.Random(4), 0.0, term=2)
    voters = {n: addr(n) for n in "abc"}
    e.set_voters(voters, 0.0)
    assert e.handle("b", VoteRequest(3, False, addr("b")), 0.1)[-1].msg.granted
    assert not e.handle("c", VoteRequest(3, False, addr("c")), 0.2)[-1].msg.granted
    assert e.handle("b", VoteRequest(3, False, addr("b")), 0.3)[
        -1
    ].msg.granted  # a retry: same answer
    # restarted with what was persisted: still no second vote in term 3
    r = Election("a", addr("a"), CFG, random.Random(5), 10.0, term=e.term, voted_for=e.voted_for)
    r.set_voters(voters, 10.0)
    assert not r.handle("c", VoteRequest(3, False, addr("c")), 10.1)[-1].msg.granted
    assert r.handle("c", VoteRequest(4, False, addr("c")), 10.2)[-1].msg.granted


def test_a_restored_node_abstains_until_a_leader_leads_it() -> None:
    """Rule 15: a vote rolled back with its store may hide a vote in a term this node no
    longer remembers: no vote until a leader's heartbeat, which becomes its vote then."""
    e = Election("a", addr("a"), CFG, random.Random(5), 0.0, term=2, abstain=True)
    e.set_voters({n: addr(n) for n in "abc"}, 0.0)
    assert not e.handle("b", VoteRequest(3, True, addr("b")), 0.1)[-1].msg.granted  # no pre-vote
    assert not e.handle("b", VoteRequest(3, False, addr("b")), 0.2)[-1].msg.granted  # no vote
    effects = e.handle("c", Heartbeat(4, "c"), 0.3)
    assert e.leader == "c" and PersistVote(4, "c") in effects  # led: its vote in term 4 is c's
    assert not e.handle("b", VoteRequest(4, False, addr("b")), 5.0)[-1].msg.granted
    assert e.handle("b", VoteRequest(5, False, addr("b")), 9.0)[-1].msg.granted  # a new term: as anyone


def test_unknown_candidate_gets_no_vote() -> None:
    e = Election("a", addr("a"), CFG, random.Random(6), 0.0)
    e.set_voters({n: addr(n) for n in "ab"}, 0.0)
    assert not e.handle("x", VoteRequest(1, True, addr("x")), 0.1)[-1].msg.granted
    assert not e.handle("x", VoteRequest(1, False, addr("x")), 0.1)[-1].msg.granted


def test_prevote_and_vote_refused_while_leader_is_live() -> None:
    e = Election("a", addr("a"), CFG, random.Random(7), 0.0, term=3)
    e.set_voters({n: addr(n) for n in "abc"}, 0.0)
    e.handle("b", Heartbeat(3, "b"), 1.0)
    assert e.leader == "b" and e.term == 3
    t = 1.0 + CFG.election_timeout_min / 2
    pre = e.handle("c", VoteRequest(4, True, addr("c")), t)
    assert pre == [Send(addr("c"), Vote(3, False, True))]
    real = e.handle("c", VoteRequest(9, False, addr("c")), t)
    assert real == [Send(addr("c"), Vote(3, False, False))]
    assert (
        e.term == 3 and e.voted_for is None and e.leader == "b"
    )  # the challenger's term not adopted
    # after the lease (no heartbeat for the minimum timeout) the same request is granted
    later = 1.0 + CFG.election_timeout_min + 0.01
    assert e.handle("c", VoteRequest(4, True, addr("c")), later) == [
        Send(addr("c"), Vote(4, True, True))
    ]
    assert e.term == 3  # a pre-vote changes nothing


def test_leader_refuses_challengers() -> None:
    net = Net(["a", "b", "c"])
    net.run(3.0)
    (leader,) = net.leaders()
    other = next(n for n in net.nodes if n != leader)
    e = net.nodes[leader]
    term = e.term
    assert not e.handle(other, VoteRequest(term + 1, True, addr(other)), net.now)[-1].msg.granted
    assert not e.handle(other, VoteRequest(term + 5, False, addr(other)), net.now)[-1].msg.granted
    assert e.role == LEADER and e.term == term


def test_stale_term_heartbeat_is_ignored_and_answered() -> None:
    e = Election("a", addr("a"), CFG, random.Random(8), 0.0, term=5)
    e.set_voters({n: addr(n) for n in "abc"}, 0.0)
    # not obeyed; answered with our term so that the stale leader steps down
    assert e.handle("b", Heartbeat(4, "b"), 0.1) == [Send(addr("b"), Vote(5, False, False))]
    assert e.leader is None and e.term == 5
    assert e.handle("c", Heartbeat(6, "c"), 0.2) == [PersistVote(6, None), LeaderChanged("c", 6)]
    assert e.handle("b", Heartbeat(5, "b"), 0.3) == [Send(addr("b"), Vote(6, False, False))]
    assert e.leader == "c"


def test_stale_leader_steps_down_when_told_of_a_newer_term() -> None:
    """Nodes that raised their term in a failed election while the leader was cut off
    cannot go back, and the leader's followers refuse their pre-votes (lease): the answer
    to the stale heartbeat is what lets the cluster converge at a newer term."""
    names = ["a", "b", "c", "d", "e"]
    net = Net(names, seed=21)
    net.run(3.0)
    (leader,) = net.leaders()
    term = net.nodes[leader].term
    stuck = [n for n in names if n != leader][:2]
    for n in stuck:  # as if they had won a pre-vote round and then lost the real one
        e = net.nodes[n]
        e._adopt(term + 1, net.now)
        assert e.term == term + 1 and e.leader is None
    net.run(6.0)
    (new,) = net.leaders()
    assert net.nodes[new].term > term + 1
    assert net.views(set(names)) == {(new, net.nodes[new].term)}


def test_heartbeat_from_non_voter_or_relay_is_ignored() -> None:
    e = Election("a", addr("a"), CFG, random.Random(9), 0.0)
    e.set_voters({n: addr(n) for n in "abc"}, 0.0)
    assert e.handle("x", Heartbeat(7, "x"), 0.1) == []  # not a voter
    assert e.handle("b", Heartbeat(7, "c"), 0.1) == []  # only the leader speaks for itself
    assert e.term == 0 and e.leader is None


def test_leader_in_minority_steps_down() -> None:
    names = ["a", "b", "c", "d", "e"]
    net = Net(names)
    net.run(3.0)
    (leader,) = net.leaders()
    e = net.nodes[leader]
    others = [n for n in names if n != leader]
    assert e.member_dead(others[0], net.now) == []
    assert e.member_dead(others[1], net.now) == []  # 3 of 5 still live: keeps leading
    assert e.role == LEADER
    effects = e.member_dead(others[2], net.now)
    assert e.role == FOLLOWER and e.leader is None
    assert effects == [LeaderChanged(None, e.term)]
    # in a minority it does not even ask for pre-votes, so its term cannot run away
    term = e.term
    assert not any(isinstance(x, Send) for x in e.tick(net.now + 5.0))
    assert e.term == term


def test_isolated_leader_steps_down_when_it_hears_nobody() -> None:
    net = Net(["a", "b", "c"], seed=19)
    net.run(3.0)
    (leader,) = net.leaders()
    e = net.nodes[leader]
    e.heard_from("x", net.now)  # the shell reports contacts: the isolation check is on
    e.heard_from(next(n for n in net.nodes if n != leader), net.now)
    t = net.now
    assert e.tick(t + CFG.election_timeout_max - 0.01)[-1] == Broadcast(Heartbeat(e.term, leader))
    assert e.role == LEADER
    effects = e.tick(t + CFG.election_timeout_max)
    assert e.role == FOLLOWER and LeaderChanged(None, e.term) in effects


def test_isolation_check_is_off_without_contact_reports() -> None:
    net = Net(["a", "b", "c"], seed=19)
    net.run(3.0)
    (leader,) = net.leaders()
    e = net.nodes[leader]
    e.tick(net.now + 100.0)  # nobody calls heard_from: only membership verdicts count
    assert e.role == LEADER


def test_minority_partition_has_no_leader_majority_keeps_one() -> None:
    names = ["a", "b", "c", "d", "e"]
    net = Net(names, seed=3)
    net.run(3.0)
    (leader,) = net.leaders()
    minority = {leader, next(n for n in names if n != leader)}
    majority = set(names) - minority
    for n in minority:
        net.groups[n] = 1
    for n in minority:  # membership's verdicts on each side
        for m in majority:
            net.apply(n, net.nodes[n].member_dead(m, net.now))
    for m in majority:
        for n in minority:
            net.apply(m, net.nodes[m].member_dead(n, net.now))
    net.run(5.0)
    assert net.leaders(minority) == []
    assert len(net.leaders(majority)) == 1
    new = net.leaders(majority)[0]
    assert net.nodes[new].term > net.nodes[leader].term
    # heal: everyone follows the majority's leader
    net.groups.clear()
    for n in names:
        for m in names:
            if m != n:
                net.nodes[n].member_alive(m, net.now)
    net.run(2.0)
    assert net.views(set(names)) == {(new, net.nodes[new].term)}


def test_isolated_follower_never_raises_the_term() -> None:
    """Pre-vote: a node cut off for a long time comes back without deposing the leader."""
    names = ["a", "b", "c"]
    net = Net(names, seed=5)
    net.run(3.0)
    (leader,) = net.leaders()
    term = net.nodes[leader].term
    flapper = next(n for n in names if n != leader)
    for _ in range(5):
        net.groups[flapper] = 1
        net.run(3.0)  # many timeouts, many failed pre-votes
        assert net.nodes[flapper].term == term
        net.groups.clear()
        net.run(0.5)
        assert net.leaders() == [leader] and net.nodes[leader].term == term
        assert net.nodes[flapper].leader == leader


def test_leader_crash_elects_a_new_leader_with_a_higher_term() -> None:
    net = Net(["a", "b", "c", "d", "e"], seed=11)
    net.run(3.0)
    (old,) = net.leaders()
    term = net.nodes[old].term
    net.down.add(old)
    net.run(CFG.election_timeout_max * 3)
    (new,) = net.leaders()
    assert new != old and net.nodes[new].term > term


def test_member_dead_fast_path_on_the_leader() -> None:
    e = Election("a", addr("a"), CFG, random.Random(12), 0.0)
    e.set_voters({n: addr(n) for n in "abc"}, 0.0)
    e.handle("b", Heartbeat(1, "b"), 5.0)
    before = e.next_deadline
    assert e.member_dead("b", 5.01) == [LeaderChanged(None, 1)]
    assert (
        5.01
        <= e.next_deadline
        <= min(before, 5.01 + CFG.election_timeout_max - CFG.election_timeout_min)
    )
    # no lease any more: this node grants a pre-vote to a challenger right away
    assert e.handle("c", VoteRequest(2, True, addr("c")), 5.02)[-1].msg.granted


def test_grant_from_a_member_that_left_does_not_count() -> None:
    e = Election("a", addr("a"), CFG, random.Random(18), 0.0, term=1)
    e.set_voters({n: addr(n) for n in "abcde"}, 0.0)
    e.tick(CFG.election_timeout_max)
    for n in "bc":
        e.handle(n, Vote(2, True, True), CFG.election_timeout_max)
    assert e.term == 2 and e.role == CANDIDATE
    e.handle("b", Vote(2, True, False), CFG.election_timeout_max)
    e.set_voters({n: addr(n) for n in "acdef"}, CFG.election_timeout_max)  # b left, f joined
    e.handle("c", Vote(2, True, False), CFG.election_timeout_max)
    assert e.role == CANDIDATE  # a and c: 2 of 5, b's vote no longer counts
    e.handle("d", Vote(2, True, False), CFG.election_timeout_max)
    assert e.role == LEADER


def test_split_vote_resolves() -> None:
    names = ["a", "b", "c", "d"]
    net = Net(names, seed=13)
    t = CFG.election_timeout_max + 0.01
    net.now = t
    # a and b both pass their pre-votes and start term 1 at the same moment
    for cand in ("a", "b"):
        e = net.nodes[cand]
        e.tick(t)
        for other in names:
            if other != cand:
                e.handle(other, Vote(1, True, True), t)
        assert e.role == CANDIDATE and e.term == 1 and e.voted_for == cand
    # c votes for a, d for b: 2 of 4 each, no majority (3)
    assert net.nodes["c"].handle("a", VoteRequest(1, False, addr("a")), t)[-1].msg.granted
    assert net.nodes["d"].handle("b", VoteRequest(1, False, addr("b")), t)[-1].msg.granted
    net.nodes["a"].handle("c", Vote(1, True, False), t)
    net.nodes["b"].handle("d", Vote(1, True, False), t)
    assert net.leaders() == []
    net.run(5.0)
    (leader,) = net.leaders()
    term = net.nodes[leader].term
    assert term >= 2
    assert net.views(set(names)) == {(leader, term)}


def test_two_leaders_of_one_term_resolve_to_one() -> None:
    """Two clusters that merged (both had a leader in term 1) end with one leader."""
    names = ["a", "b"]
    net = Net(names, seed=14)
    for n in names:
        e = net.nodes[n]
        e.set_voters({n: addr(n)}, 0.0)
        net.apply(n, e.tick(CFG.election_timeout_max))
        assert e.role == LEADER and e.term == 1
    net.leaders_by_term.clear()  # the invariant holds only from the merge on
    for n, e in net.nodes.items():
        net.apply(n, e.set_voters({m: addr(m) for m in names}, CFG.election_timeout_max))
    net.now = CFG.election_timeout_max
    net.run(5.0)
    leaders = net.leaders()
    assert len(leaders) == 1
    assert net.views(set(names)) == {(leaders[0], net.nodes[leaders[0]].term)}


def test_leader_that_is_no_longer_a_voter_steps_down() -> None:
    net = Net(["a", "b", "c"], seed=15)
    net.run(3.0)
    (leader,) = net.leaders()
    e = net.nodes[leader]
    effects = e.set_voters({n: addr(n) for n in net.nodes if n != leader}, net.now)
    assert e.role == FOLLOWER and LeaderChanged(None, e.term) in effects


def test_no_election_without_voters() -> None:
    e = Election("a", addr("a"), CFG, random.Random(16), 0.0)
    assert e.tick(100.0) == [] and e.role == FOLLOWER


def test_handle_rejects_foreign_messages() -> None:
    e = Election("a", addr("a"), CFG, random.Random(17), 0.0)
    with pytest.raises(TypeError):
        e.handle("b", object(), 0.0)  # type: ignore[arg-type]


@pytest.mark.parametrize("seed", range(40))
def test_random_faults_keep_one_leader_per_term(seed: int) -> None:
    """Random partitions and crashes over 5 nodes: the Net asserts safety at every step."""
    rng = random.Random(seed)
    names = ["a", "b", "c", "d", "e"]
    net = Net(names, seed=seed)
    for _ in range(8):
        net.groups = {n: rng.randrange(2) for n in names} if rng.random() < 0.5 else {}
        net.down = set(rng.sample(names, rng.randrange(3)))
        net.run(rng.uniform(0.2, 2.0), step=rng.choice([0.005, 0.01, 0.03]))
    net.groups.clear()
    net.down.clear()
    net.run(6.0)
    leaders = net.leaders()
    assert len(leaders) == 1
    assert net.views(set(names)) == {(leaders[0], net.nodes[leaders[0]].term)}
