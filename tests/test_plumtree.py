"""Plumtree broadcast (mesh/plumtree.py), driven directly: in-memory cores on a fixed
graph, or on a HyParView overlay, through a tiny dispatcher in virtual time."""

from __future__ import annotations

import heapq
import random
from collections import Counter

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from corec_node.mesh.hyparview import HyParView, HyParViewConfig, NeighborDown, NeighborUp, ViewSend
from corec_node.mesh.plumtree import (
    Deliver,
    Gossip,
    Graft,
    IHave,
    MessageId,
    Plumtree,
    PlumtreeConfig,
    PlumtreeEffect,
    Prune,
    RecentIds,
    TreeSend,
)


class Tree:
    """Plumtree cores on a lossless network with random delays and per-link FIFO order.
    ``cut`` links silently drop everything (no NeighborDown: only lazy repair can help)."""

    def __init__(self, seed: int, edges: set[tuple[str, str]], names: list[str],
                 config: PlumtreeConfig | None = None) -> None:
        self.rng = random.Random(seed)
        self.now = 0.0
        self.nodes = {n: Plumtree(n, config) for n in names}
        self.cut: set[frozenset[str]] = set()
        self.dead: set[str] = set()
        self.delivered: dict[str, Counter[MessageId]] = {n: Counter() for n in names}
        self.sent: Counter[type] = Counter()
        self._queue: list[tuple[float, int, str, object]] = []
        self._seq = 0
        self._link_free: dict[tuple[str, str], float] = {}
        for a, b in sorted(edges):
            self.nodes[a].neighbor_up(0.0, b)
            self.nodes[b].neighbor_up(0.0, a)

    def apply(self, src: str, effects: list[PlumtreeEffect]) -> None:
        for e in effects:
            if isinstance(e, Deliver):
                self.delivered[src][e.msg_id] += 1
                continue
            self.sent[type(e.msg)] += 1
            if frozenset((src, e.to)) in self.cut or e.to in self.dead:
                continue
            self._seq += 1
            link = (src, e.to)
            at = max(self.now + self.rng.uniform(0.001, 0.005), self._link_free.get(link, 0))
            self._link_free[link] = at
            heapq.heappush(self._queue, (at, self._seq, e.to, e.msg))

    def broadcast(self, origin: str, payload: bytes = b"hb") -> MessageId:
        msg_id, out = self.nodes[origin].broadcast(self.now, payload)
        self.apply(origin, out)
        return msg_id

    def run(self, seconds: float) -> None:
        until = self.now + seconds
        while True:
            timer = min(((t, n) for n, node in self.nodes.items() if n not in self.dead
                         and (t := node.next_deadline()) is not None), default=None)
            head = self._queue[0][0] if self._queue else None
            if head is not None and head <= until and (timer is None or head <= timer[0]):
                at, _, dst, msg = heapq.heappop(self._queue)
                self.now = max(self.now, at)
                if dst not in self.dead:
                    self.apply(dst, self.nodes[dst].handle(self.now, msg))  # type: ignore[arg-type]
            elif timer is not None and timer[0] <= until:
                self.now = max(self.now, timer[0])
                self.apply(timer[1], self.nodes[timer[1]].on_timer(self.now))
            else:
                self.now = until
                return

    def reached(self, msg_id: MessageId, origin: str) -> set[str]:
        return {n for n, c in self.delivered.items() if c[msg_id]} | {origin}


def random_graph(rng: random.Random, n: int, extra: int) -> tuple[list[str], set[tuple[str, str]]]:
    """A connected graph: a random spanning tree plus ``extra`` random edges."""
    names = [f"n{i}" for i in range(n)]
    edges: set[tuple[str, str]] = set()
    for i in range(1, n):
        j = rng.randrange(i)
        edges.add((names[j], names[i]))
    for _ in range(extra):
        a, b = rng.sample(names, 2)
        if (b, a) not in edges:
            edges.add((a, b))
    return names, edges


# -- unit tests ---------------------------------------------------------------------------


