"""``corec-node simulate``: the real mesh cores in the deterministic simulator, measured the
way an operator sizing a fleet asks (virtual seconds, protocol rounds, peers, messages).

One run: N nodes of a cluster already running (every node holds every member and its build:
``Cluster.bootstrap("formed")``; starting thousands from a snapshot would replay every node's
announcement to every other), left SETTLE_S to settle, watched in steady state
(messages, suspicions, resyncs), a node that joins through one member (until every member lists it alive), K
members killed at once (until every survivor lists them dead), and, with ``partition``, a
share of the survivors cut off for PARTITION_S virtual seconds and healed (the share of
the live nodes whose member lists are whole again within HEAL_WITHIN s). Invariant
violations (election safety, terms) are counted, never raised.
"""

from __future__ import annotations

import math
import random
import time
from typing import Any

from corec_node.mesh.core import IDLE_PERIOD, TICK_PERIOD
from corec_node.mesh.membership import MembershipConfig
from corec_node.mesh.overlay import OverlayConfig
from corec_node.mesh.probing import probe_spread
from corec_node.sim.cluster import Cluster
from corec_node.sim.network import NetworkConfig
from corec_node.wire.messages import MemberStatus

_LIVE = (MemberStatus.ALIVE, MemberStatus.SUSPECT)
STEADY_S = 10.0  # virtual seconds watched in steady state
SETTLE_S = 15.0  # virtual seconds after forming before that: the overlay's views settle (a shuffle
# interval and more: joins, fills and the first shuffles are out)
PARTITION_S = 10.0  # virtual seconds a partition lasts
HEAL_WITHIN = 60.0  # virtual seconds the member lists have to be whole again after a heal
DETECT_WITHIN = 120.0


SHELL_TIMING = {"tick_interval": TICK_PERIOD, "idle_period": IDLE_PERIOD}
"""Cluster keywords that tick each node as the mesh process does: when its core's next timer
is due or an input came, at most every TICK_PERIOD, at least every IDLE_PERIOD."""


def simulate(nodes: int, *, seed: int = 0, loss: float = 0.0, kill: int = 1, partition: float = 0.0,
             overlay: bool = True) -> dict[str, Any]:
    """``overlay`` (the default): broadcasts over HyParView's views and Plumtree's tree
    (``mesh/overlay.py``), probes among a node's neighbours; else the full mesh the node
    shell runs today."""
    if nodes < 2:
        raise ValueError("--nodes must be at least 2")
    if not 0 <= kill < nodes:
        raise ValueError(f"--kill must be between 0 and {nodes - 1}")
    if not 0.0 <= loss < 1.0 or not 0.0 <= partition < 1.0:
        raise ValueError("--loss and --partition are shares: at least 0 and below 1")
    lan = MembershipConfig.lan()
    probe = lan.probe_interval * probe_spread(lan, nodes)  # SWIM's protocol period: a node's probe period at this size
    started = time.perf_counter()
    c = Cluster(nodes + 1, seed=seed, network=NetworkConfig(loss=loss), strict=False,
                overlay=OverlayConfig() if overlay else None, **SHELL_TIMING)
    names = list(c.nodes)
    members, joiner = names[:nodes], names[nodes]
    c.bootstrap("formed", names=members)
    formed = c.await_convergence(60.0 + nodes / 10, every=0.5)
    out: dict[str, Any] = {"nodes": nodes, "seed": seed, "loss": loss, "kill": kill, "partition": partition,
                           "overlay": overlay, "formed_virtual_s": formed, "protocol_period_s": probe}

    # steady state: what a quiet cluster costs, per node
    c.run(SETTLE_S)
    c.sent.clear()
    c.stats.clear()
    resyncs, covered = _gap_resyncs(c), _gaps_covered(c)
    c.contacts = {}
    c.run(STEADY_S)
    out["msgs_per_node_per_s"] = sum(c.sent.values()) / nodes / STEADY_S  # sent: a publication counts once
    out["received_per_node_per_s"] = c.stats["delivered"] / nodes / STEADY_S  # a publication reaches every subscriber
    out["suspicions_per_node_min"] = c.stats["false_suspicions"] / (nodes * STEADY_S / 60.0)
    out["gaps_per_node_s"] = c.stats["gaps"] / nodes / STEADY_S  # membership stream gaps seen
    out["gaps_covered_per_node_s"] = (_gaps_covered(c) - covered) / nodes / STEADY_S  # lost nothing sent for the last time
    out["gap_resyncs_per_node_s"] = (_gap_resyncs(c) - resyncs) / nodes / STEADY_S  # push-pulls they started
    out["max_peers"] = max(_peers(c, name) for name in members)
    c.contacts = None

    # a join through one member
    rng = random.Random(f"{seed}/simulate")
    via = rng.choice(members)
    seen = c.watch(joiner, MemberStatus.ALIVE)
    c.nodes[joiner].join = [c.nodes[via].addr]
    start = c.now
    c.start(joiner)
    joined = c.run_until(lambda: len(seen) >= nodes, 60.0, every=0.01)
    join_s = None if joined is None else max(seen.values()) - start
    out["join_virtual_s"] = join_s
    out["join_rounds"] = None if join_s is None else math.ceil(join_s / probe)

    # K members killed at once, once the joiner holds the member list too (its join reply
    # may have been lost and be retried): a node that never heard of a member cannot see it dead
    out["joined_whole_virtual_s"] = c.run_until(c.members_converged, 60.0, every=0.05)
    everyone = members + [joiner]
    victims = rng.sample(members, kill)
    survivors = [n for n in everyone if n not in victims]
    dead = {v: c.watch(v, MemberStatus.DEAD) for v in victims}
    start = c.now
    for v in victims:
        c.crash(v)
    if victims:
        found = c.run_until(lambda: all(len(d) >= len(survivors) for d in dead.values()), DETECT_WITHIN, every=0.05)
        detected = None if found is None else max(max(d.values()) for d in dead.values()) - start
    else:
        detected = None
    out["crash_detected_virtual_s"] = detected
    out["crash_detected_rounds"] = None if detected is None else math.ceil(detected / probe)
    out["crash_bound_rounds"] = math.ceil(math.log2(nodes)) * 3  # c x log2(N), c = 3
    out["reached_after_kill"] = _whole_share(c)  # the overlay still reaches every survivor: 1.0

    # a partition of the survivors, healed
    if partition > 0:
        cut = survivors[:max(1, int(len(survivors) * partition))]
        c.partition(cut, [n for n in survivors if n not in cut])
        c.run(PARTITION_S)
        c.heal()
        whole = c.run_until(lambda: c.members_converged(), HEAL_WITHIN, every=0.25)
        out["healed_virtual_s"] = whole
        out["reached_after_heal"] = _whole_share(c)
    out["violations"] = len(c.invariants.violations)
    out["violation_examples"] = c.invariants.violations[:3]
    out["virtual_s"] = c.now
    out["real_s"] = time.perf_counter() - started
    out["events"] = c.events
    return out


