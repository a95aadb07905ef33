"""``corec-node plugins`` and its alias ``plugin list``: with no node answering, the
plugins a node with this config would load; the running node's view is in
test_plugin_node_fixture.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from corec_node import cli

PLUGIN = '''
    from corec_node.hookspecs import hookimpl

    SETTINGS = {"limit": (float, 1.0)}

    @hookimpl
    def corec_block_aggregates(tick):
        pass
'''


@pytest.fixture
def node_config(tmp_path: Path) -> list[str]:
    """``--config`` and ``--data-dir`` of a node that is not running, with one path plugin."""
    organs = tmp_path / "organs"
    organs.mkdir()
    (organs / "gauge.py").write_text(textwrap.dedent(PLUGIN))
    cfg = tmp_path / "node.toml"
    cfg.write_text(f'[plugins]\npaths = ["{organs}"]\n\n[plugin.gauge]\nlimit = 2.5\n')
    return ["--config", str(cfg), "--data-dir", str(tmp_path / "data")]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_without_a_node_it_lists_what_a_node_would_load(node_config, capsys):
    code, out, _ = run(capsys, "plugins", "--json", *node_config)
    assert code == 0
    rows = {r["name"]: r for r in json.loads(out)}
    gauge = rows["gauge"]
    # the fields both commands printed before, and which view this is
    assert {"name", "version", "source", "origin", "hooks", "state", "reason", "faults", "dropped", "calls",
            "last_error", "channels"} <= set(gauge)
    assert gauge["source"] == "path" and gauge["state"] == "active" and gauge["view"] == "installed"
    assert gauge["hooks"] == ["corec_block_aggregates"]

    code, text, _ = run(capsys, "plugins", *node_config)
    assert code == 0
    first, header, row = text.splitlines()[0], text.splitlines()[1], next(
        line for line in text.splitlines() if line.startswith("gauge"))
    assert first.startswith("no node is running with data directory") and first.endswith(
        ": the plugins a node with this config would load")
    assert header.split() == ["NAME", "VERSION", "SOURCE", "STATE", "FAULTS", "HOOKS", "REASON"]
    assert row.split() == ["gauge", "-", "path", "active", "0", "block_aggregates"]


def test_plugin_list_is_an_alias_printing_the_same(node_config, capsys):
    for fmt in ([], ["--json"]):
        _, plugins_out, _ = run(capsys, "plugins", "--installed", *fmt, *node_config)
        code, list_out, _ = run(capsys, "plugin", "list", "--installed", *fmt, *node_config)
        assert code == 0 and list_out == plugins_out and "gauge" in list_out
    code, plugins_out, _ = run(capsys, "plugins", *node_config)
    _, list_out, _ = run(capsys, "plugin", "list", *node_config)
    assert list_out == plugins_out


def test_running_wants_a_node(node_config, capsys):
    code, out, err = run(capsys, "plugins", "--running", *node_config)
    assert code == 1 and out == "" and "no node is running" in err


def test_a_misspelled_table_is_a_config_error_naming_it(node_config, tmp_path, capsys):
    cfg = tmp_path / "node.toml"
    cfg.write_text(cfg.read_text().replace("[plugin.gauge]", "[plugin.guage]"))
    for argv in (["plugins"], ["plugin", "list"]):
        code, out, err = run(capsys, *argv, "--installed", *node_config)
        assert code == 2 and out == ""
        assert f"{cfg}: [plugin.guage]: no plugin named 'guage' is installed (did you mean 'gauge'?)" in err
        assert "gauge" in err.split("installed: ", 1)[1]


COMMAND_PLUGIN = '''
    from corec_node.hookspecs import hookimpl

    def hello(args):
        print(f"gauge says hello to {args.who}")
        return 3

    @hookimpl
    def corec_cli_commands(subparsers):
        p = subparsers.add_parser("gauge-hello", help="a plugin's own command")
        p.add_argument("who")
        p.set_defaults(func=hello)
'''


def test_a_plugin_adds_its_own_command_and_a_broken_one_costs_one_line(tmp_path):
    organs = tmp_path / "organs"
    organs.mkdir()
    (organs / "gauge.py").write_text(textwrap.dedent(COMMAND_PLUGIN))
    env = {**os.environ, "COREC_PLUGINS_PATHS": str(organs)}  # the command's own flags take no --config

    def corec(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "corec_node", *args], capture_output=True, text=True,
                              timeout=60, env=env)

    out = corec("gauge-hello", "world")
    assert (out.returncode, out.stdout, out.stderr) == (3, "gauge says hello to world\n", "")
    assert "gauge-hello" in corec("--help").stdout  # the top-level help lists it
    # a plugin that fails to load: one line, and the unknown command is argparse's usual error
    (organs / "gauge.py").write_text("import no_such_module_here\n")
    out = corec("gauge-hello", "world")
    assert out.returncode == 2
    first, rest = out.stderr.split("\n", 1)
    assert first.startswith("corec-node: plugin commands not loaded: ") and "no_such_module_here" in first
    assert "invalid choice: 'gauge-hello'" in rest
