"""A simulated cluster: the REAL mesh core (``mesh/core.py``), the same object the node
shell drives, over a virtual network (``network.py``) and a virtual clock.

Everything is driven by one event queue ordered by ``(time, sequence number)``: ties go to
whatever was scheduled first, so the order never depends on hashing or on the host. All
randomness comes from ``random.Random`` objects derived from the seed (one per node
incarnation, one for the network, one for the cluster's own choices), so the same seed
gives the same run, byte for byte (``trace_hash``).

What each simulated node does is what the shell does: it drives one ``mesh/core.py``
``MeshCore`` (membership and election composed by the core's rules, the same object
``shell/control_plane.py`` drives) and carries out its effects:
- ``Send`` goes to the node whose direct address it names; ``Broadcast`` goes to every node
  subscribed to the sender's PUB stream (a node subscribes when it learns a member, alive,
  suspect or dead, and unsubscribes when it leaves), each copy lost or delayed on its own;
- broadcasts are numbered per sender and topic and run through the real SequenceTracker:
  duplicates are dropped and a gap on the ``mbr`` topic is passed to the core;
- ``PersistVote`` is "written to disk" at once;
- the core ticks every ``tick_interval`` (20 ms), each node at its own phase; or, with
  ``idle_period``, as the mesh process ticks: when its core's next deadline is due
  (``MeshCore.next_deadline``), at most every ``tick_interval``, at least every ``idle_period``,
  and sooner after an input that brought a deadline nearer.
With ``overlay`` (``mesh/overlay.py``) each core is wrapped in an ``OverlayMesh``: no node
subscribes to any PUB stream, broadcasts travel Plumtree's tree as direct messages between
neighbours, and ``SimNode.neighbors`` holds the links HyParView keeps open.
A crash loses everything but the persisted vote and the member snapshot (taken at the
crash: the real shell writes it at most a second late); a restart is ``MeshCore.start``
with that snapshot and the node's join addresses, as the shell starts.

Invariants (``invariants.py``) are checked on every vote and every leadership, i.e. at
every step where they could break; convergence after faults is ``await_convergence``.
"""

from __future__ import annotations

import hashlib
import heapq
import random
from collections import Counter
from collections.abc import Callable, Iterable, Sequence

from corec_node.mesh.core import MeshCore
from corec_node.mesh.effects import (
    Broadcast,
    ConfigCommitted,
    Effect,
    LeaderChanged,
    MemberChanged,
    MemberReaped,
    NameConflict,
    PersistConfig,
    PersistVote,
    Send,
)
from corec_node.mesh.election import LEADER, Election, ElectionConfig
from corec_node.mesh.hyparview import NeighborDown, NeighborUp, ViewSend
from corec_node.mesh.member import Member, MemberTable, SharedRecords
from corec_node.mesh.membership import Membership, MembershipConfig
from corec_node.mesh.overlay import OVERLAY_FEATURE, OverlayConfig, OverlayMesh
from corec_node.mesh.plumtree import TreeSend
from corec_node.mesh.voters import Configuration, VoterConfig
from corec_node.sim.invariants import Invariants, InvariantViolation
from corec_node.sim.network import Network, NetworkConfig
from corec_node.wire.envelope import FEATURES, PROTOCOL
from corec_node.wire.messages import (
    Gossip,
    Heartbeat,
    MemberState,
    MemberStatus,
)
from corec_node.wire.sequence import SeqEvent, SequenceTracker
from corec_node.wire.topics import FIXED_TOPICS, TOPIC_MEMBERSHIP

__all__ = ["Cluster", "SimNode"]

ALIVE, SUSPECT, DEAD, LEFT = (
    MemberStatus.ALIVE,
    MemberStatus.SUSPECT,
    MemberStatus.DEAD,
    MemberStatus.LEFT,
)
BROADCAST_TOPICS = {Gossip: FIXED_TOPICS[Gossip], Heartbeat: FIXED_TOPICS[Heartbeat]}
LEAVE_SPREAD = 1.0  # the shell's leave (shell/commands.py): keep ticking 1 s so the "left" gossip goes out, then stop

_DELIVER, _TICK, _CALL = 0, 1, 2