def test_gossip_is_delivered_once_and_duplicates_prune() -> None:
    node = Plumtree("x")
    for peer in ("a", "b", "c"):
        node.neighbor_up(0.0, peer)
    out = node.handle(0.0, Gossip("a", ("o", 1), b"p", 1))
    assert out[0] == Deliver(("o", 1), b"p", 1)
    assert {e.to for e in out if isinstance(e, TreeSend)} == {"b", "c"}
    out = node.handle(0.0, Gossip("b", ("o", 1), b"p", 2))
    assert out == [TreeSend("b", Prune("x"))]
    assert node.lazy_peers == ("b",) and set(node.eager_peers) == {"a", "c"}
    node.handle(0.0, Prune("c"))
    assert node.eager_peers == ("a",)


def test_lazy_peers_get_batched_ihave() -> None:
    node = Plumtree("x", PlumtreeConfig(ihave_interval=0.1))
    node.neighbor_up(0.0, "a")
    node.neighbor_up(0.0, "b")
    node.handle(0.0, Prune("b"))
    node.handle(0.0, Gossip("a", ("o", 1), b"p", 1))
    node.handle(0.01, Gossip("a", ("o", 2), b"q", 1))
    due = node.next_deadline()
    assert 0.05 <= due < 0.15  # this node's own delay: 0.5-1.5 intervals (rule 5)
    assert node.on_timer(due - 0.001) == []
    out = node.on_timer(due)
    assert out == [TreeSend("b", IHave("x", ((("o", 1), 1), (("o", 2), 1))))]
    assert node.next_deadline() is None


def test_a_periodic_payload_goes_in_full_to_eager_peers_and_is_neither_announced_nor_cached() -> None:
    """Rule 7: the next copy of a periodic payload says more; the others' announcements
    keep the tree repaired."""
    node = Plumtree("x", PlumtreeConfig(ihave_interval=0.1), periodic=lambda payload: payload.startswith(b"rows"))
    for peer in ("a", "b", "c"):
        node.neighbor_up(0.0, peer)
    node.handle(0.0, Prune("c"))
    out = node.handle(0.0, Gossip("a", ("o", 1), b"rows 1", 1))
    assert [e.to for e in out if isinstance(e, TreeSend)] == ["b"]  # in full to the eager peer
    assert node.next_deadline() is None  # and nothing queued for the lazy one
    node.handle(0.01, Gossip("a", ("o", 2), b"alert", 1))
    _, id_out = node.broadcast(0.02, b"rows 2")
    assert [e.to for e in id_out] == ["a", "b"]
    assert node.on_timer(node.next_deadline()) == [TreeSend("c", IHave("x", ((("o", 2), 1),)))]
    out = node.handle(0.5, Graft("c", (("o", 1), ("o", 2), ("x", 1))))  # nor cached for grafts
    assert out == [TreeSend("c", Gossip("x", ("o", 2), b"alert", 2))]


def test_an_id_the_lazy_peer_announced_or_sent_first_is_not_announced_to_it() -> None:
    """Rule 5: a lazy link carries one announcement of a broadcast, from the end that
    flushes first; the other end heard it meanwhile and leaves it out."""
    node = Plumtree("x", PlumtreeConfig(ihave_interval=0.1))
    for peer in ("a", "b", "c"):
        node.neighbor_up(0.0, peer)
    node.handle(0.0, Prune("b"))
    node.handle(0.0, Prune("c"))
    node.handle(0.0, Gossip("a", ("o", 1), b"p", 1))
    node.handle(0.0, Gossip("a", ("o", 2), b"q", 1))
    node.handle(0.01, IHave("b", ((("o", 1), 2),)))  # b holds o:1
    node.handle(0.02, Gossip("c", ("o", 2), b"q", 2))  # c sent o:2 in full (a duplicate)
    out = node.on_timer(node.next_deadline())
    assert [e for e in out if type(e.msg) is IHave] == [
        TreeSend("b", IHave("x", ((("o", 2), 1),))), TreeSend("c", IHave("x", ((("o", 1), 1),)))]


