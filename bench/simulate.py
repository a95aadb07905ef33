"""Simulator benchmarks: gossip convergence, false suspicions, failover, seeded sweeps.

    python bench/simulate.py            # full: sizes up to 1000 nodes, 1000-run sweep (minutes)
    python bench/simulate.py --quick    # sizes up to 100, 100-run sweep (well under a minute)
    python bench/simulate.py --curves 100,300,1000,3000,10000   # issue 18's curves:
                                                                # full mesh (to 1,000), overlay

``--curves``: for each size and layout (today's full mesh; ``--overlay``, HyParView views
and a Plumtree tree) one ``corec-node simulate --kill 4 --json`` in its own process, its
peak RSS read from ``wait4``: join rounds, the 4 dead everywhere (virtual s and rounds),
messages sent and received per node per s in steady state, the most peers of a node
(neighbours plus every address it sent to directly in a 10 s window), real s, RSS.

Prints a table, then one JSON line with every figure. Figures are in VIRTUAL seconds (the
simulator's clock, lan timer profiles, LAN latency 0.5-5 ms); "real s" columns are what the
simulation cost on this machine. Never pass/fail: it measures.

- dissemination: a cluster of N formed nodes; (1) a new node joins through one member:
  time until every node lists it alive; (2) a member crashes: time until every survivor
  lists it dead (failure detection plus dissemination). Rounds are SWIM protocol periods
  (probe_interval = 0.2 s).
- false suspicions: a healthy cluster under message loss; suspicions raised by a failed
  probe of a live, reachable node, per node per minute, and false deaths.
- failover: the leader crashes; time until every survivor agrees on a new leader.
- sweep: seeded runs of 5-7 nodes under random loss, duplication, reordering, crashes,
  restarts, partitions, isolation, joins and leaves; invariant violations and runs that
  did not converge after the faults healed are counted (both should be 0).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from corec_node.mesh.election import ElectionConfig
from corec_node.mesh.membership import MembershipConfig
from corec_node.sim import Cluster, FaultPlan, InvariantViolation, NetworkConfig, random_faults
from corec_node.sim.report import SHELL_TIMING
from corec_node.wire.messages import MemberStatus

PROBE = MembershipConfig.lan().probe_interval


def formed(n: int, seed: int, loss: float = 0.0, spares: int = 0) -> Cluster:
    c = Cluster(n + spares, seed=seed, network=NetworkConfig(loss=loss), **SHELL_TIMING)
    c.bootstrap(names=list(c.nodes)[:n])
    c.await_convergence(60.0, every=0.5)
    return c


def dissemination(n: int, seed: int) -> dict:
    t0 = time.perf_counter()
    c = formed(n, seed, spares=1)
    boot_real = time.perf_counter() - t0
    names = list(c.nodes)
    joiner = names[-1]
    rng = random.Random(seed)
    via = rng.choice(names[:n])
    seen = c.watch(joiner, MemberStatus.ALIVE)
    c.nodes[joiner].join = [c.nodes[via].addr]
    start = measured_from = c.now
    c.start(joiner)
    t1 = time.perf_counter()
    everyone = n  # the n old members (the joiner lists itself from the start)
    joined = c.run_until(lambda: len(seen) >= everyone, 30.0, every=0.01)
    join_s = None if joined is None else max(seen.values()) - start
    leader = c.agreed_leader()
    victim = rng.choice([x for x in names[:n] if leader is None or x != leader[0]])
    dead = c.watch(victim, MemberStatus.DEAD)
    start = c.now
    c.crash(victim)
    survivors = n  # n - 1 old members plus the joiner
    found = c.run_until(lambda: len(dead) >= survivors, 60.0, every=0.05)
    dead_s = None if found is None else max(dead.values()) - start
    real = time.perf_counter() - t1
    return {
        "n": n,
        "join_s": join_s,
        "join_rounds": None if join_s is None else join_s / PROBE,
        "dead_s": dead_s,
        "dead_rounds": None if dead_s is None else dead_s / PROBE,
        "boot_real_s": boot_real,
        "measure_real_s": real,
        "measure_virtual_s": c.now - measured_from,
        "events": c.events,
    }


def false_suspicions(n: int, loss: float, seconds: float, seed: int) -> dict:
    c = formed(n, seed, loss)
    c.stats.clear()
    leader = c.agreed_leader()
    resyncs = sum(node.membership.gap_resyncs for node in c.nodes.values() if node.membership is not None)
    t0 = time.perf_counter()
    c.run(seconds)
    minutes = n * seconds / 60.0
    resyncs = sum(node.membership.gap_resyncs for node in c.nodes.values() if node.membership is not None) - resyncs
    return {
        "n": n,
        "loss": loss,
        "virtual_s": seconds,
        "suspicions_per_node_min": c.stats["false_suspicions"] / minutes,
        "false_deaths": c.stats["false_deaths"],
        "gaps_per_s": c.stats["gaps"] / seconds,
        "gap_resyncs_per_s": resyncs / seconds,  # the whole cluster's
        "leader_kept": c.agreed_leader() == leader,
        "real_s": time.perf_counter() - t0,
    }


def failover(n: int, seeds: range, loss: float = 0.0) -> dict:
    times = []
    t0 = time.perf_counter()
    for seed in seeds:
        c = formed(n, seed, loss)
        leader, term = c.agreed_leader()  # type: ignore[misc]
        c.crash(leader)

        def ok() -> bool:
            agreed = c.agreed_leader()  # noqa: B023
            return agreed is not None and agreed[1] > term  # noqa: B023

        took = c.run_until(ok, 60.0, every=0.01)
        times.append(float("inf") if took is None else took)
    finite = sorted(t for t in times if t != float("inf"))
    return {
        "n": n,
        "runs": len(times),
        "failed": len(times) - len(finite),
        "mean_s": statistics.fmean(finite) if finite else None,
        "p50_s": finite[len(finite) // 2] if finite else None,
        "max_s": finite[-1] if finite else None,
        "real_s": time.perf_counter() - t0,
    }


def sweep(runs: int, first_seed: int = 100_000) -> dict:
    t0 = time.perf_counter()
    violations = nonconverged = commits = leaderships = 0
    worst = 0.0
    examples: list[str] = []
    for seed in range(first_seed, first_seed + runs):
        rng = random.Random(seed)
        net = NetworkConfig(
            loss=rng.choice([0.0, 0.05, 0.1, 0.2]),
            duplicate=rng.choice([0.0, 0.05]),
            reorder=rng.choice([0.0, 0.1]),
            delay_max=rng.choice([0.005, 0.05]),
        )
        n, spares = rng.randint(5, 7), rng.randint(0, 2)
        c = Cluster(n + spares, seed=seed, network=net, strict=False)
        c.bootstrap(rng.choice(["snapshot", "join"]), names=list(c.nodes)[:n])
        c.run(rng.uniform(0.0, 4.0))
        random_faults(c, rng, FaultPlan(duration=15.0, join=0.1, leave=0.05))
        c.run(15.0)
        try:
            worst = max(worst, c.await_convergence(60.0))
        except InvariantViolation as exc:
            nonconverged += 1
            examples.append(f"seed {seed}: {exc}")
        if c.invariants.violations:
            violations += 1
            examples.append(f"seed {seed}: {c.invariants.violations[0]}")
        commits += len(c.invariants.committed)
        leaderships += len(c.leaderships)
    return {
        "runs": runs,
        "violations": violations,
        "not_converged": nonconverged,
        "configs_committed": commits,
        "elections": leaderships,
        "worst_convergence_s": worst,
        "examples": examples[:5],
        "real_s": time.perf_counter() - t0,
    }


def simulate_run(n: int, overlay: bool, seed: int, loss: float = 0.0) -> dict:
    """One ``corec-node simulate --json`` in its own process, with its peak RSS."""
    cmd = [sys.executable, "-m", "corec_node", "simulate", "--nodes", str(n), "--kill", "4",
           "--seed", str(seed), "--loss", str(loss), "--json", "--overlay" if overlay else "--full-mesh"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()  # type: ignore[union-attr]
    _pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
    r = json.loads(out)  # exit 1 means violations, which the figures report
    r["rss_mb"] = usage.ru_maxrss / 1024
    return r


def curves(sizes: list[int], seed: int, loss: float, mesh_up_to: int = 1000) -> list[dict]:
    print(f"{'layout':<9}{'N':>7}{'join rnds':>10}{'dead s':>8}{'rounds':>7}{'sent/s':>8}{'recv/s':>8}"
          f"{'peers':>7}{'viol.':>6}{'real s':>8}{'RSS MB':>8}")
    rows = []
    for n in sizes:
        for overlay in ((False, True) if n <= mesh_up_to else (True,)):
            r = simulate_run(n, overlay, seed, loss)
            rows.append(r)
            print(f"{'overlay' if overlay else 'mesh':<9}{n:>7}{fmt(r['join_rounds']):>10}"
                  f"{fmt(r['crash_detected_virtual_s']):>8}{fmt(r['crash_detected_rounds']):>7}"
                  f"{fmt(r['msgs_per_node_per_s'], 1):>8}{fmt(r['received_per_node_per_s'], 1):>8}"
                  f"{r['max_peers']:>7}{r['violations']:>6}{fmt(r['real_s'], 0):>8}{fmt(r['rss_mb'], 0):>8}",
                  flush=True)
    return rows


def fmt(x: object, digits: int = 2) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes and a short sweep (< 1 min)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--sweep-runs", type=int, default=None, help="seeded fault runs (default 1000, --quick 100)")
    ap.add_argument("--sweep-only", action="store_true", help="only the seeded fault sweep")
    ap.add_argument("--curves", default=None, help="sizes, e.g. 100,300,1000: full mesh vs overlay, then stop")
    ap.add_argument("--loss", type=float, default=0.0, help="message loss of the --curves runs")
    ap.add_argument("--mesh-up-to", type=int, default=1000,
                    help="--curves: the full mesh only up to this size (its N x N streams); "
                         "the overlay at every size")
    args = ap.parse_args()
    if args.curves:
        rows = curves([int(x) for x in args.curves.split(",")], args.seed, args.loss, args.mesh_up_to)
        print(json.dumps({"curves": rows, "seed": args.seed, "loss": args.loss}, default=str))
        return 0
    quick = args.quick
    sizes = [10, 30, 100] if quick else [10, 30, 100, 300, 1000]
    out: dict = {
        "quick": quick,
        "seed": args.seed,
        "membership": "lan",
        "election": "lan",
        "election_timers": vars_of(ElectionConfig.lan()),
    }

    if not args.sweep_only:
        print(
            f"{'dissemination (0% loss)':<28}{'join s':>9}{'rounds':>8}{'dead s':>9}{'rounds':>8}"
            f"{'boot real s':>13}{'measure real s':>16}"
        )
        rows = []
        for n in sizes:
            r = dissemination(n, args.seed)
            rows.append(r)
            print(
                f"{'N=' + str(n):<28}{fmt(r['join_s'], 3):>9}{fmt(r['join_rounds'], 1):>8}{fmt(r['dead_s'], 3):>9}"
                f"{fmt(r['dead_rounds'], 1):>8}{fmt(r['boot_real_s'], 1):>13}{fmt(r['measure_real_s'], 1):>16}",
                flush=True,
            )
        out["dissemination"] = rows

        print(
            f"\n{'false suspicions':<28}{'loss':>6}{'per node-min':>14}{'false deaths':>14}{'gaps/s':>10}{'gap resync/s':>14}"
            f"{'leader kept':>13}{'real s':>8}"
        )
        fs = []
        n_fs, secs = (30, 20.0) if quick else (100, 60.0)
        for loss in (0.05, 0.10):
            r = false_suspicions(n_fs, loss, secs, args.seed)
            fs.append(r)
            print(
                f"{'N=' + str(n_fs) + f', {secs:g} s':<28}{loss:>6.0%}{fmt(r['suspicions_per_node_min'], 3):>14}"
                f"{r['false_deaths']:>14}{fmt(r['gaps_per_s'], 1):>10}{fmt(r['gap_resyncs_per_s'], 2):>14}{r['leader_kept']!s:>13}"
                f"{fmt(r['real_s'], 1):>8}",
                flush=True,
            )
        out["false_suspicions"] = fs

        print(
            f"\n{'failover (leader crash)':<28}{'runs':>6}{'mean s':>9}{'p50 s':>8}{'max s':>8}{'failed':>8}{'real s':>8}"
        )
        fo = []
        plan = [(5, 10), (50, 5)] if quick else [(5, 40), (50, 20), (300, 5)]
        for n, k in plan:
            r = failover(n, range(args.seed, args.seed + k))
            fo.append(r)
            print(
                f"{'N=' + str(n):<28}{r['runs']:>6}{fmt(r['mean_s']):>9}{fmt(r['p50_s']):>8}{fmt(r['max_s']):>8}"
                f"{r['failed']:>8}{fmt(r['real_s'], 1):>8}",
                flush=True,
            )
        out["failover"] = fo

    runs = args.sweep_runs if args.sweep_runs is not None else (100 if quick else 1000)
    r = sweep(runs)
    out["sweep"] = r
    print(
        f"\n{'sweep (5-7 nodes, faults)':<28}{'runs':>6}{'violations':>12}{'not conv.':>11}{'configs':>9}"
        f"{'elections':>11}{'worst conv s':>14}{'real s':>8}"
    )
    print(
        f"{'':<28}{r['runs']:>6}{r['violations']:>12}{r['not_converged']:>11}{r['configs_committed']:>9}"
        f"{r['elections']:>11}{fmt(r['worst_convergence_s']):>14}{fmt(r['real_s'], 1):>8}"
    )
    for line in r["examples"]:
        print("  ", line)
    print(json.dumps(out, default=str))
    return 0


def vars_of(cfg: object) -> dict:
    return {k: getattr(cfg, k) for k in cfg.__slots__}  # type: ignore[attr-defined]


if __name__ == "__main__":
    sys.exit(main())
