"""What a plugin may call on its node: the ``node`` argument of every hook.

The manager hands each plugin its own :class:`NodeFacade` wrapping the node, never the
node itself: what plugins may rely on is this one typed list, and the node's insides can
change without breaking them. Per plugin, so that what it raises and logs carries its
name without the plugin saying it.

Attributes of the node that are not listed here still pass through for now, with one
``plugin_node_attribute`` warning per plugin and attribute: they are not an API and will go.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Collection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from corec_node import log
from corec_node.plugins.dispatch import SEVERITIES
from corec_node.plugins.emit import check_loop, emit_records

if TYPE_CHECKING:
    from corec_node.config import Config
    from corec_node.storage import PluginStore


class NoPluginStore(LookupError):
    """The node behind the facade keeps no plugin stores (a test double): the plugin may
    fall back to a file of its own under ``data_dir``."""


class NoEmit(LookupError):
    """The node behind the facade takes no emitted entities (a test double)."""


@dataclasses.dataclass
class Leadership:
    """The nucleus leader as last told to plugins (``corec_leader_changed``), shared by
    the facades of one manager: the node itself does not keep it where plugins can see."""

    leader: str | None = None
    term: int = 0


class NodeFacade:
    """The node as one plugin sees it. Every member is safe from any thread (sync hooks run
    in worker threads) unless it says otherwise, and none of them blocks."""

    __slots__ = ("_leadership", "_node", "_plugin", "_settings", "_subscribed", "_warned")

    def __init__(self, node: Any, plugin: str, *, settings: Any = None,
                 leadership: Leadership | None = None,
                 subscribed: Callable[[], Collection[int]] | None = None) -> None:
        self._node = node
        self._plugin = plugin
        self._settings = settings
        self._leadership = leadership if leadership is not None else Leadership()
        self._subscribed = subscribed  # this plugin's corec_channels, for emit's feedback rule
        self._warned: set[str] = set()

    # -- who and where ----------------------------------------------------------------

    @property
    def name(self) -> str:
        """The node's name, unique in its cluster."""
        return self._node.name

    @property
    def config(self) -> Config:
        """The node's whole config (read-only; ``config.plugin[NAME]`` is the raw table)."""
        return self._node.config

    @property
    def data_dir(self) -> Path:
        """The node's data directory; a plugin's own files go under ``data_dir / "plugins"``."""
        return Path(self._node.data_dir)

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The node's event loop (None before it runs): for ``call_soon_threadsafe`` from a
        thread the plugin started itself."""
        return getattr(self._node, "loop", None)

    @property
    def plugin(self) -> str:
        """This plugin's name: its entry point's name, its ``[plugin.NAME]`` table."""
        return self._plugin

    @property
    def settings(self) -> Any:
        """This plugin's validated settings (a dict, or its SETTINGS dataclass), defaults filled in."""
        return self._settings

    @property
    def leader(self) -> str | None:
        """The nucleus leader's name as last told to plugins, None while there is none."""
        return self._leadership.leader

    @property
    def term(self) -> int:
        """The election term of :attr:`leader`."""
        return self._leadership.term

    @property
    def tags(self) -> dict[str, dict[str, str]]:
        """Every member's tags as last gossiped (``node.tags`` in each one's config):
        ``{"pi-7": {"role": "gateway"}}``; a member that announced none is absent."""
        view = getattr(getattr(self._node, "mesh", None), "view", None)
        return {name: dict(tags) for name, tags in getattr(view, "tags", {}).items()}

    @property
    def is_leader(self) -> bool:
        """Whether this node leads the nucleus (as last told to plugins)."""
        return self._leadership.leader is not None and self._leadership.leader == self.name

    # -- acting -----------------------------------------------------------------------

    def raise_alert(self, kind: str, text: str, *, severity: str = "warning", **fields: Any) -> None:
        """Record, log and publish an alert from this plugin (also handed to the other
        plugins' ``corec_alert``, not to this one's). ``fields`` such as ``block``,
        ``channel``, ``tick`` are kept with it. A hook may instead return alert dicts."""
        if severity not in SEVERITIES:
            raise ValueError(f"alert severity must be one of {', '.join(SEVERITIES)}, got {severity!r}")
        fields["plugin"] = self._plugin
        self._node.raise_alert(kind, text, severity=severity, **fields)

    def emit(self, channel: int, ids: Any, values: Any, active: Any = None) -> int:
        """Put entity records into the mesh as if a producer had sent them to this node:
        ``ids`` (uint32) and ``values`` (finite numbers; a scalar is broadcast), ``active``
        None (all 1), a bool or one 0/1 per id, all on ``channel`` (0..255). Each record goes
        to its block's owner (this node's ingest for what it owns, forwarded for the rest,
        replicated as usual), and is counted like a producer's (``status`` ``producers``, and
        this plugin's ``emitted`` / ``emit_accepted`` / ``emit_refused`` in ``plugins``): a
        full ingest queue, a paused stream or the memory limit refuse records (``busy``,
        ``memory_full``, ...), they are never waited for. Returns how many records were
        handed to the node; what became of them is known later, in those counters.

        Safe from any thread and from async hooks; never blocks. A bad argument raises
        ValueError or TypeError here, in the plugin (a fault of the hook that let it out).
        Inside ``corec_entities`` emitting onto a channel this plugin subscribes to, or onto
        the batch's channel, raises :class:`~corec_node.plugins.emit.EmitLoopError`: its own
        records would come back to it. Elsewhere they do: an emitted batch reaches the
        ``corec_entities`` of every plugin subscribed to its channel on the owner's node,
        this one included."""
        records = emit_records(channel, ids, values, active)
        check_loop(int(channel), self._subscribed() if self._subscribed is not None else ())
        if not len(records):
            return 0
        taker = getattr(self._node, "emit_entities", None)
        if taker is None:
            raise NoEmit(f"{type(self._node).__name__} takes no emitted entities")
        return taker(self._plugin, records)

    def log(self, event: str, level: int = logging.INFO, /, **fields: Any) -> None:
        """One logfmt line in the node's log, ``plugin=NAME`` added: ``node.log("x_done", rows=3)``."""
        log.event(event, level, plugin=self._plugin, **fields)

    async def plugin_store(self, name: str | None = None) -> PluginStore:
        """This plugin's own store (``name`` defaults to the plugin's), opened and migrated
        once with its ``corec_storage_migrations`` and closed by the node at shutdown:
        ``.sqlite`` is an aiosqlite connection to ``<data_dir>/plugins/<name>.db``,
        ``.postgres`` its schema when PostgreSQL is configured. Await it on the loop (in
        ``corec_startup``, say). :class:`NoPluginStore` when the node keeps none."""
        opener = getattr(self._node, "plugin_store", None)
        if opener is None:
            raise NoPluginStore(f"{type(self._node).__name__} keeps no plugin stores")
        return await opener(name or self._plugin)

    # -- the rest, for now ------------------------------------------------------------

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__") or attr in NodeFacade.__slots__:
            raise AttributeError(attr)
        value = getattr(self._node, attr)
        if attr not in self._warned:
            self._warned.add(attr)
            log.event("plugin_node_attribute", logging.WARNING, plugin=self._plugin, attribute=attr,
                      detail="not part of NodeFacade (corec_node/plugins/facade.py): it may go in any release")
        return value

    def __repr__(self) -> str:
        return f"<NodeFacade of {getattr(self._node, 'name', '?')!r} for plugin {self._plugin!r}>"


def unwrap(node: Any) -> Any:
    """The node behind a facade (a core caller handed one back), or ``node`` itself."""
    return node._node if isinstance(node, NodeFacade) else node
