"""The plugin memory watch's shell: tracemalloc, its snapshots, switching a plugin off.

On with ``plugins.memory_watch``. At the plugins' startup (before ``corec_startup``) it
starts tracemalloc, unless something else already traces; every ``plugins.memory_interval``
seconds a worker thread takes a snapshot and :func:`~corec_node.plugins.memory.attribute`
splits it by the files each plugin's code lives in; on the loop,
:class:`~corec_node.plugins.memory.MemoryWatch` updates the figures ``plugins`` shows and
names the plugins over their limit, which are switched off as the breaker does
(``plugin_disabled``, logged and alerted, reason naming the figure).

What it sees: what Python's allocator hands out (objects, bytes, lists) and what C
extensions report through ``PyTraceMalloc_Track`` (numpy's array buffers), from the
moment it starts; what a plugin's import made before is not counted. What it does not
see: memory a C library takes from malloc or mmap on its own (torch tensors, libzmq
buffers, SQLite's page cache, a plugin's child processes). It is not the process's RSS.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import sys
import time
import tracemalloc
import types
from collections.abc import Callable, Mapping
from typing import Any

from corec_node import log
from corec_node.config import PluginsSection, plugin_memory_limits
from corec_node.plugins.memory import MIB, MemoryWatch, Over, PluginFiles, attribute, mib
from corec_node.plugins.records import ACTIVE, PluginRecord

# A snapshot copies every live trace while holding the GIL, so the loop waits: 0.4 to 0.9 us
# a trace measured (bench/plugin_memory.py; a busy node with the audit holds ~300k). Past
# this many a check is skipped, not taken: peers suspect a node silent for 1-2 s.
MAX_TRACES = 500_000
TRACE_BYTES = 54  # tracemalloc's own memory per live trace (get_tracemalloc_memory; 54-60 B measured)


def plugin_files(records: Mapping[str, PluginRecord]) -> list[PluginFiles]:
    """Where each plugin's code lives: a path plugin's file or folder; an installed one's
    top-level package (its own module or package when two plugins share that top level);
    a plugin object defined in a module of corec_node itself, that module file alone."""
    wide: dict[str, tuple[str, ...]] = {}
    narrow: dict[str, tuple[str, ...]] = {}
    for name, rec in records.items():
        module = _module_of(rec.obj)
        own = _places(module)
        top = sys.modules.get(module.__name__.partition(".")[0]) if module is not None else None
        if rec.source == "path":
            own = own + (rec.origin,)
        narrow[name] = own
        wide[name] = own if top is None or top.__name__ == "corec_node" or top is module else _places(top)
    claims: dict[str, int] = {}
    for places in wide.values():
        for place in set(places):
            claims[place] = claims.get(place, 0) + 1
    out = []
    for name in records:
        places = wide[name] if all(claims[p] == 1 for p in wide[name]) else narrow[name]
        folders, files = set(), set()
        for place in places:
            for spelled in {place, os.path.abspath(place)}:
                (folders if os.path.isdir(spelled) else files).add(spelled)
        out.append(PluginFiles(name, tuple(sorted(folders)), tuple(sorted(files))))
    return out


def _module_of(obj: Any) -> types.ModuleType | None:
    if isinstance(obj, types.ModuleType):
        return obj
    return inspect.getmodule(obj) or inspect.getmodule(type(obj))


def _places(module: types.ModuleType | None) -> tuple[str, ...]:
    """A package's folders, or a module's file (nothing for a module without files)."""
    if module is None:
        return ()
    path = getattr(module, "__path__", None)
    if path is not None:
        return tuple(str(p) for p in path)
    file = getattr(module, "__file__", None)
    return (file,) if file else ()


def traced_bytes(plugins: list[PluginFiles]) -> tuple[dict[str, int], int, float]:
    """One snapshot split by plugin (in a worker thread): (bytes per plugin, traces, seconds
    the snapshot took, during which the process's other threads wait for the GIL)."""
    t0 = time.perf_counter()
    snapshot = tracemalloc.take_snapshot()
    took = time.perf_counter() - t0
    raw = getattr(snapshot.traces, "_traces", None)  # (domain, size, frames innermost first, total)
    if raw is None:  # another Python's layout: build the same tuples from the public API
        raw = [(t.domain, t.size, tuple((f.filename, f.lineno) for f in reversed(t.traceback)), len(t.traceback))
               for t in snapshot.traces]
    return attribute(raw, plugins), len(raw), took


class MemoryWatcher:
    """The checks of one PluginManager, run on its loop. ``switch_off(record, reason,
    text, **fields)`` is the dispatcher's: disable, log and alert."""

    def __init__(self, settings: PluginsSection, records: Mapping[str, PluginRecord],
                 switch_off: Callable[..., None]) -> None:
        self.settings = settings
        self.records = records
        self.switch_off = switch_off
        self.watch = MemoryWatch()
        self.started_tracing = False
        self.skipping = False  # the last check was skipped: too many traces (MAX_TRACES)
        self.last: dict[str, Any] = {}  # the last check: traces, snapshot and total seconds
        self._task: asyncio.Task[None] | None = None

    def limits(self) -> dict[str, int]:
        """Bytes per plugin: its ``plugins.memory_limits`` entry, else ``memory_max_mb``."""
        own = plugin_memory_limits(self.settings.memory_limits)
        return {name: int(own.get(name, self.settings.memory_max_mb) * MIB) for name in self.records}

    def start(self) -> None:
        """Start tracing (unless something else traces already) and the checks."""
        if not tracemalloc.is_tracing():
            tracemalloc.start(self.settings.memory_frames)
            self.started_tracing = True
        self.watch.limits = self.limits()
        log.event("plugin_memory_watch", interval=self.settings.memory_interval, frames=tracemalloc.get_traceback_limit(),
                  limits=",".join(f"{n}={mib(b) if b else 'none'}" for n, b in sorted(self.watch.limits.items())))
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self.started_tracing:
            tracemalloc.stop()
            self.started_tracing = False

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.settings.memory_interval)
            try:
                await self.check(loop)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the watch must never take the node down
                log.event("plugin_memory_check_failed", logging.WARNING, error=f"{type(exc).__name__}: {exc}")

    async def check(self, loop: asyncio.AbstractEventLoop | None = None) -> list[Over]:
        """One check now: snapshot off the loop, figures and verdicts on it."""
        loop = loop or asyncio.get_running_loop()
        if not tracemalloc.is_tracing():
            return []
        estimate = tracemalloc.get_tracemalloc_memory() // TRACE_BYTES
        if estimate > MAX_TRACES:
            if not self.skipping:
                log.event("plugin_memory_check_skipped", logging.WARNING, traces=estimate, max_traces=MAX_TRACES,
                          detail="too many live allocations traced: a snapshot would stall the loop")
            self.skipping = True
            return []
        if self.skipping:
            log.event("plugin_memory_check_resumed", traces=estimate)
            self.skipping = False
        t0 = time.perf_counter()
        files = plugin_files(self.records)
        totals, traces, took = await loop.run_in_executor(None, traced_bytes, files)
        self.watch.limits = self.limits()
        active = [n for n, r in self.records.items() if r.state == ACTIVE]
        over = self.watch.observe(totals, judge=active)
        self.last = {"traces": traces, "snapshot_seconds": took, "seconds": time.perf_counter() - t0}
        for name, rec in self.records.items():
            for key, value in self.watch.figures(name).items():
                setattr(rec, key, value)
        log.event("plugin_memory_check", logging.DEBUG, traces=traces, snapshot_ms=round(took * 1000, 1),
                  ms=round(self.last["seconds"] * 1000, 1),
                  **{f"{n}_mib": round(b / MIB, 1) for n, b in sorted(totals.items())})
        for verdict in over:
            rec = self.records[verdict.plugin]
            self.switch_off(rec, verdict.reason,
                            f"plugin {rec.name} switched off: {verdict.reason} (plugins.memory_max_mb, "
                            f"plugins.memory_limits)", memory_bytes=verdict.bytes, memory_limit_bytes=verdict.limit)
        return over
