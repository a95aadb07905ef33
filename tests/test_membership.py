"""Membership core (SWIM + Lifeguard) driven through a virtual network: no sockets, no sleeps.

The ``Net`` below queues messages with a small random latency and delivers them on a virtual
clock; every node is ticked every ``dt`` virtual seconds and after each delivery, as the
shell does. Broadcasts reach the nodes that know the sender (and do not hold it as left),
as PUB/SUB does when the shell subscribes to every known member. ``cut`` pairs and the
``drop`` predicate lose messages; a crashed node neither sends, receives nor ticks. Times
asserted below are virtual (deterministic for a seed), never wall-clock.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import pytest

from corec_node.mesh.effects import (
    Broadcast,
    Effect,
    MemberChanged,
    MemberReaped,
    NameConflict,
    Send,
)
from corec_node.mesh.membership import Membership, MembershipConfig
from corec_node.wire.messages import (
    Ack,
    Gossip,
    MemberState,
    MemberStatus,
    Message,
    Nack,
    Ping,
    PingReq,
    StatePush,
    StateReply,
)

ALIVE, SUSPECT, DEAD, LEFT = (
    MemberStatus.ALIVE,
    MemberStatus.SUSPECT,
    MemberStatus.DEAD,
    MemberStatus.LEFT,
)


# -- the virtual network ----------------------------------------------------------------

Drop = Callable[[str, str, Message, str], bool]  # (src, dst, msg, kind "direct"|"pub") -> lose it


@dataclass
class Delivery:
    t: float
    src: str
    dst: str
    msg: Message
    kind: str


@dataclass
class Net:
    seed: int = 1
    config: MembershipConfig = field(default_factory=MembershipConfig.test)
    latency: tuple[float, float] = (0.0005, 0.003)
    dt: float = 0.01

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.now = 0.0
        self.nodes: dict[str, Membership] = {}
        self.by_addr: dict[str, str] = {}
        self.crashed: set[str] = set()
        self.cut: set[tuple[str, str]] = set()
        self.drop: Drop | None = None
        self.events: dict[str, list[tuple[float, Effect]]] = {}
        self.delivered: list[Delivery] = []
        self.sent: list[Delivery] = []
        self._inflight: list[tuple[float, int, Delivery]] = []
        self._n = 0
        self.paused: dict[str, float] = {}  # name -> virtual time its process resumes
        self._backlog: dict[str, list[Delivery]] = {}

    # -- building ---------------------------------------------------------------------

    @staticmethod
    def addr(name: str) -> str:
        return f"{name}:7400"

    def add(self, name: str, config: MembershipConfig | None = None) -> Membership:
        node = Membership(
            name,
            self.addr(name),
            f"{name}:7401",
            config or self.config,
            random.Random(self.rng.getrandbits(64)),
            self.now,
        )
        self.nodes[name] = node
        self.by_addr[node.addr] = name
        self.crashed.discard(name)
        self.events.setdefault(name, [])
        return node

    def cluster(self, names: list[str], settle: float = 1.0) -> None:
        """Start ``names``, each joining the first, and run until all see all alive."""
        for name in names:
            self.add(name)
        for name in names[1:]:
            self.apply(name, self.nodes[name].join([self.addr(names[0])], self.now))
        assert self.run(5.0, until=lambda: self.all_see(names, {n: "alive" for n in names})), (
            self.views()
        )
        self.run(settle)

    # -- running ----------------------------------------------------------------------

    def apply(self, src: str, effects: list[Effect]) -> None:
        for e in effects:
            if isinstance(e, Send):
                self._emit(src, self.by_addr.get(e.to, e.to), e.msg, "direct")
            elif isinstance(e, Broadcast):
                for dst, node in self.nodes.items():
                    m = node.member(src)
                    if dst != src and m is not None and m.status != MemberStatus.LEFT:
                        self._emit(src, dst, e.msg, "pub")
            else:
                self.events[src].append((self.now, e))

    def inject(self, src: str, dst: str, msg: Message, kind: str = "pub") -> None:
        """Deliver ``msg`` to ``dst`` as if ``src`` had sent it (no loss rules)."""
        self._queue(Delivery(self.now, src, dst, msg, kind))

    def _emit(self, src: str, dst: str, msg: Message, kind: str) -> None:
        d = Delivery(self.now, src, dst, msg, kind)
        self.sent.append(d)
        if dst not in self.nodes:
            return  # nobody at that address
        if src in self.crashed or dst in self.crashed or (src, dst) in self.cut:
            return
        if self.drop is not None and self.drop(src, dst, msg, kind):
            return
        self._queue(d)

    def _queue(self, d: Delivery) -> None:
        self._n += 1
        heapq.heappush(self._inflight, (self.now + self.rng.uniform(*self.latency), self._n, d))

    def step(self) -> None:
        end = self.now + self.dt
        while self._inflight and self._inflight[0][0] <= end:
            t, _, d = heapq.heappop(self._inflight)
            self.now = max(self.now, t)
            if d.dst in self.crashed or d.dst not in self.nodes:
                continue
            if self.paused.get(d.dst, -1.0) > self.now:
                self._backlog.setdefault(d.dst, []).append(d)  # sits in the socket
                continue
            self._deliver(d)
        self.now = end
        for name in sorted(self.nodes):
            if name in self.crashed or self.paused.get(name, -1.0) > self.now:
                continue
            if name in self.paused:
                # the process wakes: worst case for it, its timer fires before it reads its backlog
                del self.paused[name]
                self.apply(name, self.nodes[name].tick(self.now))
                for d in self._backlog.pop(name, []):
                    self._deliver(d)
            self.apply(name, self.nodes[name].tick(self.now))

    def _deliver(self, d: Delivery) -> None:
        self.delivered.append(d)
        node = self.nodes[d.dst]
        self.apply(d.dst, node.handle(d.src, d.msg, self.now))
        self.apply(d.dst, node.tick(self.now))

    def pause(self, name: str, seconds: float) -> None:
        """Stop ``name``'s process (SIGSTOP, or a loop stall) for ``seconds``."""
        self.paused[name] = self.now + seconds

    def run(self, seconds: float, until: Callable[[], bool] | None = None) -> bool:
        """Run for up to ``seconds`` of virtual time; True as soon as ``until()`` holds."""
        end = self.now + seconds - 1e-9
        while self.now < end:
            self.step()
            if until is not None and until():
                return True
        return until is None

    def crash(self, name: str) -> None:
        self.crashed.add(name)

    def partition(self, a: list[str], b: list[str]) -> None:
        self.cut |= {(x, y) for x in a for y in b} | {(y, x) for x in a for y in b}

    def heal(self) -> None:
        self.cut.clear()

    # -- looking ----------------------------------------------------------------------

    def status(self, viewer: str, name: str) -> str | None:
        m = self.nodes[viewer].member(name)
        return m.status.label if m is not None else None

    def all_see(self, viewers: list[str], expected: dict[str, str | None]) -> bool:
        return all(self.status(v, n) == s for v in viewers for n, s in expected.items())

    def changes(
        self, viewer: str, name: str | None = None, new: str | None = None, after: float = -1.0
    ) -> list[tuple[float, MemberChanged]]:
        return [
            (t, e)
            for t, e in self.events[viewer]
            if isinstance(e, MemberChanged)
            and t >= after
            and (name is None or e.name == name)
            and (new is None or e.new.label == new)
        ]

    def views(self) -> dict[str, dict[str, str]]:
        return {
            v: {m.name: f"{m.status.label}/{m.inc}" for m in node.members()}
            for v, node in self.nodes.items()
        }


