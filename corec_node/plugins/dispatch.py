"""How one hook call runs (rules 1-5 of the package docstring, and ``COREC_TRACE_PLUGINS``).

Sync implementations run in this manager's own daemon worker threads, async ones (or
sync ones returning an awaitable: "await me maybe") as tasks on the loop; every call has
a time budget; a raise, a timeout or a bad return value is a fault, and ``max_faults``
faults within ``fault_window`` seconds trip the breaker that switches the plugin off.
:class:`~corec_node.plugins.PluginManager` builds one :class:`Dispatcher` and hands it each
call with the implementations to run, as pluggy's manager hands its call loop the hookimpls.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import functools
import inspect
import logging
import queue
import threading
import time
import traceback
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any

from corec_node import log
from corec_node.plugins.emit import entities_context
from corec_node.plugins.records import ACTIVE, PluginRecord, _Impl

TRACE_ENV = "COREC_TRACE_PLUGINS"

DEFAULT_BUDGET = 2.0  # seconds per hook call: two default engine ticks; a plugin needing more should be async
DEFAULT_STARTUP_BUDGET = 30.0  # startup/shutdown may open stores or import a model library
DEFAULT_MAX_FAULTS = 3  # faults within the window that switch a plugin off ...
DEFAULT_FAULT_WINDOW = 60.0  # ... so one fault a minute (a flaky dependency) is tolerated
DROP_LOG_PERIOD = 10.0  # seconds between two "plugin_dropped" lines per plugin

SEVERITIES = ("info", "warning", "critical")

# Hooks called through the async dispatch path (worker threads / tasks, budgets, breaker).
EVENT_HOOKS = (
    "corec_startup", "corec_shutdown", "corec_entities", "corec_block_aggregates",
    "corec_alert", "corec_member_event", "corec_leader_changed",
)
# Hooks called directly on the caller's thread: cheap, at startup, return data.
DIRECT_HOOKS = ("corec_configure", "corec_channels", "corec_kernels", "corec_storage_migrations",
                "corec_cli_commands")

SKIPPED = object()  # a direct call that faulted or was not made


# -- worker threads -------------------------------------------------------------------------


class _ThreadPool:
    """Daemon worker threads, started on demand up to ``max_workers``, reused when idle.

    Not concurrent.futures: its workers are joined at interpreter exit, so one hung
    plugin would keep a stopping node alive.
    Accounting: every job put is matched either to an idle thread, a new thread, or the
    backlog (only when ``max_workers`` threads are busy); a thread that finishes takes
    from the backlog before it counts itself idle.
    """

    def __init__(self, max_workers: int, name: str = "corec-plugin") -> None:
        self.max_workers = max(1, max_workers)
        self._name = name
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0
        self._backlog = 0
        self._closed = False

    def submit(self, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn(*args)`` in a worker thread; ``fn`` reports its own outcome."""
        with self._lock:
            if self._closed:
                raise RuntimeError("plugin thread pool is closed")
            if self._idle:
                self._idle -= 1
            elif self._threads < self.max_workers:
                self._threads += 1
                threading.Thread(target=self._work, name=f"{self._name}-{self._threads}", daemon=True).start()
            else:
                self._backlog += 1
            self._jobs.put((fn, args))

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            fn, args = job
            try:
                fn(*args)
            except BaseException:  # fn reports its own errors; this is a last resort
                logging.getLogger(log.LOGGER_NAME).exception("plugin_worker_failed")
            del job, fn, args
            with self._lock:
                if self._closed:
                    self._threads -= 1
                    return
                if self._backlog:
                    self._backlog -= 1
                else:
                    self._idle += 1

    def close(self) -> None:
        with self._lock:
            self._closed = True
            n = self._idle
        for _ in range(n):
            self._jobs.put(None)

    @property
    def threads(self) -> int:
        return self._threads


def _settle(fut: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result)


# -- calling --------------------------------------------------------------------------------


