"""A plugin pip-installed into this venv is found through its entry point and its hooks fire.

The distribution is written into tmp_path, installed with pip, and uninstalled at the end
(even when the test fails). Its name carries a random suffix: other test runs sharing the
venv never see a half-installed copy under a name they use.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import numpy as np
import pytest
from piputil import pip_install, pip_uninstall
from records import entities

from corec_node.config import Config, PluginsSection
from corec_node.engine import EntityStore, aggregate, aggregate_rows
from corec_node.plugins import DISABLED_ENV, PluginManager


def write_dist(root: Path, dist: str, package: str, plugin: str) -> Path:
    src = root / dist
    (src / package).mkdir(parents=True)
    (src / "pyproject.toml").write_text(textwrap.dedent(f"""
        [build-system]
        requires = ["setuptools>=61"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "{dist}"
        version = "1.2.3"

        [project.entry-points.corec_node]
        {plugin} = "{package}.hooks:plugin"

        [tool.setuptools]
        packages = ["{package}"]
    """))
    (src / package / "__init__.py").write_text("")
    (src / package / "hooks.py").write_text(textwrap.dedent("""
        from corec_node.hookspecs import hookimpl

        class Plugin:
            SETTINGS = {"limit": (float, 100.0)}

            def __init__(self):
                self.rows = 0
                self.batches = []
                self.limit = None

            @hookimpl
            def corec_configure(self, config):
                self.limit = config.plugin[NAME]["limit"]

            @hookimpl
            def corec_channels(self):
                return [3]

            @hookimpl
            def corec_entities(self, channel, records):
                self.batches.append((channel, len(records)))

            @hookimpl
            async def corec_block_aggregates(self, tick, aggregates):
                self.rows += len(aggregates)
                return [{"kind": "over", "text": f"block {r['block']}"} for r in aggregates
                        if r["mean"] is not None and r["mean"] > self.limit]

        plugin = Plugin()
    """).replace("NAME", repr(plugin)))
    return src


@pytest.fixture
def installed(tmp_path):
    suffix = uuid.uuid4().hex[:8]
    dist, package, plugin = f"corec-testplug-{suffix}", f"corec_testplug_{suffix}", f"testplug_{suffix}"
    src = write_dist(tmp_path, dist, package, plugin)
    pip_install(src)
    try:
        yield dist, package, plugin
    finally:
        pip_uninstall(dist)
        sys.modules.pop(f"{package}.hooks", None)
        sys.modules.pop(package, None)


async def test_installed_plugin_is_found_by_entry_point_and_its_hooks_fire(installed):
    dist, package, plugin = installed
    alerts: list[dict] = []
    cfg = Config(plugin={plugin: {"limit": 20.0}})
    pm = PluginManager(cfg, on_alert=alerts.append, env={}).load()
    info = {p["name"]: p for p in pm.info()}
    assert plugin in info, info
    mine = info[plugin]
    assert mine["source"] == "entrypoint" and mine["version"] == "1.2.3" and mine["state"] == "active"
    assert dist in mine["origin"] and f"{package}.hooks:plugin" in mine["origin"]
    assert mine["hooks"] == ["corec_configure", "corec_channels", "corec_entities", "corec_block_aggregates"]
    obj = pm.records[plugin].obj
    assert obj.limit == 20.0

    store = EntityStore(block_size=1000)
    values = np.where(np.arange(2000) < 1000, 10.0, 30.0).astype(np.float32)
    batch = entities(np.arange(2000, dtype=np.uint32), 3, values)
    store.ingest(batch)
    node = object()
    await pm.startup(node)
    assert 3 in pm.channels()
    await pm.entities(node, 3, batch)
    rows = aggregate_rows(aggregate(store, 1), owner="a", nan_as_none=True)
    raised = await pm.block_aggregates(node, 1, rows)
    await pm.shutdown(node)
    assert obj.batches == [(3, 2000)] and obj.rows == 2
    assert [a["text"] for a in raised] == [f"block {(3 << 32) | 1}"] and raised == alerts
    assert raised[0]["plugin"] == plugin


def test_installed_plugin_disabled_by_env_is_not_imported(installed):
    _, package, plugin = installed
    sys.modules.pop(f"{package}.hooks", None)
    pm = PluginManager(Config(), env={DISABLED_ENV: plugin}).load()
    info = {p["name"]: p for p in pm.info()}
    assert info[plugin]["state"] == "disabled" and info[plugin]["version"] == "1.2.3"
    assert f"{package}.hooks" not in sys.modules


def test_installed_plugin_disabled_by_config(installed):
    _, _, plugin = installed
    pm = PluginManager(Config(plugins=PluginsSection(disabled=(plugin,))), env={}).load()
    assert {p["name"]: p["state"] for p in pm.info()}[plugin] == "disabled"


def test_plugin_list_command_shows_it(installed, tmp_path):
    _, _, plugin = installed
    code = ("import sys, argparse\n"
            "from corec_node import scaffold\n"
            "p = argparse.ArgumentParser(); scaffold.add_cli(p.add_subparsers(dest='c'))\n"
            "a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))")
    out = subprocess.run([sys.executable, "-c", code, "plugin", "list"],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    line = next(line for line in out.stdout.splitlines() if line.startswith(plugin))
    assert "1.2.3" in line and "entrypoint" in line and "active" in line and "block_aggregates" in line
