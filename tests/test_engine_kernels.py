"""Kernels: registry, built-ins, synthetic channels (deterministic)."""

from __future__ import annotations

import numpy as np
import pytest
from records import entities

from corec_node.engine import EntityStore, aggregate
from corec_node.engine.kernels import (
    KernelRegistry,
    KernelState,
    SyntheticChannel,
    SyntheticSource,
    clip,
    generate,
    identity,
    random_walk,
    sine,
    transform,
)
from corec_node.wire import ENTITY_DTYPE


def test_registry():
    reg = KernelRegistry()
    assert reg.names() == ["clip", "identity", "random_walk", "sine"]
    double = lambda v, s: np.asarray(v, np.float32) * 2  # noqa: E731
    reg.register("double", double)
    assert reg.get("double") is double and "double" in reg
    with pytest.raises(ValueError):
        reg.register("double", double)
    reg.register("double", identity, replace=True)
    assert reg.get("double") is identity
    with pytest.raises(KeyError, match="known"):
        reg.get("nope")
    with pytest.raises(TypeError):
        reg.register("x", 3)
    assert KernelRegistry(builtins=False).names() == []


def test_builtins():
    v = np.array([1.0, 2.0, 50.0], np.float32)
    out = identity(v, KernelState.seeded(0))
    assert np.array_equal(out, v) and out is not v
    a = random_walk(v, KernelState.seeded(7, {"sigma": 0.1}))
    b = random_walk(v, KernelState.seeded(7, {"sigma": 0.1}))
    assert np.array_equal(a, b) and a.dtype == np.float32 and not np.array_equal(a, v)
    assert np.abs(a - v).max() < 1.0
    bounded = random_walk(v, KernelState.seeded(7, {"sigma": 100, "lo": 0, "hi": 10}))
    assert bounded.min() >= 0 and bounded.max() <= 10
    c = clip(np.array([-5, 5, np.nan], np.float32), KernelState.seeded(0, {"lo": 0, "hi": 1}))
    assert c[:2].tolist() == [0.0, 1.0] and np.isnan(c[2])
    s = sine(np.zeros(2), KernelState.seeded(0, {"amplitude": 2, "period": 4, "offset": 1}, tick=1))
    np.testing.assert_allclose(s, [3.0, 3.0], rtol=1e-6)
    with pytest.raises(ValueError, match="unknown"):
        random_walk(v, KernelState.seeded(0, {"sgima": 1}))
    with pytest.raises(ValueError):
        sine(v, KernelState.seeded(0, {"period": 0}))


def test_synthetic_channel_is_deterministic_and_ingestible():
    spec = SyntheticChannel(channel=3, count=2500, kernel="random_walk",
                            params={"sigma": 0.5}, seed=11, first_id=1000, initial=20.0,
                            active_share=0.9)
    src = SyntheticSource(spec)
    ticks = [src.generate(t) for t in range(3)]
    again = SyntheticSource(spec)
    assert all(np.array_equal(x, again.generate(t)) for t, x in enumerate(ticks))
    assert np.array_equal(generate(spec, 2), ticks[2])  # pure in (spec, tick)
    r = ticks[0]
    assert r.dtype == ENTITY_DTYPE and len(r) == 2500
    assert r["id"][0] == 1000 and r["id"][-1] == 3499 and (r["channel"] == 3).all()
    assert 0.85 < r["active"].mean() < 0.95
    assert not np.array_equal(ticks[0]["value"], ticks[1]["value"])
    s = EntityStore()
    for t in ticks:
        s.ingest(t)
    agg = aggregate(s, 2)
    assert agg["count"].sum() == 2500 and abs(agg["mean"].mean() - 20) < 1


def test_synthetic_sine_with_phase_and_bad_specs():
    spec = SyntheticChannel(0, 4, "sine", {"period": 8, "phase_step": np.pi / 2})
    v = generate(spec, 0)["value"]
    np.testing.assert_allclose(v, [0, 1, 0, -1], atol=1e-6)
    with pytest.raises(ValueError):
        SyntheticChannel(256, 1)
    with pytest.raises(ValueError):
        SyntheticChannel(0, 10, first_id=2**32 - 5)
    with pytest.raises(KeyError):
        SyntheticSource(SyntheticChannel(0, 1, kernel="nope"))


def test_transform_applies_a_kernel_to_incoming_records():
    r = entities([0, 0, 0], 0, [-1, 0.5, 9], active=0)
    out = transform(r, clip, KernelState.seeded(0, {"lo": 0, "hi": 1}))
    assert out["value"].tolist() == [0.0, 0.5, 1.0] and r["value"][0] == -1
