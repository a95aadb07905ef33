"""Replicas (SPEC 9.7) on real ``corec-node run`` processes: what a SIGKILL costs the data a
producer had acknowledged with acks all, how soon the survivors answer exact figures again,
and what a second copy costs in memory. Each figure beside the same run with one copy.

    python bench/replicas.py [--scenarios kill,memory] [--copies 2] [--baseline 1]
                             [--duration 10] [--kill-at 5] [--after 2] [--batch 10000]
                             [--entities 1000000]
                             [--block-size 1000] [--stable 3] [--timeout 60] [--idle 3]
                             [--settle 5] [--seed 7]

    small run:  python bench/replicas.py --duration 6 --entities 200000

Every round starts a fresh cluster of 3 nodes a, b, c (lan timers, b and c joined to a,
``COREC_ENGINE_REPLICAS`` = the round's copies); it is ready once every node acts on the map
[a, b, c] with nobody learning and all name one leader.

  kill    (1) stream: a producer in this process (``corec_node.client.Client`` given a,
          acks "all") sends batches of fresh ids for --duration s, one ``send`` and one
          ``flush`` a batch, so each batch's answer is known from ``accepted`` before and
          after (and past --duration until whole batches were acknowledged again for
          --after s after the SIGKILL): batch k holds ids [k*B, (k+1)*B) of one channel (B = --batch, a multiple of
          --block-size), values from a seeded RNG, so every block's count and value sum is
          known. --kill-at s in, b (not the node the producer was given) is SIGKILLed, both
          of its processes, from a timer thread while a batch is on its way. After the
          stream, with no fresh data, ``blocks`` of the channel is polled on both survivors
          until they answer the same rows for --stable s. Then the checker: every block of
          every acknowledged batch must be there with exactly its count and value sum
          (count x mean, relative tolerance 1e-6). Printed: records acknowledged, records
          acknowledged but lost (block missing, or count or sum wrong), records not
          acknowledged (by the client's reasons), batches acknowledged in part (and how
          many of their records are surely there), whether any block shows more than its
          count (applied twice), and how long after the SIGKILL the producer had its next
          whole batch acknowledged.
          (2) exact: --entities fresh entities loaded with acks all, every node answering
          them exactly; the producer stops; b is SIGKILLed; timed until both survivors act
          on a map without b and their ``blocks`` answer exactly --entities entities and
          their sum, identical (and until their stores hold the copies again:
          held_entities summing to entities x copies, each entity owned once).
          Both rounds also with --baseline copies (default 1): what the SIGKILL loses there.
  memory  RSS of all node processes (node and mesh process of every node, pids read afresh)
          before, and --settle s after, --entities new entities are stored with acks all
          (the stores' held_entities summing to entities x copies): cluster growth per
          entity and per entity per copy, with --copies and with --baseline copies, the
          second copy's own cost (the difference), and the target: at most 100 B per entity
          with 2 copies.

Figures only: nothing passes or fails here. Ends with one JSON line {"bench": "replicas", ...}.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from _machine import cpu_model  # noqa: E402  (bench/ is on sys.path when run as a script)
from corec_node.client import Client  # noqa: E402
from corec_node.shell.control import ControlError  # noqa: E402
from corec_node.testing.cluster import Cluster, NodeProc, eventually  # noqa: E402
from corec_node.testing.measure import cluster_pids, rss_by_node, rss_bytes  # noqa: E402
from corec_node.wire import ENTITY_DTYPE  # noqa: E402

NAMES = ["a", "b", "c"]
GIVEN, VICTIM = "a", "b"  # the producer is given a; b is killed
STREAM_CHANNEL, EXACT_CHANNEL, MEMORY_CHANNEL = 1, 2, 3
TARGET_BYTES_2 = 100  # target: at most 100 B per entity with 2 copies
RTOL = 1e-6
M = 1_000_000


# -- clusters ----------------------------------------------------------------------------


def node_env(copies: int, block_size: int) -> dict[str, str]:
    return {"COREC_MESH_PROFILE": "lan", "COREC_ENGINE_BLOCK_SIZE": str(block_size),
            "COREC_ENGINE_REPLICAS": str(copies)}


def start_cluster(prefix: str, copies: int, args: argparse.Namespace) -> tuple[Cluster, list[NodeProc]]:
    """3 nodes, b and c joined to a; returns once every node acts on the map [a, b, c] with
    nobody learning, and all name one leader. The cluster is closed on failure."""
    cluster = Cluster(Path(tempfile.mkdtemp(prefix=f"corec-bench-replicas-{prefix}-")))
    try:
        env = node_env(copies, args.block_size)
        first = cluster.start(NAMES[0], extra_env=env).wait_ready(30)
        nodes = [first] + [cluster.start(n, join=[first.addr], extra_env=env) for n in NAMES[1:]]
        for n in nodes:
            n.wait_ready(30)

        def ready() -> bool:
            st = [n.ctl("status") for n in nodes]
            leaders = {s.get("leader") for s in st}
            return (len(leaders) == 1 and bool(leaders.pop())
                    and all(s.get("placement_members") == NAMES and not s.get("learners") and not s.get("learner")
                            and s.get("routed") and s.get("replicas", copies) == copies for s in st))

        eventually(ready, 90, interval=0.25, message="every node a member of [a, b, c], one leader, none learning")
        return cluster, nodes
    except BaseException:
        close(cluster)
        raise


def close(cluster: Cluster) -> None:
    """Stop every node, then remove the cluster's directory (data and logs)."""
    cluster.close()
    shutil.rmtree(cluster.root, ignore_errors=True)


