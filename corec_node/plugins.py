"""The plugin manager: finds plugins, checks them, and calls their hooks in isolation.

Core code calls plugins only through this facade (never ``pm.hook.x``)::

    plugins = PluginManager(config, on_alert=record_and_publish_alert).load()
    await plugins.startup(node)              # corec_startup, then corec_channels
    plugins.kernels()                        # {name: kernel} for the KernelRegistry
    plugins.migrations()                     # {plugin: [sql, ...]} for its own store
    if plugins.wants(channel):               # cheap: False when nobody subscribed
        plugins.spawn(plugins.entities(node, channel, records))
    plugins.spawn(plugins.block_aggregates(node, tick, rows))
    ...
    await plugins.shutdown(node)

Rules of the hook path (what a caller and a plugin may rely on):

1. Isolation: every implementation of a hook is called on its own (not one pluggy call
   that stops at the first raise), all of a dispatch's calls concurrently, so a slow or
   failing plugin delays and hides nobody else's.
2. Sync implementations run in a worker thread of this manager's own pool of daemon
   threads (a hung plugin thread never blocks process exit, and never takes a thread the
   node needs for anything else). Async implementations (coroutine functions, or
   functions returning an awaitable: "await me maybe") run as tasks on the loop.
3. Each call has a budget (``budget`` seconds; ``startup_budget`` for startup and
   shutdown). A raise, a timeout, or a bad return value is a *fault*, logged with the
   plugin's name (``plugin_fault``). A timed-out task is cancelled; a timed-out thread
   cannot be killed, so it keeps its slot until it returns.
4. One call in flight per plugin and hook: that bounds the threads a hung plugin can
   hold to one per hook. A call that finds the previous one still running is skipped:
   counted as *dropped* while the previous call is within its budget (a plugin slower
   than the stream loses batches, it is not broken), and as a fault once the previous
   call is past its budget (it hangs).
5. Circuit breaker: ``max_faults`` faults within ``fault_window`` seconds switch the
   plugin off (unregistered from every hook, state "disabled") until the node restarts;
   ``on_alert`` gets a ``plugin_disabled`` alert. Nothing a plugin does raises out of a
   dispatch method; only load problems raise, as :class:`PluginConfigError` or
   :class:`PluginLoadError` (both :class:`~corec_node.config.ConfigError`: exit code 2).
6. ``COREC_DISABLED_PLUGINS=a,b`` (and config ``plugins.disabled``) keeps plugins from
   being imported at all; ``COREC_TRACE_PLUGINS=1`` logs every hook call (``plugin_call``
   with hook, plugin, duration and outcome).

The dispatch methods must be called on the node's event loop.

The node API hooks may rely on (the ``node`` argument):

- ``node.name`` (str), ``node.config`` (:class:`~corec_node.config.Config`),
  ``node.data_dir`` (Path), ``node.loop`` (its event loop), ``node.leader``, ``node.term``;
- ``node.raise_alert(kind, text, *, severity="warning", **fields)``: record, log and
  publish an alert (also handed to the other plugins' corec_alert). Safe from any thread.
  A hook may instead *return* alert dicts (corec_entities, corec_block_aggregates);
- ``await node.plugin_store(name)``: the plugin's own store, opened once and migrated
  with its corec_storage_migrations (``corec_node.storage.PluginStore``: ``.sqlite`` is an
  aiosqlite connection to ``<data_dir>/plugins/<name>.db``; ``.postgres`` its schema when
  PostgreSQL is configured). The node closes it at shutdown.
"""

from __future__ import annotations

import asyncio
import collections
import collections.abc
import dataclasses
import functools
import importlib
import importlib.metadata
import importlib.util
import inspect
import logging
import os
import queue
import re
import sys
import threading
import time
import traceback
import types
import typing
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pluggy

from corec_node import hookspecs, log
from corec_node.config import Config, ConfigError
from corec_node.hookspecs import HOOK_NAMES, PROJECT

ENTRYPOINT_GROUP = PROJECT  # "corec_node"
DISABLED_ENV = "COREC_DISABLED_PLUGINS"
TRACE_ENV = "COREC_TRACE_PLUGINS"

DEFAULT_BUDGET = 2.0  # seconds per hook call: two default engine ticks; a plugin needing more should be async
DEFAULT_STARTUP_BUDGET = 30.0  # startup/shutdown may open stores or import a model library
DEFAULT_MAX_FAULTS = 3  # faults within the window that switch a plugin off ...
DEFAULT_FAULT_WINDOW = 60.0  # ... so one fault a minute (a flaky dependency) is tolerated
DROP_LOG_PERIOD = 10.0  # seconds between two "plugin_dropped" lines per plugin

ACTIVE, DISABLED = "active", "disabled"
SOURCES = ("builtin", "entrypoint", "path")
SEVERITIES = ("info", "warning", "critical")
PLUGIN_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]{0,63}$")

# Hooks called through the async dispatch path (worker threads / tasks, budgets, breaker).
EVENT_HOOKS = (
    "corec_startup", "corec_shutdown", "corec_entities", "corec_block_aggregates",
    "corec_alert", "corec_member_event", "corec_leader_changed",
)
# Hooks called directly on the caller's thread: cheap, at startup, return data.
DIRECT_HOOKS = ("corec_configure", "corec_channels", "corec_kernels", "corec_storage_migrations",
                "corec_cli_commands")


