"""NanoNets benchmark: the tiny torch forecaster on real series, and its child's cost.

    python bench/nanonet.py [--seed 0] [--no-statsmodels] [--blocks 1000] [--ticks 200]

Needs torch (the optional extra) and statsmodels; downloads nothing. The series are
bench/adaptive.py's (statsmodels' co2, elnino, elec_equip, sunspots, nile, macrodata,
interest_inflation), replayed one point per tick, as a block's mean would arrive, through
a real ``corec_node.shell.trainer.Trainer``: one block per series in one spawned child,
each block with its series' usual season (12 monthly, 4 quarterly, 52 weekly, none
yearly) for its phase features. Every method forecasts one step ahead from the past only,
and all are scored on the same ticks (bench/adaptive.py's ``start_of``: from 3 seasons in,
or tick 10) by MASE against naive last value (< 1 beats naive; naive itself is 1.000):

  nano         NanoNets (engine/nanonet.py, default NanoConfig) in the trainer's child;
  default      the statistical forecaster every block has (engine/forecast.py
               ``Forecasts``) with the default genome (no season);
  default+m    the same with the series' season set in the genome (what evolution can find);
  snaive       seasonal naive y[t - m];
  statsmodels  ExponentialSmoothing, damped trend and additive season, refitted on the
               past (bench/adaptive.py's ``statsmodels_hw``).

NanoConfig's defaults were chosen (10 settings, geometric-mean MASE) on the series marked
"tuned"; the others (co2_weekly, macro_realinv, macro_realcons, macro_m1) never took part.

Then the cost: --blocks blocks (seasons 0, 4, 12, 24 mixed) ticked --ticks times through a
Trainer, each tick submitted once the previous is answered: CPU seconds per tick in the
child (its own count: training, forecasting and the round-robin saves), the node process's
CPU per tick for submit + poll (and its reader and writer threads), the child's RSS idle
(torch imported, no block) and with the blocks, and the statistical forecaster's
update + predict for as many blocks, in process, for scale.

Prints a table, then one JSON line ``{"bench": "nanonet", ...}``. Figures only: nothing
here passes or fails.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # works without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

# Keep this module's top level light: the trainer's spawned child imports it as __mp_main__.
TUNED = ("co2_monthly", "elec_equip", "elnino", "nile", "sunspots", "macro_cpi", "macro_realgdp",
         "ii_Dp", "macro_infl", "macro_unemp", "ii_R", "macro_tbilrate")
WAIT = 120.0  # seconds to wait for one answer before calling the child stuck


def _wait(tr: Any, want: int, sink: dict[int, float] | None = None) -> None:
    """Wait until the trainer has answered ``want`` ticks (its reader thread counts them;
    0.5 ms sleeps), polling into ``sink`` if given."""
    deadline = time.monotonic() + WAIT
    while tr.stats().answered < want:
        if sink is not None:
            sink.update(tr.poll())
        if time.monotonic() > deadline:
            raise RuntimeError(f"trainer answered {tr.stats().answered} of {want} ticks")
        time.sleep(0.0005)
    if sink is not None:
        sink.update(tr.poll())


def _ready(tr: Any) -> float:
    t0 = time.monotonic()
    while not tr.stats().child_ready:
        tr.poll()
        if time.monotonic() - t0 > WAIT:
            raise RuntimeError("trainer child never became ready")
        time.sleep(0.01)
    return time.monotonic() - t0


def replay_nano(series: dict[str, tuple[np.ndarray, str, int]], cfg: Any) -> dict[str, np.ndarray]:
    """One-step forecasts of every series by NanoNets in one Trainer (one block a series)."""
    from corec_node.shell.trainer import Trainer

    names = list(series)
    out = {n: np.full(len(series[n][0]), np.nan) for n in names}
    with Trainer(cfg) as tr:
        for b, n in enumerate(names):
            tr.set_season(b, series[n][2])
        _ready(tr)
        longest = max(len(series[n][0]) for n in names)
        fc: dict[int, float] = {}
        for t in range(longest):
            for b, n in enumerate(names):  # the forecast made after tick t-1 is for tick t
                if t < len(out[n]) and b in fc:
                    out[n][t] = fc[b]
            means = {b: float(series[n][0][t]) for b, n in enumerate(names) if t < len(series[n][0])}
            if not tr.submit(t, means):
                raise RuntimeError("a replay tick was dropped")
            _wait(tr, tr.stats().submitted, fc)
    return out


def cost(blocks: int, ticks: int, cfg: Any, seed: int) -> dict[str, float]:
    """The child's and the node process's CPU per tick and the child's RSS (module doc)."""
    from corec_node.engine.forecast import Forecasts
    from corec_node.engine.genome import default_genome
    from corec_node.shell.trainer import Trainer

    rng = np.random.default_rng(seed)
    seasons = (0, 4, 12, 24)
    warm = 30
    ys = 20 + np.sin(np.arange(ticks + warm)[:, None] / 3.0) + rng.normal(0, 0.3, (ticks + warm, blocks))
    ids = list(range(blocks))
    res: dict[str, float] = {"blocks": blocks, "ticks": ticks}
    with Trainer(cfg) as tr:
        for b in ids:
            tr.set_season(b, seasons[b % len(seasons)])
        res["child_start_s"] = _ready(tr)
        res["child_rss_idle"] = tr.stats().child_rss
        for t in range(warm):
            tr.submit(t, dict(zip(ids, ys[t].tolist())))
            _wait(tr, tr.stats().submitted)
            tr.poll()
        child_ticks: list[float] = []
        parent: list[float] = []
        child0 = tr.stats().child_cpu
        p0 = _cpu_self()
        for t in range(warm, warm + ticks):
            c0 = time.process_time()
            tr.submit(t, dict(zip(ids, ys[t].tolist())))
            parent.append(time.process_time() - c0)
            _wait(tr, tr.stats().submitted)
            c0 = time.process_time()
            got = tr.poll()
            parent.append(time.process_time() - c0)
            if len(got) != blocks:
                raise RuntimeError(f"{len(got)} forecasts for {blocks} blocks")
            child_ticks.append(tr.stats().tick_cpu)
        st = tr.stats()
        res["child_tick_cpu_s"] = statistics.median(child_ticks)
        res["child_cpu_per_tick_s"] = (st.child_cpu - child0) / ticks  # with unpickling, pipes
        res["node_submit_s"] = statistics.median(parent[0::2])
        res["node_poll_s"] = statistics.median(parent[1::2])
        # with the reader and writer threads, and this bench's own 0.5 ms waiting loop
        res["node_process_cpu_per_tick_s"] = (_cpu_self() - p0) / ticks
        res["child_rss"] = st.child_rss
        res["dropped"] = st.dropped
    f = Forecasts()
    for b in ids:
        f.add(b, default_genome().replace(season=seasons[b % len(seasons)]))
    arr = np.arange(blocks)
    stat = []
    for t in range(warm + ticks):
        c0 = time.process_time()
        f.predict(arr)
        f.update(arr, ys[t])
        if t >= warm:
            stat.append(time.process_time() - c0)
    res["forecasts_cpu_s"] = statistics.median(stat)
    res["node_rss"] = _rss_self()
    return res


