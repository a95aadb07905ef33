"""Adaptive layer benchmark, offline part: forecasts and evolution on real series, and cost.

    python bench/adaptive.py [--seed 7] [--quick] [--no-statsmodels] [--no-plot]
                             [--blocks 1000] [--ticks 200] [--entities 1000000]

Real series shipped by statsmodels (no download) are replayed one point per tick through
the pure forecaster (corec_node.engine.forecast), as a block's mean would arrive; nodes and
sockets are not involved (that part of issue 19's item 5 belongs to the wired node). Every
method makes one-step forecasts from the past only and all are scored on the same ticks
(from 3 seasons in, or tick 10 without season, to the end) by MASE against naive last
value: mean |y - forecast| / mean |y - y_prev| over those ticks (< 1 beats naive).

Methods, side by side from the same run:
  default      the default genome (genome.default_genome()), as every new block starts;
  evolved      the genome evolved offline (genome.mutate/recombine, a small seeded GA) on
               the TUNING series of the same sampling (monthly, quarterly, yearly: what a
               channel knows about its blocks), scored on HELD-OUT series only: the genome
               a new block inherits from its channel's best;
  online       shadow evolution running live on the held-out series itself
               (evolution.plan_challengers + ShadowTrials), starting from the default
               genome; its settings (margin, mutation rate and scale) were chosen on the
               tuning series, and its score counts every tick, trials and all;
  evolved+on   the same, starting from the evolved genome;
  snaive       seasonal naive (y[t - m]) where the series has a season (m = its sampling's
               usual period: 12 monthly, 4 quarterly, 52 weekly; none yearly);
  statsmodels  ExponentialSmoothing (damped additive trend, additive season with m),
               refitted on the past every `refit` ticks (expanding window) and run with
               those parameters over the next ticks: forecasts at t use y[:t] only.

Evolution may propose only seasons a series can warm up and be judged on (4 periods at
least: ``seasons_for``), as a channel's config would list the seasons its sampling allows.
co2 weekly (2,284 ticks) has no weekly tuning series, so it has no evolved genome; it is
there as the one long stream, where online evolution has time to work.

Then the cost per tick of the vectorized forecaster for --blocks blocks against the tick's
aggregation (corec_node.engine.aggregate on --entities entities in --blocks blocks, as
bench/engine.py does), and docs/forecast.png (forecast against actual, co2 monthly).

Prints a table, then one JSON line ``{"bench": "adaptive", ...}``. Figures only: nothing
here passes or fails.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # works without installing

import numpy as np  # noqa: E402

from corec_node.engine.evolution import (  # noqa: E402
    ShadowTrials,
    Standing,
    fitness,
    plan_challengers,
)
from corec_node.engine.forecast import Forecasts  # noqa: E402
from corec_node.engine.genome import SEASONS, Genome, breed, default_genome, mutate  # noqa: E402
from _machine import cpu_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# series name -> (sampling, season m). The split is fixed before any run: tuning series
# choose the evolved genomes and the online settings; held-out series only report.
TUNING = ("elnino", "macro_realcons", "macro_cpi", "macro_unemp", "ii_R", "sunspots")
HELD_OUT = ("co2_monthly", "co2_weekly", "elec_equip", "nile", "macro_realgdp", "macro_realinv",
            "macro_tbilrate", "macro_infl", "macro_m1", "ii_Dp")
SEASONAL = ("co2_monthly", "co2_weekly", "elec_equip", "elnino")  # strongly seasonal (issue 19's 0.7 target)


# -- the series ------------------------------------------------------------------------------


def load_series() -> dict[str, tuple[np.ndarray, str, int]]:
    """name -> (values, sampling, m). All ship inside statsmodels."""
    import statsmodels.api as sm
    from statsmodels.datasets import elec_equip, interest_inflation

    out: dict[str, tuple[np.ndarray, str, int]] = {}
    co2 = sm.datasets.co2.load_pandas().data["co2"]
    # weekly with gaps; monthly means, gaps carried forward, as statsmodels' own examples do
    out["co2_monthly"] = (co2.resample("MS").mean().ffill().to_numpy(), "monthly", 12)
    # and the weekly series itself, gaps carried forward: the one long stream (2,284 ticks)
    out["co2_weekly"] = (co2.ffill().to_numpy(), "weekly", 52)
    el = sm.datasets.elnino.load_pandas().data
    out["elnino"] = (el.drop(columns="YEAR").to_numpy().ravel(), "monthly", 12)
    out["elec_equip"] = (elec_equip.load().data.iloc[:, 0].to_numpy(), "monthly", 12)
    out["sunspots"] = (sm.datasets.sunspots.load_pandas().data["SUNACTIVITY"].to_numpy(),
                       "yearly", 0)
    out["nile"] = (sm.datasets.nile.load_pandas().data["volume"].to_numpy(), "yearly", 0)
    md = sm.datasets.macrodata.load_pandas().data
    for col in ("realgdp", "realcons", "realinv", "cpi", "unemp", "tbilrate", "infl", "m1"):
        out[f"macro_{col}"] = (md[col].to_numpy(), "quarterly", 4)
    ii = interest_inflation.load().data
    out["ii_R"] = (ii["R"].to_numpy(), "quarterly", 4)
    out["ii_Dp"] = (ii["Dp"].to_numpy(), "quarterly", 4)
    return {k: (np.asarray(v, np.float64), s, m) for k, (v, s, m) in out.items()}


def start_of(m: int) -> int:
    """First scored tick: 3 seasons in (statsmodels needs 2 to fit), or 10 without one."""
    return 3 * m if m else 10


def mase(pred: np.ndarray, y: np.ndarray, start: int) -> float:
    """mean |y - pred| / mean |y - y_prev| over ticks start.. (rows of pred: ticks)."""
    e = np.abs(y[start:] - pred[start:].T).T
    naive = np.abs(np.diff(y))[start - 1:]
    return (e.mean(axis=0) / naive.mean()) if e.ndim > 1 else float(e.mean() / naive.mean())


# -- the methods -------------------------------------------------------------------------------


def replay(y: np.ndarray, genomes: list[Genome]) -> np.ndarray:
    """One-step forecasts of y by each genome (one block each, one vectorized Forecasts):
    array [ticks, genomes]; the forecast at t is made from y[:t]."""
    f = Forecasts()
    for i, g in enumerate(genomes):
        f.add(i, g)
    ids = np.arange(len(genomes))
    out = np.empty((len(y), len(genomes)))
    for t, v in enumerate(y):
        out[t] = f.predict(ids)
        f.update(ids, np.full(len(genomes), v))
    return out


def seasons_for(n: int) -> tuple[int, ...]:
    """Seasons a series of n ticks can learn and judge: 4 periods at least (2 to warm up,
    2 to judge). A node's channel config would say the same from its sampling."""
    return tuple(m for m in SEASONS if 4 * m <= n)