class Dispatcher:
    """Runs hook calls for a :class:`~corec_node.plugins.PluginManager`, which keeps the
    registrations and hands over, per call, the implementations and the budget.

    It owns what only calling needs: the worker pool, background dispatches, each
    plugin's calls in flight and recent faults. ``wrap_node(record, node)`` gives the
    ``node`` argument each plugin gets (its NodeFacade). It judges the records it is given
    (counting calls, faults, drops) and, when the breaker trips, asks ``disable(name,
    reason)`` (the manager's) to switch the plugin off, then sends ``on_alert`` the alert.
    """

    def __init__(
        self,
        *,
        disable: Callable[[str, str], None],
        on_alert: Callable[[dict[str, Any]], Any] | None = None,
        max_faults: int = DEFAULT_MAX_FAULTS,
        fault_window: float = DEFAULT_FAULT_WINDOW,
        clock: Callable[[], float] = time.monotonic,
        trace: bool = False,
        wrap_node: Callable[[PluginRecord, Any], Any] | None = None,
    ) -> None:
        self.on_alert = on_alert
        self.wrap_node = wrap_node  # the node as each plugin may see it (NodeFacade)
        self.max_faults = max_faults
        self.fault_window = fault_window
        self.clock = clock
        self.trace = trace
        self._disable = disable
        self._workers = 2
        self.pool: _ThreadPool | None = None
        self.closed = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._tracks: dict[PluginRecord, _Track] = {}

    # -- background dispatches and the worker pool ------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run a dispatch in the background (the tick and the ingest path never wait for
        plugins); the task is kept until done and awaited by :meth:`drain`."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def drain(self, timeout: float) -> None:
        """Let background dispatches finish (up to ``timeout``); cancel the rest."""
        pending = {t for t in self._tasks if not t.done()}
        if pending:
            _, still = await asyncio.wait(pending, timeout=timeout)
            for task in still:
                task.cancel()

    def close(self) -> None:
        """No more calls; idle worker threads exit, busy ones when their call returns."""
        self.closed = True
        if self.pool is not None:
            self.pool.close()

    def size_pool(self, workers: int) -> None:
        """At most ``workers`` threads: one per (plugin, event hook) ever registered, as each
        holds one call in flight at most (a switched-off plugin's hung threads still hold
        theirs). Threads start on demand, so this is a bound, not a cost; it never shrinks
        a running pool."""
        self._workers = workers
        if self.pool is not None:
            self.pool.max_workers = max(self.pool.max_workers, workers)

    def _get_pool(self) -> _ThreadPool:
        if self.pool is None:
            self.pool = _ThreadPool(self._workers)
        return self.pool

    def _track(self, rec: PluginRecord) -> _Track:
        track = self._tracks.get(rec)
        if track is None:
            track = self._tracks[rec] = _Track()
        return track

    # -- calling ------------------------------------------------------------------------

    def direct(self, impl: _Impl, **kwargs: Any) -> Any:
        """A direct (startup-time, sync) hook call; a raise is a fault (then ``SKIPPED``)."""
        if impl.rec.state != ACTIVE:
            return SKIPPED
        try:
            return impl.fn(**impl.args(kwargs))
        except Exception as exc:
            self.fault(impl.rec, impl.hook, "error", exc)
            return SKIPPED

    async def run(self, hook: str, impls: tuple[_Impl, ...], kwargs: dict[str, Any], budget: float, *,
                  skip: str | None = None, alerts: bool = False) -> list[dict[str, Any]]:
        """Start every implementation at once (async ones as tasks, sync ones in worker
        threads), wait for all of them under one deadline, then judge each on its own.

        Cost matters here (it runs per tick and per batch): one timer per dispatch, and
        the sync calls of a dispatch wake the loop once, when the last one returns.
        """
        if not impls or self.closed:
            return []
        loop = asyncio.get_running_loop()
        now = self.clock()
        t0 = time.perf_counter()
        tasks: list[_Slot] = []
        batch: _SyncBatch | None = None
        for impl in impls:
            rec = impl.rec
            if rec.state != ACTIVE or rec.name == skip:
                continue
            track = self._track(rec)
            started = track.busy.get(hook)
            if started is not None:
                if now - started > budget:
                    self.fault(rec, hook, "hung", TimeoutError(f"the previous call is still running after {now - started:.1f} s"))
                else:
                    self._dropped(rec, track, hook, now)
                continue
            rec.calls += 1
            args = impl.args(kwargs)
            if impl.takes_node and self.wrap_node is not None:
                args = {**args, "node": self.wrap_node(rec, args["node"])}
            # corec_entities calls run marked (emit's feedback rule, plugins/emit.py)
            ctx = entities_context(kwargs["channel"]) if hook == "corec_entities" else None
            if impl.is_async:
                try:
                    coro = impl.fn(**args) if ctx is None else ctx.run(impl.fn, **args)
                except Exception as exc:  # e.g. a TypeError before the coroutine exists
                    self.fault(rec, hook, "error", exc)
                    continue
                track.busy[hook] = now
                slot = _Slot(impl, track.busy, t0)
                slot.task = loop.create_task(coro, context=ctx)
                # not busy once the call has returned, even before this dispatch judges it
                slot.task.add_done_callback(functools.partial(_release, track.busy, hook))
                if self.trace:
                    slot.task.add_done_callback(slot.stamp)
                tasks.append(slot)
            else:
                track.busy[hook] = now
                if batch is None:
                    batch = _SyncBatch(loop)
                batch.slots.append(_Slot(impl, track.busy, t0, args, ctx))
        if batch is not None:
            batch.start(self._get_pool())
        waitables: list[asyncio.Future[Any]] = [s.task for s in tasks if s.task is not None]
        if batch is not None:
            waitables.append(batch.fut)
        if not waitables:
            return []
        try:
            await asyncio.wait(waitables, timeout=budget)
        except asyncio.CancelledError:  # the node is stopping: let go of everything started
            for slot in tasks:
                _abandon(slot)
            if batch is not None:
                batch.expire()
            raise
        results: list[tuple[_Impl, Any]] = []
        later: list[_Slot] = []
        for slot in tasks:
            self._judge_task(slot, budget, results)
        if batch is not None:
            for slot in batch.expire():
                rec = slot.impl.rec
                if not slot.done:  # the thread keeps running and releases its slot when it returns
                    self.fault(rec, hook, "timeout", TimeoutError(
                        f"no answer within {budget:g} s (a sync hook: its thread keeps running)"))
                    self._trace(slot, "timeout")
                elif slot.exc is not None:
                    slot.busy.pop(hook, None)
                    self.fault(rec, hook, "error", slot.exc)
                    self._trace(slot, "error")
                elif inspect.isawaitable(slot.result):  # await me maybe
                    slot.task = (loop.create_task(slot.result, context=slot.ctx) if asyncio.iscoroutine(slot.result)
                                 else asyncio.ensure_future(slot.result, loop=loop))
                    slot.result = None
                    later.append(slot)
                else:
                    slot.busy.pop(hook, None)
                    results.append((slot.impl, slot.result))
                    self._trace(slot, "ok")
        if later:
            left = max(0.0, budget - (time.perf_counter() - t0))
            try:
                await asyncio.wait([s.task for s in later if s.task is not None], timeout=left)
            except asyncio.CancelledError:
                for slot in later:
                    _abandon(slot)
                raise
            for slot in later:
                self._judge_task(slot, budget, results)
        if not alerts:
            return []
        raised: list[dict[str, Any]] = []
        for impl, result in results:
            if result is None:
                continue
            try:
                items = [_alert_from(impl.rec.name, item) for item in result]
            except (TypeError, ValueError) as exc:
                self.fault(impl.rec, hook, "error", exc)
                continue
            for alert in items:
                alert.setdefault("hook", hook)
                raised.append(alert)
                self._emit(alert)
        return raised

    def _judge_task(self, slot: _Slot, budget: float, results: list[tuple[_Impl, Any]]) -> None:
        task, rec, hook = slot.task, slot.impl.rec, slot.impl.hook
        assert task is not None
        if not task.done():
            # cancelled, not waited for: a plugin that swallows CancelledError must not hang
            # the caller; its slot is held until the task really ends
            _abandon(slot)
            self.fault(rec, hook, "timeout", TimeoutError(f"no answer within {budget:g} s (an async hook: cancelled)"))
            self._trace(slot, "timeout")
            return
        slot.busy.pop(hook, None)
        if task.cancelled():
            self.fault(rec, hook, "error", asyncio.CancelledError("the hook's task was cancelled"))
            self._trace(slot, "cancelled")
            return
        exc = task.exception()
        if exc is not None:
            self.fault(rec, hook, "error", exc)
            self._trace(slot, "error")
            return
        results.append((slot.impl, task.result()))
        self._trace(slot, "ok")

    def _trace(self, slot: _Slot, outcome: str) -> None:
        if self.trace:
            end = slot.t1 or time.perf_counter()
            log.event("plugin_call", hook=slot.impl.hook, plugin=slot.impl.rec.name,
                      ms=(end - slot.t0) * 1000, outcome=outcome)

    # -- faults and the breaker -------------------------------------------------------------

    def fault(self, rec: PluginRecord, hook: str, kind: str, exc: BaseException) -> None:
        """Count and log a fault of ``rec``; trip the breaker at ``max_faults`` in the window."""
        now = self.clock()
        rec.faults += 1
        kind_name = "TimeoutError" if isinstance(exc, TimeoutError) else type(exc).__name__
        rec.last_error = f"{hook}: {kind_name}: {exc}"
        recent = self._track(rec).recent
        recent.append(now)
        while recent and now - recent[0] > self.fault_window:
            recent.popleft()
        log.event("plugin_fault", logging.WARNING, plugin=rec.name, hook=hook, kind=kind,
                  error=f"{kind_name}: {exc}", where=where(exc).strip(" ()") or None,
                  faults=rec.faults, recent=len(recent))
        if rec.state == ACTIVE and len(recent) >= self.max_faults:
            self._trip(rec, len(recent))

    def _trip(self, rec: PluginRecord, recent: int) -> None:
        reason = (f"circuit breaker: {recent} faults within {self.fault_window:g} s "
                  f"(last: {rec.last_error})")
        self.switch_off(rec, reason, f"plugin {rec.name} switched off after {recent} faults within "
                        f"{self.fault_window:g} s: {rec.last_error}")

    def switch_off(self, rec: PluginRecord, reason: str, text: str, **fields: Any) -> None:
        """Switch ``rec`` off (the manager's ``disable``), log ``plugin_disabled`` and send
        the ``plugin_disabled`` alert: the breaker's way out, and the memory watch's."""
        self._disable(rec.name, reason)
        log.event("plugin_disabled", logging.ERROR, plugin=rec.name, faults=rec.faults, reason=reason, **fields)
        self._emit({"kind": "plugin_disabled", "severity": "critical", "text": text, "plugin": rec.name,
                    "faults": rec.faults, **fields})

    def _dropped(self, rec: PluginRecord, track: _Track, hook: str, now: float) -> None:
        rec.dropped += 1
        if now - track.dropped_logged >= DROP_LOG_PERIOD:
            track.dropped_logged = now
            log.event("plugin_dropped", logging.INFO, plugin=rec.name, hook=hook, dropped=rec.dropped,
                      detail="the previous call is still running (within its budget): this one is skipped")

    def _emit(self, alert: dict[str, Any]) -> None:
        if self.on_alert is None:
            log.event("plugin_alert", logging.WARNING, **{k: v for k, v in alert.items() if k != "event"})
            return
        try:
            result = self.on_alert(alert)
            if inspect.isawaitable(result):
                self.spawn(_as_coro(result))
        except Exception:
            logging.getLogger(log.LOGGER_NAME).exception("on_alert_failed")


