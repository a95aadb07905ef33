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
   ``on_alert`` gets a ``plugin_disabled`` alert. With ``plugins.memory_watch`` a plugin
   holding more traced memory than its limit is switched off the same way (:mod:`.memwatch`).
   Nothing a plugin does raises out of a dispatch method; only load problems raise, as
   :class:`PluginConfigError` or :class:`PluginLoadError` (both
   :class:`~corec_node.config.ConfigError`: exit code 2).
6. ``COREC_DISABLED_PLUGINS=a,b`` (and config ``plugins.disabled``) keeps plugins from
   being imported at all; ``COREC_TRACE_PLUGINS=1`` logs every hook call (``plugin_call``
   with hook, plugin, duration and outcome).
7. Order: no hook is firstresult and every implementation is called; ``tryfirst`` ones
   start first and ``trylast`` ones last, the rest in load order. Event hooks run
   concurrently, so the order is of starts, never of ends; wrappers are refused at load.

The dispatch methods must be called on the node's event loop.

The node API hooks may rely on (the ``node`` argument) is :class:`NodeFacade`
(:mod:`.facade`): each plugin gets its own, wrapping the node the core passes in. In short:
``name``, ``config``, ``data_dir``, ``loop``, ``plugin``, ``settings``, ``leader``,
``term``, ``is_leader``, ``raise_alert(kind, text, *, severity, **fields)`` (stamped with
the plugin's name; safe from any thread), ``log(event, **fields)``, ``emit(channel, ids,
values, active=None)`` (entities into the mesh as a producer's batch, :mod:`.emit`; safe
from any thread) and ``await plugin_store()`` (the plugin's own store, migrated with its
corec_storage_migrations).
A hook may also *return* alert dicts (corec_entities, corec_block_aggregates).

Layout: :mod:`.manager` finds, checks and registers plugins and is the facade
(:class:`PluginManager`); :mod:`.dispatch` is how one hook call runs (threads and tasks,
budgets, faults, the breaker, tracing), in a ``Dispatcher`` the manager builds and hands
each call to (composition, as pluggy keeps its manager apart from its call loop);
:mod:`.settings` checks each ``[plugin.NAME]`` table and holds the load errors;
:mod:`.records` is what both know about a plugin; :mod:`.facade` is what a plugin sees of
the node; :mod:`.emit` checks what a plugin emits (pure); :mod:`.memory` (pure) and
:mod:`.memwatch` (tracemalloc) are the memory watch.
"""

from __future__ import annotations

from corec_node.plugins.dispatch import (
    DEFAULT_BUDGET,
    DEFAULT_FAULT_WINDOW,
    DEFAULT_MAX_FAULTS,
    DEFAULT_STARTUP_BUDGET,
    DIRECT_HOOKS,
    DROP_LOG_PERIOD,
    EVENT_HOOKS,
    SEVERITIES,
    TRACE_ENV,
)
from corec_node.plugins.facade import NodeFacade, NoPluginStore
from corec_node.plugins.manager import (
    DISABLED_ENV,
    ENTRYPOINT_GROUP,
    PLUGIN_NAME_RE,
    PluginManager,
    cli_plugins,
)
from corec_node.plugins.records import ACTIVE, DISABLED, SOURCES, PluginRecord
from corec_node.plugins.settings import (
    PluginConfigError,
    PluginError,
    PluginLoadError,
    UnknownPluginTable,
    check_value,
    validate_settings,
)

__all__ = [
    "ACTIVE",
    "DEFAULT_BUDGET",
    "DEFAULT_FAULT_WINDOW",
    "DEFAULT_MAX_FAULTS",
    "DEFAULT_STARTUP_BUDGET",
    "DIRECT_HOOKS",
    "DISABLED",
    "DISABLED_ENV",
    "DROP_LOG_PERIOD",
    "ENTRYPOINT_GROUP",
    "EVENT_HOOKS",
    "PLUGIN_NAME_RE",
    "SEVERITIES",
    "SOURCES",
    "TRACE_ENV",
    "UnknownPluginTable",
    "NoPluginStore",
    "NodeFacade",
    "PluginConfigError",
    "PluginError",
    "PluginLoadError",
    "PluginManager",
    "PluginRecord",
    "check_value",
    "cli_plugins",
    "validate_settings",
]
