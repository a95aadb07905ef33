"""The node's memory: freed heap given back, and the limit it admits new blocks by.

glibc keeps what a burst of ingest freed (receive buffers, batches, decode arrays) in its
arenas, so a node's RSS would stay at the burst's peak; ``malloc_trim(0)`` returns it.
Elsewhere (musl, macOS) this does nothing. ``MemoryGauge`` says when the node nears its
memory limit, so that it refuses new blocks before the kernel kills it."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Callable

_trim = None
_looked = False


def release_free_memory() -> bool:
    """True when glibc was asked to return free heap (a few ms for a large heap)."""
    global _trim, _looked
    if not _looked:
        _looked = True
        name = ctypes.util.find_library("c")
        try:
            _trim = getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
        except OSError:
            _trim = None
    if _trim is None:
        return False
    _trim(0)
    return True


ADMIT_SHARE = 0.9  # of the memory limit: past it, a node takes no new blocks from producers


def cgroup_path(proc_cgroup: str) -> str | None:
    """The cgroup v2 path of a process from its ``/proc/PID/cgroup`` text (``0::/path``)."""
    for line in proc_cgroup.splitlines():
        if line.startswith("0::"):
            return line[3:].strip() or "/"
    return None


def parse_limit(text: str) -> int | None:
    """``memory.max``'s value in bytes; None for ``max`` (no limit) or anything unreadable."""
    text = text.strip()
    return int(text) if text.isdigit() else None


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as f:
            return f.read()
    except OSError:
        return None


def rss_bytes(pid: int) -> int:
    """Resident memory of one process (0 when it is gone)."""
    text = _read(f"/proc/{pid}/statm")
    if not text:
        return 0
    return int(text.split()[1]) * os.sysconf("SC_PAGE_SIZE")


class MemoryGauge:
    """How close the node is to the memory it may use: ``engine.memory_limit_mb`` against
    the RSS of its processes (the node process and its mesh process), or, with no such
    setting, the service's cgroup ``memory.max`` (systemd's ``MemoryMax=``) against the
    cgroup's ``memory.current``, the figures the kernel kills by."""

    def __init__(self, limit_mb: float, pids: Callable[[], list[int]]) -> None:
        self._pids = pids
        self.limit = int(limit_mb * 1024 * 1024) if limit_mb > 0 else None
        self.source = "config" if self.limit else "none"
        self._cgroup: str | None = None
        if self.limit is None:
            path = cgroup_path(_read("/proc/self/cgroup") or "")
            limit = parse_limit(_read(f"/sys/fs/cgroup{path}/memory.max") or "") if path else None
            if limit is not None:
                self.limit, self.source, self._cgroup = limit, "cgroup", f"/sys/fs/cgroup{path}"

    def used(self) -> int:
        if self._cgroup is not None:
            text = _read(f"{self._cgroup}/memory.current")
            if text and text.strip().isdigit():
                return int(text)
        return sum(rss_bytes(pid) for pid in self._pids())

    def full(self) -> bool:
        """Past ADMIT_SHARE of the limit (never, with no limit)."""
        return self.limit is not None and self.used() >= ADMIT_SHARE * self.limit