def replay_online(y: np.ndarray, g0: Genome, seed: int, margin: float, rate: float,
                  scale: float, judge: int) -> tuple[np.ndarray, int, int, Genome]:
    """Shadow evolution live on y from g0, one block alone in its channel: a new trial as
    soon as the last ended. Returns (forecasts, trials, replacements, final genome)."""
    rng = np.random.default_rng(seed)
    choices = {"season": seasons_for(len(y))}
    f = Forecasts()
    f.add(0, g0)
    trials = ShadowTrials(margin=margin, judge=judge)
    genome, ntrials, nrep = g0, 0, 0
    ids = np.zeros(1, np.int64)
    out = np.empty(len(y))
    for t, v in enumerate(y):
        fc = f.predict(ids)
        out[t] = fc[0]
        if len(trials) == 0 and t >= 1:
            fit = float(fitness(1.0, f.scaled_error(ids))[0])
            (ch,) = plan_challengers([Standing(0, genome, fit)], rng, rate=rate, scale=scale,
                                     choices=choices)
            trials.start(ch, f.export(0))
            ntrials += 1
        obs = np.array([v])
        verdicts = trials.observe(ids, obs, fc, t)  # the order of evolution.py's docstring
        f.update(ids, obs)
        for verdict in verdicts:
            if verdict.promoted:
                f.restore(0, verdict.state, verdict.challenger)
                genome = verdict.challenger
                nrep += 1
    return out, ntrials, nrep, genome


