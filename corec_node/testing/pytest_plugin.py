"""The ``plugin_node`` fixture: run a plugin inside a real ``corec-node run`` process from
a test, as pytest's ``pytester`` runs a pytest plugin inside a real pytest.

A pytest plugin: entry point ``pytest11``, so any test in a venv with corec-node installed
has the fixture; elsewhere ``pytest_plugins = ["corec_node.testing.pytest_plugin"]`` in a
conftest.py or test module (``from corec_node.testing import plugin_node`` works too)::

    def test_my_plugin_alerts(plugin_node):
        node = plugin_node("thermo", settings={"report_every": 1})   # installed: its entry point
        node.send(records)
        eventually(lambda: node.alerts("too_hot"))
        assert node.info()["faults"] == 0

The plugin comes from its installed entry point (the default), from ``target`` (an
entry point's value, ``"package.module"`` or ``"package:object"``, importable from
``pythonpath``: a plugin not installed yet), or from ``path`` (a ``.py`` module, or a folder
of them, as config ``plugins.paths`` takes). Other installed plugins are disabled unless
``others=True``, so what the test sees is this plugin's doing (the installed ones as this
process sees them). The node runs with the ``test`` timer profile and ticks every 0.2 s;
its config and log are under the test's ``tmp_path``, its data directory under a short
``/tmp`` path (the control socket's limit), and it is stopped when the test ends.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from corec_node.hookspecs import PROJECT as ENTRYPOINT_GROUP
from corec_node.testing.cluster import NodeProc

START_TIMEOUT = 60.0  # seconds to "ready": a plugin may import a model library at startup
TICK_INTERVAL = 0.2  # engine ticks: block aggregate hooks fire often, without a busy node
LOG_TAIL = 40  # log lines quoted when the node fails to start
CRASH_MARK = 'File "<frozen runpy>"'  # only in the traceback of an exception out of `python -m corec_node`
DATA_ROOT_PREFIX = "corec-pn-"  # data dirs live in a short /tmp path: the control socket's
# path must fit in 108 bytes (AF_UNIX), which a pytest tmp_path with a long test name overruns


class PluginNodeError(AssertionError):
    """The node did not start with the plugin active; the text quotes the node's log."""


class PluginNode:
    """One node process running the plugin under test: its control commands, its log,
    and a producer to send it records."""

    def __init__(self, proc: NodeProc, plugin: str) -> None:
        self.proc = proc
        self.plugin = plugin

    @property
    def name(self) -> str:
        return self.proc.name

    @property
    def addr(self) -> str:
        """The node's direct address, for ``corec_node.client.Client``."""
        return self.proc.addr

    @property
    def data_dir(self) -> Path:
        return self.proc.data_dir

    def ctl(self, cmd: str, **args: Any) -> Any:
        """A control command, as ``corec-node CMD --json`` would print it."""
        return self.proc.ctl(cmd, **args)

    def status(self) -> dict[str, Any]:
        return self.ctl("status")

    def plugins(self) -> list[dict[str, Any]]:
        """Every plugin the node found (``corec-node plugins --json``)."""
        return self.ctl("plugins")

    def info(self) -> dict[str, Any]:
        """This plugin's row of :meth:`plugins`: state, hooks, calls, faults, last_error."""
        rows = self.plugins()
        for row in rows:
            if row["name"] == self.plugin:
                return row
        raise PluginNodeError(f"the node has no plugin {self.plugin!r}; it found: "
                              f"{', '.join(r['name'] for r in rows) or 'none'}")

    def send(self, records: Any) -> int:
        """Send entity records (``corec_node.wire.ENTITY_DTYPE``) and wait for the answers;
        returns how many the node accepted."""
        from corec_node.client import Client

        with Client(self.addr, timeout=30.0) as client:
            client.send(records)
        return client.accepted

    def log_events(self) -> list[dict[str, Any]]:
        """The node's log so far, one dict per line (``event`` is the event's name)."""
        return self.proc.log_events()

    def events(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.log_events() if e.get("event") == name]

    def alerts(self, kind: str | None = None) -> list[dict[str, Any]]:
        """The alerts this plugin raised (returned from a hook or through ``raise_alert``)."""
        return [e for e in self.events("alert")
                if e.get("plugin") == self.plugin and (kind is None or e.get("kind") == kind)]

    def stop(self) -> int | None:
        """SIGTERM and wait: the exit code (0 after a clean shutdown, hooks included)."""
        return self.proc.stop(15)


