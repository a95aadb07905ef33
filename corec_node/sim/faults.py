"""Random fault schedules for sweeps: crashes, restarts, partitions, isolation, heals,
and membership changes (spare nodes joining, members leaving)."""

from __future__ import annotations

import random
from dataclasses import dataclass

from corec_node.sim.cluster import Cluster

__all__ = ["FaultPlan", "random_faults"]


@dataclass(frozen=True, slots=True)
class FaultPlan:
    duration: float = 20.0  # seconds of faults, then everything heals and restarts
    min_gap: float = 0.3  # seconds between two faults, uniform in [min_gap, max_gap)
    max_gap: float = 3.0
    max_down: int | None = None  # at most this many crashed at once (None: a minority)
    target_leader: float = 0.4  # chance that a crash, isolation or partition aims at a leader
    crash: float = 0.3  # relative weights of each kind of fault
    restart: float = 0.3
    partition: float = 0.15
    isolate: float = 0.1
    heal: float = 0.15
    join: float = 0.0  # a node that never ran joins through a random live member
    leave: float = 0.0  # a live member leaves gracefully (for good)


def random_faults(cluster: Cluster, rng: random.Random, plan: FaultPlan = FaultPlan()) -> list[str]:
    """Schedule random faults on ``cluster`` from now for ``plan.duration`` seconds, then a
    full heal with every crashed node restarted. Choices are made when each fault fires
    (from ``rng``), so the same seed gives the same schedule. Nodes that were never started
    are the spares that ``join`` faults bring in. Returns the log of what was done (filled
    in as the simulation runs)."""
    log: list[str] = []
    names = list(cluster.nodes)
    spares = [n for n in names if n not in cluster.booted and cluster.nodes[n].starts == 0]
    max_down = plan.max_down if plan.max_down is not None else (len(names) - len(spares) - 1) // 2
    kinds = ["crash", "restart", "partition", "isolate", "heal", "join", "leave"]
    weights = [
        plan.crash,
        plan.restart,
        plan.partition,
        plan.isolate,
        plan.heal,
        plan.join,
        plan.leave,
    ]
    end = cluster.now + plan.duration

    def pick(candidates: list[str]) -> str:
        leaders = [n for n in cluster.leaders() if n in candidates]
        if leaders and rng.random() < plan.target_leader:
            return rng.choice(leaders)
        return rng.choice(candidates)

    def leaving(name: str) -> bool:
        membership = cluster.nodes[name].membership
        return membership is not None and membership.left

    def fire() -> None:
        kind = rng.choices(kinds, weights)[0]
        started = [n for n in names if cluster.nodes[n].starts > 0 and not cluster.nodes[n].left]
        up = [n for n in started if cluster.nodes[n].up]
        down = [n for n in started if not cluster.nodes[n].up]
        if kind == "crash" and up and len(down) < max_down:
            victim = pick(up)
            cluster.crash(victim)
            log.append(f"{cluster.now:.2f} crash {victim}")
        elif kind == "restart" and down:
            name = rng.choice(down)
            cluster.restart(name)
            log.append(f"{cluster.now:.2f} restart {name}")
        elif kind == "partition" and len(started) > 1:
            first = pick(started)
            rest = [n for n in names if n != first and not cluster.nodes[n].left]  # spares too
            rng.shuffle(rest)
            cut = rng.randrange(0, len(rest))
            side = [first, *rest[:cut]]
            cluster.partition(side, rest[cut:])
            log.append(f"{cluster.now:.2f} partition {sorted(side)} | {sorted(rest[cut:])}")
        elif kind == "isolate" and started:
            name = pick(started)
            cluster.isolate(name)
            log.append(f"{cluster.now:.2f} isolate {name}")
        elif kind == "heal":
            cluster.heal()
            log.append(f"{cluster.now:.2f} heal")
        elif kind == "join" and spares and (staying := [n for n in up if not leaving(n)]):
            # also during partitions: a joiner on a minority side must not help it elect
            # (voters.py); it joins through members that are not leaving
            name = spares.pop(0)
            via = rng.sample(
                staying, min(len(staying), rng.randint(1, 3))
            )  # a config lists a few seeds
            cluster.nodes[name].join = [cluster.nodes[v].addr for v in via]
            cluster.start(name)
            log.append(f"{cluster.now:.2f} join {name} via {via}")
        elif (
            kind == "leave" and len(up) > 2 and len(down) < max_down and not cluster.net.partitioned
        ):
            # a seed stays (a joiner must find someone), and a node leaves while everyone
            # can hear it: a leave nobody heard is a death, which only force-leave undoes
            seeds = {a for node in cluster.nodes.values() for a in node.join}
            candidates = [n for n in up if cluster.nodes[n].addr not in seeds]
            if candidates:
                name = pick(candidates)
                cluster.leave(name)
                log.append(f"{cluster.now:.2f} leave {name}")

    def finish() -> None:
        cluster.heal()
        for n in names:
            node = cluster.nodes[n]
            if not node.up and not node.left and node.starts > 0:
                cluster.restart(n)
        log.append(f"{cluster.now:.2f} heal all, restart all")

    t = cluster.now + rng.uniform(plan.min_gap, plan.max_gap)
    while t < end:
        cluster.at(t, fire, "fault")
        t += rng.uniform(plan.min_gap, plan.max_gap)
    cluster.at(end, finish, "heal all")
    return log
