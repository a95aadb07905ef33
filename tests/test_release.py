"""Releases: ``python -m build`` makes the sdist and wheel of the package and of each
first-party plugin, and the wheels alone (no source tree) install into a fresh virtualenv
whose node runs with the plugins they carry and serves its console page."""

from __future__ import annotations

import json
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest

from corec_node import __version__
from corec_node.testing.cluster import Cluster, eventually
from corec_node.testing.releases import PACKAGES, build, install, venv, version_of

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    for source in PACKAGES:
        build(source, out)
    return out


def test_build_makes_an_sdist_and_a_wheel_of_each_package(dist: Path):
    names = sorted(p.name for p in dist.iterdir())
    for stem in ("corec_node", "corec_alerts", "corec_analyzer"):
        assert [n for n in names if n.startswith(f"{stem}-") and n.endswith(".whl")], names
        assert [n for n in names if n.startswith(f"{stem}-") and n.endswith(".tar.gz")], names
    wheel = next(dist.glob(f"corec_node-{__version__}-*.whl"))
    inside = set(zipfile.ZipFile(wheel).namelist())
    # what a node needs at run time beyond the code: the console page and the migrations' home
    assert {"corec_node/console/index.html", "corec_node/console/console.js", "corec_node/console/console.css",
            "corec_node/storage/migrations.py", "corec_node/cli.py"} <= inside
    assert not [n for n in inside if n.startswith("tests/")], "tests stay out of the wheel"
    sdist = next(dist.glob(f"corec_node-{__version__}.tar.gz"))
    members = tarfile.open(sdist).getnames()
    assert any(m.endswith("/pyproject.toml") for m in members) and any(m.endswith("/README.md") for m in members)


def test_the_wheels_install_into_a_fresh_virtualenv_and_run_a_node(dist: Path, tmp_path: Path):
    python = venv(tmp_path / "venv", borrow_dependencies=False)
    install(python, *sorted(dist.glob("*.whl")), deps=True)  # the dependencies from the package index
    assert version_of(python) == __version__
    cli = tmp_path / "venv" / "bin" / "corec-node"
    out = subprocess.run([str(cli), "--version"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.stdout.strip() == f"corec-node {__version__}", out.stdout + out.stderr

    cluster = Cluster(tmp_path / "nodes")
    try:  # cwd outside the source tree: the node imports the installed wheel, nothing else
        node = cluster.start("w", python=str(python), cwd=tmp_path).wait_ready(30)
        status = node.ctl("status")
        assert status["version"] == __version__
        plugins = {p["name"]: p for p in node.ctl("plugins")}
        assert plugins["alerts"]["source"] == "entrypoint" and plugins["alerts"]["state"] == "active", plugins
        assert plugins["alerts"]["version"], plugins["alerts"]
        assert "analyzer" in plugins, sorted(plugins)  # loads without torch; disabled or active, it is there
        listed = subprocess.run([str(cli), "plugins", "--json", "--data-dir", str(node.data_dir)],
                                capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert listed.returncode == 0, listed.stderr
        assert {"alerts", "analyzer"} <= {p["name"] for p in json.loads(listed.stdout)}
        eventually(lambda: node.ctl("status")["members"]["alive"] == 1, 10, message="the node runs")
    finally:
        cluster.close()
