"""Overlay at scale: the HyParView (mesh/hyparview.py) and Plumtree (mesh/plumtree.py)
cores composed as a node will compose them, on a virtual network in virtual time.

    python bench/overlay.py [--nodes 100,1000,10000] [--seed 1] [--quick] [--json]

For each cluster size N, one deterministic run (one heap of events: messages and each
node's next timer; no per-tick scan of all nodes):
  1. bootstrap: nodes join one after the other (200 a second) through a random joined
     contact; the first 5 nodes are "voters" and pin each other (direct links outside the
     cap); then the overlay settles while node 0 (the leader) broadcasts a heartbeat every
     PERIOD (1 s) and every node shuffles every 10 s (``HyParViewConfig.shuffle_interval``);
  2. steady state: every message sent over a window (views and tree, all types) gives
     ``msgs/node/s``; ``gossip/bcast`` is full Gossip frames per heartbeat / (N - 1), 1.0
     once the tree is pruned;
  3. joins: a few fresh nodes join one at a time; ``join rounds`` is the number of
     protocol periods (PERIOD) from ``join`` until the joiner is in someone's active view
     and its own first broadcast has reached every node (``join ms``: the same in virtual
     milliseconds, the worst sample; ``hops``: the most hops that broadcast took);
  4. ``peers``: the largest active view + pinned peers of any node (sampled after each
     phase);
  5. crash: half the nodes crash at once (the leader survives); survivors learn of a dead
     neighbour 1-2 s later (a link timeout), repair their views for 30 s while heartbeats
     go on, then node 0 broadcasts: ``reached`` is the share of survivors it reached,
     ``connected`` the share of survivors in the largest component of the overlay;
     ``reached0`` is a broadcast sent 50 ms after the crash, before any repair (only
     Plumtree's lazy repair can help it).
Then ``RSS MB`` (peak of this process so far: sizes run smallest first) and ``wall s``.
Links: 1-5 ms one way, lossless, FIFO per link (as TCP). Figures only, no pass/fail;
``--quick`` shortens the virtual windows (settle 10 s, window 10 s, repair 20 s).
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import random
import resource
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from corec_node.mesh.hyparview import (  # noqa: E402
    HyParView,
    HyParViewConfig,
    NeighborDown,
    NeighborUp,
    ViewSend,  # noqa: E402
)
from corec_node.mesh.plumtree import (  # noqa: E402
    Deliver,
    Gossip,
    Graft,
    IHave,
    MessageId,
    Plumtree,
    PlumtreeConfig,
    Prune,
    TreeSend,  # noqa: E402
)

PERIOD = 1.0  # protocol period: the leader's heartbeat interval
VOTERS = 5  # nodes 0..4 pin each other
JOIN_RATE = 200.0  # bootstrap joins per virtual second
DELAY = (0.001, 0.005)  # one-way link delay, uniform
DETECT = (1.0, 2.0)  # a survivor learns a neighbour crashed after this long
JOIN_SAMPLES = 5
TREE_TYPES = (Gossip, IHave, Graft, Prune)

_MSG, _TIMER, _FAIL, _CALL = 0, 1, 2, 3


@dataclass(slots=True)
class _Join:
    started: float
    in_view: float | None = None
    announced: MessageId | None = None
    everywhere: float | None = None


class OverlaySim:
    """N nodes, each a HyParView and a Plumtree core, on one event heap."""

    def __init__(self, n: int, seed: int) -> None:
        self.rng = random.Random(seed)
        self.hcfg = HyParViewConfig()
        self.pcfg = PlumtreeConfig()
        self.names = [f"n{i}" for i in range(n)]
        self.index = {name: i for i, name in enumerate(self.names)}
        self.views = [HyParView(name, random.Random(f"{seed}/{name}"), self.hcfg)
                      for name in self.names]
        self.trees = [Plumtree(name, self.pcfg) for name in self.names]
        self.up = [False] * n
        self.dead = [False] * n
        self.now = 0.0
        self._heap: list[tuple[float, int, int, int, object]] = []
        self._seq = 0
        self._timer_at: list[float | None] = [None] * n
        self._link_free: dict[tuple[int, int], float] = {}
        self.sent: Counter[type] = Counter()
        self.reach: dict[MessageId, list] = {}  # id -> [deliveries, last time, max hops]
        self.joins: dict[int, _Join] = {}
        self.max_peers = 0

    # -- plumbing ------------------------------------------------------------------------

    def _push(self, at: float, kind: int, node: int, payload: object) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (at, self._seq, kind, node, payload))

    def _rearm(self, i: int) -> None:
        a = self.views[i].next_deadline()
        b = self.trees[i].next_deadline()
        d = a if b is None else (b if a is None else min(a, b))
        cur = self._timer_at[i]
        if d is not None and (cur is None or d < cur):
            self._timer_at[i] = d
            self._push(max(d, self.now), _TIMER, i, d)

    def carry(self, i: int, effects: list) -> None:
        now = self.now
        for e in effects:
            t = type(e)
            if t is ViewSend or t is TreeSend:
                self.sent[type(e.msg)] += 1
                j = self.index[e.to]
                if self.dead[j]:
                    continue
                link = (i, j)
                at = max(now + self.rng.uniform(*DELAY), self._link_free.get(link, 0.0))
                self._link_free[link] = at
                self._push(at, _MSG, j, e.msg)
            elif t is NeighborUp:
                self.carry(i, self.trees[i].neighbor_up(now, e.peer))
                self._note_up(i, e.peer)
            elif t is NeighborDown:
                self.carry(i, self.trees[i].neighbor_down(now, e.peer))
            elif t is Deliver:
                r = self.reach.get(e.msg_id)
                if r is not None:
                    r[0] += 1
                    r[1] = now
                    r[2] = max(r[2], e.hops)
                    self._check_join_done(e.msg_id, r)

    def run(self, until: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= until:
            at, _, kind, i, payload = heapq.heappop(heap)
            self.now = at
            if self.dead[i]:
                continue
            if kind == _MSG:
                msg = payload
                core = self.trees[i] if isinstance(msg, TREE_TYPES) else self.views[i]
                self.carry(i, core.handle(at, msg))  # type: ignore[arg-type]
            elif kind == _TIMER:
                if self._timer_at[i] != payload:
                    continue  # superseded by an earlier one
                self._timer_at[i] = None
                self.carry(i, self.views[i].on_timer(at))
                self.carry(i, self.trees[i].on_timer(at))
            elif kind == _FAIL:
                self.carry(i, self.views[i].peer_failed(at, payload))  # type: ignore[arg-type]
            else:
                payload(i)  # type: ignore[operator]
            self._rearm(i)
        self.now = max(self.now, until)

    # -- actions ---------------------------------------------------------------------------

    def start(self, i: int, contact: int | None) -> None:
        self.up[i] = True
        view = self.views[i]
        if i < VOTERS:
            for v in range(VOTERS):
                if v != i:
                    self.carry(i, view.pin(self.now, self.names[v]))
        if contact is not None:
            self.carry(i, view.join(self.now, self.names[contact]))
        self._rearm(i)

    def broadcast(self, origin: int, payload: bytes, track: bool = True) -> MessageId:
        msg_id, out = self.trees[origin].broadcast(self.now, payload)
        if track:
            self.reach[msg_id] = [0, self.now, 0]
        self.carry(origin, out)
        self._rearm(origin)
        return msg_id

    def heartbeats(self, start: float, end: float) -> int:
        """Schedule the leader's heartbeats over [start, end)."""
        count = 0
        t = start
        while t < end:
            self._push(t, _CALL, 0, lambda i: self.broadcast(i, b"hb", track=False))
            t += PERIOD
            count += 1
        return count

    def crash(self, share: float) -> list[int]:
        victims = self.rng.sample(range(1, len(self.names)), int(len(self.names) * share))
        for v in victims:
            self.dead[v] = True
        for i, view in enumerate(self.views):
            if self.dead[i] or not self.up[i]:
                continue
            for peer in view.neighbors():
                if self.dead[self.index[peer]]:
                    self._push(self.now + self.rng.uniform(*DETECT), _FAIL, i, peer)
        return victims

    # -- joins -------------------------------------------------------------------------------

    def _note_up(self, i: int, peer: str) -> None:
        j = self.index[peer]
        if j in self.joins and self.joins[j].in_view is None:
            self.joins[j].in_view = self.now
        join = self.joins.get(i)
        if join is not None and join.announced is None:
            join.announced = self.broadcast(i, b"alive")

    def _check_join_done(self, msg_id: MessageId, r: list) -> None:
        origin = self.index[msg_id[0]]
        join = self.joins.get(origin)
        if join is not None and join.announced == msg_id and join.everywhere is None:
            if r[0] >= self.live_count() - 1:
                join.everywhere = self.now

    # -- reading -----------------------------------------------------------------------------

    def live_count(self) -> int:
        return sum(1 for i in range(len(self.names)) if self.up[i] and not self.dead[i])

    def sample_peers(self) -> int:
        peers = max(len(set(v.active) | set(v.pinned)) for i, v in enumerate(self.views)
                    if self.up[i] and not self.dead[i])
        self.max_peers = max(self.max_peers, peers)
        return peers

    def largest_component(self) -> int:
        live = [i for i in range(len(self.names)) if self.up[i] and not self.dead[i]]
        seen = [False] * len(self.names)
        best = 0
        for s in live:
            if seen[s]:
                continue
            seen[s] = True
            stack, size = [s], 0
            while stack:
                x = stack.pop()
                size += 1
                for peer in self.views[x].neighbors():
                    j = self.index[peer]
                    if not seen[j] and not self.dead[j]:
                        seen[j] = True
                        stack.append(j)
            best = max(best, size)
        return best


