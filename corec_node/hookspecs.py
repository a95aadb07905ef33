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

Plugin settings: a plugin may declare ``SETTINGS``, either a dict ``{key: (type, default)}``
or a dataclass type. The table ``[plugin.NAME]`` of the node's config is checked against
it at load (an unknown key or a wrong type is a :class:`~corec_node.plugins.PluginConfigError`
naming the plugin and the key) and handed back, defaults filled in, as
``config.plugin[NAME]`` in :func:`corec_configure` (a dict, or an instance of the dataclass).

A plugin object whose attribute ``DISABLED_REASON`` is a non-empty string is not registered:
the manager lists it as disabled with that reason (e.g. an optional dependency is missing).
"""

from __future__ import annotations

from typing import Any

import pluggy

PROJECT = "corec_node"
"""pluggy project name, and the entry point group plugins are found under."""

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# -- life of the node -----------------------------------------------------------------------


@hookspec
def corec_configure(config: Any) -> None:
    """Called once per plugin at load, after its settings were validated, before the node
    starts. Sync only; runs in the loading thread (the node's, before its loop serves).

    :param config: the node's :class:`corec_node.config.Config`. ``config.plugin[NAME]``
        holds this plugin's validated settings with defaults filled in.

    Return value: ignored. Raise :class:`corec_node.plugins.PluginConfigError` for a bad
    setting: the node refuses to start and names the plugin and the key. Any other raise
    also stops the load, naming the plugin. Not firstresult. Must not block.
    """


@hookspec
def corec_startup(node: Any) -> None:
    """Called once when the node is up (sockets bound, control socket serving), before
    the first engine tick. Sync (run in a worker thread) or async (awaited on the loop).

    :param node: the running node. Plugins may rely on ``node.name``, ``node.config``,
        ``node.data_dir``, ``node.raise_alert(kind, text, **fields)`` and
        ``await node.plugin_store(name)`` (the node API: ``corec_node/shell/node.py``).

    Return value: ignored. A raise or timeout (a longer budget than other hooks) is a
    fault. Not firstresult. Runs on the node's event loop or in a worker thread: must not
    block.
    """


@hookspec
def corec_shutdown(node: Any) -> None:
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
def corec_entities(node: Any, channel: int, records: Any) -> Any:
    """Called for each entity batch this node ingests on a channel the plugin subscribed
    to (:func:`corec_channels`). Sync (worker thread) or async (awaited on the loop).

    :param node: the running node.
    :param channel: the batch's channel (0..255); every record has it.
    :param records: a read-only numpy array of ``corec_node.wire.ENTITY_DTYPE``
        (fields ``id``, ``channel``, ``value``, ``active``), as ingested.

    Return value: None, or an iterable of alert dicts (``{"kind", "text", ...}``) that
    the node records and publishes as alerts from this plugin. Not firstresult. A plugin
    still busy with an earlier batch does not get this one (counted as dropped). Runs on
    the node's event loop or in a worker thread: must not block.
    """


@hookspec
def corec_block_aggregates(node: Any, tick: int, aggregates: list[dict[str, Any]]) -> Any:
    """Called after each engine tick with the aggregate rows of the blocks this node owns.
    Sync (worker thread) or async (awaited on the loop). A node holding more than
    ``engine.tick_rows`` blocks passes at most that many rows a tick: the blocks that
    changed first, the others in turn (every block again within blocks / tick_rows ticks).

    :param node: the running node.
    :param tick: the engine tick number (increases by one each tick).
    :param aggregates: one dict per block with keys ``block`` (int id: channel << 32 |
        number), ``channel``, ``owner``, ``count``, ``active``, ``mean``, ``min``, ``max``,
        ``std`` (None when the block has no active entity), ``error_rate``, ``fitness``,
        ``tick``. Read-only: the same dicts are published to the cluster.

    Return value: None, or an iterable of alert dicts (``{"kind", "text", ...}``) that
    the node records and publishes as alerts from this plugin. Not firstresult. Runs on
    the node's event loop or in a worker thread: must not block.
    """


# -- cluster events -------------------------------------------------------------------------


@hookspec
def corec_alert(node: Any, alert: dict[str, Any]) -> None:
    """Called for each alert the node raises (from the core, a plugin, or the plugin
    breaker), after it was recorded. Not called on the plugin that raised it. Sync
    (worker thread) or async (awaited on the loop).

    :param node: the running node.
    :param alert: ``{"kind": str, "text": str, "severity": "info"|"warning"|"critical",
        "plugin": name or None, ...}`` plus fields such as ``block``, ``channel``, ``tick``.

    Return value: ignored (to forward an alert elsewhere, do it here). Not firstresult.
    Runs on the node's event loop or in a worker thread: must not block.
    """


@hookspec
def corec_member_event(node: Any, event: dict[str, Any]) -> None:
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
def corec_leader_changed(node: Any, leader: str | None, term: int) -> None:
    """Called when this node learns of a new nucleus leader, or loses it. Sync (worker
    thread) or async (awaited on the loop).

    :param node: the running node (``node.name == leader`` when this node leads).
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
    ``await node.plugin_store(NAME)`` opens). Sync; called directly.

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
