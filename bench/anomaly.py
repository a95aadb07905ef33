"""Forecast anomaly benchmark: the ``sensitivity`` gene's alerts on real series, with faults
injected at known ticks, beside a fixed-threshold baseline from the same run.

    python bench/anomaly.py [--seed 7] [--copies 20] [--k 3] [--magnitude 6] [--quick]

The real series shipped by statsmodels (bench/adaptive.py's ``load_series``: co2, sunspots,
nile, macro...) are replayed one point per tick as a block's mean, through the node's own
path (``AdaptiveBlocks.step``: forecaster, sensitivity, episode gate). Per series, kind and
method, ``--copies`` copies each get one fault at a seeded tick in [START, n - k - 1]:

  spike  one tick off by +-magnitude x s;
  shift  every tick from the injection on off by +-magnitude x s (a level shift);

where s is the series' own robust scale of one tick's change (1.4826 x MAD of its first
differences), so a fault is as large for nile as for co2 relative to how each moves.

Scores (alerts = episode openings, one per episode, as a node raises them; ticks before
START are not judged by any method):
  recall     share of injected faults with an alert within k ticks (t0 .. t0 + k);
  precision  alerts within those windows / all alerts on the injected copies;
  false/h    alerts on the clean series (each once, as shipped) per hour at a 1 s tick.
             Real series have real events (nile's 1899 dam, recessions in macro): every
             alert on them counts as false here, so this is an upper bound.

Methods:
  forecast s=X   the node's forecast anomalies under the default genome with sensitivity X
                 (4 is the default gene);
  evolved        the genome bench/adaptive.py evolves offline per sampling (forecaster genes
                 only: evolution does not move sensitivity, it stays 4), series of a
                 sampling with no tuning series (co2 weekly) keep the default;
  3-sigma        fixed threshold: |y - mean| > 3 std over the previous W ticks (W = the
                 window gene, 48), gated into episodes by the same gate.

The IsolationForest audit (engine/audit.py) is not run: it judges a block against its
*peers* at the same tick, and one replayed series has none (copies of it would make every
injected copy trivially unlike the rest and the clean runs trivially quiet).

Then the cost per tick of the anomaly part for 1,000 blocks beside the whole adaptive step.

Prints a table, then one JSON line ``{"bench": "anomaly", ...}``. Figures only.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # works without installing

import numpy as np  # noqa: E402
from _machine import cpu_model  # noqa: E402
from adaptive import TUNING, evolve_offline, load_series  # noqa: E402

from corec_node.engine.adaptive import DEFAULT, AdaptiveBlocks  # noqa: E402
from corec_node.engine.anomaly import CALM_TICKS, AnomalyWatch  # noqa: E402
from corec_node.engine.genome import Genome  # noqa: E402

START = 60  # first judged tick: past the default window (48 scored ticks) with a margin
W = int(DEFAULT["window"])


def robust_step(y: np.ndarray) -> float:
    d = np.diff(y)
    s = 1.4826 * float(np.median(np.abs(d - np.median(d))))
    return s if s > 0 else float(np.std(d)) or 1.0


def inject(y: np.ndarray, kind: str, copies: int, k: int, magnitude: float,
           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(series [copies, n], injection ticks [copies])."""
    n = len(y)
    t0 = rng.integers(START, n - k - 1, copies)
    sign = rng.choice([-1.0, 1.0], copies)
    out = np.tile(y, (copies, 1))
    delta = sign * magnitude * robust_step(y)
    for i in range(copies):
        if kind == "spike":
            out[i, t0[i]] += delta[i]
        else:
            out[i, t0[i]:] += delta[i]
    return out, t0


def forecast_alerts(ys: np.ndarray, genome: Genome) -> list[list[int]]:
    """Ticks at which each row of ``ys`` (one block each) opens an alert, on the node's path."""
    layer = AdaptiveBlocks()
    layer.first[1] = genome
    blocks = (1 << 32) | np.arange(len(ys), dtype=np.int64)
    out: list[list[int]] = [[] for _ in ys]
    for t in range(ys.shape[1]):
        layer.step(blocks, ys[:, t], t)
        for a in layer.anomalies.opened:
            out[a.block & 0xFFFFFFFF].append(t)
    return out


def sigma3_alerts(ys: np.ndarray) -> list[list[int]]:
    """The fixed rule, flags vectorized over rows, gated like the node's (persist 1, calm 10)."""
    n = ys.shape[1]
    win = np.lib.stride_tricks.sliding_window_view(ys, W, axis=1)[:, : n - W]  # win[:, t - W] = y[t-W:t]
    mu, sd = win.mean(-1), win.std(-1)
    flags = np.zeros_like(ys, bool)
    flags[:, W:] = np.abs(ys[:, W:] - mu) > 3.0 * sd
    watch = AnomalyWatch(calm=CALM_TICKS)
    blocks = np.arange(len(ys), dtype=np.int64)
    out: list[list[int]] = [[] for _ in ys]
    for t in range(n):
        z = np.where(flags[:, t], 4.0, 0.0)
        for a in watch.step(blocks, ys[:, t], ys[:, t], z, flags[:, t], t):
            out[a.block].append(t)
    return out


