"""pip for tests that install real distributions into this venv (and uninstall them)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import subprocess
import sys
from pathlib import Path


def pip_install(path: Path) -> None:
    """``pip install --no-deps --no-build-isolation`` when this venv can build a wheel by
    itself (setuptools >= 70.1, or the ``wheel`` package); with build isolation otherwise
    (pip then fetches setuptools from its index)."""
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "-q", str(path)]
    if can_build_without_isolation():
        cmd.insert(5, "--no-build-isolation")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]


def is_installed(dist: str) -> bool:
    """Whether a fresh interpreter of this venv (what a node runs in) sees ``dist``. Not
    this process's view: pytest puts test folders on sys.path, and a plugin's source folder
    there holds a build's ``*.egg-info`` that looks like an installed distribution."""
    code = f"import importlib.metadata as m; m.distribution({dist!r})"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60).returncode == 0


def pip_uninstall(dist: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "uninstall", "-y", "-q", dist], capture_output=True, timeout=300)


def can_build_without_isolation() -> bool:
    if importlib.util.find_spec("wheel") is not None:
        return True
    try:
        version = importlib.metadata.version("setuptools")
    except importlib.metadata.PackageNotFoundError:
        return False
    major, minor = (int(x) for x in version.split(".")[:2])
    return (major, minor) >= (70, 1)
