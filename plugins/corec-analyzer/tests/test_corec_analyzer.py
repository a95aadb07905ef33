"""corec-analyzer: the model flags planted departures; the plugin keeps its predictions in
its own database; without torch it registers no hooks and says why."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runs without installing the plugin

from corec_node.config import Config  # noqa: E402
from corec_node.engine import EntityStore, aggregate, aggregate_rows  # noqa: E402
from corec_node.plugins import PluginConfigError, PluginManager  # noqa: E402
from corec_node.wire import ENTITY_DTYPE  # noqa: E402

needs_torch = pytest.mark.skipif(
    __import__("importlib.util").util.find_spec("torch") is None,
    reason="torch is not installed (pip install 'corec-node[ml]' or torch==2.13.0): the analyzer's model needs it",
)

BLOCKS = 40
SETTINGS = {"window": 6, "hidden": 16, "warmup": 10, "z": 6.0, "seed": 1}


def synthetic_rows(tick: int, rng: np.random.Generator, base: np.ndarray, spike: dict[int, float] | None = None) -> list[dict]:
    """Rows of channel 7: every block follows a slow sine around its own level."""
    values = base + np.sin(tick / 5 + np.arange(len(base)) / 7) + rng.normal(0, 0.05, len(base))
    for b, add in (spike or {}).items():
        values[b] += add
    return [{"block": (7 << 32) | i, "channel": 7, "owner": "a", "count": 1000, "active": 1000,
             "mean": float(v), "min": float(v) - 1, "max": float(v) + 1, "std": 0.3,
             "error_rate": 0.0, "fitness": 0.9, "tick": tick} for i, v in enumerate(values)]


class FakeNode:
    def __init__(self, data_dir: Path) -> None:
        self.name = "a"
        self.data_dir = data_dir
        self.config = Config()


def manager(settings: dict | None = None) -> tuple[PluginManager, list[dict]]:
    import corec_analyzer
    from corec_analyzer.plugin import AnalyzerPlugin

    assert isinstance(corec_analyzer.plugin, AnalyzerPlugin)
    alerts: list[dict] = []
    pm = PluginManager(Config(), on_alert=alerts.append, startup_budget=120.0, budget=30.0)
    pm.register(AnalyzerPlugin(), "analyzer", settings=dict(SETTINGS, **(settings or {})), source="entrypoint")
    return pm, alerts


@needs_torch
def test_model_flags_a_planted_departure_and_not_the_rest():
    from corec_analyzer.model import Analyzer

    rng = np.random.default_rng(0)
    base = rng.normal(20, 2, BLOCKS)
    a = Analyzer(**SETTINGS)
    flagged: dict[int, set[int]] = {}
    for tick in range(1, 61):
        spike = {11: 4.0} if tick == 55 else None
        _, departures = a.step(tick, synthetic_rows(tick, rng, base, spike))
        flagged[tick] = {d.block & 0xFFFF for d in departures}
    assert 11 in flagged[55]
    quiet = [t for t in range(20, 61) if t not in (55, 56)]
    false = sum(len(flagged[t] - {11}) for t in quiet)
    assert false <= 2, {t: flagged[t] for t in quiet if flagged[t]}


@needs_torch
async def test_plugin_stores_predictions_and_raises_alerts(tmp_path):
    pm, alerts = manager()
    node = FakeNode(tmp_path)
    await pm.startup(node)
    assert pm.info()[0]["state"] == "active"
    rng = np.random.default_rng(0)
    base = rng.normal(20, 2, BLOCKS)
    for tick in range(1, 41):
        await pm.block_aggregates(node, tick, synthetic_rows(tick, rng, base, {3: 5.0} if tick == 38 else None))
    await pm.shutdown(node)
    assert any(a["kind"] == "prediction_departure" and a["block"] == (7 << 32) | 3 and a["tick"] == 38 for a in alerts), alerts
    assert all(a["plugin"] == "analyzer" for a in alerts)
    db = tmp_path / "plugins" / "analyzer.db"
    with sqlite3.connect(db) as conn:
        n, lo, hi = conn.execute("SELECT count(*), min(tick), max(tick) FROM predictions").fetchone()
        version = conn.execute("SELECT value FROM corec_plugin_meta WHERE key = 'schema_version'").fetchone()[0]
    assert n == BLOCKS * (40 - SETTINGS["window"]) and lo == SETTINGS["window"] + 1 and hi == 40
    assert version == "1"


@needs_torch
async def test_plugin_uses_the_node_store_when_there_is_one(tmp_path):
    storage = pytest.importorskip("corec_node.storage", reason="the storage layer (PluginStore) is not in this tree")
    pm, _ = manager()
    opened = []

    class Node(FakeNode):
        async def plugin_store(self, name):
            store = await storage.PluginStore.open(name, data_dir=self.data_dir,
                                                    sqlite_migrations=pm.migrations()[name])
            opened.append(store)
            return store

    node = Node(tmp_path)
    await pm.startup(node)
    rng = np.random.default_rng(0)
    base = rng.normal(20, 2, BLOCKS)
    for tick in range(1, 10):
        await pm.block_aggregates(node, tick, synthetic_rows(tick, rng, base))
    await pm.shutdown(node)
    assert len(opened) == 1
    rows = await opened[0].sqlite.execute_fetchall("SELECT count(*) FROM predictions")
    await opened[0].close()
    assert rows[0][0] == BLOCKS * (9 - SETTINGS["window"])


@needs_torch
async def test_real_aggregates_feed_the_model(tmp_path):
    pm, _ = manager({"warmup": 0})
    node = FakeNode(tmp_path)
    await pm.startup(node)
    store = EntityStore(block_size=100)
    rng = np.random.default_rng(2)
    for tick in range(1, 10):
        r = np.zeros(1000, ENTITY_DTYPE)
        r["id"] = np.arange(1000, dtype=np.uint32)
        r["channel"] = 7
        r["value"] = rng.normal(20, 1, 1000).astype(np.float32)
        r["active"] = 1
        store.ingest(r)
        rows = aggregate_rows(aggregate(store, tick), owner="a", nan_as_none=True)
        await pm.block_aggregates(node, tick, rows)
    await pm.shutdown(node)
    assert pm.info()[0]["faults"] == 0


@needs_torch
@pytest.mark.parametrize("settings, key", [
    ({"field": "median"}, "plugin.analyzer.field"),
    ({"window": 0}, "plugin.analyzer.window"),
    ({"channels": [300]}, "plugin.analyzer.channels"),
    ({"z": "big"}, "plugin.analyzer.z"),
    ({"windw": 3}, "plugin.analyzer.windw"),
])
def test_bad_settings_name_the_key(settings, key):
    with pytest.raises(PluginConfigError) as err:
        manager(settings)
    assert key in str(err.value) and err.value.plugin == "analyzer"


def test_without_torch_the_plugin_registers_no_hooks_and_says_so():
    """Runs whether or not torch is installed: a child process hides it."""
    code = textwrap.dedent(f"""
        import logging, sys
        sys.modules["torch"] = None  # as if torch were not installed
        sys.path.insert(0, {str(ROOT)!r})
        from corec_node import log
        log.setup("t")
        from corec_node.plugins import PluginManager
        import corec_analyzer
        pm = PluginManager()
        pm.register(corec_analyzer.plugin, "analyzer", source="entrypoint")
        info = pm.info()[0]
        print("STATE", info["state"], info["hooks"], info["reason"])
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "STATE disabled [] analyzer disabled: torch not installed" in out.stdout
    assert "analyzer_disabled" in out.stdout and "torch not installed" in out.stdout