# -- scenarios ----------------------------------------------------------------------------


def names(n: int) -> list[str]:
    return [f"n{i}" for i in range(n)]


def state(name: str, inc: int = 0, status: MemberStatus = ALIVE) -> MemberState:
    return MemberState(name, Net.addr(name), f"{name}:7401", inc, status)


def test_join_through_different_peers_converges():
    net = Net(seed=3)
    everyone = ["a", "b", "c"]
    for name in everyone:
        net.add(name)
    # c joins through b before b has reached a: gossip and push-pull must close the triangle
    net.apply("b", net.nodes["b"].join([net.addr("a")], net.now))
    net.apply("c", net.nodes["c"].join([net.addr("b")], net.now))
    assert net.run(0.5, until=lambda: net.all_see(everyone, {n: "alive" for n in everyone})), (
        net.views()
    )
    net.run(2.0)
    snapshots = [net.nodes[n].snapshot() for n in everyone]
    assert snapshots[0] == snapshots[1] == snapshots[2]
    for name in everyone:
        node = net.nodes[name]
        assert node.alive() == everyone
        assert node.voters() == {n: net.addr(n) for n in everyone}
        assert node.pending_joins() == []
        assert node.counts() == {"alive": 3, "suspect": 0, "dead": 0, "left": 0}
        assert [e.reason for _, e in net.changes(name)] == ["joined", "joined"]


def test_ten_nodes_joining_one_seed_converge_well_under_half_a_second():
    net = Net(seed=4)
    everyone = names(10)
    for name in everyone:
        net.add(name)
    for name in everyone[1:]:
        net.apply(name, net.nodes[name].join([net.addr("n0")], net.now))
    t0 = net.now
    assert net.run(0.5, until=lambda: net.all_see(everyone, {n: "alive" for n in everyone})), (
        net.views()
    )
    assert net.now - t0 < 0.25


