"""Entity engine benchmark: bytes per entity, ingest rate, tick time.

    python bench/engine.py [memory|tick|all|throughput|latency] [--entities 1000000]
                           [--batch 100000] [--block-size 1000] [--ticks 50]
                           [--frame 10000] [--reps 50] [--runs 3] [--samples 300]

Parts:
  (a) memory      RSS growth of this process while a store takes 1 M entities in batches,
                  and store.nbytes(), as bytes per entity; next to the seeds' 1 KB/entity,
                  Akka's ~400 B/actor, the bare 10 B wire record and a Python dict of lists
                  measured here. Also the ingest rates seen on the way.
  (b) tick        aggregate() over 1 M entities in 1,000 blocks: median, p99 and best of
                  --ticks runs; next to a pure-Python loop over blocks (a subset, scaled)
                  and a numpy loop over blocks measured in the same run, and the seeds'
                  10-20 ms latency promise.
  (c) throughput  records/s from a producer into two real nodes' stores (owner-routed:
                  each record straight to its owner; --acks 0 or 1), sustained over --reps passes (50 M records by default) once the
                  nodes are warm (first audit fit done), median of --runs runs, against
                  raw pyzmq PUB/SUB with the same frames (same run, median of as many
                  runs); and the first load.
  (d) latency     producer send of a 100-record batch -> records in the owner's store and
                  its corec_entities hook run, median and p99, against the seeds' 10-20 ms.

Prints a table, then one JSON line ``{"bench": "engine", ...}``. Figures only: nothing
here passes or fails on time. The machine may be shared: medians and bests are reported.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # works without installing

import numpy as np  # noqa: E402

from corec_node.engine import EntityStore, aggregate  # noqa: E402
from corec_node.wire import ENTITY_DTYPE  # noqa: E402
from _machine import cpu_model  # noqa: E402  (bench/ is on sys.path when run as a script)

SEED_BYTES_PER_ENTITY = 1024  # seeds: "1 KB por entidad", 1 M entities in 1 GB
AKKA_BYTES_PER_ACTOR = 400  # Akka docs: ~2.7 M actors per GB of heap
WIRE_RECORD_BYTES = 10
SEED_LATENCY_MS = (10, 20)
TICK_TARGET_MS = 10


def rss_bytes() -> int:
    """Resident set size from /proc/self/statm (pages)."""
    fields = Path("/proc/self/statm").read_text().split()
    return int(fields[1]) * os.sysconf("SC_PAGE_SIZE")


def trim() -> None:
    """Give freed heap back to the OS (glibc), so RSS shows what is held, not garbage."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def dataset(n: int, block_size: int, seed: int = 7) -> np.ndarray:
    """n sensor-like records in n / block_size full blocks: 4 channels of n/4 sequential
    ids (so 1 M entities, block size 1000 -> 1,000 blocks), values ~ N(20, 3) rounded to
    0.01, 98% active, in random arrival order."""
    rng = np.random.default_rng(seed)
    per = n // 4
    ids = np.tile(np.arange(per, dtype=np.uint32), 4)
    channel = np.repeat(np.arange(4, dtype=np.uint8), per)
    out = np.empty(len(ids), ENTITY_DTYPE)
    out["id"] = ids
    out["channel"] = channel
    out["value"] = np.round(rng.normal(20.0, 3.0, len(ids)), 2)
    out["active"] = rng.random(len(ids)) < 0.98
    return out[rng.permutation(len(out))]


# -- (a) memory ------------------------------------------------------------------------


