"""A fault campaign over acknowledged records: does a record a producer was told is stored
(acks "all") survive a SIGKILL, a partition, a full disk and a clock an hour off?

    python bench/faults.py [--rounds kill,partition,disk,clock] [--seconds 12] [--fault-at 4]
                           [--heal-at 9] [--extra 15] [--batch 10000] [--seed 7] [--stable 3]
                           [--settle-timeout 60] [--reply-timeout 15] [--isolate leader|follower]
                           [--isolated-batches 3] [--leave-dead] [--profile lan] [--keep] [--json]

Needs root for the partition (network namespaces) and disk (tmpfs) rounds, and the
``faketime`` package for the clock round. About 2 minutes on 2 cores.

Every round starts a fresh cluster of 3 real ``corec-node run`` processes a, b, c (lan
timers, ``COREC_ENGINE_REPLICAS=2``: an owner and one replica per block, block size 1000;
b and c joined to a) and waits until every node acts on the map [a, b, c], nobody
learning, one leader. A producer, a process of its own (``corec_node.client.Client`` with
acks "all"), then streams batches of FRESH ids for --seconds s: batch k holds ids
[k*B, (k+1)*B) of the round's own channel (B = --batch, a multiple of the block size),
values drawn from an RNG seeded by (seed, channel, k), so every block's count and value
sum is known. Each batch is one ``send`` and one ``flush``; it counts as acknowledged when
``Client.accepted`` grew by its size (a batch left unconfirmed ends that client: the next
batch gets a new one, so no late answer is ever credited to the wrong batch). The fault is
injected --fault-at s into the stream and, where it makes sense, healed at --heal-at s;
past --seconds the stream goes on (at most --extra s) until a batch begun after the heal
is acknowledged:

  kill       c (it holds blocks; the producer is given a) SIGKILLed, both of its processes
             at once; at --heal-at it is started again on its own data directory (its
             status sampled for 4 s: learner or not, map, entities owned and held).
  partition  on the namespace test bed (``corec_node.testing.netns``: one network
             namespace per node, veth pairs, bridges; the producer in a namespace of its
             own on the same bridge) the leader's link (--isolate follower: a follower's)
             is detached from the bridge, so it is cut off from the other two, and
             re-attached at --heal-at. The producer is given a node of the majority. One s
             into the cut, a second producer inside the isolated node's namespace sends a
             few batches (--isolated-batches, fresh ids far above the stream's) to the
             isolated node itself, unrouted: the minority side must refuse them
             (``no_leader``, offered again for 1 s), so none may be acknowledged; what it
             acknowledged is counted and checked like the stream.
  disk       c's data directory on a small tmpfs (``mount -t tmpfs -o size=8m``), filled
             to the last byte at --fault-at (SQLite writes fail: the node must keep
             running and ingest go on), room made again at --heal-at.
  clock      c's wall clock an hour ahead from its start (libfaketime's LD_PRELOAD with
             FAKETIME=+1h, its monotonic clock left alone); no other fault.

After the stream, with no fresh data, ``blocks`` of the channel is polled on every live node
until each answer stays the same for --stable s, all are identical and every node acts on
the map of the live nodes with nobody learning (or --settle-timeout s passed, or nothing
changed for 5 x --stable s). Then the checker, on EVERY live node's answer: each block of
each acknowledged batch must be there with exactly its count (the block size) and value sum
(count x mean, relative tolerance 1e-6). Printed per round: batches and records sent,
acknowledged, acknowledged but lost (block missing, or count or sum wrong; the worst
node, and the block numbers), blocks over their count (applied twice), records accepted
in batches acknowledged in part (and how many of them are not there as exact blocks),
records not acknowledged by reason (the nodes' refusals, and no answer within the
producer's reply timeout), whether every live node gave the same answer (if not: what
each lacks, by the owner the others name), entities owned and held over the live nodes
against the blocks' (each owned once, held twice), and per node: alive, owned, held,
dropped and not_replicated records (``status``), log lines at error level. A round that
cannot run here (no network namespaces, no faketime, no tmpfs) says why and the campaign
goes on.

Figures only: nothing passes or fails. Node logs are kept (their directory printed) when a
round found something wrong, or with --keep. Ends with one JSON line {"bench": "faults", ...}.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import itertools
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
from _machine import cpu_model

from corec_node.client import Client
from corec_node.log import parse_line
from corec_node.shell.control import ControlError
from corec_node.testing.cluster import Cluster, NodeProc, eventually
from corec_node.wire import ENTITY_DTYPE

NAMES = ["a", "b", "c"]
GIVEN, VICTIM = "a", "c"  # the producer is given a; the fault hits c (partition: see --isolate)
BLOCK_SIZE = 1000
COPIES = 2
RTOL = 1e-6
CHANNELS = {"kill": 1, "partition": 2, "disk": 3, "clock": 4}
ISOLATED_FIRST_ID = 3_000_000_000  # the isolated producer's ids: far above any stream's
ROUNDS = ("kill", "partition", "disk", "clock")
READY_TIMEOUT = 90.0


def log(*parts: Any) -> None:
    print(*parts, file=sys.stderr, flush=True)


# -- records ----------------------------------------------------------------------------------


def batch_values(seed: int, channel: int, k: int, size: int) -> np.ndarray:
    """Batch k's values: the same for the producer and the checker."""
    return np.random.default_rng([seed, channel, k]).uniform(1.0, 100.0, size).astype(np.float32)


def batch_records(seed: int, channel: int, k: int, size: int) -> np.ndarray:
    out = np.zeros(size, dtype=ENTITY_DTYPE)
    out["id"] = np.arange(k * size, (k + 1) * size, dtype=np.uint64).astype(np.uint32)
    out["channel"] = channel
    out["value"] = batch_values(seed, channel, k, size)
    out["active"] = 1
    return out


def block_sums(seed: int, channel: int, k: int, size: int) -> dict[int, float]:
    """{block: value sum} of batch k (float64 of the float32 values)."""
    v = batch_values(seed, channel, k, size).astype(np.float64).reshape(-1, BLOCK_SIZE).sum(axis=1)
    first = k * size // BLOCK_SIZE
    return {(channel << 32) | (first + j): float(s) for j, s in enumerate(v.tolist())}


# -- the producer: a process of its own (on the test bed, inside a namespace) ------------------