def sigkill(node: NodeProc) -> None:
    """SIGKILL both processes of the node at once, then reap it."""
    pids = node.pids()
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if node.proc is not None:
        node.proc.wait(10)


def records(ids: np.ndarray, channel: int, values: np.ndarray) -> np.ndarray:
    out = np.zeros(len(ids), dtype=ENTITY_DTYPE)
    out["id"] = ids
    out["channel"] = channel
    out["value"] = values
    out["active"] = 1
    return out


def block_id(channel: int, index: int) -> int:
    """The block of ids [index * block_size, (index + 1) * block_size) of ``channel``."""
    return (channel << 32) | index


def rows_of(node: NodeProc, channel: int) -> dict[int, tuple[int, float]] | None:
    """{block: (count, count x mean)} from the node's ``blocks``; None when it did not answer."""
    try:
        rows = node.ctl("blocks", channel=channel)
    except (ControlError, OSError):  # busy or gone for a moment: no answer this time
        return None
    return {int(r["block"]): (int(r["count"]), int(r["count"]) * float(r["mean"] or 0.0)) for r in rows}


def held_sum(nodes: list[NodeProc]) -> tuple[int, int] | None:
    """(held_entities, copies included; owned entities) summed over the nodes' ``status``."""
    try:
        st = [n.ctl("status") for n in nodes]
    except (ControlError, OSError):
        return None
    return sum(int(s.get("held_entities", s.get("entities", 0))) for s in st), sum(int(s.get("entities", 0)) for s in st)


def wait_stable(nodes: list[NodeProc], channel: int, stable: float, timeout: float) -> tuple[dict[int, tuple[int, float]] | None, bool, bool, float]:
    """Poll ``blocks`` of ``channel`` on every node until all answer the same rows and they
    stayed so for ``stable`` s. Returns (rows, stable, identical, seconds)."""
    started = time.monotonic()
    last: dict[int, tuple[int, float]] | None = None
    since = started
    views: list[dict[int, tuple[int, float]] | None] = []
    while True:
        views = [rows_of(n, channel) for n in nodes]
        now = time.monotonic()
        same = all(v is not None for v in views) and all(v == views[0] for v in views)
        if not same or views[0] != last:
            last = views[0] if same else None
            since = now
        elif now - since >= stable:
            return last, True, True, now - started
        if now - started >= timeout:
            seen = next((v for v in views if v is not None), None)
            return seen, False, same, now - started
        time.sleep(0.25)


