"""corec-analyzer: the judge flags planted departures from the node's own forecasts (no
torch); the optional model learns the forecasts' residuals (torch); the plugin keeps its
predictions in its own database and emits its scores; without torch it says its model is
off and judges all the same."""

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
from corec_node.engine.host import EngineHost  # noqa: E402
from corec_node.plugins import PluginConfigError, PluginManager  # noqa: E402
from corec_node.wire import ENTITY_DTYPE  # noqa: E402

needs_torch = pytest.mark.skipif(
    __import__("importlib.util").util.find_spec("torch") is None,
    reason="torch is not installed (pip install 'corec-node[ml]' or torch==2.13.0): the analyzer's model needs it",
)

BLOCKS = 40
SETTINGS = {"warmup": 10, "z": 6.0, "seed": 1, "window": 6}


def level(tick: int, base: np.ndarray) -> np.ndarray:
    return base + np.sin(tick / 5 + np.arange(len(base)) / 7)


def synthetic_rows(tick: int, rng: np.random.Generator, base: np.ndarray, spike: dict[int, float] | None = None,
                   bias: float = 0.0) -> list[dict]:
    """Rows of channel 7 as a node gives them: every block follows a slow sine around its
    own level, and its ``forecast`` (of the next mean) is that sine's next value, off by
    ``bias``."""
    values = level(tick, base) + rng.normal(0, 0.05, len(base))
    for b, add in (spike or {}).items():
        values[b] += add
    forecast = level(tick + 1, base) + bias
    return [{"block": (7 << 32) | i, "channel": 7, "owner": "a", "count": 1000, "active": 1000,
             "mean": float(v), "min": float(v) - 1, "max": float(v) + 1, "std": 0.3,
             "error_rate": 0.0, "fitness": 0.9, "tick": tick, "forecast": float(f), "forecast_error": 0.5}
            for i, (v, f) in enumerate(zip(values, forecast))]


def engine_rows(host: EngineHost, tick: int, base: np.ndarray, rng: np.random.Generator,
                spike: dict[int, float] | None = None) -> list[dict]:
    """Real rows: entities of channel 7 (100 a block) through the node's engine, which
    aggregates and forecasts them."""
    r = np.zeros(len(base) * 100, ENTITY_DTYPE)
    r["id"] = np.arange(len(r), dtype=np.uint32)
    r["channel"] = 7
    values = np.repeat(level(tick, base), 100) + rng.normal(0, 0.05, len(r))
    for b, add in (spike or {}).items():
        values[b * 100:(b + 1) * 100] += add
    r["value"] = values.astype(np.float32)
    r["active"] = 1
    host.ingest(r, sweep=False)
    rows, _ = host.tick()
    return rows


class FakeNode:
    """The node as the facade reaches it: emitted entities are kept in ``emitted``."""

    def __init__(self, data_dir: Path) -> None:
        self.name = "a"
        self.data_dir = data_dir
        self.config = Config()
        self.emitted: list[tuple[str, np.ndarray]] = []

    def emit_entities(self, plugin: str, records: np.ndarray) -> int:
        self.emitted.append((plugin, records))
        return len(records)


def manager(settings: dict | None = None) -> tuple[PluginManager, list[dict]]:
    import corec_analyzer
    from corec_analyzer.plugin import AnalyzerPlugin

    assert isinstance(corec_analyzer.plugin, AnalyzerPlugin)
    alerts: list[dict] = []
    pm = PluginManager(Config(), on_alert=alerts.append, startup_budget=120.0, budget=30.0)
    pm.register(AnalyzerPlugin(), "analyzer", settings=dict(SETTINGS, **(settings or {})), source="entrypoint")
    return pm, alerts


