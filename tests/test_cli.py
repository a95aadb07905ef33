"""The command line as a user meets it: real processes, real exit codes."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from meshutil import eventually, free_port

from corec_node import __version__

CLI = [sys.executable, "-m", "corec_node"]
SUBCOMMANDS = ["run", "join", "members", "status", "leader", "leave", "force-leave", "keygen", "blocks", "send", "demo", "plugin", "plugins", "monitor", "genome", "alerts", "drift"]


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
    # every record accepted, none waiting (a batch refused as busy on a loaded machine is sent again: not asserted)
    assert re.search(r"^records:  [\d,]+ from producers \([\d,]+ batches\): 1,000,000 accepted, .*, 0 batches waiting$",
                     status.stdout, re.M), status.stdout
    assert "lost:     0 records after they arrived\n" in status.stdout
    assert "stream:   0 batches missed" in status.stdout
    assert "STALLED" not in status.stdout
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
    with socket.socket() as held:  # bound, never listening: connections are refused, and no other process takes it
        held.bind(("127.0.0.1", free_port()))
        addr = f"127.0.0.1:{held.getsockname()[1]}"
        for acks in ("1", "0"):
            out = cli("send", "--to", addr, "--channel", "1", "--count", "10", "--timeout", "2", "--acks", acks)
            assert out.returncode == 1 and not out.stdout, (out.stdout, out.stderr)
            assert out.stderr == f"corec-node: nothing listens at {addr} (connection refused): none of the 10 records was stored\n"


def test_send_to_a_node_of_another_cluster_or_another_port_fails_with_no_rate(cluster):
    node = cluster.start("sink").wait_ready()
    for to, cluster_name in ((node.addr, "elsewhere"), (node.ctl("status")["pub"], "corec")):
        out = cli("send", "--to", to, "--cluster", cluster_name, "--channel", "1", "--count", "1000", "--timeout", "2")
        assert out.returncode == 1 and "records/s" not in out.stdout + out.stderr, (out.stdout, out.stderr)
        assert f"{to} answered nothing within 2 s" in out.stderr and "none of the 1,000 records" in out.stderr
    assert node.ctl("status")["entities"] == 0


def status_answer(**changes) -> dict:
    """A node's status answer as the control socket gives it (the keys render_status reads)."""
    answer = {
        "name": "a", "addr": "127.0.0.1:7946", "pub": "127.0.0.1:7947", "cluster": "corec", "uptime": 12.5,
        "members": {"alive": 3, "suspect": 0}, "leader": "b", "term": 4, "messages_in": 900, "messages_out": 800,
        "rejected": {"busy": 2}, "dropped": {}, "engine_stalled": False, "heartbeat_gap_max": 0.1234,
        "heartbeat_gaps_late": 0, "entities": 370000, "blocks": 37,
        "producers": {"batches": 41, "records": 410_000, "accepted": 370_000, "rejected": {"busy": 20_000, "too_large": 10_000},
                      "rejected_batches": {"busy": 2, "too_large": 1}, "waiting": 1},
        "dropped_records": {}, "stream_gaps": 0,
    }
    return {**answer, **changes}


def test_status_text_accounts_for_records_and_drops():
    from corec_node.cli import render_status

    lines = render_status(status_answer()).splitlines()
    assert ("records:  410,000 from producers (41 batches): 370,000 accepted, 30,000 rejected (busy 20,000, "
            "too_large 10,000), 1 batch waiting") in lines
    assert "lost:     0 records after they arrived" in lines
    assert "stream:   0 batches missed (sequence gaps)" in lines
    assert "beats:    largest gap 0.123 s between the leader's heartbeats, 0 late" in lines
    assert not [line for line in lines if line.startswith(("dropped:", "STALLED:"))]  # nothing dropped, not stalled

    text = render_status(status_answer(dropped_records={"stream_overflow": 4321, "handoff_failed": 17}, stream_gaps=6,
                                       dropped={"pub_queue_full": 9, "link_full": 2}, engine_stalled=True,
                                       heartbeat_gap_max=2.5, heartbeat_gaps_late=3, rows_ignored=1200))
    lines = text.splitlines()
    assert "lost:     4,338 records after they arrived (handoff_failed 17, stream_overflow 4,321)" in lines
    assert "stream:   6 batches missed (sequence gaps)" in lines
    assert "rows:     1,200 aggregate rows of other owners ignored (keys or types not SPEC 9.2's)" in lines
    assert "beats:    largest gap 2.500 s between the leader's heartbeats, 3 late" in lines
    assert "dropped:  11 messages (link_full 2, pub_queue_full 9)" in lines
    assert any(line.startswith("STALLED:  the data plane stopped beating") for line in lines)
    assert len(lines) == len(set(lines))  # one line each


