"""Forecast anomalies (engine/anomaly.py through AdaptiveBlocks): the sensitivity gene flags a
block whose mean leaves its forecast, once per episode; a clean noisy block stays quiet."""

from __future__ import annotations

import numpy as np
import pytest

from corec_node.engine.adaptive import DEFAULT, AdaptiveBlocks
from corec_node.engine.anomaly import AnomalyWatch
from corec_node.engine.audit import AlertGate

B1, B2 = (1 << 32) | 0, (2 << 32) | 0  # one block on channel 1, one on channel 2


def run(series: np.ndarray, sensitivity: float = DEFAULT["sensitivity"]) -> tuple[list[int], list[int]]:
    """Replay one block's means; (ticks flagged, ticks that opened an episode)."""
    layer = AdaptiveBlocks()
    layer.first[1] = DEFAULT.replace(sensitivity=sensitivity)
    flagged, opened = [], []
    for t, v in enumerate(series.tolist()):
        layer.step(np.array([B1]), np.array([v]), t)
        flagged += [t] if B1 in layer.anomalies.now else []
        opened += [t] * len(layer.anomalies.opened)
    return flagged, opened


def noise(n: int, seed: int) -> np.ndarray:
    return 10.0 + np.random.default_rng(seed).normal(0.0, 0.1, n)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_clean_noisy_block_raises_nothing(seed: int) -> None:
    flagged, opened = run(noise(2000, seed))
    assert opened == [] and flagged == []


def test_a_spike_is_flagged_on_its_tick_and_alerted_once() -> None:
    y = noise(300, 4)
    y[200] += 3.0  # 30 sigmas of the noise
    flagged, opened = run(y)
    assert flagged[0] == 200 and opened == [200]


def test_a_level_shift_is_one_episode() -> None:
    y = noise(300, 5)
    y[150:] += 2.0
    flagged, opened = run(y)
    assert opened == [150]
    assert 150 in flagged and all(150 <= t < 150 + 20 for t in flagged)  # the forecaster catches up


def test_the_sensitivity_gene_decides() -> None:
    y = noise(300, 6)
    y[200] += 0.8  # ~6-7 robust sigmas of the forecast error
    assert run(y, sensitivity=3.0)[1] == [200]
    assert run(y, sensitivity=12.0)[1] == []


def test_genomes_differ_per_block_in_one_tick() -> None:
    layer = AdaptiveBlocks()
    layer.first[1] = DEFAULT.replace(sensitivity=3.0)
    layer.first[2] = DEFAULT.replace(sensitivity=12.0)
    y = noise(250, 7)
    y[200] += 0.8
    opened: list[int] = []
    for t, v in enumerate(y.tolist()):
        layer.step(np.array([B1, B2]), np.array([v, v]), t)
        opened += [a.block for a in layer.anomalies.opened]
    assert opened == [B1]


def test_one_alert_per_episode_and_a_new_one_after_calm() -> None:
    watch = AnomalyWatch(calm=5)
    blocks = np.array([B1])

    def tick(t: int, flag: bool) -> int:
        z = np.array([9.0 if flag else 0.5])
        return len(watch.step(blocks, np.array([1.0]), np.array([0.0]), z, np.array([flag]), t))

    flicker = [True, False, True, True, False, False, True]  # gaps shorter than calm: one episode
    assert sum(tick(t, f) for t, f in enumerate(flicker)) == 1
    t0 = len(flicker)
    assert sum(tick(t0 + i, False) for i in range(5)) == 0  # 5 calm ticks end it
    assert tick(t0 + 5, True) == 1
    assert watch.episodes == 2 and watch.flagged == 5


def test_the_alert_and_the_row_say_what_happened() -> None:
    layer = AdaptiveBlocks()
    y = noise(120, 8)
    y[100] = 13.0
    for t, v in enumerate(y[:101].tolist()):
        layer.step(np.array([B1]), np.array([v]), t)
    (a,) = layer.anomalies.opened
    alert = a.alert()
    assert alert["kind"] == "forecast_anomaly" and alert["severity"] == "warning"
    assert (alert["block"], alert["channel"], alert["value"]) == (B1, 1, 13.0)
    assert alert["forecast"] == pytest.approx(10.0, abs=0.5) and alert["sigmas"] > DEFAULT["sensitivity"]
    assert a.record().kind == "forecast_anomaly" and a.record().details["sigmas"] == alert["sigmas"]
    rows = [{"block": B1}]
    layer.annotate(rows, 100)
    assert rows[0]["anomaly"] is True and list(rows[0])[-1] == "anomaly"
    for t in range(101, 120):  # the way back is part of the episode; then calm
        layer.step(np.array([B1]), np.array([y[t]]), t)
        assert layer.anomalies.opened == []
    rows = [{"block": B1}]
    layer.annotate(rows, 119)
    assert "anomaly" not in rows[0]  # written only when true


def test_a_constant_block_is_quiet_until_it_moves() -> None:
    y = np.full(100, 5.0)
    assert run(y)[1] == []
    y[80] = 5.001
    assert run(y)[1] == [80]


def test_the_alert_gate_calm_defaults_to_persist() -> None:
    assert AlertGate(persist=3).calm == 3 and AlertGate(persist=1, calm=10).calm == 10
    with pytest.raises(ValueError):
        AlertGate(persist=1, calm=0)


def test_a_thousand_blocks_flag_in_one_vectorized_step() -> None:
    layer = AdaptiveBlocks()
    blocks = (1 << 32) | np.arange(1000, dtype=np.int64)
    rng = np.random.default_rng(9)
    for t in range(60):
        means = 10.0 + rng.normal(0.0, 0.1, 1000)
        if t == 59:
            means[[3, 500]] += 5.0
        layer.step(blocks, means, t)
    assert sorted(layer.anomalies.now) == [blocks[3], blocks[500]]