class SimNode:
    """One simulated process. ``core`` (and its ``membership`` and ``election``) are None
    while it is down."""

    __slots__ = (
        "addr",
        "config",
        "core",
        "election",
        "epoch",
        "features",
        "join",
        "last_tick",
        "left",
        "membership",
        "next_tick",
        "name",
        "neighbors",
        "pub",
        "saved",
        "seq",
        "starts",
        "subs",
        "ticket",
        "tracker",
        "up",
        "vote",
    )

    def __init__(self, name: str, addr: str, pub: str) -> None:
        self.name = name
        self.addr = addr
        self.pub = pub
        self.up = False
        self.left = False
        self.epoch = (
            0  # bumped on crash and restart: in-flight messages to the old process are lost
        )
        self.core: MeshCore | OverlayMesh | None = None
        self.membership: Membership | None = None  # core.membership, for reading
        self.election: Election | None = None  # core.election, for reading
        self.tracker = SequenceTracker()
        self.seq: dict[bytes, int] = {}
        self.vote: tuple[int, str | None] = (0, None)  # what the shell persisted (survives crashes)
        self.config: Configuration | None = None  # the voter configuration on "disk"
        self.saved: list[MemberState] = []  # the member snapshot on "disk"
        self.subs: dict[str, None] = {}  # publishers this node's SUB socket is connected to
        self.neighbors: dict[str, None] = {}  # with the overlay: addresses it holds a link to
        self.join: list[str] = []  # config.mesh.join
        self.features: tuple[str, ...] = FEATURES  # what it announces (an older build: fewer)
        self.starts = 0
        # timer-driven ticks (``Cluster(idle_period=...)``): only the tick event holding the
        # current ticket runs; an earlier deadline after an input takes a new ticket
        self.ticket = 0
        self.next_tick = 0.0
        self.last_tick = 0.0

    def __repr__(self) -> str:
        state = "up" if self.up else ("left" if self.left else "down")
        return f"<SimNode {self.name} {state} epoch={self.epoch}>"


