"""Test helpers for stores on disk: a filled store, three ways to damage one, the CLI."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
from pathlib import Path

from corec_node.storage import LocalStore

CLI = [sys.executable, "-m", "corec_node"]
T0 = 1_700_000_000.0


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=90, check=False)


def rows(tick: int, blocks: int = 1000, owner: str = "a") -> list[dict]:
    return [{"block": (1 << 32) | b, "channel": 1, "owner": owner, "tick": tick, "count": 10, "active": 9,
             "mean": 20.0 + b, "min": 1.0, "max": 40.0, "std": 2.0, "error_rate": 0.0, "fitness": 1.0}
            for b in range(blocks)]


def make_store(path: Path, *, ticks: int = 20, term: int = 0) -> None:
    """A store of about 2.5 MB (ticks x 1000 history rows) that has seen ``term``."""
    async def fill() -> None:
        store = await LocalStore.open(path, node="a")
        for t in range(ticks):
            await store.record_tick(rows(t), T0 + t)
        if term:
            await store.add_audit("leader_change", "a", "elected", term=term)
        await store.close()

    path.parent.mkdir(parents=True, exist_ok=True)
    asyncio.run(fill())


def garbage_in_the_middle(path: Path) -> None:
    """8 KB of noise halfway into the file: two pages of b-tree gone."""
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.seek(size // 2)
        f.write(random.Random(8).randbytes(8192))


def truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def damaged_header(path: Path) -> None:
    with open(path, "r+b") as f:
        f.write(random.Random(1).randbytes(100))