@pytest.mark.parametrize(("size", "seed"), [(3, 1), (3, 2), (5, 3), (5, 4), (10, 5), (10, 6)])
def test_crashed_node_is_suspected_then_dead_everywhere(size, seed):
    net = Net(seed=seed)
    everyone = names(size)
    net.cluster(everyone)
    victim, survivors = everyone[-1], everyone[:-1]
    t0 = net.now
    net.crash(victim)
    assert net.run(5.0, until=lambda: all(net.status(s, victim) == "dead" for s in survivors)), (
        net.views()
    )
    # the lan/test failure detector's budget (see MembershipConfig): under 2 s, virtual time
    assert net.now - t0 < 2.0
    assert any(
        e.reason == "probe timeout" for s in survivors for _, e in net.changes(s, victim, "suspect")
    )
    for s in survivors:
        ((t_dead, _),) = net.changes(s, victim, "dead")
        suspected = net.changes(s, victim, "suspect", t0)
        assert suspected and suspected[0][0] <= t_dead
        assert net.nodes[s].alive() == survivors
        assert victim in net.nodes[s].voters()  # dead members stay voters until reaped
        # nobody else was ever suspected
        assert [e.name for _, e in net.changes(s, new="suspect")] == [victim]


def test_quiet_cluster_has_no_suspicions():
    net = Net(seed=21)
    everyone = names(5)
    net.cluster(everyone)
    net.run(30.0)
    for name in everyone:
        assert not net.changes(name, new="suspect")
        assert net.nodes[name].awareness == 0
        assert net.nodes[name].incarnation == 0


def test_false_suspicion_is_refuted_with_a_higher_incarnation():
    net = Net(seed=5)
    everyone = ["a", "b", "c"]
    net.cluster(everyone)
    t0 = net.now
    accusation = Gossip((state("b", 0, SUSPECT),))
    net.inject("a", "b", accusation)
    net.inject("a", "c", accusation)
    net.run(5.0)
    assert net.nodes["b"].incarnation == 1
    assert [(e.new, e.reason) for _, e in net.changes("c", "b", after=t0)] == [
        (SUSPECT, "suspected by a"),
        (ALIVE, "refuted"),
    ]
    assert net.all_see(everyone, {n: "alive" for n in everyone})
    assert all(net.nodes[v].member("b").inc == 1 for v in everyone)
    refutations = [
        d
        for d in net.sent
        if d.src == "b" and isinstance(d.msg, Gossip) and state("b", 1) in d.msg.updates
    ]
    assert refutations
    assert net.nodes["b"].awareness == 0  # raised by the refutation, earned back by good probes


def test_accusations_about_self_unit():
    cfg = MembershipConfig.test()
    me = Membership("a", "a:7400", "a:7401", cfg, random.Random(1), 0.0)
    assert me.handle("b", Gossip((state("a", 0, SUSPECT),)), 0.0) == []
    assert me.incarnation == 1 and me.awareness == 1
    out = me.tick(0.01)
    assert [type(e) for e in out] == [Broadcast] and state("a", 1) in out[0].msg.updates
    me.handle("b", Gossip((state("a", 0, DEAD),)), 0.02)  # older than our incarnation: stale
    assert me.incarnation == 1
    me.handle("b", Gossip((state("a", 1, DEAD),)), 0.03)
    assert me.incarnation == 2
    me.handle("b", Gossip((state("a", 7, ALIVE),)), 0.04)  # someone holds us at a higher inc
    assert me.incarnation == 8
    me.handle("b", Gossip((state("a", 8, LEFT),)), 0.05)  # not our leave: we rejoin above it
    assert me.incarnation == 9 and not me.left
    assert me.member("a").status == ALIVE


def test_indirect_probe_saves_a_node_behind_a_lossy_direct_link():
    net = Net(seed=6)
    net.cluster(["a", "b", "c"])
    t0 = net.now
    net.cut |= {("a", "b"), ("b", "a")}
    net.run(10.0)
    for viewer in ("a", "b", "c"):
        assert not net.changes(viewer, new="suspect", after=t0), net.changes(viewer)
    asked = [
        d
        for d in net.sent
        if d.t >= t0 and d.src == "a" and isinstance(d.msg, PingReq) and d.msg.target == "b"
    ]
    assert len(asked) >= 10 and {d.dst for d in asked} == {"c"}
    relayed = [
        d
        for d in net.delivered
        if d.t >= t0
        and d.src == "c"
        and d.dst == "a"
        and isinstance(d.msg, Ack)
        and d.msg.target == "b"
    ]
    assert len(relayed) >= 10
    assert net.nodes["a"].awareness == 0


