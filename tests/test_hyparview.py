"""HyParView partial views (mesh/hyparview.py), driven directly: in-memory cores passing
messages through a tiny dispatcher in virtual time, no sockets."""

from __future__ import annotations

import heapq
import random
from collections import deque

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from corec_node.mesh.hyparview import (
    Disconnect,
    ForwardJoin,
    HyParView,
    HyParViewConfig,
    HyParViewEffect,
    Join,
    JoinReply,
    Neighbor,
    NeighborDown,
    NeighborReply,
    NeighborUp,
    ViewSend,
)


class Overlay:
    """HyParView cores on a lossless network with per-link FIFO order (as TCP) and random
    delays; a crashed node's links break at its neighbours after ``detect`` seconds."""

    def __init__(self, seed: int, config: HyParViewConfig, detect: float = 0.05) -> None:
        self.rng = random.Random(seed)
        self.config = config
        self.detect = detect
        self.now = 0.0
        self.nodes: dict[str, HyParView] = {}
        self.dead: set[str] = set()
        self._queue: list[tuple[float, int, str, object]] = []  # (time, seq, dst, msg)
        self._seq = 0
        self._link_free: dict[tuple[str, str], float] = {}
        self.ups: dict[str, int] = {}

    def add(self, name: str, contact: str | None = None) -> HyParView:
        node = HyParView(name, random.Random(f"{name}/{self.rng.random()}"), self.config,
                         now=self.now)
        self.nodes[name] = node
        if contact is not None:
            self.apply(name, node.join(self.now, contact))
        return node

    def apply(self, src: str, effects: list[HyParViewEffect]) -> None:
        for e in effects:
            if isinstance(e, ViewSend):
                self._seq += 1
                link = (src, e.to)
                at = max(self.now + self.rng.uniform(0.001, 0.005), self._link_free.get(link, 0))
                self._link_free[link] = at
                heapq.heappush(self._queue, (at, self._seq, e.to, e.msg))
            elif isinstance(e, NeighborUp):
                self.ups[src] = self.ups.get(src, 0) + 1
                self.check_cap(src)

    def check_cap(self, name: str) -> None:
        node = self.nodes[name]
        assert len(node.active) <= self.config.active_size
        assert name not in node.active and name not in node.passive
        assert len(node.passive) <= self.config.passive_size

    def crash(self, name: str) -> None:
        self.dead.add(name)
        for other, node in self.nodes.items():
            if other not in self.dead and name in node.neighbors():
                self._seq += 1
                heapq.heappush(self._queue, (self.now + self.detect, self._seq, other, name))

    def _next_timer(self) -> tuple[float, str] | None:
        best: tuple[float, str] | None = None
        for name, node in self.nodes.items():
            if name in self.dead:
                continue
            t = node.next_deadline()
            if t is not None and (best is None or t < best[0]):
                best = (t, name)
        return best

    def run(self, until: float, timers: bool = True) -> None:
        """Process messages and timers in time order up to ``until``; with ``timers=False``
        only drain the messages in flight (a quiescent moment to check invariants)."""
        while True:
            timer = self._next_timer() if timers else None
            head = self._queue[0][0] if self._queue else None
            if head is not None and head <= until and (timer is None or head <= timer[0]):
                at, _, dst, msg = heapq.heappop(self._queue)
                self.now = max(self.now, at)
                if dst in self.dead:
                    continue
                node = self.nodes[dst]
                if isinstance(msg, str):  # a broken link to a crashed peer
                    self.apply(dst, node.peer_failed(self.now, msg))
                else:
                    self.apply(dst, node.handle(self.now, msg))
            elif timer is not None and timer[0] <= until:
                self.now = max(self.now, timer[0])
                self.apply(timer[1], self.nodes[timer[1]].on_timer(self.now))
            else:
                self.now = max(self.now, until)
                return

    def settle(self, seconds: float) -> None:
        self.run(self.now + seconds)
        self.run(self.now + 10.0, timers=False)

    def live(self) -> list[str]:
        return [n for n in self.nodes if n not in self.dead]

    def assert_symmetric(self) -> None:
        for name in self.live():
            for peer in self.nodes[name].active:
                assert name in self.nodes[peer].active, f"{name} -> {peer} not mirrored"

    def connected(self) -> bool:
        live = self.live()
        seen = {live[0]}
        todo = deque([live[0]])
        while todo:
            for peer in self.nodes[todo.popleft()].neighbors():
                if peer not in seen and peer not in self.dead:
                    seen.add(peer)
                    todo.append(peer)
        return len(seen) == len(live)