def producer_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="faults.py --producer")
    p.add_argument("--addr", required=True)
    p.add_argument("--channel", type=int, required=True)
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--first", type=int, default=0, help="the first batch number k")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--max-batches", type=int, default=0, help="0: as many as --seconds allows")
    p.add_argument("--resume-after", type=float, default=None,
                   help="s from the start: past --seconds, go on until a batch begun after it is acknowledged")
    p.add_argument("--extra", type=float, default=15.0, help="s past --seconds at most, for --resume-after")
    p.add_argument("--reply-timeout", type=float, default=15.0)
    p.add_argument("--retry-busy", type=float, default=30.0)
    p.add_argument("--no-route", action="store_true", help="everything to --addr")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    out = open(a.out, "a", buffering=1)  # noqa: SIM115 - one line a batch, read by the campaign

    def emit(**fields: Any) -> None:
        out.write(json.dumps(fields) + "\n")

    def client() -> Client:
        return Client(a.addr, acks="all", reply_timeout=a.reply_timeout, retry_busy=a.retry_busy,
                      route=not a.no_route)

    c = client()
    clients, retries, rehomed, maps = 1, 0, 0, 0
    emit(event="start", t=time.time())
    begun = time.monotonic()
    end, hard_end = begun + a.seconds, begun + a.seconds + a.extra
    resumed = a.resume_after is None
    k, n = a.first, 0
    try:
        while (not a.max_batches or n < a.max_batches) and (
                time.monotonic() < end or (not resumed and time.monotonic() < hard_end)):
            began = time.monotonic()
            recs = batch_records(a.seed, a.channel, k, a.batch)
            acc0, rej0, unc0 = c.accepted, collections.Counter(c.rejected), c.unconfirmed
            t0 = time.time()
            c.send(recs)
            c.flush()
            rej = collections.Counter(c.rejected)
            rej.subtract(rej0)
            unc = c.unconfirmed - unc0
            if not resumed and began - begun >= a.resume_after and c.accepted - acc0 >= a.batch:
                resumed = True
            emit(event="batch", k=k, accepted=c.accepted - acc0, rejected={r: v for r, v in rej.items() if v},
                 unconfirmed=unc, t0=t0, t1=time.time(), client=clients, epoch=c.map_epoch, routed=c.routed)
            k += 1
            n += 1
            if unc:  # its answer may still come: a fresh client, so it is never credited to a later batch
                retries, rehomed, maps = retries + c.retries, rehomed + c.rehomed, maps + c.map_fetches
                c.close()  # returns at once: every batch was answered or expired
                c = client()
                clients += 1
    except Exception as exc:  # noqa: BLE001 - reported to the campaign, which goes on
        emit(event="error", error=f"{type(exc).__name__}: {exc}", k=k)
    finally:
        retries, rehomed, maps = retries + c.retries, rehomed + c.rehomed, maps + c.map_fetches
        with contextlib.suppress(Exception):
            c.close()
        emit(event="end", t=time.time(), clients=clients, retries=retries, rehomed=rehomed, map_fetches=maps)
        out.close()
    return 0


def producer_argv(addr: str, channel: int, out: Path, args: argparse.Namespace, *, first: int = 0,
                  seconds: float | None = None, max_batches: int = 0, retry_busy: float | None = None,
                  reply_timeout: float | None = None, route: bool = True,
                  resume_after: float | None = None) -> list[str]:
    argv = [sys.executable, str(Path(__file__).resolve()), "--producer", "--addr", addr, "--channel", str(channel),
            "--batch", str(args.batch), "--seed", str(args.seed), "--first", str(first),
            "--seconds", str(args.seconds if seconds is None else seconds), "--max-batches", str(max_batches),
            "--reply-timeout", str(args.reply_timeout if reply_timeout is None else reply_timeout),
            "--retry-busy", str(30.0 if retry_busy is None else retry_busy), "--out", str(out)]
    if resume_after is not None:
        argv += ["--resume-after", str(resume_after), "--extra", str(args.extra)]
    return argv + ([] if route else ["--no-route"])


def read_producer(path: Path) -> dict[str, Any]:
    """The producer's lines: {"start": t, "batches": [...], "end": {...}, "error": str|None}."""
    got: dict[str, Any] = {"start": None, "batches": [], "end": None, "error": None}
    try:
        text = path.read_text()
    except FileNotFoundError:
        return got
    for line in text.splitlines():
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if e.get("event") == "start":
            got["start"] = e["t"]
        elif e.get("event") == "batch":
            got["batches"].append(e)
        elif e.get("event") == "end":
            got["end"] = e
        elif e.get("event") == "error":
            got["error"] = e["error"]
    return got


