"""The analyzer's hooks. torch, when there and wanted, is imported at startup in a worker
thread, never here (``corec_analyzer`` is imported by every node that has it installed)."""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import logging
from typing import TYPE_CHECKING, Any

from corec_analyzer.residuals import Analyzer, score_id
from corec_analyzer.store import PredictionStore, open_store
from corec_node import log
from corec_node.hookspecs import hookimpl
from corec_node.plugins import PluginConfigError

if TYPE_CHECKING:
    from corec_node.plugins import NodeFacade

NAME = "analyzer"
TORCH_MISSING = "analyzer: torch not installed: its model (the second opinion) is disabled"
PRUNE_EVERY = 100  # ticks between two deletions of old predictions

MIGRATIONS = [
    # 1: append only; a released plugin never edits an entry (the store runs each once)
    """CREATE TABLE predictions (
        tick INTEGER NOT NULL,
        block INTEGER NOT NULL,
        channel INTEGER NOT NULL,
        predicted REAL NOT NULL,
        actual REAL NOT NULL,
        z REAL,
        PRIMARY KEY (block, tick)
    );
    CREATE INDEX predictions_tick ON predictions (tick)""",
]

INSERT = "INSERT OR REPLACE INTO predictions (tick, block, channel, predicted, actual, z) VALUES (?, ?, ?, ?, ?, ?)"


def torch_available() -> bool:
    return importlib.util.find_spec("torch") is not None


class AnalyzerPlugin:
    """One instance per node (the entry point's ``plugin``)."""

    SETTINGS = {
        "z": (float, 4.0),  # |actual - predicted| / sigma above this is a departure
        "warmup": (int, 20),  # judged ticks before any departure is reported
        "channels": (list, []),  # channels to judge; empty: all (but emit_channel)
        "emit_channel": (int, -1),  # emit each judged block's |z| as an entity on this channel; -1: off
        "retain_ticks": (int, 1000),  # predictions kept in the store
        "model": (bool, True),  # the torch second opinion, when torch is installed
        "window": (int, 8),  # the model: past residuals it sees
        "hidden": (int, 16),  # the model: hidden units
        "lr": (float, 0.01),  # the model: Adam learning rate
        "threads": (int, 1),  # the model: torch CPU threads
        "seed": (int, 0),
    }

    def __init__(self) -> None:
        self.settings: dict[str, Any] = {}
        self.analyzer: Analyzer | None = None
        self.store: PredictionStore | None = None
        self._owns_store = False
        self._pruned = 0
        self.emitted = 0  # scores emitted (entities)

    @hookimpl
    def corec_configure(self, config: Any) -> None:
        s = dict(config.plugin[NAME])
        if not -1 <= s["emit_channel"] <= 255:
            raise PluginConfigError(NAME, "emit_channel", "a channel 0..255, or -1 for none", s["emit_channel"])
        for key in ("window", "hidden", "warmup", "retain_ticks", "threads"):
            if s[key] < (0 if key == "warmup" else 1):
                raise PluginConfigError(NAME, key, "a positive integer", s[key])
        if s["z"] <= 0 or s["lr"] <= 0:
            raise PluginConfigError(NAME, "z" if s["z"] <= 0 else "lr", "a positive number")
        if not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in s["channels"]):
            raise PluginConfigError(NAME, "channels", "a list of channels 0..255", s["channels"])
        self.settings = s

    @hookimpl
    def corec_storage_migrations(self) -> list[str]:
        return MIGRATIONS

    @hookimpl
    async def corec_startup(self, node: NodeFacade) -> None:
        s = self.settings or {k: d for k, (_, d) in self.SETTINGS.items()}
        opinion = None
        if s["model"] and torch_available():
            model = await asyncio.to_thread(importlib.import_module, "corec_analyzer.model")  # imports torch
            opinion = await asyncio.to_thread(lambda: model.Opinions(window=s["window"], hidden=s["hidden"], lr=s["lr"],
                                                                     seed=s["seed"], threads=s["threads"]))
        elif s["model"]:
            log.event("analyzer_model_disabled", logging.WARNING, plugin=NAME, reason="torch not installed",
                      detail=TORCH_MISSING)
        emit = s["emit_channel"]
        self.analyzer = Analyzer(z=s["z"], warmup=s["warmup"], window=s["window"], channels=set(s["channels"]),
                                 exclude={emit} if emit >= 0 else set(), opinion=opinion)
        self.store, self._owns_store = await open_store(node, NAME, MIGRATIONS)
        log.event("analyzer_ready", plugin=NAME, z=s["z"], model=opinion is not None, emit_channel=emit,
                  store="node" if not self._owns_store else "sqlite")

    @hookimpl
    async def corec_block_aggregates(self, node: NodeFacade, tick: int,
                                     aggregates: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if self.analyzer is None:
            return []
        predictions, departures = await asyncio.to_thread(self.analyzer.step, tick, aggregates)
        emit = self.settings.get("emit_channel", -1)
        scored = [p for p in predictions if p.z is not None]
        if emit >= 0 and scored:  # one entity per judged block: id channel << 24 | index, value |z|
            self.emitted += node.emit(emit, [score_id(p.block) for p in scored], [min(abs(p.z), 1e30) for p in scored])
        if self.store is not None:
            if predictions:
                await self.store.executemany(INSERT, [(p.tick, p.block, p.channel, p.predicted, p.actual, p.z)
                                                      for p in predictions])
            if tick - self._pruned >= PRUNE_EVERY:
                self._pruned = tick
                await self.store.execute("DELETE FROM predictions WHERE tick < ?", (tick - self.settings.get("retain_ticks", 1000),))
        return [d.alert() for d in departures]

    @hookimpl
    async def corec_shutdown(self) -> None:
        store, self.store = self.store, None
        if store is not None and self._owns_store:
            try:
                await store.close()
            except Exception as exc:  # closing must not fail the node's shutdown
                log.event("analyzer_close_failed", logging.WARNING, error=str(exc))