# -- kill: the stream ---------------------------------------------------------------------


def stream_round(copies: int, args: argparse.Namespace) -> dict[str, Any]:
    bs, batch = args.block_size, args.batch
    per = batch // bs
    rng = np.random.default_rng(args.seed)
    block_sums: list[np.ndarray] = []  # per batch: each block's value sum (float64 of the float32 values)
    batches: list[dict[str, Any]] = []
    cluster, nodes = start_cluster(f"stream{copies}", copies, args)
    try:
        given = nodes[0]
        victim = next(n for n in nodes if n.name == VICTIM)
        survivors = [n for n in nodes if n is not victim]
        killed: list[float] = []

        def kill() -> None:
            try:
                sigkill(victim)
            finally:
                killed.append(time.monotonic())

        timer = threading.Timer(args.kill_at, kill)
        reasons: collections.Counter[str] = collections.Counter()
        with Client(given.addr, acks="all") as client:
            started = time.monotonic()
            timer.start()
            k = 0
            try:
                resumed: float | None = None  # when a whole batch was first acknowledged after the SIGKILL
                while True:
                    now = time.monotonic()
                    if now - started >= max(args.duration, args.kill_at) + args.timeout:
                        break  # the acks never came back
                    if now - started >= args.duration and resumed is not None and now - resumed >= args.after:
                        break
                    values = (20 + rng.normal(0, 2, batch)).astype(np.float32)
                    block_sums.append(values.astype(np.float64).reshape(per, bs).sum(axis=1))
                    recs = records(np.arange(k * batch, (k + 1) * batch, dtype=np.uint32), STREAM_CHANNEL, values)
                    acc0, rej0, unc0 = client.accepted, collections.Counter(client.rejected), client.unconfirmed
                    sent_at = time.monotonic()
                    client.send(recs)
                    client.flush()
                    rej = collections.Counter(client.rejected)
                    rej.subtract(rej0)
                    rej = +rej
                    reasons.update(rej)
                    batches.append({"k": k, "accepted": client.accepted - acc0, "rejected": dict(rej),
                                    "unconfirmed": client.unconfirmed - unc0,
                                    "sent": sent_at - started, "answered": time.monotonic() - started})
                    if resumed is None and killed and client.accepted - acc0 >= batch:
                        resumed = time.monotonic()
                    k += 1
            finally:
                timer.cancel()
            stream_s = time.monotonic() - started
            client_stats = {"retries": client.retries, "rehomed": client.rehomed, "map_fetches": client.map_fetches,
                            "unconfirmed": client.unconfirmed, "rejected": dict(client.rejected),
                            "accepted": client.accepted}
        kill_at = killed[0] - started if killed else None
        rows, stable, identical, settle_s = wait_stable(survivors, STREAM_CHANNEL, args.stable, args.timeout)
        members = None
        try:
            members = [n.ctl("status").get("placement_members") for n in survivors]
        except (ControlError, OSError):
            pass
        held = held_sum(survivors)
    finally:
        close(cluster)
    return check_stream(copies, args, batches, block_sums, rows or {}, stable, identical, settle_s,
                        kill_at, stream_s, reasons, client_stats, members, held)