# -- errors ---------------------------------------------------------------------------------


class PluginError(ConfigError):
    """A plugin cannot be loaded as configured. A ConfigError, so the CLI exits 2 with one
    line: a broken plugin is found at start, never at the first call."""

    def __init__(self, plugin: str, message: str, *, key: str = "", source: str = "") -> None:
        Exception.__init__(self, message)
        self.plugin = plugin
        self.source = source
        self.key = key or f"plugin.{plugin}"
        self.expected = message


class PluginConfigError(PluginError):
    """A plugin setting is wrong: unknown key, wrong type, or refused by the plugin.

    ``plugin`` and ``setting`` name what is wrong; the message reads like the node's own
    config errors: ``node.toml: plugin.alerts.thresholds: expected a table, got 3``.
    """

    def __init__(self, plugin: str, setting: str, expected: str, got: object = None, *,
                 source: str = "<defaults>") -> None:
        key = f"plugin.{plugin}.{setting}" if setting else f"plugin.{plugin}"
        detail = f"{source}: {key}: expected {expected}"
        if got is not None:
            detail += f", got {got!r}"
        super().__init__(plugin, detail, key=key, source=source)
        self.setting = setting
        self.expected = expected
        self.got = got


class PluginLoadError(PluginError):
    """A plugin could not be imported or registered (import error, unknown or misspelled
    hook, bad hook signature, name clash)."""

    def __init__(self, plugin: str, detail: str, *, source: str = "") -> None:
        super().__init__(plugin, f"plugin {plugin!r}{f' ({source})' if source else ''}: {detail}", source=source)
        self.detail = detail


# -- settings -------------------------------------------------------------------------------


class _Mismatch(Exception):
    pass


def _describe(hint: Any) -> str:
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
             list: "a list", tuple: "a list", dict: "a table"}
    if hint is type(None) or hint is None:
        return "nothing"
    if isinstance(hint, tuple):
        return " or ".join(_describe(h) for h in hint)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(hint))
    if origin is not None:
        args = typing.get_args(hint)
        base = _describe(origin)
        if origin in (list, tuple, collections.abc.Sequence) and args:
            return f"{base} of {_plural(args[0])}"
        if origin in (dict, collections.abc.Mapping) and len(args) == 2:
            return f"a table of {_plural(args[1])}"
        return base
    if hint in (collections.abc.Mapping,):
        return "a table"
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def _plural(hint: Any) -> str:
    plurals = {bool: "true/false values", int: "integers", float: "numbers", str: "strings",
               list: "lists", dict: "tables"}
    return plurals.get(hint) or f"values that are each {_describe(hint)}"


def check_value(value: Any, hint: Any) -> Any:
    """``value`` checked against a type (``int``, ``float``, ``str``, ``bool``, ``list``,
    ``dict``, a tuple of those, ``list[int]``, ``dict[str, float]``, ``X | None``, ``Any``);
    returns it converted (int -> float, list -> tuple) or raises ValueError saying what was
    expected."""
    try:
        return _check(value, hint)
    except _Mismatch:
        raise ValueError(_describe(hint)) from None


def _check(value: Any, hint: Any) -> Any:
    if hint is Any or hint is object:
        return value
    if isinstance(hint, tuple):
        for h in hint:
            try:
                return _check(value, h)
            except _Mismatch:
                continue
        raise _Mismatch
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return _check(value, tuple(args))
    if hint is type(None) or hint is None:
        if value is None:
            return None
        raise _Mismatch
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _Mismatch
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise _Mismatch
    if hint is str:
        if isinstance(value, str):
            return value
        raise _Mismatch
    base = origin or hint
    if base in (list, tuple, collections.abc.Sequence):
        if not isinstance(value, (list, tuple)):
            raise _Mismatch
        if base is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(args) != len(value):
                raise _Mismatch
            return tuple(_check(v, a) for v, a in zip(value, args))
        elem = args[0] if args else Any
        items = [_check(v, elem) for v in value]
        return tuple(items) if base is tuple else items
    if base in (dict, collections.abc.Mapping):
        if not isinstance(value, Mapping):
            raise _Mismatch
        if len(args) == 2:
            return {_check(k, args[0]): _check(v, args[1]) for k, v in value.items()}
        return dict(value)
    if isinstance(hint, type):
        if isinstance(value, hint):
            return value
        raise _Mismatch
    return value  # an annotation we do not understand (a string, a TypeVar): not checked