def _gap_resyncs(c: Cluster) -> int:
    """Push-pulls sequence gaps have started so far, on every node that runs."""
    return sum(n.membership.gap_resyncs for n in c.nodes.values() if n.membership is not None)


def _gaps_covered(c: Cluster) -> int:
    """Gaps that started no push-pull: the missed Gossip carried nothing for the last time."""
    return sum(n.membership.gaps_covered for n in c.nodes.values() if n.membership is not None)


def _peers(c: Cluster, name: str) -> int:
    """Other nodes this node holds a connection to. The full mesh: its SUB socket's
    publishers and the members it keeps a direct socket to (every member it knows). The
    overlay: its neighbours and every address it sent to directly in the steady window
    (probes, push-pulls: a short-lived link each)."""
    node = c.nodes[name]
    if c.overlay is not None:
        return len(set(node.neighbors) | (c.contacts or {}).get(name, set()))
    known = {m.name for m in node.membership.members()} if node.membership is not None else set()
    return len((set(node.subs) | known) - {name})


def _whole_share(c: Cluster) -> float:
    """The share of live nodes whose alive list is exactly the live nodes: as many live
    members as live nodes, and none of the other nodes held live (every member is one of
    the cluster's nodes; a comparison of every list would take N x N)."""
    live = c.live()
    names = {n.name for n in live}
    down = [name for name in c.nodes if name not in names]
    whole = sum(1 for n in live if n.membership is not None and n.membership.live_count == len(live)
                and all(n.membership.status_of(d) not in _LIVE for d in down))
    return whole / len(live) if live else 0.0


def render(result: dict[str, Any]) -> str:
    """The human answer: one line a figure."""
    def fmt(v: Any) -> str:
        if v is None:
            return "not within the limit"
        return f"{v:.2f}" if isinstance(v, float) else str(v)

    lines = [f"simulated {result['nodes']} nodes{' over the overlay' if result.get('overlay') else ''} "
             f"(seed {result['seed']}, loss {result['loss']:g}): "
             f"{fmt(result['virtual_s'])} virtual s in {fmt(result['real_s'])} s"]
    rounds = f"rounds of {result['protocol_period_s']:g} s, a node's probe period at this size"
    for key, label in (("join_rounds", f"join: {rounds}, until alive everywhere"),
                       ("join_virtual_s", "join: virtual s"),
                       ("crash_detected_virtual_s", f"{result['kill']} killed: virtual s until dead everywhere"),
                       ("crash_detected_rounds", f"{result['kill']} killed: rounds (bound 3 x log2 N = {result['crash_bound_rounds']})"),
                       ("protocol_period_s", "a round, virtual s"),
                       ("max_peers", "largest number of peers of a node"),
                       ("msgs_per_node_per_s", "messages sent per node per s (steady; a publication once)"),
                       ("received_per_node_per_s", "messages received per node per s (steady)"),
                       ("suspicions_per_node_min", "suspicions per node-minute (steady)"),
                       ("gaps_per_node_s", "membership sequence gaps seen per node per s (steady)"),
                       ("gaps_covered_per_node_s", "of them covered by retransmits, no push-pull (steady)"),
                       ("gap_resyncs_per_node_s", "push-pulls those gaps started per node per s (steady)"),
                       ("reached_after_kill", "share of survivors whose member list is whole after the kill"),
                       ("reached_after_heal", "share of nodes whole again after the partition's heal"),
                       ("violations", "invariant violations")):
        if key in result:
            lines.append(f"  {label}: {fmt(result[key])}")
    return "\n".join(lines)
