"""Real peer clusters on loopback, so the benchmarks measure Serf and etcd beside CoreC in
the same run on the same machine instead of quoting figures from elsewhere.

Every agent or member runs in its own process group and temp dir and is SIGKILLed on the
way out, whatever happened. Times come from the moment each process's log line reaches
its pipe (one reader thread per process), not from polling: a poll would add its own
interval to every figure, and reading logs is also how the CoreC side is timed.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Below the kernel's ephemeral range (32768+), where CoreC's test nodes get their ports
# (bind port 0), so a peer never takes a port a CoreC node is about to reuse.
PORT_LOW, PORT_HIGH = 20000, 32000


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports that are free for both TCP and UDP on loopback right now
    (Serf gossips over both on its bind port)."""
    ports: list[int] = []
    while len(ports) < count:
        port = random.randrange(PORT_LOW, PORT_HIGH)
        if port in ports:
            continue
        try:
            for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                with socket.socket(socket.AF_INET, kind) as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        ports.append(port)
    return ports


def wait_for(condition: Callable[[], Any], timeout: float, interval: float = 0.01, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"not true within {timeout} s: {what or condition}")
        time.sleep(interval)


def version(binary: str, *args: str, package: str | None = None) -> str | None:
    """The binary's own version line, with the distribution package's version when the
    two differ (Debian's serf 0.9.4 calls itself 0.8.2-dev); None when not installed."""
    if shutil.which(binary) is None:
        return None
    try:
        out = subprocess.run([binary, *args], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    line = out.strip().splitlines()[0] if out.strip() else binary
    line = line.replace(" Version:", "")  # etcd says "etcd Version: 3.4.23"
    if not line.lower().startswith(binary):
        line = f"{binary} {line}"
    if package and shutil.which("dpkg-query"):
        pkg = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", package], capture_output=True, text=True).stdout
        if pkg:
            line += f" (Debian package {package} {pkg})"
    return line


def serf_available() -> str | None:
    return version("serf", "version", package="serf")


def etcd_available() -> str | None:
    return version("etcd", "--version", package="etcd-server")


class LoggedProcess:
    """A process in its own group whose output lines are kept with their arrival time."""

    def __init__(self, argv: list[str], log_path: Path) -> None:
        self.argv = argv
        self.log_path = log_path
        self.lines: list[tuple[float, str]] = []
        self.lock = threading.Lock()
        self.proc: subprocess.Popen[str] | None = None
        self.reader: threading.Thread | None = None

    def start(self) -> "LoggedProcess":
        with self.lock:
            self.lines = []
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, text=True, bufsize=1, start_new_session=True)
        self.reader = threading.Thread(target=self._read, args=(self.proc,), daemon=True)
        self.reader.start()
        return self

    def _read(self, proc: subprocess.Popen[str]) -> None:
        with open(self.log_path, "a") as log:
            for line in proc.stdout:  # type: ignore[union-attr]
                now = time.time()
                with self.lock:
                    self.lines.append((now, line))
                log.write(f"{now:.6f} {line}")

    def matches(self, pattern: re.Pattern[str], after: float = 0.0) -> list[tuple[float, re.Match[str]]]:
        with self.lock:
            lines = list(self.lines)
        return [(t, m) for t, line in lines if t >= after and (m := pattern.search(line))]

    def kill(self) -> None:
        """SIGKILL the whole group and reap it."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        if self.reader is not None:
            self.reader.join(5)
        self.proc = None


class PeerCluster:
    """Processes under one temp dir, every one killed on close."""

    def __init__(self, prefix: str) -> None:
        self.root = Path(tempfile.mkdtemp(prefix=prefix))
        self.procs: list[LoggedProcess] = []

    def close(self) -> None:
        for p in self.procs:
            p.kill()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# Serf logs this the moment its member list turns the node failed (before event coalescing).
SERF_FAILED = re.compile(r"serf: EventMemberFailed: (\S+)")


class SerfCluster(PeerCluster):
    """N ``serf agent`` processes with the default (lan) profile, joined through s0."""

    def __init__(self, size: int) -> None:
        super().__init__("serf-bench-")
        ports = free_ports(2 * size)
        self.bind = [f"127.0.0.1:{p}" for p in ports[:size]]
        self.rpc = [f"127.0.0.1:{p}" for p in ports[size:]]
        self.names = [f"s{i}" for i in range(size)]
        self.procs = [LoggedProcess(["serf", "agent", f"-node={name}", f"-bind={self.bind[i]}",
                                     f"-rpc-addr={self.rpc[i]}", "-log-level=info"]
                                    + ([f"-join={self.bind[0]}"] if i else []),
                                    self.root / f"{name}.log")
                      for i, name in enumerate(self.names)]
        try:
            for i, p in enumerate(self.procs):
                p.start()
                wait_for(lambda: self.members(i) is not None, 10, 0.05, f"{self.names[i]} answers RPC")
        except BaseException:
            self.close()  # the caller's `with` has not begun, so nothing else would
            raise

    def members(self, i: int) -> dict[str, str] | None:
        """Member name -> status as agent ``i`` sees it; None if it does not answer."""
        try:
            out = subprocess.run(["serf", "members", f"-rpc-addr={self.rpc[i]}", "-format=json"],
                                 capture_output=True, text=True, timeout=5)
        except subprocess.TimeoutExpired:
            return None
        if out.returncode != 0:
            return None
        return {m["name"]: m["status"] for m in json.loads(out.stdout)["members"]}

    def all_alive(self) -> bool:
        want = dict.fromkeys(self.names, "alive")
        return all(self.members(i) == want for i in range(len(self.names)))


def serf_detection(size: int, kills: int) -> list[float]:
    """Seconds from SIGKILL of one agent until every survivor logs it failed, ``kills`` times
    (victims s1.. in turn, each restarted and seen alive by all before the next kill)."""
    out = []
    with SerfCluster(size) as cluster:
        for k in range(kills):
            v = 1 + k % (size - 1)
            victim, name = cluster.procs[v], cluster.names[v]
            survivors = [p for p in cluster.procs if p is not victim]
            wait_for(cluster.all_alive, 60, 0.2, "every serf agent sees every other alive")
            time.sleep(1.0)
            t0 = time.time()
            victim.kill()
            seen = wait_for(lambda: all(any(m.group(1) == name for _, m in p.matches(SERF_FAILED, t0)) for p in survivors)
                            and [min(t for t, m in p.matches(SERF_FAILED, t0) if m.group(1) == name) for p in survivors],
                            60, 0.01, f"every survivor logs {name} failed")
            out.append(max(seen) - t0)
            victim.start()
    return out


# raft's node loop logs each change of leader as it happens; a follower that never saw the
# leader go (merged into one Ready) logs "changed leader from X to Y" instead.
ETCD_LEADER = re.compile(r"raft\.node: ([0-9a-f]+) (?:elected leader|changed leader from [0-9a-f]+ to) ([0-9a-f]+) at term (\d+)")


class EtcdCluster(PeerCluster):
    """N ``etcd`` members with default timers (heartbeat 100 ms, election 1000 ms) and a
    static ``--initial-cluster`` on loopback."""

    def __init__(self, size: int) -> None:
        super().__init__("etcd-bench-")
        ports = free_ports(2 * size)
        self.client = [f"http://127.0.0.1:{p}" for p in ports[:size]]
        peer = [f"http://127.0.0.1:{p}" for p in ports[size:]]
        self.names = [f"e{i}" for i in range(size)]
        initial = ",".join(f"{name}={peer[i]}" for i, name in enumerate(self.names))
        self.procs = [LoggedProcess(["etcd", f"--name={name}", f"--data-dir={self.root / name}",
                                     f"--listen-client-urls={self.client[i]}", f"--advertise-client-urls={self.client[i]}",
                                     f"--listen-peer-urls={peer[i]}", f"--initial-advertise-peer-urls={peer[i]}",
                                     f"--initial-cluster={initial}", "--initial-cluster-state=new",
                                     "--initial-cluster-token=bench"],
                                    self.root / f"{name}.log")
                      for i, name in enumerate(self.names)]
        try:
            for p in self.procs:
                p.start()
        except BaseException:
            self.close()
            raise

    def status(self, i: int) -> dict[str, Any] | None:
        """Member ``i``'s own view (the /v3 maintenance status API); None if it does not answer."""
        req = urllib.request.Request(self.client[i] + "/v3/maintenance/status", data=b"{}",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=2) as r:
                return json.load(r)
        except OSError:
            return None

    def agreed(self, members: list[int]) -> tuple[int, int] | None:
        """(leader id, term) when every listed member names the same leader, else None."""
        views = set()
        for i in members:
            s = self.status(i)
            if s is None or not int(s.get("leader", 0)):
                return None
            views.add((int(s["leader"]), int(s["raftTerm"])))
        return views.pop() if len(views) == 1 else None

    def member_index(self, member_id: int) -> int:
        return next(i for i in range(len(self.names)) if int(self.status(i)["header"]["member_id"]) == member_id)