def check_stream(copies: int, args: argparse.Namespace, batches: list[dict[str, Any]], block_sums: list[np.ndarray],
                 rows: dict[int, tuple[int, float]], stable: bool, identical: bool, settle_s: float,
                 kill_at: float | None, stream_s: float, reasons: collections.Counter[str],
                 client_stats: dict[str, Any], members: Any, held: tuple[int, int] | None) -> dict[str, Any]:
    """Every block of every acknowledged batch must be there, exact."""
    bs, batch = args.block_size, args.batch
    per = batch // bs
    acked = lost = missing = wrong = not_acked = 0
    partly_batches = partly_records = partly_sure = 0
    lost_batches: list[int] = []
    unacked_present = unacked_blocks = 0

    def exact(block: int, want: float) -> str:
        row = rows.get(block)
        if row is None:
            return "missing"
        count, total = row
        if count != bs or not math.isclose(total, want, rel_tol=RTOL, abs_tol=0.0):
            return "wrong"
        return "ok"

    for b, sums in zip(batches, block_sums, strict=True):
        verdicts = [exact(block_id(STREAM_CHANNEL, b["k"] * per + j), float(sums[j])) for j in range(per)]
        ok = verdicts.count("ok")
        if b["accepted"] >= batch:
            acked += batch
            bad = per - ok
            if bad:
                lost += bad * bs
                missing += verdicts.count("missing") * bs
                wrong += verdicts.count("wrong") * bs
                lost_batches.append(b["k"])
        else:
            not_acked += batch - b["accepted"]
            unacked_blocks += per
            unacked_present += ok
            if b["accepted"] > 0:  # acknowledged in part: which blocks is not known per batch
                partly_batches += 1
                partly_records += b["accepted"]
                partly_sure += min(ok * bs, b["accepted"])
    expected = {block_id(STREAM_CHANNEL, b["k"] * per + j) for b in batches for j in range(per)}
    twice = sorted(blk for blk, (count, _) in rows.items() if count > bs)
    strangers = sorted(blk for blk in rows if blk not in expected)
    resumed = None
    if kill_at is not None:
        after = [b for b in batches if b["answered"] >= kill_at and b["accepted"] >= batch]
        resumed = (after[0]["answered"] - kill_at) if after else None
    longest = max((b["answered"] - b["sent"] for b in batches), default=0.0)
    sent = len(batches) * batch
    return {
        "copies": copies, "batches": len(batches), "records": sent, "stream_s": round(stream_s, 2),
        "rate": sent / stream_s if stream_s else None, "kill_at_s": round(kill_at, 3) if kill_at is not None else None,
        "acknowledged": acked, "acked_lost": lost, "acked_missing": missing, "acked_wrong": wrong,
        "lost_batches": lost_batches[:20], "not_acknowledged": not_acked, "reasons": dict(reasons),
        "partly_batches": partly_batches, "partly_records": partly_records, "partly_surely_there": partly_sure,
        "unacked_blocks": unacked_blocks, "unacked_blocks_exact": unacked_present,
        "applied_twice": bool(twice), "blocks_over_count": twice[:20], "unexpected_blocks": strangers[:20],
        "rows": len(rows), "stable": stable, "survivors_identical": identical, "settle_s": round(settle_s, 2),
        "acks_resumed_s": round(resumed, 3) if resumed is not None else None, "longest_batch_s": round(longest, 3),
        "client": client_stats, "survivor_members": members,
        "survivors_held": held[0] if held else None, "survivors_owned": held[1] if held else None,
    }


# -- kill: exact after the SIGKILL -------------------------------------------------------


