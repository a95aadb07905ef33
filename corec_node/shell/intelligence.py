"""Intelligent channels, the node's side: the blocks of ``engine.intelligent`` channels that
this node owns also get a tiny torch forecaster (``engine/nanonet.py``), trained and asked
in a child process (``shell/trainer.py``), so the node process itself never imports torch
and channels that are not intelligent never pay for it. Owned by the data plane, which
calls ``tick`` after each engine tick; everything here runs on the node's event loop and
never blocks it (the trainer's calls only touch queues; ``close`` is awaited at stop).

Rules:

1. Off unless configured: with no channel, nothing is imported and no child starts. The
   trainer starts on first need (the first owned row of an intelligent channel). When
   torch is not installed (looked up, not imported), one ``intelligent_needs_torch``
   warning, and the layer stays off: the node runs on.
2. Each tick: the forecasts the child answered are taken (a forecast answering tick k is
   for tick k + 1), those for this tick are scored against the rows' means, the rows are
   annotated, then this tick's means go to the child. Only the rows a tick makes are
   submitted (``engine.tick_rows`` may rotate them): a block's model learns the ticks it
   got rows for.
3. Row keys (SPEC 9.8): ``nano_forecast``, the model's forecast for the row's tick, made
   from the means up to the tick before, and written only when the child answered in time
   (its forecast of the next tick is made after the row goes out: compare it with
   ``mean``, where ``forecast`` is the statistical forecast of the next tick);
   ``nano_error``, its scaled error against the naive last-value forecast, as
   ``engine/forecast.py`` rule 3 (forgetting sums over a ``WINDOW``-tick window, the naive
   sum floored the same way), None until ``WINDOW`` ticks are scored.
4. Weights survive a restart: every ``engine.intelligent_save_every`` ticks the blocks'
   latest saved bytes (``Trainer.weights``) go to SQLite (``nano_weights``), and at stop
   after a fresh ``snapshot``. At start they are read back, and each block's bytes are
   loaded into the trainer the first time the block is held here.
5. With replicas, every holder trains a block's model, as every holder runs its statistical
   forecaster (``engine/adaptive.py`` rule 1), and is scored as rule 3: a replica promoted
   when its owner dies forecasts at once, its scaled error with it, with nothing to move.
   Only the owner writes the block's row.
6. Weights move with a block (``nano_moves.py``, SPEC 9.8, since 1.12): the block's model goes
   to a new holder with its copy, and a holder loads a peer's model that saw more ticks.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from corec_node import log
from corec_node.engine.forecast import NAIVE_FLOOR
from corec_node.shell.nano_moves import WeightMoves

WINDOW = 24  # ticks in the scaled error's forgetting window (rule 3); None until this many are scored
FORGET_AFTER = 3  # save periods without a row: the block moved away or emptied, its model is dropped
SNAPSHOT_WAIT = 3.0  # seconds close() waits for the child's fresh weights before saving what it has
NANO_FORECAST = "nano_forecast"
NANO_ERROR = "nano_error"


@dataclass(slots=True)
class _Block:
    """What the shell keeps of one intelligent block: its scoring sums and latest forecast."""

    last: float = math.nan  # last finite mean seen: the naive forecast of the next tick
    target: int = -1  # the tick ``forecast`` is for
    forecast: float = math.nan
    ef: float = 0.0  # forgetting sums of |y - nano forecast|, |y - naive| and of weights
    en: float = 0.0
    w: float = 0.0
    scored: int = 0
    seen: int = 0  # the last tick the block had a row here
    ticks: int = 0  # ticks of means its model was handed (rule 6: what a received model must beat)
    season: int = -1  # the season the trainer was given

    def score(self, y: float, tick: int) -> None:
        """Rule 3, for a finite ``y`` observed at ``tick``."""
        if self.target == tick and math.isfinite(self.forecast) and math.isfinite(self.last):
            decay = 1.0 - 1.0 / WINDOW
            self.ef = decay * self.ef + abs(y - self.forecast)
            self.en = decay * self.en + abs(y - self.last)
            self.w = decay * self.w + 1.0
            self.scored += 1
        self.last = y

    def error(self) -> float | None:
        if self.scored < WINDOW:
            return None
        return self.ef / max(self.en, NAIVE_FLOOR * self.w * (abs(self.last) + 1.0))



class Intelligence(WeightMoves):
    """The node's torch forecasters of intelligent channels (see the module rules)."""

    def __init__(self, channels: tuple[int, ...], save_every: int, engine: Any, recorder: Any, *,
                 train_every: int = 2) -> None:
        """``engine``: the data plane's ``EngineHost`` (ownership, genomes' seasons);
        ``recorder``: its ``Recorder`` (the local store, background writes)."""
        self.channels = frozenset(channels)
        self.save_every = save_every
        self.train_every = train_every  # engine.intelligent_train_every: NanoConfig.train_every
        self.engine = engine
        self.recorder = recorder
        self.trainer: Any = None  # shell.trainer.Trainer once started (rule 1)
        self.off: str | None = None  # why the layer is off for good (torch missing)
        self.blocks: dict[int, _Block] = {}
        self._stored: dict[int, bytes] = {}  # read at start, loaded as blocks come (rule 4)
        self._saved: dict[int, bytes] = {}  # the bytes last written per block: unchanged ones are not rewritten
        self.restored_blocks = 0
        self.saved_blocks = 0
        self._init_moves()  # rule 6

    async def restore(self) -> None:
        """At start: the weights saved before (rule 4); nothing when no channel is set."""
        store = self.recorder.store
        if self.channels and store is not None:
            self._stored = await store.load_nano_weights()
            self._saved = dict(self._stored)

    def tick(self, rows: list[dict[str, Any]], tick: int) -> None:
        """After an engine tick, before its rows are published (rule 2)."""
        if not self.channels or self.off is not None:
            return
        if self._parked:
            self._unpark()
        if self._outgoing:
            self._send_moved()
        mine = [r for r in rows if r["channel"] in self.channels and r.get("count")]
        if mine:
            owned = self.engine.owned_mask(np.fromiter((r["block"] for r in mine), np.int64, len(mine)))
            mine = [r for r, own in zip(mine, owned.tolist(), strict=True) if own]
        replicas = self._replica_means(mine) if self.engine.copies > 1 else {}
        trainer = self.trainer if self.trainer is not None or not (mine or replicas) else self._start()
        if trainer is None:
            return
        for b, (answered, fc) in trainer.poll_ticks().items():
            state = self.blocks.get(b)
            if state is not None and answered + 1 > state.target:
                state.target, state.forecast = answered + 1, fc
        means: dict[int, float] = {}
        for row in mine:
            b = row["block"]
            state = self.blocks.get(b)
            if state is None:
                state = self.blocks[b] = self._add(trainer, b)
            self._season(trainer, b, state)
            y = row.get("mean")
            y = math.nan if y is None else float(y)
            if math.isfinite(y):
                state.score(y, tick)
            if state.target == tick and math.isfinite(state.forecast):
                row[NANO_FORECAST] = state.forecast
            row[NANO_ERROR] = state.error()
            state.seen = tick
            means[b] = y
        for b, y in replicas.items():  # rule 5: they learn and are scored too, and write no row
            state = self.blocks.get(b)
            if state is None:
                state = self.blocks[b] = self._add(trainer, b)
            self._season(trainer, b, state)
            state.score(y, tick)
            state.seen = tick
            means[b] = y
        if means and trainer.submit(tick, means):
            for b in means:
                self.blocks[b].ticks += 1
        if tick % self.save_every == 0:
            self._forget_gone(tick)
            self._save()

    def _replica_means(self, owned_rows: list[dict[str, Any]]) -> dict[int, float]:
        """Rule 5: this tick's means of the intelligent channels' blocks held here as a
        replica (the statistical forecaster runs on every holder and saw them)."""
        forecasts = self.engine.adaptive.forecasts
        ids = forecasts.ids()
        ids = ids[np.isin(ids >> 32, np.fromiter(self.channels, np.int64, len(self.channels)))]
        if len(ids) == 0:
            return {}
        ids = ids[~self.engine.owned_mask(ids)]
        owned = {r["block"] for r in owned_rows}
        return {b: y for b, y in zip(ids.tolist(), forecasts.last_observed(ids).tolist(), strict=True)
                if b not in owned and math.isfinite(y)}

    def _start(self) -> Any:
        """Rule 1: the trainer, started now, or None (off for good) without torch."""
        from corec_node.engine.nanonet import available  # finds torch, never imports it

        if not available():
            self.off = "torch is not installed"
            log.event("intelligent_needs_torch", logging.WARNING, channels=",".join(map(str, sorted(self.channels))),
                      detail="engine.intelligent is set but torch is not installed (pip install 'corec-node[ml]'): "
                             "those channels get no torch forecast")
            return None
        from corec_node.engine.nanonet import NanoConfig
        from corec_node.shell.trainer import Trainer

        self.trainer = Trainer(NanoConfig(train_every=self.train_every), save_every=self.save_every)
        log.event("intelligent_started", channels=",".join(map(str, sorted(self.channels))),
                  trainer_pid=self.trainer.pid, stored_blocks=len(self._stored))
        return self.trainer

    def _add(self, trainer: Any, block: int) -> _Block:
        state = _Block()
        blob = self._stored.pop(block, None)
        if blob is not None:  # rule 4: applied by the child before this tick's means
            trainer.load(block, blob)
            got = self._received.pop(block, None)
            if got is None:
                self.restored_blocks += 1
            else:  # rule 6: a peer's, taken before the block's first row here
                state.ticks = got[0]
                self._loaded(block, *got)
        return state

    def _season(self, trainer: Any, block: int, state: _Block) -> None:
        """The block's genome's season (its phase features in the net), given when it changes."""
        genome = self.engine.adaptive.genomes.get(block)
        season = int(genome.params.get("season", 0)) if genome is not None else 0
        if season != state.season:
            state.season = season
            trainer.set_season(block, season)

    def _forget_gone(self, tick: int) -> None:
        """Blocks without a row for a while moved away or emptied: their model leaves the
        child (its last weights stay in the store, and here should the block come back)."""
        gone = [b for b, s in self.blocks.items() if tick - s.seen > FORGET_AFTER * self.save_every]
        for b in gone:
            del self.blocks[b]
            blob = self.trainer.weights(b)
            if blob is not None:
                self._stored[b] = blob
                self._received.pop(b, None)  # our own now: counted from 0 should it come back
            self.trainer.forget(b)

    def _weights(self) -> list[tuple[int, bytes]]:
        """The blocks' latest bytes from the child that are not stored yet."""
        out = []
        for b in self.blocks:
            blob = self.trainer.weights(b)
            if blob is not None and blob is not self._saved.get(b):
                out.append((b, blob))
        return out

    def _save(self) -> None:
        store = self.recorder.store
        items = self._weights() if self.trainer is not None else []
        if store is None or not items:
            return
        self.recorder.spawn("nano weights", self._write(store, items))

    async def _write(self, store: Any, items: list[tuple[int, bytes]]) -> None:
        """Counted as saved once SQLite has them (a failed write is tried again next time)."""
        await store.save_nano_weights(items)
        self._saved.update(items)
        self.saved_blocks += len(items)

    async def close(self) -> None:
        """At stop: fresh weights from the child (up to SNAPSHOT_WAIT), saved, then the child
        stopped and reaped (rule 4). Call before the recorder drains."""
        trainer = self.trainer
        if trainer is None:
            return
        # the blocks the child holds: it answered for them, or saved them once
        blocks = [b for b, s in self.blocks.items() if s.target >= 0 or trainer.weights(b) is not None]
        try:
            if blocks and trainer.stats().child_ready:
                before = {b: trainer.weights(b) for b in blocks}
                trainer.snapshot(blocks)
                deadline = time.monotonic() + SNAPSHOT_WAIT
                while time.monotonic() < deadline and any(trainer.weights(b) is before[b] for b in blocks):
                    await asyncio.sleep(0.02)
            self._save()
        finally:
            self.trainer = None
            await asyncio.to_thread(trainer.close)
            log.event("intelligent_stopped", blocks=len(blocks), saved_blocks=self.saved_blocks)

    def status(self) -> dict[str, Any]:
        """``status --json``'s ``intelligent`` object."""
        trainer = self.trainer
        alive = trainer is not None and trainer.stats().child_pid is not None
        out: dict[str, Any] = {"channels": sorted(self.channels), "running": alive, "off": self.off,
                               "train_every": self.train_every,
                               "blocks": len(self.blocks), "restored_blocks": self.restored_blocks,
                               "saved_blocks": self.saved_blocks}
        if self.channels:  # rule 6
            out.update(weights_sent=self.weights_sent, weights_received=self.weights_received,
                       weights_loaded=self.weights_loaded, weights_kept=self.weights_kept,
                       weights_dropped=dict(self.weights_dropped), weights_unsent=dict(self.weights_unsent),
                       weights_waiting=len(self._outgoing), weights_parked=len(self._parked),
                       last_loaded=self.last_loaded)
        if trainer is not None:
            st = trainer.stats()
            out.update(submitted=st.submitted, dropped=st.dropped, answered=st.answered, restarts=st.restarts,
                       load_errors=st.load_errors, child_pid=st.child_pid, child_ready=st.child_ready,
                       child_rss_mb=round(st.child_rss / 2**20, 1), child_cpu_s=round(st.child_cpu, 3))
        return out
