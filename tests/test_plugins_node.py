"""Plugins in a real ``corec-node run`` process: a local plugin folder (COREC_PLUGINS_PATHS)
holds a recorder that writes what its hooks saw to a file, and a plugin that always
raises, which the node must switch off while it lives on."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from meshutil import eventually
from piputil import is_installed, pip_install, pip_uninstall
from records import entities

from corec_node.client import Client

RECORDER = '''
    """Writes one JSON line per hook call to the file named by its "out" setting."""
    import json
    from corec_node.hookspecs import hookimpl

    SETTINGS = {"out": (str, ""), "channel": (int, 7)}
    CFG = {}

    def write(**kw):
        with open(CFG["out"], "a") as f:
            f.write(json.dumps(kw) + "\\n")

    @hookimpl
    def corec_configure(config):
        CFG.update(config.plugin["recorder"])

    @hookimpl
    async def corec_startup(node):
        write(hook="startup", node=node.name, data_dir=str(node.data_dir), api=type(node).__name__)

    @hookimpl
    def corec_channels():
        return [CFG["channel"]]

    @hookimpl
    def corec_entities(node, channel, records):
        write(hook="entities", channel=channel, n=len(records), writeable=bool(records.flags.writeable))

    @hookimpl
    def corec_block_aggregates(node, tick, aggregates):
        write(hook="aggregates", tick=tick, rows=len(aggregates),
              count={str(r["channel"]): 0 for r in aggregates} | {
                  str(ch): sum(r["count"] for r in aggregates if r["channel"] == ch)
                  for ch in {r["channel"] for r in aggregates}})

    @hookimpl
    def corec_alert(node, alert):
        write(hook="alert", kind=alert["kind"], plugin=alert.get("plugin"))

    @hookimpl
    def corec_shutdown(node):
        write(hook="shutdown", node=node.name)
'''

BROKEN = '''
    from corec_node.hookspecs import hookimpl

    @hookimpl
    def corec_block_aggregates(tick):
        raise RuntimeError("always broken")
'''


def test_plugin_hooks_fire_on_real_node(cluster, tmp_path):
    plugins = tmp_path / "organs"
    plugins.mkdir()
    (plugins / "recorder.py").write_text(textwrap.dedent(RECORDER))
    (plugins / "broken.py").write_text(textwrap.dedent(BROKEN))
    out = tmp_path / "seen.jsonl"
    cfg = tmp_path / "node.toml"
    cfg.write_text(f'[engine]\ntick_interval = 0.2\n\n[plugin.recorder]\nout = "{out}"\nchannel = 7\n')

    node = cluster.start("solo", extra_env={"COREC_PLUGINS_PATHS": str(plugins)},
                         args=["--config", str(cfg), "--profile", "test"]).wait_ready()

    def seen() -> list[dict]:
        return [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []

    eventually(lambda: any(e["hook"] == "startup" for e in seen()), 15, message="corec_startup")
    assert next(e for e in seen() if e["hook"] == "startup") == {"hook": "startup", "node": "solo",
                                                                 "data_dir": str(node.data_dir),
                                                                 "api": "NodeFacade"}
    loaded = {e["plugin"]: e for e in node.log_events() if e.get("event") == "plugin_loaded"}
    assert set(loaded) == {"recorder", "broken"} and loaded["recorder"]["source"] == "path"

    for channel in (7, 8):
        sent = subprocess.run([sys.executable, "-m", "corec_node", "send", "--to", node.addr, "--channel",
                               str(channel), "--count", "3000"], capture_output=True, text=True, timeout=60)
        assert sent.returncode == 0, sent.stderr

    # entity batches of channel 7 only (its subscription), read-only
    eventually(lambda: any(e["hook"] == "entities" for e in seen()), 15, message="corec_entities")
    batches = [e for e in seen() if e["hook"] == "entities"]
    assert {e["channel"] for e in batches} == {7} and sum(e["n"] for e in batches) == 3000
    assert not any(e["writeable"] for e in batches)

    # block aggregates every tick, with this node's rows of every channel
    eventually(lambda: any(e["hook"] == "aggregates" and e["count"].get("7") == 3000 and e["count"].get("8") == 3000
                           for e in seen()), 15, message="corec_block_aggregates with both channels")
    ticks = [e["tick"] for e in seen() if e["hook"] == "aggregates"]
    assert ticks == sorted(ticks)

    # the broken plugin is switched off after 3 faults; the node lives on and says so
    eventually(lambda: any(e.get("event") == "plugin_disabled" and e.get("plugin") == "broken"
                           for e in node.log_events()), 15, message="broken plugin switched off")
    faults = [e for e in node.log_events() if e.get("event") == "plugin_fault"]
    assert len(faults) == 3 and all(e["plugin"] == "broken" for e in faults)
    eventually(lambda: any(e["hook"] == "alert" and e["kind"] == "plugin_disabled" for e in seen()), 15,
               message="the breaker's alert reached corec_alert")
    assert node.ctl("status")["name"] == "solo"
    before = len(ticks)
    eventually(lambda: len([e for e in seen() if e["hook"] == "aggregates"]) > before + 2, 15,
               message="ticks go on after the breaker")

    node.signal(signal.SIGTERM)
    assert node.proc.wait(15) == 0
    assert seen()[-1] == {"hook": "shutdown", "node": "solo"}


def test_recorder_plugin_is_valid(tmp_path):
    """The e2e test's plugins load and validate with the manager alone (runs before wiring)."""
    from corec_node.config import Config, PluginsSection
    from corec_node.plugins import PluginManager

    plugins = tmp_path / "organs"
    plugins.mkdir()
    (plugins / "recorder.py").write_text(textwrap.dedent(RECORDER))
    (plugins / "broken.py").write_text(textwrap.dedent(BROKEN))
    cfg = Config(plugins=PluginsSection(paths=(str(plugins),)), plugin={"recorder": {"out": str(tmp_path / "x")}})
    pm = PluginManager(cfg, env={}).load(entrypoints=False)
    assert {p["name"]: p["state"] for p in pm.info()} == {"broken": "active", "recorder": "active"}
    assert pm.channels() == {7}
    assert Path(pm.records["recorder"].obj.CFG["out"]).name == "x"


