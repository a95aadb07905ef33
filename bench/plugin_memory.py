"""What the plugin memory watch costs (plugins.memory_watch, tracemalloc): per allocation on
the ingest path, per snapshot, and on a real node.

    python bench/plugin_memory.py [--batches 200] [--batch 10000] [--small 100]
                                  [--objects 100000,1000000] [--e2e-records 2000000] [--no-e2e] [--no-micro]

Cases, each against the baseline without tracemalloc measured in the same run:
  ingest    in this process, the node's own ingest steps for one entity batch: the message
            decoded from its ZeroMQ frames (decode_message), its records (decode_batch) and
            stored (EngineHost.ingest); for --batch records per batch (numpy-heavy) and
            --small records per batch (per-message Python work dominates). Records/s,
            median of 5 runs, with tracemalloc off and tracing 1 (plugins.memory_frames'
            default), 4 and 16 frames.
  snapshot  tracemalloc.take_snapshot() (it holds the GIL: the loop waits) and the split by
            plugin (plugins.memory.attribute, in the worker thread), with --objects live
            traced allocations besides the interpreter's own.
  e2e       a real ``corec-node run`` with a plugin taking channel 1, watch off and on
            (interval 1 s; 1 and 4 frames): CPU seconds of the node process per million records sent by
            ``corec-node send`` (three sends of --e2e-records, sweeps of the same ids),
            and the send's wall time.

Prints a table, then one JSON line ``{"bench": "plugin_memory", ...}``. Figures only:
nothing passes or fails on time; the machine may be shared.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import tracemalloc
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # works without installing

import numpy as np  # noqa: E402

from corec_node.engine.host import EngineHost  # noqa: E402
from corec_node.plugins.memory import PluginFiles, attribute  # noqa: E402
from corec_node.wire import ENTITY_DTYPE  # noqa: E402
from corec_node.wire.batch import decode_batch, make_batch  # noqa: E402
from corec_node.wire.envelope import decode_message, encode_message  # noqa: E402
from _machine import cpu_model  # noqa: E402  (bench/ is on sys.path when run as a script)

FRAMES = (0, 1, 4, 16)  # 0: tracemalloc off (the baseline); plugins.memory_frames is 1 by default
SNAPSHOT_FRAMES = 16  # the snapshot's cost hardly depends on the depth
E2E_FRAMES = (0, 1, 4)  # 0: the watch off


def frames_for(batches: int, size: int) -> list[list[bytes]]:
    rng = np.random.default_rng(1)
    out = []
    for i in range(batches):
        r = np.zeros(size, ENTITY_DTYPE)
        r["id"] = np.arange(i * size, (i + 1) * size, dtype=np.uint32) % 1_000_000
        r["channel"] = 1
        r["value"] = rng.normal(20, 3, size).astype(np.float32)
        r["active"] = True
        msg, payload = make_batch(r, 1)
        out.append([bytes(f) for f in encode_message(msg, sender="producer", seq=i + 1, cluster="corec", payload=payload)])
    return out


def ingest_rate(wire: list[list[bytes]], size: int) -> float:
    host = EngineHost("bench")
    for frames in wire[:5]:  # warm: blocks created, code paths hot
        _, env, payload = decode_message(frames, cluster="corec")
        host.ingest(decode_batch(env.msg, payload))
    t0 = time.perf_counter()
    for frames in wire:
        _, env, payload = decode_message(frames, cluster="corec")
        host.ingest(decode_batch(env.msg, payload))
    return len(wire) * size / (time.perf_counter() - t0)


def ingest_case(batches: int, size: int) -> dict[str, float]:
    wire = frames_for(batches, size)
    out = {}
    for nframe in FRAMES:
        rates = []
        for _ in range(5):
            if nframe:
                tracemalloc.start(nframe)
            try:
                rates.append(ingest_rate(wire, size))
            finally:
                if nframe:
                    tracemalloc.stop()
        out[str(nframe)] = statistics.median(rates)
    return out


def snapshot_case(objects: int) -> dict[str, float]:
    tracemalloc.start(SNAPSHOT_FRAMES)
    try:
        held = [{"id": i, "v": float(i)} for i in range(objects)]
        plugins = [PluginFiles("here", files=(__file__,))]
        t0 = time.perf_counter()
        snap = tracemalloc.take_snapshot()
        t1 = time.perf_counter()
        raw = snap.traces._traces
        totals = attribute(raw, plugins)
        t2 = time.perf_counter()
        assert totals["here"] > 0
        return {"objects": objects, "traces": len(raw), "snapshot_s": t1 - t0, "attribute_s": t2 - t1,
                "held": len(held)}
    finally:
        tracemalloc.stop()


NOOP = '''
    from corec_node.hookspecs import hookimpl

    @hookimpl
    def corec_channels():
        return [1]

    @hookimpl
    def corec_entities(records):
        return None
'''


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def e2e_case(records: int, frames: int, root: Path) -> dict[str, float]:
    from corec_node.testing.cluster import Cluster

    organs = root / "organs"
    organs.mkdir(exist_ok=True)
    (organs / "noop.py").write_text(textwrap.dedent(NOOP))
    watch = frames > 0
    (root / f"frames{frames}").mkdir()
    cluster = Cluster(root / f"frames{frames}")
    env = {"COREC_PLUGINS_PATHS": str(organs), "COREC_PLUGINS_MEMORY_WATCH": "1" if watch else "0",
           "COREC_PLUGINS_MEMORY_FRAMES": str(max(1, frames)), "COREC_PLUGINS_MEMORY_INTERVAL": "1",
           "COREC_NODE_LOG_LEVEL": "debug" if watch else "info"}
    try:
        node = cluster.start("bench", extra_env=env).wait_ready(30)
        cpus, walls = [], []
        for _ in range(3):
            c0, t0 = cpu_seconds(node.proc.pid), time.perf_counter()
            sent = subprocess.run([sys.executable, "-m", "corec_node", "send", "--to", node.addr, "--channel", "1",
                                   "--count", str(records)], capture_output=True, text=True, timeout=600)
            assert sent.returncode == 0, sent.stderr
            walls.append(time.perf_counter() - t0)
            time.sleep(1.0)  # the node's queue drains (an idle node takes a few ms of CPU a second)
            cpus.append(cpu_seconds(node.proc.pid) - c0)
        out = {"cpu_s_per_m": statistics.median(cpus) / records * 1e6, "send_wall_s": statistics.median(walls)}
        checks = [e for e in node.log_events() if e.get("event") == "plugin_memory_check"]
        if checks:  # the node's own snapshots: live traces and the time the loop waited
            out["traces"] = max(int(e["traces"]) for e in checks)
            out["snapshot_ms_max"] = max(float(e["snapshot_ms"]) for e in checks)
            out["check_ms_max"] = max(float(e["ms"]) for e in checks)
        return out
    finally:
        cluster.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", type=int, default=200)
    ap.add_argument("--batch", type=int, default=10_000)
    ap.add_argument("--small", type=int, default=100, help="records per batch of the small-batch case")
    ap.add_argument("--objects", default="100000,1000000")
    ap.add_argument("--e2e-records", type=int, default=2_000_000)
    ap.add_argument("--no-e2e", action="store_true")
    ap.add_argument("--no-micro", action="store_true", help="only the real node")
    args = ap.parse_args()

    result: dict[str, Any] = {"bench": "plugin_memory", "python": platform.python_version(), "cpu": cpu_model(),
                              "trace_frames": SNAPSHOT_FRAMES}
    print(f"python {result['python']}, {result['cpu']}", flush=True)
    if not args.no_micro:
        result["ingest"] = {str(args.batch): ingest_case(args.batches, args.batch),
                            str(args.small): ingest_case(args.batches * 20, args.small)}
        print("\ningest, records/s (decode_message + decode_batch + EngineHost.ingest), tracemalloc frames:")
        print(f"{'batch':>8} {'off':>12} " + " ".join(f"{f'{n} frames':>18}" for n in FRAMES[1:]))
        for size, rates in result["ingest"].items():
            base = rates["0"]
            cells = " ".join(f"{rates[str(n)]:>10,.0f} ({rates[str(n)] / base - 1:+.0%})" for n in FRAMES[1:])
            print(f"{size:>8} {base:>12,.0f} {cells}")
        result["snapshot"] = [snapshot_case(int(n)) for n in args.objects.split(",")]
        print(f"\nsnapshot ({SNAPSHOT_FRAMES} frames):")
        for s in result["snapshot"]:
            print(f"  {s['traces']:>10,} traces: take_snapshot {s['snapshot_s'] * 1000:8.1f} ms (GIL held), "
                  f"split by plugin {s['attribute_s'] * 1000:8.1f} ms (worker thread)", flush=True)
    if not args.no_e2e:
        with tempfile.TemporaryDirectory(prefix="corec-bench-") as tmp:
            result["e2e"] = {str(n): e2e_case(args.e2e_records, n, Path(tmp)) for n in E2E_FRAMES}
    if "e2e" in result:
        off = result["e2e"]["0"]
        print(f"\nreal node, {args.e2e_records:,} records a send (median of 3): node process CPU s per M records, "
              f"send wall time")
        print(f"  watch off       {off['cpu_s_per_m']:8.3f} s/M {off['send_wall_s']:8.2f} s")
        for n in E2E_FRAMES[1:]:
            on = result["e2e"][str(n)]
            print(f"  on, {n:>2} frames  {on['cpu_s_per_m']:8.3f} s/M ({on['cpu_s_per_m'] / off['cpu_s_per_m'] - 1:+.0%}) "
                  f"{on['send_wall_s']:8.2f} s ({on['send_wall_s'] / off['send_wall_s'] - 1:+.0%})")
            if "traces" in on:
                print(f"      its checks: up to {on['traces']:,} live traces, snapshot up to "
                      f"{on['snapshot_ms_max']:.1f} ms (GIL held), whole check up to {on['check_ms_max']:.1f} ms")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
