"""Does ingest grow with the mesh? CPU per record as nodes are added, memory per entity and
send throughput, measured from outside on real ``corec-node run`` processes (issue 16, item 6).

    python bench/ingest_scale.py [--scenarios cpu,memory,throughput] [--sizes 1,2,4,8]
                                 [--records 2000000] [--entities 1000000] [--memory-nodes 3]
                                 [--settle 5] [--throughput-records N] [--throughput-nodes 3]
                                 [--block-size 1000] [--copies 1] [--idle 3] [--quiet 10] [--held-idle 10]
                                 [--timeout 180]

    small run:  python bench/ingest_scale.py --sizes 1,2 --records 300000 --entities 200000

Scenarios, each on fresh clusters (lan timers, nodes joined to the first, every member
alive, one leader agreed, every node holding the same committed voters):
  cpu         for each of --sizes: the CPU time (utime+stime of /proc/<pid>/stat) of ALL
              node processes (node and mesh process of every node, pids read afresh) around
              ``corec-node send --count --records`` into the first node (new ids 0..N-1, so
              spread over N/--block-size blocks), until the nodes' ``status`` held_entities
              (copies included) sum to N x copies (--copies, at most the cluster's size)
              and their owned ``entities`` to N. Prints cluster CPU s per M records, the
              busiest node's, the producer's own (the send process, from RUSAGE_CHILDREN),
              the idle cost of the cluster over the same time (its CPU rate measured for
              --idle s before the send), and the ratios 4 nodes / 2 nodes and busiest of 4 /
              lone node. Then, --quiet s after, the cluster's cores idle while it holds the
              data, over --held-idle s (what every owner's rows cost the others each tick).
              Baselines: a struct loop in this process (CPU to pack and unpack the wire's
              records with numpy and with Python's struct), the fixed cost of the producer
              (``send --count 0``), and the issue's figures from before.
  memory      RSS of all node processes of --memory-nodes nodes before, and --settle s after,
              --entities new entities are stored (held_entities summing to entities x
              copies): growth in bytes per entity and per entity per copy. Baselines: the
              store alone (an in-process EntityStore holding as many entities as each node,
              copies included), the seed's 1 KB, the issue's 240-340 B before, 50 B target.
  throughput  records/s through ``corec-node send`` (default options; and acks 0, 1 and
              all when ``send --help`` has ``--acks``) into --throughput-nodes nodes, against
              raw pyzmq in the same run: PUSH/PULL on loopback TCP moving the same records
              (at least 5 M, to be timed at all) in ~100 KB frames to a receiver process that
              views them as records.

--copies N (default 1) starts every node with ``COREC_ENGINE_REPLICAS=N`` (engine.replicas:
copies of each block in total, its owner's included; SPEC 9.7) and, with N > 1, waits until
every node is a member (no learners) before sending.

Figures only: nothing passes or fails here. Ends with one JSON line {"bench": "ingest_scale", ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import zmq  # noqa: E402

from _machine import cpu_model  # noqa: E402  (bench/ is on sys.path when run as a script)
from corec_node.testing.cluster import Cluster, NodeProc, eventually, free_port, voters_agree  # noqa: E402
from corec_node.testing.measure import (  # noqa: E402
    cluster_pids, cpu_delta, cpu_snapshot, rss_by_node, rss_bytes,
)

try:  # the wire's record, whatever it is in this build
    from corec_node.wire import ENTITY_DTYPE as RECORD
except ImportError:  # SPEC.md "Entity records": !IBf?, 10 bytes
    RECORD = np.dtype([("id", ">u4"), ("channel", "u1"), ("value", ">f4"), ("active", "u1")])

BEFORE_CPU = {1: 0.73, 2: 1.37, 4: 2.44}  # issue 16: cluster CPU s per M records, measured before
BEFORE_MEMORY = "240-340 B"  # issue 16: RSS growth per entity, 1 M entities into 3 nodes, measured before
SEED_BYTES = 1024  # the seed: 1 KB per entity
TARGET_BYTES = 50  # issue 16: at most 50 B per entity per copy
FRAME_BYTES = 100_000  # raw pyzmq frames (~ a producer batch)
RAW_MIN_RECORDS = 5_000_000  # raw pyzmq moves at least this many: fewer take a few ms, too short to time
M = 1_000_000


# -- clusters ----------------------------------------------------------------------------


def node_env(args: argparse.Namespace) -> dict[str, str]:
    env = {"COREC_MESH_PROFILE": "lan", "COREC_ENGINE_BLOCK_SIZE": str(args.block_size)}
    if args.copies > 1:
        env["COREC_ENGINE_REPLICAS"] = str(args.copies)
    return env


def copies_in(size: int, args: argparse.Namespace) -> int:
    """Copies a cluster of ``size`` nodes holds of each entity: --copies, at most one a node."""
    return max(1, min(args.copies, size))


def stored(nodes: list[NodeProc]) -> dict[str, tuple[int, int]]:
    """(entities held, copies included; entities owned) of each node by its ``status``
    (a build without ``held_entities`` holds only what it owns)."""
    out = {}
    for n in nodes:
        st = n.ctl("status")
        owned = int(st.get("entities", 0))
        out[n.name] = (int(st.get("held_entities", owned)), owned)
    return out


def wait_stored(nodes: list[NodeProc], copies: int, owned: int, timeout: float, *, quiet: float = 15.0,
                interval: float = 0.25, busy: Any = None) -> tuple[int, int, float, bool]:
    """Poll until the nodes together hold ``copies`` entities (held_entities, copies
    included) and own ``owned`` (entities). Gives up after ``timeout`` seconds, or once
    nothing changed for ``quiet`` seconds while ``busy()`` (e.g. "the producer still runs")
    is false. Returns (held, owned, seconds waited, all arrived)."""
    started = last_change = time.monotonic()
    last = (-1, -1)
    while True:
        try:
            counts = stored(nodes).values()
            now = (sum(h for h, _ in counts), sum(o for _, o in counts))
        except Exception:  # a node too busy to answer its control socket in time: look again
            now = last
        t = time.monotonic()
        if now != last:
            last, last_change = now, t
        if now[0] >= copies and now[1] >= owned:
            return now[0], now[1], t - started, True
        running = bool(busy()) if busy is not None else False
        if t - started >= timeout or (not running and t - last_change >= quiet):
            return max(now[0], 0), max(now[1], 0), t - started, False
        time.sleep(interval)


def ready_cluster(cluster: Cluster, size: int, env: dict[str, str]) -> list[NodeProc]:
    """``size`` nodes joined to the first; returns once all are alive, agree on one leader
    and hold the same committed voters (and, with several nodes, a placement map; with
    replicas, one whose members are every node, none of them still learning)."""
    first = cluster.start("n0", extra_env=env).wait_ready(30)
    nodes = [first] + [cluster.start(f"n{i}", join=[first.addr], extra_env=env) for i in range(1, size)]
    for n in nodes:
        n.wait_ready(30)

    def agreed() -> bool:
        st = [n.ctl("status") for n in nodes]
        leaders = {s.get("leader") for s in st}
        return (all(s.get("members", {}).get("alive") == size for s in st) and len(leaders) == 1
                and bool(leaders.pop())
                and (size == 1 or all(s.get("placement_version", 1) > 0 for s in st)))

    eventually(agreed, 60 + 10 * size, interval=0.25, message=f"{size} nodes alive with one leader")
    eventually(lambda: voters_agree(nodes), 60, interval=0.25, message="every node holds the same voters")
    if size > 1 and int(env.get("COREC_ENGINE_REPLICAS", "1")) > 1:
        names = sorted(n.name for n in nodes)

        def members() -> bool:
            st = [n.ctl("status") for n in nodes]
            return all(s.get("placement_members") == names and not s.get("learners") and not s.get("learner")
                       and s.get("routed") for s in st)

        eventually(members, 60 + 10 * size, interval=0.25, message="every node a member of the map, none learning")
    return nodes


def close(cluster: Cluster) -> None:
    """Stop every node, then remove the cluster's directory (data and logs)."""
    cluster.close()
    shutil.rmtree(cluster.root, ignore_errors=True)