HANGING = '''
    import time

    from corec_node.hookspecs import hookimpl

    @hookimpl
    def corec_block_aggregates(tick):
        time.sleep(3600)
'''


def test_hanging_plugin_is_switched_off_while_the_mesh_goes_on(cluster, tmp_path):
    plugins = tmp_path / "organs"
    plugins.mkdir()
    (plugins / "hanging.py").write_text(textwrap.dedent(HANGING))
    env = {"COREC_PLUGINS_PATHS": str(plugins), "COREC_ENGINE_TICK_INTERVAL": "0.2"}
    a = cluster.start("a", extra_env=env).wait_ready()
    b = cluster.start("b", join=[a.addr]).wait_ready()
    sent = subprocess.run([sys.executable, "-m", "corec_node", "send", "--to", a.addr, "--channel", "1",
                           "--count", "2000"], capture_output=True, text=True, timeout=60)
    assert sent.returncode == 0, sent.stderr

    def state() -> str:
        return next(p["state"] for p in a.ctl("plugins") if p["name"] == "hanging")

    eventually(lambda: state() == "disabled", 60, message="the hanging plugin is switched off")
    # gossip and ticks went on all along: nobody was ever suspected, blocks keep ticking
    for node in (a, b):
        assert not [e for e in node.log_events() if e.get("event") == "member_changed" and e.get("new") != "alive"]
    # the plugin may be off before the first rows (b, still learning, takes its blocks meanwhile)
    tick = eventually(lambda: (a.ctl("blocks") or [{}])[0].get("tick"), 20, message="the blocks have rows")
    eventually(lambda: a.ctl("blocks")[0]["tick"] > tick + 2, 10, message="ticks go on")
    out = subprocess.run([sys.executable, "-m", "corec_node", "plugins", "--json", "--data-dir", str(a.data_dir)],
                         capture_output=True, text=True, timeout=30)
    row = next(p for p in json.loads(out.stdout) if p["name"] == "hanging")
    assert row["state"] == "disabled" and row["faults"] >= 1 and row["source"] == "path" and row["view"] == "node"


ALERTS_DIR = Path(__file__).resolve().parent.parent / "plugins" / "corec-alerts"


@pytest.fixture
def alerts_installed():
    """`pip install ./plugins/corec-alerts`, as a user would; uninstalled after unless it was there."""
    if is_installed("corec-alerts"):
        yield
        return
    pip_install(ALERTS_DIR)
    try:
        yield
    finally:
        pip_uninstall("corec-alerts")


def test_alerts_plugin_end_to_end_on_a_real_node(cluster, tmp_path, alerts_installed):
    cfg = tmp_path / "node.toml"
    cfg.write_text('[engine]\ntick_interval = 0.2\n\n[plugin.alerts]\nthresholds = { "3" = { max = 40.0 } }\n')
    node = cluster.start("watch", args=["--config", str(cfg)]).wait_ready()
    plugins = node.ctl("plugins")
    assert any(p["name"] == "alerts" and p["state"] == "active" for p in plugins), plugins
    rng = np.random.default_rng(5)
    hot = np.where(np.arange(3000) < 1000, 50.0, 20.0)  # block 3:0 too hot
    recs = entities(np.arange(3000), 3, hot + rng.normal(0, 1, 3000))
    with Client(node.addr) as c:
        c.send(recs)

    def alerts() -> list[dict]:
        return [e for e in node.log_events() if e.get("event") == "alert" and e.get("kind") == "threshold_exceeded"]

    eventually(alerts, 20, message="threshold alert raised")
    assert {int(e["block"]) for e in alerts()} == {3 << 32}  # only the hot block
    db = sqlite3.connect(f"file:{node.data_dir / 'corec.db'}?mode=ro", uri=True)
    try:
        eventually(lambda: db.execute("SELECT count(*) FROM alerts WHERE kind = 'threshold_exceeded'").fetchone()[0], 10,
                   message="alert stored in SQLite")
    finally:
        db.close()