class PluginNodes:
    """The ``plugin_node`` fixture: call it to start a node; all are stopped at teardown."""

    def __init__(self, root: Path) -> None:
        self.root = root  # configs and logs, kept with the test's tmp_path
        self.nodes: list[PluginNode] = []
        self._data_root: Path | None = None

    def __call__(
        self,
        plugin: str,
        *,
        settings: Mapping[str, Any] | None = None,
        target: str | None = None,
        pythonpath: Sequence[str | os.PathLike[str]] = (),
        path: str | os.PathLike[str] | None = None,
        config: Mapping[str, Mapping[str, Any]] | None = None,
        env: Mapping[str, str] | None = None,
        others: bool = False,
        require_active: bool = True,
        timeout: float = START_TIMEOUT,
    ) -> PluginNode:
        """Start a node running ``plugin`` with ``settings`` as its ``[plugin.NAME]`` table.

        ``config``: more sections of the node's TOML (``{"engine": {"block_size": 100}}``).
        ``env``: more environment for the node. Raises :class:`PluginNodeError`, quoting
        the log, when the node exits or is not ready in ``timeout`` s, or when the plugin
        is not active (``require_active=False`` to test one that switches itself off).
        """
        if target is not None and path is not None:
            raise ValueError("give the plugin's target or its path, not both")
        installed = _installed()
        if (target is not None or path is not None) and plugin in installed:
            raise ValueError(f"plugin {plugin!r} is also installed: the node would find two plugins of that "
                             "name (pip uninstall it, or test the installed one without target or path)")
        index = len(self.nodes)
        root = self.root / f"{plugin}-{index}"
        root.mkdir(parents=True, exist_ok=True)
        paths: list[str] = []
        if path is not None:
            paths.append(str(Path(path).resolve()))
        elif target is not None:
            paths.append(str(_write_shim(root, plugin, target, [str(Path(p).resolve()) for p in pythonpath])))
        disabled = [] if others else sorted(installed - {plugin})
        sections: dict[str, dict[str, Any]] = {"engine": {"tick_interval": TICK_INTERVAL}}
        for section, values in (config or {}).items():
            sections.setdefault(section, {}).update(values)
        sections["plugin"] = {plugin: dict(settings or {})}
        cfg = root / "node.toml"
        cfg.write_text(_toml(sections))
        node_env = {
            # these win over the test runner's own environment
            "COREC_PLUGINS_PATHS": ",".join(paths),
            "COREC_PLUGINS_DISABLED": ",".join(disabled),
            "COREC_DISABLED_PLUGINS": "",
        }
        node_env.update(env or {})
        if self._data_root is None:
            self._data_root = Path(tempfile.mkdtemp(prefix=DATA_ROOT_PREFIX))
        proc = NodeProc(f"{plugin.replace('_', '-')}-node", root, extra_env=node_env,
                        args=["--config", str(cfg), "--profile", "test"], data_dir=self._data_root / str(index))
        node = PluginNode(proc, plugin)
        self.nodes.append(node)
        proc.start()
        _wait_ready(proc, timeout)
        if require_active:
            row = node.info()
            if row["state"] != "active":
                raise PluginNodeError(f"plugin {plugin!r} is {row['state']}: {row['reason'] or row['last_error']}")
        return node

    def close(self) -> None:
        for node in self.nodes:
            try:
                node.proc.stop(10)
            except Exception:
                node.proc.kill()
        if self._data_root is not None:
            shutil.rmtree(self._data_root, ignore_errors=True)


@pytest.fixture
def plugin_node(tmp_path: Path) -> Iterator[PluginNodes]:
    """Start real node processes running one plugin each: ``plugin_node("name", settings={...})``."""
    nodes = PluginNodes(tmp_path / "plugin-nodes")
    try:
        yield nodes
    finally:
        nodes.close()