def send_cmd(node: NodeProc, count: int, channel: int = 0, extra: list[str] | None = None) -> list[str]:
    return [sys.executable, "-m", "corec_node", "send", "--to", node.addr, "--channel", str(channel),
            "--count", str(count), *(extra or [])]


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def send_rate(line: str) -> float | None:
    """The records/s ``corec-node send`` printed (its own clock: first batch to last answer)."""
    m = re.search(r"\(([\d,]+) records/s\)", line)
    return float(m.group(1).replace(",", "")) if m else None


class Producer:
    """One ``corec-node send`` process; its CPU from RUSAGE_CHILDREN once it is reaped (the
    nodes are reaped only when the cluster closes, so nothing else lands in that count)."""

    def __init__(self, cmd: list[str]) -> None:
        self.cpu0 = children_cpu()
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.took: float | None = None

    def running(self) -> bool:
        if self.proc.poll() is None:
            return True
        if self.took is None:
            self.took = time.perf_counter() - self.started
        return False

    def finish(self, timeout: float) -> tuple[int | None, str, float]:
        """(exit code, its summary line (``sent ... records/s ...``, else the last line), CPU
        seconds); kills it after ``timeout``."""
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        self.running()
        lines = (out or "").strip().splitlines()
        summary = [line for line in lines if line.startswith("sent ")]
        line = summary[-1] if summary else (lines[-1] if lines else "")
        return self.proc.returncode, line, children_cpu() - self.cpu0