def etcd_failover(size: int, kills: int) -> list[float]:
    """Seconds from SIGKILL of the leader until every survivor has logged the same new
    leader, ``kills`` times (the killed member restarted on its data dir before the next)."""
    out = []
    with EtcdCluster(size) as cluster:
        everyone = list(range(size))
        for _ in range(kills):
            leader, _term = wait_for(lambda: cluster.agreed(everyone), 60, 0.05, "etcd members agree on a leader")
            v = cluster.member_index(leader)
            victim = cluster.procs[v]
            survivors = [i for i in everyone if i != v]
            time.sleep(1.0)
            t0 = time.time()
            victim.kill()

            def settled() -> list[float] | None:
                last = []
                for i in survivors:
                    seen = cluster.procs[i].matches(ETCD_LEADER, t0)
                    if not seen:
                        return None
                    last.append((int(seen[-1][1].group(2), 16), int(seen[-1][1].group(3))))
                if len(set(last)) != 1 or last[0][0] == leader:
                    return None
                new, term = last[0]
                return [min(t for t, m in cluster.procs[i].matches(ETCD_LEADER, t0)
                            if int(m.group(2), 16) == new and int(m.group(3)) == term) for i in survivors]

            seen = wait_for(settled, 60, 0.01, "etcd survivors log one new leader")
            out.append(max(seen) - t0)
            wait_for(lambda: (a := cluster.agreed(survivors)) and a[0] != leader, 10, 0.05,
                     "etcd survivors' status names the new leader")
            victim.start()
    return out


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Serf detection and etcd failover on loopback, alone.")
    parser.add_argument("--sizes", default="3,5")
    parser.add_argument("--kills", type=int, default=3)
    args = parser.parse_args()
    for n in (int(s) for s in args.sizes.split(",")):
        if serf_available():
            print(f"serf detection, {n} agents:", [round(x, 3) for x in serf_detection(n, args.kills)])
        if etcd_available():
            print(f"etcd failover, {n} members:", [round(x, 3) for x in etcd_failover(n, args.kills)])
