"""Local clusters of real node processes on loopback: used by tests, benchmarks and the demo."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from corec_node.log import parse_line
from corec_node.shell.control import ControlError, request

PORT_RANGE = (20_000, 32_000)  # below the kernel's ephemeral range (32768 and up): the outgoing
# connections of many nodes are never given a port a test node is about to bind
_handed_out: set[int] = set()


def free_port() -> int:
    """A port below the ephemeral range that binds now and was not handed out before in this
    process, free for the test to use (with the next two, by a node's defaults)."""
    rng = random.Random()
    while True:
        port = rng.randrange(*PORT_RANGE)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port


def eventually(condition: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05, message: str = "") -> Any:
    """Poll ``condition`` until it returns a truthy value; fail with ``message`` on timeout."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while True:
        try:
            value = condition()
            if value:
                return value
        except (ControlError, OSError, KeyError) as exc:
            last_exc = exc
        if time.monotonic() >= deadline:
            raise AssertionError(f"not true within {timeout} s: {message or condition}" + (f" (last error: {last_exc})" if last_exc else ""))
        time.sleep(interval)


def child_pids(pid: int) -> list[int]:
    """The direct children of ``pid`` (Linux /proc)."""
    out: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            text = (task / "children").read_text()
            out.extend(int(x) for x in text.split())
    except OSError:
        pass
    return out


class NodeProc:
    """One real ``corec-node run`` process with its own data directory and ports."""

    def __init__(self, name: str, root: Path, *, join: list[str] | None = None, extra_env: dict[str, str] | None = None,
                 port: int | None = None, pub_port: int | None = None, args: list[str] | None = None,
                 data_name: str | None = None, data_dir: Path | None = None, cwd: Path | None = None,
                 data_port: int | None = None, python: str | None = None) -> None:
        """``cwd``: where the process runs (``python -m`` puts it first on sys.path: a node
        of another version runs from a directory holding that version's package). ``python``:
        the interpreter (another virtualenv's runs the release installed there)."""
        self.name = name
        self.data_dir = data_dir or root / (data_name or name)
        self.port = port or free_port()
        self.pub_port = pub_port or free_port()
        self.data_port = data_port or free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.join = join or []
        self.extra_env = extra_env or {}
        self.args = args or []
        self.cwd = cwd
        self.python = python or sys.executable
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = root / f"{data_name or name}.log"

    def start(self) -> NodeProc:
        env = dict(os.environ)
        env.update({"COREC_MESH_PUB_LISTEN": f"127.0.0.1:{self.pub_port}",
                    "COREC_MESH_DATA_LISTEN": f"127.0.0.1:{self.data_port}", "PYTHONUNBUFFERED": "1"})
        env.update(self.extra_env)
        cmd = [self.python, "-m", "corec_node", "run", "--name", self.name, "--data-dir", str(self.data_dir),
               "--listen", self.addr, *self.args]
        if self.join:
            cmd += ["--join", *self.join]
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=self.cwd)
        return self

    def wait_ready(self, timeout: float = 15.0) -> NodeProc:
        eventually(lambda: self.proc.poll() is None and self.ctl("status"), timeout, message=f"{self.name} ready")
        return self

    def ctl(self, cmd: str, **args: Any) -> Any:
        return request(self.data_dir / "control.sock", cmd, timeout=5.0, **args)

    def voters(self) -> list[str]:
        """The voters of the configuration this node holds, if it knows it committed."""
        r = self.ctl("voters")
        return sorted(v["name"] for v in r["voters"]) if r["committed"] else []

    def members(self) -> dict[str, str]:
        return {m["name"]: m["status"] for m in self.ctl("members")}

    def log_events(self) -> list[dict[str, str]]:
        return [parse_line(line) for line in self.log_path.read_text(errors="replace").splitlines() if line.startswith("ts=")]

    def pids(self) -> list[int]:
        """The node's processes: the node process and its mesh process (its child)."""
        if self.proc is None or self.proc.poll() is not None:
            return []
        return [self.proc.pid, *child_pids(self.proc.pid)]

    def signal(self, sig: int) -> None:
        """Signal the whole node (both of its processes): a SIGSTOP stops it all."""
        for pid in self.pids():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        """SIGKILL: the node gets no chance to say goodbye."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode


def voters_agree(nodes: list[NodeProc], names: list[str] | None = None) -> bool:
    """Every node holds the same committed voter configuration (of ``names``, if given):
    the leader has promoted the members that joined (mesh/voters.py, rule 7)."""
    views = [n.voters() for n in nodes]
    want = sorted(names) if names is not None else views[0]
    return bool(want) and all(v == want for v in views)


class Cluster:
    """Starts nodes and guarantees they are all gone when the test ends."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root or tempfile.mkdtemp(prefix="corec-test-"))
        self.root.mkdir(parents=True, exist_ok=True)
        self.nodes: list[NodeProc] = []

    def start(self, name: str, **kw: Any) -> NodeProc:
        node = NodeProc(name, self.root, **kw).start()
        self.nodes.append(node)
        return node

    def close(self) -> None:
        for node in self.nodes:
            try:
                node.stop(5)
            except Exception:
                node.kill()