def test_a_lost_ping_is_sent_again_with_the_relays_and_its_ack_ends_the_probe():
    """memberlist's fallback ping: once the direct wait is over, the target is pinged again
    beside the PingReqs, under the same probe number, so one lost Ping or Ack (with the
    relays' hops lost too) costs no suspicion."""
    cfg = replace(MembershipConfig.test(), stall_gap=None)
    a = Membership("a", "a:7400", "a:7401", cfg, random.Random(1), 0.0)
    a.handle("b", StateReply(tuple(state(n) for n in "bc")), 0.0)
    t, first = 0.0, None
    while first is None and t < 1.0:  # a's first probe; its Ping is lost
        t = round(t + 0.005, 3)
        first = next((e for e in a.tick(t) if isinstance(e, Send) and isinstance(e.msg, Ping)), None)
    target = first.msg.target
    again: list[Send] = []
    while not again and t < 1.0:
        t = round(t + 0.005, 3)
        out = a.tick(t)
        again = [e for e in out if isinstance(e, Send) and isinstance(e.msg, Ping)]
    assert [e.msg.target for e in out if isinstance(e, Send) and isinstance(e.msg, PingReq)] == [target]
    (ping,) = again
    assert ping.to == first.to and ping.msg == first.msg  # the same probe, straight to it
    a.handle(target, Ack(ping.msg.probe, target), t + 0.01)  # its Ack; the relay's answer is lost
    end = t + cfg.probe_interval  # past this probe's period (the next probe's Ping goes unanswered)
    changes = []
    while t < end:
        t = round(t + 0.005, 3)
        changes += [e for e in a.tick(t) if isinstance(e, MemberChanged)]
    assert a.member(target).status == ALIVE and changes == []
    assert a.awareness == 0  # an acked probe: no penalty for the relay's missing Nack


def test_relay_nacks_when_the_target_does_not_answer():
    cfg = MembershipConfig.test()
    relay = Membership("c", "c:7400", "c:7401", cfg, random.Random(1), 0.0)
    out = relay.handle(
        "a", PingReq(probe=9, target="b", target_addr="b:7400", reply_to="a:7400"), 0.0
    )
    (ping,) = out
    assert ping.to == "b:7400" and ping.msg.target == "b" and ping.msg.reply_to == "c:7400"
    assert relay.tick(0.04) == []
    assert Send("a:7400", Nack(9, "b")) in relay.tick(
        0.06
    )  # half a probe timeout: before the asker gives up
    # a late Ack is still relayed: it saves the target
    assert relay.handle("b", Ack(ping.msg.probe, "b"), 0.07) == [Send("a:7400", Ack(9, "b"))]


def test_leave_is_gossiped_as_left_not_dead():
    net = Net(seed=7)
    net.cluster(["a", "b", "c"])
    t0 = net.now
    b = net.nodes["b"]
    out = b.leave(net.now)
    assert isinstance(out[0], MemberChanged) and out[0].new == LEFT and out[0].reason == "left"
    assert any(isinstance(e, Broadcast) for e in out)
    net.apply("b", out)
    assert b.left and b.incarnation == 1 and b.alive() == ["a", "c"] and "b" not in b.voters()
    assert b.leave(net.now) == []
    net.run(0.5)  # the shell keeps ticking a moment so retransmits go out
    assert b.broadcasts_pending() == 0
    net.crash("b")
    net.run(5.0)
    for viewer in ("a", "c"):
        assert net.status(viewer, "b") == "left"
        assert [(e.new, e.reason) for _, e in net.changes(viewer, "b", after=t0)] == [
            (LEFT, "left")
        ]
        assert "b" not in net.nodes[viewer].voters() and "b" not in net.nodes[viewer].alive()


def test_dead_and_left_members_are_reaped_after_reap_after():
    cfg = replace(MembershipConfig.test(), reap_after=3.0, reconnect_for=3.0)
    net = Net(seed=8, config=cfg)
    net.cluster(["a", "b", "c", "d"])
    net.apply("b", net.nodes["b"].leave(net.now))
    net.run(0.3)
    net.crash("b")
    net.crash("d")
    net.run(2.5)
    for viewer in ("a", "c"):
        assert net.status(viewer, "b") == "left" and net.status(viewer, "d") == "dead"
        assert "d" in net.nodes[viewer].voters()
    assert net.run(
        5.0,
        until=lambda: all(net.nodes[v].member(n) is None for v in ("a", "c") for n in ("b", "d")),
    )
    for viewer in ("a", "c"):
        reaped = [e.name for _, e in net.events[viewer] if isinstance(e, MemberReaped)]
        assert sorted(reaped) == ["b", "d"]
        assert net.nodes[viewer].member(viewer) is not None  # never self
        assert set(net.nodes[viewer].voters()) == {"a", "c"}
    # tombstones still gossiped by someone do not bring a reaped member back (rule 4)
    net.inject("c", "a", Gossip((state("d", 0, DEAD), state("b", 1, LEFT))))
    net.run(0.1)
    assert net.nodes["a"].member("d") is None and net.nodes["a"].member("b") is None


