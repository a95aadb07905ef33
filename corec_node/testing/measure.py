"""Measuring real node processes from outside, as a user would: CPU time and resident
memory read from /proc (Linux), and how many entities a cluster holds by its ``status``.
Used by the benchmarks; nothing here knows how a node works inside.

A node is two processes, the node process and its mesh process (its child): every helper
takes the pids afresh from ``NodeProc.pids()`` when it reads, so a mesh process that was
restarted is still counted.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from corec_node.testing.cluster import NodeProc

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU time of one process (all its threads), in seconds; None when
    it is gone. /proc/<pid>/stat fields 14 and 15, in clock ticks."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()  # the name (field 2) may hold spaces and ')'
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields[0] is field 3 (state)


def rss_bytes(pids: Iterable[int]) -> int:
    """Resident memory of the processes, summed (VmRSS of /proc/<pid>/status); a process
    that is gone counts 0."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def rss_mb(pids: Iterable[int]) -> float:
    """``rss_bytes`` in MiB."""
    return rss_bytes(pids) / (1024 * 1024)


def cluster_pids(nodes: Iterable[NodeProc]) -> list[int]:
    """Every process of every node, read now."""
    return [pid for n in nodes for pid in n.pids()]


def cpu_snapshot(nodes: Iterable[NodeProc]) -> dict[str, dict[int, float]]:
    """CPU seconds of every process of every node, by node name and pid."""
    out: dict[str, dict[int, float]] = {}
    for node in nodes:
        per: dict[int, float] = {}
        for pid in node.pids():
            s = cpu_seconds(pid)
            if s is not None:
                per[pid] = s
        out[node.name] = per
    return out


def cpu_delta(before: dict[str, dict[int, float]], after: dict[str, dict[int, float]]) -> tuple[dict[str, float], list[int]]:
    """CPU seconds each node spent between two snapshots, and the pids seen before that
    were gone after (their CPU since ``before`` is lost). A process first seen ``after``
    counts all its CPU: it started in between."""
    spent: dict[str, float] = {}
    lost: list[int] = []
    for name, procs in after.items():
        was = before.get(name, {})
        spent[name] = sum(s - was.get(pid, 0.0) for pid, s in procs.items())
        lost += [pid for pid in was if pid not in procs]
    return spent, lost


def rss_by_node(nodes: Iterable[NodeProc]) -> dict[str, int]:
    """Resident bytes of each node (both of its processes)."""
    return {n.name: rss_bytes(n.pids()) for n in nodes}


def held(nodes: Iterable[NodeProc]) -> dict[str, int]:
    """Entities each node holds, by its ``status`` (what ``corec-node status --json`` shows)."""
    return {n.name: int(n.ctl("status").get("entities", 0)) for n in nodes}


def wait_held(nodes: list[NodeProc], count: int, timeout: float, *, quiet: float = 15.0,
              interval: float = 0.25, busy: Any = None) -> tuple[int, float, bool]:
    """Poll until the nodes together hold ``count`` entities. Gives up after ``timeout``
    seconds, or once nothing changed for ``quiet`` seconds while ``busy()`` (e.g. "the
    producer still runs") is false. Returns (held, seconds waited, all arrived)."""
    started = last_change = time.monotonic()
    last = -1
    while True:
        try:
            now = sum(held(nodes).values())
        except Exception:  # a node too busy to answer its control socket in time: look again
            now = last
        t = time.monotonic()
        if now != last:
            last, last_change = now, t
        if now >= count:
            return now, t - started, True
        running = bool(busy()) if busy is not None else False
        if t - started >= timeout or (not running and t - last_change >= quiet):
            return max(now, 0), t - started, False
        time.sleep(interval)