def test_judge_flags_a_planted_departure_from_the_nodes_forecast():
    """No torch: the node's engine forecasts, the judge scores its residuals."""
    from corec_analyzer.residuals import Analyzer

    rng = np.random.default_rng(0)
    base = rng.normal(20, 2, BLOCKS)
    host = EngineHost("a", block_size=100)
    a = Analyzer(z=SETTINGS["z"], warmup=SETTINGS["warmup"])
    flagged: dict[int, set[int]] = {}
    for tick in range(1, 81):
        spike = {11: 4.0} if tick == 75 else None
        _, departures = a.step(tick, engine_rows(host, tick, base, rng, spike))
        flagged[tick] = {d.block & 0xFFFF for d in departures}
        assert all(d.source == "forecast" for d in departures)
    assert 11 in flagged[75]
    quiet = [t for t in range(30, 81) if t not in (75, 76, 77)]
    false = sum(len(flagged[t] - {11}) for t in quiet)
    assert false <= 2, {t: flagged[t] for t in quiet if flagged[t]}


def test_judge_skips_stale_forecasts_and_the_emit_channel():
    from corec_analyzer.residuals import Analyzer

    a = Analyzer(warmup=0, exclude={9})
    row = {"block": 7 << 32, "channel": 7, "mean": 1.0, "forecast": 1.0}
    score = {"block": 9 << 32, "channel": 9, "mean": 5.0, "forecast": 5.0}
    assert a.step(1, [row, score]) == ([], [])
    p, _ = a.step(2, [dict(row, mean=1.5)])
    assert [(x.block, x.predicted, x.actual) for x in p] == [(7 << 32, 1.0, 1.5)]
    assert a.step(4, [row]) == ([], [])  # tick 3 was missed: the forecast made at 2 was for 3
    assert 9 not in a.judges


@needs_torch
def test_model_learns_the_forecasts_residuals():
    """The node's forecast is 0.5 too high everywhere: the second opinion learns it."""
    from corec_analyzer.model import Opinions
    from corec_analyzer.residuals import Analyzer

    errors = {}
    for name, opinion in (("alone", None), ("model", Opinions(window=6, lr=0.05, seed=1))):
        rng = np.random.default_rng(0)
        base = rng.normal(20, 2, BLOCKS)
        a = Analyzer(z=6.0, warmup=10, window=6, opinion=opinion)
        late = []
        for tick in range(1, 151):
            predictions, _ = a.step(tick, synthetic_rows(tick, rng, base, bias=0.5))
            if tick > 120:
                late += [abs(p.actual - p.predicted) for p in predictions]
        errors[name] = float(np.mean(late))
    assert errors["alone"] > 0.45 and errors["model"] < errors["alone"] / 3, errors


@pytest.mark.parametrize("model", [False, pytest.param(True, marks=needs_torch)])
async def test_plugin_stores_predictions_raises_alerts_and_emits_scores(tmp_path, model):
    pm, alerts = manager({"model": model, "emit_channel": 9})
    node = FakeNode(tmp_path)
    await pm.startup(node)
    assert pm.info()[0]["state"] == "active"
    rng = np.random.default_rng(0)
    base = rng.normal(20, 2, BLOCKS)
    for tick in range(1, 41):
        await pm.block_aggregates(node, tick, synthetic_rows(tick, rng, base, {3: 5.0} if tick == 38 else None))
    await pm.shutdown(node)
    assert pm.info()[0]["faults"] == 0, pm.info()[0]["last_error"]
    assert any(a["kind"] == "prediction_departure" and a["block"] == (7 << 32) | 3 and a["tick"] == 38
               and a["source"] == ("forecast+model" if model else "forecast") for a in alerts), alerts
    assert all(a["plugin"] == "analyzer" for a in alerts)
    db = tmp_path / "plugins" / "analyzer.db"
    with sqlite3.connect(db) as conn:
        n, lo, hi = conn.execute("SELECT count(*), min(tick), max(tick) FROM predictions").fetchone()
        version = conn.execute("SELECT value FROM corec_plugin_meta WHERE key = 'schema_version'").fetchone()[0]
    assert n == BLOCKS * 39 and lo == 2 and hi == 40
    assert version == "1"
    # scores as entities on channel 9, one per judged block and tick after the warmup
    assert node.emitted and all(p == "analyzer" and (r["channel"] == 9).all() for p, r in node.emitted)
    last = node.emitted[-1][1]
    assert sorted(last["id"].tolist()) == [(7 << 24) | i for i in range(BLOCKS)]
    spiked = next(r for _, r in node.emitted if ((7 << 24) | 3) in r["id"] and r["value"].max() > 6)
    assert spiked["value"][spiked["id"] == (7 << 24) | 3][0] > 6  # the departing block's |z|