# -- baselines in this process ------------------------------------------------------------


def make_records(count: int, channel: int = 0) -> np.ndarray:
    """What ``corec-node send --channel --count`` generates: ids 0..count-1, values ~ N(20, 2)."""
    out = np.zeros(count, dtype=RECORD)
    out["id"] = np.arange(count, dtype=np.uint32)
    out["channel"] = channel
    out["value"] = (20 + np.random.default_rng(0).normal(0, 2, count)).astype(np.float32)
    out["active"] = 1
    return out


def numpy_loop(count: int, repeat: int = 3) -> float:
    """CPU s per M records to pack the wire's records from columns into ~100 KB batches of
    bytes and unpack them into native columns again, with numpy (best of ``repeat``)."""
    per = max(1, FRAME_BYTES // RECORD.itemsize)
    ids = np.arange(count, dtype=np.uint32)
    values = (20 + np.random.default_rng(0).normal(0, 2, count)).astype(np.float32)
    best = float("inf")
    for _ in range(repeat):
        t = time.process_time()
        for start in range(0, count, per):
            end = min(start + per, count)
            batch = np.empty(end - start, RECORD)
            batch["id"] = ids[start:end]
            batch["channel"] = 0
            batch["value"] = values[start:end]
            batch["active"] = 1
            back = np.frombuffer(batch.tobytes(), RECORD)
            _ = (back["id"].astype(np.uint32), back["channel"].astype(np.uint8),
                 back["value"].astype(np.float32), back["active"].astype(np.bool_))
        best = min(best, time.process_time() - t)
    return best / count * M


def struct_loop(count: int) -> float | None:
    """CPU s per M records to pack and unpack them one by one with Python's ``struct``
    (``!IBf?``, when that is the wire's record)."""
    rec = struct.Struct("!IBf?")
    if rec.size != RECORD.itemsize:
        return None
    values = (20 + np.random.default_rng(0).normal(0, 2, count)).astype(np.float32).tolist()
    t = time.process_time()
    buf = bytearray(rec.size * count)
    pack = rec.pack_into
    for i, v in enumerate(values):
        pack(buf, i * rec.size, i, 0, v, True)
    n = sum(1 for _ in rec.iter_unpack(buf))
    return (time.process_time() - t) / max(n, 1) * M


def store_bytes(counts: dict[str, int], block_size: int) -> tuple[float, int] | None:
    """Bytes an in-process EntityStore holds for as many entities as each node holds (fed
    in 10,000-record batches), summed: (bytes per entity, total). None if unavailable."""
    try:
        from corec_node.engine.store import EntityStore
    except ImportError:
        return None
    total = entities = 0
    for count in counts.values():
        store = EntityStore(block_size=block_size)
        recs = make_records(count)
        for start in range(0, count, 10_000):
            store.ingest(recs[start:start + 10_000])
        total += store.nbytes()
        entities += count
    return (total / entities if entities else 0.0), total


RAW_RECEIVER = r"""
import sys
import numpy as np
import zmq
port, count, dtype = int(sys.argv[1]), int(sys.argv[2]), np.dtype(sys.argv[3])
sock = zmq.Context.instance().socket(zmq.PULL)
sock.bind(f"tcp://127.0.0.1:{port}")
print("ready", flush=True)
got = 0
while got < count:
    got += len(np.frombuffer(sock.recv(copy=False).buffer, dtype))
print(got, flush=True)
"""


def raw_pyzmq(count: int, repeat: int = 3) -> tuple[float, list[float]]:
    """Records/s from PUSH in this process to PULL in another over loopback TCP, the records
    packed into ~100 KB frames as they go (best of ``repeat``, and each)."""
    recs = make_records(count)
    per = max(1, FRAME_BYTES // RECORD.itemsize)
    dtype = ",".join(RECORD[i].str for i in range(len(RECORD)))  # packed, same itemsize
    rates = []
    ctx = zmq.Context.instance()
    for _ in range(repeat):
        port = free_port()
        rx = subprocess.Popen([sys.executable, "-c", RAW_RECEIVER, str(port), str(count), dtype],
                              stdout=subprocess.PIPE, text=True)
        sock = ctx.socket(zmq.PUSH)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            if rx.stdout is None or rx.stdout.readline().strip() != "ready":
                raise RuntimeError("the raw receiver did not start")
            sock.connect(f"tcp://127.0.0.1:{port}")
            t = time.perf_counter()
            for start in range(0, count, per):
                sock.send(recs[start:start + per].tobytes(), copy=False)
            got = int(rx.stdout.readline())
            rates.append(got / (time.perf_counter() - t))
        finally:
            sock.close(0)
            if rx.poll() is None:
                rx.kill()
            rx.wait(10)
    return max(rates), rates


# -- scenarios ----------------------------------------------------------------------------


def run_cpu_size(size: int, args: argparse.Namespace) -> dict[str, Any]:
    cluster = Cluster(Path(tempfile.mkdtemp(prefix=f"corec-bench-ingest-cpu{size}-")))
    try:
        nodes = ready_cluster(cluster, size, node_env(args))
        # the producer's fixed cost (interpreter, imports, connect): send --count 0
        fixed_rc, _, fixed = Producer(send_cmd(nodes[0], 0)).finish(60)
        time.sleep(args.quiet)  # a new cluster's first seconds (imports, first audits, joins spreading) are not idle
        idle0, t_idle = cpu_snapshot(nodes), time.perf_counter()
        time.sleep(args.idle)
        before, t0 = cpu_snapshot(nodes), time.perf_counter()
        idle_spent, _ = cpu_delta(idle0, before)
        idle_rate = sum(idle_spent.values()) / (t0 - t_idle)
        producer = Producer(send_cmd(nodes[0], args.records))
        copies = copies_in(size, args)
        count, owned, waited, arrived = wait_stored(nodes, args.records * copies, args.records, args.timeout,
                                                    busy=producer.running)
        after, t1 = cpu_snapshot(nodes), time.perf_counter()
        rc, line, producer_cpu = producer.finish(args.timeout)
        spent, lost = cpu_delta(before, after)
        per_m = M / args.records
        held_rate = None
        if args.held_idle > 0:  # the cluster idle once it holds the data (rows still go out each tick)
            time.sleep(args.quiet)
            h0, th0 = cpu_snapshot(nodes), time.perf_counter()
            time.sleep(args.held_idle)
            held_spent, _ = cpu_delta(h0, cpu_snapshot(nodes))
            held_rate = round(sum(held_spent.values()) / (time.perf_counter() - th0), 3)
        return {
            "nodes": size, "records": args.records, "copies": copies, "held": count, "owned": owned,
            "all_arrived": arrived, "wait_s": round(waited, 2),
            "cluster_cpu_s": round(sum(spent.values()), 3), "node_cpu_s": {k: round(v, 3) for k, v in spent.items()},
            "cluster_s_per_m": sum(spent.values()) * per_m, "busiest_s_per_m": max(spent.values()) * per_m,
            "busiest": max(spent, key=spent.__getitem__), "producer_s_per_m": producer_cpu * per_m,
            "producer_cpu_s": round(producer_cpu, 3), "idle_cpu_per_s": round(idle_rate, 3),
            "held_idle_cpu_per_s": held_rate,
            "idle_s_per_m": idle_rate * (t1 - t0) * per_m, "window_s": round(t1 - t0, 2),
            "send_rc": rc, "send": line, "send_rate": send_rate(line), "lost_pids": lost,
            "producer_fixed_s": round(fixed, 3) if fixed_rc == 0 else None,
            "producer_net_s_per_m": (producer_cpu - fixed) * per_m if fixed_rc == 0 else None,
        }
    finally:
        close(cluster)


def scenario_cpu(args: argparse.Namespace) -> dict[str, Any]:
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    out: dict[str, Any] = {"numpy_loop_s_per_m": numpy_loop(min(args.records, M)),
                           "struct_loop_s_per_m": struct_loop(min(args.records, 200_000)),
                           "runs": []}
    for size in sizes:
        r = run_cpu_size(size, args)
        out["runs"].append(r)
        print(f"  cpu: {size} node(s) done: {r['held']:,} held in {r['wait_s']} s", file=sys.stderr, flush=True)
    by = {r["nodes"]: r for r in out["runs"]}
    if 4 in by and 2 in by:
        out["ratio_4_over_2"] = by[4]["cluster_s_per_m"] / by[2]["cluster_s_per_m"]
    if 4 in by and 1 in by:
        out["ratio_busiest4_over_lone"] = by[4]["busiest_s_per_m"] / by[1]["cluster_s_per_m"]
    return out


def print_cpu(out: dict[str, Any], args: argparse.Namespace) -> None:
    print(f"\ncpu: CPU of all node processes per million records through `corec-node send` "
          f"({args.records:,} new ids into n0, block size {args.block_size}, lan timers"
          + (f", {args.copies} copies of each block (fewer on smaller clusters)" if args.copies > 1 else "") + ")")
    struct_s = out["struct_loop_s_per_m"]
    fixed_all = [r["producer_fixed_s"] for r in out["runs"] if r["producer_fixed_s"] is not None]
    fixed = min(fixed_all) if fixed_all else None
    print(f"  baseline, this run: struct loop (pack + unpack the {RECORD.itemsize}-byte records, ~100 KB batches) "
          f"numpy {out['numpy_loop_s_per_m']:.3f} s/M"
          + (f", Python struct {struct_s:.2f} s/M" if struct_s is not None else "")
          + (f"; producer fixed cost (send --count 0) {fixed:.2f} s" if fixed is not None else ""))
    print("  baseline, issue 16 (before): " + ", ".join(f"{n} node{'s' * (n > 1)} {s} s/M" for n, s in BEFORE_CPU.items()))
    print(f"  {'nodes':>5} {'cluster s/M':>11} {'before':>7} {'busiest s/M':>11} {'producer s/M':>12} "
          f"{'net of fixed':>12} {'idle s/M':>8} {'send rec/s':>11} {'held':>12}"
          + (f" {'owned':>10} {'copies':>6}" if args.copies > 1 else ""))
    for r in out["runs"]:
        before = BEFORE_CPU.get(r["nodes"])
        rate = f"{r['send_rate']:,.0f}" if r["send_rate"] else "-"
        net = f"{r['producer_net_s_per_m']:.2f}" if r["producer_net_s_per_m"] is not None else "-"
        held_s = f"{r['held']:,}" + ("" if r["all_arrived"] else f" of {r['records'] * r['copies']:,}!")
        print(f"  {r['nodes']:>5} {r['cluster_s_per_m']:>11.2f} {before if before else '-':>7} "
              f"{r['busiest_s_per_m']:>11.2f} {r['producer_s_per_m']:>12.2f} {net:>12} {r['idle_s_per_m']:>8.2f} "
              f"{rate:>11} {held_s:>12}" + (f" {r['owned']:>10,} {r['copies']:>6}" if args.copies > 1 else ""))
        if r.get("held_idle_cpu_per_s") is not None:
            print(f"        idle holding the data ({args.quiet:g} s after, for {args.held_idle:g} s): "
                  f"{r['held_idle_cpu_per_s']:.3f} cores (empty, before the send: {r['idle_cpu_per_s']:.3f})")
        if not r["all_arrived"]:
            print(f"        not all arrived: {r['held']:,} held ({r['owned']:,} owned) after {r['wait_s']} s; "
                  f"send said: {r['send']}")
        if r["send_rc"] != 0:
            print(f"        send exited {r['send_rc']}: {r['send']}")
        if r["lost_pids"]:
            print(f"        processes gone during the run (their CPU is missing): {r['lost_pids']}")
    print("  (producer: the send process, net of fixed = minus its --count 0 cost; idle s/M: what the cluster"
          " burns idle, rate measured just before the send, times the same window; included in cluster s/M"
          + ("; held: entities in the nodes' stores, copies included; owned: entities their owners hold" if args.copies > 1
             else "") + ")")
    if "ratio_4_over_2" in out:
        print(f"  4 nodes / 2 nodes: {out['ratio_4_over_2']:.2f}x "
              f"(before {BEFORE_CPU[4] / BEFORE_CPU[2]:.2f}x; issue's target at most 1.25x)")
    if "ratio_busiest4_over_lone" in out:
        print(f"  busiest of 4 / lone node: {out['ratio_busiest4_over_lone']:.2f}x (issue's target at most 0.6x)")


def scenario_memory(args: argparse.Namespace) -> dict[str, Any]:
    cluster = Cluster(Path(tempfile.mkdtemp(prefix="corec-bench-ingest-mem-")))
    try:
        nodes = ready_cluster(cluster, args.memory_nodes, node_env(args))
        time.sleep(args.idle)
        before = rss_by_node(nodes)
        peak = sum(before.values())
        producer = Producer(send_cmd(nodes[0], args.entities))

        def busy() -> bool:
            nonlocal peak
            peak = max(peak, rss_bytes(cluster_pids(nodes)))
            return producer.running()

        copies = copies_in(args.memory_nodes, args)
        count, owned, waited, arrived = wait_stored(nodes, args.entities * copies, args.entities, args.timeout,
                                                    busy=busy)
        rc, line, _ = producer.finish(args.timeout)
        end = time.monotonic() + args.settle
        while time.monotonic() < end:
            peak = max(peak, rss_bytes(cluster_pids(nodes)))
            time.sleep(0.25)
        after = rss_by_node(nodes)
        peak = max(peak, sum(after.values()))
        per_node = stored(nodes)
        counts = {k: h for k, (h, _) in per_node.items()}  # copies included: what each store holds
    finally:
        close(cluster)
    growth = sum(after.values()) - sum(before.values())
    return {
        "nodes": args.memory_nodes, "entities": args.entities, "copies": copies, "held": count, "owned": owned,
        "all_arrived": arrived,
        "wait_s": round(waited, 2), "send_rc": rc, "send": line,
        "rss_before": sum(before.values()), "rss_after": sum(after.values()), "rss_peak": peak,
        "growth": growth, "bytes_per_entity": growth / args.entities,
        "bytes_per_entity_per_copy": growth / args.entities / copies,
        "node_growth": {k: after[k] - before[k] for k in after}, "node_entities": counts,
        "node_owned": {k: o for k, (_, o) in per_node.items()},
        "store": store_bytes(counts, args.block_size),
    }


def print_memory(r: dict[str, Any], args: argparse.Namespace) -> None:
    mb = 1024 * 1024
    print(f"\nmemory: RSS of all node processes, {r['nodes']} nodes, {r['entities']:,} new entities, "
          f"settled {args.settle:g} s")
    print(f"  before {r['rss_before'] / mb:.1f} MB, after {r['rss_after'] / mb:.1f} MB "
          f"(peak {r['rss_peak'] / mb:.1f} MB): growth {r['growth'] / mb:.1f} MB")
    print(f"  growth per entity {r['bytes_per_entity']:.0f} B; per entity per copy ({r['copies']} "
          f"cop{'ies' if r['copies'] != 1 else 'y'}) {r['bytes_per_entity_per_copy']:.0f} B")
    print("  per node: " + ", ".join(f"{k} {v / mb:+.1f} MB ({r['node_entities'].get(k, 0):,} entities"
                                      + (f", {r['node_owned'].get(k, 0):,} owned" if r["copies"] > 1 else "") + ")"
                                      for k, v in r["node_growth"].items()))
    store = r["store"]
    store_s = (f"store alone (in-process EntityStore, same entities per node) {store[0]:.1f} B/entity; "
               if store else "store alone: not available in this build; ")
    print(f"  baseline: {store_s}seed {SEED_BYTES} B/entity; issue 16 before {BEFORE_MEMORY}/entity; "
          f"target at most {TARGET_BYTES} B/entity/copy")
    if not r["all_arrived"]:
        print(f"  not all arrived: {r['held']:,} of {r['entities'] * r['copies']:,} held ({r['owned']:,} owned) "
              f"after {r['wait_s']} s; "
              f"send said: {r['send']}")
    elif r["send_rc"] != 0:
        print(f"  send exited {r['send_rc']}: {r['send']}")


def has_acks() -> bool:
    out = subprocess.run([sys.executable, "-m", "corec_node", "send", "--help"], capture_output=True, text=True)
    return "--acks" in out.stdout


def scenario_throughput(args: argparse.Namespace) -> dict[str, Any]:
    count = args.throughput_records or args.records
    raw_count = max(count, RAW_MIN_RECORDS)
    raw, raw_all = raw_pyzmq(raw_count)
    acks = has_acks()
    modes: list[tuple[str, list[str]]] = [("default options", [])]
    if acks:
        modes += [("acks 0", ["--acks", "0"]), ("acks 1", ["--acks", "1"]), ("acks all", ["--acks", "all"])]
    runs = []
    copies = copies_in(args.throughput_nodes, args)
    for label, extra in modes:
        cluster = Cluster(Path(tempfile.mkdtemp(prefix="corec-bench-ingest-tput-")))
        try:
            nodes = ready_cluster(cluster, args.throughput_nodes, node_env(args))
            producer = Producer(send_cmd(nodes[0], count, extra=extra))
            n, owned, waited, arrived = wait_stored(nodes, count * copies, count, args.timeout, busy=producer.running)
            rc, line, cpu = producer.finish(args.timeout)
        finally:
            close(cluster)
        runs.append({"mode": label, "send_rate": send_rate(line),
                     "stored_rate": owned / waited if waited else None,  # entities, each in all its copies
                     "stored_copies_rate": n / waited if waited else None,
                     "held": n, "owned": owned, "all_arrived": arrived, "send_rc": rc, "send": line,
                     "producer_cpu_s": round(cpu, 3)})
    return {"records": count, "nodes": args.throughput_nodes, "copies": copies, "raw_records": raw_count,
            "raw_rate": raw, "raw_rates": raw_all,
            "acks": acks, "runs": runs}


def print_throughput(r: dict[str, Any], args: argparse.Namespace) -> None:
    print(f"\nthroughput: {r['records']:,} records into {r['nodes']} nodes"
          + (f", {r['copies']} copies of each block" if r["copies"] > 1 else ""))
    print(f"  raw pyzmq, this run (PUSH/PULL loopback TCP, {r['raw_records']:,} records, "
          f"{FRAME_BYTES // RECORD.itemsize:,} {RECORD.itemsize}-byte records a frame, best of {len(r['raw_rates'])}): "
          f"{r['raw_rate']:,.0f} records/s "
          f"(each: {', '.join(f'{x:,.0f}' for x in r['raw_rates'])})")
    for run in r["runs"]:
        rate = run["send_rate"]
        share = f" = {rate / r['raw_rate']:.1%} of raw" if rate else ""
        stored = (f"; stored by all nodes {run['stored_rate']:,.0f} records/s from the send's start"
                  + (f" (each in its {r['copies']} copies: {run['stored_copies_rate']:,.0f} copies/s)"
                     if r["copies"] > 1 else "")
                  if run["stored_rate"] and run["all_arrived"] else "")
        print(f"  corec-node send, {run['mode']}: {rate:,.0f} records/s by send's clock{share}{stored}"
              if rate else f"  corec-node send, {run['mode']}: no rate (exit {run['send_rc']}): {run['send']}")
        if not run["all_arrived"]:
            print(f"    not all arrived: {run['held']:,} of {r['records'] * r['copies']:,} held "
                  f"({run['owned']:,} of {r['records']:,} owned); send said: {run['send']}")
    if not r["acks"]:
        print("  acks not available in this build (send --help has no --acks)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenarios", default="cpu,memory,throughput", help="any of cpu,memory,throughput")
    p.add_argument("--sizes", default="1,2,4,8", help="cluster sizes of the cpu scenario")
    p.add_argument("--records", type=int, default=2_000_000, help="records sent per cluster size (cpu)")
    p.add_argument("--entities", type=int, default=1_000_000, help="new entities loaded (memory)")
    p.add_argument("--memory-nodes", type=int, default=3)
    p.add_argument("--settle", type=float, default=5.0, help="seconds after the last entity is stored (memory)")
    p.add_argument("--throughput-records", type=int, help="records sent (throughput; default --records)")
    p.add_argument("--throughput-nodes", type=int, default=3)
    p.add_argument("--block-size", type=int, default=1000, help="engine.block_size of every node")
    p.add_argument("--copies", type=int, default=1,
                   help="copies of each block the cluster keeps, the owner's included (engine.replicas)")
    p.add_argument("--idle", type=float, default=3.0, help="seconds a fresh cluster is watched idle first")
    p.add_argument("--held-idle", type=float, default=10.0,
                   help="cpu: seconds the cluster is watched idle once it holds the data, --quiet s after (0: not)")
    p.add_argument("--quiet", type=float, default=10.0, help="seconds a fresh cluster settles before it is watched idle")
    p.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for the cluster to hold all")
    args = p.parse_args(argv)
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = set(scenarios) - {"cpu", "memory", "throughput"}
    if unknown:
        p.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    print(f"ingest_scale: {os.cpu_count()} cores ({cpu_model()}), load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; rerun: python bench/ingest_scale.py "
          + " ".join(sys.argv[1:] if argv is None else argv), flush=True)
    results: dict[str, Any] = {}
    if "cpu" in scenarios:
        results["cpu"] = scenario_cpu(args)
        print_cpu(results["cpu"], args)
    if "memory" in scenarios:
        results["memory"] = scenario_memory(args)
        print_memory(results["memory"], args)
    if "throughput" in scenarios:
        results["throughput"] = scenario_throughput(args)
        print_throughput(results["throughput"], args)
    print(json.dumps({"bench": "ingest_scale", "record_bytes": RECORD.itemsize, "block_size": args.block_size,
                      "copies": args.copies, "cores": os.cpu_count(), "cpu": cpu_model(), **results}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