def validate_settings(plugin: str, spec: Any, table: Mapping[str, Any] | None, *, source: str = "<defaults>") -> Any:
    """Check ``[plugin.NAME]`` against the plugin's ``SETTINGS``; return the settings with
    defaults filled in (a dict), or an instance when ``SETTINGS`` is a dataclass. Without
    ``SETTINGS`` the table is returned as is (the plugin checks it in corec_configure)."""
    table = dict(table or {})
    if spec is None:
        return table
    if isinstance(spec, type) and dataclasses.is_dataclass(spec):
        hints = typing.get_type_hints(spec)
        fields = {f.name: f for f in dataclasses.fields(spec) if f.init}
        values: dict[str, Any] = {}
        for key, value in table.items():
            if key not in fields:
                raise PluginConfigError(plugin, key, f"one of {', '.join(fields) or '(no settings)'}", "unknown key", source=source)
            try:
                values[key] = check_value(value, hints.get(key, Any))
            except ValueError as exc:
                raise PluginConfigError(plugin, key, str(exc), value, source=source) from None
        for key, f in fields.items():
            if key not in values and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise PluginConfigError(plugin, key, "a value (this setting has no default)", source=source)
        try:
            return spec(**values)
        except (TypeError, ValueError) as exc:  # the dataclass's own __post_init__ checks
            raise PluginConfigError(plugin, "", f"valid settings ({exc})", source=source) from None
    if isinstance(spec, Mapping):
        out: dict[str, Any] = {}
        for key, entry in spec.items():
            if not (isinstance(entry, tuple) and len(entry) == 2):
                raise PluginLoadError(plugin, f"SETTINGS[{key!r}] must be (type, default), got {entry!r}")
            out[key] = entry[1]
        for key, value in table.items():
            if key not in spec:
                raise PluginConfigError(plugin, key, f"one of {', '.join(spec) or '(no settings)'}", "unknown key", source=source)
            try:
                out[key] = check_value(value, spec[key][0])
            except ValueError as exc:
                raise PluginConfigError(plugin, key, str(exc), value, source=source) from None
        return out
    raise PluginLoadError(plugin, f"SETTINGS must be a dict of key -> (type, default) or a dataclass, got {type(spec).__name__}")


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


# -- records --------------------------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class PluginRecord:
    """What the manager knows about one plugin (``info()`` is made from it)."""

    name: str
    source: str  # "builtin" | "entrypoint" | "path"
    obj: Any = None
    version: str | None = None
    origin: str = ""  # entry point value, or the file or folder it came from
    state: str = ACTIVE
    reason: str = ""  # why it is disabled
    hooks: tuple[str, ...] = ()
    settings: Any = None
    channels: frozenset[int] = frozenset()
    faults: int = 0
    dropped: int = 0
    calls: int = 0
    last_error: str = ""
    recent: collections.deque[float] = dataclasses.field(default_factory=collections.deque)
    in_flight: dict[str, float] = dataclasses.field(default_factory=dict)
    dropped_logged: float = float("-inf")

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "source": self.source,
            "origin": self.origin,
            "hooks": list(self.hooks),
            "state": self.state,
            "reason": self.reason,
            "faults": self.faults,
            "dropped": self.dropped,
            "calls": self.calls,
            "last_error": self.last_error,
            "channels": sorted(self.channels),
        }


