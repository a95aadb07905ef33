"""Freed heap back to the system. glibc keeps what a burst of ingest freed (receive
buffers, batches, decode arrays) in its arenas, so a node's RSS would stay at the burst's
peak; ``malloc_trim(0)`` returns it. Elsewhere (musl, macOS) this does nothing."""

from __future__ import annotations

import ctypes
import ctypes.util

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
