"""Exact accounting under a flood: every record a producer sends is stored, counted as
dropped, or answered as not accepted. Real node processes on loopback.

    python bench/flood.py [--runs 10] [--records 20000000] [--nodes 3] [--block-size 1000]
                          [--batch 10000] [--window 32] [--settle 300] [--queue-mb MB]

Each run starts a fresh cluster of --nodes nodes, waits until every node sees every other
alive with a placement map, and floods the first with --records NEW entity ids (channel
0, ids 0..N-1, one ``Client`` as fast as the node answers it). Then it waits until the
cluster has settled (every ingest queue and door empty, nothing changing) and checks

    sent == stored + dropped + rejected + unconfirmed

where sent and rejected/unconfirmed are the client's counts, stored the sum of every
node's entities (each id is new, so each is stored once by its owner), and dropped the
sum of every node's ``dropped_records`` (records of its blocks it lost, by reason). Also
reported: stream gaps (batches lost between PUB and SUB), member changes after the start
(a false death moves blocks), nodes that died, and the largest gap between two
heartbeats of the leader as a subscriber to every node's ``nuc`` topic hears them.

Prints a line per run, then one JSON line ``{"bench": "flood", ...}``. Figures only:
nothing passes or fails here (tests/test_accounting.py runs the same at CI size).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import zmq  # noqa: E402

from corec_node.client import Client  # noqa: E402
from corec_node.testing.cluster import Cluster, NodeProc, eventually  # noqa: E402
from corec_node.wire import ENTITY_DTYPE, Heartbeat, WireError, decode_message  # noqa: E402
from corec_node.wire.topics import TOPIC_NUCLEUS  # noqa: E402


def start_cluster(cluster: Cluster, size: int, env: dict[str, str]) -> list[NodeProc]:
    """``size`` nodes joined to the first; returns once each sees all alive and a map."""
    nodes = [cluster.start("n0", extra_env=env)]
    nodes += [cluster.start(f"n{i}", join=[nodes[0].addr], extra_env=env) for i in range(1, size)]
    for node in nodes:
        node.wait_ready(30)
    eventually(lambda: all(n.ctl("status")["members"].get("alive") == size for n in nodes), 60,
               message="every node sees every other alive")
    eventually(lambda: all(n.ctl("status")["placement_version"] > 0 for n in nodes), 30)
    return nodes


class HeartbeatGaps:
    """Subscribes to every node's ``nuc`` topic and keeps the largest gap between two
    heartbeats of one leader in one term (a new term starts a new series)."""

    def __init__(self, nodes: list[NodeProc]) -> None:
        self.max_gap = 0.0
        self.heartbeats = 0
        self._last: dict[tuple[str, int], float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=([n.pub_port for n in nodes],), daemon=True)
        self._thread.start()

    def _run(self, ports: list[int]) -> None:
        sock = zmq.Context.instance().socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SUBSCRIBE, TOPIC_NUCLEUS)
        for port in ports:
            sock.connect(f"tcp://127.0.0.1:{port}")
        try:
            while not self._stop.is_set():
                if not sock.poll(100):
                    continue
                frames = sock.recv_multipart()
                now = time.monotonic()
                try:
                    _, env, _ = decode_message(frames)
                except WireError:
                    continue
                if not isinstance(env.msg, Heartbeat):
                    continue
                key = (env.sender, env.msg.term)
                last = self._last.get(key)
                if last is not None and now - last > self.max_gap:
                    self.max_gap = now - last
                self._last = {key: now}  # one series: the current leader's term
                self.heartbeats += 1
        finally:
            sock.close(0)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def records(first: int, count: int, seed: int = 0) -> np.ndarray:
    """``count`` records of new ids ``first..first+count-1`` on channel 0."""
    out = np.zeros(count, dtype=ENTITY_DTYPE)
    out["id"] = np.arange(first, first + count, dtype=np.uint32)
    out["value"] = (20 + np.random.default_rng(seed).normal(0, 2, count)).astype(np.float32)
    out["active"] = 1
    return out


def settled(nodes: list[NodeProc], timeout: float) -> list[dict[str, Any]]:
    """Statuses once every queue and door is empty and nothing changed between two looks."""
    last: list[Any] | None = None

    def quiet() -> list[dict[str, Any]] | None:
        nonlocal last
        status = [n.ctl("status") for n in nodes]
        now = [(s["entities"], s["ingested"], s["ingest_queue"], s["producers"]["waiting"],
                sum(s["dropped_records"].values())) for s in status]
        idle = all(q == 0 and w == 0 for _, _, q, w, _ in now)
        done = idle and now == last
        last = now
        return status if done else None

    return eventually(quiet, timeout, interval=1.0, message="the cluster settles")


def account(client: Client, status: list[dict[str, Any]]) -> dict[str, Any]:
    """One run's books: what the producer sent against where every record went."""
    dropped: dict[str, int] = {}
    for s in status:
        for reason, n in s["dropped_records"].items():
            dropped[reason] = dropped.get(reason, 0) + n
    stored = sum(s["entities"] for s in status)
    rejected = dict(client.rejected)
    books = stored + sum(dropped.values()) + sum(rejected.values()) + client.unconfirmed
    return {
        "sent": client.sent_records, "accepted": client.accepted, "rejected": rejected,
        "unconfirmed": client.unconfirmed, "retries": client.retries, "stored": stored, "dropped": dropped,
        "stream_gaps": sum(s["stream_gaps"] for s in status),
        "ingest_dropped": sum(s["ingest_dropped"] for s in status),
        "node_rejected": {r: n for s in status for r, n in s["producers"]["rejected"].items()},
        "missing": client.sent_records - books, "exact": books == client.sent_records,
    }