def test_missing_message_grafts_announcers_in_turn() -> None:
    cfg = PlumtreeConfig(missing_timeout=0.5, graft_timeout=0.25)
    node = Plumtree("x", cfg)
    for peer in ("a", "b"):
        node.neighbor_up(0.0, peer)
        node.handle(0.0, Prune(peer))
    node.handle(0.0, IHave("a", ((("o", 1), 3),)))
    node.handle(0.1, IHave("b", ((("o", 1), 2),)))
    assert node.next_deadline() == 0.5
    assert node.on_timer(0.5) == [TreeSend("a", Graft("x", (("o", 1),)))]
    assert "a" in node.eager_peers
    assert node.on_timer(0.75) == [TreeSend("b", Graft("x", (("o", 1),)))]
    out = node.handle(0.8, Gossip("b", ("o", 1), b"p", 3))
    assert out[0] == Deliver(("o", 1), b"p", 3)
    assert node.next_deadline() is None


def test_graft_is_answered_from_the_cache_and_makes_the_link_eager() -> None:
    node = Plumtree("x")
    node.neighbor_up(0.0, "a")
    node.handle(0.0, Prune("a"))
    msg_id, _ = node.broadcast(0.0, b"p")
    out = node.handle(0.2, Graft("a", (msg_id, ("o", 99))))
    assert out == [TreeSend("a", Gossip("x", msg_id, b"p", 1))]
    assert node.eager_peers == ("a",)


def test_hop_bound_stops_forwarding() -> None:
    node = Plumtree("x", PlumtreeConfig(max_hops=3))
    node.neighbor_up(0.0, "a")
    node.neighbor_up(0.0, "b")
    out = node.handle(0.0, Gossip("a", ("o", 1), b"p", 3))
    assert out == [Deliver(("o", 1), b"p", 3)]
    assert node.on_timer(1.0) == []


def test_neighbor_down_forgets_the_peer_and_its_announcements() -> None:
    node = Plumtree("x")
    node.neighbor_up(0.0, "a")
    node.handle(0.0, IHave("a", ((("o", 1), 1),)))
    node.neighbor_down(0.1, "a")
    assert node.eager_peers == () and node.lazy_peers == ()
    assert node.on_timer(1.0) == []


def test_gossip_from_a_stranger_is_delivered_but_not_made_eager() -> None:
    node = Plumtree("x")
    out = node.handle(0.0, Gossip("z", ("o", 1), b"p", 1))
    assert out == [Deliver(("o", 1), b"p", 1)]
    assert node.eager_peers == () and node.lazy_peers == ()


def test_seen_ids_live_at_least_half_their_bounds_and_at_most_the_size() -> None:
    seen = RecentIds(size=10, ttl=10.0)
    for i in range(5):  # half the size: all remembered
        seen.put(("o", i), 0.0)
    assert all(("o", i) in seen for i in range(5))
    for i in range(5, 100):
        seen.put(("o", i), 0.0)
        assert len(seen) <= 10
        assert all(("o", j) in seen for j in range(i - 4, i + 1))  # the last size / 2 ids
    seen = RecentIds(size=1000, ttl=10.0)
    seen.put(("o", 1), 0.0)
    seen.put(("o", 2), 4.9)
    assert ("o", 1) in seen
    seen.put(("o", 3), 5.0)  # ttl / 2 after the first: a new generation; the first still held
    assert ("o", 1) in seen and ("o", 2) in seen
    seen.put(("o", 4), 10.0)
    assert ("o", 1) not in seen and ("o", 2) not in seen and ("o", 3) in seen
    seen.put(("o", 5), 10.0, "payload")
    assert seen.get(("o", 5)) == "payload" and seen.get(("o", 3)) is None and seen.get(("o", 1)) is None