def measure(n: int, seed: int, quick: bool) -> dict[str, float | int]:
    settle, window, repair = (10.0, 10.0, 20.0) if quick else (20.0, 30.0, 30.0)
    wall0 = time.perf_counter()
    joiners = JOIN_SAMPLES if n > 2 * JOIN_SAMPLES else 1
    base = n - joiners  # the last ``joiners`` nodes join later, one at a time, measured
    sim = OverlaySim(n, seed)
    sim.start(0, None)
    for i in range(1, base):
        at = i / JOIN_RATE
        contact = sim.rng.randrange(i)
        sim._push(at, _CALL, i, lambda i, c=contact: sim.start(i, c))
    boot_end = base / JOIN_RATE + 1.0
    sim.run(boot_end)
    sim.sample_peers()
    t = boot_end
    sim.heartbeats(t, t + settle + window + joiners * 3 * PERIOD + repair + 10.0)
    sim.run(t + settle)
    sim.sample_peers()

    sim.sent.clear()
    w0 = sim.now
    sim.run(w0 + window)
    span = sim.now - w0
    total = sum(sim.sent.values())
    msgs_per_node_s = total / (base * span)
    beats = round(span / PERIOD)
    gossip_share = sim.sent[Gossip] / max(1, beats) / max(1, base - 1)
    sim.sample_peers()

    for k in range(joiners):
        j = base + k
        sim.joins[j] = _Join(sim.now)
        contact = sim.rng.randrange(base + k)
        sim._push(sim.now, _CALL, j, lambda i, c=contact: sim.start(i, c))
        sim.run(sim.now + 3 * PERIOD)
    sim.sample_peers()
    rounds, join_ms, join_hops = 0, 0.0, 0
    for join in sim.joins.values():
        if join.everywhere is None or join.announced is None:
            rounds = -1  # never everywhere within 3 periods
            continue
        took = join.everywhere - join.started
        rounds = max(rounds, math.ceil(took / PERIOD)) if rounds >= 0 else rounds
        join_ms = max(join_ms, took * 1000)
        join_hops = max(join_hops, sim.reach[join.announced][2])

    sim.crash(0.5)
    survivors = sim.live_count()
    sim.run(sim.now + 0.05)
    early = sim.broadcast(0, b"after-crash")
    sim.run(sim.now + repair)
    late = sim.broadcast(0, b"after-repair")
    sim.run(sim.now + 5.0)
    sim.sample_peers()
    return {
        "nodes": n,
        "join_rounds": rounds,
        "join_ms": round(join_ms, 1),
        "join_hops": join_hops,
        "max_peers": sim.max_peers,
        "msgs_per_node_per_s": round(msgs_per_node_s, 2),
        "gossip_per_bcast_per_node": round(gossip_share, 3),
        "reached_before_repair": round(sim.reach[early][0] / (survivors - 1), 4),
        "reached_after_repair": round(sim.reach[late][0] / (survivors - 1), 4),
        "connected_after_repair": round(sim.largest_component() / survivors, 4),
        "rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "wall_s": round(time.perf_counter() - wall0, 1),
    }