class Cluster:
    """``Cluster(50, seed=1)``; ``bootstrap()``; ``run(10)``; faults; views; invariants."""

    def __init__(
        self,
        size: int | Sequence[str],
        seed: int = 0,
        *,
        network: NetworkConfig | None = None,
        membership: MembershipConfig | None = None,
        election: ElectionConfig | None = None,
        voters: VoterConfig | None = None,
        tick_interval: float = 0.02,
        idle_period: float | None = None,
        overlay: OverlayConfig | None = None,
        trace: bool = False,
        strict: bool = True,
    ) -> None:
        names = [f"n{i:04d}" for i in range(size)] if isinstance(size, int) else list(size)
        if len(set(names)) != len(names):
            raise ValueError("node names must be unique")
        self.seed = seed
        self.rng = random.Random(f"{seed}/cluster")
        self.net = Network(network or NetworkConfig(), random.Random(f"{seed}/net"))
        self.mcfg = membership or MembershipConfig.lan()
        self.ecfg = election or ElectionConfig.lan()
        self.vcfg = voters or VoterConfig()
        self.tick_interval = tick_interval
        # None: every node ticks every tick_interval. A number: as the mesh process does
        # (shell/mesh_process.py), a node ticks when its core's next deadline is due, at most
        # every tick_interval and at least every idle_period (``stats["ticks"]`` counts them)
        self.idle_period = idle_period
        self.overlay = overlay
        self._shared: SharedRecords | None = None  # bootstrap("formed"): the records every node starts with
        self._known: dict[str, str] = {}  # and address -> name of them
        self.now = 0.0
        self.invariants = Invariants(strict=strict)
        self.stats: Counter[str] = Counter()
        self.sent: Counter[str] = Counter()  # messages sent (a broadcast counts once), by type
        self.contacts: dict[str, set[str]] | None = None  # a dict: node -> addresses it sent to directly
        self.leaderships: list[
            tuple[float, str, int]
        ] = []  # (time, node, term) each time a node became leader
        self.nodes: dict[str, SimNode] = {}
        self._by_addr: dict[str, SimNode] = {}
        self._subscribers: dict[str, dict[str, SimNode]] = {}  # publisher -> nodes subscribed to it
        for i, name in enumerate(names):
            node = SimNode(
                name,
                f"10.{i // 65536}.{i // 256 % 256}.{i % 256}:7400",
                f"10.{i // 65536}.{i // 256 % 256}.{i % 256}:7401",
            )
            self.nodes[name] = node
            self._by_addr[node.addr] = node
            self._subscribers[name] = {}
        self._heap: list[tuple] = []
        self._seq = 0
        self._trace = hashlib.blake2b(digest_size=16) if trace else None
        self._watch: dict[tuple[str, MemberStatus], dict[str, float]] = {}
        self.booted: dict[
            str, None
        ] = {}  # nodes bootstrap() started or scheduled; the rest are spares
        self.events = 0

    # -- scheduling -------------------------------------------------------------------

    def _push(self, when: float, kind: int, *payload: object) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, kind, *payload))

    def at(self, when: float, fn: Callable[[], object], label: str = "call") -> None:
        """Run ``fn()`` at virtual time ``when`` (a fault, a measurement)."""
        self._push(max(when, self.now), _CALL, fn, label)

    def after(self, delay: float, fn: Callable[[], object], label: str = "call") -> None:
        self.at(self.now + delay, fn, label)

    def run(self, seconds: float) -> None:
        self.run_until_time(self.now + seconds)

    def run_until_time(self, end: float) -> None:
        heap = self._heap
        pop = heapq.heappop
        trace = self._trace
        while heap and heap[0][0] <= end:
            ev = pop(heap)
            self.now = ev[0]
            self.events += 1
            kind = ev[2]
            if kind == _DELIVER:
                self._deliver(ev)
            elif kind == _TICK:
                node = ev[3]
                if node.up and node.epoch == ev[4] and ev[5] == node.ticket:
                    self._tick(node)
            else:
                if trace is not None:
                    trace.update(f"{self.now!r} {ev[4]}\n".encode())
                ev[3]()
        self.now = max(self.now, end)

    def run_until(
        self, condition: Callable[[], bool], timeout: float, every: float = 0.1
    ) -> float | None:
        """Run until ``condition()`` holds (checked every ``every`` virtual seconds); the
        virtual seconds it took, or None if it did not hold within ``timeout``."""
        start = self.now
        while True:
            if condition():
                return self.now - start
            left = timeout - (self.now - start)
            if left <= 1e-9:  # not 0: a float remainder too small to move the clock loops forever
                return None
            self.run(min(every, left))

    def await_convergence(self, within: float, every: float = 0.25) -> float:
        """Liveness: every live node agrees on the members and the leader within ``within``
        virtual seconds; raises InvariantViolation otherwise. Returns the time it took."""
        took = self.run_until(self.converged, within, every)
        if took is None:
            raise InvariantViolation(
                f"t={self.now:.3f}: no convergence within {within} s: {self.describe()}"
            )
        return took

    # -- life of nodes ----------------------------------------------------------------

    def bootstrap(
        self, mode: str = "snapshot", stagger: float = 0.01, names: Iterable[str] | None = None
    ) -> None:
        """Start nodes. ``snapshot``: every node starts as if restarted from the snapshot of
        a formed cluster (cheap, no join storm). ``formed``: as if the cluster had been
        running: every node holds every member with its build, so nobody announces or
        pushes (what sizing a fleet of thousands needs; the overlay still makes its
        views, each node joining through a member drawn at random). ``join``: the first
        node starts alone and each next one joins through the first three (its configured
        seeds), ``stagger`` seconds apart (what operators do)."""
        chosen = [self.nodes[n] for n in names] if names is not None else list(self.nodes.values())
        for node in chosen:
            self.booted[node.name] = None
        if mode in ("snapshot", "formed"):
            formed = mode == "formed"
            states = [MemberState(n.name, n.addr, n.pub, 0, ALIVE) for n in chosen]
            if formed:  # one record of each member, with its build, shared by every node
                table = MemberTable()
                for n in chosen:
                    build = ("sim", PROTOCOL, self._features(n), "", (), ())
                    table.add(Member(n.name, n.addr, n.pub, 0, ALIVE, self.now, build))
                self._shared = SharedRecords(table)
                self._known = {n.addr: n.name for n in chosen}
            for node in chosen:  # its peers, not itself: a record of its own would raise its
                node.saved = [s for s in states if s.name != node.name]  # inc (rule 15)
                self.start(node.name, formed=formed)
        elif mode == "join":
            seeds = [n.addr for n in chosen[:3]]
            self.start(chosen[0].name)
            for i, node in enumerate(chosen[1:], start=1):
                node.join = [a for a in seeds if a != node.addr]
                self.at(
                    self.now + i * stagger,
                    lambda name=node.name: self.start(name),
                    f"start {node.name}",
                )
        else:
            raise ValueError(f"bootstrap mode must be 'snapshot', 'formed' or 'join', got {mode!r}")

    def start(self, name: str, *, formed: bool = False) -> None:
        """Start (or restart) a node as the shell does, from its persisted vote and snapshot
        (``formed``: see ``bootstrap``)."""
        node = self.nodes[name]
        if node.up:
            raise ValueError(f"{name} is already up")
        if node.left:
            raise ValueError(f"{name} left the cluster; it cannot restart")
        now = self.now
        node.epoch += 1
        node.starts += 1
        node.up = True
        rng = random.Random(f"{self.seed}/{name}/{node.epoch}")
        term, voted_for = node.vote
        core = MeshCore(
            name, node.addr, node.pub, self.mcfg, self.ecfg, rng, now, term=term,
            voted_for=voted_for, config=node.config, voter_config=self.vcfg,
            build=("sim", PROTOCOL, self._features(node), ""), shared=self._shared if formed else None,
        )
        node.core, node.membership, node.election = core, core.membership, core.election
        node.neighbors = {}
        if self.overlay is not None:
            node.core = OverlayMesh(core, node.addr, self.overlay,
                                    random.Random(f"{self.seed}/{name}/{node.epoch}/overlay"), now,
                                    first_seq=node.epoch << 32,  # each life its own ids
                                    known=self._known if formed else None)
        node.tracker = SequenceTracker()
        node.seq = {}
        if formed and self.overlay is None:  # the full mesh: its SUB follows every member's PUB already
            for other in self._shared.table if self._shared is not None else ():
                if other != name and other in self._subscribers:
                    node.subs[other] = None
                    self._subscribers[other][name] = node
        self._apply(node, node.core.start(node.saved, node.join, now))
        node.last_tick = now
        self._schedule(node, now + self.rng.random() * self.tick_interval)

    def _features(self, node: SimNode) -> tuple[str, ...]:
        """What the node announces: with the overlay, that it speaks it (overlay rule 10)."""
        return (*node.features, OVERLAY_FEATURE) if self.overlay is not None else node.features

    def crash(self, name: str) -> None:
        """Kill -9: only the persisted vote and the member snapshot survive."""
        node = self.nodes[name]
        if not node.up:
            return
        assert node.membership is not None
        node.saved = node.membership.snapshot()
        self._stop(node)
        self.stats["crashes"] += 1

    def restart(self, name: str) -> None:
        if not self.nodes[name].up:
            self.start(name)

    def leave(self, name: str) -> None:
        """Graceful leave, as ``corec-node leave``: gossip "left", keep ticking 1 s, stop."""
        node = self.nodes[name]
        if not node.up or node.membership is None:
            return
        assert node.core is not None
        self._apply(node, node.core.leave(self.now))
        self._nudge(node)
        epoch = node.epoch

        def stop() -> None:
            if node.up and node.epoch == epoch:
                assert node.membership is not None
                node.saved = node.membership.snapshot()
                self._stop(node)
                node.left = True

        self.after(LEAVE_SPREAD, stop, f"stop {name}")

    def _stop(self, node: SimNode) -> None:
        node.up = False
        node.epoch += 1
        for pub in node.subs:
            self._subscribers[pub].pop(node.name, None)
        node.subs.clear()
        node.neighbors.clear()
        node.core = node.membership = node.election = None

    # -- network faults ---------------------------------------------------------------

    def partition(self, *groups: Iterable[str]) -> None:
        self.net.partition(*groups)

    def isolate(self, name: str) -> None:
        self.net.isolate(name)

    def heal(self) -> None:
        self.net.heal()

    # -- the shell --------------------------------------------------------------------

    def _tick(self, node: SimNode) -> None:
        now = self.now
        assert node.core is not None
        effects = node.core.tick(now)
        if effects:
            if self._trace is not None:
                self._trace.update(f"{now!r} tick {node.name} {effects!r}\n".encode())
            self._apply(node, effects)
        self.stats["ticks"] += 1
        if not node.up:
            return
        node.last_tick = now
        if self.idle_period is None:
            self._schedule(node, now + self.tick_interval)
        else:
            self._schedule(node, self._next_wake(node, now))

    def _next_wake(self, node: SimNode, now: float) -> float:
        assert node.core is not None
        due = min(node.core.next_deadline(now), now + self.idle_period)  # type: ignore[operator]
        return max(node.last_tick + self.tick_interval, due)

    def _schedule(self, node: SimNode, when: float) -> None:
        node.ticket += 1
        node.next_tick = when
        self._push(when, _TICK, node, node.epoch, node.ticket)

    def _nudge(self, node: SimNode) -> None:
        """Timer-driven: an input that brought a deadline nearer wakes the node sooner."""
        if self.idle_period is not None and node.up and node.core is not None:
            wake = self._next_wake(node, self.now)
            if wake < node.next_tick:
                self._schedule(node, wake)

    def _deliver(self, ev: tuple) -> None:
        _, _, _, src, dst, epoch, msg, topic, seq = ev
        if not dst.up or dst.epoch != epoch or not self.net.reachable(src, dst.name):
            return
        now = self.now
        missed = 0
        if topic is not None:
            last = dst.tracker.last(src, topic)
            verdict = dst.tracker.observe(src, topic, seq)
            if verdict is SeqEvent.DUPLICATE:
                return
            if verdict is SeqEvent.GAP and topic == TOPIC_MEMBERSHIP:
                missed = seq - last - 1
        if self._trace is not None:
            self._trace.update(f"{now!r} {src}>{dst.name} {msg!r}\n".encode())
        self.stats["delivered"] += 1
        assert dst.core is not None
        if missed:
            self.stats["gaps"] += 1
        self._apply(dst, dst.core.handle(src, msg, now, missed))
        self._nudge(dst)

    def _apply(self, node: SimNode, effects: list[Effect]) -> None:
        for eff in effects:
            t = type(eff)
            if t is Send:
                self._send(node, eff.to, eff.msg)  # type: ignore[union-attr]
            elif t is Broadcast:
                self._broadcast(node, eff.msg)  # type: ignore[union-attr]
            elif t is MemberChanged:
                self._member_changed(node, eff)  # type: ignore[arg-type]
            elif t is PersistVote:
                node.vote = (eff.term, eff.voted_for)  # type: ignore[union-attr]
                self.invariants.on_persist(self.now, node.name, eff.term, eff.voted_for)  # type: ignore[union-attr]
            elif t is PersistConfig:
                node.config = Configuration(eff.index, eff.term, eff.voters, eff.cluster, eff.settings)  # type: ignore[union-attr]
            elif t is ConfigCommitted:
                self.invariants.on_commit(self.now, node.name, eff.index, eff.term, eff.voters)  # type: ignore[union-attr]
            elif t is LeaderChanged:
                self._leader_changed(node, eff)  # type: ignore[arg-type]
            elif t is MemberReaped:
                self.stats["reaped"] += 1
            elif t is NameConflict:
                self.stats["name_conflicts"] += 1
            elif t is ViewSend or t is TreeSend:
                self._send(node, eff.to, eff.msg, "overlay.")  # type: ignore[union-attr]
            elif t is NeighborUp:
                node.neighbors[eff.peer] = None  # type: ignore[union-attr]
            elif t is NeighborDown:
                node.neighbors.pop(eff.peer, None)  # type: ignore[union-attr]

    def _send(self, node: SimNode, to: str, msg: object, kind: str = "") -> None:
        dst = self._by_addr.get(to)
        if dst is None or dst is node:
            return
        self.sent[kind + type(msg).__name__] += 1
        if self.contacts is not None:
            self.contacts.setdefault(node.name, set()).add(to)
        if not dst.up:
            return
        for d in self.net.delays(node.name, dst.name):
            self._push(self.now + d, _DELIVER, node.name, dst, dst.epoch, msg, None, 0)

    def _broadcast(self, node: SimNode, msg: object) -> None:
        topic = BROADCAST_TOPICS[type(msg)]
        self.sent[type(msg).__name__] += 1
        seq = node.seq.get(topic, 0) + 1
        node.seq[topic] = seq
        delays = self.net.delays
        now = self.now
        src = node.name
        for dst in self._subscribers[src].values():
            if dst.up:
                for d in delays(src, dst.name):
                    self._push(now + d, _DELIVER, src, dst, dst.epoch, msg, topic, seq)

    def _member_changed(self, node: SimNode, ch: MemberChanged) -> None:
        name = ch.name
        if name == node.name:
            return
        new = ch.new
        if self.overlay is not None:
            pass  # no PUB streams: broadcasts come over the tree
        elif new == LEFT:
            if name in node.subs:
                del node.subs[name]
                self._subscribers[name].pop(node.name, None)
        elif name not in node.subs and name in self._subscribers:
            node.subs[name] = None
            self._subscribers[name][node.name] = node
        if new == SUSPECT and ch.reason == "probe timeout":
            self.stats["suspicions"] += 1
            if self._really_fine(node.name, name):
                self.stats["false_suspicions"] += 1
        elif new == DEAD and ch.reason == "suspicion timeout":
            self.stats["deaths"] += 1
            if self._really_fine(node.name, name):
                self.stats["false_deaths"] += 1
        if self._watch:
            seen = self._watch.get((name, new))
            if seen is not None and node.name not in seen:
                seen[node.name] = self.now

    def _really_fine(self, observer: str, target: str) -> bool:
        t = self.nodes.get(target)
        return (
            t is not None
            and t.up
            and self.net.reachable(observer, target)
            and self.net.reachable(target, observer)
        )

    def _leader_changed(self, node: SimNode, eff: LeaderChanged) -> None:
        self.stats["leader_changes"] += 1
        if eff.leader == node.name:
            assert node.election is not None
            self.leaderships.append((self.now, node.name, eff.term))
            self.invariants.on_leader(self.now, node.name, eff.term, node.election.voters())

    # -- observation ------------------------------------------------------------------

    def watch(self, name: str, status: MemberStatus) -> dict[str, float]:
        """Record when each node first sees ``name`` become ``status`` (from now on)."""
        return self._watch.setdefault((name, status), {})

    def unwatch(self, name: str, status: MemberStatus) -> None:
        self._watch.pop((name, status), None)

    def trace_hash(self) -> str:
        if self._trace is None:
            raise ValueError("Cluster(..., trace=True) to record a trace")
        return self._trace.hexdigest()

    def live(self) -> list[SimNode]:
        return [
            n
            for n in self.nodes.values()
            if n.up and not n.left and n.membership is not None and not n.membership.left
        ]

    def leaders(self, among: Iterable[str] | None = None) -> list[str]:
        nodes = self.live() if among is None else [self.nodes[n] for n in among if self.nodes[n].up]
        return [n.name for n in nodes if n.election is not None and n.election.role == LEADER]

    def agreed_leader(self, among: Iterable[str] | None = None) -> tuple[str, int] | None:
        """(leader, term) if every live node (of ``among``) sees the same live leader."""
        nodes = self.live() if among is None else [self.nodes[n] for n in among if self.nodes[n].up]
        if not nodes:
            return None
        first = nodes[0].election
        assert first is not None
        view = (first.leader, first.term)
        if view[0] is None:
            return None
        for n in nodes:
            e = n.election
            assert e is not None
            if e.leader != view[0] or e.term != view[1]:
                return None
        leader = self.nodes.get(view[0])
        if (
            leader is None
            or not leader.up
            or leader.election is None
            or leader.election.role != LEADER
        ):
            return None
        return view[0], view[1]

    def members_converged(self, among: Iterable[str] | None = None) -> bool:
        """Every live node's alive list is exactly the set of live nodes."""
        nodes = self.live() if among is None else [self.nodes[n] for n in among if self.nodes[n].up]
        names = {n.name for n in nodes}
        if any(n.membership.live_count != len(names) for n in nodes):  # type: ignore[union-attr]
            return False
        # as many live as expected, and none of the other nodes live: the same list (every member
        # is a node of the cluster), with no N x N comparison of lists
        others = [name for name in self.nodes if name not in names]
        return all(n.membership.status_of(o) not in (ALIVE, SUSPECT)  # type: ignore[union-attr]
                   for n in nodes for o in others)

    def converged(self) -> bool:
        return self.agreed_leader() is not None and self.members_converged()

    def describe(self) -> str:
        views = Counter((n.election.leader, n.election.term) for n in self.live())  # type: ignore[union-attr]
        alive = Counter(len(n.membership.alive()) for n in self.live())  # type: ignore[union-attr]
        return (
            f"{len(self.live())} live, leaders={self.leaders()}, views={dict(views.most_common(4))}, "
            f"alive-list sizes={dict(alive.most_common(4))}, partitioned={self.net.partitioned}"
        )