def grow(seed: int, n: int, config: HyParViewConfig, spread: float = 0.05,
         any_contact: bool = True) -> Overlay:
    net = Overlay(seed, config)
    net.add("n0")
    for i in range(1, n):
        contact = f"n{net.rng.randrange(i)}" if any_contact else "n0"
        net.add(f"n{i}", contact)
        net.run(net.now + net.rng.uniform(0, spread))
    return net


# A small cap makes islands and evictions common; rewiring often opens islands quickly.
SMALL = HyParViewConfig(active_size=4, passive_size=12, shuffle_interval=2.0, fill_interval=0.5,
                        rewire_chance=0.2)


# -- unit tests ---------------------------------------------------------------------------


def test_join_links_contact_and_joiner_both_ways() -> None:
    contact = HyParView("a", random.Random(1))
    joiner = HyParView("b", random.Random(2))
    out = joiner.join(0.0, "a")
    assert out == [ViewSend("a", Join("b"))]
    out = contact.handle(0.0, Join("b"))
    assert NeighborUp("b") in out and ViewSend("b", JoinReply("a", ())) in out
    out = joiner.handle(0.0, JoinReply("a", ()))
    assert out == [NeighborUp("a")]
    assert contact.active == ("b",) and joiner.active == ("a",)


def test_join_is_retried_until_answered() -> None:
    node = HyParView("b", random.Random(2), HyParViewConfig(join_retry=1.0))
    node.join(0.0, "a")
    assert node.next_deadline() == 1.0  # nothing else to do while alone
    out = node.on_timer(1.0)
    assert ViewSend("a", Join("b")) in out
    node.handle(1.1, JoinReply("a", ()))
    assert node.next_deadline() is None or node.next_deadline() > 1.1


def test_full_view_evicts_a_random_peer_with_disconnect() -> None:
    node = HyParView("x", random.Random(3), HyParViewConfig(active_size=2))
    for peer in ("p1", "p2"):
        node.handle(0.0, Neighbor(peer, high=False))
    out = node.handle(0.0, Neighbor("p3", high=True))
    victims = [e.to for e in out if isinstance(e, ViewSend) and isinstance(e.msg, Disconnect)]
    assert len(victims) == 1 and victims[0] in ("p1", "p2")
    assert NeighborDown(victims[0]) in out
    assert set(node.active) == {"p3", ({"p1", "p2"} - set(victims)).pop()}
    assert victims[0] in node.passive


def test_low_priority_request_refused_when_full() -> None:
    node = HyParView("x", random.Random(3), HyParViewConfig(active_size=1))
    node.handle(0.0, Neighbor("p1", high=False))
    out = node.handle(0.0, Neighbor("p2", high=False))
    assert out == [ViewSend("p2", NeighborReply("x", accepted=False))]
    assert node.active == ("p1",) and "p2" in node.passive


def test_forward_join_walk_ends_at_ttl_zero() -> None:
    cfg = HyParViewConfig(active_size=3)
    node = HyParView("x", random.Random(4), cfg)
    for peer in ("p1", "p2", "p3"):
        node.handle(0.0, Neighbor(peer, high=False))
    out = node.handle(0.0, ForwardJoin("p1", "j", cfg.passive_walk))
    assert any(isinstance(e, ViewSend) and isinstance(e.msg, ForwardJoin) for e in out)
    assert "j" in node.passive  # ttl == PRWL
    out = node.handle(0.0, ForwardJoin("p1", "j2", 0))
    assert "j2" in node.active and ViewSend("j2", Neighbor("x", high=True)) in out