async def test_plugin_uses_the_node_store_when_there_is_one(tmp_path):
    storage = pytest.importorskip("corec_node.storage", reason="the storage layer (PluginStore) is not in this tree")
    pm, _ = manager({"model": False})
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
    assert rows[0][0] == BLOCKS * 8
    assert not node.emitted  # emit_channel -1: nothing emitted


@pytest.mark.parametrize("model", [False, pytest.param(True, marks=needs_torch)])
async def test_real_rows_feed_the_plugin(tmp_path, model):
    pm, _ = manager({"warmup": 0, "model": model})
    node = FakeNode(tmp_path)
    await pm.startup(node)
    host = EngineHost("a", block_size=100)
    rng = np.random.default_rng(2)
    base = rng.normal(20, 1, 10)
    for tick in range(1, 15):
        await pm.block_aggregates(node, tick, engine_rows(host, tick, base, rng))
    await pm.shutdown(node)
    assert pm.info()[0]["faults"] == 0, pm.info()[0]["last_error"]
    with sqlite3.connect(tmp_path / "plugins" / "analyzer.db") as conn:
        assert conn.execute("SELECT count(*) FROM predictions").fetchone()[0] >= 10 * 10


@pytest.mark.parametrize("settings, key", [
    ({"field": "mean"}, "plugin.analyzer.field"),  # retired: the node forecasts the mean
    ({"window": 0}, "plugin.analyzer.window"),
    ({"channels": [300]}, "plugin.analyzer.channels"),
    ({"emit_channel": 300}, "plugin.analyzer.emit_channel"),
    ({"z": "big"}, "plugin.analyzer.z"),
    ({"windw": 3}, "plugin.analyzer.windw"),
])
def test_bad_settings_name_the_key(settings, key):
    with pytest.raises(PluginConfigError) as err:
        manager(settings)
    assert key in str(err.value) and err.value.plugin == "analyzer"


def test_without_torch_the_plugin_says_its_model_is_off_and_judges_all_the_same(tmp_path):
    """Runs whether or not torch is installed: a child process hides it."""
    code = textwrap.dedent(f"""
        import asyncio, sys
        sys.modules["torch"] = None  # as if torch were not installed
        sys.path.insert(0, {str(ROOT)!r})
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from corec_node import log
        log.setup("t")
        import numpy as np
        from corec_node.config import Config
        from corec_node.plugins import PluginManager
        import corec_analyzer
        from test_corec_analyzer import FakeNode, synthetic_rows

        async def main():
            alerts = []
            pm = PluginManager(Config(), on_alert=alerts.append)
            pm.register(corec_analyzer.plugin, "analyzer", settings={{"warmup": 5}}, source="entrypoint")
            node = FakeNode(__import__("pathlib").Path({str(tmp_path)!r}))
            await pm.startup(node)
            rng = np.random.default_rng(0)
            base = rng.normal(20, 2, 10)
            for tick in range(1, 20):
                await pm.block_aggregates(node, tick, synthetic_rows(tick, rng, base, {{2: 9.0}} if tick == 18 else None))
            await pm.shutdown(node)
            info = pm.info()[0]
            print("STATE", info["state"], info["faults"], "torch" in sys.modules and sys.modules["torch"] is None)
            print("ALERTS", sorted({{a["block"] & 0xFF for a in alerts}}))

        asyncio.run(main())
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "STATE active 0 True" in out.stdout, out.stdout
    assert "ALERTS [2]" in out.stdout, out.stdout
    assert "analyzer_model_disabled" in out.stdout and "torch not installed" in out.stdout