def score(alerts: list[list[int]], t0: np.ndarray, k: int) -> tuple[int, int, int]:
    """(faults detected, alerts in a window, alerts judged) from START on."""
    hit = inwin = total = 0
    for ticks, t in zip(alerts, t0.tolist()):
        ticks = [x for x in ticks if x >= START]
        w = [x for x in ticks if t <= x <= t + k]
        hit += bool(w)
        inwin += len(w)
        total += len(ticks)
    return hit, inwin, total


def step_cost(blocks: int, ticks: int, seed: int) -> dict[str, float]:
    """Median ms per tick of ``AdaptiveBlocks.step`` over ``blocks`` noisy blocks (1 % of
    them spiking each tick), and of its anomaly part alone (judge + gate) on the same state."""
    import time

    rng = np.random.default_rng(seed)
    layer = AdaptiveBlocks()
    ids = (1 << 32) | np.arange(blocks, dtype=np.int64)
    whole, part = [], []
    for t in range(ticks):
        means = 10.0 + rng.normal(0.0, 0.1, blocks)
        means[rng.integers(0, blocks, blocks // 100)] += 5.0
        t0 = time.perf_counter()
        layer.step(ids, means, t)
        t1 = time.perf_counter()
        sigmas, flags = layer.forecasts.judged(ids)
        layer.anomalies.step(ids, means, means, sigmas, flags, t)
        t2 = time.perf_counter()
        if t >= W + 2:
            whole.append(t1 - t0)
            part.append(t2 - t1)
    return {"step_ms": 1e3 * float(np.median(whole)), "anomaly_ms": 1e3 * float(np.median(part))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--copies", type=int, default=20, help="injected copies per series and kind")
    ap.add_argument("--k", type=int, default=3, help="ticks after the injection an alert may come")
    ap.add_argument("--magnitude", type=float, default=6.0, help="fault size in robust steps")
    ap.add_argument("--quick", action="store_true", help="a smaller GA for the evolved genomes")
    args = ap.parse_args(argv)
    pop, gens = (8, 6) if args.quick else (16, 14)

    series = load_series()
    print("CoreC forecast anomaly benchmark (offline: the node's adaptive path, no sockets)")
    print(f"{cpu_model()}, Python {platform.python_version()}, numpy {np.__version__}, seed {args.seed}")
    print(f"{len(series)} series, {args.copies} copies per series and kind, faults of {args.magnitude:g} "
          f"robust steps, detection within k={args.k} ticks, judged from tick {START}")

    evolved: dict[str, Genome] = {}
    for sampling in ("monthly", "quarterly", "yearly"):
        tune = [(series[n][0], series[n][2]) for n in TUNING if series[n][1] == sampling]
        evolved[sampling] = evolve_offline(tune, args.seed, pop, gens)[0]

    methods: dict[str, Any] = {f"forecast s={s:g}": (lambda s_: lambda smp: DEFAULT.replace(sensitivity=s_))(s)
                               for s in (3.0, 4.0, 6.0)}
    methods["evolved (s=4)"] = lambda smp: evolved.get(smp, DEFAULT)
    methods["3-sigma W=48"] = None

    rng = np.random.default_rng(args.seed)
    faults = {kind: {name: inject(y, kind, args.copies, args.k, args.magnitude, rng)
                     for name, (y, _, _) in series.items()} for kind in ("spike", "shift")}
    clean_ticks = sum(len(y) - START for y, _, _ in series.values())
    results: dict[str, dict[str, Any]] = {}
    for method, genome_of in methods.items():
        res: dict[str, Any] = {}
        for kind in ("spike", "shift"):
            hit = inwin = total = n = 0
            for name, (ys, t0) in faults[kind].items():
                alerts = sigma3_alerts(ys) if genome_of is None else forecast_alerts(ys, genome_of(series[name][1]))
                h, i, t = score(alerts, t0, args.k)
                hit, inwin, total, n = hit + h, inwin + i, total + t, n + len(t0)
            res[kind] = {"recall": hit / n, "precision": inwin / total if total else float("nan"),
                         "faults": n, "alerts": total}
        false = 0
        for name, (y, sampling, _) in series.items():
            alerts = sigma3_alerts(y[None]) if genome_of is None else forecast_alerts(y[None], genome_of(sampling))
            false += sum(1 for x in alerts[0] if x >= START)
        res["false_alerts"] = false
        res["false_per_hour"] = false / clean_ticks * 3600
        results[method] = res

    print(f"clean ticks judged: {clean_ticks} ({clean_ticks / 3600:.2f} h at 1 s a tick)")
    print(f"{'method':16} {'spike P':>8} {'spike R':>8} {'shift P':>8} {'shift R':>8} {'false/h':>8} {'false':>6}")
    for method, r in results.items():
        print(f"{method:16} {r['spike']['precision']:8.3f} {r['spike']['recall']:8.3f} "
              f"{r['shift']['precision']:8.3f} {r['shift']['recall']:8.3f} "
              f"{r['false_per_hour']:8.1f} {r['false_alerts']:6d}")
    cost = step_cost(1000, 200, args.seed)
    print(f"cost per tick, 1,000 blocks (1 % spiking): AdaptiveBlocks.step {cost['step_ms']:.3f} ms, "
          f"anomaly judge + gate timed apart {cost['anomaly_ms']:.3f} ms")
    print(json.dumps({"bench": "anomaly", "cost": cost, "seed": args.seed, "copies": args.copies, "k": args.k,
                      "magnitude": args.magnitude, "start": START, "clean_ticks": clean_ticks,
                      "results": results}, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
