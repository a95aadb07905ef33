"""The analyzer's hooks. torch is imported at startup in a worker thread, not here."""

from __future__ import annotations

import asyncio
import importlib
import logging
from typing import TYPE_CHECKING, Any

from corec_analyzer.store import PredictionStore, open_store
from corec_node import log
from corec_node.hookspecs import hookimpl
from corec_node.plugins import PluginConfigError

if TYPE_CHECKING:
    from corec_node.plugins import NodeFacade

NAME = "analyzer"
FIELDS = ("mean", "min", "max", "std", "error_rate", "fitness")
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


class AnalyzerPlugin:
    """One instance per node (the entry point's ``plugin``)."""

    SETTINGS = {
        "field": (str, "mean"),  # the aggregate predicted
        "window": (int, 8),  # past ticks the net sees
        "hidden": (int, 16),  # hidden units
        "lr": (float, 0.01),  # Adam learning rate
        "z": (float, 4.0),  # |actual - predicted| / sigma above this is a departure
        "warmup": (int, 20),  # judged ticks before any departure is reported
        "channels": (list, []),  # channels to model; empty: all
        "retain_ticks": (int, 1000),  # predictions kept in the store
        "threads": (int, 1),  # torch CPU threads
        "seed": (int, 0),
    }

    def __init__(self) -> None:
        self.settings: dict[str, Any] = {}
        self.analyzer: Any = None
        self.store: PredictionStore | None = None
        self._owns_store = False
        self._pruned = 0

    @hookimpl
    def corec_configure(self, config: Any) -> None:
        s = dict(config.plugin[NAME])
        if s["field"] not in FIELDS:
            raise PluginConfigError(NAME, "field", f"one of {', '.join(FIELDS)}", s["field"])
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
        model = await asyncio.to_thread(importlib.import_module, "corec_analyzer.model")  # imports torch
        self.analyzer = await asyncio.to_thread(
            lambda: model.Analyzer(window=s["window"], hidden=s["hidden"], lr=s["lr"], z=s["z"], warmup=s["warmup"],
                                   field=s["field"], channels=set(s["channels"]), seed=s["seed"], threads=s["threads"]))
        self.store, self._owns_store = await open_store(node, NAME, MIGRATIONS)
        log.event("analyzer_ready", plugin=NAME, field=s["field"], window=s["window"], z=s["z"],
                  store="node" if not self._owns_store else "sqlite")

    @hookimpl
    async def corec_block_aggregates(self, tick: int, aggregates: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if self.analyzer is None:
            return []
        predictions, departures = await asyncio.to_thread(self.analyzer.step, tick, aggregates)
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
