"""NanoNets (engine/nanonet.py) with real torch: learning, batching, determinism, bytes."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("torch", reason="torch is not installed (the optional 'intelligent blocks' extra)")

from corec_node.engine.nanonet import NanoConfig, NanoNets  # noqa: E402


def seasonal(n: int, phase: float = 0.0, seed: int = 0) -> np.ndarray:
    """A monthly-like series: trend, a 12-tick season with two harmonics, noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return (50 + 0.05 * t + 3 * np.sin(2 * np.pi * t / 12 + phase)
            + np.cos(4 * np.pi * t / 12 + phase) + rng.normal(0, 0.2, n))


def replay(nets: NanoNets, ys: np.ndarray) -> np.ndarray:
    """One-step forecasts [ticks, blocks] of ys [ticks, blocks] (blocks = ids 0..)."""
    ids = np.arange(ys.shape[1])
    out = np.empty_like(ys)
    for t in range(len(ys)):
        out[t] = nets.predict(ids)
        nets.update(ids, ys[t])
    return out


def mase(pred: np.ndarray, y: np.ndarray, start: int) -> float:
    return float(np.mean(np.abs(y[start:] - pred[start:])) / np.mean(np.abs(np.diff(y)[start - 1:])))


def test_import_does_not_import_torch():
    code = ("import sys; import corec_node.engine.nanonet as n; "
            "assert 'torch' not in sys.modules; print(n.available())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
    hidden = ("import sys; sys.modules['torch'] = None; import corec_node.engine.nanonet as n; "
              "print(n.available())")  # torch absent: the module still imports
    out = subprocess.run([sys.executable, "-c", hidden], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_learns_a_seasonal_series_better_than_last_value():
    ys = np.stack([seasonal(360, p, s) for s, p in enumerate((0.0, 1.0, 2.5))], axis=1)
    nets = NanoNets(NanoConfig(seed=1))
    nets.add_many(range(3), season=12)
    pred = replay(nets, ys)
    assert np.isnan(pred[0]).all()  # nothing known before the first observation
    np.testing.assert_array_equal(pred[1], ys[0])  # untrained: exactly last value
    for b in range(3):
        assert mase(pred[:, b], ys[:, b], 240) < 0.6  # last value scores 1.0


def test_a_block_trains_in_a_batch_as_it_would_alone():
    ys = np.stack([seasonal(120, p, s) for s, p in enumerate((0.0, 1.0, 2.0, 3.0))], axis=1)
    ys[30:40, 2] = np.nan  # another block's gap must not touch block 1
    batch = NanoNets(NanoConfig(seed=3))
    batch.add_many(range(4), season=12)
    alone = NanoNets(NanoConfig(seed=3))
    alone.add(1, season=12)
    together = replay(batch, ys)[:, 1]
    single = np.empty(len(ys))
    for t in range(len(ys)):
        single[t] = alone.predict([1])[0]
        alone.update([1], ys[t:t + 1, 1])
    np.testing.assert_allclose(together, single, rtol=1e-6, atol=1e-6)


def test_deterministic_under_a_seed():
    ys = seasonal(80)[:, None]
    a, b, c = (NanoNets(NanoConfig(seed=s)) for s in (5, 5, 6))
    for n in (a, b, c):
        n.add(0, season=12)
    pa, pb, pc = replay(a, ys), replay(b, ys), replay(c, ys)
    np.testing.assert_array_equal(pa, pb)
    assert not np.array_equal(pa[20:], pc[20:])


def test_missing_observations_never_turn_nan():
    y = seasonal(100)
    y[[0, 1, 40, 41, 42, 70]] = np.nan
    nets = NanoNets()
    nets.add(7, season=12)
    out = [nets.update([7], [v])[0] for v in y]
    assert np.isnan(out[:2]).all()  # history starts at the first finite observation
    assert np.isfinite(out[2:]).all()


def test_weights_round_trip_through_bytes_to_identical_forecasts():
    ys = np.stack([seasonal(150, p) for p in (0.0, 2.0)], axis=1)
    nets = NanoNets(NanoConfig(seed=2))
    nets.add_many(range(2), season=12)
    replay(nets, ys[:100])
    blob = nets.export(1)
    assert isinstance(blob, bytes)

    other = NanoNets(NanoConfig(seed=99))  # another node: another seed, other blocks
    other.add(42, season=4)
    other.restore(1, blob)
    assert other.predict([1])[0] == nets.predict([1])[0]
    hist = ys[:100, 1]
    assert other.forecast(1, hist) == nets.forecast(1, hist)
    assert nets.forecast(1, hist) == pytest.approx(nets.predict([1])[0], rel=1e-9)
    # and it trains on exactly as it would have at home (rule 2: no shared random stream)
    for t in range(100, 150):
        home = nets.update([0, 1], ys[t])[1]
        away = other.update([1, 42], [ys[t, 1], 1.0])[0]
        assert home == away
    assert other.export(1) == nets.export(1)


def test_restore_refuses_foreign_bytes():
    nets = NanoNets(NanoConfig(window=12))
    with pytest.raises(ValueError):
        nets.restore(1, b"not a state")
    wide = NanoNets(NanoConfig(window=24))
    wide.add(1)
    with pytest.raises(ValueError, match="window"):
        nets.restore(1, wide.export(1))
    assert 1 not in nets