def test_failed_active_peer_is_replaced_from_passive() -> None:
    cfg = HyParViewConfig(active_size=2, neighbor_timeout=1.0)
    node = HyParView("x", random.Random(5), cfg)
    node.handle(0.0, Neighbor("p1", high=False))
    node.handle(0.0, JoinReply("p2", ("c1", "c2")))
    assert set(node.active) == {"p1", "p2"}
    out = node.peer_failed(1.0, "p1")
    assert out[0] == NeighborDown("p1")
    asked = [e.to for e in out if isinstance(e, ViewSend) and isinstance(e.msg, Neighbor)]
    assert len(asked) == 1 and asked[0] in ("c1", "c2")
    # the candidate never answers: it is dropped and the other one asked
    out = node.on_timer(2.0)
    assert asked[0] not in node.passive
    assert [e.to for e in out if isinstance(e, ViewSend)] == [({"c1", "c2"} - set(asked)).pop()]


def test_active_view_empty_asks_with_high_priority() -> None:
    node = HyParView("x", random.Random(6), HyParViewConfig(active_size=2))
    node.handle(0.0, Neighbor("p1", high=False))
    node.handle(0.0, Disconnect("c1"))  # a passive candidate
    out = node.peer_failed(1.0, "p1")
    assert ViewSend("c1", Neighbor("x", high=True)) in out
    # refused though high (an older peer): with no peer left, ask again at once
    out = node.handle(1.1, NeighborReply("c1", accepted=False))
    assert ViewSend("c1", Neighbor("x", high=True)) in out


def test_pinned_peers_sit_outside_the_cap_and_stay_linked() -> None:
    node = HyParView("x", random.Random(7), HyParViewConfig(active_size=1))
    assert node.pin(0.0, "v1") == [NeighborUp("v1")]
    node.handle(0.0, Neighbor("p1", high=False))
    assert set(node.neighbors()) == {"p1", "v1"}  # the cap counts the active view only
    assert node.handle(0.0, Disconnect("v1")) == []  # rule 7: the pinned link stays
    assert node.peer_failed(1.0, "v1") == [NeighborDown("v1")]
    assert node.pinned == ("v1",) and node.neighbors() == ("p1",)
    out = node.handle(2.0, Neighbor("v1", high=False))
    assert out[0] == NeighborUp("v1")
    assert node.handle(3.0, Disconnect("v1", leaving=True)) == [NeighborDown("v1")]
    assert node.pinned == ()


def test_a_pinned_peer_may_hold_an_active_slot_without_double_reports() -> None:
    """The views ignore pinning (rule 7): a pinned voter is an overlay peer like any
    other, and losing its active slot does not close its link."""
    node = HyParView("x", random.Random(8), HyParViewConfig(active_size=1))
    node.pin(0.0, "v1")
    out = node.handle(0.0, Neighbor("v1", high=False))
    assert out == [ViewSend("v1", NeighborReply("x", accepted=True))]  # no second NeighborUp
    assert node.active == ("v1",)
    out = node.handle(0.0, Neighbor("p2", high=True))  # evicts v1 from the active view
    assert ViewSend("v1", Disconnect("x")) in out and NeighborDown("v1") not in out
    assert set(node.neighbors()) == {"p2", "v1"}
    assert node.unpin(1.0, "v1") == [NeighborDown("v1")]
    assert "v1" in node.passive


def test_leave_says_goodbye_and_ignores_input() -> None:
    node = HyParView("x", random.Random(9))
    node.handle(0.0, Neighbor("p1", high=False))
    out = node.leave(1.0)
    assert ViewSend("p1", Disconnect("x", leaving=True)) in out
    assert node.handle(2.0, Neighbor("p2", high=True)) == []
    assert node.next_deadline() is None


def test_same_seed_same_effects() -> None:
    def trace(seed: int) -> list[tuple[str, ...]]:
        net = grow(seed, 12, SMALL)
        net.settle(5.0)
        return [net.nodes[n].active for n in net.nodes]

    assert trace(3) == trace(3)


# -- whole overlays -------------------------------------------------------------------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**16), n=st.integers(2, 9), any_contact=st.booleans(),
       spread=st.sampled_from([0.0, 0.002, 0.1]))
@example(seed=823, n=8, any_contact=True, spread=0.002)
def test_small_cluster_is_a_full_mesh(seed: int, n: int, any_contact: bool, spread: float) -> None:
    """n - 1 <= active_size: every node links to every other, by the same rules. Two nodes
    that joined through different contacts at about the same time may first hear of each
    other in a shuffle (seed 823, n 8: at 6 s, linked by 8 s), so a few shuffle intervals."""
    cfg = HyParViewConfig(active_size=8, shuffle_interval=2.0, fill_interval=0.5)
    net = grow(seed, n, cfg, spread=spread, any_contact=any_contact)
    net.settle(12.0)
    for name in net.nodes:
        assert set(net.nodes[name].active) == set(net.nodes) - {name}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**16), n=st.integers(6, 40), spread=st.sampled_from([0.0, 0.01, 0.2]))
