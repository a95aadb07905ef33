"""Control plane under a data-plane flood: same event loop, own thread, or own process?

    python bench/controlplane.py [--records 20000000] [--block-size 1000] [--batch 10000]
                                 [--channels 4] [--tail 5] [--variants loop,thread,process]
                                 [--runs 1] [--quick]

What it measures. One node process carries a data plane identical in every variant: a real
``EngineHost`` owning every block (a one-member view of its own name) takes a flood of
--records NEW entity ids (--channels channels of consecutive ids, blocks of --block-size)
as fast as it goes, as a producer sends them: --batch-record ENTITY_BATCH payloads, built
before the clock starts, decoded with ``decode_batch``, tried as a sweep and stored in one
``ingest`` call per COALESCE_RECORDS (the node's ingest worker, ``shell/data_plane.py``),
with ``await asyncio.sleep(0)`` between two takes. An engine tick runs every --tick s on
the same asyncio loop: ``EngineHost.tick()`` then the rows worth publishing encoded as
AGGREGATE_COLUMNS and AGGREGATES messages (``wire_messages``, ``encode_message``, msgpack)
and sent on a PUB socket, as the node's ``_engine_tick`` does. After the flood the ticks go on for --tail s.

The control plane sends a real ``Heartbeat`` message every 0.1 s (ElectionConfig.lan's
heartbeat_interval) on a DEALER socket to an observer, and answers the observer's
``Ping`` (one every 0.1 s) with an ``Ack``. The observer is this script's parent process
(not loaded); it records arrival times and round trips (CLOCK_MONOTONIC is one clock for
every process). Each tick the data plane hands the control plane a small status dict.
Variants (the node runs in a fresh process for each):
  loop     heartbeats, pings and status in the data plane's asyncio loop (today's design)
  thread   a thread with its own zmq context and a plain poll loop; status via queue.Queue
  process  a child process (multiprocessing, spawn) with its own zmq context and poll
           loop; status via a multiprocessing Pipe

Reported per variant, over the flood and the ticks after it: largest gap between two
heartbeats, p99 gap, the largest delay beyond the 0.1 s interval (gap - 0.1 s), how many
gaps are late by more than a tenth of the 0.6 s minimum election timeout (gap > 0.16 s),
largest ping->ack round trip, the ingest rate, and the node's CPU seconds (its own
getrusage plus that of its reaped children, i.e. the control-plane process). Prints a
table, then one JSON line ``{"bench": "controlplane", ...}``. Figures only: nothing here
passes or fails. The machine may be shared and noisy: run it more than once (--runs).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing as mp
import os
import platform
import queue
import resource
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # works without installing

import numpy as np  # noqa: E402
import zmq  # noqa: E402
import zmq.asyncio  # noqa: E402

from corec_node.engine.host import EngineHost  # noqa: E402
from corec_node.engine.wire_rows import wire_messages  # noqa: E402
from corec_node.mesh.election import ElectionConfig  # noqa: E402
from corec_node.wire import (  # noqa: E402
    ENTITY_DTYPE,
    Ack,
    Heartbeat,
    Ping,
    WireError,
    decode_batch,
    decode_message,
    encode_message,
    make_batch,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_model  # noqa: E402  (bench/ is on sys.path when run as a script)

try:  # the node's ingest worker (shell/data_plane.py; shell/entities.py before the split)
    from corec_node.shell.data_plane import COALESCE_RECORDS  # noqa: E402
except Exception:
    try:
        from corec_node.shell.entities import COALESCE_RECORDS  # noqa: E402
    except Exception:  # the shell may be mid-edit: the node's value when this was written
        COALESCE_RECORDS = 200_000

LAN = ElectionConfig.lan()
HEARTBEAT_S = LAN.heartbeat_interval  # 0.1 s
ELECTION_MIN_S = LAN.election_timeout_min  # 0.6 s
BOUND_S = ELECTION_MIN_S / 10  # 0.06 s: a tenth of the election timeout
PING_S = 0.1
NODE = "n0"
CP_IDENTITY = b"cp"
VARIANTS = ("loop", "thread", "process")


# -- control plane (thread and process variants) ----------------------------------------


class ControlLoop:
    """Heartbeats every HEARTBEAT_S and Ack for every Ping, in a plain zmq poll loop with
    its own context. ``status_conn``: a multiprocessing Connection the data plane sends its
    per-tick dicts on (process variant); ``status_queue``: a queue.Queue (thread variant)."""

    def __init__(self, endpoint: str, *, status_conn: Any = None, status_queue: queue.Queue | None = None,
                 stop: threading.Event | None = None) -> None:
        self.endpoint = endpoint
        self.status_conn = status_conn
        self.status_queue = status_queue
        self.stop = stop or threading.Event()
        self.statuses = 0
        self.last_status: dict[str, Any] = {}
        self.heartbeats = 0
        self.acks = 0
        self.cpu_s = 0.0  # CPU of this loop's thread once running (time.thread_time)

    def run(self) -> None:
        cpu0 = time.thread_time()
        try:
            self._run()
        finally:
            self.cpu_s = time.thread_time() - cpu0

    def _run(self) -> None:
        ctx = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.IDENTITY, CP_IDENTITY)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.endpoint)
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        if self.status_conn is not None:
            poller.register(self.status_conn.fileno(), zmq.POLLIN)
        parent = os.getppid()
        seq = 0
        next_hb = time.monotonic()
        try:
            while not self.stop.is_set():
                now = time.monotonic()
                if now >= next_hb:
                    seq += 1
                    frames = encode_message(
                        Heartbeat(term=1, leader=NODE, placement=str(self.last_status.get("placement", ""))),
                        sender=NODE, seq=seq)
                    try:
                        sock.send_multipart(frames, flags=zmq.NOBLOCK)
                        self.heartbeats += 1
                    except zmq.Again:
                        pass
                    next_hb += HEARTBEAT_S
                    if next_hb < now:  # after a stall: one now, then on time again (no burst)
                        next_hb = now + HEARTBEAT_S
                timeout = max(0, math.ceil((next_hb - time.monotonic()) * 1000))
                ready = dict(poller.poll(min(timeout, 100)))
                if sock in ready:
                    self._answer(sock)
                if self.status_conn is not None and self.status_conn.fileno() in ready:
                    self._read_conn()
                if self.status_queue is not None:
                    self._read_queue()
                if self.status_conn is not None and os.getppid() != parent:
                    break  # the node died: do not outlive it
        finally:
            sock.close(0)
            ctx.term()

    def _answer(self, sock: zmq.Socket) -> None:
        while True:
            try:
                frames = sock.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                _topic, env, _payload = decode_message(frames)
            except WireError:
                continue
            if isinstance(env.msg, Ping):
                reply = encode_message(Ack(probe=env.msg.probe, target=NODE), sender=NODE, seq=env.msg.probe)
                try:
                    sock.send_multipart(reply, flags=zmq.NOBLOCK)
                    self.acks += 1
                except zmq.Again:
                    pass

    def _read_conn(self) -> None:
        try:
            while self.status_conn.poll():
                item = self.status_conn.recv()
                if item is None:
                    self.stop.set()
                    return
                self.last_status = item
                self.statuses += 1
        except (EOFError, OSError):
            self.stop.set()

    def _read_queue(self) -> None:
        assert self.status_queue is not None
        while True:
            try:
                self.last_status = self.status_queue.get_nowait()
                self.statuses += 1
            except queue.Empty:
                return


def control_process_main(endpoint: str, conn: Any) -> None:
    """Entry point of the process variant's child (spawned: imports this module afresh)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the node stops us, through the pipe
    loop = ControlLoop(endpoint, status_conn=conn)
    loop.run()
    rss_kb = 0  # VmRSS, not ru_maxrss: that one keeps the forking node's peak across exec
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss_kb = int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    try:
        conn.send({"loop_cpu_s": loop.cpu_s, "rss_kb": rss_kb, "statuses": loop.statuses,
                   "heartbeats": loop.heartbeats, "acks": loop.acks})
    except OSError:
        pass