def test_a_node_restarted_at_the_same_address_is_heard_when_it_numbers_from_a_new_first_seq() -> None:
    peer = Plumtree("y")
    first = Plumtree("x")
    for _ in range(3):
        _, sends = first.broadcast(0.0, b"before")
        assert sends == []  # no neighbour yet: the peer hears it below
        peer.handle(0.0, Gossip("x", (first.me, first._seq), b"before", 1))
    same = Plumtree("x")  # a restart that numbers from 0 again: taken for the old news
    msg_id, _ = same.broadcast(1.0, b"after")
    assert peer.handle(1.0, Gossip("x", msg_id, b"after", 1)) != [Deliver(msg_id, b"after", 1)]
    fresh = Plumtree("x", first_seq=1 << 32)
    msg_id, _ = fresh.broadcast(1.0, b"after")
    assert peer.handle(1.0, Gossip("x", msg_id, b"after", 1)) == [Deliver(msg_id, b"after", 1)]


def test_memory_stays_bounded_over_many_broadcasts() -> None:
    cfg = PlumtreeConfig(seen_size=100, cache_size=50)
    node = Plumtree("x", cfg)
    node.neighbor_up(0.0, "a")
    for i in range(1000):
        node.handle(float(i), Gossip("a", ("o", i), b"p", 1))
    assert 50 <= len(node._seen) <= 100  # size bound: between half and all of seen_size
    assert 15 <= len(node._cache) <= 30  # age bound: cache_ttl 30 s at one broadcast a second
    assert node.delivered == 1000


# -- whole trees ---------------------------------------------------------------------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**16), n=st.integers(2, 40), extra=st.integers(0, 60),
       origins=st.lists(st.integers(0, 39), min_size=1, max_size=4))
def test_every_node_delivers_each_broadcast_exactly_once(
    seed: int, n: int, extra: int, origins: list[int]
) -> None:
    rng = random.Random(seed)
    names, edges = random_graph(rng, n, extra)
    net = Tree(seed, edges, names)
    ids = []
    for o in origins:
        origin = names[o % n]
        ids.append((net.broadcast(origin), origin))
        net.run(rng.choice([0.0, 0.003, 1.0]))
    net.run(5.0)
    for msg_id, origin in ids:
        for name in names:
            assert net.delivered[name][msg_id] == (0 if name == origin else 1)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**16), n=st.integers(5, 40), extra=st.integers(0, 80))
def test_settled_tree_sends_n_minus_1_full_messages(seed: int, n: int, extra: int) -> None:
    """After the first broadcasts prune the cycles, a broadcast costs N - 1 Gossip frames
    and at most one IHave frame per remaining link direction."""
    names, edges = random_graph(random.Random(seed), n, extra)
    net = Tree(seed, edges, names)
    for _ in range(3):
        net.broadcast("n0")
        net.run(2.0)
    net.sent.clear()
    msg_id = net.broadcast("n0")
    net.run(2.0)
    assert net.reached(msg_id, "n0") == set(names)
    assert net.sent[Gossip] == n - 1
    assert net.sent[Graft] == net.sent[Prune] == 0
    assert net.sent[IHave] <= 2 * len(edges) - (n - 1)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**16), n=st.integers(6, 40), drops=st.integers(1, 3))
def test_lazy_repair_delivers_when_eager_links_are_cut(seed: int, n: int, drops: int) -> None:
    """Silently cut links of the settled tree: IHaves over the lazy links reveal the gap,
    grafts pull the message through, every node still delivers exactly once."""
    rng = random.Random(seed)
    names, edges = random_graph(rng, n, n)  # enough cycles that the cuts leave it connected
    net = Tree(seed, edges, names)
    for _ in range(2):
        net.broadcast("n0")
        net.run(2.0)
    tree = sorted({(a, b) for a in names for b in net.nodes[a].eager_peers if a < b})
    for a, b in rng.sample(tree, min(drops, len(tree))):
        net.cut.add(frozenset((a, b)))
    live_edges = {e for e in edges if frozenset(e) not in net.cut}
    assume(connected(names, live_edges))
    msg_id = net.broadcast("n0")
    net.run(10.0)
    assert net.reached(msg_id, "n0") == set(names)
    assert all(net.delivered[n][msg_id] <= 1 for n in names)
    assert net.sent[Graft] >= 1