def _cpu_self() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _rss_self() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()
    except OSError:
        return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-statsmodels", action="store_true", help="skip the statsmodels fits")
    ap.add_argument("--blocks", type=int, default=1000)
    ap.add_argument("--ticks", type=int, default=200)
    args = ap.parse_args(argv)

    from _machine import cpu_model
    from adaptive import load_series, mase, replay, seasonal_naive, start_of, statsmodels_hw

    from corec_node.engine.genome import default_genome
    from corec_node.engine.nanonet import NanoConfig, available

    if not available():
        print("torch is not installed: pip install torch (the 'intelligent blocks' extra)")
        return 1
    cfg = NanoConfig(seed=args.seed)
    series = load_series()
    print("CoreC NanoNets benchmark (the tiny torch forecaster, trained in the trainer's child)")
    print(f"{cpu_model()}, Python {platform.python_version()}, numpy {np.__version__}, "
          f"seed {args.seed}, NanoConfig {cfg}")
    t0 = time.perf_counter()
    nano = replay_nano(series, cfg)
    nano_s = time.perf_counter() - t0

    rows: dict[str, dict[str, Any]] = {}
    for n, (y, sampling, m) in series.items():
        st = start_of(m)
        g = default_genome()
        stat = replay(y, [g, g.replace(season=m)] if m else [g])
        row = {"sampling": sampling, "m": m, "scored": len(y) - st,
               "set": "tuned" if n in TUNED else "unseen",
               "nano": mase(nano[n], y, st), "default": mase(stat[:, 0], y, st),
               "default_m": mase(stat[:, 1], y, st) if m else None,
               "snaive": mase(seasonal_naive(y, m), y, st) if m else None, "statsmodels": None}
        if not args.no_statsmodels:
            row["statsmodels"] = mase(statsmodels_hw(y, m, st, refit=m if m else 5), y, st)
        rows[n] = row

    print()
    print("MASE against naive last value (< 1 beats naive; same ticks for every method)")
    print(f"  {'series':<16}{'set':<8}{'m':>3}{'scored':>7}{'nano':>8}{'default':>9}{'default+m':>10}"
          f"{'snaive':>8}{'statsm.':>9}")
    for n, r in rows.items():
        print(f"  {n:<16}{r['set']:<8}{r['m']:>3}{r['scored']:>7}{_c(r['nano']):>8}{_c(r['default']):>9}"
              f"{_c(r['default_m']):>10}{_c(r['snaive']):>8}{_c(r['statsmodels']):>9}")
    keys = ("nano", "default", "statsmodels")
    geo = {k: math.exp(statistics.fmean(math.log(r[k]) for r in rows.values()))
           for k in keys if all(r[k] is not None for r in rows.values())}
    unseen = [r for r in rows.values() if r["set"] == "unseen"]
    geo_unseen = {k: math.exp(statistics.fmean(math.log(r[k]) for r in unseen))
                  for k in keys if unseen and all(r[k] is not None for r in unseen)}
    print("  geometric mean, all series: " + ", ".join(f"{k} {v:.3f}" for k, v in geo.items()))
    print("  geometric mean, unseen series: " + ", ".join(f"{k} {v:.3f}" for k, v in geo_unseen.items()))
    wins = sum(r["nano"] < r["default"] for r in rows.values())
    print(f"  nano < default on {wins} of {len(rows)} series; nano < 1 (beats naive) on "
          f"{sum(r['nano'] < 1 for r in rows.values())}; replay took {nano_s:.1f} s")

    print()
    c = cost(args.blocks, args.ticks, cfg, args.seed)
    mb = 1024 * 1024
    print(f"cost per tick for {c['blocks']:,} blocks (median of {c['ticks']} ticks, seasons 0/4/12/24)")
    for label, key in (("child: update + forecast + saves (its own count)", "child_tick_cpu_s"),
                       ("child: all its CPU per tick (pipes, unpickling)", "child_cpu_per_tick_s"),
                       (f"node process: submit (dict of {c['blocks']:,} means)", "node_submit_s"),
                       (f"node process: poll ({c['blocks']:,} forecasts)", "node_poll_s"),
                       ("node process: all CPU per tick (threads, bench's waits)",
                        "node_process_cpu_per_tick_s"),
                       ("statistical forecaster, in process, for scale", "forecasts_cpu_s")):
        print(f"  {label:<56}{c[key] * 1e3:8.2f} ms CPU")
    print(f"  child RSS: {c['child_rss_idle'] / mb:.0f} MB idle (torch imported), "
          f"{c['child_rss'] / mb:.0f} MB with {c['blocks']:,} blocks; started in {c['child_start_s']:.1f} s; "
          f"node process RSS {c['node_rss'] / mb:.0f} MB (with statsmodels and pandas; torch imported: "
          f"{'torch' in sys.modules})")
    print(json.dumps({"bench": "nanonet", "seed": args.seed, "config": str(cfg), "series": rows,
                      "geomean": geo, "geomean_unseen": geo_unseen, "cost": c}, default=float))
    return 0


def _c(x: Any) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


if __name__ == "__main__":
    raise SystemExit(main())