def test_force_leave_turns_a_dead_member_into_left():
    net = Net(seed=9)
    net.cluster(["a", "b", "c"])
    net.crash("c")
    assert net.run(5.0, until=lambda: net.all_see(["a", "b"], {"c": "dead"}))
    a = net.nodes["a"]
    with pytest.raises(ValueError, match="alive"):
        a.force_leave("b", net.now)
    with pytest.raises(ValueError, match="no member"):
        a.force_leave("zed", net.now)
    with pytest.raises(ValueError, match="this node"):
        a.force_leave("a", net.now)
    out = a.force_leave("c", net.now)
    assert [(e.new, e.reason) for e in out if isinstance(e, MemberChanged)] == [
        (LEFT, "force-left")
    ]
    net.apply("a", out)
    assert net.run(1.0, until=lambda: net.all_see(["a", "b"], {"c": "left"}))
    assert "c" not in a.voters() and "c" not in net.nodes["b"].voters()
    assert a.force_leave("c", net.now) == []
    # the forced-out node was alive after all: it comes back above the left incarnation (as Serf)
    c = net.add("c")
    net.apply("c", c.join([net.addr("a")], net.now))
    assert net.run(2.0, until=lambda: net.all_see(["a", "b", "c"], {n: "alive" for n in "abc"})), (
        net.views()
    )
    assert c.incarnation == 1
    assert [e.reason for _, e in net.changes("b", "c", "alive")][-1] == "rejoined"


def test_force_leave_with_prune_makes_every_node_forget_the_member_now():
    net = Net(seed=11)  # reap_after is a day: without prune the dead would stay listed
    net.cluster(["a", "b", "c", "d"])
    net.crash("d")
    assert net.run(5.0, until=lambda: net.all_see(["a", "b", "c"], {"d": "dead"}))
    a = net.nodes["a"]
    with pytest.raises(ValueError, match="alive"):
        a.force_leave("b", net.now, prune=True)
    out = a.force_leave("d", net.now, prune=True)
    assert [(e.new, e.reason) for e in out if isinstance(e, MemberChanged)] == [(LEFT, "pruned")]
    assert [e.name for e in out if isinstance(e, MemberReaped)] == ["d"]
    assert a.member("d") is None
    net.apply("a", out)
    assert net.run(1.0, until=lambda: net.all_see(["a", "b", "c"], {"d": None})), net.views()
    for viewer in ("b", "c"):
        assert [e.name for _, e in net.events[viewer] if isinstance(e, MemberReaped)] == ["d"]
        assert [e.reason for _, e in net.changes(viewer, "d", "left")] == ["pruned by a"]
        assert "d" not in net.nodes[viewer].voters()
    # the tombstones others still gossip do not bring it back (rule 4), and a second prune
    # finds nobody to prune
    net.inject("b", "c", Gossip((state("d", 0, DEAD),)))
    net.run(0.1)
    assert net.nodes["c"].member("d") is None
    with pytest.raises(ValueError, match="no member"):
        a.force_leave("d", net.now, prune=True)


def test_a_member_that_left_can_be_pruned_and_one_that_came_back_is_not():
    net = Net(seed=12)
    net.cluster(["a", "b", "c"])
    net.apply("c", net.nodes["c"].leave(net.now))
    assert net.run(2.0, until=lambda: net.all_see(["a", "b"], {"c": "left"}))
    net.crash("c")
    a = net.nodes["a"]
    assert a.force_leave("c", net.now) == []  # left already: nothing to do without prune
    net.apply("a", a.force_leave("c", net.now, prune=True))
    assert net.run(1.0, until=lambda: net.all_see(["a", "b"], {"c": None})), net.views()
    # a prune is news about the incarnation it names: a member alive above it stays
    b = net.nodes["b"]
    net.inject("a", "b", Gossip((state("e", 0, ALIVE),)))
    net.run(0.1)
    assert b.member("e") is not None
    net.inject("a", "b", Gossip((state("e", 3, ALIVE),)))
    net.run(0.1)
    net.inject("c", "b", Gossip((replace(state("e", 2, LEFT), pruned=True),)))
    net.run(0.1)
    assert b.member("e") is not None and b.member("e").status == ALIVE and b.member("e").inc == 3


