"""Releases for tests and benchmarks: a tagged release exported from the repository's history, its sdist
and wheel built with ``python -m build``, and virtualenvs that install them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# The releases by commit (CHANGELOG.md): the tag may not travel with a clone, its commit does.
RELEASES = {
    "0.1.0": "f760881",  # no feature gates: an upgrade from it is stop-the-world
    "0.2.0": "d0b65b5",  # the first release with feature gates
    "0.3.0": "bd283eb",  # rolling upgrades tested (tests/test_upgrade.py)
}
PREVIOUS = "0.3.0"  # the release before this tree: the mixed-version upgrade starts from it
PACKAGES = (REPO, REPO / "plugins" / "corec-alerts", REPO / "plugins" / "corec-analyzer")


def need_git_commit(commit: str) -> None:
    """Skip (fail under CI) when the release's commit is not in this checkout's history."""
    why = None
    if shutil.which("git") is None:
        why = "git is not installed"
    elif subprocess.run(["git", "-C", str(REPO), "cat-file", "-e", f"{commit}^{{commit}}"],
                        capture_output=True).returncode != 0:
        why = f"commit {commit} is not in this checkout's history (a shallow clone?)"
    if why is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the release test needs the release's source: {why}")
        pytest.skip(why)


def export(commit: str, dest: Path) -> Path:
    """The whole tree of ``commit`` (package, plugins, pyproject, README) under ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", commit], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest


def build(source: Path, outdir: Path) -> list[Path]:
    """``python -m build`` of one project: its sdist and its wheel, without build isolation
    (this venv has setuptools; an isolated build would fetch it from the index)."""
    out = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(outdir), str(source)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    name = source.name if source != REPO and source.parent.name == "plugins" else "corec-node"
    stem = name.replace("-", "_")
    built = sorted(outdir.glob(f"{stem}-*"))
    assert any(p.suffix == ".whl" for p in built) and any(p.name.endswith(".tar.gz") for p in built), built
    return built


def venv(path: Path, *, borrow_dependencies: bool) -> Path:
    """A new virtualenv; its python. ``borrow_dependencies``: no pip inside, and this venv's
    site-packages appended to its path (a ``.pth`` line: the third-party libraries without
    a download; this venv's own ``.pth`` files, its editable CoreC among them, are not run)."""
    args = [sys.executable, "-m", "venv", str(path)]
    if borrow_dependencies:
        args.insert(3, "--without-pip")
    subprocess.run(args, check=True, timeout=120)
    python = path / "bin" / "python"
    if borrow_dependencies:
        site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                   capture_output=True, text=True, check=True).stdout.strip())
        ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
        (site / "_corec_borrowed.pth").write_text("".join(f"{p}\n" for p in sorted(ours)))
    return python


def install(python: Path, *wheels: Path, deps: bool) -> None:
    """pip of this venv installs ``wheels`` into the other venv (``--python``)."""
    cmd = [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", *map(str, wheels)]
    if not deps:
        cmd.insert(6, "--no-deps")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]


def version_of(python: Path) -> str:
    return subprocess.run([str(python), "-c", "import corec_node; print(corec_node.__version__)"],
                          capture_output=True, text=True, check=True, cwd="/").stdout.strip()
