"""Forecasts: Holt-Winters per block, vectorized, against a per-block reference loop; warm
start, NaN holes, scaled error, surprise, and state that moves with a block."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corec_node.engine.forecast import MAE_TO_SIGMA, MIN_SURPRISE, Forecasts
from corec_node.engine.genome import default_genome, mutate

SEASONAL = default_genome().replace(season=12, alpha=0.3, beta=0.05, gamma=0.2, damping=0.98)


# -- an independent, scalar reference (module docstring of forecast.py, rules 1-3) ----------


def _mean(xs):
    xs = [x for x in xs if math.isfinite(x)]
    return sum(xs) / len(xs) if xs else math.nan


def reference(y, g, ticks=None):
    """Forecasts (made before each tick) and the final (ef, en, scored) of one block under
    genome g, one Python step per tick. ``ticks``: which ticks the block is given."""
    a, be, ga, phi, m = g["alpha"], g["beta"], g["gamma"], g["damping"], g["season"]
    dec = 1 - 1 / g["window"]
    lvl, b, s, buf, last = math.nan, 0.0, [0.0] * max(m, 1), [], math.nan
    ef = en = 0.0
    scored = 0
    t = 0
    preds = []
    for k, v in enumerate(y):
        if ticks is not None and not ticks[k]:
            preds.append(None)
            continue
        sp = s[t % m] if m else 0.0
        f = lvl + phi * b + sp
        preds.append(f)
        fin, started = math.isfinite(v), math.isfinite(lvl)
        if fin and started and math.isfinite(last):
            ef, en, scored = dec * ef + abs(v - f), dec * en + abs(v - last), scored + 1
        if started:
            ye = v if fin else f
            lp = lvl + phi * b
            l1 = a * (ye - sp) + (1 - a) * lp
            b1 = be * (l1 - lvl) + (1 - be) * phi * b
            s1 = ga * (ye - lp) + (1 - ga) * sp
        else:
            l1, b1, s1 = (v if fin else math.nan), 0.0, 0.0
        if m:
            if t < 2 * m:
                buf.append(v)
                if t == 2 * m - 1:
                    m1, m2 = _mean(buf[:m]), _mean(buf[m:])
                    tr = (m2 - m1) / m
                    tr0 = tr if math.isfinite(tr) else 0.0
                    seas = []
                    for j in range(m):
                        pos = j - (m - 1) / 2
                        seas.append(_mean([buf[j] - m1 - tr0 * pos, buf[m + j] - m2 - tr0 * pos]))
                    seas = [x if math.isfinite(x) else 0.0 for x in seas]
                    mu = sum(seas) / m
                    s = [x - mu for x in seas]
                    if math.isfinite(tr):
                        b1 = tr
                    if math.isfinite(m2):
                        l1 = m2 + tr0 * (m - 1) / 2
            else:
                s[t % m] = s1 if started else 0.0
        lvl, b = l1, b1
        if fin:
            last = v
        t += 1
    return preds, (ef, en, scored)


def run(f, block_ids, series):
    """Predictions [ticks, blocks] made before each update."""
    out = []
    for row in series:
        out.append(f.predict(block_ids))
        f.update(block_ids, row)
    return np.array(out)


def random_genome(rng):
    g = mutate(default_genome(), rng, rate=0.8, scale=0.3)
    return g.replace(season=int(rng.choice([0, 4, 7, 12])), window=int(rng.integers(8, 40)))


# -- synthetic series ------------------------------------------------------------------------


def test_constant_series_is_forecast_exactly():
    f = Forecasts()
    f.add(1, default_genome())
    f.add(2, SEASONAL)
    p = run(f, [1, 2], np.full((60, 2), 7.25))
    assert np.isnan(p[0]).all()
    assert np.allclose(p[1:], 7.25, rtol=0, atol=1e-12)
    assert (f.scaled_error() < 1e-3).all()  # both perfect: ~0, not 0 / 0 (rule 3)


def test_linear_trend_is_followed_by_an_undamped_trend():
    g = default_genome().replace(damping=1.0, beta=0.3)
    f = Forecasts()
    f.add(5, g)
    y = 3.0 + 0.5 * np.arange(300)
    p = run(f, [5], y[:, None])[:, 0]
    assert abs(p[-1] - y[-1]) < 1e-6
    assert f.scaled_error()[0] < 0.01  # naive is off by 0.5 every tick


def test_damped_trend_beats_naive_on_a_trend_and_stays_bounded():
    f = Forecasts()
    f.add(5, default_genome())  # damping 0.9
    y = 3.0 + 0.5 * np.arange(300)
    run(f, [5], y[:, None])
    assert f.scaled_error()[0] < 1.0


def test_noisy_seasonal_sine_is_far_better_than_naive():
    rng = np.random.default_rng(0)
    t = np.arange(600)
    y = 10 + 3 * np.sin(2 * np.pi * t / 12) + rng.normal(0, 0.3, len(t))
    f = Forecasts()
    f.add(1, SEASONAL)
    f.add(2, default_genome())  # no season: close to naive
    p = run(f, [1, 2], np.stack([y, y], 1))
    span = slice(48, None)
    mase = np.abs(y[span, None] - p[span]).mean(0) / np.abs(np.diff(y))[47:].mean()
    assert mase[0] < 0.4 < mase[1]
    assert f.scaled_error([1])[0] < 0.5


def test_nan_holes_do_not_poison_the_state():
    rng = np.random.default_rng(1)
    t = np.arange(400)
    y = 10 + 3 * np.sin(2 * np.pi * t / 12) + rng.normal(0, 0.3, len(t))
    y[rng.random(len(t)) < 0.15] = np.nan
    y[100:110] = np.nan  # a block with no active entity for a while
    y[:5] = np.nan  # and at the start
    f = Forecasts()
    f.add(1, SEASONAL)
    p = run(f, [1], y[:, None])[:, 0]
    assert np.isnan(p[:6]).all()  # nothing to forecast from before the first observation
    assert np.isfinite(p[6:]).all()
    assert np.isfinite(f.export(1)["level"]) and np.isfinite(f.export(1)["trend"])
    ok = np.isfinite(y[48:])
    truth = 10 + 3 * np.sin(2 * np.pi * t[48:] / 12)
    assert np.abs(p[48:] - truth)[ok].mean() < 0.6
    assert 0 < f.scaled_error()[0] < 0.5


def test_a_block_with_nothing_ever_observed_stays_nan_and_harmless():
    f = Forecasts()
    f.add(1, SEASONAL)
    f.add(2, default_genome())
    for _ in range(40):
        f.update([1, 2], [np.nan, 1.0])
    assert np.isnan(f.predict([1]))[0] and f.predict([2])[0] == 1.0
    f.update([1, 2], [4.0, 1.0])
    assert f.predict([1])[0] == pytest.approx(4.0)


# -- vectorized == per-block reference --------------------------------------------------------


def test_vectorized_equals_the_per_block_reference_loop():
    rng = np.random.default_rng(2)
    n, ticks = 40, 120
    genomes = [random_genome(rng) for _ in range(n)]
    t = np.arange(ticks)[:, None]
    y = 5 + 0.02 * t + 2 * np.sin(2 * np.pi * t / rng.choice([4, 7, 12], n)) + rng.normal(
        0, 0.5, (ticks, n))
    y[rng.random(y.shape) < 0.1] = np.nan
    ids = rng.permutation(10_000)[:n] + (3 << 32)
    f = Forecasts()
    for b, g in zip(ids, genomes):
        f.add(int(b), g)
    given_ = rng.random(y.shape) > 0.1  # some blocks miss some ticks entirely
    preds = np.full(y.shape, np.nan)
    for k in range(ticks):
        sel = np.flatnonzero(given_[k])
        order = rng.permutation(sel)  # any order of ids
        preds[k, order] = f.predict(ids[order])
        f.update(ids[order], y[k, order])
    errs = f.scaled_error(ids)
    for j, g in enumerate(genomes):
        ref, (ef, en, scored) = reference(y[:, j], g, given_[:, j])
        want = np.array([np.nan if r is None else r for r in ref])
        np.testing.assert_allclose(preds[given_[:, j], j], want[given_[:, j]], rtol=1e-9,
                                   atol=1e-9, equal_nan=True)
        if scored >= g["window"]:
            assert errs[j] == pytest.approx(ef / en, rel=1e-6)
        else:
            assert math.isnan(errs[j])


def test_update_of_all_blocks_in_row_order():
    f = Forecasts()
    for b in (9, 3, 5):
        f.add(b, default_genome())
    assert f.ids().tolist() == [9, 3, 5]
    f.update(None, [1.0, 2.0, 3.0])
    assert f.predict([3, 5, 9]).tolist() == [2.0, 3.0, 1.0]


def test_removing_blocks_leaves_the_others_untouched():
    rng = np.random.default_rng(3)
    genomes = [random_genome(rng) for _ in range(12)]
    y = rng.normal(10, 1, (80, 12))
    f = Forecasts()
    for b, g in enumerate(genomes):
        f.add(b, g)
    alive = list(range(12))
    preds = {b: [] for b in alive}
    for k in range(80):
        if k in (20, 35, 50):
            for b in rng.choice(alive, 2, replace=False).tolist():
                f.remove(b)
                alive.remove(b)
        p = f.predict(alive)
        for b, v in zip(alive, p):
            preds[b].append(v)
        f.update(alive, y[k, alive])
    assert len(f) == len(alive) == 6
    for b in alive:
        ref, _ = reference(y[:, b], genomes[b])
        np.testing.assert_allclose(preds[b], ref, rtol=1e-9, equal_nan=True)


def test_unknown_blocks_and_bad_lengths_are_refused():
    f = Forecasts()
    f.add(1, default_genome())
    with pytest.raises(KeyError, match="2"):
        f.update([1, 2], [0.0, 0.0])
    with pytest.raises(ValueError):
        f.update([1], [0.0, 1.0])
    with pytest.raises(ValueError):
        f.update(None, [0.0, 1.0])
    with pytest.raises(KeyError):
        f.remove(7)
    f.update([], [])  # a tick with nothing to do


# -- scaled error and surprise -------------------------------------------------------------------


def test_scaled_error_is_nan_until_a_window_is_scored():
    g = default_genome().replace(window=20)
    f = Forecasts()
    f.add(1, g)
    rng = np.random.default_rng(4)
    for k in range(21):  # the first tick has no forecast, the second no... naive has y0
        f.update([1], [rng.normal()])
        assert math.isnan(f.scaled_error()[0]) == (k < 20)


def test_surprise_flags_a_spike_and_not_the_clean_ticks():
    rng = np.random.default_rng(5)
    y = 20 + rng.normal(0, 0.2, 300)
    y[200] += 5.0
    f = Forecasts()
    f.add(1, default_genome().replace(alpha=0.2, sensitivity=5.0))
    flagged = []
    for k, v in enumerate(y):
        f.update([1], [v])
        if f.flags([1])[0]:
            flagged.append(k)
        if k < MIN_SURPRISE:
            assert math.isnan(f.surprise()[0])
    assert flagged == [200]
    assert MAE_TO_SIGMA == pytest.approx(1.2533, abs=1e-4)


# -- state that moves (rule 5) -------------------------------------------------------------------


@pytest.mark.parametrize("move_at", [5, 17, 30, 150])  # in warm-up, at its end, after
def test_export_restore_continues_exactly_as_if_never_moved(move_at):
    rng = np.random.default_rng(6)
    t = np.arange(300)
    y = 10 + 3 * np.sin(2 * np.pi * t / 12) + rng.normal(0, 0.3, len(t))
    y[rng.random(len(t)) < 0.1] = np.nan
    other = rng.normal(0, 1, len(t))
    stay, here, there = Forecasts(), Forecasts(), Forecasts()
    for f in (stay, here):
        f.add(1, SEASONAL)
    there.add(8, default_genome().replace(season=12))
    there.add(9, default_genome())
    for k in range(move_at):
        stay.update([1], [y[k]])
        here.update([1], [y[k]])
        there.update([8, 9], [other[k], other[k]])
    state = json.loads(json.dumps(here.export(1)))  # plain values, through a text format
    here.remove(1)
    there.restore(1, state, SEASONAL)
    for k in range(move_at, len(t)):
        assert there.predict([1])[0] == stay.predict([1])[0] or (
            math.isnan(there.predict([1])[0]) and math.isnan(stay.predict([1])[0]))
        stay.update([1], [y[k]])
        there.update([9, 1, 8], [other[k], y[k], other[k]])
    assert json.dumps(there.export(1)) == json.dumps(stay.export(1))  # bit for bit
    assert there.scaled_error([1])[0] == stay.scaled_error([1])[0]


def test_state_survives_msgpack():
    msgpack = pytest.importorskip("msgpack")
    f = Forecasts()
    f.add(1, SEASONAL)
    for v in np.sin(np.arange(50)):
        f.update([1], [v])
    st_ = f.export(1)
    assert msgpack.unpackb(msgpack.packb(st_)) == st_


def test_restore_under_another_season_keeps_the_level_and_warms_up_again():
    f = Forecasts()
    f.add(1, SEASONAL)
    y = 10 + 3 * np.sin(2 * np.pi * np.arange(100) / 12)
    for v in y:
        f.update([1], [v])
    before = f.export(1)
    f.set_genome(1, SEASONAL.replace(season=24))
    after = f.export(1)
    assert after["season"] == 24 and after["t"] == 0 and after["level"] == before["level"]
    assert after["fc"] == pytest.approx(before["level"] + 0.98 * before["trend"])
    f.set_genome(1, SEASONAL.replace(season=24, alpha=0.5))  # same season: state goes on
    assert f.export(1) == after and f.genome_params(1)["alpha"] == 0.5


@pytest.mark.parametrize(
    "bad",
    [{}, {"v": 2}, {"v": 1, "season": 12}, "nope",
     {"v": 1, "season": 4, "level": 1.0, "trend": 0.0, "last": 1.0, "fc": 1.0, "ef": 0.0,
      "en": 0.0, "w": 0.0, "z": 0.0, "t": 50, "scored": 0, "seasonal": [0.0]}],
)
def test_malformed_state_is_a_value_error(bad):
    with pytest.raises(ValueError):
        Forecasts().restore(1, bad, default_genome().replace(season=4))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.floats(-1e6, 1e6), st.just(float("nan"))), min_size=1, max_size=80),
       st.sampled_from([0, 4, 7]), st.integers(0, 2**32 - 1))
def test_any_series_keeps_the_state_finite_once_started(values, season, seed):
    g = random_genome(np.random.default_rng(seed)).replace(season=season)
    f = Forecasts()
    f.add(1, g)
    ref, _ = reference(values, g)
    for v, r in zip(values, ref):
        p = f.predict([1])[0]
        assert (math.isnan(p) and math.isnan(r)) or p == pytest.approx(r, rel=1e-9, abs=1e-6)
        f.update([1], [v])
    st_ = f.export(1)
    if any(math.isfinite(v) for v in values):
        assert math.isfinite(st_["level"]) and math.isfinite(st_["trend"])
        assert math.isfinite(st_["fc"])


@settings(max_examples=40, deadline=None)
@given(season=st.sampled_from([0, 4, 7, 12]), seen=st.integers(0, 60), gap=st.integers(1, 40),
       seed=st.integers(0, 2**16))
def test_skipping_ticks_is_the_same_as_ticks_with_nothing_observed(season, seen, gap, seed):
    """A node down for ``gap`` ticks (Forecasts.skip) forecasts as if it had ticked through
    them with nothing observed (rule 1), its season's phase included; a warm-up the gap would
    end starts again instead."""
    rng = np.random.default_rng(seed)
    g = default_genome().replace(season=season, beta=0.2)
    series = 20 + np.sin(2 * np.pi * np.arange(seen + gap + 30) / max(season, 1)) + 0.05 * np.arange(seen + gap + 30) \
        + rng.normal(0, 0.1, seen + gap + 30)
    ticked, skipped = Forecasts(), Forecasts()
    for f in (ticked, skipped):
        f.add(1, g)
        for y in series[:seen]:
            f.update([1], [y])
    for _ in range(gap):
        ticked.update([1], [np.nan])
    skipped.skip(1, gap)
    if season and seen < 2 * season <= seen + gap:  # the gap ends the warm-up: it starts again
        assert skipped.export(1)["t"] == 0
        return
    a, b = ticked.export(1), skipped.export(1)
    assert a["t"] == b["t"]
    for key in ("level", "trend", "fc"):
        assert (math.isnan(a[key]) and math.isnan(b[key])) or a[key] == pytest.approx(b[key], rel=1e-9, abs=1e-9), key
    for y in series[seen + gap:]:  # and both go on alike
        ticked.update([1], [y])
        skipped.update([1], [y])
    assert ticked.predict([1])[0] == pytest.approx(skipped.predict([1])[0], rel=1e-6, abs=1e-9)