class _Track:
    """What the dispatcher keeps about one plugin: its calls in flight (hook -> start
    time), its recent fault times (the breaker's window), when a drop was last logged."""

    __slots__ = ("busy", "dropped_logged", "recent")

    def __init__(self) -> None:
        self.busy: dict[str, float] = {}
        self.recent: collections.deque[float] = collections.deque()
        self.dropped_logged = float("-inf")


class _Slot:
    """One implementation's call within one dispatch; ``busy`` is its plugin's in-flight map."""

    __slots__ = ("args", "busy", "ctx", "done", "exc", "impl", "result", "t0", "t1", "task")

    def __init__(self, impl: _Impl, busy: dict[str, float], t0: float,
                 args: dict[str, Any] | None = None, ctx: contextvars.Context | None = None) -> None:
        self.impl = impl
        self.ctx = ctx  # the context the call runs in (None: the worker's own)
        self.busy = busy
        self.t0 = t0
        self.t1 = 0.0
        self.args = args
        self.task: asyncio.Future[Any] | None = None
        self.done = False
        self.result: Any = None
        self.exc: BaseException | None = None

    def stamp(self, _fut: Any = None) -> None:
        self.t1 = time.perf_counter()


class _SyncBatch:
    """The sync calls of one dispatch, each in a pool thread. The loop is woken once, when
    the last returns; after the deadline (``expire``) a thread that returns releases its
    own in-flight slot instead."""

    __slots__ = ("expired", "fut", "lock", "loop", "remaining", "slots")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.fut: asyncio.Future[None] = loop.create_future()
        self.lock = threading.Lock()
        self.slots: list[_Slot] = []
        self.remaining = 0
        self.expired = False

    def start(self, pool: _ThreadPool) -> None:
        self.remaining = len(self.slots)
        for slot in self.slots:
            pool.submit(self._run, slot)

    def _run(self, slot: _Slot) -> None:  # in a worker thread
        try:
            args = slot.args or {}
            slot.result = slot.impl.fn(**args) if slot.ctx is None else slot.ctx.run(slot.impl.fn, **args)
        except BaseException as exc:  # judged on the loop
            slot.exc = exc
        slot.t1 = time.perf_counter()
        with self.lock:
            slot.done = True
            self.remaining -= 1
            late, last = self.expired, self.remaining == 0
        try:
            if late:
                self.loop.call_soon_threadsafe(slot.busy.pop, slot.impl.hook, None)
            elif last:
                self.loop.call_soon_threadsafe(_settle, self.fut, None, None)
        except RuntimeError:  # the loop closed while this call ran: nobody waits for it
            pass

    def expire(self) -> list[_Slot]:
        """Stop waiting; returns the slots (``done`` says which finished in time)."""
        with self.lock:
            self.expired = True
        return self.slots