def flood(node: NodeProc, recs: np.ndarray, *, batch: int, window: int) -> tuple[Client, float]:
    """Send ``recs`` to ``node`` as one producer; returns the client (closed: every answer
    in) and the seconds it took."""
    started = time.perf_counter()
    client = Client(node.addr, batch=batch, window=window)
    with client:
        client.send(recs)
    return client, time.perf_counter() - started


def member_changes(nodes: list[NodeProc]) -> int:
    """Members that went dead or left after the start (a false death moves blocks)."""
    return sum(1 for n in nodes for e in n.log_events()
               if e.get("event") == "member_changed" and e.get("new") in ("dead", "left"))


def run_once(size: int, count: int, *, block_size: int, batch: int, window: int, settle: float,
             queue_mb: float | None = None) -> dict[str, Any]:
    cluster = Cluster(Path(tempfile.mkdtemp(prefix="corec-flood-")))
    env = {"COREC_ENGINE_BLOCK_SIZE": str(block_size)}
    if queue_mb is not None:
        env["COREC_ENGINE_INGEST_QUEUE_MB"] = str(queue_mb)
    try:
        nodes = start_cluster(cluster, size, env)
        gaps = HeartbeatGaps(nodes)
        recs = records(0, count)
        client, took = flood(nodes[0], recs, batch=batch, window=window)
        del recs
        t0 = time.perf_counter()
        died = []
        try:
            status = settled(nodes, settle)
        except AssertionError:  # not settled in time: the books as they stand (or a node died)
            died = [n.name for n in nodes if n.proc is not None and n.proc.poll() is not None]
            status = eventually(lambda: [n.ctl("status") for n in nodes if n.name not in died], 60)
        gaps.stop()
        died = died or [n.name for n in nodes if n.proc is not None and n.proc.poll() is not None]
        out = account(client, status)
        out.update(send_s=round(took, 2), settle_s=round(time.perf_counter() - t0, 2),
                   rate=round(count / took), max_heartbeat_gap_s=round(gaps.max_gap, 3),
                   heartbeats=gaps.heartbeats, member_changes=member_changes(nodes), died=died)
        return out
    finally:
        cluster.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--records", type=int, default=20_000_000)
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--block-size", type=int, default=1000)
    p.add_argument("--batch", type=int, default=10_000)
    p.add_argument("--window", type=int, default=32)
    p.add_argument("--settle", type=float, default=300.0, help="seconds to wait for the cluster to settle")
    p.add_argument("--queue-mb", type=float, help="engine.ingest_queue_mb of every node (default: the node's)")
    args = p.parse_args(argv)
    results = []
    for i in range(args.runs):
        r = run_once(args.nodes, args.records, block_size=args.block_size, batch=args.batch,
                     window=args.window, settle=args.settle, queue_mb=args.queue_mb)
        results.append(r)
        verdict = "exact" if r["exact"] else f"MISSING {r['missing']:,}"
        print(f"run {i + 1}/{args.runs}: sent {r['sent']:,} stored {r['stored']:,} dropped {r['dropped']} "
              f"rejected {r['rejected']} unconfirmed {r['unconfirmed']:,} -> {verdict}; "
              f"node refused {r['node_rejected']}, "
              f"send {r['send_s']} s ({r['rate']:,}/s), settle {r['settle_s']} s, retries {r['retries']}, "
              f"stream gaps {r['stream_gaps']}, max heartbeat gap {r['max_heartbeat_gap_s']} s, "
              f"member changes {r['member_changes']}, died {r['died'] or '-'}", flush=True)
    print(json.dumps({"bench": "flood", "records": args.records, "nodes": args.nodes, "block_size": args.block_size,
                      "queue_mb": args.queue_mb,
                      "batch": args.batch, "window": args.window, "runs": results,
                      "exact_runs": sum(r["exact"] for r in results)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
