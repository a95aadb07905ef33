"""``corec-node plugin new NAME``: write a plugin package that installs and loads as is.

    corec-node plugin new thermo [--dir DIR]   # writes DIR/corec-thermo/ (DIR defaults to .)
    corec-node plugin list [--config FILE] [--json]   # an alias of ``corec-node plugins``

What ``new`` writes (the entry point is the contract between the node and the plugin)::

    corec-thermo/
      pyproject.toml          [project.entry-points.corec_node] thermo = "corec_thermo.hooks"
      README.md
      corec_thermo/__init__.py
      corec_thermo/hooks.py   one working hook: corec_block_aggregates counts rows
      tests/test_corec_thermo.py

Then ``pip install ./corec-thermo`` and the node loads it at its next start;
``pip install './corec-thermo[test]' && pytest corec-thermo/tests`` runs its tests. ``new``
prints these commands for the folder it was run in: a bare ``pip install corec-thermo``
would fetch that name from the package index. Names: lower-case letters, digits, ``_`` and
``-``, starting with a letter (the plugin's name, its config table ``[plugin.NAME]`` and
its store's file name all derive from it; ``-`` becomes ``_`` there).
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from pathlib import Path
from typing import Any

from corec_node import __version__

NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


class ScaffoldError(Exception):
    pass


def names(name: str) -> dict[str, str]:
    """The names a plugin called ``name`` goes by: ``plugin`` (entry point, config table,
    store), ``dist`` (pip), ``package`` (import)."""
    if not NAME_RE.match(name) or name.endswith(("-", "_")) or "--" in name or "__" in name:
        raise ScaffoldError(f"bad plugin name {name!r}: use lower-case letters, digits, '_' and '-', "
                            "starting with a letter, at most 32 characters")
    plugin = name.replace("-", "_")
    return {"plugin": plugin, "dist": f"corec-{name.replace('_', '-')}", "package": f"corec_{plugin}"}


def render(name: str) -> dict[str, str]:
    """``{relative path: text}`` of the package for plugin ``name``."""
    n = names(name)
    plugin, dist, package = n["plugin"], n["dist"], n["package"]
    major_minor = ".".join(__version__.split(".")[:2])
    if not __version__.replace(".", "").isdigit():  # a development build: its own pre-release counts
        major_minor += ".dev0"
    files = {
        "pyproject.toml": f'''\
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "{dist}"
version = "0.1.0"
description = "A CoreC plugin: {plugin}"
readme = "README.md"
requires-python = ">=3.11"
dependencies = ["corec-node>={major_minor}"]

[project.optional-dependencies]
test = ["pytest>=8", "pytest-asyncio>=0.23"]

# The node finds the plugin through this entry point: group "corec_node", name = the
# plugin's name (its config table is [plugin.{plugin}]), value = the module with the hooks.
[project.entry-points.corec_node]
{plugin} = "{package}.hooks"

[tool.setuptools]
packages = ["{package}"]

[tool.pytest.ini_options]
asyncio_mode = "auto"
asyncio_default_fixture_loop_scope = "function"
''',
        f"{package}/__init__.py": f'''\
"""{dist}: a CoreC plugin. The hooks are in :mod:`{package}.hooks`."""

__version__ = "0.1.0"
''',
        f"{package}/hooks.py": f'''\
"""Hooks of the {plugin} plugin.

Every hook the node offers is listed, with its rules, in ``corec_node/hookspecs.py``. The
rules that matter most: a sync hook runs in a worker thread and an async one on the node's
event loop, so neither may block; a hook that raises or hangs repeatedly is switched off.
A hook that takes ``node`` gets a ``corec_node.plugins.NodeFacade``: all a plugin may call
on its node (name, config, data_dir, raise_alert, log, plugin_store, leader).

Settings come from the node's config, checked against SETTINGS at load::

    [plugin.{plugin}]
    report_every = 60
"""

from __future__ import annotations

from typing import Any

from corec_node import log
from corec_node.hookspecs import hookimpl

NAME = "{plugin}"
SETTINGS = {{
    "report_every": (int, 60),  # ticks between two log lines; 0: never
}}

# Module state: the node calls this plugin's hooks one call at a time per hook.
STATE: dict[str, int] = {{"ticks": 0, "rows": 0, "report_every": 60}}


@hookimpl
def corec_configure(config: Any) -> None:
    """At load: read the validated settings."""
    STATE["report_every"] = config.plugin[NAME]["report_every"]


@hookimpl
def corec_block_aggregates(tick: int, aggregates: list[dict[str, Any]]) -> None:
    """After each engine tick: count the block rows seen, and log now and then."""
    STATE["ticks"] += 1
    STATE["rows"] += len(aggregates)
    every = STATE["report_every"]
    if every and tick % every == 0:
        log.event("{plugin}_report", plugin=NAME, tick=tick, rows=len(aggregates), total=STATE["rows"])
''',
        f"tests/test_{package}.py": f'''\
"""Tests of the {plugin} plugin: the hook alone, then through the node's plugin manager."""

from __future__ import annotations

import pytest

from corec_node.plugins import PluginConfigError, PluginManager
from {package} import hooks