def test_views_are_symmetric_bounded_and_connected(seed: int, n: int, spread: float) -> None:
    net = grow(seed, n, SMALL, spread=spread)
    net.settle(20.0)
    net.assert_symmetric()
    for name in net.nodes:
        net.check_cap(name)
        assert net.nodes[name].active, f"{name} has no active peer"
    assert net.connected()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**16), n=st.integers(10, 40), share=st.sampled_from([0.1, 0.3, 0.5]))
def test_repair_after_crashes(seed: int, n: int, share: float) -> None:
    """Crashed peers leave every active view, survivors refill theirs from the passive view
    and the overlay of survivors stays connected and symmetric."""
    net = grow(seed, n, SMALL, spread=0.01)
    net.settle(20.0)  # shuffles fill the passive views, rewiring opens islands
    for name in net.rng.sample(sorted(net.nodes), int(n * share)):
        net.crash(name)
    net.settle(10.0)
    net.assert_symmetric()
    for name in net.live():
        node = net.nodes[name]
        assert not set(node.active) & net.dead
        assert node.active
    assert net.connected()


def test_pinned_voters_stay_linked_beside_a_full_overlay() -> None:
    cfg = HyParViewConfig(active_size=3, passive_size=9, shuffle_interval=2.0, fill_interval=0.5)
    net = Overlay(11, cfg)
    voters = ["n0", "n1", "n2", "n3", "n4"]
    net.add("n0")
    for i in range(1, 30):
        net.add(f"n{i}", f"n{net.rng.randrange(i)}")
        net.run(net.now + 0.01)
    for v in voters:
        for other in voters:
            if other != v:
                net.apply(v, net.nodes[v].pin(net.now, other))
    net.settle(8.0)
    net.assert_symmetric()
    for v in voters:
        node = net.nodes[v]
        assert set(node.pinned) == set(voters) - {v}
        assert set(voters) - {v} <= set(node.neighbors())
        assert len(node.active) <= cfg.active_size
    for name in net.nodes:
        net.check_cap(name)
    assert net.connected()


def test_rejoin_says_goodbye_on_every_link_and_asks_others_with_high_priority():
    """Rule 10: links its peers may have dropped are closed at both ends, and the node
    fills again as a node left alone does, from other candidates first."""
    v = HyParView("me", random.Random(1), HyParViewConfig(active_size=2, passive_size=8))
    for peer in ("a", "b"):
        v.handle(0.0, Neighbor(peer, high=True))
    for peer in ("c", "d", "e"):
        v.learn(0.0, peer)
    assert set(v.active) == {"a", "b"}
    out = v.rejoin(1.0)
    assert v.active == ()
    goodbyes = {e.to for e in out if isinstance(e, ViewSend) and isinstance(e.msg, Disconnect)}
    downs = {e.peer for e in out if isinstance(e, NeighborDown)}
    asked = [e for e in out if isinstance(e, ViewSend) and isinstance(e.msg, Neighbor)]
    assert goodbyes == downs == {"a", "b"}
    assert len(asked) == 2 and all(e.msg.high for e in asked)
    assert {e.to for e in asked} <= {"c", "d", "e"}  # not a peer its goodbye could cross
    assert {"a", "b"} <= set(v.passive)


def test_a_peer_dropped_for_dead_and_found_alive_is_told():
    """Rule 10, the dropping end: it may still hold us, so it hears Disconnect, once; a
    peer we never held active hears nothing."""
    v = HyParView("me", random.Random(2), HyParViewConfig(active_size=3, passive_size=8))
    v.handle(0.0, Neighbor("a", high=True))
    v.peer_failed(1.0, "a")
    v.learn(1.0, "b")
    told = v.revived(2.0, "a")
    assert [(e.to, type(e.msg)) for e in told if isinstance(e, ViewSend)] == [("a", Disconnect)]
    assert "a" in v.passive
    assert v.revived(3.0, "a") == [] and v.revived(3.0, "b") == []
