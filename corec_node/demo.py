"""``corec-node demo``: the whole product in a minute, on loopback.

Starts three real node processes in a temporary directory, each serving the web console on
loopback (the URL is printed: watch the failover there), joins them, streams synthetic
entities into them (and keeps streaming), prints a live summary, SIGKILLs the leader,
shows the failover and the dead leader's blocks rebuilt by the survivors, restarts it and
shows its blocks handed back, and stops everything. Exit 0 when the cluster behaved as it
should (one leader, the entity counts adding up at each step), 1 otherwise.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from corec_node.config import CONSOLE_HOST
from corec_node.testing.cluster import Cluster, NodeProc, eventually, free_port, voters_agree

NAMES = ("alpha", "beta", "gamma")


def _summary(nodes: list[NodeProc], rate: float | None) -> str:
    parts = []
    for n in nodes:
        if n.proc is None or n.proc.poll() is not None:
            parts.append(f"{n.name}: down")
            continue
        try:
            s = n.ctl("status")
        except Exception:
            parts.append(f"{n.name}: ?")
            continue
        alive = s["members"].get("alive", 0)
        extra = f", {s['entities']} entities in {s['blocks']} blocks" if "entities" in s else ""
        parts.append(f"{n.name}: {alive} alive, leader {s['leader'] or '-'} (term {s['term']}){extra}")
    line = " | ".join(parts)
    if rate is not None:
        line += f" | {rate / 1e6:.2f} M records/s sent"
    return line


ENTITIES = 100_000


class _Producer:
    """Streams synthetic sensor readings (every entity, then a 50 ms pause) from a thread
    until stopped; counts what it sent and keeps the error that stopped it, if any."""

    def __init__(self, addr: str) -> None:
        self.addr = addr
        self.sent = 0
        self.error: BaseException | None = None
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-producer", daemon=True)

    def start(self) -> _Producer:
        self._thread.start()
        return self

    def rate(self) -> float:
        return self.sent / max(time.monotonic() - self.started, 1e-9)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        try:
            self._stream()
        except Exception as exc:  # the demo reports it instead of waiting for data that never comes
            self.error = exc

    def _stream(self) -> None:
        from corec_node.client import Client
        from corec_node.wire import ENTITY_DTYPE

        rng = np.random.default_rng(7)
        records = np.zeros(ENTITIES, dtype=ENTITY_DTYPE)
        records["id"] = np.arange(ENTITIES) % (ENTITIES // 2)
        records["channel"] = np.repeat(np.arange(2), ENTITIES // 2)
        records["active"] = 1
        with Client(self.addr) as client:
            while not self._stop.is_set():
                records["value"] = 20 + rng.normal(0, 1, len(records)).astype(np.float32)
                self.sent += client.send(records)
                self._stop.wait(0.05)


def _held(nodes: list[NodeProc], producer: _Producer) -> int:
    """Entities held across the running nodes (the stream's entities, once each, when the
    owners agree: each node keeps only the blocks it owns)."""
    if producer.error is not None:
        raise AssertionError(f"the producer stopped: {producer.error!r}")
    return sum(n.ctl("status")["entities"] for n in nodes if n.proc is not None and n.proc.poll() is None)


def run_demo(say: Callable[[str], None] = print, keep: bool = False) -> int:
    root = Path(tempfile.mkdtemp(prefix="corec-demo-"))
    cluster = Cluster(root)
    producer: _Producer | None = None
    ok = True
    try:
        say(f"starting {len(NAMES)} nodes in {root}")
        consoles = {name: free_port() for name in NAMES}  # every node serves the web console, on loopback
        nodes = [cluster.start(NAMES[0], args=["--console", f"{CONSOLE_HOST}:{consoles[NAMES[0]]}"])]
        nodes += [cluster.start(name, join=[nodes[0].addr], args=["--console", f"{CONSOLE_HOST}:{consoles[name]}"])
                  for name in NAMES[1:]]
        for n in nodes:
            n.wait_ready()
        eventually(lambda: all(n.ctl("status")["members"].get("alive") == len(NAMES) for n in nodes), 20,
                   message="all nodes alive")
        eventually(lambda: voters_agree(nodes, NAMES), 30, message="every node a voter")
        leader = eventually(lambda: _agreed_leader(nodes), 20, message="one agreed leader")
        say(f"cluster formed: {len(NAMES)} members alive and voting, nucleus leader {leader}")
        entry = next(n for n in nodes if n.name != leader)  # the producer keeps its node through the failover
        say(f"web console: http://{CONSOLE_HOST}:{consoles[entry.name]}/ (served by {entry.name}, which stays up; "
            + ", ".join(f"{n} on port {p}" for n, p in consoles.items() if n != entry.name) + ")")
        say(f"streaming synthetic entities into {entry.name} (2 channels, {ENTITIES:,} entities, each every 50 ms or so)")
        producer = _Producer(entry.addr).start()
        eventually(lambda: _held(nodes, producer) == ENTITIES, 20, message="every entity stored")
        for _ in range(2):
            say("  " + _summary(nodes, producer.rate()))
            time.sleep(1.0)
        victim = next(n for n in nodes if n.name == leader)
        say(f"SIGKILL the leader {leader}")
        t0 = time.monotonic()
        victim.kill()
        survivors = [n for n in nodes if n is not victim]
        new_leader = eventually(lambda: _agreed_leader(survivors, not_=leader), 30, message="a new leader")
        took = time.monotonic() - t0
        eventually(lambda: all(n.members().get(leader) == "dead" for n in survivors), 30, message="old leader dead")
        say(f"failover: {new_leader} leads after {took:.2f} s; {leader} is dead on every survivor")
        eventually(lambda: _held(survivors, producer) == ENTITIES, 20, message="the dead leader's blocks rebuilt")
        say(f"  {leader}'s blocks are rebuilt by the survivors from the stream: {ENTITIES:,} entities held again")
        say("  " + _summary(nodes, producer.rate()))
        say(f"restarting {leader}: it rejoins from its snapshot, follows, and gets its blocks back")
        victim.join = []
        victim.start().wait_ready()
        eventually(lambda: all(n.ctl("status")["members"].get("alive") == len(NAMES) for n in nodes), 30,
                   message="the old leader back alive")
        eventually(lambda: victim.ctl("status")["entities"] > 0 and _held(nodes, producer) == ENTITIES, 20,
                   message="blocks handed back, the counts adding up")
        say("  " + _summary(nodes, producer.rate()))
    except AssertionError as exc:
        say(f"demo failed: {exc}")
        ok = False
    finally:
        if producer is not None:
            producer.stop()
        cluster.close()
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    say("stopped every node" + ("" if ok else " (the demo did not go as expected)"))
    return 0 if ok else 1


def _agreed_leader(nodes: list[NodeProc], not_: str | None = None) -> str | None:
    views = {(r["leader"], r["term"]) for r in (n.ctl("leader") for n in nodes)}
    if len(views) != 1:
        return None
    leader, _term = views.pop()
    return leader if leader and leader != not_ else None
