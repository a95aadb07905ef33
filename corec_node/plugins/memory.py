"""Per-plugin memory from tracemalloc's traces, and when a plugin is over its limit: pure.

No tracemalloc, no clock, no asyncio here: :func:`attribute` turns the traces of one
snapshot (size, frames) into bytes per plugin, by the files each plugin's code lives in;
:class:`MemoryWatch` keeps each plugin's current, peak and growth figures across checks
and says which plugin has gone over its limit. :mod:`.memwatch` is the shell that takes
the snapshots and switches plugins off.

Rules (what a caller may rely on):

1. A trace belongs to the plugin whose files hold its innermost frame that is in any
   plugin's files; a trace with no such frame belongs to nobody (the node, a library).
   So what a library allocates when a plugin calls it counts for the plugin as long as
   the plugin's frame is within the traceback depth tracemalloc keeps.
2. Growth is the current figure less the first one measured: what the plugin has held on
   to since the watch began.
3. A plugin is over once it holds more than its limit on ``over_checks`` checks in a
   row; it is reported over once (the shell switches it off), never again.
4. A limit of 0 is no limit: the plugin's figures are kept and shown, never judged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

MIB = 1 << 20
# Checks in a row over its limit before a plugin is switched off: one snapshot may catch a
# transient working set (a batch being scored); a leak is still over one interval later.
OVER_CHECKS = 2


@dataclasses.dataclass(frozen=True, slots=True)
class PluginFiles:
    """Where one plugin's code lives: folders (every file below them) and single files,
    each spelled as tracemalloc's frames spell them (the code objects' file names)."""

    name: str
    folders: tuple[str, ...] = ()
    files: tuple[str, ...] = ()


def owner_of(filename: str, plugins: Sequence[PluginFiles]) -> str | None:
    """The plugin whose files hold ``filename``, or None. The longest folder wins, so a
    plugin inside another's folder (a sub-package given its own entry point) is its own."""
    best, depth = None, -1
    for p in plugins:
        if filename in p.files:
            return p.name
        for folder in p.folders:
            prefix = folder if folder.endswith(("/", "\\")) else folder + "/"
            if filename.startswith(prefix) and len(prefix) > depth:
                best, depth = p.name, len(prefix)
    return best


def attribute(traces: Iterable[Sequence[Any]], plugins: Sequence[PluginFiles]) -> dict[str, int]:
    """Bytes per plugin (every plugin listed, 0 when it holds nothing traced) from one
    snapshot's traces as tracemalloc keeps them: ``(domain, size, frames, total_nframe)``,
    frames innermost first as ``(filename, lineno)``.

    Runs while tracemalloc traces (the watch's worker thread), so the loop allocates
    nothing per trace: no tuple, no id(); each distinct traceback is judged once.
    """
    sizes: dict[str, list[int]] = {p.name: [] for p in plugins}  # summed at the end: no int per trace
    by_file: dict[str, str | None] = {}
    by_frames: dict[Any, str | None] = {}
    last: Any = None
    into: list[int] | None = None
    for trace in traces:
        frames = trace[2]
        if frames is not last:
            last = frames
            try:
                owner = by_frames[frames]
            except KeyError:
                owner = None
                for filename, _ in frames:
                    try:
                        owner = by_file[filename]
                    except KeyError:
                        owner = by_file[filename] = owner_of(filename, plugins)
                    if owner is not None:
                        break
                by_frames[frames] = owner
            into = None if owner is None else sizes[owner]
        if into is not None:
            into.append(trace[1])
    return {name: sum(got) for name, got in sizes.items()}


@dataclasses.dataclass(frozen=True, slots=True)
class Over:
    """A plugin found over its limit: what the shell switches off, and why."""

    plugin: str
    bytes: int
    limit: int
    checks: int

    @property
    def reason(self) -> str:
        return (f"memory watch: {mib(self.bytes)} traced to its code, over its limit of {mib(self.limit)} "
                f"on {self.checks} checks in a row")


def mib(n: int) -> str:
    return f"{n / MIB:.1f} MiB"


@dataclasses.dataclass(slots=True)
class _Figures:
    first: int
    current: int
    peak: int
    over: int = 0  # checks in a row over the limit
    reported: bool = False


class MemoryWatch:
    """Each plugin's figures across checks; ``limits`` in bytes per plugin (missing or 0:
    no limit)."""

    def __init__(self, limits: Mapping[str, int] | None = None, *, over_checks: int = OVER_CHECKS) -> None:
        if over_checks < 1:
            raise ValueError("over_checks must be at least 1")
        self.limits = dict(limits or {})
        self.over_checks = over_checks
        self.checks = 0
        self._figures: dict[str, _Figures] = {}

    def observe(self, totals: Mapping[str, int], judge: Iterable[str] | None = None) -> list[Over]:
        """One check's bytes per plugin. Returns the plugins that have just become over
        their limit (rule 3); only those in ``judge`` (default: all) can be, so a plugin
        already switched off keeps its figures without being reported again."""
        self.checks += 1
        judged = set(totals) if judge is None else set(judge)
        out: list[Over] = []
        for name, held in totals.items():
            f = self._figures.get(name)
            if f is None:
                f = self._figures[name] = _Figures(first=held, current=held, peak=held)
            f.current, f.peak = held, max(f.peak, held)
            limit = self.limits.get(name, 0)
            f.over = f.over + 1 if limit and held > limit else 0
            if f.over >= self.over_checks and not f.reported and name in judged:
                f.reported = True
                out.append(Over(name, held, limit, f.over))
        return out

    def figures(self, name: str) -> dict[str, Any]:
        """``memory_bytes``, ``memory_peak_bytes``, ``memory_growth_bytes`` (None before the
        first check) and ``memory_limit_bytes`` (None: no limit) of one plugin."""
        f = self._figures.get(name)
        limit = self.limits.get(name, 0) or None
        if f is None:
            return {"memory_bytes": None, "memory_peak_bytes": None, "memory_growth_bytes": None,
                    "memory_limit_bytes": limit}
        return {"memory_bytes": f.current, "memory_peak_bytes": f.peak, "memory_growth_bytes": f.current - f.first,
                "memory_limit_bytes": limit}