class _Impl:
    """One plugin's implementation of one hook, and the parameters it takes (a subset of
    the spec's: pluggy's rule, which we keep while calling each implementation ourselves)."""

    __slots__ = ("argnames", "fn", "hook", "is_async", "rec")

    def __init__(self, rec: PluginRecord, fn: Callable[..., Any], hook: str, argnames: Sequence[str]) -> None:
        self.rec = rec
        self.fn = fn
        self.hook = hook
        self.argnames = tuple(argnames)
        self.is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__)

    def args(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        return kwargs if len(kwargs) == len(self.argnames) else {k: kwargs[k] for k in self.argnames}


class _PluggyManager(pluggy.PluginManager):
    """pluggy's manager, which also takes unmarked ``corec_*`` functions as hook
    implementations (as pytest does with ``pytest_*``): a misspelled hook name then fails
    at load even when the author forgot ``@hookimpl``."""

    def parse_hookimpl_opts(self, plugin: Any, name: str) -> Any:
        opts = super().parse_hookimpl_opts(plugin, name)
        if opts is None and name.startswith("corec_"):
            attr = inspect.getattr_static(plugin, name, None)
            if isinstance(attr, (staticmethod, classmethod)):
                attr = attr.__func__
            if inspect.isfunction(attr) or inspect.ismethod(attr):
                opts = {"wrapper": False, "hookwrapper": False, "optionalhook": False,
                        "tryfirst": False, "trylast": False, "specname": None}
        return opts


_SKIPPED = object()


# -- the manager ----------------------------------------------------------------------------


class PluginManager:
    """Plugins of one node: loading, settings, the typed hook facade, the breaker.

    ``on_alert(alert)`` is called on the loop for every alert a plugin returns and for the
    breaker's ``plugin_disabled`` alerts; it may return an awaitable (it is then run as a
    task). ``clock`` (monotonic seconds) is for tests of the fault window.
    """

    def __init__(
        self,
        config: Config | None = None,
        *,
        on_alert: Callable[[dict[str, Any]], Any] | None = None,
        budget: float = DEFAULT_BUDGET,
        startup_budget: float = DEFAULT_STARTUP_BUDGET,
        max_faults: int = DEFAULT_MAX_FAULTS,
        fault_window: float = DEFAULT_FAULT_WINDOW,
        env: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config if config is not None else Config()
        self.on_alert = on_alert
        self.budget = budget
        self.startup_budget = startup_budget
        self.max_faults = max_faults
        self.fault_window = fault_window
        self.clock = clock
        env = os.environ if env is None else env
        self.env_disabled = frozenset(n.strip() for n in env.get(DISABLED_ENV, "").split(",") if n.strip())
        self.trace = env.get(TRACE_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")
        self.pm = _PluggyManager(PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.records: dict[str, PluginRecord] = {}
        self._impls: dict[str, tuple[_Impl, ...]] = {h: () for h in HOOK_NAMES}
        self._by_channel: list[tuple[_Impl, ...]] = [()] * 256
        self._channels: frozenset[int] = frozenset()
        self._pool: _ThreadPool | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loaded = False
        self._closed = False

    # -- loading ------------------------------------------------------------------------

    @classmethod
    def from_config(cls, config: Config | None = None, **kw: Any) -> PluginManager:
        """``PluginManager(config, **kw).load()``."""
        return cls(config, **kw).load()

    def load(self, *, entrypoints: bool = True, paths: Sequence[str | os.PathLike[str]] | None = None,
             builtins: Iterable[tuple[str, Any]] = ()) -> PluginManager:
        """Find, import, validate, register and configure every plugin (once).

        Sources in order: ``builtins`` ((name, object) pairs), the ``corec_node`` entry
        points (unless ``entrypoints`` is False), the folders of config ``plugins.paths``
        (or ``paths``). Raises PluginConfigError / PluginLoadError naming the plugin.
        """
        if self._loaded:
            raise RuntimeError("PluginManager.load() was already called")
        self._loaded = True
        importlib.invalidate_caches()  # a distribution installed since start (tests, pip in a shell)
        added: list[PluginRecord] = []
        for name, obj in builtins:
            rec = self._new_record(name, "builtin", origin=getattr(obj, "__name__", type(obj).__name__))
            if rec.state == ACTIVE:
                self._register(rec, obj)
                added.append(rec)
        if entrypoints:
            added += self._load_entrypoints()
        for path in (self.config.plugins.paths if paths is None else paths):
            added += self._load_path(path)
        self._configure(added)
        self._rebuild()
        self.refresh_channels()
        for table in self.config.plugin:
            if table not in self.records:
                log.event("plugin_settings_unused", logging.WARNING, plugin=table,
                          detail=f"[plugin.{table}] in {self.config.source} but no plugin of that name is installed")
        for rec in self.records.values():
            log.event("plugin_loaded" if rec.state == ACTIVE else "plugin_not_loaded",
                      plugin=rec.name, version=rec.version, source=rec.source, origin=rec.origin,
                      hooks=",".join(h.removeprefix("corec_") for h in rec.hooks), state=rec.state,
                      reason=rec.reason or None)
        return self

    def register(self, plugin: Any, name: str | None = None, *, source: str = "builtin",
                 settings: Mapping[str, Any] | None = None, version: str | None = None) -> PluginRecord:
        """Register one plugin object directly (built-ins, tests) and configure it.

        ``settings`` stands in for its ``[plugin.NAME]`` table. Works before or after
        :meth:`load`; the same checks apply.
        """
        name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
        rec = self._new_record(name, source, origin=getattr(plugin, "__name__", type(plugin).__name__), version=version)
        if rec.state == ACTIVE:
            self._register(rec, plugin, table=settings)
            try:
                self._configure([rec])
            except BaseException:
                self._forget(rec)
                raise
        self._rebuild()
        self.refresh_channels()
        return rec

    def _new_record(self, name: str, source: str, *, origin: str = "", version: str | None = None) -> PluginRecord:
        if not PLUGIN_NAME_RE.match(name):
            raise PluginLoadError(name, "a plugin name is letters, digits, _ and -, starting with a letter or _", source=origin)
        if name in self.records:
            other = self.records[name]
            raise PluginLoadError(name, f"two plugins have this name: {other.origin} ({other.source}) and {origin} ({source})")
        rec = PluginRecord(name=name, source=source, origin=origin, version=version)
        if name in self.config.plugins.disabled:
            rec.state, rec.reason = DISABLED, "disabled by config plugins.disabled"
        elif name in self.env_disabled:
            rec.state, rec.reason = DISABLED, f"disabled by {DISABLED_ENV}"
        if rec.state == DISABLED:
            self.pm.set_blocked(name)
        self.records[name] = rec
        return rec

    def _load_entrypoints(self) -> list[PluginRecord]:
        added = []
        eps = sorted(importlib.metadata.entry_points(group=ENTRYPOINT_GROUP), key=lambda e: e.name)
        for ep in eps:
            dist = getattr(ep, "dist", None)
            version = dist.version if dist is not None else None
            origin = f"{ep.value} ({dist.metadata['Name']} {version})" if dist is not None else ep.value
            rec = self._new_record(ep.name, "entrypoint", origin=origin, version=version)
            if rec.state != ACTIVE:
                continue
            try:
                obj = ep.load()
            except Exception as exc:
                raise PluginLoadError(ep.name, f"cannot import {ep.value}: {type(exc).__name__}: {exc}", source=origin) from exc
            self._register(rec, obj)
            added.append(rec)
        return added

    def _load_path(self, folder: str | os.PathLike[str]) -> list[PluginRecord]:
        root = Path(folder).expanduser()
        if root.is_file() and root.suffix == ".py":
            candidates = [root]
        elif root.is_dir():
            candidates = [c for c in sorted(root.iterdir())
                          if not c.name.startswith(("_", "."))
                          and ((c.is_file() and c.suffix == ".py") or (c.is_dir() and (c / "__init__.py").is_file()))]
        else:
            raise PluginLoadError(root.name or str(root), f"plugins.paths entry {str(root)!r} is not a folder or a .py file")
        added = []
        for path in candidates:
            name = path.stem if path.is_file() else path.name
            rec = self._new_record(name, "path", origin=str(path))
            if rec.state != ACTIVE:
                continue
            module = _import_path(name, path)
            rec.version = getattr(module, "__version__", None)
            self._register(rec, module)
            added.append(rec)
        return added

    def _register(self, rec: PluginRecord, obj: Any, table: Mapping[str, Any] | None = None) -> None:
        rec.obj = obj
        reason = getattr(obj, "DISABLED_REASON", None)
        if isinstance(reason, str) and reason:
            rec.state, rec.reason = DISABLED, reason
            self.pm.set_blocked(rec.name)
            return
        source = self.config.source
        raw = table if table is not None else self.config.plugin.get(rec.name)
        try:
            rec.settings = validate_settings(rec.name, getattr(obj, "SETTINGS", None), raw, source=source)
        except PluginError:
            self._forget(rec)
            raise
        try:
            self.pm.register(obj, name=rec.name)
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            self._forget(rec)
            raise PluginLoadError(rec.name, _validation_message(exc, obj), source=rec.origin) from None
        except ValueError as exc:  # pluggy: the object is already registered under another name
            self._forget(rec)
            raise PluginLoadError(rec.name, str(exc), source=rec.origin) from None
        callers = self.pm.get_hookcallers(obj) or []
        rec.hooks = tuple(h for h in HOOK_NAMES if any(c.name == h for c in callers))
        for caller in callers:
            for impl in caller.get_hookimpls():
                if impl.plugin is obj and (impl.hookwrapper or impl.wrapper):
                    self._forget(rec)
                    raise PluginLoadError(rec.name, f"{caller.name}: hook wrappers are not supported (each plugin is called on its own)")
        if "corec_entities" in rec.hooks and "corec_channels" not in rec.hooks:
            log.event("plugin_no_channels", logging.WARNING, plugin=rec.name,
                      detail="implements corec_entities but not corec_channels: it gets no batches")

    def _forget(self, rec: PluginRecord) -> None:
        if self.pm.get_plugin(rec.name) is not None:
            self.pm.unregister(name=rec.name)
        self.records.pop(rec.name, None)

    def _configure(self, recs: list[PluginRecord]) -> None:
        recs = [r for r in recs if r.state == ACTIVE]
        if not recs:
            return
        tables = dict(self.config.plugin)
        for rec in self.records.values():
            if rec.state == ACTIVE and rec.settings is not None:
                tables[rec.name] = rec.settings
        config = dataclasses.replace(self.config, plugin=tables)
        for rec in recs:
            fn = self._impl_function(rec, "corec_configure")
            if fn is None:
                continue
            try:
                fn(config=config)
            except PluginConfigError:
                raise
            except ConfigError as exc:
                raise PluginConfigError(rec.name, getattr(exc, "key", ""), str(exc), source=self.config.source) from None
            except Exception as exc:
                raise PluginLoadError(rec.name, f"corec_configure failed: {type(exc).__name__}: {exc}{_where(exc)}",
                                      source=rec.origin) from exc

    def _impl_function(self, rec: PluginRecord, hook: str) -> Callable[..., Any] | None:
        for impl in getattr(self.pm.hook, hook).get_hookimpls():
            if impl.plugin_name == rec.name:
                names = impl.argnames
                return lambda **kw: impl.function(**{k: kw[k] for k in names})
        return None

    def _rebuild(self) -> None:
        """Refresh the per-hook implementation lists and the channel routing table."""
        impls: dict[str, list[_Impl]] = {h: [] for h in HOOK_NAMES}
        for hook in HOOK_NAMES:
            for impl in getattr(self.pm.hook, hook).get_hookimpls():
                rec = self.records.get(impl.plugin_name)
                if rec is not None and rec.state == ACTIVE:
                    impls[hook].append(_Impl(rec, impl.function, hook, impl.argnames))
        self._impls = {h: tuple(v) for h, v in impls.items()}
        by_channel: list[list[_Impl]] = [[] for _ in range(256)]
        for impl in self._impls["corec_entities"]:
            for ch in impl.rec.channels:
                by_channel[ch].append(impl)
        self._by_channel = [tuple(v) for v in by_channel]
        self._channels = frozenset(ch for r in self.records.values() if r.state == ACTIVE for ch in r.channels)
        if self._pool is not None:
            self._pool.max_workers = max(self._pool.max_workers, self._max_workers())

    def _max_workers(self) -> int:
        # One slot per (plugin, event hook) ever registered: each holds at most one call in
        # flight, and a switched-off plugin's hung threads still hold theirs. Threads start
        # on demand, so this is a bound, not a cost.
        return max(2, sum(1 for r in self.records.values() for h in r.hooks if h in EVENT_HOOKS))

    # -- the facade: startup and shutdown ---------------------------------------------------

    async def startup(self, node: Any) -> None:
        """corec_startup on every plugin (awaited, ``startup_budget`` each, concurrently),
        then corec_channels. Call once, on the loop, before the first tick."""
        await self._dispatch("corec_startup", {"node": node}, self.startup_budget)
        self.refresh_channels()

    async def shutdown(self, node: Any) -> None:
        """Let dispatches in flight finish (up to ``budget``), then corec_shutdown on every
        active plugin (``startup_budget`` each); the worker threads are let go."""
        pending = {t for t in self._tasks if not t.done()}
        if pending:
            _, still = await asyncio.wait(pending, timeout=self.budget)
            for task in still:
                task.cancel()
        await self._dispatch("corec_shutdown", {"node": node}, self.startup_budget)
        self._closed = True
        if self._pool is not None:
            self._pool.close()

    # -- the facade: data and events ---------------------------------------------------------

    def channels(self) -> set[int]:
        """The union of the channels active plugins subscribed to (after :meth:`startup`)."""
        return set(self._channels)

    def wants(self, channel: int) -> bool:
        """True when some active plugin takes entity batches of ``channel``: call before
        building a coroutine for :meth:`entities` on the ingest path."""
        return bool(self._by_channel[channel])

    def refresh_channels(self) -> set[int]:
        """Ask every plugin again for its channels (corec_channels); returns the union."""
        for impl in self._impls["corec_channels"]:
            rec = impl.rec
            try:
                got = impl.fn()
                chans = frozenset() if got is None else frozenset(got)
                if not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in chans):
                    raise TypeError(f"corec_channels must return channel numbers 0..255, got {sorted(chans, key=repr)[:5]!r}")
            except Exception as exc:
                self._fault(rec, "corec_channels", "error", exc)
                chans = frozenset()
            rec.channels = chans
        self._rebuild()
        return set(self._channels)

    async def entities(self, node: Any, channel: int, records: Any) -> list[dict[str, Any]]:
        """corec_entities on the plugins subscribed to ``channel``; returns the alerts they
        raised (already passed to ``on_alert``)."""
        impls = self._by_channel[channel]
        if not impls:
            return []
        if getattr(records, "flags", None) is not None and records.flags.writeable:
            records = records.view()
            records.flags.writeable = False
        return await self._dispatch("corec_entities", {"node": node, "channel": channel, "records": records},
                                    self.budget, impls=impls, alerts=True)

    async def block_aggregates(self, node: Any, tick: int, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """corec_block_aggregates with this node's rows of ``tick``; returns the alerts the
        plugins raised (already passed to ``on_alert``)."""
        return await self._dispatch("corec_block_aggregates", {"node": node, "tick": tick, "aggregates": rows},
                                    self.budget, alerts=True)

    async def alert(self, node: Any, alert: dict[str, Any]) -> None:
        """corec_alert on every plugin but the one that raised ``alert``."""
        await self._dispatch("corec_alert", {"node": node, "alert": alert}, self.budget, skip=alert.get("plugin"))

    async def member_event(self, node: Any, event: dict[str, Any]) -> None:
        """corec_member_event (see the hook for the keys of ``event``)."""
        await self._dispatch("corec_member_event", {"node": node, "event": event}, self.budget)

    async def leader_changed(self, node: Any, leader: str | None, term: int) -> None:
        """corec_leader_changed."""
        await self._dispatch("corec_leader_changed", {"node": node, "leader": leader, "term": term}, self.budget)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run a dispatch in the background (the tick and the ingest path never wait for
        plugins); the task is kept until done and awaited by :meth:`shutdown`."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- the facade: extensions -----------------------------------------------------------

    def kernels(self) -> dict[str, Any]:
        """``{name: kernel}`` from every plugin's corec_kernels. A name given by two
        plugins, or by a plugin and a built-in kernel, is a PluginLoadError naming both."""
        from corec_node.engine.kernels import BUILTINS

        out: dict[str, Any] = {}
        owner: dict[str, str] = {}
        for impl in self._impls["corec_kernels"]:
            got = self._direct(impl)
            if got is _SKIPPED or got is None:
                continue
            if not isinstance(got, Mapping):
                self._fault(impl.rec, impl.hook, "error", TypeError(f"corec_kernels must return a mapping, got {type(got).__name__}"))
                continue
            for name, fn in got.items():
                if not isinstance(name, str) or not callable(fn):
                    raise PluginLoadError(impl.rec.name, f"corec_kernels: {name!r} is not a name with a callable kernel")
                if name in BUILTINS:
                    raise PluginLoadError(impl.rec.name, f"kernel {name!r} is a built-in kernel's name")
                if name in out:
                    raise PluginLoadError(impl.rec.name, f"kernel {name!r} is also provided by plugin {owner[name]!r}")
                out[name], owner[name] = fn, impl.rec.name
        return out

    def migrations(self) -> dict[str, list[str]]:
        """``{plugin name: [sql, ...]}`` for the plugins that keep their own store."""
        out: dict[str, list[str]] = {}
        for impl in self._impls["corec_storage_migrations"]:
            got = self._direct(impl)
            if got is _SKIPPED or got is None:
                continue
            if isinstance(got, str) or not all(isinstance(s, str) for s in got):
                raise PluginLoadError(impl.rec.name, "corec_storage_migrations must return a list of SQL strings")
            out[impl.rec.name] = list(got)
        return out

    def add_cli(self, subparsers: Any) -> None:
        """Let every plugin add its ``corec-node`` subcommands (corec_cli_commands)."""
        for impl in self._impls["corec_cli_commands"]:
            try:
                impl.fn(**impl.args({"subparsers": subparsers}))
            except Exception as exc:
                raise PluginLoadError(impl.rec.name, f"corec_cli_commands failed: {type(exc).__name__}: {exc}") from exc

    def settings(self, name: str) -> Any:
        """The validated settings of plugin ``name`` (dict or dataclass instance)."""
        return self.records[name].settings

    def info(self) -> list[dict[str, Any]]:
        """One dict per plugin found, active or not: name, version, source ("entrypoint",
        "path", "builtin"), origin, hooks, state ("active" | "disabled"), reason, faults,
        dropped, calls, last_error, channels. Sorted by name; keys are a public interface."""
        return [self.records[n].info() for n in sorted(self.records)]

    def fault_counts(self) -> dict[str, int]:
        """``{plugin: faults}`` for metrics."""
        return {n: r.faults for n, r in self.records.items()}

    def disable(self, name: str, reason: str) -> None:
        """Switch a plugin off now (as the breaker does, without the alert)."""
        rec = self.records[name]
        if rec.state == DISABLED:
            return
        rec.state, rec.reason = DISABLED, reason
        if self.pm.get_plugin(name) is not None:
            self.pm.unregister(name=name)
        self.pm.set_blocked(name)
        self._rebuild()

    # -- calling ------------------------------------------------------------------------

    def _direct(self, impl: _Impl, **kwargs: Any) -> Any:
        """A direct (startup-time, sync) hook call; a raise is a fault."""
        if impl.rec.state != ACTIVE:
            return _SKIPPED
        try:
            return impl.fn(**impl.args(kwargs))
        except Exception as exc:
            self._fault(impl.rec, impl.hook, "error", exc)
            return _SKIPPED

    async def _dispatch(self, hook: str, kwargs: dict[str, Any], budget: float, *,
                        impls: tuple[_Impl, ...] | None = None, skip: str | None = None,
                        alerts: bool = False) -> list[dict[str, Any]]:
        """Start every implementation at once (async ones as tasks, sync ones in worker
        threads), wait for all of them under one deadline, then judge each on its own.

        Cost matters here (it runs per tick and per batch): one timer per dispatch, and
        the sync calls of a dispatch wake the loop once, when the last one returns.
        """
        impls = self._impls[hook] if impls is None else impls
        if not impls or self._closed:
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
            started = rec.in_flight.get(hook)
            if started is not None:
                if now - started > budget:
                    self._fault(rec, hook, "hung", TimeoutError(f"the previous call is still running after {now - started:.1f} s"))
                else:
                    self._dropped(rec, hook, now)
                continue
            rec.calls += 1
            args = impl.args(kwargs)
            if impl.is_async:
                try:
                    coro = impl.fn(**args)
                except Exception as exc:  # e.g. a TypeError before the coroutine exists
                    self._fault(rec, hook, "error", exc)
                    continue
                rec.in_flight[hook] = now
                slot = _Slot(impl, t0)
                slot.task = loop.create_task(coro)
                # not busy once the call has returned, even before this dispatch judges it
                slot.task.add_done_callback(functools.partial(_release, rec, hook))
                if self.trace:
                    slot.task.add_done_callback(slot.stamp)
                tasks.append(slot)
            else:
                rec.in_flight[hook] = now
                if batch is None:
                    batch = _SyncBatch(loop)
                batch.slots.append(_Slot(impl, t0, args))
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
                    self._fault(rec, hook, "timeout", TimeoutError(
                        f"no answer within {budget:g} s (a sync hook: its thread keeps running)"))
                    self._trace(slot, "timeout")
                elif slot.exc is not None:
                    rec.in_flight.pop(hook, None)
                    self._fault(rec, hook, "error", slot.exc)
                    self._trace(slot, "error")
                elif inspect.isawaitable(slot.result):  # await me maybe
                    slot.task = asyncio.ensure_future(slot.result, loop=loop)
                    slot.result = None
                    later.append(slot)
                else:
                    rec.in_flight.pop(hook, None)
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
                self._fault(impl.rec, hook, "error", exc)
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
            self._fault(rec, hook, "timeout", TimeoutError(f"no answer within {budget:g} s (an async hook: cancelled)"))
            self._trace(slot, "timeout")
            return
        rec.in_flight.pop(hook, None)
        if task.cancelled():
            self._fault(rec, hook, "error", asyncio.CancelledError("the hook's task was cancelled"))
            self._trace(slot, "cancelled")
            return
        exc = task.exception()
        if exc is not None:
            self._fault(rec, hook, "error", exc)
            self._trace(slot, "error")
            return
        results.append((slot.impl, task.result()))
        self._trace(slot, "ok")

    def _trace(self, slot: _Slot, outcome: str) -> None:
        if self.trace:
            end = slot.t1 or time.perf_counter()
            log.event("plugin_call", hook=slot.impl.hook, plugin=slot.impl.rec.name,
                      ms=(end - slot.t0) * 1000, outcome=outcome)

    def _get_pool(self) -> _ThreadPool:
        if self._pool is None:
            self._pool = _ThreadPool(self._max_workers())
        return self._pool

    # -- faults and the breaker -------------------------------------------------------------

    def _fault(self, rec: PluginRecord, hook: str, kind: str, exc: BaseException) -> None:
        now = self.clock()
        rec.faults += 1
        kind_name = "TimeoutError" if isinstance(exc, TimeoutError) else type(exc).__name__
        rec.last_error = f"{hook}: {kind_name}: {exc}"
        rec.recent.append(now)
        while rec.recent and now - rec.recent[0] > self.fault_window:
            rec.recent.popleft()
        log.event("plugin_fault", logging.WARNING, plugin=rec.name, hook=hook, kind=kind,
                  error=f"{kind_name}: {exc}", where=_where(exc).strip(" ()") or None,
                  faults=rec.faults, recent=len(rec.recent))
        if rec.state == ACTIVE and len(rec.recent) >= self.max_faults:
            self._trip(rec)

    def _trip(self, rec: PluginRecord) -> None:
        reason = (f"circuit breaker: {len(rec.recent)} faults within {self.fault_window:g} s "
                  f"(last: {rec.last_error})")
        self.disable(rec.name, reason)
        log.event("plugin_disabled", logging.ERROR, plugin=rec.name, faults=rec.faults, reason=reason)
        self._emit({
            "kind": "plugin_disabled",
            "severity": "critical",
            "text": f"plugin {rec.name} switched off after {len(rec.recent)} faults within {self.fault_window:g} s: {rec.last_error}",
            "plugin": rec.name,
            "faults": rec.faults,
        })

    def _dropped(self, rec: PluginRecord, hook: str, now: float) -> None:
        rec.dropped += 1
        if now - rec.dropped_logged >= DROP_LOG_PERIOD:
            rec.dropped_logged = now
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


class _Slot:
    """One implementation's call within one dispatch."""

    __slots__ = ("args", "done", "exc", "impl", "result", "t0", "t1", "task")

    def __init__(self, impl: _Impl, t0: float, args: dict[str, Any] | None = None) -> None:
        self.impl = impl
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
            slot.result = slot.impl.fn(**(slot.args or {}))
        except BaseException as exc:  # judged on the loop
            slot.exc = exc
        slot.t1 = time.perf_counter()
        with self.lock:
            slot.done = True
            self.remaining -= 1
            late, last = self.expired, self.remaining == 0
        try:
            if late:
                self.loop.call_soon_threadsafe(slot.impl.rec.in_flight.pop, slot.impl.hook, None)
            elif last:
                self.loop.call_soon_threadsafe(_settle, self.fut, None, None)
        except RuntimeError:  # the loop closed while this call ran: nobody waits for it
            pass

    def expire(self) -> list[_Slot]:
        """Stop waiting; returns the slots (``done`` says which finished in time)."""
        with self.lock:
            self.expired = True
        return self.slots


def _release(rec: PluginRecord, hook: str, _task: asyncio.Future[Any]) -> None:
    rec.in_flight.pop(hook, None)


def _abandon(slot: _Slot) -> None:
    """Cancel a slot's task; its in-flight mark goes when the task really ends."""
    task = slot.task
    if task is None:
        return
    rec, hook = slot.impl.rec, slot.impl.hook

    def release(t: asyncio.Future[Any]) -> None:
        rec.in_flight.pop(hook, None)
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


def _where(exc: BaseException) -> str:
    tb = traceback.extract_tb(exc.__traceback__) if exc.__traceback__ is not None else None
    if not tb:
        return ""
    frame = tb[-1]
    return f" ({frame.filename}:{frame.lineno})"


def _validation_message(exc: pluggy.PluginValidationError, obj: Any) -> str:
    msg = str(exc)
    m = re.search(r"unknown hook '([^']+)'", msg)
    if m:
        known = ", ".join(HOOK_NAMES)
        return f"unknown hook {m.group(1)!r} (misspelled?); known hooks: {known}"
    return msg.replace(repr(obj), "this plugin")


def _import_path(name: str, path: Path) -> types.ModuleType:
    """Import a plugin module or package from a local folder under a private name."""
    modname = f"_corec_plugin_{name.replace('-', '_')}"
    if path.is_dir():
        spec = importlib.util.spec_from_file_location(modname, path / "__init__.py", submodule_search_locations=[str(path)])
    else:
        spec = importlib.util.spec_from_file_location(modname, path)
    if spec is None or spec.loader is None:
        raise PluginLoadError(name, f"cannot import {path}", source=str(path))
    module = importlib.util.module_from_spec(spec)
    sys.modules[modname] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(modname, None)
        raise PluginLoadError(name, f"cannot import {path}: {type(exc).__name__}: {exc}{_where(exc)}", source=str(path)) from exc
    return module


def cli_plugins(config: Config | None = None) -> PluginManager:
    """Plugins for ``corec-node``'s command line (entry points and config paths, no hooks
    called but corec_configure): ``cli_plugins().add_cli(subparsers)``."""
    return PluginManager(config).load()