def connected(names: list[str], edges: set[tuple[str, str]]) -> bool:
    adj: dict[str, set[str]] = {n: set() for n in names}
    for a, b in edges:
        adj[a].add(b)
        adj[b].add(a)
    seen, todo = {names[0]}, [names[0]]
    while todo:
        for m in adj[todo.pop()] - seen:
            seen.add(m)
            todo.append(m)
    return len(seen) == len(names)


# -- on a HyParView overlay -----------------------------------------------------------------


def test_broadcast_on_hyparview_reaches_survivors_after_crashes() -> None:
    """The two cores composed as the shell will: NeighborUp/Down from the overlay feed the
    tree; half the nodes crash, links break, views repair, a broadcast reaches everyone."""
    rng = random.Random(5)
    hcfg = HyParViewConfig(active_size=4, passive_size=24, shuffle_interval=2.0,
                           fill_interval=0.5)
    names = [f"n{i}" for i in range(60)]
    views = {n: HyParView(n, random.Random(n), hcfg) for n in names}
    trees = {n: Plumtree(n) for n in names}
    dead: set[str] = set()
    delivered: Counter[tuple[str, MessageId]] = Counter()
    queue: list[tuple[float, int, str, object]] = []
    seq = 0
    now = 0.0

    def carry(src: str, effects: list) -> None:
        nonlocal seq
        for e in effects:
            if isinstance(e, NeighborUp):
                carry(src, trees[src].neighbor_up(now, e.peer))
            elif isinstance(e, NeighborDown):
                carry(src, trees[src].neighbor_down(now, e.peer))
            elif isinstance(e, Deliver):
                delivered[(src, e.msg_id)] += 1
            elif isinstance(e, (ViewSend, TreeSend)) and e.to not in dead:
                seq += 1
                heapq.heappush(queue, (now + rng.uniform(0.001, 0.005), seq, e.to, e.msg))

    def run(seconds: float) -> None:
        nonlocal now
        until = now + seconds
        while True:
            timers = [(t, n, c) for n in names if n not in dead for c in (views[n], trees[n])
                      if (t := c.next_deadline()) is not None]
            timer = min(timers, key=lambda x: x[0], default=None)
            if queue and queue[0][0] <= until and (timer is None or queue[0][0] <= timer[0]):
                at, _, dst, msg = heapq.heappop(queue)
                now = max(now, at)
                if dst in dead:
                    continue
                if isinstance(msg, str):
                    carry(dst, views[dst].peer_failed(now, msg))
                elif isinstance(msg, (Gossip, IHave, Graft, Prune)):
                    carry(dst, trees[dst].handle(now, msg))
                else:
                    carry(dst, views[dst].handle(now, msg))
            elif timer is not None and timer[0] <= until:
                now = max(now, timer[0])
                carry(timer[1], timer[2].on_timer(now))
            else:
                now = until
                return

    for i, name in enumerate(names[1:], start=1):
        carry(name, views[name].join(now, names[rng.randrange(i)]))
        run(0.02)
    run(5.0)
    msg_id, out = trees["n0"].broadcast(now, b"before")
    carry("n0", out)
    run(2.0)
    assert all(delivered[(n, msg_id)] == 1 for n in names[1:])
    for name in rng.sample(names[1:], 30):
        dead.add(name)
    for name in names:
        if name not in dead:
            for peer in views[name].neighbors():
                if peer in dead:
                    seq += 1
                    heapq.heappush(queue, (now + 0.05, seq, name, peer))
    run(10.0)
    msg_id, out = trees["n0"].broadcast(now, b"after")
    carry("n0", out)
    run(3.0)
    survivors = [n for n in names[1:] if n not in dead]
    assert all(delivered[(n, msg_id)] == 1 for n in survivors)
    assert all(len(views[n].active) <= hcfg.active_size for n in names)
