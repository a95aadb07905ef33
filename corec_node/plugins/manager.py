"""Finding, checking and registering plugins, and the typed facade the node calls.

Plugins come from the ``corec_node`` entry points, the folders of config
``plugins.paths`` and built-ins; ``COREC_DISABLED_PLUGINS`` and ``plugins.disabled``
keep them from being imported. How a hook call runs is :mod:`corec_node.plugins.dispatch`:
the manager builds one :class:`~corec_node.plugins.dispatch.Dispatcher` and hands it each call.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import importlib.metadata
import importlib.util
import inspect
import logging
import os
import re
import sys
import time
import types
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pluggy

from corec_node import hookspecs, log
from corec_node.config import Config, ConfigError, plugin_memory_limits
from corec_node.hookspecs import HOOK_NAMES, PROJECT
from corec_node.plugins.dispatch import (
    DEFAULT_BUDGET,
    DEFAULT_FAULT_WINDOW,
    DEFAULT_MAX_FAULTS,
    DEFAULT_STARTUP_BUDGET,
    EVENT_HOOKS,
    SKIPPED,
    TRACE_ENV,
    Dispatcher,
    _ThreadPool,
    where,
)
from corec_node.plugins.facade import Leadership, NodeFacade, unwrap
from corec_node.plugins.memwatch import MemoryWatcher
from corec_node.plugins.records import ACTIVE, DISABLED, PluginRecord, _Impl
from corec_node.plugins.settings import (
    PluginConfigError,
    PluginError,
    PluginLoadError,
    UnknownPluginTable,
    validate_settings,
)

ENTRYPOINT_GROUP = PROJECT  # "corec_node"
DISABLED_ENV = "COREC_DISABLED_PLUGINS"
PLUGIN_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]{0,63}$")


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


# -- the manager ----------------------------------------------------------------------------


class PluginManager:
    """Plugins of one node: loading, settings, the typed hook facade; the calls themselves
    are its :class:`~corec_node.plugins.dispatch.Dispatcher`'s, built here.

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
        self.budget = budget
        self.startup_budget = startup_budget
        env = os.environ if env is None else env
        self.env_disabled = frozenset(n.strip() for n in env.get(DISABLED_ENV, "").split(",") if n.strip())
        trace = env.get(TRACE_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")
        self._dispatcher = Dispatcher(disable=self.disable, on_alert=on_alert, max_faults=max_faults,
                                      fault_window=fault_window, clock=clock, trace=trace,
                                      wrap_node=self._facade_of)
        self._leadership = Leadership()
        self._facades: dict[str, NodeFacade] = {}
        self.pm = _PluggyManager(PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.records: dict[str, PluginRecord] = {}
        self._impls: dict[str, tuple[_Impl, ...]] = {h: () for h in HOOK_NAMES}
        self._by_channel: list[tuple[_Impl, ...]] = [()] * 256
        self._channels: frozenset[int] = frozenset()
        self._loaded = False
        self.memory: MemoryWatcher | None = None  # plugins.memory_watch, from startup() to shutdown()

    # the dispatcher's settings and pool, readable here as before the split
    @property
    def on_alert(self) -> Callable[[dict[str, Any]], Any] | None:
        return self._dispatcher.on_alert

    @property
    def max_faults(self) -> int:
        return self._dispatcher.max_faults

    @property
    def fault_window(self) -> float:
        return self._dispatcher.fault_window

    @property
    def clock(self) -> Callable[[], float]:
        return self._dispatcher.clock

    @property
    def trace(self) -> bool:
        return self._dispatcher.trace

    @property
    def _pool(self) -> _ThreadPool | None:
        return self._dispatcher.pool

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
        self._check_tables()
        self._configure(added)
        self._rebuild()
        self.refresh_channels()
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

    def _check_tables(self) -> None:
        """Every ``[plugin.NAME]`` table names a plugin found (active or not), or one named in
        ``plugins.disabled`` / ``COREC_DISABLED_PLUGINS`` (settings kept for a plugin not
        installed here): a misspelled table is an error, not settings silently unused."""
        known = set(self.records) | set(self.config.plugins.disabled) | self.env_disabled
        for table in self.config.plugin:
            if table not in known:
                raise UnknownPluginTable(table, sorted(self.records), source=self.config.source)
        for name in plugin_memory_limits(self.config.plugins.memory_limits):
            if name not in known:
                raise ConfigError(self.config.source, "plugins.memory_limits",
                                  f"names of plugins found ({', '.join(sorted(self.records)) or 'none'})", name)

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
                if impl.plugin is obj and caller.name not in HOOK_NAMES:  # optionalhook=True passed pluggy's check
                    self._forget(rec)
                    raise PluginLoadError(rec.name, f"unknown hook {caller.name!r} (misspelled?); "
                                                    f"known hooks: {', '.join(HOOK_NAMES)}")
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
        order = {impl.plugin_name: i for i, impl in enumerate(_call_order(self.pm.hook.corec_configure.get_hookimpls()))}
        for rec in sorted(recs, key=lambda r: order.get(r.name, 0)):
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
                raise PluginLoadError(rec.name, f"corec_configure failed: {type(exc).__name__}: {exc}{where(exc)}",
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
            for impl in _call_order(getattr(self.pm.hook, hook).get_hookimpls()):
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
        # one worker per (plugin, event hook) ever registered: switched-off ones included
        self._dispatcher.size_pool(max(2, sum(1 for r in self.records.values() for h in r.hooks if h in EVENT_HOOKS)))

    # -- the facade: startup and shutdown ---------------------------------------------------

    async def startup(self, node: Any) -> None:
        """corec_startup on every plugin (awaited, ``startup_budget`` each, concurrently),
        then corec_channels. Call once, on the loop, before the first tick. With
        ``plugins.memory_watch`` the memory watch starts first (:mod:`.memwatch`)."""
        if self.config.plugins.memory_watch and self.memory is None:
            self.memory = MemoryWatcher(self.config.plugins, self.records, self._dispatcher.switch_off)
            self.memory.start()
        await self._dispatcher.run("corec_startup", self._impls["corec_startup"], {"node": node},
                                   self.startup_budget)
        self.refresh_channels()

    async def shutdown(self, node: Any) -> None:
        """Let dispatches in flight finish (up to ``budget``), then corec_shutdown on every
        active plugin (``startup_budget`` each); the worker threads are let go."""
        await self._dispatcher.drain(self.budget)
        await self._dispatcher.run("corec_shutdown", self._impls["corec_shutdown"], {"node": node},
                                   self.startup_budget)
        self._dispatcher.close()
        if self.memory is not None:
            await self.memory.stop()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run a dispatch in the background (the tick and the ingest path never wait for
        plugins); the task is kept until done and awaited by :meth:`shutdown`."""
        return self._dispatcher.spawn(coro)

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
                self._dispatcher.fault(rec, "corec_channels", "error", exc)
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
        return await self._dispatcher.run("corec_entities", impls,
                                          {"node": node, "channel": channel, "records": records},
                                          self.budget, alerts=True)

    async def block_aggregates(self, node: Any, tick: int, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """corec_block_aggregates with this node's rows of ``tick``; returns the alerts the
        plugins raised (already passed to ``on_alert``)."""
        return await self._dispatcher.run("corec_block_aggregates", self._impls["corec_block_aggregates"],
                                          {"node": node, "tick": tick, "aggregates": rows},
                                          self.budget, alerts=True)

    async def alert(self, node: Any, alert: dict[str, Any]) -> None:
        """corec_alert on every plugin but the one that raised ``alert`` here (a peer's alert,
        ``remote``, reaches every plugin: its raiser ran on another node)."""
        await self._dispatcher.run("corec_alert", self._impls["corec_alert"], {"node": node, "alert": alert},
                                   self.budget, skip=None if alert.get("remote") else alert.get("plugin"))

    async def member_event(self, node: Any, event: dict[str, Any]) -> None:
        """corec_member_event (see the hook for the keys of ``event``)."""
        await self._dispatcher.run("corec_member_event", self._impls["corec_member_event"],
                                   {"node": node, "event": event}, self.budget)

    async def leader_changed(self, node: Any, leader: str | None, term: int) -> None:
        """corec_leader_changed; from now on every facade's ``leader`` and ``term``."""
        self._leadership.leader, self._leadership.term = leader, term
        await self._dispatcher.run("corec_leader_changed", self._impls["corec_leader_changed"],
                                   {"node": node, "leader": leader, "term": term}, self.budget)

    # -- the facade: extensions -----------------------------------------------------------

    def kernels(self) -> dict[str, Any]:
        """``{name: kernel}`` from every plugin's corec_kernels. A name given by two
        plugins, or by a plugin and a built-in kernel, is a PluginLoadError naming both."""
        from corec_node.engine.kernels import BUILTINS

        out: dict[str, Any] = {}
        owner: dict[str, str] = {}
        for impl in self._impls["corec_kernels"]:
            got = self._dispatcher.direct(impl)
            if got is SKIPPED or got is None:
                continue
            if not isinstance(got, Mapping):
                self._dispatcher.fault(impl.rec, impl.hook, "error", TypeError(f"corec_kernels must return a mapping, got {type(got).__name__}"))
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
            got = self._dispatcher.direct(impl)
            if got is SKIPPED or got is None:
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

    def facade(self, name: str, node: Any) -> NodeFacade:
        """The :class:`NodeFacade` plugin ``name`` gets as ``node`` from the hooks (tests
        of a plugin call its hooks directly with it)."""
        return self._facade_of(self.records[name], node)

    def _facade_of(self, rec: PluginRecord, node: Any) -> NodeFacade:
        node = unwrap(node)
        facade = self._facades.get(rec.name)
        if facade is None or facade._node is not node:  # one node per manager; tests may pass several
            facade = self._facades[rec.name] = NodeFacade(node, rec.name, settings=rec.settings,
                                                          leadership=self._leadership,
                                                          subscribed=lambda: rec.channels)
        return facade

    def info(self) -> list[dict[str, Any]]:
        """One dict per plugin found, active or not: name, version, source ("entrypoint",
        "path", "builtin"), origin, hooks, state ("active" | "disabled"), reason, faults,
        dropped, calls, last_error, channels, emitted, emit_accepted, emit_refused, memory_bytes, memory_peak_bytes,
        memory_growth_bytes, memory_limit_bytes (None without plugins.memory_watch). Sorted by
        name; keys are a public interface."""
        return [self.records[n].info() for n in sorted(self.records)]

    def fault_counts(self) -> dict[str, int]:
        """``{plugin: faults}`` for metrics."""
        return {n: r.faults for n, r in self.records.items()}

    def memory_counts(self) -> dict[str, int]:
        """``{plugin: traced bytes}`` for metrics: plugins the memory watch has measured
        (empty while it is off)."""
        return {n: r.memory_bytes for n, r in self.records.items() if r.memory_bytes is not None}

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


def _call_order(impls: Sequence[Any]) -> list[Any]:
    """pluggy's hookimpls in the order CoreC starts them: ``tryfirst`` ones first, then the
    rest in load order, ``trylast`` ones last (pluggy keeps trylast first and tryfirst last,
    calling from the end; we call every one, so load order replaces its LIFO)."""
    return sorted(impls, key=lambda i: 0 if i.tryfirst else 2 if i.trylast else 1)


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
        raise PluginLoadError(name, f"cannot import {path}: {type(exc).__name__}: {exc}{where(exc)}", source=str(path)) from exc
    return module


def cli_plugins(config: Config | None = None) -> PluginManager:
    """Plugins for ``corec-node``'s command line (entry points and config paths, no hooks
    called but corec_configure): ``cli_plugins().add_cli(subparsers)``."""
    return PluginManager(config).load()
