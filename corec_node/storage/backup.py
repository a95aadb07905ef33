"""Copies of a store through SQLite's online backup API, consistent while the node writes.

The copy is made in ONE backup step: one read transaction over the whole file, so it is
the database as of one commit. In WAL mode a reader blocks no writer, so the node keeps
writing meanwhile (its WAL grows until the copy ends); a copy made in several steps would
restart whenever another connection writes, which a node does every tick. The copy is
written beside its destination and renamed into place once fsynced, so a destination
either does not exist or holds a whole copy.

``corec-node backup`` uses it on a live node's store (opened read-only), and
``corec-node restore`` to put a verified backup in place.
"""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from corec_node.storage.verify import StoreCheck, check_store, connect


@dataclass(frozen=True, slots=True)
class Copied:
    """A finished copy: where, how large, how long it took, and its check."""

    path: Path
    size: int
    seconds: float
    check: StoreCheck


def copy_store(src: str | os.PathLike[str], dest: str | os.PathLike[str]) -> Copied:
    """Copy the store ``src`` (live or not) to ``dest``, which must not exist; the copy
    is checked (quick_check) before this returns. FileExistsError, FileNotFoundError, or
    sqlite3 errors say why not."""
    src, dest = Path(src), Path(dest)
    if dest.exists():
        raise FileExistsError(f"{dest} exists: choose a new name")
    if not src.exists():
        raise FileNotFoundError(f"no store at {src}")
    started = time.monotonic()
    partial = dest.with_name(dest.name + ".partial")
    for leftover in (partial, partial.with_name(partial.name + "-journal")):
        leftover.unlink(missing_ok=True)
    source = connect(src, readonly=True)
    try:
        target = sqlite3.connect(partial, isolation_level=None)
        try:
            source.backup(target, pages=-1)  # one step: one consistent snapshot
        finally:
            target.close()
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    finally:
        source.close()
    with open(partial, "rb") as f:
        os.fsync(f.fileno())
    os.replace(partial, dest)
    fd = os.open(dest.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return Copied(dest, dest.stat().st_size, time.monotonic() - started, check_store(dest, readonly=True))