COLUMNS = [
    ("nodes", "nodes", 6), ("join_rounds", "join rounds", 11), ("join_ms", "join ms", 8),
    ("join_hops", "hops", 5), ("max_peers", "peers", 6), ("msgs_per_node_per_s", "msgs/node/s", 11),
    ("gossip_per_bcast_per_node", "gossip/bcast", 12), ("reached_before_repair", "reached0", 9),
    ("reached_after_repair", "reached", 8), ("connected_after_repair", "connected", 9),
    ("rss_mb", "RSS MB", 7), ("wall_s", "wall s", 7),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", default="100,1000,10000", help="comma-separated sizes")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="shorter virtual windows")
    ap.add_argument("--json", action="store_true", help="one JSON object per size only")
    args = ap.parse_args()
    sizes = sorted(int(s) for s in args.nodes.split(","))
    h, p = HyParViewConfig(), PlumtreeConfig()
    if not args.json:
        print(f"active_size {h.active_size} (+{VOTERS - 1} pinned voters), passive_size "
              f"{h.passive_size}, shuffle every {h.shuffle_interval:g} s, heartbeat every "
              f"{PERIOD:g} s from one leader, ihave every {p.ihave_interval:g} s, "
              f"max_hops {p.max_hops}, link 1-5 ms, seed {args.seed}"
              f"{', quick' if args.quick else ''}")
        print(" ".join(f"{title:>{w}}" for _, title, w in COLUMNS), flush=True)
    for n in sizes:
        row = measure(n, args.seed, args.quick)
        if args.json:
            print(json.dumps(row), flush=True)
        else:
            print(" ".join(f"{row[key]:>{w}}" for key, _, w in COLUMNS), flush=True)


if __name__ == "__main__":
    main()
