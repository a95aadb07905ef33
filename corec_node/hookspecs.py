"""Hook specifications: what a CoreC plugin ("organ") may implement.

A plugin is any module, class instance or object whose functions are marked with
``hookimpl`` (``from corec_node.hookspecs import hookimpl``) and named like the specs
below. It comes from one of three places, all loaded the same way by
:class:`corec_node.plugins.PluginManager`:

- the entry point group ``corec_node`` of an installed distribution
  (``[project.entry-points.corec_node] NAME = "package.module"`` or ``"package:object"``);
  the entry point's name is the plugin's name;
- a local plugin folder named in config ``plugins.paths``: each ``*.py`` module and each
  package in it is a plugin named after the file or folder;
- built-ins that the node registers itself.

Contract every hook implementation must honour (the manager enforces what it can):

1. **Must not block.** A sync implementation runs in a worker thread; an async one (a
   coroutine function, or a function returning an awaitable: "await me maybe") runs on the
   node's event loop, where blocking stalls gossip, elections and ticks for every node in
   the cluster that waits on this one. Do CPU work with ``asyncio.to_thread`` and I/O with
   async libraries.
2. **A time budget.** Each call is given a budget (``PluginManager(budget=...)``, 2 s by
   default, more for startup and shutdown). A raise, a timeout, or a call skipped because
   the previous one is still hung past its budget is a *fault*. After ``max_faults``
   faults within ``fault_window`` seconds the plugin is switched off until the node
   restarts, and an alert says so. A sync call stuck in a thread cannot be killed: the
   breaker only stops calling it.
3. **Read-only arguments.** Arrays, rows and config handed to a hook are shared with the
   node and with other plugins: copy before modifying.
4. **No firstresult hook.** Every implementation of every hook is called, each on its own,
   so one plugin's fault never hides another's result.
5. Implementations may take any subset of a hook's parameters (pluggy matches by name).
6. **The node is a facade.** Hooks that take ``node`` get a
   :class:`~corec_node.plugins.NodeFacade` of their own: the node's name, config, data
   directory, the leader as last told, ``raise_alert`` and ``log`` (both stamped with the
   plugin's name), ``emit`` and ``await plugin_store()``. That list is the API; anything
   else reached through it is not, and logs a warning.
7. **Plugins may act.** ``node.emit(channel, ids, values, active=None)`` puts entities
   into the mesh as a producer's batch sent to this node: routed to each block's owner,
   replicated, counted, refused (never waited for) when the ingest queue, the stream's
   pauses or the memory limit say so. It returns how many records it handed over; from
   any thread or task, without blocking. A bad argument raises ValueError/TypeError in
   the plugin: a fault of the hook that lets it out. Emitted records reach the
   ``corec_entities`` of every plugin subscribed to their channel on their owner's node,
   the emitter's included; so inside ``corec_entities`` a plugin may not emit onto a
   channel it subscribes to, nor onto the batch's own channel (``EmitLoopError``, a
   fault). Emit derived entities from ``corec_block_aggregates`` (once a tick) instead.

How CoreC calls each hook, and what pluggy's markers mean here. CoreC does not make one
pluggy call per hook (``pm.hook.x()`` stops at the first raise); it asks pluggy for the
implementations and calls each one itself:

=========================  ========================  =====================================
hook                       how it is called          results
=========================  ========================  =====================================
corec_configure            direct, one by one        ignored; a raise stops the load
corec_channels             direct, one by one        union over plugins
corec_kernels              direct, one by one        merged; a name clash is a load error
corec_storage_migrations   direct, one by one        per plugin (its own store)
corec_cli_commands         direct, one by one        ignored
corec_startup/_shutdown    event, all at once        ignored
corec_entities             event, all at once        alert dicts, every plugin's
corec_block_aggregates     event, all at once        alert dicts, every plugin's
corec_alert, _member_event event, all at once        ignored
corec_leader_changed       event, all at once        ignored
=========================  ========================  =====================================

*Direct*: on the caller's thread, in order, at load or startup. *Event*: every
implementation started at once (sync ones in worker threads, async ones as tasks), each
with its budget, and waited for together; a later one never waits for an earlier one.
No hook is ``firstresult`` and none is ``historic``.

- ``@hookimpl(tryfirst=True)``: this implementation is started (direct: called) before
  the others of the hook; ``trylast=True``: after them. Among the rest the order is load
  order (built-ins, then entry points by name, then ``plugins.paths``), not pluggy's
  last-registered-first. For event hooks this orders only the starts: they run
  concurrently, so never rely on another plugin having finished.
- ``hookwrapper=True`` and ``wrapper=True`` (pluggy's wrappers around the other
  implementations) are refused at load with a :class:`~corec_node.plugins.PluginLoadError`:
  each plugin is called on its own, so there is no call to wrap. To act before or after
  other plugins, use ``tryfirst`` / ``trylast`` on a direct hook, or react to their
  alerts in :func:`corec_alert`.
- ``optionalhook=True`` is not needed: an unknown ``corec_*`` name is a load error (a
  misspelled hook must not be silently ignored), marked or not.

Plugin settings: a plugin may declare ``SETTINGS``, either a dict ``{key: (type, default)}``
or a dataclass type. The table ``[plugin.NAME]`` of the node's config is checked against
it at load (an unknown key or a wrong type is a :class:`~corec_node.plugins.PluginConfigError`
naming the plugin and the key) and handed back, defaults filled in, as
``config.plugin[NAME]`` in :func:`corec_configure` (a dict, or an instance of the dataclass).
A table that names no plugin found is an error too (:class:`~corec_node.plugins.UnknownPluginTable`:
the file, the table, the closest installed name), unless the name is in ``plugins.disabled``.

A plugin object whose attribute ``DISABLED_REASON`` is a non-empty string is not registered:
the manager lists it as disabled with that reason (e.g. an optional dependency is missing).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:  # at run time hookspecs loads first: the plugins package imports it
    from corec_node.config import Config
    from corec_node.plugins.facade import NodeFacade

PROJECT = "corec_node"
"""pluggy project name, and the entry point group plugins are found under."""

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# -- life of the node -----------------------------------------------------------------------


@hookspec
def corec_configure(config: Config) -> None:
    """Called once per plugin at load, after its settings were validated, before the node
    starts. Sync only; runs in the loading thread (the node's, before its loop serves).

    :param config: the node's :class:`corec_node.config.Config`. ``config.plugin[NAME]``
        holds this plugin's validated settings with defaults filled in.

    Return value: ignored. Raise :class:`corec_node.plugins.PluginConfigError` for a bad
    setting: the node refuses to start and names the plugin and the key. Any other raise
    also stops the load, naming the plugin. Not firstresult. Must not block.
    """


@hookspec
def corec_startup(node: NodeFacade) -> None:
    """Called once when the node is up (sockets bound, control socket serving), before
    the first engine tick. Sync (run in a worker thread) or async (awaited on the loop).

    :param node: the running node, as this plugin may use it: ``node.name``,
        ``node.config``, ``node.data_dir``, ``node.raise_alert(kind, text, **fields)``,
        ``node.log(event, **fields)``, ``await node.plugin_store()`` (all of it:
        :class:`~corec_node.plugins.NodeFacade`).

    Return value: ignored. A raise or timeout (a longer budget than other hooks) is a
    fault. Not firstresult. Runs on the node's event loop or in a worker thread: must not
    block.
    """


@hookspec
def corec_shutdown(node: NodeFacade) -> None:
    """Called once when the node stops, before its sockets and stores close: flush and
    close what the plugin opened. Sync (worker thread) or async (awaited on the loop).

    :param node: the stopping node.

    Return value: ignored. A raise or timeout is logged; shutdown goes on. Not
    firstresult. Runs on the node's event loop or in a worker thread: must not block.
    """


# -- entity data ----------------------------------------------------------------------------


@hookspec
def corec_channels() -> Any:
    """Which entity channels this plugin wants :func:`corec_entities` for. Called at load
    (after :func:`corec_configure`) and again after :func:`corec_startup`; the last answer
    holds. Sync; called directly on the node's thread, so it must return at once.

    Return value: an iterable of channel numbers 0..255 (``range(256)`` for all), or
    None for none. A plugin that implements ``corec_entities`` but not this hook gets no
    batches. The node uses the union over plugins. Not firstresult. Must not block.
    """


@hookspec
def corec_entities(node: NodeFacade, channel: int, records: Any) -> Any:
    """Called for each entity batch this node ingests on a channel the plugin subscribed
    to (:func:`corec_channels`). Sync (worker thread) or async (awaited on the loop).

    :param node: the running node.
    :param channel: the batch's channel (0..255); every record has it.
    :param records: a read-only numpy array of ``corec_node.wire.ENTITY_DTYPE``
        (fields ``id``, ``channel``, ``value``, ``active``), as ingested. Entities that
        plugins emit (``node.emit``) arrive here too, on their owner's node.

    ``node.emit`` from here onto this plugin's channels, or onto ``channel``, raises
    ``EmitLoopError`` (rule 7): each batch would beget another.

    Return value: None, or an iterable of alert dicts (``{"kind", "text", ...}``) that
    the node records and publishes as alerts from this plugin. Not firstresult. A plugin
    still busy with an earlier batch does not get this one (counted as dropped). Runs on
    the node's event loop or in a worker thread: must not block.
    """


@hookspec
def corec_block_aggregates(node: NodeFacade, tick: int, aggregates: list[dict[str, Any]]) -> Any:
    """Called after each engine tick with the aggregate rows of the blocks this node owns.
    Sync (worker thread) or async (awaited on the loop). A node holding more than
    ``engine.tick_rows`` blocks passes at most that many rows a tick: the blocks that
    changed first, the others in turn (every block again within blocks / tick_rows ticks).

    :param node: the running node.
    :param tick: the engine tick number (increases by one each tick).
    :param aggregates: one dict per block with keys ``block`` (int id: channel << 32 |
        number), ``channel``, ``owner``, ``count``, ``active``, ``mean``, ``min``, ``max``,
        ``std`` (None when the block has no active entity), ``error_rate``, ``fitness``,
        ``tick``, and the block's forecast: ``forecast`` (its next mean), ``forecast_error``
        (scaled against the naive forecast; None until known), ``generation``, ``genome``.
        Read-only: the same dicts are published to the cluster.

    The place to derive entities: ``node.emit(channel, ids, values)`` here once a tick
    (one entity per block, say) puts them into the mesh like a producer's (rule 7); their
    own blocks' rows come back here on the ticks after, so skip their channel.

    Return value: None, or an iterable of alert dicts (``{"kind", "text", ...}``) that
    the node records and publishes as alerts from this plugin. Not firstresult. Runs on
    the node's event loop or in a worker thread: must not block.
    """


# -- cluster events -------------------------------------------------------------------------


@hookspec
def corec_alert(node: NodeFacade, alert: dict[str, Any]) -> None:
    """Called for each alert the node raises (from the core, a plugin, or the plugin
    breaker), after it was recorded, and for each alert a peer raised (protocol 1.10).
    Not called on the plugin that raised it here (returned it, or raised it through its
    ``node.raise_alert``). Sync (worker thread) or async (awaited on the loop).

    :param node: the running node.
    :param alert: ``{"kind": str, "text": str, "severity": "info"|"warning"|"critical",
        "plugin": name or None, ...}`` plus fields such as ``block``, ``channel``, ``tick``.
        A peer's alert has ``"remote": True``, ``"node"`` (its raiser's name) and ``"uid"``
        (the same on every node): do not forward those again if every node forwards.

    Return value: ignored (to forward an alert elsewhere, do it here). Not firstresult.
    Runs on the node's event loop or in a worker thread: must not block.
    """


@hookspec
def corec_member_event(node: NodeFacade, event: dict[str, Any]) -> None:
    """Called when this node's view of a member changes. Sync (worker thread) or async
    (awaited on the loop).

    :param node: the running node.
    :param event: ``{"name", "addr", "old", "new", "incarnation", "reason"}``; ``old``
        and ``new`` are status labels (``alive``, ``suspect``, ``dead``, ``left``, and
        ``reaped`` when the member is forgotten); ``old`` is None for a new member.

    Return value: ignored. Not firstresult. Runs on the node's event loop or in a worker
    thread: must not block.
    """


@hookspec
def corec_leader_changed(node: NodeFacade, leader: str | None, term: int) -> None:
    """Called when this node learns of a new nucleus leader, or loses it. Sync (worker
    thread) or async (awaited on the loop).

    :param node: the running node; ``node.leader`` and ``node.term`` already hold the new
        values, ``node.is_leader`` says whether this node leads.
    :param leader: the leader's name, or None while there is none.
    :param term: the election term.

    Return value: ignored. Not firstresult. Runs on the node's event loop or in a worker
    thread: must not block.
    """


# -- extensions -----------------------------------------------------------------------------


@hookspec
def corec_kernels() -> Any:
    """Called once at startup to collect entity kernels. Sync; called directly.

    Return value: a mapping ``{name: kernel}`` where a kernel is
    ``f(values: float32 ndarray, state: KernelState) -> float32 ndarray`` and follows the
    rules of ``corec_node.engine.kernels`` (vectorized, pure, no I/O); or None. A name
    taken by a built-in or another plugin is a load error naming both. Not firstresult.
    Kernels run inside the engine tick: they must not block.
    """


@hookspec
def corec_storage_migrations() -> Any:
    """Called once at startup for the schema of this plugin's own SQLite store (the one
    ``await node.plugin_store()`` opens). Sync; called directly.

    Return value: a list of SQL strings, applied in order, each once; append only (a
    released plugin never edits or removes an entry), or None. Not firstresult. Must not
    block.
    """


@hookspec
def corec_cli_commands(subparsers: Any) -> None:
    """Called when ``corec-node`` builds its command line. Sync; called directly.

    :param subparsers: the ``argparse`` subparsers action of ``corec-node``. Add commands
        with ``subparsers.add_parser(...)`` and ``set_defaults(func=handler)``, where
        ``handler(args) -> int`` is the exit code. Prefix command names with the plugin
        name; a name already taken is a load error.

    Return value: ignored. Not firstresult. Must not block (it runs on every invocation
    of the CLI: import heavy modules inside the handler, not here).
    """


HOOK_NAMES = (
    "corec_configure",
    "corec_startup",
    "corec_shutdown",
    "corec_channels",
    "corec_entities",
    "corec_block_aggregates",
    "corec_alert",
    "corec_member_event",
    "corec_leader_changed",
    "corec_kernels",
    "corec_storage_migrations",
    "corec_cli_commands",
)
"""Every hook, in the order of this file."""