def exact_round(copies: int, args: argparse.Namespace) -> dict[str, Any]:
    n, bs = args.entities, args.block_size
    values = (20 + np.random.default_rng(args.seed + 1).normal(0, 2, n)).astype(np.float32)
    total = float(values.astype(np.float64).sum())
    blocks = -(-n // bs)
    cluster, nodes = start_cluster(f"exact{copies}", copies, args)
    try:
        t = time.monotonic()
        with Client(nodes[0].addr, acks="all") as client:
            client.send(records(np.arange(n, dtype=np.uint32), EXACT_CHANNEL, values))
            client.flush()
            accepted, rejected = client.accepted, dict(client.rejected)
        load_s = time.monotonic() - t

        def figures(node: NodeProc) -> tuple[int, int, float] | None:
            rows = rows_of(node, EXACT_CHANNEL)
            if rows is None:
                return None
            return len(rows), sum(c for c, _ in rows.values()), sum(s for _, s in rows.values())

        def exact(group: list[NodeProc]) -> bool:
            for node in group:
                f = figures(node)
                if f is None or f[0] != blocks or f[1] != n or not math.isclose(f[2], total, rel_tol=RTOL):
                    return False
            return True

        t = time.monotonic()
        before_ok = True
        while not exact(nodes):
            if time.monotonic() - t > args.timeout:
                before_ok = False
                break
            time.sleep(0.1)
        before_s = time.monotonic() - t
        victim = next(x for x in nodes if x.name == VICTIM)
        survivors = [x for x in nodes if x is not victim]
        sigkill(victim)
        killed = time.monotonic()
        exact_s = copies_s = members_s = None
        dips = 0  # polls, after both were exact on the new map, where one was not
        want_held = n * min(copies, len(survivors))
        names = [x.name for x in survivors]
        last: Any = None
        since = killed
        while time.monotonic() - killed < args.timeout and (exact_s is None or copies_s is None or members_s is None):
            views = [figures(x) for x in survivors]
            maps = []
            for x in survivors:
                try:
                    maps.append(x.ctl("status").get("placement_members"))
                except (ControlError, OSError):
                    maps.append(None)
            h = held_sum(survivors)
            now = time.monotonic()
            moved = all(m == names for m in maps)  # both act on a map without the victim
            if members_s is None and moved:
                members_s = now - killed
            good = moved and all(v is not None and v[0] == blocks and v[1] == n
                                 and math.isclose(v[2], total, rel_tol=RTOL) and v == views[0] for v in views)
            if exact_s is None and good:
                exact_s = now - killed
            elif exact_s is not None and not good:
                dips += 1
            if copies_s is None and moved and h is not None and h[0] == want_held and h[1] == n:
                copies_s = now - killed
            if (views, maps, h) != last:
                last, since = (views, maps, h), now
            elif moved and now - since >= args.stable:
                break  # the map moved on and nothing changed since: the missing figures will not come
            time.sleep(0.1)
        final = [figures(x) for x in survivors]
        held = held_sum(survivors)
    finally:
        close(cluster)
    counts = [f[1] for f in final if f is not None]
    return {
        "copies": copies, "entities": n, "accepted": accepted, "rejected": rejected, "load_s": round(load_s, 2),
        "exact_before": before_ok, "exact_before_s": round(before_s, 2),
        "exact_s": round(exact_s, 3) if exact_s is not None else None, "inexact_after_exact": dips,
        "copies_again_s": round(copies_s, 3) if copies_s is not None else None,
        "map_without_victim_s": round(members_s, 3) if members_s is not None else None,
        "survivor_figures": [list(f) if f is not None else None for f in final],
        "survivors_entities": min(counts) if counts else None, "lost": n - min(counts) if counts else None,
        "survivors_held": held[0] if held else None, "survivors_owned": held[1] if held else None,
    }


def scenario_kill(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"stream": [], "exact": []}
    for copies in rounds(args):
        r = stream_round(copies, args)
        out["stream"].append(r)
        print(f"  kill: stream with {copies} cop{'ies' if copies > 1 else 'y'} done: {r['batches']} batches",
              file=sys.stderr, flush=True)
        e = exact_round(copies, args)
        out["exact"].append(e)
        print(f"  kill: exact with {copies} cop{'ies' if copies > 1 else 'y'} done", file=sys.stderr, flush=True)
    return out


def rounds(args: argparse.Namespace) -> list[int]:
    return [args.copies] + ([args.baseline] if args.baseline and args.baseline != args.copies else [])


def print_kill(out: dict[str, Any], args: argparse.Namespace) -> None:
    per = args.batch // args.block_size
    print(f"\nkill (1) stream: 3 nodes, a producer given {GIVEN} (acks all, one send + flush a batch of "
          f"{args.batch:,} fresh ids = {per} blocks of {args.block_size}) for {args.duration:g} s; "
          f"{VICTIM} SIGKILLed {args.kill_at:g} s in; then no fresh data, survivors' blocks polled until "
          f"identical for {args.stable:g} s")
    print(f"  {'copies':>6} {'sent':>10} {'acked':>10} {'acked lost':>10} {'(missing':>9} {'wrong)':>7} "
          f"{'not acked':>10} {'twice':>5} {'kill at':>7} {'acks back':>9} {'settled':>7} {'agree':>5}")
    for r in out["stream"]:
        back = f"{r['acks_resumed_s']:.2f} s" if r["acks_resumed_s"] is not None else "never"
        kill_at = f"{r['kill_at_s']:.2f} s" if r["kill_at_s"] is not None else "-"
        print(f"  {r['copies']:>6} {r['records']:>10,} {r['acknowledged']:>10,} {r['acked_lost']:>10,} "
              f"{r['acked_missing']:>9,} {r['acked_wrong']:>7,} {r['not_acknowledged']:>10,} "
              f"{'YES' if r['applied_twice'] else 'no':>5} {kill_at:>7} {back:>9} "
              f"{r['settle_s']:>5.1f} s {'yes' if r['survivors_identical'] else 'NO':>5}")
    print("  (acked: records of batches wholly acknowledged; acked lost: of those, records of a block missing on the "
          "survivors or with a wrong count or sum; twice: some block over its count; acks back: from the SIGKILL to "
          "the next whole batch acknowledged; settled: until both survivors' rows stayed the same; agree: identical)")
    for r in out["stream"]:
        reasons = ", ".join(f"{k} {v:,}" for k, v in sorted(r["reasons"].items())) or "none"
        c = r["client"]
        print(f"    copies {r['copies']}: {r['rate']:,.0f} records/s sent; not acknowledged by reason: {reasons}"
              f" (unconfirmed {c['unconfirmed']:,}); batches acknowledged in part {r['partly_batches']} "
              f"({r['partly_records']:,} records acknowledged in them, at least {r['partly_surely_there']:,} there); "
              f"blocks of unacknowledged batches exact anyway {r['unacked_blocks_exact']} of {r['unacked_blocks']}; "
              f"slowest batch {r['longest_batch_s']:.2f} s; client: {c['rehomed']:,} records rehomed, "
              f"{c['retries']} retries, {c['map_fetches']} maps")
        if r["lost_batches"]:
            print(f"      acknowledged batches with a block missing or wrong (first 20): {r['lost_batches']}")
        if r["applied_twice"]:
            print(f"      blocks over their count (first 20): {r['blocks_over_count']}")
        if r["unexpected_blocks"]:
            print(f"      blocks nobody sent (first 20): {r['unexpected_blocks']}")
        if not r["stable"]:
            print(f"      the survivors' rows did not settle within {args.timeout:g} s "
                  f"(identical at the end: {r['survivors_identical']}); checked against the last answer")
        print(f"      survivors afterwards: map {r['survivor_members']}, held {r['survivors_held']}, "
              f"owned {r['survivors_owned']} (of {r['records']:,} sent)")
    print(f"\nkill (2) exact: {args.entities:,} fresh entities loaded with acks all, every node exact; producer "
          f"stopped; {VICTIM} SIGKILLed; timed until both survivors' blocks answer exactly {args.entities:,} "
          f"entities and their sum")
    print(f"  {'copies':>6} {'accepted':>10} {'exact after':>11} {'map w/o victim':>14} {'copies again':>12} "
          f"{'survivors see':>13} {'lost':>10}")
    for e in out["exact"]:
        ex = f"{e['exact_s']:.2f} s" if e["exact_s"] is not None else "never"
        mp = f"{e['map_without_victim_s']:.2f} s" if e["map_without_victim_s"] is not None else "-"
        cp = f"{e['copies_again_s']:.2f} s" if e["copies_again_s"] is not None else "-"
        seen = f"{e['survivors_entities']:,}" if e["survivors_entities"] is not None else "-"
        lost = f"{e['lost']:,}" if e["lost"] is not None else "-"
        print(f"  {e['copies']:>6} {e['accepted']:>10,} {ex:>11} {mp:>14} {cp:>12} {seen:>13} {lost:>10}")
        if e["inexact_after_exact"]:
            print(f"      {e['inexact_after_exact']} polls after that were not exact")
        if not e["exact_before"]:
            print(f"      not every node was exact within {args.timeout:g} s before the SIGKILL")
        if e["rejected"]:
            print(f"      refused at load: {e['rejected']}")
    print("  (map w/o victim: both survivors act on a map without it; exact after: on that map, both survivors' "
          "blocks give every entity and the sum, identical; copies again: their stores hold entities x copies "
          "again, each owned once; survivors see: entities in their blocks at the end, the fewer of the two)")


# -- memory -------------------------------------------------------------------------------


def memory_round(copies: int, args: argparse.Namespace) -> dict[str, Any]:
    n = args.entities
    cluster, nodes = start_cluster(f"mem{copies}", copies, args)
    try:
        time.sleep(args.idle)
        before = rss_by_node(nodes)
        peak = sum(before.values())
        values = (20 + np.random.default_rng(args.seed + 2).normal(0, 2, n)).astype(np.float32)
        recs = records(np.arange(n, dtype=np.uint32), MEMORY_CHANNEL, values)
        t = time.monotonic()
        with Client(nodes[0].addr, acks="all") as client:
            client.send(recs)
            client.flush()
            accepted = client.accepted
        del recs
        want = n * copies
        arrived = False
        h: tuple[int, int] | None = None
        while time.monotonic() - t < args.timeout:
            peak = max(peak, rss_bytes(cluster_pids(nodes)))
            h = held_sum(nodes)
            if h is not None and h[0] >= want and h[1] >= n:
                arrived = True
                break
            time.sleep(0.25)
        stored_s = time.monotonic() - t
        end = time.monotonic() + args.settle
        while time.monotonic() < end:
            peak = max(peak, rss_bytes(cluster_pids(nodes)))
            time.sleep(0.25)
        after = rss_by_node(nodes)
        peak = max(peak, sum(after.values()))
        per_node = {x.name: x.ctl("status") for x in nodes}
    finally:
        close(cluster)
    growth = sum(after.values()) - sum(before.values())
    return {
        "copies": copies, "entities": n, "accepted": accepted, "all_arrived": arrived, "stored_s": round(stored_s, 2),
        "held": h[0] if h else None, "owned": h[1] if h else None,
        "rss_before": sum(before.values()), "rss_after": sum(after.values()), "rss_peak": peak, "growth": growth,
        "bytes_per_entity": growth / n, "bytes_per_entity_per_copy": growth / n / copies,
        "node_growth": {k: after[k] - before[k] for k in after},
        "node_held": {k: int(s.get("held_entities", 0)) for k, s in per_node.items()},
        "node_owned": {k: int(s.get("entities", 0)) for k, s in per_node.items()},
    }


def scenario_memory(args: argparse.Namespace) -> dict[str, Any]:
    runs = []
    for copies in rounds(args):
        runs.append(memory_round(copies, args))
        print(f"  memory: {copies} cop{'ies' if copies > 1 else 'y'} done", file=sys.stderr, flush=True)
    out: dict[str, Any] = {"runs": runs, "target_bytes_2_copies": TARGET_BYTES_2}
    by = {r["copies"]: r for r in runs}
    if len(by) == 2:
        hi, lo = max(by), min(by)
        out["extra_copy_bytes"] = (by[hi]["growth"] - by[lo]["growth"]) / args.entities / (hi - lo)
    return out


def print_memory(out: dict[str, Any], args: argparse.Namespace) -> None:
    mb = 1024 * 1024
    print(f"\nmemory: RSS of all node processes (node + mesh process of a, b, c) before, and {args.settle:g} s after, "
          f"{args.entities:,} new entities are stored with acks all")
    print(f"  {'copies':>6} {'before MB':>9} {'after MB':>8} {'peak MB':>7} {'growth MB':>9} {'B/entity':>8} "
          f"{'B/entity/copy':>13} {'held':>10} {'owned':>10}")
    for r in out["runs"]:
        held = f"{r['held']:,}" if r["held"] is not None else "-"
        owned = f"{r['owned']:,}" if r["owned"] is not None else "-"
        print(f"  {r['copies']:>6} {r['rss_before'] / mb:>9.1f} {r['rss_after'] / mb:>8.1f} {r['rss_peak'] / mb:>7.1f} "
              f"{r['growth'] / mb:>9.1f} {r['bytes_per_entity']:>8.0f} {r['bytes_per_entity_per_copy']:>13.0f} "
              f"{held:>10} {owned:>10}")
        print("         per node: " + ", ".join(
            f"{k} {v / mb:+.1f} MB ({r['node_held'].get(k, 0):,} held, {r['node_owned'].get(k, 0):,} owned)"
            for k, v in r["node_growth"].items()))
        if not r["all_arrived"]:
            print(f"         not all arrived within {args.timeout:g} s: held {held} of "
                  f"{r['entities'] * r['copies']:,} (accepted {r['accepted']:,})")
    if "extra_copy_bytes" in out:
        print(f"  one more copy costs {out['extra_copy_bytes']:.0f} B per entity (growth difference between the runs)")
    two = next((r for r in out["runs"] if r["copies"] == 2), None)
    print(f"  target: at most {TARGET_BYTES_2} B per entity with 2 copies"
          + (f"; measured {two['bytes_per_entity']:.0f} B" if two else ""))


# -- main ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenarios", default="kill,memory", help="any of kill,memory")
    p.add_argument("--copies", type=int, default=2, help="engine.replicas of the measured clusters")
    p.add_argument("--baseline", type=int, default=1, help="engine.replicas of the baseline rounds (0: none)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds the producer streams (kill)")
    p.add_argument("--kill-at", type=float, help="seconds into the stream b is SIGKILLed (default: half way)")
    p.add_argument("--after", type=float, default=2.0,
                   help="the stream goes on past --duration until batches were acknowledged again for this long")
    p.add_argument("--batch", type=int, default=10_000, help="records a batch (a multiple of --block-size)")
    p.add_argument("--entities", type=int, default=M, help="entities loaded (kill's exact round, memory)")
    p.add_argument("--block-size", type=int, default=1000, help="engine.block_size of every node")
    p.add_argument("--stable", type=float, default=3.0, help="seconds the survivors' rows stay the same to be settled")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds any wait gives up after")
    p.add_argument("--idle", type=float, default=3.0, help="seconds a fresh cluster idles before RSS is read (memory)")
    p.add_argument("--settle", type=float, default=5.0, help="seconds after the last entity is stored (memory)")
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args(argv)
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = set(scenarios) - {"kill", "memory"}
    if unknown:
        p.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    if args.batch <= 0 or args.batch % args.block_size:
        p.error("--batch must be a positive multiple of --block-size")
    if args.copies < 1 or args.baseline < 0:
        p.error("--copies must be at least 1, --baseline at least 0")
    if args.kill_at is None:
        args.kill_at = args.duration / 2
    print(f"replicas: {os.cpu_count()} cores ({cpu_model()}), load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; rerun: python bench/replicas.py "
          + " ".join(sys.argv[1:] if argv is None else argv), flush=True)
    results: dict[str, Any] = {}
    if "kill" in scenarios:
        results["kill"] = scenario_kill(args)
        print_kill(results["kill"], args)
    if "memory" in scenarios:
        results["memory"] = scenario_memory(args)
        print_memory(results["memory"], args)
    print(json.dumps({"bench": "replicas", "copies": args.copies, "baseline": args.baseline,
                      "block_size": args.block_size, "batch": args.batch, "entities": args.entities,
                      "cores": os.cpu_count(), "cpu": cpu_model(), **results}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
