"""The plugin memory watch (plugins.memory_watch): the pure core with hand-made figures,
the shell with real tracemalloc in this process, and a real node whose leaking plugin is
switched off while a tidy one stays on."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import pytest
from meshutil import eventually
from prometheus_client.parser import text_string_to_metric_families

from corec_node.config import Config, ConfigError, PluginsSection, load_config, plugin_memory_limits
from corec_node.hookspecs import hookimpl
from corec_node.plugins import PluginManager
from corec_node.plugins.memory import MIB, MemoryWatch, PluginFiles, attribute, owner_of
from corec_node.plugins.memwatch import plugin_files, traced_bytes
from corec_node.render import render_plugins
from corec_node.shell.metrics import Metrics

pytestmark = pytest.mark.timeout(120)

# -- the pure core ------------------------------------------------------------------------

PLUGINS = [PluginFiles("alpha", folders=("/opt/p/alpha",)), PluginFiles("beta", files=("/opt/p/beta.py",)),
           PluginFiles("inner", folders=("/opt/p/alpha/vendored/inner/",))]


def test_owner_of_files_and_folders():
    assert owner_of("/opt/p/alpha/__init__.py", PLUGINS) == "alpha"
    assert owner_of("/opt/p/alpha/sub/model.py", PLUGINS) == "alpha"
    assert owner_of("/opt/p/alpha_other/x.py", PLUGINS) is None  # a folder is a folder, not a name prefix
    assert owner_of("/opt/p/beta.py", PLUGINS) == "beta"
    assert owner_of("/opt/p/beta.pyc", PLUGINS) is None
    assert owner_of("/opt/p/alpha/vendored/inner/core.py", PLUGINS) == "inner"  # the longest folder wins
    assert owner_of("/usr/lib/python3/json/decoder.py", PLUGINS) is None


def test_attribute_by_innermost_plugin_frame():
    node = ("/site/corec_node/shell/data_plane.py", 10)
    lib = ("/usr/lib/python3/json/decoder.py", 5)
    shared = (("/opt/p/alpha/m.py", 3), node)  # one traceback object, many traces (as tracemalloc's)
    traces = [
        (0, 1000, shared, 2),
        (0, 24, shared, 2),
        (389047, 1 << 20, (("/opt/p/beta.py", 7), node), 2),  # numpy's domain: a buffer beta allocated
        (0, 500, (lib, ("/opt/p/beta.py", 9), node), 3),  # a library called by beta: beta's
        (0, 300, (("/opt/p/alpha/m.py", 1), ("/opt/p/beta.py", 2)), 2),  # beta called alpha: alpha's
        (0, 7000, (node,), 1),  # the node's own
        (0, 9, (lib,), 1),  # a library called by nobody we know
    ]
    assert attribute(traces, PLUGINS) == {"alpha": 1324, "beta": (1 << 20) + 500, "inner": 0}
    assert attribute([], PLUGINS) == {"alpha": 0, "beta": 0, "inner": 0}


def test_figures_current_peak_growth():
    watch = MemoryWatch({"a": 100 * MIB})
    assert watch.figures("a") == {"memory_bytes": None, "memory_peak_bytes": None, "memory_growth_bytes": None,
                                  "memory_limit_bytes": 100 * MIB}
    for held in (10 * MIB, 30 * MIB, 20 * MIB):
        assert watch.observe({"a": held, "b": 5}) == []
    assert watch.figures("a") == {"memory_bytes": 20 * MIB, "memory_peak_bytes": 30 * MIB,
                                  "memory_growth_bytes": 10 * MIB, "memory_limit_bytes": 100 * MIB}
    assert watch.figures("b")["memory_limit_bytes"] is None and watch.figures("b")["memory_growth_bytes"] == 0
    assert watch.checks == 3


def test_over_on_consecutive_checks_once():
    watch = MemoryWatch({"leaky": 50 * MIB, "tidy": 50 * MIB, "free": 0})
    assert watch.observe({"leaky": 60 * MIB, "tidy": MIB, "free": 900 * MIB}) == []  # one check over: a transient?
    assert watch.observe({"leaky": 40 * MIB, "tidy": MIB, "free": 900 * MIB}) == []  # back under: counted afresh
    assert watch.observe({"leaky": 70 * MIB, "tidy": MIB, "free": 900 * MIB}) == []
    over = watch.observe({"leaky": 80 * MIB, "tidy": MIB, "free": 900 * MIB})
    assert [(o.plugin, o.bytes, o.limit, o.checks) for o in over] == [("leaky", 80 * MIB, 50 * MIB, 2)]
    assert "80.0 MiB" in over[0].reason and "50.0 MiB" in over[0].reason
    assert watch.observe({"leaky": 90 * MIB, "tidy": MIB, "free": 900 * MIB}) == []  # reported once
    assert watch.figures("leaky")["memory_bytes"] == 90 * MIB  # still measured after


def test_only_judged_plugins_are_reported():
    watch = MemoryWatch({"off": MIB}, over_checks=1)
    assert watch.observe({"off": 2 * MIB}, judge=[]) == []  # switched off already (by the breaker)
    assert watch.figures("off")["memory_bytes"] == 2 * MIB
    with pytest.raises(ValueError):
        MemoryWatch(over_checks=0)


# -- config -------------------------------------------------------------------------------


def test_config_keys(tmp_path):
    cfg = load_config(env={"COREC_PLUGINS_MEMORY_WATCH": "1", "COREC_PLUGINS_MEMORY_LIMITS": "leaky:24, big:0",
                           "COREC_PLUGINS_MEMORY_INTERVAL": "0.5"})
    p = cfg.plugins
    assert p.memory_watch and p.memory_interval == 0.5 and p.memory_max_mb == 256 and p.memory_frames == 4
    assert plugin_memory_limits(p.memory_limits) == {"leaky": 24.0, "big": 0.0}
    assert not load_config(env={}).plugins.memory_watch  # off by default
    for env, key in (({"COREC_PLUGINS_MEMORY_LIMITS": "leaky"}, "plugins.memory_limits"),
                     ({"COREC_PLUGINS_MEMORY_LIMITS": "leaky:-1"}, "plugins.memory_limits"),
                     ({"COREC_PLUGINS_MEMORY_MAX_MB": "-5"}, "plugins.memory_max_mb"),
                     ({"COREC_PLUGINS_MEMORY_FRAMES": "0"}, "plugins.memory_frames"),
                     ({"COREC_PLUGINS_MEMORY_INTERVAL": "0"}, "plugins.memory_interval")):
        with pytest.raises(ConfigError) as err:
            load_config(env=env)
        assert err.value.key == key
    toml = tmp_path / "node.toml"
    toml.write_text('[plugins]\nmemory_watch = true\nmemory_limits = ["a:1.5"]\n')
    assert load_config(toml, env={}).plugins.memory_limits == ("a:1.5",)


def test_limit_for_a_plugin_not_found_is_an_error(tmp_path):
    organs = write_organs(tmp_path, package=False)
    cfg = Config(plugins=PluginsSection(paths=(str(organs),), memory_limits=("leakyy:10",)))
    with pytest.raises(ConfigError) as err:
        PluginManager(cfg, env={}).load(entrypoints=False)
    assert err.value.key == "plugins.memory_limits" and "leaky" in str(err.value)


# -- the shell, with real tracemalloc in this process ----------------------------------------

LEAKY = '''
    """Holds on to 1 MiB more on every tick."""
    from corec_node.hookspecs import hookimpl

    HOARD = []

    @hookimpl
    def corec_block_aggregates(tick):
        HOARD.append(bytes(1 << 20))
'''

TIDY = '''
    """Works on every tick and keeps nothing."""
    from corec_node.hookspecs import hookimpl

    @hookimpl
    def corec_block_aggregates(tick, aggregates):
        scratch = [bytes(1000) for _ in range(100)]
        return None if len(scratch) else []
'''

NUMPY_PKG = '''
    """A package plugin: its arrays are made in a submodule."""
    from corec_node.hookspecs import hookimpl

    from .store import keep

    @hookimpl
    def corec_block_aggregates(tick):
        keep()
'''

NUMPY_STORE = '''
    import numpy as np

    KEPT = []

    def keep():
        KEPT.append(np.ones(1 << 18))  # 2 MiB of float64, allocated by numpy's C code
'''


def write_organs(root: Path, *, package: bool = True) -> Path:
    organs = root / "organs"
    organs.mkdir(exist_ok=True)
    (organs / "leaky.py").write_text(textwrap.dedent(LEAKY))
    (organs / "tidy.py").write_text(textwrap.dedent(TIDY))
    if not package:  # imported once per process here: its submodule stays in sys.modules
        return organs
    pkg = organs / "arrays"
    pkg.mkdir(exist_ok=True)
    (pkg / "__init__.py").write_text(textwrap.dedent(NUMPY_PKG))
    (pkg / "store.py").write_text(textwrap.dedent(NUMPY_STORE))
    return organs


class Registered:
    """A plugin object registered directly (as built-ins and tests do)."""

    KEPT: list[bytes] = []

    @hookimpl
    def corec_block_aggregates(self, tick):
        self.KEPT.append(bytes(300_000))


@pytest.fixture
def not_tracing():
    if tracemalloc.is_tracing():
        pytest.skip("tracemalloc already traces in this process (python -X tracemalloc)")
    yield
    assert not tracemalloc.is_tracing(), "the watch stops the tracing it started"


async def test_watch_in_process_switches_off_the_leaky_plugin(tmp_path, not_tracing):
    organs = write_organs(tmp_path)
    cfg = Config(plugins=PluginsSection(paths=(str(organs),), memory_watch=True, memory_max_mb=64,
                                        memory_limits=("leaky:5",), memory_interval=3600))
    alerts: list[dict] = []
    pm = PluginManager(cfg, env={}, on_alert=alerts.append).load(entrypoints=False)
    pm.register(Registered(), "registered")
    files = {f.name: f for f in plugin_files(pm.records)}
    assert files["leaky"].files and str(organs / "leaky.py") in files["leaky"].files
    assert str(organs / "arrays") in files["arrays"].folders
    assert files["registered"].files == (os.path.abspath(__file__),) or __file__ in files["registered"].files
    assert all(r["memory_bytes"] is None for r in pm.info())  # not measured before the first check
    node = object()
    await pm.startup(node)
    assert tracemalloc.is_tracing() and pm.memory is not None
    try:
        seen = []
        for tick in range(12):
            await pm.block_aggregates(node, tick, [])
            await pm.memory.check()
            row = {r["name"]: r for r in pm.info()}
            seen.append(row["leaky"]["memory_bytes"])
            if row["leaky"]["state"] == "disabled":
                break
        rows = {r["name"]: r for r in pm.info()}
        leaky = rows["leaky"]
        assert leaky["state"] == "disabled", seen
        assert leaky["reason"].startswith("memory watch: ") and "over its limit of 5.0 MiB" in leaky["reason"]
        assert seen == sorted(seen) and seen[-1] > 5 * MIB and leaky["memory_limit_bytes"] == 5 * MIB
        assert leaky["memory_growth_bytes"] >= 3 * MIB  # it grew 1 MiB a tick since the first check
        # the others live on; what numpy allocated in a package plugin's submodule is its own
        assert {n: r["state"] for n, r in rows.items()} == {"arrays": "active", "leaky": "disabled",
                                                            "registered": "active", "tidy": "active"}
        assert rows["arrays"]["memory_bytes"] >= len(pm.records["arrays"].obj.keep.__globals__["KEPT"]) * (2 << 20)
        assert rows["tidy"]["memory_bytes"] < 100_000 and rows["tidy"]["memory_limit_bytes"] == 64 * MIB
        assert rows["registered"]["memory_bytes"] >= len(Registered.KEPT) * 300_000 > 0
        disabled = [a for a in alerts if a["kind"] == "plugin_disabled"]
        assert len(disabled) == 1 and disabled[0]["plugin"] == "leaky" and disabled[0]["severity"] == "critical"
        assert "MiB" in disabled[0]["text"] and disabled[0]["memory_limit_bytes"] == 5 * MIB
        assert pm.memory_counts()["leaky"] == leaky["memory_bytes"]
        calls = rows["tidy"]["calls"]
        await pm.block_aggregates(node, 99, [])
        assert pm.info()[-1]["calls"] == calls + 1  # tidy (sorted last) still called
    finally:
        await pm.shutdown(node)
    Registered.KEPT.clear()


def test_snapshot_split_sees_numpy_not_torch(not_tracing):
    """numpy reports its buffers to tracemalloc (PyTraceMalloc_Track); torch's allocator does not."""
    np = pytest.importorskip("numpy")
    here = [PluginFiles("here", files=(__file__,))]
    tracemalloc.start(1)
    try:
        before = traced_bytes(here)[0]["here"]
        kept = np.zeros(4 << 20, np.uint8)
        with_numpy = traced_bytes(here)[0]["here"]
        assert with_numpy - before >= kept.nbytes
        try:
            import torch
        except ImportError:
            return
        tensor = torch.zeros(4 << 20, dtype=torch.uint8)
        assert traced_bytes(here)[0]["here"] - with_numpy < tensor.numel() // 4  # not seen
    finally:
        tracemalloc.stop()