def seasonal_naive(y: np.ndarray, m: int) -> np.ndarray:
    out = np.full(len(y), np.nan)
    out[m:] = y[:-m]
    return out


def statsmodels_hw(y: np.ndarray, m: int, start: int, refit: int) -> np.ndarray:
    """ExponentialSmoothing refitted on y[:t0] every `refit` ticks; between refits the
    fitted parameters and initial states run over y[:t] with no re-estimation, so each
    forecast uses the past only."""
    from statsmodels.tsa.holtwinters import ExponentialSmoothing

    kw: dict[str, Any] = {"trend": "add", "damped_trend": True}
    if m:
        kw.update(seasonal="add", seasonal_periods=m)
    out = np.full(len(y), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for t0 in range(start, len(y), refit):
            fit = ExponentialSmoothing(y[:t0], initialization_method="estimated", **kw).fit()
            p = fit.params
            t1 = min(len(y), t0 + refit)
            init = {"initial_level": p["initial_level"], "initial_trend": p["initial_trend"]}
            if m:
                init["initial_seasonal"] = p["initial_seasons"]
            run = ExponentialSmoothing(y[:t1], initialization_method="known", **kw, **init).fit(
                smoothing_level=p["smoothing_level"], smoothing_trend=p["smoothing_trend"],
                smoothing_seasonal=p["smoothing_seasonal"] if m else None,
                damping_trend=p["damping_trend"], optimized=False)
            out[t0:t1] = np.asarray(run.fittedvalues)[t0:t1]
    return out


def evolve_offline(series: list[tuple[np.ndarray, int]], seed: int, pop: int,
                   gens: int) -> tuple[Genome, float]:
    """A seeded (mu + lambda) GA over genomes: score = mean log MASE over ``series`` (each
    replayed by a whole population at once). Starts from the default genome and its
    mutants; returns the best genome and its score."""
    rng = np.random.default_rng(seed)
    choices = {"season": seasons_for(min(len(y) for y, _ in series))}
    base = default_genome()
    popl = [base] + [mutate(base, rng, rate=0.6, scale=0.3, choices=choices)
                     for _ in range(pop - 1)]

    def score(gs: list[Genome]) -> np.ndarray:
        s = np.zeros(len(gs))
        for y, m in series:
            s += np.log(mase(replay(y, gs), y, start_of(m)))
        return s / len(series)

    sc = score(popl)
    for _ in range(gens):
        order = np.argsort(sc)
        elite = [popl[i] for i in order[: pop // 2]]
        kids = []
        for _ in range(pop - len(elite)):
            a, b = (elite[int(rng.integers(len(elite)))] for _ in range(2))
            kids.append(breed(a, b, rng, rate=0.4, scale=0.15, choices=choices))
        popl = elite + kids
        sc = np.concatenate([sc[order[: pop // 2]], score(kids)])
    i = int(np.argmin(sc))
    return popl[i], float(sc[i])


# -- cost -------------------------------------------------------------------------------------


def tick_cost(blocks: int, ticks: int, entities: int, seed: int) -> dict[str, float]:
    """Median seconds per tick: Forecasts.update + predict for ``blocks`` blocks (seasons
    0, 4, 12, 24 mixed), the same with 10 % of blocks on a shadow trial, and aggregate()
    over ``entities`` entities in ``blocks`` blocks."""
    from corec_node.engine import EntityStore, aggregate
    from corec_node.engine.evolution import Challenge

    rng = np.random.default_rng(seed)
    seasons = (0, 4, 12, 24)
    f = Forecasts()
    for b in range(blocks):
        f.add(b, default_genome().replace(season=seasons[b % len(seasons)]))
    ids = np.arange(blocks)
    ys = 20 + np.sin(np.arange(ticks + 60)[:, None] / 3.0) + rng.normal(0, 0.3, (ticks + 60, blocks))
    for t in range(60):
        f.update(ids, ys[t])
    plain = []
    for t in range(60, 60 + ticks):
        t0 = time.perf_counter()
        f.predict(ids)
        f.update(ids, ys[t])
        plain.append(time.perf_counter() - t0)
    trials = ShadowTrials(judge=10**6)  # never ends: the cost of trials running
    for b in range(0, blocks, 10):
        g = default_genome().replace(season=seasons[b % len(seasons)], alpha=0.3)
        trials.start(Challenge(b, g, default_genome()), f.export(b))
    shadow = []
    for t in range(60, 60 + ticks):
        t0 = time.perf_counter()
        fc = f.predict(ids)
        trials.observe(ids, ys[t], fc, t)
        f.update(ids, ys[t])
        shadow.append(time.perf_counter() - t0)

    bs = max(1, entities // blocks)
    data = _entities(entities, bs, seed)
    store = EntityStore(block_size=bs)
    store.ingest(data)
    aggregate(store, 0)
    agg = []
    for t in range(max(20, ticks // 4)):
        t0 = time.perf_counter()
        aggregate(store, t)
        agg.append(time.perf_counter() - t0)
    return {"blocks": blocks, "entities": store.count(), "agg_blocks": len(store.block_ids()),
            "forecast_s": statistics.median(plain), "forecast_trials_s": statistics.median(shadow),
            "aggregate_s": statistics.median(agg)}


def _entities(n: int, block_size: int, seed: int) -> np.ndarray:
    """bench/engine.py's dataset: 4 channels of n/4 sequential ids, N(20, 3), 98 % active."""
    from corec_node.wire import ENTITY_DTYPE

    rng = np.random.default_rng(seed)
    per = n // 4
    out = np.empty(4 * per, ENTITY_DTYPE)
    out["id"] = np.tile(np.arange(per, dtype=np.uint32), 4)
    out["channel"] = np.repeat(np.arange(4, dtype=np.uint8), per)
    out["value"] = np.round(rng.normal(20.0, 3.0, len(out)), 2)
    out["active"] = rng.random(len(out)) < 0.98
    return out[rng.permutation(len(out))]


# -- plot -------------------------------------------------------------------------------------


def plot(y: np.ndarray, pred: dict[str, np.ndarray], path: Path, title: str, last: int) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "skipped: matplotlib is not installed"
    t = np.arange(len(y))[-last:]
    fig, ax = plt.subplots(figsize=(9, 4), dpi=110)
    ax.plot(t, y[-last:], color="black", lw=1.6, label="actual")
    for (name, p), style in zip(pred.items(), ("-", "--", ":")):
        ax.plot(t, p[-last:], style, lw=1.2, label=name)
    ax.set_xlabel("tick (month)")
    ax.set_ylabel("block mean")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return str(path.relative_to(ROOT))


# -- main -------------------------------------------------------------------------------------


ONLINE_GRID = ((0.02, 0.3, 0.1, 24), (0.05, 0.3, 0.1, 24), (0.05, 0.3, 0.1, 48),
               (0.05, 0.5, 0.2, 24), (0.1, 0.5, 0.2, 48))
"""(margin, rate, scale, judge) candidates for the online evolution, chosen on the tuning
series by mean log MASE."""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="smaller GA, fewer online seeds")
    ap.add_argument("--no-statsmodels", action="store_true", help="skip the statsmodels fits")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--blocks", type=int, default=1000)
    ap.add_argument("--ticks", type=int, default=200)
    ap.add_argument("--entities", type=int, default=1_000_000)
    args = ap.parse_args(argv)
    pop, gens, seeds = (8, 6, 1) if args.quick else (16, 14, 3)

    series = load_series()
    print("CoreC adaptive layer benchmark (offline: the pure forecaster, no nodes)")
    print(f"{cpu_model()}, Python {platform.python_version()}, numpy {np.__version__}, seed {args.seed}")
    print(f"tuning series:   {', '.join(TUNING)}")
    print(f"held-out series: {', '.join(HELD_OUT)}")

    # evolved genomes: one per sampling, from the tuning series of that sampling
    evolved: dict[str, Genome] = {}
    for sampling in ("monthly", "quarterly", "yearly"):  # weekly: no tuning series
        tune = [(series[n][0], series[n][2]) for n in TUNING if series[n][1] == sampling]
        g, s = evolve_offline(tune, args.seed, pop, gens)
        evolved[sampling] = g
        print(f"evolved genome for {sampling} ({len(tune)} tuning series, mean log MASE {s:.3f}): "
              + ", ".join(f"{k}={_fmt(v)}" for k, v in g.params.items() if k in
                          ("alpha", "beta", "gamma", "season", "damping")))

    # online settings, chosen on the tuning series
    def online_score(names: tuple[str, ...], margin: float, rate: float, scale: float,
                     judge: int, start_genome: Any) -> dict[str, Any]:
        res = {}
        for n in names:
            y, sampling, m = series[n]
            g0 = start_genome(sampling)
            runs = [replay_online(y, g0, args.seed + k, margin, rate, scale, judge)
                    for k in range(seeds)]
            res[n] = {"mase": float(np.mean([mase(r[0], y, start_of(m)) for r in runs])),
                      "trials": float(np.mean([r[1] for r in runs])),
                      "replaced": float(np.mean([r[2] for r in runs])),
                      "final_season": runs[0][3]["season"]}
        return res

    grid = []
    for margin, rate, scale, judge in ONLINE_GRID:
        r = online_score(TUNING, margin, rate, scale, judge, lambda s: default_genome())
        grid.append((float(np.mean([math.log(v["mase"]) for v in r.values()])),
                     margin, rate, scale, judge))
    _, margin, rate, scale, judge = min(grid)
    print("online evolution settings on the tuning series (mean log MASE):")
    for v, m_, r_, s_, j_ in grid:
        print(f"  margin {m_:.2f} rate {r_:.1f} scale {s_:.1f} judge {j_:>2}: {v:+.3f}")
    print(f"  -> margin {margin}, rate {rate}, scale {scale}, judge {judge}")

    rows = {}
    preds_for_plot: dict[str, np.ndarray] = {}
    online = online_score(HELD_OUT + TUNING, margin, rate, scale, judge, lambda s: default_genome())
    online_ev = online_score(tuple(n for n in HELD_OUT if series[n][1] in evolved),
                             margin, rate, scale, judge, lambda s: evolved[s])
    for n in HELD_OUT + TUNING:
        y, sampling, m = series[n]
        st = start_of(m)
        ev = evolved.get(sampling)
        d, e = replay(y, [default_genome(), ev or default_genome()]).T
        row = {"set": "held-out" if n in HELD_OUT else "tuning", "sampling": sampling, "m": m,
               "ticks": len(y), "scored": len(y) - st,
               "default": mase(d, y, st), "evolved": mase(e, y, st) if ev else None,
               "online": online[n]["mase"], "online_trials": online[n]["trials"],
               "online_replaced": online[n]["replaced"],
               "online_final_season": online[n]["final_season"],
               "evolved_online": online_ev[n]["mase"] if n in online_ev else None,
               "snaive": mase(seasonal_naive(y, m), y, st) if m else None,
               "statsmodels": None}
        if not args.no_statsmodels:
            t0 = time.perf_counter()
            hw = statsmodels_hw(y, m, st, refit=m if m else 5)
            row["statsmodels"] = mase(hw, y, st)
            row["statsmodels_s"] = time.perf_counter() - t0
            if n == "co2_monthly":
                preds_for_plot["statsmodels Holt-Winters"] = hw
        if n == "co2_monthly":
            preds_for_plot = {"evolved genome": e, "default genome": d, **preds_for_plot}
        rows[n] = row

    print()
    print("MASE against naive last value (< 1 beats naive; same ticks for every method)")
    hdr = (f"  {'series':<16}{'set':<9}{'m':>3}{'ticks':>6}{'default':>9}{'evolved':>9}"
           f"{'online':>8}{'ev+on':>7}{'snaive':>8}{'statsm.':>8}  online trials/replaced")
    print(hdr)
    for n, r in rows.items():
        print(f"  {n:<16}{r['set']:<9}{r['m']:>3}{r['scored']:>6}{_c(r['default']):>9}"
              f"{_c(r['evolved']):>9}{_c(r['online']):>8}{_c(r['evolved_online']):>7}"
              f"{_c(r['snaive']):>8}{_c(r['statsmodels']):>8}"
              f"  {r['online_trials']:.0f}/{r['online_replaced']:.0f} (season {r['online_final_season']})")
    ho = [rows[n] for n in HELD_OUT]
    keys = ("default", "evolved", "online", "evolved_online", "statsmodels")
    common = [r for r in ho if r["evolved"] is not None]  # the series every method scored
    summary = {k: math.exp(statistics.fmean(math.log(r[k]) for r in common))
               for k in keys if all(r[k] is not None for r in common)}
    print(f"  held-out geometric mean over the {len(common)} series with an evolved genome: "
          + ", ".join(f"{k} {v:.3f}" for k, v in summary.items()))
    wins = sum(r["evolved"] < r["default"] for r in ho if r["evolved"] is not None)
    wins_on = sum(r["online"] < r["default"] for r in ho)
    print(f"  held-out series where evolved < default: {wins} of "
          f"{sum(r['evolved'] is not None for r in ho)}; "
          f"online < default: {wins_on} of {len(ho)}")
    print("  strongly seasonal: " + ", ".join(
        f"{n} evolved {_c(rows[n]['evolved'])} online {_c(rows[n]['online'])} "
        f"statsmodels {_c(rows[n]['statsmodels'])}"
        for n in SEASONAL))

    print()
    cost = tick_cost(args.blocks, args.ticks, args.entities, args.seed)
    print(f"cost per tick for {cost['blocks']:,} blocks (median of {args.ticks} ticks)")
    print(f"  forecaster update + predict              {cost['forecast_s'] * 1e3:8.3f} ms")
    print(f"  same, 10 % of blocks on a shadow trial   {cost['forecast_trials_s'] * 1e3:8.3f} ms")
    print(f"  aggregate() on {cost['entities']:,} entities in {cost['agg_blocks']:,} blocks "
          f"{cost['aggregate_s'] * 1e3:8.3f} ms")
    print(f"  forecaster / aggregate                   {cost['forecast_s'] / cost['aggregate_s']:8.1%}"
          f"  (with trials {cost['forecast_trials_s'] / cost['aggregate_s']:.1%})")

    plotted = "skipped (--no-plot)"
    if not args.no_plot and preds_for_plot:
        y = series["co2_monthly"][0]
        plotted = plot(y, preds_for_plot, ROOT / "docs" / "forecast.png",
                       "co2 (Mauna Loa, monthly): one-step forecasts, last 10 years", 120)
    print(f"\nplot: {plotted}")
    print(json.dumps({"bench": "adaptive", "seed": args.seed, "series": rows,
                      "held_out_geomean": summary, "online_settings":
                      {"margin": margin, "rate": rate, "scale": scale, "judge": judge},
                      "evolved": {k: dict(g.params) for k, g in evolved.items()},
                      "cost": cost, "plot": plotted}, default=float))
    return 0


def _c(x: Any) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def _fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


if __name__ == "__main__":
    raise SystemExit(main())
