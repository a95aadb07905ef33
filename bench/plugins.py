"""Plugin hook path benchmark: what the facade adds per tick and per ingested batch.

    python bench/plugins.py [--entities 1000000] [--block-size 1000] [--batch 10000]
                            [--repeat 200] [--ticks 20]

Baseline, measured in the same run: ``aggregate()`` over a real store of --entities
entities (1,000 blocks at the defaults), the core of one engine tick. Then, with 0, 1 and
10 plugins loaded whose hooks do nothing (sync ones, which run in worker threads, and
async ones, which run on the loop):

- per tick: ``await plugins.block_aggregates(node, tick, rows)`` with the tick's rows
  (the node builds those rows anyway, to publish them);
- per batch: ``plugins.wants(channel)`` and, when some plugin subscribed,
  ``await plugins.entities(node, channel, records)`` for a --batch record batch.

Reported per dispatch: wall time (median) and CPU time of the whole process (all threads,
mean), each also as a share of the baseline tick. Target: under 5% added per tick with 10
plugins. Prints a table, then one JSON line ``{"bench": "plugins", ...}``. Figures only:
nothing passes or fails on time; the machine may be shared.
"""

from __future__ import annotations

import argparse
import asyncio
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

from corec_node.config import Config  # noqa: E402
from corec_node.engine import EntityStore, aggregate, aggregate_rows  # noqa: E402
from corec_node.hookspecs import hookimpl  # noqa: E402
from corec_node.plugins import PluginManager  # noqa: E402
from corec_node.wire import ENTITY_DTYPE  # noqa: E402
from _machine import cpu_model  # noqa: E402  (bench/ is on sys.path when run as a script)

TARGET_SHARE = 0.05  # the hook path may add at most 5% to a tick


class SyncTrivial:
    @hookimpl
    def corec_channels(self):
        return [1]

    @hookimpl
    def corec_entities(self, records):
        return None

    @hookimpl
    def corec_block_aggregates(self, aggregates):
        return None


class AsyncTrivial:
    @hookimpl
    def corec_channels(self):
        return [1]

    @hookimpl
    async def corec_entities(self, records):
        return None

    @hookimpl
    async def corec_block_aggregates(self, aggregates):
        return None


def make_store(n: int, block_size: int) -> EntityStore:
    rng = np.random.default_rng(7)
    store = EntityStore(block_size=block_size)
    per = n // 4
    for ch in range(4):
        r = np.zeros(per, ENTITY_DTYPE)
        r["id"] = np.arange(per, dtype=np.uint32)
        r["channel"] = ch
        r["value"] = (20 + rng.normal(0, 3, per)).astype(np.float32)
        r["active"] = rng.random(per) < 0.98
        store.ingest(r)
    return store


def baseline(store: EntityStore, ticks: int) -> float:
    aggregate(store, 0)  # warm the layout's scratch buffers
    times = []
    for t in range(ticks):
        t0 = time.perf_counter()
        aggregate(store, t + 1)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


async def measure(pm: PluginManager, call, repeat: int) -> tuple[float, float]:
    for _ in range(min(20, repeat)):  # warm: threads started, code paths hot
        await call()
    walls = []
    cpu0 = time.process_time()
    for _ in range(repeat):
        t0 = time.perf_counter()
        await call()
        walls.append(time.perf_counter() - t0)
    cpu = (time.process_time() - cpu0) / repeat
    return statistics.median(walls), cpu


async def run_case(kind: str, count: int, rows: list[dict[str, Any]], batch: np.ndarray, repeat: int) -> dict[str, float]:
    pm = PluginManager(Config(), env={})
    cls = SyncTrivial if kind == "sync" else AsyncTrivial
    for i in range(count):
        pm.register(cls(), f"p{i}")
    node = object()
    await pm.startup(node)

    async def tick() -> None:
        await pm.block_aggregates(node, 1, rows)

    async def ingest() -> None:
        if pm.wants(1):
            await pm.entities(node, 1, batch)

    tick_wall, tick_cpu = await measure(pm, tick, repeat)
    batch_wall, batch_cpu = await measure(pm, ingest, repeat)
    await pm.shutdown(node)
    return {"tick_wall": tick_wall, "tick_cpu": tick_cpu, "batch_wall": batch_wall, "batch_cpu": batch_cpu}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--entities", type=int, default=1_000_000)
    ap.add_argument("--block-size", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=10_000, help="records per ingested batch")
    ap.add_argument("--repeat", type=int, default=200, help="dispatches timed per case")
    ap.add_argument("--ticks", type=int, default=20, help="baseline ticks timed")
    args = ap.parse_args()

    store = make_store(args.entities, args.block_size)
    base = baseline(store, args.ticks)
    rows = aggregate_rows(aggregate(store, 1), owner="bench", nan_as_none=True)
    batch = np.zeros(args.batch, ENTITY_DTYPE)
    batch["id"] = np.arange(args.batch, dtype=np.uint32)
    batch["channel"] = 1
    batch["value"] = 20.0
    batch["active"] = 1
    batch.flags.writeable = False  # as decode_batch hands it over

    results: dict[str, dict[str, float]] = {}
    for kind, count in (("none", 0), ("sync", 1), ("sync", 10), ("async", 1), ("async", 10)):
        results[f"{kind}_{count}"] = asyncio.run(run_case(kind if count else "sync", count, rows, batch, args.repeat))

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{cpu_model()}, Python {platform.python_version()}, load average {load:.2f} on {os.cpu_count()} CPUs")
    print(f"\nbaseline: aggregate() over {args.entities:,} entities in {len(rows):,} blocks: {base * 1000:.2f} ms (median)")
    print(f"batch: {args.batch:,} records; target: under {TARGET_SHARE:.0%} of the tick added\n")
    header = ["plugins", "tick wall us", "% tick", "tick cpu us", "% tick", "batch wall us", "% tick", "batch cpu us", "% tick"]
    table = [header]
    for name, r in results.items():
        table.append([name.replace("_", " x").replace("none x0", "0"),
                      f"{r['tick_wall'] * 1e6:,.1f}", f"{r['tick_wall'] / base:.2%}",
                      f"{r['tick_cpu'] * 1e6:,.1f}", f"{r['tick_cpu'] / base:.2%}",
                      f"{r['batch_wall'] * 1e6:,.1f}", f"{r['batch_wall'] / base:.2%}",
                      f"{r['batch_cpu'] * 1e6:,.1f}", f"{r['batch_cpu'] / base:.2%}"])
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))))
    worst = max(r["tick_wall"] for r in results.values()) / base
    print(f"\nworst per-tick share: {worst:.2%} ({'within' if worst < TARGET_SHARE else 'OVER'} the {TARGET_SHARE:.0%} target)")

    out: dict[str, Any] = {"bench": "plugins", "entities": args.entities, "blocks": len(rows), "batch": args.batch,
                           "cpu": cpu_model(), "loadavg": round(load, 2), "baseline_tick_ms": round(base * 1000, 4)}
    for name, r in results.items():
        for k, v in r.items():
            out[f"{name}.{k}_us"] = round(v * 1e6, 2)
            out[f"{name}.{k}_share"] = round(v / base, 6)
    out["worst_tick_share"] = round(worst, 6)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