def bench_memory(args: argparse.Namespace) -> dict[str, Any]:
    data = dataset(args.entities, args.block_size)
    n = len(data)
    trim()
    before = rss_bytes()
    store = EntityStore(block_size=args.block_size)
    t0 = time.perf_counter()
    for start in range(0, n, args.batch):
        store.ingest(data[start : start + args.batch])
    bootstrap_s = time.perf_counter() - t0
    aggregate(store, 0)  # the layout and its scratch buffers are part of what is held
    after_raw = rss_bytes()
    trim()
    after = rss_bytes()
    # steady state: every entity reports again, as one sorted sweep and as random batches
    sweep = np.sort(data, order=["channel", "id"])
    t_sweep = min(_timed(lambda: store.ingest(sweep)) for _ in range(3))
    t_batches = min(
        _timed(lambda: [store.ingest(data[s : s + args.batch]) for s in range(0, n, args.batch)])
        for _ in range(3)
    )
    out = {
        "entities": store.count(),
        "blocks": len(store.block_ids()),
        "rss_bytes_per_entity": (after - before) / n,
        "rss_untrimmed_bytes_per_entity": (after_raw - before) / n,
        "nbytes_per_entity": store.nbytes() / n,
        "capacity": store.capacity,
        "ingest_new_rps": n / bootstrap_s,
        "ingest_update_sorted_rps": n / t_sweep,
        "ingest_update_batches_rps": n / t_batches,
    }
    del store, sweep
    out["python_dict_bytes_per_entity"] = _python_dict_baseline(min(n, 100_000))
    return out


def _timed(fn: Any) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _python_dict_baseline(n: int) -> float:
    """RSS per entity of the obvious Python store: {(channel, id): [value, active, streak]}."""
    trim()
    before = rss_bytes()
    d = {(i & 3, i): [20.0 + i * 1e-6, True, 0] for i in range(n)}
    after = rss_bytes()
    assert len(d) == n
    del d
    return (after - before) / n


# -- (b) tick --------------------------------------------------------------------------


def bench_tick(args: argparse.Namespace) -> dict[str, Any]:
    data = dataset(args.entities, args.block_size)
    store = EntityStore(block_size=args.block_size)
    store.ingest(data)
    # a few erroring entities, as in production
    err = data[:: 997].copy()
    err["value"] = np.nan
    store.ingest(err)
    aggregate(store, 0)  # build the layout once (it is rebuilt only when keys change)
    times = []
    for t in range(args.ticks):
        t0 = time.perf_counter()
        aggregate(store, t)
        times.append(time.perf_counter() - t0)
    all_active = EntityStore(block_size=args.block_size)
    ok = data.copy()
    ok["active"] = 1
    all_active.ingest(ok)
    aggregate(all_active, 0)
    times_all = [_timed(lambda: aggregate(all_active, 1)) for _ in range(args.ticks)]

    py_blocks = max(1, min(args.py_blocks, len(store.block_ids())))
    py_s = _python_loop_baseline(store, py_blocks) * len(store.block_ids()) / py_blocks
    np_s = min(_numpy_loop_baseline(store) for _ in range(3))
    ms = sorted(x * 1e3 for x in times)
    return {
        "entities": store.count(),
        "blocks": len(store.block_ids()),
        "tick_ms_median": statistics.median(ms),
        "tick_ms_p99": ms[min(len(ms) - 1, int(round(0.99 * (len(ms) - 1))))],
        "tick_ms_best": ms[0],
        "tick_all_active_ms_median": statistics.median(times_all) * 1e3,
        "python_loop_ms_scaled": py_s * 1e3,
        "python_loop_blocks_measured": py_blocks,
        "numpy_loop_over_blocks_ms": np_s * 1e3,
    }


def _python_loop_baseline(store: EntityStore, blocks: int) -> float:
    """Plain Python: per block, per entity, the same statistics (active only)."""
    starts = store.block_starts().tolist()
    values = store.values[: starts[blocks]].tolist()
    active = store.active[: starts[blocks]].tolist()
    streak = store.streaks[: starts[blocks]].tolist()
    t0 = time.perf_counter()
    rows = []
    for b in range(blocks):
        s, e = starts[b], starts[b + 1]
        n = na = bad = 0
        tot = sq = 0.0
        lo, hi = float("inf"), float("-inf")
        for i in range(s, e):
            n += 1
            if streak[i]:
                bad += 1
            if active[i]:
                v = values[i]
                na += 1
                tot += v
                sq += v * v
                lo = min(lo, v)
                hi = max(hi, v)
        mean = tot / na if na else float("nan")
        std = max(sq / na - mean * mean, 0.0) ** 0.5 if na else float("nan")
        rows.append((n, na, mean, lo, hi, std, bad / n))
    return time.perf_counter() - t0