def _release(busy: dict[str, float], hook: str, _task: asyncio.Future[Any]) -> None:
    busy.pop(hook, None)


def _abandon(slot: _Slot) -> None:
    """Cancel a slot's task; its in-flight mark goes when the task really ends."""
    task = slot.task
    if task is None:
        return
    busy, hook = slot.busy, slot.impl.hook

    def release(t: asyncio.Future[Any]) -> None:
        busy.pop(hook, None)
        if not t.cancelled():
            t.exception()  # retrieved: no "exception was never retrieved" noise

    task.cancel()
    task.add_done_callback(release)


async def _as_coro(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def _alert_from(plugin: str, item: Any) -> dict[str, Any]:
    """A plugin's returned alert, checked and stamped with its name."""
    if not isinstance(item, Mapping):
        raise TypeError(f"an alert must be a dict with 'kind' and 'text', got {type(item).__name__}")
    alert = dict(item)
    text = alert.pop("message", None) if "text" not in alert else alert["text"]
    alert["text"] = text
    if not isinstance(alert.get("kind"), str) or not alert["kind"] or not isinstance(text, str):
        raise ValueError(f"an alert needs a 'kind' and a 'text' string, got keys {sorted(alert)}")
    alert.setdefault("severity", "warning")
    if alert["severity"] not in SEVERITIES:
        raise ValueError(f"alert severity must be one of {', '.join(SEVERITIES)}, got {alert['severity']!r}")
    alert["plugin"] = plugin
    return alert


def where(exc: BaseException) -> str:
    """`` (file:line)`` of where ``exc`` was raised, for log lines and load errors."""
    tb = traceback.extract_tb(exc.__traceback__) if exc.__traceback__ is not None else None
    if not tb:
        return ""
    frame = tb[-1]
    return f" ({frame.filename}:{frame.lineno})"
