"""Evolution judged fairly: fitness with its forecasting part, the nucleus's plan, and
shadow trials that replace a worse genome and keep a better one."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corec_node.engine.blocks import block_id
from corec_node.engine.evolution import (
    Challenge,
    ShadowTrials,
    Standing,
    channel_best,
    fitness,
    forecast_quality,
    plan_challengers,
)
from corec_node.engine.forecast import Forecasts
from corec_node.engine.genome import default_genome, mutate

SEASONAL = default_genome().replace(season=12, alpha=0.3, beta=0.05, gamma=0.2, damping=0.98)
FLAT = default_genome()  # season 0


def sine(n: int, seed: int = 0, noise: float = 0.3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return 10 + 3 * np.sin(2 * np.pi * t / 12) + rng.normal(0, noise, n)


# -- fitness --------------------------------------------------------------------------------


def test_fitness_forecasting_part():
    assert fitness(0.8, 0.0) == pytest.approx(0.8)  # perfect forecast: health untouched
    assert fitness(0.8, 1.0) == pytest.approx(0.6)  # as good as naive: x 0.75
    assert fitness(0.8, math.inf) == pytest.approx(0.4)  # useless: at most halved
    assert fitness(0.8, math.nan) == pytest.approx(0.8)  # unknown: no evidence
    np.testing.assert_allclose(fitness([1.0, 0.5], [0.5, 3.0]), [1 * (1 + 2 / 3) / 2, 0.5 * 1.25 / 2])
    assert forecast_quality(1.0) == 0.5


@given(st.floats(0, 1), st.floats(0, 1e9), st.floats(0, 1e9))
def test_fitness_is_bounded_and_falls_with_the_error(h, e1, e2):
    f1, f2 = float(fitness(h, e1)), float(fitness(h, e2))
    assert h / 2 - 1e-12 <= f1 <= h + 1e-12
    if e1 < e2:
        assert f1 >= f2


# -- the nucleus's plan -------------------------------------------------------------------------


def standings(n_per_channel=(10, 1), seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for ch, n in enumerate(n_per_channel):
        for k in range(n):
            out.append(Standing(block_id(ch, k * 1000, 1000), mutate(FLAT, rng),
                                float(rng.random())))
    return out


def test_plan_is_deterministic_for_a_seed_and_in_block_order():
    s = standings()
    a = plan_challengers(s, np.random.default_rng(3), share=0.3)
    b = plan_challengers(list(reversed(s)), np.random.default_rng(3), share=0.3)
    assert [(c.block, c.challenger.id) for c in a] == [(c.block, c.challenger.id) for c in b]
    assert [c.block for c in a] == sorted(c.block for c in a)


def test_plan_picks_a_share_of_each_channel_and_breeds_from_its_elite():
    s = standings((10, 1))
    by_block = {x.block: x for x in s}
    plan = plan_challengers(s, np.random.default_rng(1), share=0.3, elite=2)
    ch0 = [c for c in plan if c.block >> 32 == 0]
    ch1 = [c for c in plan if c.block >> 32 == 1]
    assert len(ch0) == 3 and len(ch1) == 1  # ceil(0.3 * 10); a lone block still gets one
    elite_ids = {x.genome.id for x in sorted(s[:10], key=lambda x: -x.fitness)[:2]}
    for c in ch0:
        own = by_block[c.block].genome
        assert c.current == own
        assert own.id in c.challenger.parents
        assert set(c.challenger.parents) - {own.id} <= elite_ids
        assert c.challenger.generation == max(own.generation, 1) + 1
    (lone,) = ch1
    assert lone.challenger.parents == (by_block[lone.block].genome.id,)  # its own mutation


def test_plan_skips_blocks_on_trial_and_respects_choices():
    s = [Standing(x.block, x.genome, x.fitness, on_trial=i % 2 == 0) for i, x in enumerate(standings((6,)))]
    plan = plan_challengers(s, np.random.default_rng(2), share=1.0, rate=1.0,
                            choices={"season": (0, 24)})
    assert {c.block for c in plan} == {x.block for x in s if not x.on_trial}
    assert all(c.challenger["season"] in (0, 24) for c in plan)
    assert plan_challengers([Standing(1, FLAT, 0.5, True)], np.random.default_rng(0)) == []


def test_channel_best_is_the_fittest_genome_per_channel():
    s = standings((5, 3))
    best = channel_best(s + [Standing(block_id(0, 99_000, 1000), SEASONAL, math.nan)])
    for ch in (0, 1):
        want = max((x for x in s if x.block >> 32 == ch), key=lambda x: x.fitness)
        assert best[ch] == want.genome


# -- shadow trials --------------------------------------------------------------------------------


def run_trial(current, challenger, y, trials=None, start_at=30, block=7):
    """Drive one block as the owner does (evolution.py's docstring); returns the verdicts,
    the main forecaster and the current forecasts made each tick."""
    trials = trials if trials is not None else ShadowTrials()
    f = Forecasts()
    f.add(block, current)
    verdicts, preds = [], []
    for t, v in enumerate(y):
        if t == start_at:
            trials.start(Challenge(block, challenger, current), f.export(block))
        fc = f.predict([block])
        preds.append(fc[0])
        out = trials.observe([block], [v], fc, t)
        f.update([block], [v])
        for vd in out:
            verdicts.append(vd)
            if vd.promoted:
                f.restore(block, vd.state, vd.challenger)
    return verdicts, f, np.array(preds)


def test_a_clearly_worse_genome_is_replaced():
    y = sine(400)
    challenger = mutate(SEASONAL, np.random.default_rng(0), rate=0.0).replace(
        **{k: SEASONAL[k] for k in ("alpha", "beta", "gamma", "season", "damping")})
    verdicts, f, _ = run_trial(FLAT, challenger, y)
    (v,) = verdicts
    assert v.promoted and v.challenger_mase < 0.5 < v.current_mase
    assert f.genome_params(7)["season"] == 12
    rec = v.record()
    assert rec.kind == "genome_replaced" and rec.subject == "block 0:7"
    assert rec.details["parents"] == list(challenger.parents)
    assert rec.details["current_mase"] == v.current_mase
    assert rec.details["challenger_mase"] == v.challenger_mase
    assert "won" in rec.reason
    # the promoted state is the challenger's own: the next forecasts are seasonal ones
    assert 0 < f.scaled_error([7])[0] or math.isnan(f.scaled_error([7])[0])


def test_a_clearly_better_genome_is_kept():
    verdicts, f, _ = run_trial(SEASONAL, FLAT, sine(400))
    (v,) = verdicts
    assert not v.promoted and v.state is None
    assert v.current_mase < 0.5 < v.challenger_mase
    assert v.record().kind == "genome_kept" and "did not win" in v.reason
    assert f.genome_params(7)["season"] == 12


def test_an_equal_genome_never_wins_a_tie():
    twin = mutate(SEASONAL, np.random.default_rng(0), rate=0.0)  # same genes, other lineage
    assert dict(twin.params) == dict(SEASONAL.params) and twin.id != SEASONAL.id
    (v,) = run_trial(SEASONAL, twin, sine(300))[0]
    assert not v.promoted and v.current_mase == v.challenger_mase


def test_judging_is_on_the_same_later_ticks_for_both():
    y = sine(300, seed=4)
    y[90:95] = np.nan
    trials = ShadowTrials(burn=10, judge=30, margin=0.05)
    (v,), _, preds = run_trial(FLAT, SEASONAL, y, trials, start_at=30)
    # new season 12: burn 10 + 2 * 12 = 34 ticks from 30; judged: 2 seasons at least -> 30
    assert v.judged == 30
    ticks = [t for t in range(64, 300) if np.isfinite(y[t])][:30]
    naive = [y[t - 1] if np.isfinite(y[t - 1]) else y[t - 6] for t in ticks]  # last finite
    cur = sum(abs(y[t] - preds[t]) for t in ticks) / sum(abs(y[t] - n) for t, n in zip(ticks, naive))
    assert v.current_mase == pytest.approx(cur, rel=1e-12)
    assert v.tick == ticks[-1]


def test_a_trial_that_sees_nothing_expires_with_the_incumbent_kept():
    y = sine(200)
    y[40:] = np.nan
    trials = ShadowTrials(burn=4, judge=10, max_ticks_factor=2)
    (v,) = run_trial(FLAT, SEASONAL, y, trials, start_at=30)[0]
    assert not v.promoted and "expired" in v.reason and v.judged == 0


def test_cancel_and_blocks_not_on_trial():
    trials = ShadowTrials()
    f = Forecasts()
    f.add(1, FLAT)
    f.add(2, FLAT)
    f.update([1, 2], [1.0, 2.0])
    trials.start(Challenge(1, SEASONAL, FLAT), f.export(1))
    assert 1 in trials and 2 not in trials and trials.on_trial() == [1] and len(trials) == 1
    assert trials.observe([2], [3.0], [2.0], 1) == []
    trials.observe([2, 1], [3.0, 1.5], [2.0, 1.0], 1)
    # another season: the challenger warms up from the trial's start, and saw 1's tick only
    assert trials.shadow.export(1)["t"] == 1
    trials.cancel(1)
    trials.cancel(1)
    assert len(trials) == 0 and 1 not in trials.shadow
    assert trials.observe([1], [1.0], [1.0], 2) == []
    with pytest.raises(ValueError):
        ShadowTrials(margin=1.5)


def test_many_blocks_on_trial_at_once():
    n, ticks = 30, 300
    ys = np.stack([sine(ticks, seed=k) for k in range(n)], 1)
    f = Forecasts()
    trials = ShadowTrials()
    ids = np.arange(100, 100 + n)
    for b in ids:
        f.add(int(b), FLAT if b % 2 else SEASONAL)
    verdicts = []
    for t in range(ticks):
        if t == 30:
            for b in ids:
                cur, ch = (FLAT, SEASONAL) if b % 2 else (SEASONAL, FLAT)
                trials.start(Challenge(int(b), ch, cur), f.export(int(b)))
        fc = f.predict(ids)
        verdicts += trials.observe(ids, ys[t], fc, t)
        f.update(ids, ys[t])
    assert len(verdicts) == n and len(trials) == 0
    assert all(v.promoted == bool(v.block % 2) for v in verdicts)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1), st.floats(0.0, 0.3))
def test_verdict_follows_the_margin_rule(seed, margin):
    rng = np.random.default_rng(seed)
    cur = mutate(SEASONAL, rng, rate=0.5, scale=0.2).replace(season=12)
    ch = mutate(SEASONAL, rng, rate=0.5, scale=0.2).replace(season=12)
    (v,) = run_trial(cur, ch, sine(200, seed=seed % 1000), ShadowTrials(margin=margin))[0]
    assert v.promoted == (v.challenger_mase < (1 - margin) * v.current_mase)