def _numpy_loop_baseline(store: EntityStore) -> float:
    """numpy per block (a Python loop over blocks, vectorized inside each)."""
    starts = store.block_starts().tolist()
    values, active, streak = store.values, store.active, store.streaks
    t0 = time.perf_counter()
    for b in range(len(starts) - 1):
        sl = slice(starts[b], starts[b + 1])
        v = values[sl][active[sl]]
        if len(v):
            v.mean(), v.min(), v.max(), v.std()
        np.count_nonzero(streak[sl])
    return time.perf_counter() - t0


# -- (c) throughput and (d) latency: real node processes on loopback ---------------------

RAW_SUB = """
import asyncio, sys, time, zmq, zmq.asyncio
async def main(port, frames):
    ctx = zmq.asyncio.Context()
    sub = ctx.socket(zmq.SUB); sub.setsockopt(zmq.RCVHWM, 0); sub.setsockopt(zmq.SUBSCRIBE, b"ent.")
    sub.connect(f"tcp://127.0.0.1:{port}")
    print("ready", flush=True)
    await sub.recv_multipart(copy=False)  # the publisher says hello until one arrives
    print("heard", flush=True)
    while (await sub.recv_multipart())[1] != b"go":
        pass
    t0 = time.perf_counter()
    for _ in range(frames):
        await sub.recv_multipart(copy=False)
    print(time.perf_counter() - t0, flush=True)
asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
"""