# -- control plane (loop variant) -------------------------------------------------------


class LoopControl:
    """Heartbeats, pings and status in the data plane's own asyncio loop (today's design)."""

    def __init__(self, endpoint: str) -> None:
        self.ctx = zmq.asyncio.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.IDENTITY, CP_IDENTITY)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.last_status: dict[str, Any] = {}
        self.statuses = 0
        self.heartbeats = 0
        self.acks = 0
        self.tasks: list[asyncio.Task] = []

    def start(self) -> None:
        self.tasks = [asyncio.create_task(self._heartbeats()), asyncio.create_task(self._answer())]

    def status(self, item: dict[str, Any]) -> None:
        self.last_status = item
        self.statuses += 1

    async def _heartbeats(self) -> None:
        loop = asyncio.get_running_loop()
        seq = 0
        next_hb = loop.time()
        while True:
            seq += 1
            placement = str(self.last_status.get("placement", ""))
            frames = encode_message(Heartbeat(term=1, leader=NODE, placement=placement), sender=NODE, seq=seq)
            try:
                await self.sock.send_multipart(frames, flags=zmq.NOBLOCK)
                self.heartbeats += 1
            except zmq.Again:
                pass
            now = loop.time()
            next_hb += HEARTBEAT_S
            if next_hb < now:
                next_hb = now + HEARTBEAT_S
            await asyncio.sleep(next_hb - now)

    async def _answer(self) -> None:
        while True:
            frames = await self.sock.recv_multipart()
            try:
                _topic, env, _payload = decode_message(frames)
            except WireError:
                continue
            if isinstance(env.msg, Ping):
                reply = encode_message(Ack(probe=env.msg.probe, target=NODE), sender=NODE, seq=env.msg.probe)
                try:
                    await self.sock.send_multipart(reply, flags=zmq.NOBLOCK)
                    self.acks += 1
                except zmq.Again:
                    pass

    async def stop(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.sock.close(0)
        self.ctx.term()


class ThreadControl:
    def __init__(self, endpoint: str) -> None:
        self.queue: queue.Queue = queue.Queue()
        self.loop = ControlLoop(endpoint, status_queue=self.queue)
        self.thread = threading.Thread(target=self.loop.run, name="control-plane", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def status(self, item: dict[str, Any]) -> None:
        self.queue.put(item)

    async def stop(self) -> None:
        self.loop.stop.set()
        self.thread.join(5)


class ProcessControl:
    def __init__(self, endpoint: str) -> None:
        ctx = mp.get_context("spawn")
        self.writer, self.reader = ctx.Pipe(duplex=True)  # statuses down, the child's report up
        self.proc = ctx.Process(target=control_process_main, args=(endpoint, self.reader),
                                name="corec-control-plane", daemon=True)
        self.statuses = 0
        self.report: dict[str, Any] = {}

    def start(self) -> None:
        self.proc.start()
        self.reader.close()  # the child holds its own copy: EOF reaches it if we die

    def status(self, item: dict[str, Any]) -> None:
        try:
            self.writer.send(item)
            self.statuses += 1
        except (BrokenPipeError, OSError):
            pass

    async def stop(self) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.writer.send(None)
            if self.writer.poll(5):
                self.report = self.writer.recv()
        except (BrokenPipeError, EOFError, OSError):
            pass
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self.writer.close()


# -- data plane (identical in every variant) --------------------------------------------


def make_flood(records: int, channels: int, batch: int) -> list[tuple[Any, bytes]]:
    """ENTITY_BATCH (header, payload) pairs: per channel, ids 0.. consecutive, in order."""
    per = records // channels
    out = []
    for ch in range(channels):
        for start in range(0, per, batch):
            n = min(batch, per - start)
            r = np.empty(n, ENTITY_DTYPE)
            r["id"] = np.arange(start, start + n, dtype=np.uint32)
            r["channel"] = ch
            r["value"] = 20.0 + (np.arange(n) % 100) * 0.01
            r["active"] = 1
            out.append(make_batch(r, ch))
    return out


async def data_plane(host: EngineHost, flood: list[tuple[Any, bytes]], control: Any, pub: zmq.Socket,
                     args: argparse.Namespace, marks: dict[str, float]) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    ticks: list[float] = []
    agg_bytes = 0
    seq = 0

    async def ticker() -> None:
        nonlocal agg_bytes, seq
        next_tick = loop.time() + args.tick
        while True:
            await asyncio.sleep(max(0.0, next_tick - loop.time()))
            next_tick += args.tick
            t0 = time.perf_counter()
            rows, _repairs = host.tick()
            for msg in wire_messages(host.tick_no, host.wire_rows):
                seq += 1
                frames = encode_message(msg, sender=NODE, seq=seq)
                agg_bytes += len(frames[1])
                try:
                    pub.send_multipart(frames, flags=zmq.NOBLOCK)
                except zmq.Again:
                    pass
            ticks.append(time.perf_counter() - t0)
            control.status({"tick": host.tick_no, "entities": host.store.count(), "blocks": len(rows),
                            "placement": host.placement_digest()})

    tick_task = asyncio.create_task(ticker())
    calls: list[float] = []
    try:
        marks["flood_start"] = time.monotonic()
        i = 0
        while i < len(flood):
            # one take of the ingest worker: a backlog of up to COALESCE_RECORDS records
            pending: list[np.ndarray] = []
            taken = 0
            t0 = time.perf_counter()
            while i < len(flood) and taken < args.coalesce:
                msg, payload = flood[i]
                i += 1
                records = decode_batch(msg, payload)
                taken += len(records)
                if pending or host.ingest_sweep(records, msg.channel) is None:
                    pending.append(records)
            if pending:
                host.ingest(pending[0] if len(pending) == 1 else np.concatenate(pending), sweep=False)
            calls.append(time.perf_counter() - t0)
            await asyncio.sleep(0)  # timers and control messages go between two takes
        marks["flood_end"] = time.monotonic()
        await asyncio.sleep(args.tail)
        marks["end"] = time.monotonic()
    finally:
        tick_task.cancel()
        await asyncio.gather(tick_task, return_exceptions=True)
    return {
        "entities": host.store.count(),
        "blocks": len(host.store.block_ids()),
        "ticks": len(ticks),
        "tick_s_max": max(ticks, default=0.0),
        "tick_s_median": statistics.median(ticks) if ticks else 0.0,
        "take_s_max": max(calls, default=0.0),
        "takes": len(calls),
        "agg_bytes_per_tick": agg_bytes / max(1, len(ticks)),
    }


def cpu_seconds() -> tuple[float, float]:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


async def node_async(args: argparse.Namespace, flood: list[tuple[Any, bytes]]) -> dict[str, Any]:
    host = EngineHost(NODE, block_size=args.block_size)
    host.observe_view([NODE])
    host.adopt_view()
    zctx = zmq.Context()
    pub = zctx.socket(zmq.PUB)  # the aggregates' way out; nobody subscribes, as on a lone node
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind("tcp://127.0.0.1:*")
    control: Any
    if args.node == "loop":
        control = LoopControl(args.observer)
    elif args.node == "thread":
        control = ThreadControl(args.observer)
    else:
        control = ProcessControl(args.observer)
    marks: dict[str, float] = {}
    cpu0 = cpu_seconds()
    try:
        control.start()
        await asyncio.sleep(args.warmup)  # the observer hears heartbeats and starts pinging
        wall0 = time.perf_counter()
        out = await data_plane(host, flood, control, pub, args, marks)
        wall = time.perf_counter() - wall0
    finally:
        await control.stop()
        pub.close(0)
        zctx.term()
    cpu1 = cpu_seconds()
    out.update(marks)
    out["variant"] = args.node
    out["flood_s"] = marks["flood_end"] - marks["flood_start"]
    out["ingest_mrps"] = args.records / out["flood_s"] / 1e6
    out["wall_s"] = wall + args.warmup
    out["cpu_self_s"] = cpu1[0] - cpu0[0]
    out["cpu_children_s"] = cpu1[1] - cpu0[1]
    out["cpu_s"] = out["cpu_self_s"] + out["cpu_children_s"]
    out["statuses"] = control.statuses if not isinstance(control, ThreadControl) else control.loop.statuses
    # the control plane's own CPU once running (loop: not separable from the data plane)
    out["cp_cpu_s"] = (control.loop.cpu_s if isinstance(control, ThreadControl)
                       else control.report.get("loop_cpu_s") if isinstance(control, ProcessControl) else None)
    out["cp_child_rss_mb"] = (control.report.get("rss_kb", 0) / 1024 if isinstance(control, ProcessControl)
                                 else None)
    out["node_maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def node_main(args: argparse.Namespace) -> int:
    def on_term(_sig: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    flood = make_flood(args.records, args.channels, args.batch)
    try:
        out = asyncio.run(node_async(args, flood))
    except KeyboardInterrupt:  # the observer stopped us; the finally blocks cleaned up
        return 130
    print(json.dumps(out), flush=True)
    return 0


# -- observer (the parent: not loaded) --------------------------------------------------


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def run_variant(variant: str, args: argparse.Namespace) -> dict[str, Any]:
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.setsockopt(zmq.ROUTER_MANDATORY, 1)
    router.bind("tcp://127.0.0.1:*")
    endpoint = router.getsockopt_string(zmq.LAST_ENDPOINT)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--node", variant, "--observer", endpoint,
           "--records", str(args.records), "--block-size", str(args.block_size), "--batch", str(args.batch),
           "--channels", str(args.channels), "--coalesce", str(args.coalesce), "--tick", str(args.tick),
           "--tail", str(args.tail), "--warmup", str(args.warmup)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, start_new_session=True)
    beats: list[float] = []
    sent: dict[int, float] = {}
    rtt: dict[int, float] = {}
    ping_late: list[float] = []
    probe = 0
    next_ping: float | None = None
    poller = zmq.Poller()
    poller.register(router, zmq.POLLIN)
    try:
        while proc.poll() is None:
            now = time.monotonic()
            if next_ping is not None and now >= next_ping:
                ping_late.append(now - next_ping)
                probe += 1
                ping = Ping(probe=probe, target=NODE, reply_to="127.0.0.1:1")
                frames = encode_message(ping, sender="observer", seq=probe)
                try:
                    router.send_multipart([CP_IDENTITY, *frames], flags=zmq.NOBLOCK)
                    sent[probe] = time.monotonic()
                except (zmq.Again, zmq.ZMQError):
                    pass
                next_ping += PING_S
                if next_ping < now:
                    next_ping = now + PING_S
            wait = 50 if next_ping is None else max(0, min(50, math.ceil((next_ping - time.monotonic()) * 1000)))
            if not poller.poll(wait):
                continue
            while True:
                try:
                    parts = router.recv_multipart(flags=zmq.NOBLOCK)
                except zmq.Again:
                    break
                t = time.monotonic()
                try:
                    _topic, env, _payload = decode_message(parts[1:])
                except WireError:
                    continue
                if isinstance(env.msg, Heartbeat):
                    beats.append(t)
                    if next_ping is None:
                        next_ping = t
                elif isinstance(env.msg, Ack) and env.msg.probe in sent:
                    rtt[env.msg.probe] = t - sent[env.msg.probe]
        stopped = time.monotonic()
        out_text = proc.stdout.read().decode() if proc.stdout else ""
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout:
            proc.stdout.close()
        router.close(0)
        ctx.term()
    if proc.returncode != 0 or not out_text.strip():
        raise RuntimeError(f"{variant}: node process exited with {proc.returncode}")
    node = json.loads(out_text.strip().splitlines()[-1])
    t0, t1, t2 = node["flood_start"], node["flood_end"], node["end"]

    def gaps(lo: float, hi: float) -> list[float]:
        g = [b - a for a, b in zip(beats, beats[1:]) if b >= lo and a <= hi]
        inside = [b for b in beats if lo <= b <= hi]
        if inside and hi - inside[-1] > HEARTBEAT_S:  # heartbeats stopped: the open gap counts
            g.append(hi - inside[-1])
        if not inside:
            g.append(hi - lo)
        return g

    window = gaps(t0, t2)
    probes = [p for p, s in sent.items() if t0 <= s <= t2]
    rtts = [rtt[p] if p in rtt else stopped - sent[p] for p in probes]  # unanswered: a lower bound
    return {
        **node,
        "heartbeats": len([b for b in beats if t0 <= b <= t2]),
        "gaps": len(window),
        "gap_max_s": max(window),
        "gap_p99_s": pct(window, 0.99),
        "gap_median_s": pct(window, 0.5),
        "excess_max_s": max(window) - HEARTBEAT_S,
        "late_gaps": sum(1 for g in window if g - HEARTBEAT_S > BOUND_S),
        "gaps_over_election_min": sum(1 for g in window if g >= ELECTION_MIN_S),
        "flood_gap_max_s": max(gaps(t0, t1)),
        "tail_gap_max_s": max(gaps(t1, t2)),
        "probes": len(probes),
        "probes_unanswered": sum(1 for p in probes if p not in rtt),
        "rtt_max_s": max(rtts, default=float("nan")),
        "rtt_p99_s": pct(rtts, 0.99),
        "rtt_median_s": pct(rtts, 0.5),
        "observer_ping_late_max_s": max(ping_late, default=0.0),
    }


def print_table(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(f"\nheartbeat interval {HEARTBEAT_S:.2f} s, election timeout min {ELECTION_MIN_S:.2f} s, "
          f"bound a tenth of it: {BOUND_S:.3f} s beyond the interval (gap > {HEARTBEAT_S + BOUND_S:.2f} s is late)")
    head = (f"{'run':>3} {'variant':<8} {'gap max s':>9} {'gap p99 s':>9} {'excess max':>10} {'late gaps':>9} "
            f"{'>=0.6s':>6} {'rtt max s':>9} {'rtt p99 s':>9} {'ingest M/s':>10} {'flood s':>7} "
            f"{'CPU s':>6} {'cp CPU s':>8} {'tick max s':>10} {'take max s':>10} {'obs late s':>10}")
    print(head)
    for r in results:
        print(f"{r['run']:>3} {r['variant']:<8} {r['gap_max_s']:>9.3f} {r['gap_p99_s']:>9.3f} "
              f"{r['excess_max_s']:>10.3f} "
              f"{r['late_gaps']:>4}/{r['gaps']:<4} {r['gaps_over_election_min']:>6} "
              f"{r['rtt_max_s']:>9.3f} {r['rtt_p99_s']:>9.3f} {r['ingest_mrps']:>10.2f} {r['flood_s']:>7.1f} "
              f"{r['cpu_s']:>6.1f} {'-' if r['cp_cpu_s'] is None else format(r['cp_cpu_s'], '.2f'):>8} "
              f"{r['tick_s_max']:>10.3f} {r['take_s_max']:>10.3f} {r['observer_ping_late_max_s']:>10.3f}")
    print("gaps and RTTs over the flood and the ticks after it. late gaps: gaps longer than interval + bound,\n"
          "of the gaps in the window; >=0.6s: gaps that reach the minimum election timeout.\n"
          "CPU s: node process + its control-plane child (spawn and imports included); cp CPU s: the control\n"
          "plane's loop alone once running (loop variant: not separable). tick/take max: the data plane's\n"
          "longest engine tick (with msgpack) and longest ingest take. obs late s: the observer's own worst\n"
          "lateness in sending a ping (the machine's noise floor).")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=20_000_000)
    ap.add_argument("--block-size", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=10_000, help="records per producer batch")
    ap.add_argument("--channels", type=int, default=4)
    ap.add_argument("--coalesce", type=int, default=COALESCE_RECORDS, help="records per ingest take (the node's)")
    ap.add_argument("--tick", type=float, default=1.0, help="engine tick period, s")
    ap.add_argument("--tail", type=float, default=5.0, help="seconds of ticks after the flood")
    ap.add_argument("--warmup", type=float, default=1.0, help="heartbeats before the flood starts, s")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--runs", type=int, default=1, help="times to run every variant (interleaved)")
    ap.add_argument("--quick", action="store_true", help="2 M records: a smoke run")
    ap.add_argument("--node", choices=VARIANTS, help=argparse.SUPPRESS)  # internal: be the node process
    ap.add_argument("--observer", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick:
        args.records = 2_000_000
    if args.node:
        return node_main(args)

    def on_term(_sig: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)  # a kill cleans up like Ctrl-C: the node is stopped too
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        ap.error(f"unknown variants {bad}; choose from {','.join(VARIANTS)}")
    blocks = args.records // args.block_size
    print(f"CoreC control plane under flood: {args.records:,} new entities in {blocks:,} blocks of "
          f"{args.block_size}, {args.channels} channels, batches of {args.batch:,}, {args.coalesce:,} per ingest "
          f"take, tick every {args.tick} s, {args.tail} s of ticks after")
    print(f"{cpu_model()}, Python {platform.python_version()}, numpy {np.__version__}, pyzmq {zmq.__version__}, "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    results = []
    try:
        for run in range(1, args.runs + 1):
            for v in variants:
                print(f"run {run} {v} ...", file=sys.stderr, flush=True)
                r = run_variant(v, args)
                r["run"] = run
                results.append(r)
                print(f"run {run} {v}: gap max {r['gap_max_s']:.3f} s, rtt max {r['rtt_max_s']:.3f} s, "
                      f"{r['ingest_mrps']:.2f} M/s", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        if not results:
            return 130
    print_table(results, args)
    print(json.dumps({
        "bench": "controlplane", "records": args.records, "block_size": args.block_size, "batch": args.batch,
        "channels": args.channels, "coalesce": args.coalesce, "tick_s": args.tick, "tail_s": args.tail,
        "heartbeat_s": HEARTBEAT_S, "election_min_s": ELECTION_MIN_S, "bound_s": BOUND_S,
        "cpu": cpu_model(), "cpus": os.cpu_count(), "python": platform.python_version(),
        "loadavg": round(os.getloadavg()[0], 2),
        "results": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()
                     if k not in ("flood_start", "flood_end", "end")} for r in results],
    }, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