def wait_started(path: Path, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> float:
    """The producer's start stamp (wall clock) once it wrote it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        t = read_producer(path)["start"]
        if t is not None:
            return t
        if proc.poll() is not None:
            raise RuntimeError(f"the producer exited ({proc.returncode}) before it started")
        time.sleep(0.05)
    raise RuntimeError("the producer did not start within 30 s")


def wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> int | None:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
        return None


# -- nodes ------------------------------------------------------------------------------------


def node_env(args: argparse.Namespace) -> dict[str, str]:
    return {"COREC_MESH_PROFILE": args.profile, "COREC_ENGINE_BLOCK_SIZE": str(BLOCK_SIZE),
            "COREC_ENGINE_REPLICAS": str(COPIES)}


def status_of(node: NodeProc) -> dict[str, Any] | None:
    try:
        return node.ctl("status")
    except (ControlError, OSError):
        return None


def rows_of(node: NodeProc, channel: int) -> dict[int, tuple[int, float | None, int]] | None:
    """{block: (count, mean, blocks folded in)} from the node's ``blocks``; None: no answer."""
    try:
        rows = node.ctl("blocks", channel=channel)
    except (ControlError, OSError):
        return None
    return {int(r["block"]): (int(r["count"]), None if r.get("mean") is None else float(r["mean"]),
                              int(r.get("blocks") or 1)) for r in rows}


def holders_of(node: NodeProc, channel: int) -> dict[int, tuple[str, tuple[str, ...]]] | None:
    """{block: (owner, replicas)} as the node's ``blocks`` names them; None: no answer."""
    try:
        rows = node.ctl("blocks", channel=channel)
    except (ControlError, OSError):
        return None
    return {int(r["block"]): (str(r.get("owner")), tuple(r.get("replicas") or ())) for r in rows}


def disagreement(nodes: list[NodeProc], views: dict[str, Any], channel: int) -> dict[str, Any]:
    """Where the answers differ: for each node, the blocks another node shows and it does not
    (or shows with other figures), grouped by the owner the other nodes name for them."""
    holders = {n.name: holders_of(n, channel) or {} for n in nodes}
    everyone: set[int] = set().union(*(set(v or {}) for v in views.values()))
    out: dict[str, Any] = {}
    for name, view in views.items():
        view = view or {}
        missing = sorted(everyone - set(view))
        differing = sorted(b for b in view if any((v or {}).get(b, view[b]) != view[b] for v in views.values()))
        if not missing and not differing:
            continue
        by_owner: collections.Counter[str] = collections.Counter()
        named: dict[int, Any] = {}
        for b in missing:
            seen = next(((h[b], other) for other, h in holders.items() if other != name and b in h), None)
            by_owner[f"{seen[0][0]}" if seen else "?"] += 1
            if seen and len(named) < 3:
                named[b] = {"owner": seen[0][0], "replicas": list(seen[0][1]), "per": seen[1]}
        out[name] = {"missing": len(missing), "missing_by_owner": dict(by_owner), "differing": len(differing),
                     "examples": named, "first_missing": missing[:5]}
    return out


def ready(nodes: list[NodeProc], names: list[str]) -> bool:
    st = [status_of(n) for n in nodes]
    if any(s is None for s in st):
        return False
    leaders = {s.get("leader") for s in st}
    return (len(leaders) == 1 and bool(leaders.pop())
            and all(s.get("placement_members") == names and not s.get("learners") and not s.get("learner")
                    and s.get("routed") for s in st))


def wait_ready(nodes: list[NodeProc], names: list[str]) -> None:
    eventually(lambda: ready(nodes, names), READY_TIMEOUT, interval=0.25,
               message=f"every node a member of {names}, one leader, none learning")


def start_loopback(root: Path, args: argparse.Namespace, extra: dict[str, dict[str, str]] | None = None,
                   data_dirs: dict[str, Path] | None = None) -> tuple[Cluster, list[NodeProc]]:
    """3 nodes on loopback, b and c joined to a, ready; the cluster is closed on failure."""
    cluster = Cluster(root)
    env = node_env(args)
    extra, data_dirs = extra or {}, data_dirs or {}
    try:
        first = cluster.start(NAMES[0], extra_env={**env, **extra.get(NAMES[0], {})},
                              data_dir=data_dirs.get(NAMES[0]))
        first.wait_ready(30)
        nodes = [first] + [cluster.start(n, join=[first.addr], extra_env={**env, **extra.get(n, {})},
                                         data_dir=data_dirs.get(n)) for n in NAMES[1:]]
        for n in nodes:
            n.wait_ready(30)
        wait_ready(nodes, NAMES)
    except BaseException:
        cluster.close()
        raise
    return cluster, nodes


def sigkill(node: NodeProc) -> None:
    """SIGKILL both processes of the node at once, then reap it."""
    for pid in node.pids():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if node.proc is not None:
        node.proc.wait(10)


def error_lines(node: NodeProc) -> list[str]:
    """The node's log lines at error level, and tracebacks' last lines."""
    try:
        lines = node.log_path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return []
    out = [ln for ln in lines if ln.startswith("ts=") and " level=error " in ln]
    out += [ln for ln in lines if not ln.startswith("ts=") and ("Error" in ln or "Traceback" in ln)]
    return out


def events_of(node: NodeProc, *names: str) -> list[str]:
    try:
        lines = node.log_path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return []
    return [ln for ln in lines if any(f" event={n} " in ln or ln.endswith(f" event={n}") for n in names)]


def membership_of(node: NodeProc, name: str, since: float | None) -> list[str]:
    """How ``node`` saw ``name``: its member_changed and learner_ready lines, as
    "+12.34s dead" (s from the stream's start)."""
    out = []
    for ln in events_of(node, "member_changed", "learner_ready"):
        e = parse_line(ln)
        if name not in (e.get("name"), e.get("member")):
            continue
        t = datetime.strptime(e["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()
        what = e.get("new") or e.get("event")
        out.append(f"{t - since:+.2f}s {what}" if since is not None else what)
    return out


# -- settling and the checker -------------------------------------------------------------------


def settle(nodes: list[NodeProc], channel: int, names: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """Poll ``blocks`` on every node until the answers are identical and steady for --stable s
    on the map ``names`` with nobody learning; or until nothing changed for 5 x --stable s; or
    --settle-timeout s. Returns each node's last answer and how it ended."""
    started = time.monotonic()
    last: Any = None
    since = started
    while True:
        views = [rows_of(n, channel) for n in nodes]
        sts = [status_of(n) for n in nodes]
        maps = [s.get("placement_members") if s else None for s in sts]
        learning = any(s is None or s.get("learner") or s.get("learners") for s in sts)
        now = time.monotonic()
        state = (views, maps, learning)
        if state != last:
            last, since = state, now
        steady = now - since
        identical = all(v is not None for v in views) and all(v == views[0] for v in views)
        members_ok = all(m == names for m in maps) and not learning
        if identical and members_ok and steady >= args.stable:
            reason = "settled"
            break
        if steady >= 5 * args.stable:
            reason = "unchanged"
            break
        if now - started >= args.settle_timeout:
            reason = "timeout"
            break
        time.sleep(0.25)
    return {"views": {n.name: v for n, v in zip(nodes, views, strict=True)}, "identical": identical,
            "members_ok": members_ok, "maps": {n.name: m for n, m in zip(nodes, maps, strict=True)},
            "ended": reason, "settle_s": round(time.monotonic() - started, 2)}


def judge(view: dict[int, tuple[int, float | None, int]] | None, batches: list[dict[str, Any]], channel: int,
          args: argparse.Namespace) -> dict[str, Any]:
    """One node's answer against the batches: what was acknowledged and is not there exactly."""
    size = args.batch
    view = view or {}
    r: dict[str, Any] = {"acked_lost": 0, "acked_missing": 0, "acked_wrong": 0, "lost_batches": [],
                         "over_blocks": [], "unexpected_blocks": [], "unacked_blocks": 0, "unacked_blocks_exact": 0,
                         "wrong_examples": [], "lost_blocks": [], "answered": bool(view), "partly_short": 0, "partly_short_batches": []}
    expected: set[int] = set()
    for b in batches:
        sums = block_sums(args.seed, channel, b["k"], size)
        expected.update(sums)
        acked = b["accepted"] >= size
        bad = 0
        for block, want in sums.items():
            row = view.get(block)
            if row is not None and row[0] > BLOCK_SIZE:
                r["over_blocks"].append(block)
            if row is None:
                verdict = "missing"
            else:
                count, mean, _ = row
                total = count * (mean or 0.0)
                verdict = "ok" if count == BLOCK_SIZE and math.isclose(total, want, rel_tol=RTOL) else "wrong"
                if verdict == "wrong" and acked and len(r["wrong_examples"]) < 5:
                    r["wrong_examples"].append({"block": block, "k": b["k"], "count": count, "sum": total,
                                                "want_sum": want})
            if acked:
                if verdict != "ok":
                    bad += 1
                    r["acked_" + verdict] += BLOCK_SIZE
                    if len(r["lost_blocks"]) < 20:
                        r["lost_blocks"].append(block & 0xFFFFFFFF)
            else:
                r["unacked_blocks"] += 1
                r["unacked_blocks_exact"] += verdict == "ok"
        if not acked and b["accepted"] > 0:  # acknowledged in part: which blocks is not known
            exact = sum(1 for block, want in sums.items() if (row := view.get(block)) is not None
                        and row[0] == BLOCK_SIZE and math.isclose(row[0] * (row[1] or 0.0), want, rel_tol=RTOL))
            short = max(0, b["accepted"] - exact * BLOCK_SIZE)
            r["partly_short"] += short
            if short:
                r["partly_short_batches"].append(b["k"])
        if bad:
            r["acked_lost"] += bad * BLOCK_SIZE
            r["lost_batches"].append(b["k"])
    r["unexpected_blocks"] = sorted(b for b in view if b not in expected)
    return r


def tally(batches: list[dict[str, Any]], size: int) -> dict[str, Any]:
    reasons: collections.Counter[str] = collections.Counter()
    acked = partly = partly_records = 0
    for b in batches:
        if b["accepted"] >= size:
            acked += 1
        else:
            partly += b["accepted"] > 0
            partly_records += b["accepted"]
            reasons.update(b["rejected"])
            if b["unconfirmed"] > 0:
                reasons["no answer"] += b["unconfirmed"]
    return {"batches": len(batches), "records": len(batches) * size, "acked_batches": acked,
            "acked_records": acked * size, "not_acked_records": len(batches) * size - acked * size,
            "partly_acked_batches": partly, "partly_acked_records": partly_records, "reasons": dict(reasons)}


def stream_figures(batches: list[dict[str, Any]], start: float, fault_at: float | None, size: int,
                   heal_at: float | None = None) -> dict[str, Any]:
    """Timing: the longest stretch without a fully acknowledged batch, the slowest batch, how
    soon after the fault a batch was fully acknowledged again, and (``heal_at``) how soon
    after the heal a batch begun after it was."""
    done = sorted(b["t1"] for b in batches if b["accepted"] >= size)
    marks = [start, *done, max([b["t1"] for b in batches], default=start)]
    gap = max((y - x for x, y in itertools.pairwise(marks)), default=0.0)
    slowest = max((b["t1"] - b["t0"] for b in batches), default=0.0)
    back = None
    if fault_at is not None:
        after = [t for t in done if t >= start + fault_at]
        back = round(after[0] - (start + fault_at), 3) if after else None
    healed = None
    if heal_at is not None:
        after = sorted(b["t1"] for b in batches if b["accepted"] >= size and b["t0"] >= start + heal_at)
        healed = round(after[0] - (start + heal_at), 3) if after else None
    span = (max(b["t1"] for b in batches) - start) if batches else 0.0
    return {"stream_s": round(span, 2), "rate": round(len(batches) * size / span) if span else None,
            "longest_no_ack_s": round(gap, 3), "slowest_batch_s": round(slowest, 3), "acks_back_s": back,
            "acks_after_heal_s": healed}


def check_round(result: dict[str, Any], nodes: list[NodeProc], names: list[str], channel: int,
                groups: dict[str, list[dict[str, Any]]], args: argparse.Namespace) -> None:
    """Settle, then judge every live node's answer for every group of batches; fills ``result``."""
    live = [n for n in nodes if n.proc is not None and n.proc.poll() is None]
    s = settle(live, channel, [n for n in names if n in {x.name for x in live}], args)
    result["settle"] = {k: v for k, v in s.items() if k != "views"}
    result["same_answer"] = s["identical"]
    result["rows"] = {name: (len(v) if v is not None else None) for name, v in s["views"].items()}
    if not s["identical"]:
        result["disagreement"] = disagreement(live, s["views"], channel)
    counts = [sum(c for c, _, _ in v.values()) for v in s["views"].values() if v is not None]
    result["entities_shown"] = max(counts) if counts else None
    for group, batches in groups.items():
        g = tally(batches, args.batch)
        per_node = {name: judge(v, batches, channel, args) for name, v in s["views"].items()}
        g["per_node"] = per_node
        g["acked_lost"] = max((j["acked_lost"] for j in per_node.values()), default=0)
        g["acked_missing"] = max((j["acked_missing"] for j in per_node.values()), default=0)
        g["acked_wrong"] = max((j["acked_wrong"] for j in per_node.values()), default=0)
        g["over_blocks"] = sorted({b for j in per_node.values() for b in j["over_blocks"]})
        g["partly_short"] = max((j["partly_short"] for j in per_node.values()), default=0)
        result[group] = g
    # blocks nobody sent, in any group: judged against every group's blocks together
    sent = [b for batches in groups.values() for b in batches]
    strangers = sorted({blk for v in s["views"].values() if v for blk in v}
                       - {blk for b in sent for blk in block_sums(args.seed, channel, b["k"], args.batch)})
    result["unexpected_blocks"] = strangers[:20]
    result["unexpected_count"] = len(strangers)


def node_report(nodes: list[NodeProc], expect_dead: set[str] = frozenset()) -> dict[str, Any]:
    out = {}
    for n in nodes:
        alive = n.proc is not None and n.proc.poll() is None
        errs = error_lines(n)
        st = status_of(n) if alive else None
        out[n.name] = {"alive": alive, "dropped_records": (st or {}).get("dropped_records"),
                       "entities": (st or {}).get("entities"), "held_entities": (st or {}).get("held_entities"),
                       "learner": (st or {}).get("learner"),
                       "not_replicated": (st or {}).get("not_replicated"), "exit": None if alive or n.proc is None else n.proc.returncode,
                       "died": not alive and n.name not in expect_dead, "error_lines": len(errs),
                       "errors": errs[:5], "log": str(n.log_path)}
    return out


def copies_check(r: dict[str, Any]) -> None:
    """Entities owned and held over the live nodes (``status``) against the entities the
    blocks show: each owned once, held ``COPIES`` times (one channel per round's cluster)."""
    live = [x for x in (r.get("nodes") or {}).values() if x["alive"]]
    if not live or any(x["entities"] is None for x in live):
        return
    shown = r.get("entities_shown")
    r["copies"] = {"shown": shown, "owned": sum(x["entities"] for x in live),
                   "held": sum(x["held_entities"] for x in live), "want_held": None if shown is None else
                   min(COPIES, len(live)) * shown}


def troubled(r: dict[str, Any]) -> bool:
    groups = [r[g] for g in ("stream", "isolated") if isinstance(r.get(g), dict)]
    return bool(r.get("error") or any(g["acked_lost"] or g["over_blocks"] or g["partly_short"] for g in groups)
                or r.get("same_answer") is False or r.get("unexpected_count")
                or any(x["died"] or x["error_lines"] for x in r.get("nodes", {}).values())
                or (r.get("copies") and (r["copies"]["owned"] != r["copies"]["shown"]
                                         or r["copies"]["held"] != r["copies"]["want_held"]))
                or (r.get("isolated") and (r["isolated"]["acked_batches"] or r["isolated"]["partly_acked_records"])))


# -- the fault timeline -------------------------------------------------------------------------


def run_timeline(proc: subprocess.Popen[bytes], out: Path, steps: list[tuple[float, str, Callable[[], Any]]],
                 args: argparse.Namespace, result: dict[str, Any]) -> float:
    """Start-stamp the stream, run each step at its offset (s from the stream's start),
    wait for the producer. Returns the stream's start (wall clock)."""
    start = wait_started(out, proc)
    done: dict[str, float] = {}
    for at, name, fn in sorted(steps, key=lambda s: s[0]):
        time.sleep(max(0.0, start + at - time.time()))
        try:
            fn()
            done[name] = round(time.time() - start, 3)
        except Exception as exc:  # noqa: BLE001 - the round goes on and says so
            result.setdefault("fault_errors", []).append(f"{name}: {type(exc).__name__}: {exc}")
            log(f"  {name} failed: {exc}")
    result["timeline_s"] = done
    code = wait_exit(proc, args.seconds + args.extra + args.reply_timeout + 60)
    if code is None:
        result.setdefault("fault_errors", []).append("the producer had to be killed")
    return start


def run_stream(result: dict[str, Any], proc: subprocess.Popen[bytes], out: Path,
               steps: list[tuple[float, str, Callable[[], Any]]], args: argparse.Namespace) -> list[dict[str, Any]]:
    start = run_timeline(proc, out, steps, args, result)
    result["stream_start"] = start
    got = read_producer(out)
    if got["error"]:
        result["producer_error"] = got["error"]
    result["client"] = got["end"]
    result["timing"] = stream_figures(got["batches"], start, args.fault_at if steps else None, args.batch,
                                      args.heal_at if any(at >= args.heal_at for at, _, _ in steps) else None)
    return got["batches"]


# -- the rounds ---------------------------------------------------------------------------------


def round_kill(root: Path, args: argparse.Namespace) -> dict[str, Any]:
    channel = CHANNELS["kill"]
    r: dict[str, Any] = {"round": "kill", "channel": channel,
                         "fault": f"SIGKILL of {VICTIM} at {args.fault_at:g} s, restarted on its data at "
                                  f"{args.heal_at:g} s"}
    cluster, nodes = start_loopback(root, args)
    proc = None
    try:
        by = {n.name: n for n in nodes}
        victim = by[VICTIM]
        out = root / "producer.jsonl"
        plog = open(root / "producer.log", "ab")  # noqa: SIM115
        proc = subprocess.Popen(producer_argv(by[GIVEN].addr, channel, out, args, resume_after=args.heal_at), stdout=plog,
                                stderr=subprocess.STDOUT)

        def restart() -> None:
            with contextlib.suppress(Exception):
                victim._log.close()
            victim.start()

        def watch() -> None:
            t0, samples = time.monotonic(), []
            while time.monotonic() - t0 < 4.0:  # how it comes back: learning or owning at once
                st = status_of(victim)
                if st is not None:
                    sample = [st.get("learner"), st.get("placement_members"), st.get("entities"), st.get("held_entities")]
                    if not samples or samples[-1][1:] != sample:
                        samples.append([round(time.monotonic() - t0, 2), *sample])
                time.sleep(0.1)
            r["restarted"] = samples

        def kill() -> None:
            r["victim_held_at_kill"] = (status_of(victim) or {}).get("held_entities")
            sigkill(victim)

        steps = [(args.fault_at, "sigkill", kill)]
        if not args.leave_dead:
            steps += [(args.heal_at, "restart", restart), (args.heal_at + 0.001, "watch the restarted node", watch)]
        batches = run_stream(r, proc, out, steps, args)
        check_round(r, nodes, NAMES, channel, {"stream": batches}, args)
        r["nodes"] = node_report(nodes, set() if not args.leave_dead else {VICTIM})
        copies_check(r)
        r["victim_seen"] = membership_of(by[GIVEN], VICTIM, r.get("stream_start"))
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        cluster.close()
    return r


def round_partition(root: Path, args: argparse.Namespace) -> dict[str, Any]:
    from corec_node.testing.netns import NetLab, available

    channel = CHANNELS["partition"]
    r: dict[str, Any] = {"round": "partition", "channel": channel}
    ok, why = available()
    if not ok:
        r["skipped"] = f"network namespaces cannot be made here: {why}"
        return r
    lab = NetLab(root)
    try:
        env = node_env(args)
        first = lab.start(NAMES[0], env=env)
        nodes = [first] + [lab.start(n, join=[first.addr], env=env) for n in NAMES[1:]]
        for n in nodes:
            n.wait_ready(30)
        wait_ready(nodes, NAMES)
        by = {n.name: n for n in nodes}
        leader = (status_of(first) or {}).get("leader")
        if args.isolate == "leader" and leader in by:
            cut = leader
        else:
            cut = next(n for n in reversed(NAMES) if n != leader)
        given = next(n for n in NAMES if n != cut)
        r["fault"] = (f"{cut} ({'the leader' if cut == leader else 'a follower'}) cut off "
                      f"{args.fault_at:g}-{args.heal_at:g} s; producer given {given}")
        r["isolated_node"], r["given"], r["leader_before"] = cut, given, leader
        lab.add_node("p")  # the producer's namespace, on the bridge with everyone
        out, iso_out = root / "producer.jsonl", root / "isolated.jsonl"
        proc, _ = lab.run("p", producer_argv(by[given].addr, channel, out, args, resume_after=args.heal_at),
                          log_path=root / "producer.log")
        iso: list[subprocess.Popen[bytes]] = []
        first_iso = ISOLATED_FIRST_ID // args.batch

        def send_to_isolated() -> None:
            argv = producer_argv(by[cut].addr, channel, iso_out, args, first=first_iso,
                                 seconds=max(1.0, args.heal_at - args.fault_at - 1.5),
                                 max_batches=args.isolated_batches, retry_busy=1.0,
                                 reply_timeout=min(args.reply_timeout, 10.0), route=False)
            p, _ = lab.run(cut, argv, log_path=root / "isolated-producer.log")
            iso.append(p)

        def sides() -> None:
            r["during_cut"] = {n.name: {k: (status_of(n) or {}).get(k) for k in ("leader", "placement_members")}
                               for n in nodes}

        steps = [(args.fault_at, "cut", lambda: lab.isolate(cut)),
                 (args.fault_at + 1.0, "isolated producer", send_to_isolated),
                 (args.heal_at - 0.3, "look at both sides", sides),
                 (args.heal_at, "heal", lab.heal)]
        batches = run_stream(r, proc, out, steps, args)
        for p in iso:
            if wait_exit(p, 30) is None:
                r.setdefault("fault_errors", []).append("the isolated producer had to be killed")
        got = read_producer(iso_out)
        iso_batches = got["batches"]
        if got["error"]:
            r["isolated_producer_error"] = got["error"]
        check_round(r, nodes, NAMES, channel, {"stream": batches, "isolated": iso_batches}, args)
        r["isolated_answers"] = [{"k": b["k"], "accepted": b["accepted"], "rejected": b["rejected"],
                                  "unconfirmed": b["unconfirmed"], "s": round(b["t1"] - b["t0"], 2)}
                                 for b in iso_batches]
        r["nodes"] = node_report(nodes)
        r["leader_violations"] = lab.check(NAMES)
        copies_check(r)
    finally:
        lab.close()
    return r


def fill(disk: Path) -> int:
    """Write until the file system refuses (unbuffered: nothing is left to fail at close);
    returns the bytes written."""
    written = 0
    chunk = b"\0" * 65536
    for name, size in (("filler", len(chunk)), *((f"crumb{i}", 512) for i in range(1000))):
        fd = os.open(disk / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            while True:
                n = os.write(fd, chunk[:size])
                written += n
                if name != "filler" or n < size:
                    break
        except OSError:
            pass
        finally:
            os.close(fd)
        if name != "filler" and not os.path.getsize(disk / name):
            break  # not even 512 bytes: full
    return written


def unfill(disk: Path) -> None:
    for p in [disk / "filler", *disk.glob("crumb*")]:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def round_disk(root: Path, args: argparse.Namespace) -> dict[str, Any]:
    channel = CHANNELS["disk"]
    r: dict[str, Any] = {"round": "disk", "channel": channel,
                         "fault": f"{VICTIM}'s data directory (tmpfs 8 MiB) full {args.fault_at:g}-{args.heal_at:g} s"}
    disk = root / f"{VICTIM}-disk"
    disk.mkdir(parents=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(disk)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        r["skipped"] = f"cannot mount a tmpfs for the data directory: {done.stderr.strip() or done.returncode}"
        return r
    cluster = None
    proc = None
    try:
        cluster, nodes = start_loopback(root, args, data_dirs={VICTIM: disk / "data"})
        by = {n.name: n for n in nodes}
        victim = by[VICTIM]
        out = root / "producer.jsonl"
        plog = open(root / "producer.log", "ab")  # noqa: SIM115
        proc = subprocess.Popen(producer_argv(by[GIVEN].addr, channel, out, args, resume_after=args.heal_at), stdout=plog,
                                stderr=subprocess.STDOUT)
        seen: dict[str, Any] = {}

        def full() -> None:
            seen["filled_bytes"] = fill(disk)

        def look() -> None:
            st = status_of(victim) or {}
            seen["disk_error_during"] = st.get("disk_error")
            seen["storage_errors_during"] = (st.get("storage") or {}).get("errors")
            seen["alive_during"] = victim.proc is not None and victim.proc.poll() is None

        steps = [(args.fault_at, "fill", full), (args.heal_at - 0.3, "look", look),
                 (args.heal_at, "make room", lambda: unfill(disk))]
        batches = run_stream(r, proc, out, steps, args)
        r.update(seen)
        check_round(r, nodes, NAMES, channel, {"stream": batches}, args)
        st = status_of(victim) or {}
        r["disk_error_after"] = st.get("disk_error")
        r["storage_errors_after"] = (st.get("storage") or {}).get("errors")
        r["disk_events"] = len(events_of(victim, "disk_write_failed", "storage_write_failed"))
        r["nodes"] = node_report(nodes)
        copies_check(r)
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        if cluster is not None:
            cluster.close()
        subprocess.run(["umount", "-l", str(disk)], capture_output=True, check=False)
    return r


def skewed_env(offset: str) -> tuple[dict[str, str] | None, str]:
    """libfaketime's environment for a wall clock ``offset`` off (the wrapper's LD_PRELOAD,
    with no process in between, so a signal reaches the node itself); or (None, why not)."""
    if shutil.which("faketime") is None:
        return None, "the faketime binary is not installed (Debian: apt-get install -y faketime)"
    probe = subprocess.run(["faketime", "-f", "+0", "sh", "-c", 'printf %s "$LD_PRELOAD"'],
                           capture_output=True, text=True, timeout=30, check=False)
    if "faketime" not in probe.stdout:
        return None, f"faketime sets no LD_PRELOAD: {probe.stdout!r} {probe.stderr.strip()!r}"
    return {"LD_PRELOAD": probe.stdout, "FAKETIME": offset, "FAKETIME_DONT_FAKE_MONOTONIC": "1"}, ""


def round_clock(root: Path, args: argparse.Namespace) -> dict[str, Any]:
    channel = CHANNELS["clock"]
    r: dict[str, Any] = {"round": "clock", "channel": channel, "fault": f"{VICTIM}'s wall clock +1h from its start"}
    skew, why = skewed_env("+1h")
    if skew is None:
        r["skipped"] = why
        return r
    cluster, nodes = start_loopback(root, args, extra={VICTIM: skew})
    proc = None
    try:
        by = {n.name: n for n in nodes}
        out = root / "producer.jsonl"
        plog = open(root / "producer.log", "ab")  # noqa: SIM115
        proc = subprocess.Popen(producer_argv(by[GIVEN].addr, channel, out, args), stdout=plog,
                                stderr=subprocess.STDOUT)
        batches = run_stream(r, proc, out, [], args)
        check_round(r, nodes, NAMES, channel, {"stream": batches}, args)
        r["nodes"] = node_report(nodes)
        copies_check(r)
        stamps = [ln.split()[0] for ln in by[VICTIM].log_path.read_text(errors="replace").splitlines()
                  if ln.startswith("ts=")]
        r["victim_log_clock"] = stamps[-1][3:] if stamps else None  # its own clock, as it logs it
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        cluster.close()
    return r


RUNNERS = {"kill": round_kill, "partition": round_partition, "disk": round_disk, "clock": round_clock}


# -- output -------------------------------------------------------------------------------------


def fmt_reasons(g: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in sorted(g["reasons"].items())) or "-"


def print_table(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(f"fault campaign: 3 nodes, {COPIES} copies of each block, {args.profile} timers; producer acks all, "
          f"batches of {args.batch:,} fresh ids ({args.batch // BLOCK_SIZE} blocks), one send + flush each, "
          f"{args.seconds:g} s; fault at {args.fault_at:g} s, healed at {args.heal_at:g} s")
    head = (f"{'round':<10}{'batches':>8}{'records':>11}{'acked':>11}{'acked+lost':>11}{'over':>6}"
            f"{'in part':>9}{'not acked':>11}  {'same':<5} reasons not acked")
    print(head)
    for r in results:
        if "skipped" in r:
            print(f"{r['round']:<10}skipped: {r['skipped']}")
            continue
        if "error" in r and "stream" not in r:
            print(f"{r['round']:<10}did not run to the end: {r['error']}")
            continue
        for group in ("stream", "isolated"):
            g = r.get(group)
            if not isinstance(g, dict):
                continue
            label = r["round"] if group == "stream" else "  ->isol."
            same = "yes" if r.get("same_answer") else "NO"
            print(f"{label:<10}{g['batches']:>8}{g['records']:>11,}{g['acked_records']:>11,}{g['acked_lost']:>11,}"
                  f"{len(g['over_blocks']):>6}{g['partly_acked_records']:>9,}{g['not_acked_records']:>11,}  "
                  f"{same if group == 'stream' else '':<5} "
                  f"{fmt_reasons(g)}")
    print("(acked+lost: acknowledged records whose block is missing or has a wrong count or sum on some live node, "
          "the worst node; over: blocks over their count; in part: records accepted in batches acknowledged in part "
          "(not acked counts them too); same: every live node gave the same answer; reasons: the nodes' refusals, "
          "and 'no answer' within the producer's reply timeout; "
          "->isol.: batches sent to the isolated node during the cut)")
    for r in results:
        if "skipped" in r:
            continue
        print(f"\n{r['round']}: {r.get('fault', '')}")
        if r.get("error"):
            print(f"  ERROR: {r['error']}")
        t = r.get("timing")
        if t:
            back = f"{t['acks_back_s']:.2f} s" if t["acks_back_s"] is not None else "never"
            if t.get("acks_after_heal_s") is not None:
                back += f" ({t['acks_after_heal_s']:.2f} s after the heal for a batch begun after it)"
            after = (f"; first whole batch acknowledged {back} after the fault; steps at {r.get('timeline_s')}"
                     if r.get("timeline_s") else "")
            print(f"  stream {t['stream_s']:.1f} s, {t['rate'] or 0:,} records/s; longest stretch without an acknowledged "
                  f"batch {t['longest_no_ack_s']:.2f} s, slowest batch {t['slowest_batch_s']:.2f} s{after}")
        c = r.get("client")
        if c:
            print(f"  producer: {c['clients']} client(s), {c['retries']} retries, {c['rehomed']:,} records rehomed, "
                  f"{c['map_fetches']} maps")
        for key in ("fault_errors", "producer_error", "isolated_producer_error"):
            if r.get(key):
                print(f"  {key.replace('_', ' ')}: {r[key]}")
        s = r.get("settle")
        if s:
            print(f"  after the stream: {s['ended']} in {s['settle_s']:.1f} s; rows per node {r.get('rows')}; "
                  f"maps {s['maps']}; identical {s['identical']}")
        for group in ("stream", "isolated"):
            g = r.get(group)
            if isinstance(g, dict) and g["partly_acked_batches"]:
                print(f"  {group}: batches acknowledged in part {g['partly_acked_batches']}, "
                      f"{g['partly_acked_records']:,} records accepted in them; of those, not there as exact blocks "
                      f"(the worst node): {g['partly_short']:,}")
        for group in ("stream", "isolated"):
            g = r.get(group)
            if not isinstance(g, dict):
                continue
            for name, j in g["per_node"].items():
                if j["acked_lost"] or j["over_blocks"] or not j["answered"]:
                    print(f"  {group}, node {name}: acked+lost {j['acked_lost']:,} (missing {j['acked_missing']:,}, wrong "
                          f"{j['acked_wrong']:,}) in batches {j['lost_batches'][:10]} (block numbers {j['lost_blocks'][:10]}); over {j['over_blocks'][:5]}; "
                          f"wrong e.g. {j['wrong_examples'][:2]}; answered {j['answered']}")
        for name, d in (r.get("disagreement") or {}).items():
            print(f"  node {name} differs: {d['missing']} block(s) others show are missing from its answer "
                  f"(owner as the others name it: {d['missing_by_owner']}), {d['differing']} with other figures; "
                  f"e.g. {d['examples']}")
        if r.get("unexpected_count"):
            print(f"  blocks nobody sent: {r['unexpected_count']} (e.g. {r['unexpected_blocks'][:5]})")
        if r.get("isolated_answers") is not None:
            print(f"  isolated node's answers: {r['isolated_answers']}")
            print(f"  during the cut: {r.get('during_cut')}")
            print(f"  election safety checker: {r.get('leader_violations') or 'clean'}")
        if r["round"] == "disk" and "filled_bytes" in r:
            print(f"  filled {r['filled_bytes']:,} bytes; during: alive {r.get('alive_during')}, disk_error "
                  f"{r.get('disk_error_during')!r}, storage errors {r.get('storage_errors_during')}; after: disk_error "
                  f"{r.get('disk_error_after')!r}, storage errors {r.get('storage_errors_after')}; "
                  f"disk_write_failed + storage_write_failed lines {r.get('disk_events')}")
        cp = r.get("copies")
        if cp and cp["shown"] is not None:
            print(f"  entities in the blocks {cp['shown']:,}; owned over the live nodes {cp['owned']:,}; held "
                  f"{cp['held']:,} (for {COPIES} copies: {cp['want_held']:,})")
        if r.get("restarted"):
            print(f"  {VICTIM} after its restart [s, learner, map, owned, held]: {r['restarted'][:8]}")
        if r.get("victim_seen"):
            print(f"  {VICTIM} as {GIVEN} saw it (s from the stream's start): {', '.join(r['victim_seen'])}")
        if r["round"] == "clock" and r.get("victim_log_clock"):
            print(f"  {VICTIM}'s last log stamp (its own clock): {r['victim_log_clock']}")
        for name, n in (r.get("nodes") or {}).items():
            state = "alive" if n["alive"] else (f"DIED (exit {n['exit']})" if n["died"] else f"down (exit {n['exit']})")
            print(f"  node {name}: {state}, owns {n['entities']} entities, holds {n['held_entities']}, "
                  f"{n['error_lines']} error line(s), dropped {n['dropped_records']}, not_replicated {n['not_replicated']}"
                  + (f"; first: {n['errors'][0][:300]}" if n["errors"] else ""))
        if r.get("kept"):
            print(f"  logs kept in {r['kept']}")


def summary(r: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in r.items() if k not in ("stream", "isolated", "nodes")}
    for group in ("stream", "isolated"):
        g = r.get(group)
        if isinstance(g, dict):
            out[group] = {k: v for k, v in g.items() if k != "per_node"}
            out[group]["over_blocks"] = g["over_blocks"][:20]
            out[group]["lost_by_node"] = {n: j["acked_lost"] for n, j in g["per_node"].items()}
    if r.get("nodes"):
        out["nodes"] = {n: {k: v for k, v in x.items() if k != "errors"} for n, x in r["nodes"].items()}
    return out


# -- main ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--producer"]:
        return producer_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", default=",".join(ROUNDS), help=f"comma-separated, of {', '.join(ROUNDS)}")
    parser.add_argument("--seconds", type=float, default=12.0, help="s of streaming per round")
    parser.add_argument("--fault-at", type=float, default=4.0, help="s into the stream")
    parser.add_argument("--heal-at", type=float, default=9.0, help="s into the stream (partition, disk, restart)")
    parser.add_argument("--batch", type=int, default=10_000, help=f"records a batch, a multiple of {BLOCK_SIZE}")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--extra", type=float, default=15.0,
                        help="s the stream may go on past --seconds until a batch begun after the heal is acknowledged")
    parser.add_argument("--stable", type=float, default=3.0, help="s every node's answer must stay the same")
    parser.add_argument("--settle-timeout", type=float, default=60.0)
    parser.add_argument("--reply-timeout", type=float, default=15.0, help="the producer's reply_timeout")
    parser.add_argument("--isolate", choices=("leader", "follower"), default="leader")
    parser.add_argument("--isolated-batches", type=int, default=3)
    parser.add_argument("--leave-dead", action="store_true", help="kill: do not restart the killed node")
    parser.add_argument("--profile", choices=("lan", "edge", "test"), default="lan")
    parser.add_argument("--keep", action="store_true", help="keep every round's directory (logs, data)")
    parser.add_argument("--json", action="store_true", help="print the JSON line only")
    args = parser.parse_args(argv)
    if args.batch <= 0 or args.batch % BLOCK_SIZE:
        parser.error(f"--batch must be a positive multiple of {BLOCK_SIZE}")
    if not 0 < args.fault_at < args.heal_at < args.seconds:
        parser.error("need 0 < --fault-at < --heal-at < --seconds")
    wanted = [x.strip() for x in args.rounds.split(",") if x.strip()]
    for w in wanted:
        if w not in RUNNERS:
            parser.error(f"unknown round {w!r}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # cleanup runs on a plain kill too

    results: list[dict[str, Any]] = []
    started = time.monotonic()
    for name in wanted:
        root = Path(tempfile.mkdtemp(prefix=f"corec-bench-faults-{name}-"))
        log(f"round {name}: {root}")
        t = time.monotonic()
        try:
            r = RUNNERS[name](root, args)
        except Exception as exc:  # noqa: BLE001 - the campaign goes on with the next round
            r = {"round": name, "error": f"{type(exc).__name__}: {exc}"}
        r["round_s"] = round(time.monotonic() - t, 1)
        if troubled(r) or args.keep:
            r["kept"] = str(root)
        else:
            shutil.rmtree(root, ignore_errors=True)
        results.append(r)
        g = r.get("stream") or {}
        log(f"round {name} done in {r['round_s']:.0f} s: " + (
            r.get("skipped") or r.get("error") or
            f"{g.get('acked_records', 0):,} acked, {g.get('acked_lost', 0):,} acked+lost, same {r.get('same_answer')}"))
    if not args.json:
        print_table(results, args)
    out = {"bench": "faults", "cpu": cpu_model(), "nodes": 3, "copies": COPIES, "profile": args.profile,
           "batch": args.batch, "seconds": args.seconds, "fault_at": args.fault_at, "heal_at": args.heal_at,
           "seed": args.seed, "took_s": round(time.monotonic() - started, 1),
           "rounds": [summary(r) for r in results],
           "acked_lost": sum(r[g]["acked_lost"] for r in results for g in ("stream", "isolated")
                             if isinstance(r.get(g), dict)),
           "over_blocks": sum(len(r[g]["over_blocks"]) for r in results for g in ("stream", "isolated")
                              if isinstance(r.get(g), dict)),
           "disagreed": [r["round"] for r in results if r.get("same_answer") is False]}
    print(json.dumps(out, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