def test_restart_restores_members_from_snapshot_and_rejoins():
    net = Net(seed=10)
    everyone = ["a", "b", "c"]
    net.cluster(everyone)
    snap = [s for s in net.nodes["c"].snapshot() if s.name != "c"]  # as the shell passes it
    net.crash("c")
    assert net.run(5.0, until=lambda: net.all_see(["a", "b"], {"c": "dead"}))
    c = net.add("c")  # a new process: fresh state, same address
    out = c.restore(snap, net.now)
    assert set(c.voters()) == set(everyone)  # before anyone answered: no lonely self-election
    assert sorted(e.to for e in out if isinstance(e, Send) and isinstance(e.msg, StatePush)) == [
        net.addr("a"),
        net.addr("b"),
    ]
    assert [(e.name, e.reason) for e in out if isinstance(e, MemberChanged)] == [
        ("a", "restored"),
        ("b", "restored"),
    ]
    net.apply("c", out)
    assert net.run(2.0, until=lambda: net.all_see(everyone, {n: "alive" for n in everyone})), (
        net.views()
    )
    assert c.incarnation >= 1  # it refuted the dead verdict it found
    assert c.pending_joins() == []


def test_restore_with_own_record_starts_above_it():
    me = Membership("a", "a:7400", "a:7401", MembershipConfig.test(), random.Random(1), 0.0)
    out = me.restore(
        [state("a", 4, LEFT), state("b", 2, SUSPECT), state("c", 1, LEFT), state("d", 3, DEAD)], 0.0
    )
    assert me.incarnation == 5 and not me.left
    assert me.member("b").status == ALIVE and me.member("b").inc == 2  # no timer from the past
    assert me.member("c") is None  # left members are not remembered
    assert me.member("d").status == DEAD and "d" in me.voters()
    assert [e.to for e in out if isinstance(e, Send)] == ["b:7400"]
    assert me.pending_joins() == ["b:7400"]


def test_name_conflict_is_reported_once_per_address_and_never_refuted():
    cfg = MembershipConfig.test()
    a = Membership("a", "a:7400", "a:7401", cfg, random.Random(1), 0.0)
    twin = Membership("a", "x:7400", "x:7401", cfg, random.Random(2), 0.0)
    (push,) = twin.join(["a:7400"], 0.0)
    out = a.handle("a", push.msg, 0.01)
    assert [e for e in out if isinstance(e, NameConflict)] == [NameConflict("a", "x:7400")]
    (reply,) = [e for e in out if isinstance(e, Send)]
    assert reply.to == "x:7400" and isinstance(reply.msg, StateReply)
    back = twin.handle("a", reply.msg, 0.02)
    assert [e for e in back if isinstance(e, NameConflict)] == [NameConflict("a", "a:7400")]
    for t in (0.03, 0.04, 0.05):  # retries and repeats: no more reports, no refutation war
        assert not [e for e in a.handle("a", push.msg, t) if isinstance(e, NameConflict)]
        assert not [e for e in twin.handle("a", reply.msg, t) if isinstance(e, NameConflict)]
    assert a.incarnation == 0 and twin.incarnation == 0
    # a third node gossiping our name alive at yet another address
    gossip = Gossip((MemberState("a", "y:7400", "y:7401", 3, ALIVE),))
    assert a.handle("b", gossip, 0.06) == [NameConflict("a", "y:7400")]
    assert a.handle("b", gossip, 0.07) == []
    assert a.incarnation == 0


def _probe_to_pingreq_delay(stall: float) -> tuple[float, Membership]:
    cfg = replace(MembershipConfig.test(), stall_gap=None)
    a = Membership("a", "a:7400", "a:7401", cfg, random.Random(1), 0.0)
    a.handle("b", StateReply(tuple(state(n) for n in "bcd")), 0.0)
    a.note_stall(stall, 0.0)
    t, ping_at = 0.0, None
    while t < 5.0:
        t = round(t + 0.005, 3)
        for e in a.tick(t):
            if isinstance(e, Send) and isinstance(e.msg, Ping) and ping_at is None:
                ping_at = t
            if isinstance(e, Send) and isinstance(e.msg, PingReq):
                assert ping_at is not None
                return t - ping_at, a
    raise AssertionError("no indirect probe")


