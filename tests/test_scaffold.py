"""``corec-node plugin new``: the package it writes installs, loads and passes its own test,
with the very commands it prints, run as printed."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import sysconfig
import uuid
from pathlib import Path

import pytest
from piputil import can_build_without_isolation, pip_install, pip_uninstall

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


async def test_generated_plugin_installs_and_loads(tmp_path, capsys):
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


# -- the commands it prints ------------------------------------------------------------------


@pytest.mark.parametrize("directory, where", [
    (".", "./corec-thermo"),
    ("sub", "./sub/corec-thermo"),
    ("./sub", "./sub/corec-thermo"),
    ("../up", "../up/corec-thermo"),
    ("/abs/dir", "/abs/dir/corec-thermo"),
])
def test_printed_paths_are_paths_to_pip(directory, where):
    lines = scaffold.next_steps(Path(directory) / "corec-thermo", "corec_thermo")
    assert lines == [f"wrote {where}",
                     f"  install: pip install {where}",
                     f"  test:    pip install '{where}[test]' && pytest {where}/tests",
                     f"  hooks:   {where}/corec_thermo/hooks.py"]


def test_printed_paths_with_spaces_are_quoted():
    lines = scaffold.next_steps(Path("my plugins") / "corec-thermo", "corec_thermo")
    assert lines[1] == "  install: pip install './my plugins/corec-thermo'"
    assert lines[2] == "  test:    pip install './my plugins/corec-thermo[test]' && pytest './my plugins/corec-thermo/tests'"


def venv_beside_this_one(root: Path) -> dict[str, str]:
    """A fresh venv that sees this venv's packages (corec-node, pytest, setuptools) but
    installs into its own site-packages, with ``pip`` and ``pytest`` on PATH as in an
    activated venv; returns the environment to run commands in. pip works offline: no
    index, no build isolation (this venv's setuptools builds the wheel)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=120)
    purelib = Path(sysconfig.get_paths(vars={"base": str(root), "platbase": str(root)})["purelib"])
    here = sysconfig.get_paths()["purelib"]
    (purelib / "_corec_parent_venv.pth").write_text(f"import site; site.addsitedir({here!r})\n")
    bin_dir = root / "bin"
    for tool in ("pip", "pytest"):
        (bin_dir / tool).write_text(f'#!/bin/sh\nexec "{bin_dir / "python"}" -m {tool} "$@"\n')
        (bin_dir / tool).chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTEST_ADDOPTS")}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", VIRTUAL_ENV=str(root),
               PIP_NO_INDEX="1", PIP_NO_BUILD_ISOLATION="0", PIP_DISABLE_PIP_VERSION_CHECK="1")
    return env


@pytest.mark.skipif(not can_build_without_isolation(), reason="this venv cannot build a wheel offline")
def test_printed_commands_work_as_printed(tmp_path, monkeypatch, capsys):
    """``plugin new`` in a folder, then its install and test lines pasted into a shell
    there: the plugin lands in the venv (not fetched from an index) and its tests pass."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    name = f"scaf_{uuid.uuid4().hex[:8]}"
    n = scaffold.names(name)
    assert run_cli("plugin", "new", name) == 0
    printed = dict(line.strip().split(":", 1) for line in capsys.readouterr().out.splitlines()[1:])
    install, test = printed["install"].strip(), printed["test"].strip()
    assert install == f"pip install ./{n['dist']}"

    env = venv_beside_this_one(tmp_path / "venv")
    # the command it printed before, in the same folder: pip takes the bare folder name for
    # a name on the index (here no index at all, so it finds nothing)
    old = subprocess.run(["sh", "-c", f"pip install {n['dist']}"], cwd=work, env=env,
                         capture_output=True, text=True, timeout=300)
    assert old.returncode != 0 and "No matching distribution" in old.stderr + old.stdout

    out = subprocess.run(["sh", "-c", install], cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    site = Path(sysconfig.get_paths(vars={"base": str(tmp_path / "venv"), "platbase": str(tmp_path / "venv")})["purelib"])
    assert [p.name for p in site.glob(f"{n['package']}-0.1.0.dist-info")], "installed into the new venv"
    assert not any(Path(sysconfig.get_paths()["purelib"]).glob(f"{n['package']}-*")), "not into this one"

    out = subprocess.run(["sh", "-c", test], cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "3 passed" in out.stdout