# -- helpers --------------------------------------------------------------------------------


def _installed() -> set[str]:
    """Names of the installed plugins (entry points) as a node started from here sees them:
    asked of a fresh interpreter, since pytest puts test folders on this one's sys.path and
    a plugin's source folder there may hold a build's ``*.egg-info`` that looks installed."""
    code = ("import importlib.metadata as m\n"
            f"print('\\n'.join(sorted({{e.name for e in m.entry_points(group={ENTRYPOINT_GROUP!r})}})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise PluginNodeError(f"cannot list the installed plugins: {out.stderr.strip()[-500:]}")
    return set(out.stdout.split())


def _write_shim(root: Path, plugin: str, target: str, pythonpath: list[str]) -> Path:
    """A module named after the plugin that re-exports ``target``'s hooks and settings, for
    ``plugins.paths``: the node imports a path plugin as a module, while an entry point may
    name an object (``"package:plugin"``). ``pythonpath`` goes on sys.path only when the shim
    is imported, after the node read its entry points: a source folder holding a build's
    ``*.egg-info`` would otherwise look like an installed copy of the same plugin."""
    module, _, attr = target.partition(":")
    shim = root / "shim" / f"{plugin}.py"
    shim.parent.mkdir(parents=True, exist_ok=True)
    shim.write_text(
        f'"""Generated by corec_node.testing.pytest_plugin: plugin {plugin!r} from {target!r}."""\n'
        "import importlib\nimport sys\n\n"
        f"sys.path[:0] = [p for p in {pythonpath!r} if p not in sys.path]\n"
        f"_obj = importlib.import_module({module!r})\n"
        + "".join(f"_obj = getattr(_obj, {part!r})\n" for part in attr.split(".") if part)
        + "globals().update({_n: getattr(_obj, _n) for _n in dir(_obj)\n"
        "                  if _n.startswith('corec_') or _n in ('SETTINGS', 'DISABLED_REASON')})\n"
        f"__version__ = getattr(importlib.import_module({module.split('.')[0]!r}), '__version__', None)\n")
    return shim


def _wait_ready(proc: NodeProc, timeout: float) -> None:
    """Until the node logged ``ready`` (after every corec_startup); fail at once if it exits."""
    deadline = time.monotonic() + timeout
    while True:
        code = proc.proc.poll() if proc.proc is not None else None
        if code is not None:
            raise PluginNodeError(f"the node exited with code {code} before it was ready:\n{_tail(proc)}")
        if proc.log_path.exists():
            if any(e.get("event") == "ready" for e in proc.log_events()):
                return
            if CRASH_MARK in proc.log_path.read_text(errors="replace"):  # a hung exit may follow
                raise PluginNodeError(f"the node crashed before it was ready:\n{_tail(proc)}")
        if time.monotonic() > deadline:
            raise PluginNodeError(f"the node was not ready within {timeout:g} s:\n{_tail(proc)}")
        time.sleep(0.1)


def _tail(proc: NodeProc) -> str:
    try:
        lines = proc.log_path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(lines[-LOG_TAIL:])


def _toml(sections: Mapping[str, Mapping[str, Any]]) -> str:
    """The node's config file; ``sections["plugin"]`` holds ``[plugin.NAME]`` tables."""
    out: list[str] = []
    for section, values in sections.items():
        if section == "plugin":
            for name, table in values.items():
                out.append(f"[plugin.{json.dumps(name)}]")
                out += [f"{json.dumps(k)} = {_value(v)}" for k, v in table.items()]
                out.append("")
            continue
        out.append(f"[{section}]")
        out += [f"{json.dumps(k)} = {_value(v)}" for k, v in values.items()]
        out.append("")
    return "\n".join(out)


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return ("inf" if v > 0 else "-inf") if math.isinf(v) else "nan" if math.isnan(v) else repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, Mapping):
        return "{ " + ", ".join(f"{json.dumps(str(k))} = {_value(x)}" for k, x in v.items()) + " }"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML: {v!r}")
