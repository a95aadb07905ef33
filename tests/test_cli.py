"""The command line as a user meets it: real processes, real exit codes."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from corec_node import __version__
from meshutil import eventually, free_port

CLI = [sys.executable, "-m", "corec_node"]
SUBCOMMANDS = ["run", "join", "members", "status", "leader", "leave", "force-leave", "keygen", "blocks", "send", "demo", "plugin", "plugins"]


def cli(*args: str, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60, **kw)


def test_version():
    out = cli("--version")
    assert out.returncode == 0
    assert out.stdout.strip() == f"corec-node {__version__}"


def test_console_script_installed():
    script = Path(sys.executable).parent / "corec-node"  # installed beside the interpreter
    out = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and __version__ in out.stdout


@pytest.mark.parametrize("sub", [None, *SUBCOMMANDS])
def test_help_on_every_level(sub):
    out = cli(*([sub] if sub else []), "--help")
    assert out.returncode == 0
    assert "usage: corec-node" in out.stdout


def test_usage_errors_exit_2():
    assert cli().returncode == 2
    assert cli("frobnicate").returncode == 2
    assert cli("run", "--bogus").returncode == 2


def test_bad_config_is_one_line_exit_2(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[node]\nlisten = "no-port-here"\n')
    out = cli("run", "--config", str(bad), "--data-dir", str(tmp_path / "d"))
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert str(bad) in lines[0] and "node.listen" in lines[0] and "host:port" in lines[0]
    assert "Traceback" not in out.stderr


def test_bad_env_is_one_line_exit_2(tmp_path):
    out = cli("status", "--data-dir", str(tmp_path), env={"COREC_MESH_PROFILE": "warp", "PATH": ""})
    assert out.returncode == 2
    assert "COREC_MESH_PROFILE" in out.stderr and "mesh.profile" in out.stderr


def test_command_without_node_exits_1(tmp_path):
    out = cli("members", "--data-dir", str(tmp_path))
    assert out.returncode == 1
    assert len(out.stderr.strip().splitlines()) == 1
    assert "no node is running" in out.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_run_logs_ready_and_stops_cleanly(cluster, sig):
    node = cluster.start("solo").wait_ready()
    events = eventually(lambda: [e for e in node.log_events() if e.get("event") == "ready"], 10)
    assert events[0]["node"] == "solo" and events[0]["level"] == "info"
    node.signal(sig)
    assert node.proc.wait(10) == 0
    assert any(e.get("event") == "stopped" for e in node.log_events())
    assert not (node.data_dir / "control.sock").exists()


def test_control_socket_is_private(cluster):
    node = cluster.start("private").wait_ready()
    mode = (node.data_dir / "control.sock").stat().st_mode & 0o777
    assert mode == 0o600


def test_second_node_on_same_data_dir_refused(cluster):
    first = cluster.start("one").wait_ready()
    out = cli("run", "--name", "two", "--data-dir", str(first.data_dir), "--listen", f"127.0.0.1:{free_port()}")
    assert out.returncode == 1
    assert "another node is running" in out.stderr


def test_send_reports_what_reached_the_node_and_blocks_pipes_into_head(cluster):
    node = cluster.start("sink").wait_ready()
    out = cli("send", "--to", node.addr, "--channel", "2", "--count", "1000000")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"sent 1,000,000 records to {node.addr} in ")
    eventually(lambda: node.ctl("status")["entities"] == 1_000_000, 10)
    eventually(lambda: len(node.ctl("blocks")) == 1000, 10)
    status = cli("status", "--data-dir", str(node.data_dir))
    assert "entities: 1000000" in status.stdout
    assert "ingest:   1,000,000 records" in status.stdout and "0 batches dropped" in status.stdout
    # a reader that leaves early (`| head -1`) ends the listing quietly, with SIGPIPE's status;
    # 1000 blocks as JSON (~300 KB) cannot all wait in the pipe (64 KB), so the write fails
    blocks = subprocess.Popen([*CLI, "blocks", "--json", "--data-dir", str(node.data_dir)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert blocks.stdout is not None and blocks.stderr is not None
    assert blocks.stdout.readline().strip() == "["
    blocks.stdout.close()
    assert blocks.wait(30) == 141
    assert "Traceback" not in blocks.stderr.read()


def test_send_to_nobody_fails_and_says_so():
    addr = f"127.0.0.1:{free_port()}"
    out = cli("send", "--to", addr, "--channel", "1", "--count", "10")
    assert out.returncode == 1
    assert f"{addr} did not take the last records" in out.stderr
