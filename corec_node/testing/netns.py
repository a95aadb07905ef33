"""A fault test bed on a real network: one network namespace per node, veth pairs, bridges.

Every node runs inside a namespace of its own (``ip netns exec``) with one interface,
``eth0``, addressed ``10.77.0.N/24``. The other end of its veth pair sits in a *switch*
namespace private to the lab, attached to one of the lab's bridges (one per side of a
partition). Cutting a link moves that end to another bridge, detaches it, or sets it down.

The bridges live in the lab's own switch namespace rather than in the root namespace:
the host's iptables/nftables FORWARD policy and its ``bridge-nf-call-*`` settings cannot
touch the lab's traffic (``br_netfilter``'s sysctls are per namespace since Linux 5.3,
and the lab sets them to 0 in its switch namespace), nothing is added to the host's
interface list, and parallel labs can reuse the same names and addresses. Deleting the
switch namespace removes every bridge and veth end in it.

Names: ``corec-<pid>-<n>-sw`` and ``corec-<pid>-<n>-<node>``. At start a lab deletes
namespaces left by labs whose process is gone (and any of its own exact prefix).

The control socket is a unix socket in the node's data directory: a path on the shared
filesystem (``ip netns exec`` changes the network namespace, not the files), so the test
process talks to it directly with :func:`corec_node.shell.control.request`.

Needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN) and iproute2; :func:`available` says.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

from corec_node.log import parse_line
from corec_node.testing.cluster import NodeProc

__all__ = ["LabNode", "NetLab", "available", "check_leaders", "leader_events"]

NS_PREFIX = "corec-"
SUBNET = "10.77.0"
DEFAULT_PORT = 7400  # every node has its own address, so all use the same port (< 32768)
_counter = itertools.count()
_NS_RE = re.compile(r"^corec-(\d+)-(\d+)-")


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if check and out.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {out.stderr.strip() or out.returncode}")
    return out


def _netns_list() -> list[str]:
    out = _ip("netns", "list", check=False)
    return [line.split()[0] for line in out.stdout.splitlines() if line.strip()]


def _kill_ns_processes(ns: str) -> None:
    out = _ip("netns", "pids", ns, check=False)
    for pid in out.stdout.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


def _delete_ns(ns: str) -> None:
    _kill_ns_processes(ns)
    _ip("netns", "del", ns, check=False)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup_leftovers(prefix: str | None = None) -> list[str]:
    """Delete lab namespaces whose owner process is gone, and those of ``prefix``."""
    removed = []
    for ns in _netns_list():
        m = _NS_RE.match(ns)
        if m is None:
            continue
        if (prefix is not None and ns.startswith(prefix)) or not _pid_alive(int(m.group(1))):
            _delete_ns(ns)
            removed.append(ns)
    return removed


def available() -> tuple[bool, str]:
    """(True, "") if this process can make network namespaces, veths and bridges; else why not."""
    if sys.platform != "linux":
        return False, f"network namespaces need Linux, this is {sys.platform}"
    if shutil.which("ip") is None:
        return False, "iproute2's `ip` is not installed"
    if os.geteuid() != 0:
        return False, "network namespaces need root (CAP_NET_ADMIN, CAP_SYS_ADMIN); running as uid " + str(os.geteuid())
    ns = f"{NS_PREFIX}{os.getpid()}-probe-{next(_counter)}"
    try:
        _ip("netns", "add", ns)
        try:
            _ip("-n", ns, "link", "add", "br0", "type", "bridge")
            _ip("-n", ns, "link", "add", "v0", "type", "veth", "peer", "name", "v1")
            _ip("-n", ns, "link", "set", "v0", "master", "br0")
            out = subprocess.run(["ip", "netns", "exec", ns, "true"], capture_output=True, text=True, timeout=30, check=False)
            if out.returncode != 0:
                raise RuntimeError(f"ip netns exec: {out.stderr.strip()}")
        finally:
            _ip("netns", "del", ns, check=False)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        return False, f"cannot make a network namespace with a bridge and a veth pair: {exc}"
    return True, ""


class LabNode(NodeProc):
    """A ``corec-node run`` process inside its own namespace (``NodeProc``'s queries work as-is)."""

    def __init__(self, lab: NetLab, name: str, ip: str, *, join: Sequence[str] = (), port: int = DEFAULT_PORT,
                 args: Sequence[str] = (), extra_env: Mapping[str, str] | None = None) -> None:
        super().__init__(name, lab.root, join=list(join), port=port, pub_port=port + 1, args=list(args),
                         extra_env=dict(extra_env or {}))
        self.lab = lab
        self.ip = ip
        self.addr = f"{ip}:{port}"

    def start(self) -> LabNode:
        env = {"COREC_MESH_PUB_LISTEN": f"{self.ip}:{self.pub_port}", "COREC_MESH_PROFILE": "test",
               "PYTHONUNBUFFERED": "1", **self.extra_env}
        cmd = [sys.executable, "-m", "corec_node", "run", "--name", self.name, "--data-dir", str(self.data_dir),
               "--listen", self.addr, *self.args]
        if self.join:
            cmd += ["--join", *self.join]
        self.proc, self._log = self.lab.run(self.name, cmd, env, self.log_path)
        return self

    def stop(self, timeout: float = 10.0) -> int | None:
        running = self.proc is not None and self.proc.poll() is None
        code = super().stop(timeout)
        if running:
            self.lab._note_exit(self.name)
        return code

    def kill(self) -> None:
        running = self.proc is not None and self.proc.poll() is None
        super().kill()
        if running:
            self.lab._note_exit(self.name)


class NetLab:
    """Namespaces, veths and bridges for a set of nodes; everything is gone after ``close``.

    ``lab.add_node("n1", side="a")`` makes the namespace; ``lab.start("n1", join=[...])``
    runs ``corec-node run`` in it. Topology changes are stamped (``time.time()``) in
    ``lab.history`` so :func:`check_leaders` knows who could see whom, and when.
    """

    def __init__(self, root: Path | str | None = None, *, grace: float = 2.0) -> None:
        self.root = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="corec-lab-"))
        self.prefix = f"{NS_PREFIX}{os.getpid()}-{next(_counter)}-"
        self.switch = self.prefix + "sw"
        self.grace = grace  # SIGTERM -> SIGKILL
        self.nodes: dict[str, LabNode] = {}
        self.ns: dict[str, str] = {}  # node -> namespace
        self.veth: dict[str, str] = {}  # node -> its veth end in the switch namespace
        self.ip: dict[str, str] = {}
        self.bridge_of: dict[str, str | None] = {}  # None: detached (isolated)
        self.down: set[str] = set()
        self.bridges: set[str] = set()
        self.procs: list[subprocess.Popen[bytes]] = []
        self._logs: list[Any] = []
        self.history: list[tuple[float, dict[str, frozenset[str]]]] = []  # (since, node -> nodes it reaches)
        self.exits: dict[str, list[float]] = {}  # node -> times its process was stopped
        self._closed = False
        cleanup_leftovers(self.prefix)
        try:
            _ip("netns", "add", self.switch)
            _ip("-n", self.switch, "link", "set", "lo", "up")
            for key in ("bridge-nf-call-iptables", "bridge-nf-call-ip6tables", "bridge-nf-call-arptables"):
                # only present once br_netfilter is loaded; per namespace: the host keeps its own
                subprocess.run(["ip", "netns", "exec", self.switch, "sysctl", "-qw", f"net.bridge.{key}=0"],
                               capture_output=True, timeout=30, check=False)
            self._bridge("a")
        except BaseException:
            self.close()
            raise

    # -- building -------------------------------------------------------------------

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _bridge(self, side: str) -> str:
        br = f"br-{side}"
        if br not in self.bridges:
            _ip("-n", self.switch, "link", "add", br, "type", "bridge", "stp_state", "0", "forward_delay", "0")
            _ip("-n", self.switch, "link", "set", br, "up")
            self.bridges.add(br)
        return br

    def add_node(self, name: str, side: str = "a") -> str:
        """A namespace for ``name`` with ``eth0`` on bridge ``br-<side>``; returns its IP."""
        if name in self.ns:
            raise ValueError(f"node {name!r} exists")
        index = len(self.ns) + 1
        if index > 250:
            raise ValueError("at most 250 nodes per lab")
        ns, veth, ip = self.prefix + name, f"v-{index}", f"{SUBNET}.{index}"
        self.ns[name], self.veth[name], self.ip[name] = ns, veth, ip
        _ip("netns", "add", ns)
        _ip("-n", self.switch, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")
        _ip("-n", self.switch, "link", "set", veth, "master", self._bridge(side))
        _ip("-n", self.switch, "link", "set", veth, "up")
        self.bridge_of[name] = f"br-{side}"
        self._stamp()
        return ip

    def node(self, name: str, *, side: str = "a", join: Sequence[str] = (), port: int = DEFAULT_PORT,
             args: Sequence[str] = (), env: Mapping[str, str] | None = None) -> LabNode:
        """Add a namespace (unless it exists) and a :class:`LabNode` for it (not started)."""
        if name not in self.ns:
            self.add_node(name, side)
        node = LabNode(self, name, self.ip[name], join=join, port=port, args=args, extra_env=env)
        self.nodes[name] = node
        return node

    def start(self, name: str, **kw: Any) -> LabNode:
        return self.node(name, **kw).start()

    def run(self, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None,
            log_path: Path | None = None) -> tuple[subprocess.Popen[bytes], Any]:
        """Start ``argv`` inside ``name``'s namespace, stdout and stderr appended to ``log_path``.

        ``ip netns exec`` execs the command, so the returned process is the command itself."""
        log_path = log_path or self.root / f"{name}.log"
        log = open(log_path, "ab")  # noqa: SIM115 - closed by close() or the node's stop()
        self._logs.append(log)
        full_env = dict(os.environ)
        full_env.update(env or {})
        proc = subprocess.Popen(["ip", "netns", "exec", self.ns[name], *argv], stdout=log,
                                stderr=subprocess.STDOUT, env=full_env)
        self.procs.append(proc)
        return proc, log

    def _note_exit(self, name: str) -> None:
        self.exits.setdefault(name, []).append(time.time())

    # -- faults ---------------------------------------------------------------------

    def _set_master(self, name: str, bridge: str | None) -> None:
        if self.bridge_of.get(name) == bridge:
            return
        if bridge is None:
            _ip("-n", self.switch, "link", "set", self.veth[name], "nomaster")
        else:
            _ip("-n", self.switch, "link", "set", self.veth[name], "master", self._bridge(bridge[3:]))
        self.bridge_of[name] = bridge

    def partition(self, groups: Iterable[Iterable[str]]) -> None:
        """Each group on a bridge of its own; nodes in no group are detached (isolated)."""
        placed: dict[str, str] = {}
        for i, group in enumerate(groups):
            for name in group:
                if name in placed:
                    raise ValueError(f"{name} is in two groups")
                placed[name] = f"br-{chr(ord('a') + i)}"
        for name in self.ns:
            self._set_master(name, placed.get(name))
        self._stamp()

    def place(self, name: str, side: str) -> None:
        """Move one node's link to bridge ``br-<side>``."""
        self._set_master(name, f"br-{side}")
        self._stamp()

    def heal(self) -> None:
        """Every link up, every node on bridge ``br-a``."""
        for name in self.ns:
            self._set_master(name, "br-a")
            if name in self.down:
                _ip("-n", self.switch, "link", "set", self.veth[name], "up")
        self.down.clear()
        self._stamp()

    def isolate(self, name: str) -> None:
        self._set_master(name, None)
        self._stamp()

    def link_down(self, name: str) -> None:
        _ip("-n", self.switch, "link", "set", self.veth[name], "down")
        self.down.add(name)
        self._stamp()

    def link_up(self, name: str) -> None:
        _ip("-n", self.switch, "link", "set", self.veth[name], "up")
        self.down.discard(name)
        self._stamp()

    def reach(self) -> dict[str, frozenset[str]]:
        """node -> the nodes on its side (itself included) in the current topology."""
        out = {}
        for name in self.ns:
            br = self.bridge_of.get(name)
            if br is None or name in self.down:
                out[name] = frozenset({name})
            else:
                out[name] = frozenset(n for n in self.ns if self.bridge_of.get(n) == br and n not in self.down)
        return out

    def _stamp(self) -> None:
        self.history.append((time.time(), self.reach()))

    # -- teardown -------------------------------------------------------------------

    def close(self) -> None:
        """Kill every process (SIGTERM, then SIGKILL after the grace), delete every namespace."""
        if self._closed:
            return
        self._closed = True
        try:
            live = [p for p in self.procs if p.poll() is None]
            for p in live:
                try:
                    p.send_signal(signal.SIGCONT)
                    p.terminate()
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + self.grace
            for p in live:
                try:
                    p.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    p.kill()
            for p in live:
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    pass
            for name, node in self.nodes.items():
                if node.proc in live:
                    self._note_exit(name)
        finally:
            for log in self._logs:
                try:
                    log.close()
                except OSError:
                    pass
            for ns in [*self.ns.values(), self.switch]:
                _delete_ns(ns)
            for ns in _netns_list():  # anything of ours that a failed step left half-made
                if ns.startswith(self.prefix):
                    _delete_ns(ns)

    # -- reading --------------------------------------------------------------------

    def log_paths(self) -> dict[str, Path]:
        return {name: node.log_path for name, node in self.nodes.items()}

    def check(self, voters: Iterable[str], **kw: Any) -> list[str]:
        """:func:`check_leaders` over this lab's logs and topology history."""
        return check_leaders(self.log_paths(), self.history, voters, exits=self.exits, **kw)


# -- the checker --------------------------------------------------------------------


def _ts(value: str) -> float:
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


def leader_events(log_path: Path) -> list[tuple[float, str, str | None, int]]:
    """(wall time, node, leader or None, term) for every ``leader_changed`` line of a log."""
    out = []
    try:
        text = Path(log_path).read_text(errors="replace")
    except FileNotFoundError:
        return out
    for line in text.splitlines():
        if not line.startswith("ts=") or "event=leader_changed" not in line:
            continue
        e = parse_line(line)
        if e.get("event") != "leader_changed":
            continue
        leader = e.get("leader")
        out.append((_ts(e["ts"]), e.get("node", ""), None if leader in (None, "", "null") else leader, int(e["term"])))
    return out


def _fmt(t: float, t0: float) -> str:
    return f"+{t - t0:.2f}s"


def check_leaders(
    logs: Mapping[str, Path],
    history: Sequence[tuple[float, Mapping[str, frozenset[str]]]],
    voters: Iterable[str],
    *,
    exits: Mapping[str, Sequence[float]] | None = None,
    election_grace: float = 1.0,
    step_down_grace: float = 5.0,
    now: float | None = None,
) -> list[str]:
    """Violations of the election's safety in the nodes' leader histories; empty if none.

    - two different leaders named for one term (by any nodes' views);
    - a node that became leader (its own ``leader_changed leader=<itself>``) while its side
      of the network held no majority of ``voters`` (the committed cluster: fresh joiners
      do not count), except within ``election_grace`` (the election timeout max) of a
      topology change;
    - a leader that kept leading on a minority side longer than ``step_down_grace`` after
      the topology change that put it there.

    ``history`` is ``[(since, node -> nodes on its side)]`` in time order (``NetLab.history``).
    """
    voters = frozenset(voters)
    majority = len(voters) // 2 + 1
    exits = exits or {}
    now = time.time() if now is None else now
    # by time and node only: one node's two changes in one millisecond keep their log order
    # (and a leader of None is never compared with a name)
    events = sorted((e for path in logs.values() for e in leader_events(path)), key=lambda e: (e[0], e[1]))
    t0 = history[0][0] if history else (events[0][0] if events else 0.0)
    violations: list[str] = []

    # 1. one leader per term, across every node's view
    claims: dict[int, dict[str, list[tuple[float, str]]]] = {}
    for t, node, leader, term in events:
        if leader is not None:
            claims.setdefault(term, {}).setdefault(leader, []).append((t, node))
    for term in sorted(claims):
        if len(claims[term]) > 1:
            parts = [f"{leader} (first seen by {seen[0][1]} at {_fmt(seen[0][0], t0)}"
                     f"{', self-elected' if any(n == leader for _, n in seen) else ''})"
                     for leader, seen in sorted(claims[term].items(), key=lambda kv: kv[1][0][0])]
            violations.append(f"term {term}: {len(parts)} leaders: " + ", ".join(parts))

    def side_at(node: str, t: float) -> frozenset[str]:
        side = frozenset({node})
        for since, reach in history:
            if since > t:
                break
            side = reach.get(node, frozenset({node}))
        return side

    def minority(node: str, t: float) -> bool:
        return len(side_at(node, t) & voters) < majority

    changes = [since for since, _ in history]

    def near_change(t: float, grace: float) -> bool:
        return any(abs(t - c) <= grace for c in changes)

    # 2. elected on a minority side; 3. kept leading there
    for node in logs:
        own = [e for e in events if e[1] == node]
        node_exits = sorted(exits.get(node, ()))
        for i, (t, _, leader, term) in enumerate(own):
            if leader != node:
                continue
            side = side_at(node, t)
            if minority(node, t) and not near_change(t, election_grace):
                violations.append(
                    f"{node} became leader in term {term} at {_fmt(t, t0)} on a minority side "
                    f"{sorted(side)} ({len(side & voters)} of {len(voters)} voters)")
            end = own[i + 1][0] if i + 1 < len(own) else now
            end = min([end, *[x for x in node_exits if x >= t]])
            # walk the topology intervals inside [t, end]; a minority run is timed from the
            # topology change that began it
            bounds = [t, *[c for c in changes if t < c < end], end]
            run_start: float | None = None
            for a, b in itertools.pairwise(bounds):
                if not minority(node, a):
                    run_start = None
                    continue
                if run_start is None:
                    run_start = max([c for c in changes if c <= a], default=a)
                if b - run_start > step_down_grace:
                    violations.append(
                        f"{node} kept leading term {term} on a minority side {sorted(side_at(node, a))} "
                        f"from {_fmt(run_start, t0)} to {_fmt(b, t0)} ({b - run_start:.1f} s > {step_down_grace} s)")
                    break
    return violations
