"""``corec-node plugin new``: the package it writes installs, loads and passes its own test."""

from __future__ import annotations

import argparse
import subprocess
import sys
import uuid

import pytest
from test_plugins_install import pip_install, pip_uninstall

from corec_node import scaffold
from corec_node.config import Config
from corec_node.plugins import PluginManager


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="corec-node")
    scaffold.add_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(list(argv))
    return args.func(args)


def test_names():
    assert scaffold.names("thermo") == {"plugin": "thermo", "dist": "corec-thermo", "package": "corec_thermo"}
    assert scaffold.names("heat-map") == {"plugin": "heat_map", "dist": "corec-heat-map", "package": "corec_heat_map"}
    for bad in ("", "Thermo", "1x", "a b", "x-", "a--b", "x" * 40, "ü"):
        with pytest.raises(scaffold.ScaffoldError):
            scaffold.names(bad)


def test_bad_name_exits_2_and_existing_folder_exits_1(tmp_path, capsys):
    assert run_cli("plugin", "new", "Bad Name", "--dir", str(tmp_path)) == 2
    assert "bad plugin name" in capsys.readouterr().err
    (tmp_path / "corec-taken").mkdir()
    (tmp_path / "corec-taken" / "file").write_text("mine")
    assert run_cli("plugin", "new", "taken", "--dir", str(tmp_path)) == 1
    assert "exists and is not empty" in capsys.readouterr().err
    assert (tmp_path / "corec-taken" / "file").read_text() == "mine"


async def test_generated_plugin_installs_loads_and_passes_its_own_test(tmp_path, capsys):
    name = f"scaf_{uuid.uuid4().hex[:8]}"
    n = scaffold.names(name)
    assert run_cli("plugin", "new", name, "--dir", str(tmp_path)) == 0
    root = tmp_path / n["dist"]
    assert f"wrote {root}" in capsys.readouterr().out
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) == sorted([
        "README.md", "pyproject.toml", f"{n['package']}/__init__.py", f"{n['package']}/hooks.py",
        f"tests/test_{n['package']}.py",
    ])
    pip_install(root)
    try:
        # found through its entry point, configured from the node's config table
        pm = PluginManager(Config(plugin={name: {"report_every": 1}}), env={}).load()
        info = {p["name"]: p for p in pm.info()}
        assert info[name]["source"] == "entrypoint" and info[name]["state"] == "active"
        assert info[name]["version"] == "0.1.0"
        assert info[name]["hooks"] == ["corec_configure", "corec_block_aggregates"]
        hooks = pm.records[name].obj
        assert hooks.STATE["report_every"] == 1
        rows = [{"block": i, "channel": 0, "owner": "a", "count": 1, "active": 1, "mean": 1.0, "min": 1.0,
                 "max": 1.0, "std": 0.0, "error_rate": 0.0, "fitness": 1.0, "tick": 1} for i in range(5)]
        await pm.block_aggregates(object(), 1, rows)
        assert hooks.STATE["rows"] == 5 and pm.info()[0]["faults"] == 0

        # its own tests pass, run as its author would (from outside this repository)
        out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
                             cwd=root, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
        assert "3 passed" in out.stdout
    finally:
        pip_uninstall(n["dist"])
        for mod in (f"{n['package']}.hooks", n["package"]):
            sys.modules.pop(mod, None)


def test_generated_files_name_the_entry_point(tmp_path):
    root = scaffold.write("thermo", tmp_path)
    text = (root / "pyproject.toml").read_text()
    assert '[project.entry-points.corec_node]\nthermo = "corec_thermo.hooks"' in text
    readme = (root / "README.md").read_text()
    assert "[plugin.thermo]" in readme and "COREC_DISABLED_PLUGINS=thermo" in readme
    compile((root / "corec_thermo" / "hooks.py").read_text(), "hooks.py", "exec")
