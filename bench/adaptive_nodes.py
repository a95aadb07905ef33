"""Adaptive blocks through a real node: real series replayed as block streams, forecasts read
back from ``corec-node blocks`` (issue 19, item 5, the part that needs nodes).

    python bench/adaptive_nodes.py [--nodes 1] [--tick 0.25] [--evolve-every 20] [--limit 0] [--seasons]
                                   [--series co2_monthly,elec_equip,macro_realgdp,macro_m1]

Each series is one block of a channel of its own (its 1,000 entities all carry the series'
value of the step, so the block's mean is the series); with --seasons, each channel's first
genome has the season of its series' sampling (``engine.genomes``, 12 monthly, 4 quarterly),
as an operator who knows the data would configure it. One step per engine tick: the bench waits for a
new tick in the rows, sends the next step, and reads each block's row at every tick: the
mean the node aggregated and its ``forecast`` of the next tick's mean. Scored, per series,
over the ticks from 3 seasons in (10 without a season) to the end, as bench/adaptive.py
does: MASE = mean |mean - forecast made the tick before| / mean |mean - mean the tick
before|, the node's forecasts against naive last value on exactly the means the node saw
(a step the node saw twice, a send that missed its tick, counts as it happened). Beside it:
the pure forecaster with the default genome on the same means (what the node would say
with no evolution), the node's own ``forecast_error`` and the genome generation reached by
evolution planned by the nucleus every --evolve-every ticks.

Figures only; ends with one JSON line ``{"bench": "adaptive_nodes", ...}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from adaptive import load_series, mase, replay, start_of  # noqa: E402

from corec_node.client import Client  # noqa: E402
from corec_node.engine.genome import default_genome  # noqa: E402
from corec_node.testing.cluster import Cluster, eventually  # noqa: E402
from corec_node.wire.entities import ENTITY_DTYPE  # noqa: E402

BLOCK = 1000  # entities per block: one block per series, series k on channel k + 1


def key(k: int) -> int:
    return (k + 1) << 32


def rows_by_block(node) -> dict[int, dict]:
    return {r["block"]: r for r in node.ctl("blocks")}


def run(args: argparse.Namespace) -> dict:
    series = load_series()
    names = [s for s in args.series.split(",") if s]
    ys = [series[n][0] for n in names]
    steps = min(len(y) for y in ys) if not args.limit else min(args.limit, min(len(y) for y in ys))
    env = {"COREC_ENGINE_TICK_INTERVAL": str(args.tick), "COREC_ENGINE_EVOLVE_EVERY": str(args.evolve_every),
           "COREC_ENGINE_AUDIT": "false"}
    if args.seasons:  # what an operator who knows each channel's sampling writes in engine.genomes
        env["COREC_ENGINE_GENOMES"] = ",".join(f"{k + 1}:season={series[n][2]}" for k, n in enumerate(names)
                                              if series[n][2])
    root = Path(tempfile.mkdtemp(prefix="corec-bench-adaptive-"))
    cluster = Cluster(root)
    seen: dict[int, list[tuple[int, float | None, float | None]]] = {k: [] for k in range(len(names))}
    try:
        nodes = [cluster.start("n0", extra_env=env)]
        nodes += [cluster.start(f"n{i}", join=[nodes[0].addr], extra_env=env) for i in range(1, args.nodes)]
        for node in nodes:
            node.wait_ready(30)
        eventually(lambda: all(len(n.members()) == args.nodes for n in nodes), 60)
        records = np.zeros(len(names) * BLOCK, ENTITY_DTYPE)
        records["id"] = np.tile(np.arange(BLOCK), len(names))
        records["channel"], records["active"] = np.repeat(np.arange(1, len(names) + 1), BLOCK), 1
        started = time.monotonic()
        last = {k: -1 for k in range(len(names))}  # each block's tick last read (owners tick apart)
        with Client(nodes[0].addr) as client:
            for t in range(steps + 1):
                # wait for a tick the rows have not shown yet, then read it and send the next step
                deadline = time.monotonic() + 30
                while True:
                    rows = rows_by_block(nodes[0])
                    if t == 0 or (len(rows) == len(names) and all(
                            rows[key(k)]["tick"] > last[k] for k in last)):
                        break
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"no new tick after step {t}")
                    time.sleep(0.005)
                if t > 0:
                    for k in range(len(names)):
                        r = rows[key(k)]
                        last[k] = r["tick"]
                        seen[k].append((r["tick"], r["mean"], r["forecast"]))
                if t == steps:
                    break
                for k, y in enumerate(ys):
                    records["value"][k * BLOCK:(k + 1) * BLOCK] = y[t]
                client.send(records)
                client.flush(10)
        took = time.monotonic() - started
        final = rows_by_block(nodes[0])
    finally:
        cluster.close()
    out = {"steps": steps, "seconds": round(took, 1), "tick": args.tick, "nodes": args.nodes,
           "seasons": bool(args.seasons), "series": {}}
    for k, name in enumerate(names):
        m = series[name][2]
        obs = np.array([np.nan if mean is None else mean for _, mean, _ in seen[k]], np.float64)
        fc = np.array([np.nan if f is None else f for _, _, f in seen[k]], np.float64)
        pred = np.concatenate(([np.nan], fc[:-1]))  # the forecast for tick i was made at tick i - 1
        start = max(start_of(m), 1)
        ok = np.isfinite(pred[start:]) & np.isfinite(obs[start:])
        node_mase = float(np.abs(obs[start:][ok] - pred[start:][ok]).mean() / np.abs(np.diff(obs)[start - 1:][ok]).mean())
        default = replay(np.nan_to_num(obs, nan=obs[np.isfinite(obs)][0]), [default_genome()])[:, 0]
        repeats = int((np.diff(obs) == 0).sum())
        row = final.get(key(k), {})
        out["series"][name] = {
            "node_mase": round(node_mase, 3), "default_genome_mase": round(float(mase(default, obs, start)), 3),
            "forecast_error": None if row.get("forecast_error") is None else round(row["forecast_error"], 3),
            "generation": row.get("generation"), "ticks_seen": len(obs), "repeated_means": repeats,
        }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", type=int, default=1)
    ap.add_argument("--tick", type=float, default=0.25, help="engine.tick_interval of the nodes (s)")
    ap.add_argument("--evolve-every", type=int, default=20, help="engine.evolve_every of the nodes (ticks)")
    ap.add_argument("--limit", type=int, default=0, help="at most this many steps (0: the shortest series)")
    ap.add_argument("--series", default="co2_monthly,elec_equip,macro_realgdp,macro_m1")
    ap.add_argument("--seasons", action="store_true",
                    help="give each series' channel the season of its sampling (engine.genomes), as an operator would")
    args = ap.parse_args(argv)
    out = run(args)
    print(f"adaptive_nodes: {out['nodes']} node(s), {out['steps']} steps at {out['tick']} s ticks in {out['seconds']} s, "
          f"{'seasons from engine.genomes' if out['seasons'] else 'default genomes'}; "
          "MASE against naive last value, on the means the node saw (lower is better)")
    print(f"  {'series':16} {'node':>7} {'default':>8} {'f.err':>7} {'gen':>4} {'repeats':>8}")
    for name, s in out["series"].items():
        print(f"  {name:16} {s['node_mase']:7.3f} {s['default_genome_mase']:8.3f} {s['forecast_error'] or float('nan'):7.3f} "
              f"{s['generation']!s:>4} {s['repeated_means']:8d}")
    print(json.dumps({"bench": "adaptive_nodes", **out}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
