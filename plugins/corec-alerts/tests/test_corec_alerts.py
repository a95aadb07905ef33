"""corec-alerts on real aggregate rows, through the plugin manager as a node uses it."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs without installing the plugin

import corec_alerts  # noqa: E402

from corec_node.config import Config  # noqa: E402
from corec_node.engine import EntityStore, aggregate, aggregate_rows  # noqa: E402
from corec_node.plugins import PluginConfigError, PluginManager  # noqa: E402
from corec_node.wire import ENTITY_DTYPE  # noqa: E402


def records(channel: int, values: list[float], block_size: int = 1000) -> np.ndarray:
    """One block per value: ``block_size`` entities whose values are all that value."""
    n = len(values) * block_size
    r = np.zeros(n, ENTITY_DTYPE)
    r["id"] = np.arange(n, dtype=np.uint32)
    r["channel"] = channel
    r["value"] = np.repeat(np.asarray(values, np.float32), block_size)
    r["active"] = 1
    return r


def tick_rows(store: EntityStore, tick: int) -> list[dict]:
    return aggregate_rows(aggregate(store, tick), owner="a", nan_as_none=True)


def manager(settings: dict) -> tuple[PluginManager, list[dict]]:
    alerts: list[dict] = []
    pm = PluginManager(Config(), on_alert=alerts.append)
    pm.register(corec_alerts.AlertsPlugin(), "alerts", settings=settings, source="entrypoint")
    return pm, alerts


async def test_block_leaving_its_band_raises_then_clears():
    pm, seen = manager({"thresholds": {"7": {"min": 0.0, "max": 40.0}}})
    store = EntityStore(block_size=1000)
    store.ingest(records(7, [20.0, 30.0, 10.0]))
    assert await pm.block_aggregates(None, 1, tick_rows(store, 1)) == []

    store.ingest(records(7, [20.0, 45.0, -5.0]))
    raised = await pm.block_aggregates(None, 2, tick_rows(store, 2))
    assert sorted(a["text"] for a in raised) == [
        "block 7:1 mean 45 above max 40 (tick 2)",
        "block 7:2 mean -5 below min 0 (tick 2)",
    ]
    assert all(a["kind"] == "threshold_exceeded" and a["plugin"] == "alerts" and a["severity"] == "warning" for a in raised)
    assert seen == raised  # on_alert got each one

    # still out: no repeat by default
    assert await pm.block_aggregates(None, 3, tick_rows(store, 3)) == []

    store.ingest(records(7, [20.0, 35.0, -5.0]))
    raised = await pm.block_aggregates(None, 4, tick_rows(store, 4))
    assert [(a["kind"], a["block"] & 0xFFFFFFFF, a["severity"]) for a in raised] == [("threshold_cleared", 1, "info")]


async def test_wildcard_band_field_and_repeat():
    pm, _ = manager({"field": "max", "repeat_every": 2, "severity": "critical",
                     "thresholds": {"*": {"max": 100.0}, "3": {"min": 1.0, "field": "mean"}}})
    store = EntityStore(block_size=1000)
    store.ingest(records(5, [150.0]))
    store.ingest(records(3, [0.5]))
    got = await pm.block_aggregates(None, 1, tick_rows(store, 1))
    assert sorted((a["channel"], a["field"], a["severity"]) for a in got) == [(3, "mean", "critical"), (5, "max", "critical")]
    assert await pm.block_aggregates(None, 2, tick_rows(store, 2)) == []
    assert len(await pm.block_aggregates(None, 3, tick_rows(store, 3))) == 2  # repeat_every = 2 ticks


async def test_block_without_active_entities_is_not_judged():
    pm, _ = manager({"thresholds": {"7": {"max": 40.0}}})
    store = EntityStore(block_size=1000)
    r = records(7, [50.0])
    r["active"] = 0
    store.ingest(r)
    rows = tick_rows(store, 1)
    assert rows[0]["mean"] is None
    assert await pm.block_aggregates(None, 1, rows) == []


async def test_no_thresholds_no_alerts():
    pm, _ = manager({})
    store = EntityStore(block_size=1000)
    store.ingest(records(7, [1e9]))
    assert await pm.block_aggregates(None, 1, tick_rows(store, 1)) == []


@pytest.mark.parametrize("settings, key", [
    ({"thresholds": {"300": {"max": 1.0}}}, "plugin.alerts.thresholds.300"),
    ({"thresholds": {"7": {"max": "high"}}}, "plugin.alerts.thresholds.7.max"),
    ({"thresholds": {"7": {"mx": 1.0}}}, "plugin.alerts.thresholds.7.mx"),
    ({"thresholds": {"7": {"min": 5.0, "max": 1.0}}}, "plugin.alerts.thresholds.7"),
    ({"thresholds": {"7": {}}}, "plugin.alerts.thresholds.7"),
    ({"field": "median"}, "plugin.alerts.field"),
    ({"repeat_every": "often"}, "plugin.alerts.repeat_every"),
    ({"treshold": {}}, "plugin.alerts.treshold"),
])
def test_bad_settings_name_the_key(settings, key):
    with pytest.raises(PluginConfigError) as err:
        manager(settings)
    assert err.value.plugin == "alerts"
    assert key in str(err.value)


def test_entry_point_declared():
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert '[project.entry-points.corec_node]\nalerts = "corec_alerts:plugin"' in text
    assert isinstance(corec_alerts.plugin, corec_alerts.AlertsPlugin)
