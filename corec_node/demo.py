"""``corec-node demo``: the whole product in a minute, on loopback.

Starts three real node processes in a temporary directory, joins them, streams synthetic
entities into them, prints a live summary, SIGKILLs the leader, shows the failover, and
stops everything. Exit 0 when the cluster behaved as it should, 1 otherwise.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from corec_node.localcluster import Cluster, NodeProc, eventually

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


def _stream(node: NodeProc, seconds: float, say: Callable[[str], None], nodes: list[NodeProc]) -> float:
    """Send synthetic sensor readings for ``seconds``; returns the records/s achieved."""
    from corec_node.client import Client
    from corec_node.wire import ENTITY_DTYPE

    rng = np.random.default_rng(7)
    records = np.zeros(100_000, dtype=ENTITY_DTYPE)
    records["id"] = np.arange(100_000) % 50_000
    records["channel"] = np.repeat(np.arange(2), 50_000)
    records["active"] = 1
    sent, started, last_print = 0, time.monotonic(), 0.0
    with Client(node.addr) as client:
        while (now := time.monotonic()) - started < seconds:
            records["value"] = 20 + rng.normal(0, 1, len(records)).astype(np.float32)
            sent += client.send(records)
            if now - last_print >= 1.0:
                last_print = now
                say("  " + _summary(nodes, sent / max(now - started, 1e-9)))
            time.sleep(0.05)
    return sent / max(time.monotonic() - started, 1e-9)


def run_demo(say: Callable[[str], None] = print, keep: bool = False) -> int:
    root = Path(tempfile.mkdtemp(prefix="corec-demo-"))
    cluster = Cluster(root)
    ok = True
    try:
        say(f"starting {len(NAMES)} nodes in {root}")
        nodes = [cluster.start(NAMES[0])]
        nodes += [cluster.start(name, join=[nodes[0].addr]) for name in NAMES[1:]]
        for n in nodes:
            n.wait_ready()
        eventually(lambda: all(n.ctl("status")["members"].get("alive") == len(NAMES) for n in nodes), 20,
                   message="all nodes alive")
        leader = eventually(lambda: _agreed_leader(nodes), 20, message="one agreed leader")
        say(f"cluster formed: {len(NAMES)} members alive, nucleus leader {leader}")
        say("streaming synthetic entities (2 channels, 100,000 entities)")
        rate = _stream(nodes[1], 3.0, say, nodes)
        say(f"sent at {rate / 1e6:.2f} M records/s")
        victim = next(n for n in nodes if n.name == leader)
        say(f"SIGKILL the leader {leader}")
        t0 = time.monotonic()
        victim.kill()
        survivors = [n for n in nodes if n is not victim]
        new_leader = eventually(lambda: _agreed_leader(survivors, not_=leader), 30, message="a new leader")
        took = time.monotonic() - t0
        eventually(lambda: all(n.members().get(leader) == "dead" for n in survivors), 30, message="old leader dead")
        say(f"failover: {new_leader} leads after {took:.2f} s; {leader} is dead on every survivor")
        say("  " + _summary(nodes, None))
        say(f"restarting {leader}: it rejoins from its snapshot and follows")
        victim.join = []
        victim.start().wait_ready()
        eventually(lambda: all(n.ctl("status")["members"].get("alive") == len(NAMES) for n in nodes), 30,
                   message="the old leader back alive")
        say("  " + _summary(nodes, None))
    except AssertionError as exc:
        say(f"demo failed: {exc}")
        ok = False
    finally:
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
