"""The rows ``explain`` builds its account from, read from the node's SQLite store.

Read on a connection of its own, in a worker thread, with ``query_only``: a reader beside
the node's one writer connection (WAL lets them both run), so a question about a block
with a day of history (86,400 rows at 1 s ticks) is answered by SQL aggregates, not by
loading the rows into the event loop. Each read is one transaction: the rows agree.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from corec_node.explain import ALERT_WINDOW, block_name

MAX_ROWS = 10_000  # the newest audit and alert rows of one block read at most
BUSY_TIMEOUT = 5.0  # seconds a read waits for a lock (a checkpoint) before it fails

_STATE = ("block", "channel", "owner", "tick", "count", "active", "mean", "min", "max", "std", "error_rate",
          "fitness", "ts")
_AUDIT = ("uid", "ts", "kind", "subject", "reason", "term", "details")
_ALERT = ("uid", "ts", "kind", "severity", "block", "message", "details", "node")

# Stretches of the block's history: a new one starts at the first row, when the owner
# column changes, or after a gap of more than ? seconds (the node held it no more, then
# again). Window functions: SQLite 3.25 and later (Python 3.11 ships newer).
_TENURES = """
WITH h AS (
  SELECT ts, owner, tick,
         CASE WHEN lag(owner) OVER w IS NULL OR lag(owner) OVER w <> owner OR ts - lag(ts) OVER w > ?
              THEN 1 ELSE 0 END AS brk
  FROM block_history WHERE block = ? WINDOW w AS (ORDER BY ts, tick)
), r AS (
  SELECT ts, owner, tick, sum(brk) OVER (ORDER BY ts, tick ROWS UNBOUNDED PRECEDING) AS run FROM h
)
SELECT owner, min(ts), max(ts), count(*), min(tick), max(tick) FROM r GROUP BY run ORDER BY run
"""


@dataclass(slots=True)
class BlockRows:
    """What the store holds about one block (``explain.block_account``'s arguments)."""

    state: dict[str, Any] | None = None
    tenures: list[dict[str, Any]] = field(default_factory=list)
    audit: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    placement: dict[str, Any] | None = None
    genome: dict[str, Any] | None = None  # the saved one (block_genomes)

    def empty(self) -> bool:
        return not (self.state or self.tenures or self.audit or self.alerts or self.placement or self.genome)


@dataclass(slots=True)
class AlertRows:
    """One alert and what is around it (``explain.alert_account``'s arguments)."""

    alert: dict[str, Any]
    audit: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)


class UnknownSubject(LookupError):
    """No such alert (or an ambiguous uid prefix): the message says which."""


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT, isolation_level=None)
    conn.execute("PRAGMA query_only = 1")
    return conn


def _json(text: Any) -> dict[str, Any]:
    try:
        value = json.loads(text) if isinstance(text, str) else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _audit_rows(conn: sqlite3.Connection, block: int) -> list[dict[str, Any]]:
    """The block's audit rows (subject ``block C:N``) and the fusions into it, oldest first."""
    rows = conn.execute(
        "SELECT uid, ts, kind, subject, reason, term, details FROM audit WHERE subject = ? "
        "OR (kind = 'fusion' AND json_valid(details) AND json_extract(details, '$.into') = ?) "
        "ORDER BY id DESC LIMIT ?", (f"block {block_name(block)}", block, MAX_ROWS)).fetchall()
    return [{**dict(zip(_AUDIT, r)), "details": _json(r[6])} for r in reversed(rows)]


def _alert_rows(conn: sqlite3.Connection, block: int, node: str) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT uid, ts, kind, severity, block, message, details, node FROM alerts WHERE block = ? "
        "ORDER BY id DESC LIMIT ?", (block, MAX_ROWS)).fetchall()
    return [_alert(r, node) for r in reversed(rows)]


def _alert(r: tuple[Any, ...], node: str) -> dict[str, Any]:
    return {**dict(zip(_ALERT, r)), "details": _json(r[6]), "node": r[7] or node}  # NULL: this node raised it


def _read_block(path: Path, block: int, gap: float, node: str) -> BlockRows:
    conn = _connect(path)
    try:
        conn.execute("BEGIN")
        out = BlockRows()
        row = conn.execute(f"SELECT {', '.join(_STATE)} FROM block_state WHERE block = ?", (block,)).fetchone()
        out.state = dict(zip(_STATE, row)) if row else None
        out.tenures = [{"owner": o, "since": a, "until": b, "ticks": n, "first_tick": t0, "last_tick": t1}
                       for o, a, b, n, t0, t1 in conn.execute(_TENURES, (gap, block))]
        out.audit = _audit_rows(conn, block)
        out.alerts = _alert_rows(conn, block, node)
        row = conn.execute("SELECT owner, term, updated_at FROM placement WHERE block = ?", (block,)).fetchone()
        out.placement = dict(zip(("owner", "term", "updated_at"), row)) if row else None
        row = conn.execute("SELECT genome FROM block_genomes WHERE block = ?", (block,)).fetchone()
        out.genome = _json(row[0]) or None if row else None
        return out
    finally:
        conn.close()


def _read_alert(path: Path, ref: str, node: str) -> AlertRows:
    conn = _connect(path)
    try:
        conn.execute("BEGIN")
        rows = conn.execute("SELECT uid, ts, kind, severity, block, message, details, node FROM alerts "
                            "WHERE uid >= ? AND uid < ? ORDER BY uid = ? DESC, id LIMIT 2",
                            (ref, ref + "g", ref)).fetchall()  # uids are lowercase hex: a prefix range
        if not rows:
            raise UnknownSubject(f"no alert {ref} in this node's alerts")
        if len(rows) > 1 and rows[0][0] != ref:
            raise UnknownSubject(f"alert {ref} is ambiguous ({rows[0][0]}, {rows[1][0]}, ...): give more of its uid")
        out = AlertRows(_alert(rows[0], node))
        block = out.alert["block"]
        if type(block) is int:
            ts = out.alert["ts"]
            out.audit = [r for r in _audit_rows(conn, block) if abs(r["ts"] - ts) <= ALERT_WINDOW]
            out.alerts = _alert_rows(conn, block, node)
        return out
    finally:
        conn.close()


async def read_block(path: Path, block: int, *, gap: float, node: str) -> BlockRows:
    """The store's rows about ``block``; ``gap``: seconds between two history rows past
    which they belong to different stretches."""
    return await asyncio.to_thread(_read_block, Path(path), block, gap, node)


async def read_alert(path: Path, ref: str, *, node: str) -> AlertRows:
    """The alert whose uid is or starts with ``ref`` (lowercase hex), and the audit rows and
    alerts of its block; :class:`UnknownSubject` when none or several match."""
    return await asyncio.to_thread(_read_alert, Path(path), ref, node)