def test_status_text_of_an_older_node_leaves_the_accounting_out():
    from corec_node.cli import render_status

    old = status_answer()
    for key in ("producers", "dropped_records", "stream_gaps", "heartbeat_gap_max", "heartbeat_gaps_late",
                "engine_stalled", "dropped"):
        del old[key]
    text = render_status(old)
    assert text.startswith("name:     a\n") and "records:" not in text and "beats:" not in text


def test_status_text_shows_storage_and_the_postgres_copy():
    from corec_node.cli import render_status

    local = render_status(status_answer(storage={"sqlite": "/var/lib/corec/corec.db", "postgres": None, "outbox": 0,
                                                 "sync_lag": 0.0, "errors": 0}))
    assert "storage:  sqlite /var/lib/corec/corec.db; postgres off" in local.splitlines()
    synced = render_status(status_answer(storage={"sqlite": "/d/corec.db", "postgres": "retrying", "connected": False,
                                                  "outbox": 12_345, "sync_lag": 7.25, "errors": 2,
                                                  "last_error": "connection refused"}))
    assert ("storage:  sqlite /d/corec.db; postgres retrying (not connected): outbox 12,345 rows, sync lag 7.2 s, "
            "last error: connection refused; 2 write errors") in synced.splitlines()


def test_members_filters_and_one_block_naming(cluster):
    import json

    web = cluster.start("web-1", extra_env={"COREC_NODE_TAGS": "role=web,zone=eu-1"}).wait_ready()
    db = cluster.start("db-1", join=[web.addr], extra_env={"COREC_NODE_TAGS": "role=db,zone=eu-1"}).wait_ready()
    eventually(lambda: web.ctl("status")["members"].get("alive") == 2, 20)

    def names(*flags: str) -> list[str]:
        out = cli("members", "--json", "--data-dir", str(web.data_dir), *flags)
        assert out.returncode == 0, out.stderr
        return sorted(m["name"] for m in json.loads(out.stdout))

    assert names() == ["db-1", "web-1"]
    assert names("--name", "web-*") == ["web-1"]
    assert names("--status", "dead", "left") == []
    assert names("--status", "alive", "--name", "db-?") == ["db-1"]
    text = cli("members", "--detailed", "--name", "db-*", "--data-dir", str(web.data_dir)).stdout
    assert "db-1" in text and "web-1" not in text
    # tags from each node's config, gossiped: web-1 shows db-1's, and filters on them
    eventually(lambda: names("--tag", "role=db") == ["db-1"], 20)
    assert names("--tag", "zone=eu-1") == ["db-1", "web-1"] and names("--tag", "zone=eu-1", "--tag", "role=web") == ["web-1"]
    assert names("--tag", "role=cache") == []
    members = json.loads(cli("members", "--json", "--data-dir", str(db.data_dir)).stdout)
    assert {m["name"]: m["tags"] for m in members} == {"db-1": {"role": "db", "zone": "eu-1"},
                                                        "web-1": {"role": "web", "zone": "eu-1"}}
    detailed = cli("members", "--detailed", "--data-dir", str(db.data_dir)).stdout.splitlines()
    assert detailed[0].split()[-1] == "TAGS" and any(line.endswith("role=web,zone=eu-1") for line in detailed)

    assert cli("send", "--to", db.addr, "--channel", "3", "--count", "2500").returncode == 0
    eventually(lambda: sum(r["count"] for r in web.ctl("blocks")) == 2500, 20)
    rows = json.loads(cli("blocks", "--json", "--data-dir", str(web.data_dir)).stdout)
    assert sorted(r["index"] for r in rows) == [0, 1, 2]
    assert all(r["block"] == (3 << 32 | r["index"]) and r["name"] == f"3:{r['index']}" for r in rows)
    table = cli("blocks", "--data-dir", str(web.data_dir)).stdout.splitlines()
    assert "ERRORS" in table[0].split() and sorted(line.split()[0] for line in table[1:4]) == ["3:0", "3:1", "3:2"]
    epoch = web.ctl("status")["placement_epoch"]
    assert {r["epoch"] for r in rows} == {epoch}
    owners = ", ".join(sorted({r["owner"] for r in rows}))
    assert table[-1].startswith(f"3 blocks, 2500 entities; map epoch {epoch}, rows from {owners}, latest tick ")
    # status and blocks answer from the same rows when no tick falls between the two reads
    def same_rows():
        before = web.ctl("blocks")
        st = web.ctl("status")
        return st["answered_by"] == sorted({r["owner"] for r in before}) and \
            st["rows_tick"] == max(r["tick"] for r in before)
    eventually(same_rows, 20, message="status names the owners and tick that blocks answers from")