def test_awareness_stretches_the_probe_timeout():
    healthy, a = _probe_to_pingreq_delay(0.0)
    assert a.awareness == 0
    stalled, b = _probe_to_pingreq_delay(0.25)  # ceil(0.25 / 0.1) = +3: timeouts x4
    assert b.awareness == 3
    assert healthy == pytest.approx(0.1, abs=0.006)
    assert stalled == pytest.approx(0.4, abs=0.006)
    small = Membership("a", "a:7400", "a:7401", MembershipConfig.test(), random.Random(1), 0.0)
    small.note_stall(0.02, 0.0)  # noise: under half a probe timeout
    assert small.awareness == 0
    small.note_stall(100.0, 0.0)
    assert small.awareness == 7  # capped at awareness_max - 1


def _time_to_dead(stressed: bool) -> float:
    """a hears c suspect b; b answers a's probes, so no confirmation ever comes."""
    cfg = replace(MembershipConfig.test(), stall_gap=None)
    a = Membership("a", "a:7400", "a:7401", cfg, random.Random(1), 0.0)
    a.handle("b", StateReply((state("b"), state("c"))), 0.0)
    t, suspected_at = 0.0, None
    while t < 30.0:
        t = round(t + 0.01, 2)
        out = []
        if t == 0.5:
            out = a.handle("c", Gossip((state("b", 0, SUSPECT),)), t)
            suspected_at = t
        if stressed:
            a.note_stall(1.0, t)  # a node whose loop keeps stalling
        for e in out + a.tick(t):
            if isinstance(e, Send) and isinstance(e.msg, Ping):
                a.handle(e.msg.target, Ack(e.msg.probe, e.msg.target), t)
            if isinstance(e, MemberChanged) and e.name == "b" and e.new == DEAD:
                assert e.reason == "suspicion timeout"
                return t - suspected_at
    raise AssertionError("never declared dead")


def test_awareness_stretches_suspicion_timeouts():
    # n = 3: k = 1 expected confirmation, none comes: the max timeout, 2 x 0.8 s
    assert _time_to_dead(stressed=False) == pytest.approx(1.6, abs=0.011)
    assert _time_to_dead(stressed=True) == pytest.approx(
        1.6 * 8, abs=0.011
    )  # awareness pinned at 7


def test_anti_entropy_heals_lost_gossip():
    net = Net(seed=11)
    net.cluster(["a", "b", "c", "d"])
    net.drop = lambda src, dst, msg, kind: dst == "d" and isinstance(msg, Gossip)
    t0 = net.now
    e = net.add("e")
    net.apply("e", e.join([net.addr("a")], net.now))
    assert net.run(0.3, until=lambda: net.all_see(["a", "b", "c", "e"], {"e": "alive"}))
    assert net.run(3.0, until=lambda: net.status("d", "e") == "alive"), net.views()
    assert not [
        x for x in net.delivered if x.dst == "d" and isinstance(x.msg, Gossip) and x.t >= t0
    ]
    # a departure that d hears neither by gossip nor by b's direct notice
    net.cut |= {("b", "d")}
    net.apply("b", net.nodes["b"].leave(net.now))
    net.run(0.5)
    net.crash("b")
    assert net.run(5.0, until=lambda: net.status("d", "b") == "left"), net.views()
    net.drop = None
    net.run(2.0)
    assert net.all_see(
        ["a", "c", "d", "e"], {"a": "alive", "b": "left", "c": "alive", "d": "alive", "e": "alive"}
    )


def test_gap_on_the_pub_stream_triggers_one_push_pull():
    net = Net(seed=12)
    net.cluster(["a", "b"])
    a = net.nodes["a"]
    (push,) = a.on_gap("b", net.now)
    assert push.to == net.addr("b") and isinstance(push.msg, StatePush) and not push.msg.join
    assert a.on_gap("b", net.now + 0.1) == []  # held off: a burst of gaps is one resync
    assert a.on_gap("zed", net.now) == [] and a.on_gap("a", net.now) == []


def test_gap_push_pulls_are_bounded_per_node_whatever_the_senders():
    """One gap push-pull per probe interval per node, with anyone: under heavy loss many
    senders' gaps at once start one resync, not one each."""
    net = Net(seed=12)
    net.cluster(["a", "b", "c"])
    a = net.nodes["a"]
    period = a.config.probe_interval
    (push,) = a.on_gap("b", net.now)
    assert push.to == net.addr("b")
    assert a.on_gap("c", net.now + 0.5 * period) == []  # the node's bound, not c's
    (push,) = a.on_gap("c", net.now + 1.01 * period)
    assert push.to == net.addr("c") and a.gap_resyncs == 2


