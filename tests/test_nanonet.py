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


# A format-1 blob (torch.save), as the code before format 2 wrote it to users' SQLite files:
# NanoConfig(window=3, hidden=2, memory=6, seed=4) of then (training every tick, lr 0.005), block 5, season 4, after the ticks
# 10, 11, NaN, 12.5, 12, 13, 12.2, 14, 13.1; then it forecast 13.289964026212692, and
# 14.882684955596924 after one more tick of 15.
FORMAT_1_BLOB = (
    "eNqll3tsU1Ucx28fa7syBuM1QNyKgHZjlPW5Fra2dqSLuSaMgjAB0922d2ux692vPd0cD8PDjeA7kSiahZBAgiGL/KFk"
    "IOuERNHEOAGRGPQPCIqbIo/4RIJ4z7ml3HvnGLKzNL/9zj2f3+/be87v/m7raZWaonQ6atiYSE2imGQ4GmtjF0YYxJha"
    "n437fYXUasnYrNwElLFBwQNtoKAVDRr+vzCXaIo1A39JZSQT7bFEhGsHNa0ibjQWibAJyKOVxG1hW7hkB2hoTUMe74YY"
    "FI6CltYRL4XY1hTo+MhK3osnIb/Og9ZfqHtvyoY0oVMsk+ISoKfVREUCxtH55AITYVqCCAr4QBhtCsP4Om/5zrZyq9Ua"
    "xcnUhGYjUPhi/mDdj/+sva74jSJoK5NkWlIwYRNMNBJ4lRmKwojjb4cpmEaxeEofTLKhdCweCSI2keKSwTaLHiYZjQ1a"
    "oplLMs0sTBYQvT/OMWi5MKmHKURnJUxtUOF71ZqGaXQhguJlNEVraWUXTKeVtKILZuwIh7l4nA2jGJdI6ZcmI2ySjSyJ"
    "hZEeZpYF4CEEswLwMNEXMkNJlE8fnRwVwpuhNDqNViIw4LDKTphNKzrhkR1RTM5BMDcA8wjZboFHJaQFHhNIY5Ysw2S5"
    "QM5HUBGABUJOC5gkpBUW8qQCQSVPlpUJhBmBJQBW8l3jsQTYJIgN7DyiReAg374TqnAyp4C6ECwKwOI02agkm0JQLcDZ"
    "27qES4fibO6+1pCIdnDzEb0IPDiitxO8OOLjQkQfgtoALEmb6mmtbqtSFejlvwj+1I9YBsWUOlcGpiYu2cKgYBubTPF7"
    "4vfx9xlH6r363TacG39GjjSTqrobKXtEgkw81pxoYRPI77PKSuu+hsOGBXjaYQhvifKeAoooT05AqAOxHD5Rft/iB8l7"
    "Z8RjCMVZrKGz5uIMXDuae2oopNySp8rCSr9v0RgE5IXH9a8vtRwtQZzbu+azTNe4Le5LGmN/zV873QfeXtRvvTXVXRd6"
    "un+wIN+9+MvjmYFWU3/kz+5+rPjEC3HKyWtyjqK4QKrY7Pfpcoqv6yszrxZnSLzn2IvtOIBulHjV0ngWv8/5wHeg9ltd"
    "zY2ztX04/5Pe24ceIL91LPkLBopqcO6rH0y6ictUPUpurzS3ze+rHsvxW320+82+K+lPq0Pju/o0K3dVt+W9drT8htbs"
    "2VGSIaW54tT+WXzmWaPoMkp12f2+ufeli4c3f9GxwYPtuUtNH/HWcP34K9h6B5Zvx/ONV6LEerdVp/H8nt6vWrFP2TY1"
    "Ev/7vauwPd+7fwWZz1Ot7MN2DlVfjfmh0zsJf6TmZbyu8def27E9tm9oC5nf99JJMm/acpzM/7R2ENvNQ4NnyPW5jZeJ"
    "rlvvXsD+nvn7D2OfWlpxgORvrT2E8xl6Sv/A1w2WwIduzO8a3IVt4+3Oc9hShsQZbA2RoZPYnn/jSA+ZL7vWS6x6zUHC"
    "9Rx8h1zf9/xGbL3PTI7jEjO8r20kduPvP5A4pl/OknWZK18T//QnA2T99LPriM6rfobomd23F9tjr2c4bM9z1m4yv5vb"
    "SqxL9RZZ3314OVmX7yl3YT3zSns8wv6WeQVrzNpybxMZd/wKr5WM8qx/zXO/Fp+xz0+s66Cyj9+Rz9gEqjZ3xnINxDOm"
    "w88Pqx4rOLW7+anRn/8llOVuAyLHPMUmY3wHWs/gV4xgLOL3mf6nILPF4bQ7qqwuh8th4/8sDrO50myz2Jy2KpvdZXda"
    "nC67w+nAKv/ueOJjI94FolKBxeZ0ipvxxGHK5e+hclrcgIslpFZFjdS+5UHETXSmJMgycZBhnVseR9wIiyRxTovi5Bqw"
    "HBd3pUIJvlJNyXqnnBV3ICmry5OxZjkr7h5StkHOWuSs+OkvZb+Rs9Zheyd6QkvZFRoZa5Oz4sqTspflrF3OimtmgoSt"
    "z6fklSqHxUe5RLrHIvi/i6ye1mgq7pSkakGOLJDZm8rspuqzsmgN/nFBpcYLvvC2macRmAKyXlj7L5PHPA4="
)


def test_restore_reads_format_1_blobs():
    import base64
    import zlib

    blob = zlib.decompress(base64.b64decode(FORMAT_1_BLOB))
    assert blob[:2] == b"PK"  # a torch.save zip
    nets = NanoNets(NanoConfig(window=3, hidden=2, memory=6, train_every=1, lr=0.005, seed=99))
    nets.restore(5, blob)
    assert nets.season(5) == 4
    assert nets.predict([5])[0] == 13.289964026212692
    assert nets.update([5], [15.0])[0] == pytest.approx(14.882684955596924, rel=1e-6)
    again = NanoNets(NanoConfig(window=3, hidden=2, memory=6))
    again.restore(5, nets.export(5))  # and it goes on in format 2
    assert again.export(5) == nets.export(5)


def test_train_every_trains_on_every_kth_tick_and_forecasts_on_all():
    ys = seasonal(60)[:, None]
    every = NanoNets(NanoConfig(seed=1, train_every=3))
    every.add(0, season=12)
    pred = replay(every, ys)
    assert np.isfinite(pred[1:]).all()
    assert every._np["adam_t"][0] == 60 // 3  # ticks 3, 6, .. 60 of the block's own count
    blob = every.export(0)
    other = NanoNets(NanoConfig(seed=7, train_every=3))
    other.restore(0, blob)
    for t in range(10):
        assert other.update([0], [50.0 + t])[0] == every.update([0], [50.0 + t])[0]
    with pytest.raises(ValueError):
        NanoConfig(train_every=0)