@pytest.fixture(autouse=True)
def fresh_state():
    hooks.STATE.update(ticks=0, rows=0, report_every=60)


def rows(n: int, tick: int = 1) -> list[dict]:
    return [{{"block": (7 << 32) | i, "channel": 7, "owner": "a", "count": 1000, "active": 1000,
             "mean": 20.0, "min": 19.0, "max": 21.0, "std": 0.5, "error_rate": 0.0, "fitness": 0.9,
             "tick": tick}} for i in range(n)]


def test_counts_rows():
    hooks.corec_block_aggregates(1, rows(3))
    hooks.corec_block_aggregates(2, rows(2))
    assert hooks.STATE["ticks"] == 2 and hooks.STATE["rows"] == 5


async def test_through_the_plugin_manager():
    pm = PluginManager()
    pm.register(hooks, "{plugin}", settings={{"report_every": 1}})
    assert hooks.STATE["report_every"] == 1
    await pm.block_aggregates(None, 1, rows(4))
    assert hooks.STATE["rows"] == 4
    info = pm.info()[0]
    assert info["state"] == "active" and info["faults"] == 0


def test_settings_are_checked():
    with pytest.raises(PluginConfigError, match="plugin.{plugin}.report_every"):
        PluginManager().register(hooks, "{plugin}", settings={{"report_every": "often"}})
''',
        "README.md": f'''\
# {dist}

A CoreC plugin ("organ"). It counts the block aggregate rows its node computes, and logs
the count every `report_every` ticks. Start from here: the hooks are in
`{package}/hooks.py`; every hook the node offers, and its rules, is in
`corec_node/hookspecs.py`.

## Install

    pip install ./{dist}

The node finds it at its next start through the entry point group `corec_node` (name
`{plugin}`); `corec-node plugins` shows it. To keep it from loading without
uninstalling: `COREC_DISABLED_PLUGINS={plugin}`.

## Configure

```toml
[plugin.{plugin}]
report_every = 60   # ticks between two log lines; 0: never
```

## Test

    pip install './{dist}[test]'
    pytest {dist}/tests

(`pip install -e` instead, to test edits without installing again.) To run the plugin
inside a real node process, use the `plugin_node` fixture of `corec_node.testing`.
''',
    }
    return files


def write(name: str, directory: str | Path = ".") -> Path:
    """Write the package for ``name`` under ``directory``; returns its root. Refuses to
    write into an existing non-empty folder."""
    root = Path(directory) / names(name)["dist"]
    if root.exists() and any(root.iterdir()):
        raise ScaffoldError(f"{root} exists and is not empty")
    for rel, text in render(name).items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


# -- command line ---------------------------------------------------------------------------


def add_cli(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``plugin new`` and ``plugin list`` (an alias of ``plugins``) to ``corec-node``'s subparsers."""
    from corec_node.cli import add_plugins_arguments

    p = subparsers.add_parser("plugin", help="create a plugin package, or list plugins (as corec-node plugins)",
                              description="Plugins (organs): pip-installed packages with hooks.")
    sub = p.add_subparsers(dest="plugin_command", metavar="SUBCOMMAND", required=True)
    new = sub.add_parser("new", help="write a new plugin package", description=(
        "Write DIR/corec-NAME/: a pip-installable plugin with one working hook, a test and a README."))
    new.add_argument("name", metavar="NAME", help="plugin name: lower-case letters, digits, _ and -")
    new.add_argument("--dir", default=".", metavar="DIR", help="where to write it (default: the current folder)")
    lst = sub.add_parser("list", help="the same as corec-node plugins: the running node's plugins, else those a "
                                      "node with this config would load")
    add_plugins_arguments(lst)
    p.set_defaults(func=cmd_plugin)
    return p


def cmd_plugin(args: argparse.Namespace) -> int:
    if args.plugin_command == "new":
        try:
            root = write(args.name, args.dir)
        except ScaffoldError as exc:
            print(f"corec-node: {exc}", file=sys.stderr)
            return EXIT_USAGE if "bad plugin name" in str(exc) else EXIT_FAIL
        except OSError as exc:
            print(f"corec-node: cannot write the plugin: {exc}", file=sys.stderr)
            return EXIT_FAIL
        print("\n".join(next_steps(root, names(args.name)["package"])))
        return EXIT_OK
    if args.plugin_command == "list":
        from corec_node.cli import cmd_plugins

        return cmd_plugins(args)
    return EXIT_USAGE


def next_steps(root: Path, package: str) -> list[str]:
    """What ``plugin new`` prints: commands that work as printed, in the folder it ran in.
    A relative path gets ``./`` (pip takes a bare ``corec-x`` for a name on the index) and
    every path is quoted for the shell (``[test]`` is a glob pattern)."""
    where = root.as_posix()
    if not root.is_absolute() and not where.startswith(("./", "../")):
        where = f"./{where}"
    return [f"wrote {where}",
            f"  install: pip install {shlex.quote(where)}",
            f"  test:    pip install {shlex.quote(where + '[test]')} && pytest {shlex.quote(where + '/tests')}",
            f"  hooks:   {where}/{package}/hooks.py"]