def _raw_pubsub(frames: int, frame_records: int) -> float:
    """Records/s of raw pyzmq PUB/SUB (asyncio subscriber in another process) over
    ``frames`` frames of ``frame_records`` records, timed from the first frame after "go"."""
    import select
    import subprocess

    import zmq

    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, 0)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    proc = subprocess.Popen([sys.executable, "-c", RAW_SUB, str(port), str(frames)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    proc.stdout.readline()
    payload = np.zeros(frame_records, dtype=ENTITY_DTYPE).tobytes()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # slow joiner: say hello until the subscriber hears one
        pub.send_multipart([b"ent.000", b"hello", b""])
        if select.select([proc.stdout], [], [], 0.01)[0]:
            break
    proc.stdout.readline()
    pub.send_multipart([b"ent.000", b"go", b""])
    for _ in range(frames):
        pub.send_multipart([b"ent.000", b"x", payload], copy=False)
    elapsed = float(proc.stdout.readline())
    proc.wait(30)
    pub.close(0)
    ctx.term()
    return frames * frame_records / elapsed


def _two_nodes(env: dict[str, str] | None = None):
    import tempfile
    from pathlib import Path

    from corec_node.testing.cluster import Cluster, eventually

    cluster = Cluster(Path(tempfile.mkdtemp(prefix="corec-bench-")))
    a = cluster.start("a", extra_env=env).wait_ready()
    b = cluster.start("b", join=[a.addr], extra_env=env).wait_ready()
    eventually(lambda: all(n.ctl("status")["members"].get("alive") == 2 for n in (a, b)), 20)
    return cluster, a, b


def _stored(nodes) -> int:
    return sum(n.ctl("status")["entities"] for n in nodes)


def _ingested(nodes) -> int:
    return sum(n.ctl("status")["ingested"] for n in nodes)


def _wait_ingested(nodes, target: int, timeout: float = 120.0) -> bool:
    """Poll until the nodes have ingested ``target`` records (False on timeout: records lost)."""
    deadline = time.monotonic() + timeout
    while _ingested(nodes) < target:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)  # each poll is a status call on both nodes: not too often
    return True


def _wait_warm(nodes, timeout: float = 60.0) -> bool:
    """Wait until every node has fitted its block auditor once: the first fit imports
    scikit-learn (about a second of CPU), which belongs to a node's start, not its steady
    state. Later refits (every 10 ticks) and per-tick scoring stay in the measured run."""
    deadline = time.monotonic() + timeout
    while not all(n.ctl("status")["audit_fits"] for n in nodes):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def bench_throughput(args: argparse.Namespace) -> dict[str, Any]:
    """(c) records/s from a producer into the owners' stores (two nodes; since protocol 1.5
    the producer sends each record to its owner's data socket), against raw pyzmq PUB/SUB with frames of
    the same size, measured in the same run. First load: ``--entities`` new entities.
    Steady state: the same entities report again (updates, as sensors do), ``--reps``
    times in one go, so the figure is a sustained rate, not a burst into queues. Both the
    steady run and raw pyzmq are measured ``--runs`` times (the machine is noisy): the
    medians are compared, and every run is reported."""
    from corec_node.client import Client

    n, frame = args.entities, args.frame
    recs = np.zeros(n, dtype=ENTITY_DTYPE)
    recs["id"] = np.arange(n) // 4
    recs["channel"] = np.arange(n) % 4
    recs["value"] = np.random.default_rng(1).normal(20, 2, n).astype(np.float32)
    recs["active"] = 1
    recs = recs[np.argsort(recs["channel"], kind="stable")]
    cluster, a, b = _two_nodes()
    try:
        t0 = time.perf_counter()
        with Client(a.addr, batch=frame) as client:
            client.send(recs)
        complete = _wait_ingested((a, b), n)
        first = time.perf_counter() - t0
        stored = _stored((a, b))
        warm = _wait_warm((a, b))
        runs = []
        for _ in range(args.runs):
            before = _ingested((a, b))
            t0 = time.perf_counter()
            with Client(a.addr, batch=frame, acks=args.acks) as client:
                for _ in range(args.reps):
                    client.send(recs)
            complete = _wait_ingested((a, b), before + n * args.reps) and complete
            runs.append(n * args.reps / (time.perf_counter() - t0))
        status = [node.ctl("status") for node in (a, b)]
    finally:
        cluster.close()
    total = n * args.reps
    raws = [_raw_pubsub(max(2000, total // frame), frame) for _ in range(args.runs)]
    corec, raw = statistics.median(runs), statistics.median(raws)
    return {"records": total, "frame_records": frame, "runs": args.runs, "acks": args.acks, "corec_rps": corec,
            "corec_rps_runs": runs, "corec_first_load_rps": n / first, "entities_stored": stored,
            "all_ingested": complete, "warmed_up": warm, "ingest_dropped": sum(st["ingest_dropped"] for st in status),
            "flow_holds": status[0]["flow"]["holds"], "flow_requests": status[1]["flow"]["requests"],
            "raw_pyzmq_rps": raw, "raw_pyzmq_rps_runs": raws, "share_of_raw": corec / raw}


LATENCY_PROBE = """
import os, socket, time
from corec_node.engine.blocks import block_id
from corec_node.hookspecs import hookimpl

SOCK = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
PORT = int(os.environ["COREC_BENCH_LATENCY_PORT"])

@hookimpl
def corec_channels():
    return [9]

@hookimpl
async def corec_entities(node, channel, records):
    # called once the batch is stored; only the owner of the batch's block answers
    first = int(records["id"][0])
    if node.engine.placement.owner(block_id(channel, first, node.engine.block_size)) == node.name:
        SOCK.sendto(b"%d %.9f" % (first, time.monotonic()), ("127.0.0.1", PORT))
"""


def bench_latency(args: argparse.Namespace) -> dict[str, Any]:
    """(d) latency from a producer's send of a 100-record batch to its owner's
    ``corec_entities`` hook, which runs once the batch is in the owner's store: a probe
    plugin sends the monotonic time (one clock for every process here) over UDP. Half the
    batches cross node a's PUB to their owner b. One batch in flight at a time, 2 ms apart:
    back to back, the node that is not the owner may still be running its hook for the last
    batch, and a plugin still busy skips a batch (counted in ``hook_calls_dropped``)."""
    import socket
    import tempfile
    from pathlib import Path

    from corec_node.client import Client

    plugins = Path(tempfile.mkdtemp(prefix="corec-bench-probe-"))
    (plugins / "latency_probe.py").write_text(LATENCY_PROBE)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.settimeout(2.0)
    env = {"COREC_PLUGINS_PATHS": str(plugins), "COREC_BENCH_LATENCY_PORT": str(udp.getsockname()[1])}
    samples, lost = [], 0
    cluster, a, b = _two_nodes(env)
    try:
        with Client(a.addr, batch=100) as client:
            for i in range(args.samples + 20):  # the first 20 warm up
                recs = np.zeros(100, dtype=ENTITY_DTYPE)
                recs["id"] = np.arange(100) + i * 1000
                recs["channel"] = 9
                recs["value"] = 1.0
                recs["active"] = 1
                time.sleep(0.002)  # the other node's hook for the last batch has run: not "busy"
                t0 = time.monotonic()
                client.send(recs)
                try:
                    while True:
                        first, at = udp.recv(64).split()
                        if int(first) == i * 1000:
                            break
                except TimeoutError:
                    lost += i >= 20
                    continue
                if i >= 20:
                    samples.append((float(at) - t0) * 1000)
        hook_dropped = sum(p["dropped"] for n in (a, b) for p in n.ctl("plugins") if p["name"] == "latency_probe")
    finally:
        cluster.close()
        udp.close()
    arr = np.array(samples)
    return {"samples": len(arr), "lost": lost, "hook_calls_dropped": hook_dropped, "latency_ms_median": float(np.median(arr)),
            "latency_ms_p99": float(np.percentile(arr, 99)), "latency_ms_max": float(arr.max())}


PARTS = {"memory": bench_memory, "tick": bench_tick,
         "throughput": bench_throughput, "latency": bench_latency}


def print_table(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    print(f"CoreC engine benchmark: {args.entities:,} entities, block size {args.block_size}")
    print(f"{cpu_model()}, Python {platform.python_version()}, numpy {np.__version__}, "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    if "memory" in results:
        m = results["memory"]
        print()
        print(f"(a) memory for {m['entities']:,} entities in {m['blocks']:,} blocks")
        print(f"  {'what':<44} {'bytes/entity':>13}")
        for label, value in (
            ("CoreC EntityStore, RSS growth", m["rss_bytes_per_entity"]),
            ("CoreC EntityStore, RSS growth before trim", m["rss_untrimmed_bytes_per_entity"]),
            ("CoreC EntityStore, nbytes()", m["nbytes_per_entity"]),
            ("wire record (bare)", WIRE_RECORD_BYTES),
            ("Python dict of lists (measured here)", m["python_dict_bytes_per_entity"]),
            ("Akka actor (documented)", AKKA_BYTES_PER_ACTOR),
            ("seed documents' budget", SEED_BYTES_PER_ENTITY),
        ):
            print(f"  {label:<44} {value:>13,.1f}")
        print(f"  ingest: new entities {m['ingest_new_rps']:,.0f} rec/s (batches of "
              f"{args.batch:,}, random order); updates {m['ingest_update_sorted_rps']:,.0f} "
              f"rec/s as one sorted sweep, {m['ingest_update_batches_rps']:,.0f} rec/s in "
              f"random batches")
    if "tick" in results:
        t = results["tick"]
        print()
        print(f"(b) tick: aggregate() over {t['entities']:,} entities in {t['blocks']:,} blocks")
        print(f"  {'what':<44} {'ms':>10}")
        for label, value in (
            ("CoreC aggregate, median", t["tick_ms_median"]),
            ("CoreC aggregate, p99", t["tick_ms_p99"]),
            ("CoreC aggregate, best", t["tick_ms_best"]),
            ("CoreC aggregate, all active, median", t["tick_all_active_ms_median"]),
            ("numpy loop over blocks", t["numpy_loop_over_blocks_ms"]),
            (f"pure Python loop ({t['python_loop_blocks_measured']} blocks, scaled)",
             t["python_loop_ms_scaled"]),
            ("seeds' latency promise (whole path)", SEED_LATENCY_MS[1]),
            ("target for one tick", TICK_TARGET_MS),
        ):
            print(f"  {label:<44} {value:>10,.2f}")
        print(f"  speedup: {t['python_loop_ms_scaled'] / t['tick_ms_median']:,.0f}x over pure "
              f"Python, {t['numpy_loop_over_blocks_ms'] / t['tick_ms_median']:,.1f}x over a "
              f"numpy loop over blocks")


def print_network(results: dict[str, dict[str, Any]]) -> None:
    if "throughput" in results:
        t = results["throughput"]
        print()
        print(f"(c) throughput: {t['runs']} runs of {t['records']:,} records in frames of {t['frame_records']:,}"
              f" ({'all ingested' if t['all_ingested'] else 'SOME LOST'}, "
              f"{t['ingest_dropped']} batches dropped, "
              f"{'nodes warm' if t['warmed_up'] else 'NOT WARM: first audit fit not seen'})")
        label = f"CoreC producer -> owners, acks {t.get('acks', 1)}"
        print(f"  {label:<44} {t['corec_rps']:>14,.0f} rec/s (median; "
              f"runs {', '.join(f'{r / 1e6:.1f}' for r in t['corec_rps_runs'])} M)")
        print(f"  {'  same, first load (new entities inserted)':<44} {t['corec_first_load_rps']:>14,.0f} rec/s")
        print(f"  {'raw pyzmq PUB/SUB, same frames':<44} {t['raw_pyzmq_rps']:>14,.0f} rec/s (median; "
              f"runs {', '.join(f'{r / 1e6:.0f}' for r in t['raw_pyzmq_rps_runs'])} M)")
        print(f"  {'flow control: producer batches held by a':<44} {t['flow_holds']:>14,}"
              f" (b asked {t['flow_requests']:,} times)")
        print(f"  {'share of raw (target >= 0.25)':<44} {t['share_of_raw']:>14.2f}")
    if "latency" in results:
        t = results["latency"]
        print()
        print(f"(d) latency, send -> owner's store and corec_entities hook ({t['samples']} batches of 100, {t['lost']} lost)")
        print(f"  {'median':<44} {t['latency_ms_median']:>10.2f} ms")
        print(f"  {'p99 (target < 5)':<44} {t['latency_ms_p99']:>10.2f} ms")
        print(f"  {'seeds promised':<44} {'10-20':>10} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", nargs="?", default="all", choices=[*PARTS, "all"])
    parser.add_argument("--entities", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=100_000)
    parser.add_argument("--block-size", type=int, default=1000)
    parser.add_argument("--ticks", type=int, default=50)
    parser.add_argument("--frame", type=int, default=10_000, help="records per frame (c)")
    parser.add_argument("--acks", type=int, choices=(0, 1), default=1,
                        help="(c) 1: every batch answered (the default); 0: none, the rate is what the owners stored")
    parser.add_argument("--reps", type=int, default=50,
                        help="times (c) sends the entities again for the steady-state rate")
    parser.add_argument("--runs", type=int, default=3,
                        help="times (c) measures the steady rate and raw pyzmq (medians compared)")
    parser.add_argument("--samples", type=int, default=300, help="latency samples (d)")
    parser.add_argument("--py-blocks", type=int, default=20,
                        help="blocks the pure-Python baseline measures (then scaled)")
    args = parser.parse_args()
    parts = list(PARTS) if args.part == "all" else [args.part]
    results: dict[str, dict[str, Any]] = {}
    for part in parts:
        try:
            results[part] = PARTS[part](args)
        except NotImplementedError as exc:
            print(f"{part}: {exc}", file=sys.stderr)
            return 2
    print_table(results, args)
    print_network(results)
    print()
    print(json.dumps({"bench": "engine", "entities": args.entities,
                      "block_size": args.block_size, "cpu": cpu_model(),
                      "loadavg": round(os.getloadavg()[0], 2), **{
                          f"{part}.{k}": (round(v, 4) if isinstance(v, float) else v)
                          for part, r in results.items() for k, v in r.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