def test_plugins_table_and_gauge():
    rows = [{"name": "a", "version": "1", "source": "path", "state": "active", "faults": 0, "hooks": ["corec_alert"],
             "reason": "", "memory_bytes": 3 * MIB, "memory_limit_bytes": 256 * MIB},
            {"name": "b", "version": None, "source": "path", "state": "active", "faults": 0, "hooks": [],
             "reason": "", "memory_bytes": MIB // 2, "memory_limit_bytes": None}]
    text = render_plugins(rows)
    assert text.splitlines()[0].split() == ["NAME", "VERSION", "SOURCE", "STATE", "FAULTS", "MEMORY", "HOOKS", "REASON"]
    assert "3.0/256 MiB" in text and "0.5 MiB" in text
    unwatched = [{**r, "memory_bytes": None} for r in rows]
    assert "MEMORY" not in render_plugins(unwatched)  # the watch is off: the table as before

    text = Metrics(lambda: {"plugin_memory": {"a": 3 * MIB}}, name="n", cluster="c", version="0").text()
    samples = {(s.name, tuple(s.labels.items())): s.value
               for fam in text_string_to_metric_families(text) for s in fam.samples}
    assert samples[("corec_plugin_memory_bytes", (("plugin", "a"),))] == 3 * MIB


# -- a real node --------------------------------------------------------------------------


def test_leaking_plugin_is_switched_off_on_a_real_node(cluster, tmp_path):
    organs = write_organs(tmp_path)
    env = {"COREC_PLUGINS_PATHS": str(organs), "COREC_PLUGINS_MEMORY_WATCH": "true",
           "COREC_PLUGINS_MEMORY_INTERVAL": "0.3", "COREC_PLUGINS_MEMORY_LIMITS": "leaky:12",
           "COREC_ENGINE_TICK_INTERVAL": "0.2"}
    node = cluster.start("solo", extra_env=env, args=["--profile", "test"]).wait_ready()

    def rows() -> dict[str, dict]:
        return {r["name"]: r for r in node.ctl("plugins")}

    grown: list[int] = []

    def leaky_off() -> bool:
        r = rows()["leaky"]
        if r["memory_bytes"] is not None and (not grown or r["memory_bytes"] != grown[-1]):
            grown.append(r["memory_bytes"])
        return r["state"] == "disabled"

    eventually(leaky_off, 60, interval=0.1, message="the leaky plugin is switched off")
    assert len(grown) >= 3 and grown == sorted(grown), grown  # reported growing while it ran
    r = rows()
    assert r["leaky"]["reason"].startswith("memory watch: ") and "over its limit of 12.0 MiB" in r["leaky"]["reason"]
    assert r["leaky"]["memory_bytes"] > 12 * MIB
    assert r["tidy"]["state"] == "active" and r["arrays"]["state"] == "active"
    assert r["tidy"]["memory_bytes"] < MIB and r["tidy"]["memory_limit_bytes"] == 256 * MIB

    events = node.log_events()
    assert any(e.get("event") == "plugin_memory_watch" for e in events)
    off = [e for e in events if e.get("event") == "plugin_disabled"]
    assert [e["plugin"] for e in off] == ["leaky"] and "MiB" in off[0]["reason"]
    assert any(e.get("event") == "alert" and e.get("kind") == "plugin_disabled" and e.get("plugin") == "leaky"
               for e in events)

    # the node lives on: the tidy plugin keeps being called, the control socket answers
    calls = r["tidy"]["calls"]
    eventually(lambda: rows()["tidy"]["calls"] > calls + 3, 15, message="tidy still called every tick")
    out = subprocess.run([sys.executable, "-m", "corec_node", "plugins", "--json", "--data-dir", str(node.data_dir)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    by_name = {p["name"]: p for p in json.loads(out.stdout)}
    assert by_name["leaky"]["memory_bytes"] > 12 * MIB and by_name["leaky"]["state"] == "disabled"
    assert by_name["arrays"]["memory_bytes"] > 0
    text = subprocess.run([sys.executable, "-m", "corec_node", "plugins", "--data-dir", str(node.data_dir)],
                          capture_output=True, text=True, timeout=30).stdout
    assert "MEMORY" in text.splitlines()[0] and "/12 MiB" in text
    assert node.ctl("status")["name"] == "solo"
    node.signal(signal.SIGTERM)
    assert node.proc.wait(15) == 0
