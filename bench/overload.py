"""The control plane under a data-plane flood, on real nodes: elections, suspicions and
heartbeat gaps while new entities pour into one node.

    python bench/overload.py [--records 20000000] [--block-size 1000] [--nodes 3]
                             [--per-node-blocks 100000] [--scenarios flood,blocks]

Scenarios (each on a fresh cluster of --nodes real ``corec-node run`` processes, lan timers):
  flood   --records NEW ids (0..N-1, one channel) sent into one node with ``corec-node send``
          (blocks of --block-size: 20 M ids = 20,000 blocks);
  blocks  --per-node-blocks blocks on every node (block_size --small-block-size, so a run
          takes minutes): ids sent into one node, placement spreads them.
While the producer runs, and for --tail s after, the nodes keep their usual timers. Read
from outside, as a user would: every node's ``status --json`` (term, the largest gap
between two heartbeats of its leader, gaps later than the interval plus a tenth of the
election timeout), its log (``leader_changed``, ``member_changed ... new=suspect``), and
the RSS of all node processes (node and mesh process) from /proc.

Printed beside the figures: the heartbeat interval (0.1 s) and the bound the issue sets
(a tenth of the 0.8 s minimum election timeout), and what the same flood did before the
control plane had a process of its own (ARCHITECTURE.md: 1.10-2.66 s gaps, term 1 -> 46).
Figures only; nothing here passes or fails.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from corec_node.testing.cluster import Cluster, eventually, voters_agree  # noqa: E402
from corec_node.testing.measure import rss_mb  # noqa: E402

HEARTBEAT_INTERVAL = 0.1
BOUND = 0.08  # a tenth of the lan profile's 0.8 s minimum election timeout
BEFORE = "same loop as the data plane (before): largest gap 1.10-2.66 s; 20 M new ids took the term from 1 to 46"


def counts(node) -> dict[str, int]:
    events = node.log_events()
    return {
        "elections": sum(1 for e in events if e.get("event") == "leader_changed" and e.get("leader") == node.name),
        "suspicions": sum(1 for e in events if e.get("event") == "member_changed" and e.get("new") == "suspect"),
        "deaths": sum(1 for e in events if e.get("event") == "member_changed" and e.get("new") == "dead"),
        "stalls": sum(1 for e in events if e.get("event") == "engine_stalled"),
    }


def run(scenario: str, args: argparse.Namespace) -> dict[str, Any]:
    block_size = args.block_size if scenario == "flood" else args.small_block_size
    records = args.records if scenario == "flood" else args.per_node_blocks * args.nodes * block_size
    env = {"COREC_ENGINE_BLOCK_SIZE": str(block_size), "COREC_MESH_PROFILE": "lan"}
    cluster = Cluster(Path(tempfile.mkdtemp(prefix="corec-bench-overload-")))
    try:
        first = cluster.start("n0", extra_env=env).wait_ready()
        nodes = [first] + [cluster.start(f"n{i}", join=[first.addr], extra_env=env) for i in range(1, args.nodes)]
        for n in nodes:
            n.wait_ready()
        eventually(lambda: voters_agree(nodes, [n.name for n in nodes]), 60, message="every node a voter")
        term0 = nodes[0].ctl("status")["term"]
        before = {n.name: counts(n) for n in nodes}
        peak = 0.0
        started = time.perf_counter()
        producer = subprocess.Popen([sys.executable, "-m", "corec_node", "send", "--to", nodes[-1].addr,
                                     "--channel", "1", "--count", str(records)],
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        while producer.poll() is None:
            peak = max(peak, rss_mb([p for n in nodes for p in n.pids()]))
            time.sleep(0.5)
        sent_s = time.perf_counter() - started
        out = producer.stdout.read().strip() if producer.stdout else ""
        tail_end = time.perf_counter() + args.tail
        while time.perf_counter() < tail_end:
            peak = max(peak, rss_mb([p for n in nodes for p in n.pids()]))
            time.sleep(0.5)
        statuses = {n.name: n.ctl("status") for n in nodes}
        after = {n.name: counts(n) for n in nodes}
        delta = {k: sum(after[n][k] - before[n][k] for n in after) for k in ("elections", "suspicions", "deaths", "stalls")}
        stored = sum(s.get("entities", 0) for s in statuses.values())
        return {
            "scenario": scenario, "nodes": args.nodes, "records": records, "block_size": block_size,
            "blocks": sum(s.get("blocks", 0) for s in statuses.values()),
            "producer": out.splitlines()[-1] if out else "", "producer_rc": producer.returncode,
            "send_seconds": round(sent_s, 2), "entities_held": stored,
            "term_before": term0, "term_after": max(s["term"] for s in statuses.values()),
            "false_elections": delta["elections"], "false_suspicions": delta["suspicions"],
            "false_deaths": delta["deaths"], "engine_stalls": delta["stalls"],
            "heartbeat_gap_max": max(s.get("heartbeat_gap_max", 0.0) for s in statuses.values()),
            "heartbeat_gaps_late": sum(s.get("heartbeat_gaps_late", 0) for s in statuses.values()),
            "rss_peak_mb": round(peak, 1),
        }
    finally:
        cluster.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=20_000_000)
    parser.add_argument("--block-size", type=int, default=1000)
    parser.add_argument("--per-node-blocks", type=int, default=100_000)
    parser.add_argument("--small-block-size", type=int, default=10)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--tail", type=float, default=10.0, help="seconds watched after the producer ends")
    parser.add_argument("--scenarios", default="flood,blocks")
    args = parser.parse_args()
    results = [run(s, args) for s in args.scenarios.split(",")]
    print(f"heartbeat interval {HEARTBEAT_INTERVAL} s; bound: a tenth of the 0.8 s election timeout, {BOUND} s late")
    print(f"baseline: {BEFORE}")
    for r in results:
        print(f"\n{r['scenario']}: {r['records']:,} new ids, block_size {r['block_size']}, {r['blocks']:,} blocks "
              f"over {r['nodes']} nodes; producer: {r['producer']} (exit {r['producer_rc']})")
        print(f"  term {r['term_before']} -> {r['term_after']}; false elections {r['false_elections']}, "
              f"false suspicions {r['false_suspicions']}, false deaths {r['false_deaths']}, "
              f"engine stalls {r['engine_stalls']}")
        print(f"  largest heartbeat gap {r['heartbeat_gap_max']:.3f} s (interval {HEARTBEAT_INTERVAL} s, "
              f"late past {HEARTBEAT_INTERVAL + BOUND:.2f} s: {r['heartbeat_gaps_late']} gaps)")
        print(f"  entities held {r['entities_held']:,}; peak RSS of all node processes {r['rss_peak_mb']:.0f} MB")
    print(json.dumps({"bench": "overload", "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