def test_an_unusable_data_dir_or_a_taken_port_is_one_line_and_exit_2(tmp_path):
    import socket

    in_the_way = tmp_path / "a-file"
    in_the_way.write_text("")
    port = free_port()
    out = cli("run", "--name", "x", "--data-dir", str(in_the_way), "--listen", f"127.0.0.1:{port}")
    assert out.returncode == 2 and "Traceback" not in out.stdout + out.stderr
    assert out.stderr == f"corec-node: config error: data directory {in_the_way}: a file, not a directory (node.data_dir, --data-dir)\n"

    taken = socket.socket()
    taken.bind(("127.0.0.1", port))
    taken.listen()
    try:
        out = cli("run", "--name", "x", "--data-dir", str(tmp_path / "d"), "--listen", f"127.0.0.1:{port}")
    finally:
        taken.close()
    assert out.returncode == 2 and "Traceback" not in out.stdout + out.stderr
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"corec-node: config error: cannot bind 127.0.0.1:{port} (node.listen)")
    assert "Address already in use" in lines[0]


def test_monitor_streams_both_processes_lines_as_they_come(cluster):
    a = cluster.start("a").wait_ready()
    # every line a kept, then the new ones: b's join is shown whenever this monitor started
    watch = subprocess.Popen([*CLI, "monitor", "--lines", "2000", "--data-dir", str(a.data_dir)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # the latest lines kept, warnings only: a's start warned that CURVE is off
    warnings = subprocess.Popen([*CLI, "monitor", "--log-level", "warning", "--lines", "100",
                                 "--data-dir", str(a.data_dir)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        b = cluster.start("b", join=[a.addr]).wait_ready()  # a's mesh process logs b joining
        assert watch.stdout is not None
        seen = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = watch.stdout.readline()
            seen.append(line)
            if "event=member_changed" in line and "name=b" in line:
                break
        assert any("event=member_changed" in line and "node=a" in line for line in seen), seen[-5:]
        assert b.proc.poll() is None
    finally:
        for p in (watch, warnings):
            p.send_signal(signal.SIGINT)
    assert watch.wait(10) == 0
    assert warnings.wait(10) == 0
    shown = warnings.stdout.read().splitlines() if warnings.stdout else []
    assert any("event=security_off" in line for line in shown), shown[:5]
    assert all(("level=warning" in line or "level=error" in line) for line in shown), shown[:5]


def test_monitor_without_a_node_says_so():
    out = cli("monitor", "--data-dir", "/nonexistent/corec")
    assert out.returncode == 1 and out.stderr.startswith("corec-node: ") and len(out.stderr.splitlines()) == 1
