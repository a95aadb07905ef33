"""Trainer: the NanoNets of intelligent blocks, trained and asked in a child process.

Why a child. torch holds the GIL while it trains and costs hundreds of MB once imported
(``bench/nanonet.py``, torch 2.13 CPU: the child's RSS is 222 MB with torch imported and
no block, 238 MB with 1,000 blocks; ``Trainer.stats().child_rss``); in the node process it would
delay the tick and the control plane and weigh on every channel, intelligent or not. So
the node process never imports torch: this module and ``engine/nanonet.py`` import it only
in the child, started with the ``spawn`` context (a fresh interpreter: no forked copy of
the node's threads, sockets or heap).

How the caller is never blocked. Every method the caller uses only touches in-memory
queues and counters:
- ``submit`` appends to a queue that a writer thread sends down a pipe; a tick is dropped
  (and counted) when ``max_pending`` ticks are already in flight (the child is behind,
  frozen, or not started yet), so neither the queue nor the pipe grows without bound.
- a reader thread takes the child's answers off the other pipe; ``poll`` and ``weights``
  read what it stored.
Pipes are plain ``Connection`` pairs whose far ends the parent closes once the child has
them, so a dead child is an EOF or a broken pipe in those threads, never a hang.

Rules:

1. Persistence. The child exports a few blocks' state every tick, round robin, so every
   block's saved bytes are at most ``save_every`` ticks old; ``snapshot`` asks for fresh
   ones at once (before a handoff). ``weights(block)`` is the last bytes received,
   ``load`` the way in (a restart's stored state, a handoff's). Saves the child made
   before a ``load`` or ``forget`` it had not yet seen are ignored (a per-link message
   sequence fences them), so a stale save never overwrites newer weights.
2. Restarts. A child that dies (crash, OOM kill, SIGKILL) is reaped and counted at the
   caller's next ``submit`` or ``poll``, and a new one is started with every block's last
   saved bytes and season. Quick deaths back off (doubling, up to ``MAX_BACKOFF``) so a
   child that cannot start (torch missing or broken) does not spin; meanwhile ticks are
   dropped and counted. A ready child that answers nothing for ``hung_after`` seconds
   while ticks wait is taken for hung: killed, and started again the same way.
3. ``close`` stops the child (a stop message, then SIGTERM, then SIGKILL) and always reaps
   it. The child also exits on its own when the parent goes away (EOF on its pipe).
4. Forecasts carry the tick they answer; ``poll`` returns each block's newest, merged over
   the ticks answered since the last poll.
"""

from __future__ import annotations

import collections
import logging
import math
import multiprocessing as mp
import os
import queue
import signal
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from corec_node import log
from corec_node.engine.nanonet import NanoConfig

MAX_PENDING = 4  # ticks in flight before submit drops: > 1 absorbs a slow tick; small: fresh forecasts
SAVE_EVERY = 200  # every block's saved state is at most this many ticks old: 1,000 blocks cost
# 5 exports a tick (~0.06 ms with format 2's raw bytes; torch.save took ~2.5 ms); snapshot() before a handoff
SNAPSHOT_CHUNK = 64  # blocks per weights message: ~240 KB, small enough to unpickle between two ticks
MIN_UPTIME = 10.0  # a child that lived less than this (seconds) died "quickly" (rule 2)
FIRST_BACKOFF = 0.5  # seconds before restarting a quickly dead child; doubles per quick death
MAX_BACKOFF = 60.0
RESULTS_KEPT = 64  # answered ticks kept for poll: a caller that stops polling costs bounded memory
STOP_TIMEOUT = 5.0  # close(): seconds for the child to stop on its own before SIGTERM, then SIGKILL
HUNG_AFTER = 60.0  # seconds a ready child may leave submitted ticks unanswered before it is killed and started again


@dataclass(frozen=True, slots=True)
class TrainerStats:
    """Counters and the child's figures, as last reported (for metrics and the bench)."""

    submitted: int  # ticks handed to the child
    dropped: int  # ticks dropped: child behind, down or restarting
    answered: int  # ticks the child answered
    restarts: int  # children that died and were replaced
    load_errors: int  # blobs the child refused (the block starts afresh)
    child_pid: int | None
    child_ready: bool  # torch imported, nets built, previous state loaded
    child_rss: int  # bytes resident in the child (0 until it reports)
    child_cpu: float  # CPU seconds the current child has used
    tick_cpu: float  # CPU seconds of the child's last tick (update + saves)
    blocks: int  # blocks the child holds


