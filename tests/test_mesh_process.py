"""A node's two processes, on real processes: a stopped (SIGSTOP) mesh process is noticed by
the node process, which says so in one line and stops the watchdog's pings; when it
continues, the node answers again. A SIGKILLed mesh process stops the node. ``systemctl
stop`` signals both processes: the node then exits 0 whichever leaves first."""

from __future__ import annotations

import os
import signal

from corec_node.shell.control import ControlError
from corec_node.shell.mesh_process import MESH_SILENCE_BOUND
from corec_node.shell.node import STOP_SIGNAL_GRACE
from corec_node.testing.cluster import child_pids, eventually


def _status_error(node) -> str | None:
    try:
        node.ctl("status")
    except ControlError as exc:
        return str(exc)
    return None


def _named_stall(node) -> str | None:
    error = _status_error(node)
    return error if error is not None and "has not reported" in error else None


def test_a_stopped_mesh_process_is_named_and_the_node_answers_again_after(cluster):
    a = cluster.start("a").wait_ready()
    (mesh_pid,) = child_pids(a.proc.pid)
    os.kill(mesh_pid, signal.SIGSTOP)
    try:
        assert "did not answer status within" in (_status_error(a) or "")  # before the bound: an honest wait
        error = eventually(lambda: _named_stall(a), timeout=MESH_SILENCE_BOUND + 10,
                           message="status reports the stopped mesh process")
        assert "mesh process has not reported" in error and str(mesh_pid) in error
        events = [e for e in a.log_events() if e.get("event") == "mesh_process_stalled"]
        assert len(events) == 1 and "watchdog pings stop" in events[0]["detail"]
        assert a.proc.poll() is None  # the node process stays up: systemd's watchdog decides
    finally:
        os.kill(mesh_pid, signal.SIGCONT)
    eventually(lambda: _status_error(a) is None, timeout=10, message="status answers again")
    assert a.ctl("status")["name"] == "a"
    eventually(lambda: any(e.get("event") == "mesh_process_resumed" for e in a.log_events()), timeout=5,
               message="the node logs that the mesh process reports again")


def test_a_killed_mesh_process_stops_the_node_with_one_line(cluster):
    a = cluster.start("a").wait_ready()
    (mesh_pid,) = child_pids(a.proc.pid)
    os.kill(mesh_pid, signal.SIGKILL)
    eventually(lambda: a.proc.poll() is not None, timeout=10, message="the node process exits")
    assert a.proc.returncode == 1
    exited = [e for e in a.log_events() if e.get("event") == "mesh_process_exited"]
    assert len(exited) == 1 and exited[0]["code"] == "-9"


def _gone(pid: int) -> bool:
    """Exited: no /proc entry, or a zombie its parent has not reaped yet."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_a_stop_that_reaches_the_mesh_process_first_is_still_a_clean_stop(cluster):
    a = cluster.start("a").wait_ready()
    (mesh_pid,) = child_pids(a.proc.pid)
    os.kill(mesh_pid, signal.SIGTERM)  # systemd signals the whole group; this one was handled first
    eventually(lambda: _gone(mesh_pid), timeout=10, message="the mesh process leaves")
    assert a.proc.poll() is None  # the node waits for its own signal
    a.proc.send_signal(signal.SIGTERM)
    assert a.proc.wait(15) == 0
    events = a.log_events()
    assert not [e for e in events if e.get("event") == "mesh_process_exited"]
    assert [e["code"] for e in events if e.get("event") == "stopped"] == ["0"]


def test_a_mesh_process_stopped_alone_stops_the_node_with_an_error(cluster):
    a = cluster.start("a").wait_ready()
    (mesh_pid,) = child_pids(a.proc.pid)
    os.kill(mesh_pid, signal.SIGTERM)
    eventually(lambda: a.proc.poll() is not None, timeout=STOP_SIGNAL_GRACE + 10, message="the node process exits")
    assert a.proc.returncode == 1
    exited = [e for e in a.log_events() if e.get("event") == "mesh_process_exited"]
    assert len(exited) == 1 and exited[0]["code"] == "0"
