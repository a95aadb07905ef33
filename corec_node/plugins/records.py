"""What the plugin manager knows about each plugin and each hook implementation.

Made at registration by :mod:`corec_node.plugins.manager`; the calls, faults and drops
that ``info()`` reports are counted on them by :mod:`corec_node.plugins.dispatch`.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Sequence
from typing import Any

ACTIVE, DISABLED = "active", "disabled"
SOURCES = ("builtin", "entrypoint", "path")


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
    # entities it emitted (NodeFacade.emit): handed to the node, then queued or refused by reason
    emitted: int = 0
    emit_accepted: int = 0
    emit_refused: dict[str, int] = dataclasses.field(default_factory=dict)
    # the memory watch's figures (plugins.memory_watch; None while it is off or before its first check)
    memory_bytes: int | None = None
    memory_peak_bytes: int | None = None
    memory_growth_bytes: int | None = None
    memory_limit_bytes: int | None = None

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
            "emitted": self.emitted,
            "emit_accepted": self.emit_accepted,
            "emit_refused": dict(self.emit_refused),
            "memory_bytes": self.memory_bytes,
            "memory_peak_bytes": self.memory_peak_bytes,
            "memory_growth_bytes": self.memory_growth_bytes,
            "memory_limit_bytes": self.memory_limit_bytes,
        }


class _Impl:
    """One plugin's implementation of one hook, and the parameters it takes (a subset of
    the spec's: pluggy's rule, which we keep while calling each implementation ourselves)."""

    __slots__ = ("argnames", "fn", "hook", "is_async", "rec", "takes_node")

    def __init__(self, rec: PluginRecord, fn: Callable[..., Any], hook: str, argnames: Sequence[str]) -> None:
        self.rec = rec
        self.fn = fn
        self.hook = hook
        self.argnames = tuple(argnames)
        self.takes_node = "node" in self.argnames  # then it gets its plugin's NodeFacade
        self.is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__)

    def args(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        return kwargs if len(kwargs) == len(self.argnames) else {k: kwargs[k] for k in self.argnames}