class _Link:
    """One child and its two pipes, with the writer and reader threads (module doc)."""

    def __init__(self, ctx: Any, cfg: NanoConfig, save_every: int, threads: int,
                 on_message: Any) -> None:
        down_r, self.down = ctx.Pipe(duplex=False)  # parent -> child
        self.up, up_w = ctx.Pipe(duplex=False)  # child -> parent
        self.proc = ctx.Process(target=child_main, name="corec-trainer", daemon=True,
                                args=(down_r, up_w, cfg, save_every, threads))
        self.proc.start()
        down_r.close()  # the child holds them now: its death is our EOF / broken pipe
        up_w.close()
        self.started = time.monotonic()
        self.seq = 0  # messages sent on this link (the child counts the same, rule 1)
        self._out: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._on_message = on_message
        self._writer = threading.Thread(target=self._write, name="corec-trainer-tx", daemon=True)
        self._reader = threading.Thread(target=self._read, name="corec-trainer-rx", daemon=True)
        self._writer.start()
        self._reader.start()

    def send(self, msg: tuple[Any, ...]) -> int:
        """Queue ``msg`` for the child; its sequence number. Never blocks."""
        self.seq += 1
        self._out.put(msg)
        return self.seq

    def _write(self) -> None:
        try:
            while (msg := self._out.get()) is not None:
                self.down.send(msg)
        except (OSError, EOFError, ValueError):
            pass  # the child is gone: the caller's next call restarts it
        finally:
            self.down.close()

    def _read(self) -> None:
        try:
            while True:
                self._on_message(self, self.up.recv())
        except (OSError, EOFError, ValueError):
            pass  # EOF: the child is gone
        finally:
            self.up.close()

    def dead(self) -> bool:
        return not self.proc.is_alive()  # waitpid(WNOHANG): reaps a dead child too

    def stop(self, timeout: float) -> None:
        """Stop and reap the child (rule 3)."""
        self._out.put(("stop",))
        self._out.put(None)
        self.proc.join(timeout)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if self.proc.exitcode is not None:
                break
            try:
                os.kill(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            self.proc.join(timeout if sig == signal.SIGTERM else None)
        self.proc.close()

    def abandon(self) -> tuple[int | None, int | None]:
        """After a death: stop the writer (the reader ends on its EOF), release the
        process handle; its (pid, exit code)."""
        self._out.put(None)
        self.proc.join(0)
        pid, code = self.proc.pid, self.proc.exitcode
        try:
            self.proc.close()
        except ValueError:  # not reaped after all: leave the handle, the GC takes it
            pass
        return pid, code


class Trainer:
    """The node process's handle on the NanoNets child (module rules). Not thread-safe:
    one owner (the node's tick loop); its own threads only move messages."""

    def __init__(self, config: NanoConfig | None = None, *, season: int = 0,
                 max_pending: int = MAX_PENDING, save_every: int = SAVE_EVERY,
                 threads: int = 1, context: str = "spawn", hung_after: float = HUNG_AFTER) -> None:
        """Start the child at once (it imports torch in the background: the first ticks
        may be dropped or answered late). ``season``: phase period of new blocks
        (``set_season`` for one block); ``threads``: torch's threads in the child (1: it
        must not starve the node); ``hung_after``: seconds a ready child may leave ticks
        unanswered before it is taken for hung, killed and started again."""
        self.config = config or NanoConfig()
        self.hung_after = hung_after
        self._answered_at = time.monotonic()  # the child's last answer (or its start)
        self.default_season = season
        self.max_pending = max(1, max_pending)
        self.save_every = max(1, save_every)
        self.threads = max(1, threads)
        self._ctx = mp.get_context(context)
        self._lock = threading.Lock()  # _saved, _fence, _results: shared with the reader thread
        self._saved: dict[int, bytes] = {}
        self._seasons: dict[int, int] = {}
        self._fence: dict[int, int] = {}  # block -> seq of its last load/forget on this link
        # answered ticks not yet polled; a caller that stops polling keeps only the newest
        self._results: collections.deque[tuple[int, np.ndarray, np.ndarray]] = collections.deque(
            maxlen=RESULTS_KEPT)
        self._submitted = self._dropped = self._answered = self._restarts = self._load_errors = 0
        self._sent_ticks = 0  # ticks sent on the current link
        self._done_ticks = 0  # ticks answered on the current link
        self._ready = False
        self._rss = 0
        self._cpu = self._tick_cpu = 0.0
        self._blocks = 0
        self._backoff = 0.0
        self._next_start = 0.0
        self._closed = False
        self._link: _Link | None = None
        self._start()

    # -- the caller's side: none of these blocks ---------------------------------------------

    def submit(self, tick: int, means: Mapping[int, float]) -> bool:
        """Hand one tick's observed means to the child; False if dropped (counted)."""
        link = self._check()
        if link is not None and self._sent_ticks > self._done_ticks and self._ready \
                and time.monotonic() - self._answered_at > self.hung_after:
            log.event("trainer_hung", logging.WARNING, pid=link.proc.pid, unanswered=self._sent_ticks - self._done_ticks,
                      detail=f"no answer for {self.hung_after:g} s: killed, started again with its saved weights")
            link.proc.kill()  # the next _check reaps it and starts another (rule 2)
            self._dropped += 1
            return False
        if link is None or self._sent_ticks - self._done_ticks >= self.max_pending:
            self._dropped += 1
            return False
        if self._sent_ticks == self._done_ticks:
            self._answered_at = time.monotonic()  # idle until now: the wait starts with this tick
        ids = np.fromiter(means.keys(), np.int64, len(means))
        vals = np.fromiter(means.values(), np.float64, len(means))
        link.send(("tick", int(tick), ids, vals))
        self._sent_ticks += 1
        self._submitted += 1
        return True

    def poll(self) -> dict[int, float]:
        """Forecasts ready since the last poll: block -> its newest forecast (rule 4)."""
        return {b: fc for b, (_, fc) in self.poll_ticks().items()}

    def poll_ticks(self) -> dict[int, tuple[int, float]]:
        """``poll`` with the tick each forecast answers: block -> (tick, forecast), the
        forecast being for the tick after it (a caller that scores them needs the tick)."""
        self._check()
        out: dict[int, tuple[int, float]] = {}
        while True:
            try:
                tick, ids, fc = self._results.popleft()
            except IndexError:
                return out
            out.update(zip(ids.tolist(), zip([tick] * len(ids), fc.tolist())))

    def weights(self, block: int) -> bytes | None:
        """``block``'s last saved state (rule 1), or None if the child has not saved it yet."""
        with self._lock:
            return self._saved.get(int(block))

    def load(self, block: int, blob: bytes) -> None:
        """Give ``block`` this saved state (from the store or a handoff). Applied by the
        child before the next tick submitted; a blob it refuses is counted and dropped."""
        block = int(block)
        with self._lock:
            self._saved[block] = bytes(blob)
            if self._link is not None and not self._link.dead():
                self._fence[block] = self._link.send(("load", {block: self._saved[block]}))

    def forget(self, block: int) -> None:
        """Drop ``block`` (it moved away): its saved state here too."""
        block = int(block)
        with self._lock:
            self._saved.pop(block, None)
            self._seasons.pop(block, None)
            if self._link is not None:
                self._fence[block] = self._link.send(("forget", block))

    def set_season(self, block: int, season: int) -> None:
        """Phase features of ``block`` for a ``season`` of this many ticks (0: none)."""
        self._seasons[int(block)] = int(season)
        if self._link is not None:
            self._link.send(("season", int(block), int(season)))

    def snapshot(self, blocks: Iterable[int] | None = None) -> None:
        """Ask the child to save these blocks (None: all) now; ``weights`` has them once
        answered (a poll or two later)."""
        if self._link is not None:
            self._link.send(("snapshot", None if blocks is None else [int(b) for b in blocks]))

    def stats(self) -> TrainerStats:
        """The counters, and the child as it is now: no pid and not ready while it is dead
        or not started again yet."""
        link = self._link
        alive = link is not None and not link.dead()
        return TrainerStats(self._submitted, self._dropped, self._answered, self._restarts,
                            self._load_errors, link.proc.pid if alive else None,
                            self._ready and alive, self._rss, self._cpu, self._tick_cpu, self._blocks)

    @property
    def pid(self) -> int | None:
        return self._link.proc.pid if self._link is not None else None

    def close(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop the child and reap it (rule 3). Blocks up to ``timeout`` (twice at worst,
        SIGTERM then SIGKILL): call it when the node stops, not on the tick path."""
        if self._closed:
            return
        self._closed = True
        link, self._link = self._link, None
        if link is not None:
            link.stop(timeout)

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the child's lifecycle (rule 2) ------------------------------------------------------

    def _start(self) -> None:
        """Start a child with every saved state; a failure to start (out of processes or
        memory) is a quick death for the backoff, never the caller's exception."""
        self._sent_ticks = self._done_ticks = 0
        self._ready = False
        with self._lock:
            self._fence.clear()
            try:
                self._link = link = _Link(self._ctx, self.config, self.save_every, self.threads,
                                          self._on_message)
            except Exception as e:  # noqa: BLE001 - whatever spawning raised, the node lives on
                log.event("trainer_start_failed", logging.WARNING, error=repr(e))
                self._link = None
                self._restarts += 1
                self._backoff = min(MAX_BACKOFF, max(FIRST_BACKOFF, 2 * self._backoff))
                self._next_start = time.monotonic() + self._backoff
                return
            link.send(("init", self.default_season, dict(self._seasons), dict(self._saved)))

    def _check(self) -> _Link | None:
        """The live link, after replacing a dead child when its backoff allows."""
        if self._closed:
            return None
        link = self._link
        if link is not None and not link.dead():
            return link
        now = time.monotonic()
        if link is not None:  # just found dead: reap, count, schedule
            pid, code = link.abandon()
            self._link = None
            self._ready = False
            self._restarts += 1
            quick = now - link.started < MIN_UPTIME
            self._backoff = min(MAX_BACKOFF, max(FIRST_BACKOFF, 2 * self._backoff)) if quick else 0.0
            self._next_start = now + self._backoff
            log.event("trainer_died", logging.WARNING, pid=pid, exitcode=code,
                      restart_in=round(self._backoff, 3), blocks_saved=len(self._saved))
        if now < self._next_start:
            return None
        self._start()
        return self._link

    def _on_message(self, link: _Link, msg: tuple[Any, ...]) -> None:
        """Runs on the reader thread: store what the child said."""
        if link is not self._link:
            return
        kind = msg[0]
        if kind == "fc":
            _, tick, ids, fc, stats = msg
            self._results.append((tick, ids, fc))
            self._answered_at = time.monotonic()
            self._done_ticks += 1
            self._answered += 1
            self._rss, self._cpu, self._tick_cpu, self._blocks = stats
        elif kind == "weights":
            _, seen, blobs = msg
            with self._lock:
                for b, blob in blobs.items():
                    if seen >= self._fence.get(b, 0):  # else made before a load/forget (rule 1)
                        self._saved[b] = blob
        elif kind == "ready":
            self._answered_at = time.monotonic()
            self._ready = True
            self._rss, self._cpu, self._tick_cpu, self._blocks = msg[1]
        elif kind == "load_error":
            _, b, seen = msg
            with self._lock:
                if seen >= self._fence.get(b, 0):
                    self._saved.pop(b, None)
            self._load_errors += 1


# -- the child -----------------------------------------------------------------------------------


def _rss() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child_main(down: Any, up: Any, cfg: NanoConfig, save_every: int, threads: int) -> None:
    """The child: import torch, then serve messages until "stop" or EOF (the parent died)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the node, which closes us
    import torch

    torch.set_num_threads(threads)
    from corec_node.engine.nanonet import NanoNets

    nets = NanoNets(cfg)
    seasons: dict[int, int] = {}
    default_season = 0
    seen = 0
    cursor = 0
    cpu0 = time.process_time()
    last_cpu = 0.0

    def stats() -> tuple[int, float, float, int]:
        return _rss(), time.process_time() - cpu0, last_cpu, len(nets)

    def save(blocks: list[int]) -> None:
        for i in range(0, len(blocks), SNAPSHOT_CHUNK):
            up.send(("weights", seen, {b: nets.export(b) for b in blocks[i:i + SNAPSHOT_CHUNK]
                                       if b in nets}))

    try:
        while True:
            msg = down.recv()
            seen += 1
            kind = msg[0]
            if kind == "tick":
                t0 = time.process_time()
                _, tick, ids, vals = msg
                for b in ids.tolist():
                    if b not in nets:
                        nets.add(b, seasons.get(b, default_season))
                fc = nets.update(ids, vals)
                ids_all = nets.ids()
                k = math.ceil(len(ids_all) / save_every)
                if k:
                    cursor %= len(ids_all)
                    save(np.roll(ids_all, -cursor)[:k].tolist())
                    cursor += k
                last_cpu = time.process_time() - t0
                up.send(("fc", tick, ids, fc, stats()))
            elif kind == "load":
                for b, blob in msg[1].items():
                    try:
                        nets.restore(b, blob)
                    except ValueError:
                        up.send(("load_error", b, seen))
            elif kind == "init":  # always the first message: seasons, then every saved state
                _, default_season, seasons, saved = msg
                for b, blob in saved.items():
                    try:
                        nets.restore(b, blob)
                    except ValueError:
                        up.send(("load_error", b, seen))
                up.send(("ready", stats()))
            elif kind == "season":
                _, b, m = msg
                seasons[b] = m
                if b in nets:
                    nets.set_season(b, m)
            elif kind == "forget":
                seasons.pop(msg[1], None)
                if msg[1] in nets:
                    nets.remove(msg[1])
            elif kind == "snapshot":
                save(nets.ids().tolist() if msg[1] is None else msg[1])
            elif kind == "stop":
                return
    except (EOFError, OSError):
        return  # the parent is gone
