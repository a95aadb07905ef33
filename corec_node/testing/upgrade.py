"""A rolling upgrade (or restart) under a producer's stream, on real node processes: three
nodes started on one release, each stopped and started again on this tree's code one at a
time, the leader among them, while a producer sends rounds with ``acks=all``; then every
node's aggregates are compared with the records sent. Used by ``bench/upgrade.py``, run
after run, from the previous release or from this tree (a rolling restart). README,
"Releases and upgrades"."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from corec_node import __version__
from corec_node.testing.cluster import Cluster, NodeProc, eventually, voters_agree
from corec_node.testing.releases import PREVIOUS, RELEASES, build, export, install, venv, version_of

BLOCK_SIZE = 1000  # the default in both releases
RECORDS = 3000  # a round: three blocks of one channel, acks all
ENV = {"COREC_ENGINE_REPLICAS": "2"}  # acks all waits for the owner and one replica
STEADY = 3.0  # seconds the placement map stays the same before the next node is stopped


def previous_python(root: Path) -> Path:
    """The python of a virtualenv holding the previous release, built from its commit's tree
    into a wheel (``python -m build``) and installed there."""
    tree = export(RELEASES[PREVIOUS], root / "src")
    wheels = [p for p in build(tree, root / "dist") if p.suffix == ".whl"]
    python = venv(root / "venv", borrow_dependencies=True)
    install(python, *wheels, deps=False)
    assert version_of(python) == PREVIOUS
    return python


class Producer(threading.Thread):
    """Rounds of ``send --acks all`` (this tree's CLI), one channel each; a round that is not
    wholly acknowledged is sent again (the same ids and values: a resend changes nothing)
    to the next node, until it is."""

    def __init__(self, nodes: list[NodeProc]) -> None:
        super().__init__(daemon=True)
        self.nodes = nodes
        self.done: list[int] = []  # channels whose round was acknowledged whole
        self.when: dict[int, tuple[str, str]] = {}  # channel -> (wall time it was acknowledged, node sent to)
        self.retries = 0
        self.stopping = threading.Event()
        self.failure = ""

    def run(self) -> None:
        channel, turn = 1, 0
        while not self.stopping.is_set() and channel <= 255:
            for attempt in range(60):
                to = self.nodes[turn % len(self.nodes)]
                turn += 1
                out = subprocess.run([sys.executable, "-m", "corec_node", "send", "--to", to.addr, "--channel",
                                      str(channel), "--count", str(RECORDS), "--seed", str(channel), "--acks", "all",
                                      "--timeout", "5"], capture_output=True, text=True, timeout=120)
                if out.returncode == 0 and f"{RECORDS:,} accepted, 0 rejected" in out.stdout:
                    self.done.append(channel)
                    self.when[channel] = (time.strftime("%H:%M:%S", time.gmtime()), to.name)
                    break
                self.retries += 1
                self.stopping.wait(0.5)
            else:
                self.failure = f"channel {channel} never acknowledged whole: {out.stdout} {out.stderr}"
                return
            channel += 1

    def rounds_after(self, count: int, timeout: float) -> None:
        """Wait for ``count`` more acknowledged rounds."""
        want = len(self.done) + count
        eventually(lambda: len(self.done) >= want or self.failure, timeout, message=f"{count} more rounds")
        assert not self.failure, self.failure


def _expected(channels: list[int]) -> dict[tuple[int, int], tuple[int, float]]:
    """Per block: the record count and mean of what ``send --seed`` generates (cli.py)."""
    out = {}
    for channel in channels:
        values = (20 + np.random.default_rng(channel).normal(0, 2, RECORDS)).astype(np.float32)
        blocks = np.arange(RECORDS) // BLOCK_SIZE
        for b in np.unique(blocks):
            out[(channel, int(b))] = (int((blocks == b).sum()), float(values[blocks == b].astype(np.float64).mean()))
    return out


def _rows(node: NodeProc) -> dict[tuple[int, int], tuple[int, float]]:
    out = subprocess.run([sys.executable, "-m", "corec_node", "blocks", "--json", "--data-dir", str(node.data_dir)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return {(r["channel"], r["block"] & 0xFFFFFFFF): (r["count"], r["mean"]) for r in json.loads(out.stdout)}


def _mismatches(node: NodeProc, expected: dict) -> list[str]:
    """The blocks whose aggregates differ from the records sent: (count, mean) got vs sent."""
    rows = _rows(node)
    return [f"{k}: {rows.get(k)} != {(c, round(m, 4))}" for k, (c, m) in sorted(expected.items())
            if (got := rows.get(k)) is None or got[0] != c or abs(got[1] - m) >= 1e-3]


def _leader(nodes: list[NodeProc]) -> NodeProc | None:
    """The leader every node names, if they agree on one."""
    names = {n.ctl("leader")["leader"] for n in nodes}
    if len(names) != 1 or None in names:
        return None
    return next((n for n in nodes if n.name in names), None)


def _caught_up(node: NodeProc) -> bool:
    """The node holds every copy it should: no learner in its map, no copy awaited, and,
    restarted, taught what it held (``restarted_empty``: this release's status; the
    previous one has none)."""
    s = node.ctl("status")
    return (not s["learner"] and not s["learners"] and not s["awaited_copies"] and not s.get("restarted_empty")
            and s["placement_confirmed"] and not s["copies_waiting"] and not s["replicas_waiting"])


def _settled(nodes: list[NodeProc]) -> bool:
    """What an operator waits for before the next node (README, "Upgrades"): every node
    alive and a voter under one leader, caught up with its copies, and the placement map
    unchanged for STEADY seconds (a learner just promoted has owned its blocks a moment)."""
    if not (all(sorted(n.members().values()) == ["alive"] * len(nodes) for n in nodes)
            and voters_agree(nodes, [n.name for n in nodes]) and _leader(nodes) is not None
            and all(_caught_up(n) for n in nodes)):
        return False
    maps = {n.ctl("status")["placement_version"] for n in nodes}
    time.sleep(STEADY)
    return {n.ctl("status")["placement_version"] for n in nodes} == maps and all(_caught_up(n) for n in nodes)


def _upgrade(cluster: Cluster, old: NodeProc, peers: list[NodeProc]) -> NodeProc:
    """Stop one node (SIGTERM, as ``systemctl stop`` does), wait until its peers see it dead,
    and start this tree's code on its data directory, name and ports."""
    assert old.stop(15) == 0
    # seen dead before it comes back: a 0.2.0 node sends no copies to a member that returns
    # empty before that (README, "Releases and upgrades", step 2)
    eventually(lambda: all(p.members()[old.name] == "dead" for p in peers), 20, message=f"{old.name} seen dead")
    new = NodeProc(old.name, cluster.root, join=[p.addr for p in peers], extra_env=ENV, port=old.port,
                   pub_port=old.pub_port, data_port=old.data_port, data_dir=old.data_dir,
                   data_name=f"{old.name}-new").start()
    cluster.nodes.append(new)
    return new.wait_ready(30)


def rolling_upgrade(previous: Path, tmp_path: Path, old_version: str) -> dict:
    cluster = Cluster(tmp_path)
    producer = None
    try:
        a = cluster.start("a", python=str(previous), cwd=tmp_path, extra_env=ENV).wait_ready(30)
        b = cluster.start("b", python=str(previous), cwd=tmp_path, extra_env=ENV, join=[a.addr]).wait_ready(30)
        c = cluster.start("c", python=str(previous), cwd=tmp_path, extra_env=ENV, join=[a.addr]).wait_ready(30)
        nodes = [a, b, c]
        eventually(lambda: _settled(nodes), 40, message="three voters of the previous release")
        assert {n.ctl("status")["version"] for n in nodes} == {old_version}

        producer = Producer(nodes)
        producer.start()
        producer.rounds_after(3, 60)

        # 1. a follower first: an old leader with a new member
        leader = _leader(nodes)
        first = next(n for n in nodes if n is not leader)
        nodes[nodes.index(first)] = first = _upgrade(cluster, first, [n for n in nodes if n is not first])
        eventually(lambda: _settled(nodes), 40, message="the first upgraded node back as a voter")
        assert _leader(nodes).ctl("status")["version"] == old_version and first.ctl("status")["version"] == __version__
        producer.rounds_after(3, 90)

        # 2. the leader. If the old node is elected, it is paused until a new node leads
        #    (one failure at a time: every block it holds has a copy on a caught-up new node)
        last = next(n for n in nodes if n is not leader and n is not first)
        nodes[nodes.index(leader)] = upgraded = _upgrade(cluster, leader, [first, last])
        eventually(lambda: _settled(nodes), 40, message="the upgraded leader back and caught up")
        if _leader(nodes) is last:
            last.signal(signal.SIGSTOP)
            try:
                eventually(lambda: first.ctl("leader")["leader"] in (first.name, upgraded.name)
                           and upgraded.ctl("leader")["leader"] == first.ctl("leader")["leader"], 40,
                           message="a new leader among the upgraded nodes")
            finally:
                last.signal(signal.SIGCONT)
            eventually(lambda: _settled(nodes), 40, message="the old node follows the new leader")
        assert _leader(nodes).ctl("status")["version"] == __version__ and last.ctl("status")["version"] == old_version
        # 3. the last old node
        nodes[nodes.index(last)] = _upgrade(cluster, last, [n for n in nodes if n is not last])
        eventually(lambda: _settled(nodes), 40, message="all upgraded")
        assert {n.ctl("status")["version"] for n in nodes} == {__version__}
        producer.rounds_after(3, 90)
        producer.stopping.set()
        producer.join(150)
        assert not producer.failure, producer.failure

        expected = _expected(producer.done)
        time.sleep(5)  # rows of the last ticks reach every node
        missing = {n.name: _mismatches(n, expected) for n in nodes}
        records = len(producer.done) * RECORDS
        deadline = time.time() + 30
        while True:  # a block changing hands is counted by neither holder for a moment: wait it out
            owned = sum(n.ctl("status")["entities"] for n in nodes)
            if owned == records or time.time() > deadline:
                break
            time.sleep(0.5)
        lost = sorted({int(m.split(",")[0].strip("(")) for v in missing.values() for m in v})
        return {"lost_rounds": {ch: producer.when.get(ch) for ch in lost},
                "dropped_records": {n.name: n.ctl("status")["dropped_records"] for n in nodes},
                "logs": str(tmp_path),
                "rounds": len(producer.done), "resent": producer.retries, "records": records,
                "owned_entities": owned, "blocks_wrong": {k: len(v) for k, v in missing.items()},
                "examples": [m for v in missing.values() for m in v][:3]}
    finally:
        if producer is not None:
            producer.stopping.set()
        cluster.close()
