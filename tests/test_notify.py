"""The systemd notify protocol against a real unix datagram socket standing in for systemd."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from meshutil import free_port

from corec_node.shell.systemd import Notifier

pytestmark = pytest.mark.timeout(60)


class FakeSystemd:
    """A bound AF_UNIX datagram socket, like the one systemd passes in NOTIFY_SOCKET."""

    def __init__(self, abstract: bool = False) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._dir: str | None = None
        if abstract:
            name = f"corec-test-{uuid.uuid4().hex}"
            self.sock.bind("\0" + name)
            self.env_value = "@" + name
        else:
            self._dir = tempfile.mkdtemp(prefix="sd-")  # short: sun_path holds 107 bytes
            path = os.path.join(self._dir, "notify")
            self.sock.bind(path)
            self.env_value = path

    def recv(self, timeout: float = 5.0) -> str | None:
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(4096).decode()
        except TimeoutError:
            return None

    def drain(self) -> list[str]:
        out = []
        while (msg := self.recv(0.05)) is not None:
            out.append(msg)
        return out

    def close(self) -> None:
        self.sock.close()
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)


@pytest.fixture
def systemd():
    fake = FakeSystemd()
    yield fake
    fake.close()


def fields(datagram: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in datagram.split("\n") if line)


def test_disabled_without_notify_socket():
    n = Notifier.from_env({})
    assert not n.enabled
    assert n.watchdog_interval() is None
    assert (n.ready("x"), n.status("x"), n.watchdog(), n.watchdog_due(), n.stopping()) == (False,) * 5
    assert n.sent == 0 and n.failures == 0


def test_messages_reach_the_socket(systemd):
    n = Notifier.from_env({"NOTIFY_SOCKET": systemd.env_value})
    assert n.enabled
    assert n.ready("serving on 127.0.0.1:7400")
    assert fields(systemd.recv()) == {"READY": "1", "STATUS": "serving on 127.0.0.1:7400"}
    assert n.status("members 3 alive,\nleader a (term 2)")
    assert systemd.recv() == "STATUS=members 3 alive, leader a (term 2)"  # one line: a newline would start a new key
    assert n.watchdog()
    assert systemd.recv() == "WATCHDOG=1"
    assert n.stopping()
    assert systemd.recv() == "STOPPING=1"
    assert n.sent == 4 and n.failures == 0
    n.close()


def test_abstract_socket():
    fake = FakeSystemd(abstract=True)
    try:
        n = Notifier.from_env({"NOTIFY_SOCKET": fake.env_value})
        assert n.ready()
        assert fake.recv() == "READY=1"
    finally:
        fake.close()


def test_unsupported_socket_form_is_disabled():
    n = Notifier.from_env({"NOTIFY_SOCKET": "vsock:2:1234", "WATCHDOG_USEC": "1000000"})
    assert not n.enabled and n.watchdog_interval() is None and not n.ready()


@pytest.mark.parametrize(("env", "interval"), [
    ({"WATCHDOG_USEC": "200000"}, 0.1),
    ({"WATCHDOG_USEC": "10000000"}, 5.0),
    ({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": str(os.getpid())}, 0.1),
    ({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": "1"}, None),  # meant for another process
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "soon"}, None),
    ({}, None),
])
def test_watchdog_interval_is_half_the_timeout(systemd, env, interval):
    n = Notifier.from_env({"NOTIFY_SOCKET": systemd.env_value, **env})
    assert n.watchdog_interval() == interval


def test_watchdog_interval_needs_the_socket():
    assert Notifier.from_env({"WATCHDOG_USEC": "200000"}).watchdog_interval() is None


def test_watchdog_due_pings_once_per_interval(systemd):
    n = Notifier.from_env({"NOTIFY_SOCKET": systemd.env_value, "WATCHDOG_USEC": "2000000"})  # ping every 1 s
    assert n.watchdog_due(now=100.0)
    assert not n.watchdog_due(now=100.5)
    assert not n.watchdog_due(now=100.99)
    assert n.watchdog_due(now=101.0)
    assert n.watchdog_due(now=103.0)
    assert systemd.drain() == ["WATCHDOG=1"] * 3


def test_failed_send_is_counted_not_raised(tmp_path):
    n = Notifier.from_env({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    assert n.enabled
    assert not n.ready("x")
    assert not n.watchdog()
    assert n.failures == 2 and n.sent == 0


def test_socket_gone_later_is_counted(systemd):
    n = Notifier.from_env({"NOTIFY_SOCKET": systemd.env_value})
    assert n.status("one")
    systemd.close()
    assert not n.status("two")
    assert n.failures == 1 and n.sent == 1


def test_never_blocks_on_a_full_receiver(systemd):
    """systemd not reading: the queue fills, sends fail with EAGAIN at once, none blocks."""
    n = Notifier.from_env({"NOTIFY_SOCKET": systemd.env_value})
    results = [n.status(f"status {i} " + "x" * 1000) for i in range(5000)]
    assert results[0] is True
    assert n.failures > 0 and n.sent + n.failures == 5000


def test_unset_removes_the_variables(monkeypatch, systemd):
    monkeypatch.setenv("NOTIFY_SOCKET", systemd.env_value)
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    n = Notifier.from_env(unset=True)
    assert n.enabled and n.watchdog_interval() == 0.1
    assert "NOTIFY_SOCKET" not in os.environ and "WATCHDOG_USEC" not in os.environ


# -- end to end: a real node process (passes once node.py drives the Notifier) --------


def test_node_speaks_notify_protocol(systemd, tmp_path):
    port, pub_port = free_port(), free_port()
    env = dict(os.environ, NOTIFY_SOCKET=systemd.env_value, WATCHDOG_USEC="200000",
               COREC_MESH_PUB_LISTEN=f"127.0.0.1:{pub_port}", PYTHONUNBUFFERED="1")
    env.pop("WATCHDOG_PID", None)
    log_path = tmp_path / "node.log"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "corec_node", "run", "--name", "n", "--data-dir", str(tmp_path / "d"),
             "--listen", f"127.0.0.1:{port}"],
            stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            seen: list[str] = []  # the notify keys in arrival order
            deadline = time.monotonic() + 20
            while seen.count("WATCHDOG") < 3 and time.monotonic() < deadline and proc.poll() is None:
                msg = systemd.recv(0.5)
                if msg is not None:
                    seen.extend(k for k in fields(msg) if k != "STATUS")
            assert "READY" in seen, f"no READY=1 from the node; got {seen}; log:\n{log_path.read_text()}"
            assert seen.count("WATCHDOG") >= 3, f"fewer than 3 WATCHDOG=1 (WATCHDOG_USEC=200000); got {seen}"
            assert seen.index("READY") < seen.index("WATCHDOG"), f"WATCHDOG before READY: {seen}"
            assert seen.count("READY") == 1
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0
            seen.extend(k for msg in systemd.drain() for k in fields(msg) if k != "STATUS")
            assert "STOPPING" in seen, f"no STOPPING=1 after SIGTERM; got {seen}"
            assert seen.index("STOPPING") > seen.index("READY")
            assert seen.count("READY") == 1
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    assert "Traceback" not in Path(log_path).read_text()
