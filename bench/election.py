"""Nucleus failover with real node processes on loopback, default timers.

Measures, from the nodes' own structured logs:
- failover: from SIGKILL of the leader to every survivor naming the same new leader,
  3 and 5 nodes, median and worst of --kills kills each, beside a real etcd cluster
  (default timers: heartbeat 100 ms, election 1000 ms) of the same size whose leader is
  killed the same way in the same run (bench/peers.py), when `etcd` is installed;
- false elections: term changes during a quiet run while a producer streams entities
  (the load: ingest, ticks and Python's GC on the same 2 cores), 1 M records every 0.1 s
  or, with --full-speed, as fast as the cluster takes them (flow control holding the
  producer); also member changes after the start (false suspicions) and dropped batches;
- with --sigstops N: each node in turn SIGSTOPped for --pause s (0.6) then resumed; the
  elections and dead verdicts that followed (both should be 0).

Prints a table and one JSON line. Never passes or fails. Usage:
    python bench/election.py [--kills 10] [--quiet-seconds 600] [--full-speed] [--sigstops 9 --pause 0.6]
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

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import peers  # noqa: E402
from corec_node.testing.cluster import Cluster, eventually, voters_agree  # noqa: E402

RAFT_MEDIAN_S = 0.287  # Raft dissertation, 150-300 ms timeouts
ETCD_S = 1.4  # etcd's default timers (project brief): quoted only when etcd is not installed


def ts(event: dict[str, str]) -> float:
    return datetime.strptime(event["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()


def agreed(nodes, not_: str | None = None):
    views = {(r["leader"], r["term"]) for r in (n.ctl("leader") for n in nodes)}
    if len(views) != 1:
        return None
    leader, term = views.pop()
    return (leader, term) if leader and leader != not_ else None


def start(size: int):
    cluster = Cluster(Path(tempfile.mkdtemp(prefix="corec-bench-")))
    nodes = [cluster.start("n0")]
    nodes += [cluster.start(f"n{i}", join=[nodes[0].addr]) for i in range(1, size)]
    for n in nodes:
        n.wait_ready()
    return cluster, nodes


def failover(size: int, kills: int) -> list[float]:
    cluster, nodes = start(size)
    out = []
    try:
        for _ in range(kills):
            eventually(lambda: all(n.ctl("status")["members"].get("alive") == size for n in nodes), 30)
            eventually(lambda: voters_agree(nodes, [n.name for n in nodes]), 30)  # every node votes again
            leader, _term = eventually(lambda: agreed(nodes), 30)
            time.sleep(1.0)
            victim = next(n for n in nodes if n.name == leader)
            survivors = [n for n in nodes if n is not victim]
            t0 = time.time()
            victim.kill()
            new, term = eventually(lambda: agreed(survivors, not_=leader), 30)
            seen = []
            for n in survivors:
                events = [e for e in n.log_events() if e.get("event") == "leader_changed"
                          and e.get("leader") == new and int(e.get("term", 0)) == term and ts(e) >= t0]
                seen.append(min(ts(e) for e in events) if events else time.time())
            out.append(max(seen) - t0)
            victim.join = []
            victim.start().wait_ready()
        return out
    finally:
        cluster.close()


def member_changes(node) -> list[dict[str, str]]:
    return [e for e in node.log_events() if e.get("event") == "member_changed"]


def quiet(size: int, seconds: float, full_speed: bool = False) -> dict[str, float]:
    from corec_node.client import Client
    from corec_node.wire import ENTITY_DTYPE

    cluster, nodes = start(size)
    stop = threading.Event()
    sent = [0]

    def produce() -> None:
        recs = np.zeros(100_000, dtype=ENTITY_DTYPE)
        recs["id"] = np.arange(100_000) % 25_000
        recs["channel"] = np.arange(100_000) // 25_000
        recs["active"] = 1
        rng = np.random.default_rng(3)
        with Client(nodes[0].addr) as c:
            while not stop.is_set():
                recs["value"] = rng.normal(20, 2, len(recs)).astype(np.float32)
                sent[0] += c.send(recs)
                if not full_speed:
                    time.sleep(0.1)

    try:
        leader, term = eventually(lambda: agreed(nodes), 30)
        settled = {n.name: len(member_changes(n)) for n in nodes}
        producer = threading.Thread(target=produce, daemon=True)
        producer.start()
        time.sleep(seconds)
        stop.set()
        producer.join(10)
        terms = {n.ctl("leader")["term"] for n in nodes}
        changes = sum(1 for n in nodes for e in n.log_events() if e.get("event") == "leader_changed"
                      and int(e.get("term", 0)) > term)
        status = [n.ctl("status") for n in nodes]
        return {"false_elections": max(terms) - term, "leader_change_events": changes,
                "member_changes": sum(len(member_changes(n)) - settled[n.name] for n in nodes),
                "ingest_dropped": sum(s["ingest_dropped"] for s in status),
                "records_sent": sent[0], "records_per_s": sent[0] / seconds}
    finally:
        cluster.close()


def sigstops(size: int, rounds: int, pause: float) -> dict[str, int]:
    """SIGSTOP one node at a time (leader and followers in turn) for ``pause`` seconds:
    elections and dead verdicts that followed (both should be 0)."""
    import signal

    cluster, nodes = start(size)
    try:
        eventually(lambda: voters_agree(nodes, [n.name for n in nodes]), 30)
        _, term0 = eventually(lambda: agreed(nodes), 30)
        deaths = 0
        for i in range(rounds):
            victim = nodes[i % size]
            victim.signal(signal.SIGSTOP)
            time.sleep(pause)
            victim.signal(signal.SIGCONT)
            time.sleep(2.0)  # let any election or verdict that the pause caused show
        _, term = eventually(lambda: agreed(nodes), 30)
        for n in nodes:
            deaths += sum(1 for e in n.log_events() if e.get("event") == "member_changed" and e.get("new") == "dead")
        return {"sigstops": rounds, "pause_s": pause, "false_elections": term - term0, "false_deaths": deaths}
    finally:
        cluster.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--quiet-seconds", type=float, default=600.0)
    parser.add_argument("--full-speed", action="store_true", help="stream as fast as the cluster takes it")
    parser.add_argument("--sigstops", type=int, default=0, help="SIGSTOP rounds (each node in turn, --pause s)")
    parser.add_argument("--pause", type=float, default=0.6)
    args = parser.parse_args()
    if args.sigstops:
        r = sigstops(3, args.sigstops, args.pause)
        label = f"false elections after {args.sigstops} SIGSTOPs of {args.pause:g} s"
        print(f"{label:<46}{r['false_elections']:>10}{'0':>10}")
        print(f"{'  false dead verdicts':<46}{r['false_deaths']:>10}{'0':>10}")
        print(json.dumps({"bench": "election_sigstop", **r}))
        return
    runs = {n: failover(n, args.kills) for n in (3, 5)} if args.kills else {}
    etcd_version = peers.etcd_available() if runs else None
    etcd = {n: peers.etcd_failover(n, args.kills) for n in runs} if etcd_version else None
    q = quiet(3, args.quiet_seconds, args.full_speed) if args.quiet_seconds > 0 else None

    def summary(xs: list[float]) -> dict:
        return {"median": round(statistics.median(xs), 4), "worst": round(max(xs), 4), "runs": [round(x, 4) for x in xs]}

    etcd_median = {n: statistics.median(etcd[n]) if etcd else ETCD_S for n in runs}
    ratio = {n: etcd_median[n] / statistics.median(xs) for n, xs in runs.items()}
    if etcd:
        print(f"baseline: {etcd_version}, default timers, {args.kills} leader SIGKILLs per size, this run, this machine")
    elif runs:
        print(f"etcd not installed (apt-get install etcd-server etcd-client): comparing with the brief's {ETCD_S:g} s")
    print(f"{'measure':<46}{'figure':>10}{'target':>10}{'baseline':>24}")
    for n, xs in runs.items():
        base = f"etcd {etcd_median[n]:.3f}" if etcd else f"etcd ~{ETCD_S:g}"
        print(f"{f'failover, {n} nodes, median (s)':<46}{statistics.median(xs):>10.3f}{'< 1':>10}{f'{base}, Raft {RAFT_MEDIAN_S}':>24}")
        print(f"{f'failover, {n} nodes, worst (s)':<46}{max(xs):>10.3f}{'< 2':>10}{f'etcd {max(etcd[n]):.3f}' if etcd else '':>24}")
        print(f"{f'  etcd median / CoreC median, {n} nodes':<46}{ratio[n]:>9.1f}x{'>= 2x':>10}{'':>24}")
    if q is not None:
        print(f"{f'false elections, {args.quiet_seconds:g} s under load':<46}{q['false_elections']:>10}{'0':>10}{'':>24}")
        print(f"{'  member changes meanwhile (false suspicions)':<46}{q['member_changes']:>10}{'0':>10}{'':>24}")
        print(f"{'  load: records/s streamed meanwhile':<46}{q['records_per_s']:>10,.0f}")
        print(f"{'  stream batches dropped':<46}{q['ingest_dropped']:>10}{'0':>10}{'':>24}")
    print(json.dumps({
        "bench": "election",
        "failover_s": {str(k): summary(v) for k, v in runs.items()},
        "quiet_seconds": args.quiet_seconds, **(q or {}),
        "baseline_etcd_s": {str(k): round(v, 4) for k, v in etcd_median.items()} if runs else ETCD_S,
        "baseline_raft_median_s": RAFT_MEDIAN_S,
        "etcd": {"version": etcd_version, "measured": bool(etcd),
                 "failover_s": {str(k): summary(v) for k, v in etcd.items()} if etcd else None},
        "etcd_median_over_corec_median": {str(k): round(v, 2) for k, v in ratio.items()},
    }))


if __name__ == "__main__":
    main()
