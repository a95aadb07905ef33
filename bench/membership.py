"""Membership with real node processes on loopback, default timers.

Measures (from the nodes' own structured logs, so polling does not disturb them):
- join convergence: from the `join` commands to every node seeing every other alive,
  for 3, 5 and 10 nodes;
- failure detection: from SIGKILL to every survivor marking the node dead, beside a real
  Serf cluster (default lan profile) of the same size killed the same way in the same run
  (bench/peers.py), when `serf` is installed;
- false suspicions: suspect/dead verdicts on live nodes during a quiet run.

Prints a table and one JSON line. Never passes or fails. Usage:
    python bench/membership.py [--kills 5] [--quiet-seconds 60] [--sizes 3,5,10]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import peers  # noqa: E402
from corec_node.testing.cluster import Cluster, eventually  # noqa: E402

SERF_DETECTION_S = 6.0  # Serf's default detection time (project brief): quoted only when serf is not installed


def ts(event: dict[str, str]) -> float:
    return datetime.strptime(event["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()


def changes(node, new: str, name: str | None = None, after: float = 0.0) -> list[dict[str, str]]:
    return [e for e in node.log_events()
            if e.get("event") == "member_changed" and e.get("new") == new
            and (name is None or e.get("name") == name) and ts(e) >= after]


def converge(size: int) -> float:
    cluster = Cluster(Path(tempfile.mkdtemp(prefix="corec-bench-")))
    try:
        nodes = [cluster.start(f"n{i}") for i in range(size)]
        for n in nodes:
            n.wait_ready()
        t0 = time.time()
        threads = [threading.Thread(target=n.ctl, args=("join",), kwargs={"addrs": [nodes[0].addr]}) for n in nodes[1:]]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        names = {n.name for n in nodes}
        eventually(lambda: all({m["name"] for m in n.ctl("members") if m["status"] == "alive"} == names for n in nodes), 30)
        last = 0.0
        for n in nodes:
            for other in names - {n.name}:
                seen = [ts(e) for e in changes(n, "alive", other, t0 - 1)]
                last = max(last, min(seen) if seen else time.time())
        return max(0.0, last - t0)
    finally:
        cluster.close()


def detection(size: int, kills: int) -> list[float]:
    cluster = Cluster(Path(tempfile.mkdtemp(prefix="corec-bench-")))
    out = []
    try:
        nodes = [cluster.start(f"n{i}", join=[]) for i in range(size)]
        for n in nodes:
            n.wait_ready()
        for n in nodes[1:]:
            n.ctl("join", addrs=[nodes[0].addr])
        for k in range(kills):
            victim = nodes[1 + k % (size - 1)]
            survivors = [n for n in nodes if n is not victim]
            eventually(lambda: all(all(m["status"] == "alive" for m in n.ctl("members")) for n in nodes), 30)
            time.sleep(1.0)
            t0 = time.time()
            victim.kill()
            eventually(lambda: all(changes(n, "dead", victim.name, t0) for n in survivors), 30)
            out.append(max(min(ts(e) for e in changes(n, "dead", victim.name, t0)) for n in survivors) - t0)
            victim.start().wait_ready()
        return out
    finally:
        cluster.close()


def quiet(size: int, seconds: float) -> dict[str, int]:
    cluster = Cluster(Path(tempfile.mkdtemp(prefix="corec-bench-")))
    try:
        nodes = [cluster.start(f"n{i}") for i in range(size)]
        for n in nodes:
            n.wait_ready()
        for n in nodes[1:]:
            n.ctl("join", addrs=[nodes[0].addr])
        eventually(lambda: all(all(m["status"] == "alive" for m in n.ctl("members")) and len(n.ctl("members")) == size for n in nodes), 30)
        t0 = time.time()
        time.sleep(seconds)
        return {
            "suspect": sum(len(changes(n, "suspect", after=t0)) for n in nodes),
            "dead": sum(len(changes(n, "dead", after=t0)) for n in nodes),
        }
    finally:
        cluster.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="3,5,10")
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--quiet-seconds", type=float, default=60.0)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    conv = {n: converge(n) for n in sizes}
    det = {n: detection(n, args.kills) for n in (3, 5)}
    serf_version = peers.serf_available()
    serf = {n: peers.serf_detection(n, args.kills) for n in det} if serf_version else None
    q = quiet(5, args.quiet_seconds)

    def summary(xs: list[float]) -> dict:
        return {"median": round(statistics.median(xs), 4), "worst": round(max(xs), 4), "runs": [round(x, 4) for x in xs]}

    serf_median = {n: statistics.median(serf[n]) if serf else SERF_DETECTION_S for n in det}
    ratio = {n: serf_median[n] / statistics.median(xs) for n, xs in det.items()}
    if serf:
        print(f"baseline: {serf_version}, lan profile, {args.kills} SIGKILLs per size, this run, this machine")
    else:
        print(f"serf not installed (apt-get install serf): comparing with the brief's {SERF_DETECTION_S:g} s")
    print(f"{'measure':<44}{'figure':>12}{'target':>12}{'baseline':>16}")
    for n, s in conv.items():
        print(f"{f'join convergence, {n} nodes (s)':<44}{s:>12.3f}{'< 0.5':>12}{'':>16}")
    for n, xs in det.items():
        worst = f"Serf {max(serf[n]):.3f}" if serf else ""
        print(f"{f'failure detection, {n} nodes, median (s)':<44}{statistics.median(xs):>12.3f}{'< 2':>12}{f'Serf {serf_median[n]:.3f}' if serf else f'Serf ~{SERF_DETECTION_S:g}':>16}")
        print(f"{f'failure detection, {n} nodes, worst (s)':<44}{max(xs):>12.3f}{'< 2':>12}{worst:>16}")
        print(f"{f'  Serf median / CoreC median, {n} nodes':<44}{ratio[n]:>11.1f}x{'>= 5x':>12}{'':>16}")
    print(f"{f'false suspicions in {args.quiet_seconds:g} s quiet, 5 nodes':<44}{q['suspect']:>12}{'0':>12}{'':>16}")
    print(f"{f'false deaths in {args.quiet_seconds:g} s quiet, 5 nodes':<44}{q['dead']:>12}{'0':>12}{'':>16}")
    print(json.dumps({
        "bench": "membership",
        "convergence_s": {str(k): round(v, 4) for k, v in conv.items()},
        "detection_s": {str(k): summary(v) for k, v in det.items()},
        "quiet_seconds": args.quiet_seconds,
        "false_suspicions": q["suspect"],
        "false_deaths": q["dead"],
        "baseline_serf_detection_s": {str(k): round(v, 4) for k, v in serf_median.items()},
        "serf": {"version": serf_version, "measured": bool(serf),
                 "detection_s": {str(k): summary(v) for k, v in serf.items()} if serf else None},
        "serf_median_over_corec_median": {str(k): round(v, 2) for k, v in ratio.items()},
    }))


if __name__ == "__main__":
    main()