def test_healed_partition_merges_back_via_reconnect():
    net = Net(seed=13)
    everyone = ["a", "b", "c", "d"]
    net.cluster(everyone)
    net.partition(["a", "b"], ["c", "d"])
    assert net.run(
        6.0,
        until=lambda: (
            net.all_see(["a", "b"], {"c": "dead", "d": "dead"})
            and net.all_see(["c", "d"], {"a": "dead", "b": "dead"})
        ),
    ), net.views()
    net.run(1.0)
    net.heal()
    t_heal = net.now
    assert net.run(5.0, until=lambda: net.all_see(everyone, {n: "alive" for n in everyone})), (
        net.views()
    )
    net.run(3.0)
    assert net.all_see(everyone, {n: "alive" for n in everyone})
    # the stale verdicts of the other half never turned a node against its own side
    for side in (["a", "b"], ["c", "d"]):
        for viewer in side:
            assert not [
                e for _, e in net.changes(viewer, after=t_heal) if e.name in side and e.new != ALIVE
            ]


def test_join_is_retried_until_the_peer_answers():
    net = Net(seed=14)
    a = net.add("a")
    net.apply("a", a.join([net.addr("b")], net.now))  # b is not up yet
    net.run(1.5)
    assert a.pending_joins() == [net.addr("b")]
    tries = [d for d in net.sent if d.src == "a" and isinstance(d.msg, StatePush) and d.msg.join]
    assert len(tries) == 3  # at 0, 0.5 and 1.5 s: join_retry doubling
    net.add("b")
    assert net.run(3.0, until=lambda: net.all_see(["a", "b"], {"a": "alive", "b": "alive"}))
    assert a.pending_joins() == []


def test_join_through_an_alias_of_the_address_is_answered():
    net = Net(seed=15)
    net.add("a")
    b = net.add("b")
    net.by_addr["localhost:7400"] = "a"  # the same node under another name
    net.apply("b", b.join(["localhost:7400"], net.now))
    assert net.run(0.5, until=lambda: net.all_see(["a", "b"], {"a": "alive", "b": "alive"}))
    assert b.pending_joins() == []


def test_same_seed_same_effects():
    def run() -> list:
        net = Net(seed=16)
        net.cluster(names(4))
        net.crash("n3")
        net.run(3.0)
        return [(v, t, e) for v in sorted(net.events) for t, e in net.events[v]] + [
            (d.t, d.src, d.dst, d.msg) for d in net.sent
        ]

    assert run() == run()


@pytest.mark.parametrize("seed", range(8))
def test_a_short_stop_is_refuted_never_dead(seed):
    """SIGSTOP for 0.6 s (shorter than the suspicion timeout): suspected maybe, never dead."""
    net = Net(seed=30 + seed)
    everyone = ["a", "b", "c"]
    net.cluster(everyone)
    # stop b just after it sent a probe: the Ack will sit unread in its socket while it sleeps
    while not any(
        d.src == "b" and isinstance(d.msg, Ping) and d.t == net.now for d in net.sent[-10:]
    ):
        net.step()
    t0 = net.now
    net.pause("b", 0.6)
    net.run(5.0)
    assert net.all_see(everyone, {n: "alive" for n in everyone}), net.views()
    for viewer in everyone:
        assert not net.changes(viewer, new="dead", after=t0)
    # the stopped node woke with acks and accusations unread: it accused nobody (rule 16)
    assert not net.changes("b", new="suspect", after=t0)


def test_loop_stalls_of_tens_of_ms_cause_no_suspicion():
    net = Net(seed=40)
    everyone = names(5)
    net.cluster(everyone)
    rng = random.Random(40)
    t0 = net.now
    while net.now < t0 + 60.0:
        if rng.random() < 0.05:  # every ~0.2 s some node's loop stalls for 10-90 ms
            net.pause(rng.choice(everyone), rng.uniform(0.01, 0.09))
        net.step()
    for name in everyone:
        assert not net.changes(name, new="suspect", after=t0), name


def test_a_joiner_whose_subscription_lags_catches_up_by_resync():
    """Clone pattern: what the seed gossiped before our SUB was up comes with a resync."""
    net = Net(seed=17, config=MembershipConfig.lan())  # anti-entropy every 5 s: not the rescuer
    net.add("s")
    a, b = net.add("a"), net.add("b")
    # a's SUB to the seed connects late: nothing published reaches a during its first 1.1 s
    net.drop = lambda src, dst, msg, kind: kind == "pub" and dst == "a" and net.now < 1.1
    net.apply("a", a.join([net.addr("s")], net.now))
    net.run(0.5)
    net.apply("b", b.join([net.addr("s")], net.now))  # b joins after the seed answered a
    assert net.run(0.6, until=lambda: net.status("a", "b") == "alive"), net.views()
    assert net.now < 1.1
    resyncs = [
        d.t for d in net.sent if d.src == "a" and isinstance(d.msg, StatePush) and not d.msg.join
    ]
    assert resyncs[:2] == [pytest.approx(0.2, abs=0.02), pytest.approx(1.0, abs=0.02)]
