"""LocalStore: the node's SQLite database (aiosqlite, WAL), always there.

One connection, one writer (the data directory lock guarantees one process). Every public
write is one transaction, however many rows it carries; aiosqlite runs the statements in its
own thread, so the event loop only waits on the await, and sqlite3 releases the GIL while a
statement steps. ``synchronous=NORMAL`` in WAL mode survives a process kill (the WAL is
written before the commit returns) but may lose the last commits on power loss; the election
vote is the exception and is written with ``synchronous=FULL`` (fsynced) before
:meth:`save_vote` returns.

The term row (``meta`` key ``term_seen``) holds the highest term any write here carried (an
audit row with a term, a nucleus or placement record, :meth:`note_term`); it only rises. The
node compares its vote file with it at start: a vote file older than it was rolled back
(``shell/datacheck.py``).

The outbox holds what PostgreSQL has not confirmed yet. Entries, oldest first:

- ``history``: one entry per :meth:`record_tick` call carrying all its rows (``rows`` = count).
  Draining one writes those rows to ``block_history`` *and* upserts ``block_state`` from them.
- ``state``: at most one, key ``snapshot``: written by :meth:`trim_outbox` when it drops history,
  with the whole local ``block_state``, so dropping history never loses the latest state.
- ``alert``, ``audit``: one per call, never dropped.
- ``member``: at most one (key ``members``), the latest members snapshot.
- ``nucleus``: fenced decisions (leader of a term, placement), never dropped.

A coalesced entry (``state``, ``member``) is replaced by DELETE + INSERT, so it gets a new id:
a drain that read the old one and deletes it by id cannot delete the new one.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import aiosqlite
import msgpack

from corec_node.storage.backup import Copied, copy_store
from corec_node.storage.errors import StaleTermError
from corec_node.storage.migrations import CORE_SQLITE, migrate_sqlite
from corec_node.storage.rows import BLOCK_COLUMNS, normalize_rows, tick_epochs, to_epoch
from corec_node.storage.verify import TERM_KEY, StoreCheck, check_store
from corec_node.wire.messages import MemberState, MemberStatus

OUTBOX_KINDS = ("state", "history", "alert", "audit", "member", "nucleus", "genome")
BATCH_SCAN = 64  # outbox entries looked at per outbox_batch call (each carries up to a tick of rows)
OFFLOAD_ROWS = 2_000  # above this many rows, (de)serializing runs in a worker thread, off the event loop

_COLS = ", ".join(BLOCK_COLUMNS)
_STATE_COLS13 = _COLS + ", ts"
_UPSERT_STATE = (
    f"INSERT INTO block_state ({_STATE_COLS13}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,{{ts}}) "
    "ON CONFLICT (block) DO UPDATE SET channel = excluded.channel, owner = excluded.owner, "
    "tick = excluded.tick, count = excluded.count, active = excluded.active, mean = excluded.mean, "
    "min = excluded.min, max = excluded.max, std = excluded.std, error_rate = excluded.error_rate, "
    "fitness = excluded.fitness, ts = excluded.ts "
    # rows.newer: same owner -> higher tick; another owner -> later ts
    "WHERE (excluded.owner = block_state.owner AND excluded.tick > block_state.tick) "
    "OR (excluded.owner <> block_state.owner AND excluded.ts > block_state.ts)"
)
_INSERT_HISTORY = f"INSERT OR IGNORE INTO block_history ({_STATE_COLS13}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,{{ts}})"
_INSERT_OUTBOX = "INSERT INTO outbox (kind, key, rows, payload, created_at) VALUES (?, ?, ?, ?, ?)"
# the term row (meta key term_seen): only ever raised
_NOTE_TERM = (f"INSERT INTO meta (key, value) VALUES ('{TERM_KEY}', ?) ON CONFLICT (key) DO UPDATE SET "
              "value = excluded.value WHERE CAST(excluded.value AS INTEGER) > CAST(meta.value AS INTEGER)")


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """One outbox entry as the drain sees it; ``payload`` is decoded (msgpack)."""

    id: int
    kind: str
    key: str | None
    rows: int
    payload: Any
    created_at: float


def _pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def _unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, use_list=False, strict_map_key=False)


def _jsonable(details: Mapping[str, Any] | None) -> str:
    return json.dumps(dict(details or {}), separators=(",", ":"), default=str, allow_nan=False)


class LocalStore:
    """The node's SQLite store. Build it with ``await LocalStore.open(path, node=...)``."""

    def __init__(self, conn: aiosqlite.Connection, path: Path, *, node: str, outbox: bool) -> None:
        self._conn = conn
        self.path = path
        self.node = node
        self.outbox_enabled = outbox
        self._lock = asyncio.Lock()
        self._outbox_rows = 0
        self._delta = 0  # outbox rows added by the open transaction (see _tx)
        self._closed = False

    # -- life cycle ---------------------------------------------------------------------------

    @classmethod
    async def open(cls, path: str | os.PathLike[str], *, node: str = "", outbox: bool = True) -> LocalStore:
        """Open (create, migrate) the database at ``path``.

        ``node`` stamps the alerts and audit rows this store writes. ``outbox=False`` (no
        PostgreSQL configured) skips the outbox entirely. Raises :class:`SchemaTooNewError`
        when the file was migrated by a newer corec-node.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        conn = await aiosqlite.connect(path, isolation_level=None)
        try:
            await conn.execute("PRAGMA journal_mode=WAL")
            await conn.execute("PRAGMA synchronous=NORMAL")
            await conn.execute("PRAGMA busy_timeout=5000")
            await conn.execute("PRAGMA foreign_keys=ON")
            await migrate_sqlite(conn, CORE_SQLITE, database=f"SQLite database {path}", table="meta")
            store = cls(conn, path, node=node, outbox=outbox)
            async with conn.execute("SELECT coalesce(sum(rows), 0) FROM outbox") as cur:
                store._outbox_rows = int((await cur.fetchone())[0])
        except BaseException:
            await conn.close()
            raise
        return store

    @classmethod
    async def for_config(cls, config: Any) -> LocalStore:
        """From a :class:`corec_node.config.Config`: its sqlite_path and name; an outbox only
        when ``storage.postgres_dsn`` is set."""
        return await cls.open(config.sqlite_path, node=config.name, outbox=bool(config.storage.postgres_dsn))

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        async with self._lock:
            try:
                await self._conn.execute("PRAGMA optimize")
            finally:
                await self._conn.close()

    async def __aenter__(self) -> LocalStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @asynccontextmanager
    async def _tx(self) -> AsyncIterator[aiosqlite.Connection]:
        """One write transaction; coroutines take turns (one connection, one writer).

        Code inside adds to ``self._delta`` the outbox rows it adds (or removes); the in-memory
        count moves by it when the COMMIT has happened, even if the caller is cancelled meanwhile.
        """
        async with self._lock:
            await self._conn.execute("BEGIN IMMEDIATE")
            self._delta = 0
            try:
                yield self._conn
            except BaseException:
                await self._conn.rollback()
                raise
            delta = self._delta
            commit = asyncio.ensure_future(self._conn.commit())

            def committed(f: asyncio.Future[None]) -> None:
                if not f.cancelled() and f.exception() is None:
                    self._outbox_rows += delta

            commit.add_done_callback(committed)
            await asyncio.shield(commit)

    async def _fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        async with self._lock:
            async with self._conn.execute(sql, params) as cur:
                return list(await cur.fetchall())

    async def quick_check(self, budget: float | None = None) -> StoreCheck:
        """PRAGMA quick_check on a connection of its own, read-only (a WAL reader: the
        node's writes go on meanwhile), in a worker thread; ``budget`` in seconds."""
        return await asyncio.to_thread(check_store, self.path, budget=budget, readonly=True)

    async def backup(self, dest: str | os.PathLike[str]) -> Copied:
        """A consistent copy of the store at ``dest`` while the node keeps writing (SQLite's
        online backup API in one step, from a read-only connection; ``storage/backup.py``)."""
        return await asyncio.to_thread(copy_store, self.path, dest)

    async def schema_version(self) -> int:
        rows = await self._fetchall("SELECT value FROM meta WHERE key = 'schema_version'")
        return int(rows[0][0]) if rows else 0

    # -- block rows ------------------------------------------------------------------------------

    async def record_tick(self, rows: Iterable[Mapping[str, Any] | Sequence[Any]], ts: float | datetime) -> int:
        """Store one tick: block_state upserts, history rows and one outbox entry, in ONE transaction.

        ``rows`` are engine rows (see :mod:`corec_node.storage.rows`), ``ts`` the tick's wall
        time. Returns the number of rows. A row replayed with the same (block, owner, tick) is
        ignored by history and by the state rule.
        """
        when = to_epoch(ts)
        lit = repr(when)  # a float we formatted: safe as a literal, saves a 13th parameter per row

        rows = rows if isinstance(rows, Sequence) else list(rows)

        def prepare() -> tuple[list[Any], dict[str, int], bytes]:
            batch = normalize_rows(rows)
            top: dict[str, int] = {}
            for r in batch:
                if r[3] > top.get(r[2], -1):
                    top[r[2]] = r[3]
            if not (self.outbox_enabled and batch):
                return batch, top, b""
            # the placement epochs travel to PostgreSQL: its block_state rule orders owners by them
            return batch, top, _pack({"ts": when, "rows": batch, "epochs": tick_epochs(rows)})

        big = len(rows) > OFFLOAD_ROWS
        batch, top, payload = await asyncio.to_thread(prepare) if big else prepare()
        if not batch:
            return 0
        async with self._tx() as conn:
            await conn.executemany(_UPSERT_STATE.format(ts=lit), batch)
            await conn.executemany(_INSERT_HISTORY.format(ts=lit), batch)
            await conn.executemany(
                "INSERT INTO owner_ticks (owner, tick) VALUES (?, ?) "
                "ON CONFLICT (owner) DO UPDATE SET tick = max(tick, excluded.tick)",
                list(top.items()),
            )
            if self.outbox_enabled:
                await conn.execute(_INSERT_OUTBOX, ("history", None, len(batch), payload, time.time()))
                self._delta += len(batch)
        return len(batch)

    async def last_tick(self, owner: str) -> int | None:
        """The highest tick recorded for ``owner``: a restarted engine continues from it + 1."""
        rows = await self._fetchall("SELECT tick FROM owner_ticks WHERE owner = ?", (owner,))
        return int(rows[0][0]) if rows else None

    async def block_state(self, block: int | None = None) -> list[dict[str, Any]]:
        """Latest row per block (all blocks, or one), as dicts with ``ts``; NULL floats are None."""
        sql = f"SELECT {_STATE_COLS13} FROM block_state"
        rows = await (self._fetchall(sql + " WHERE block = ?", (block,)) if block is not None
                      else self._fetchall(sql + " ORDER BY block"))
        return [dict(zip((*BLOCK_COLUMNS, "ts"), r)) for r in rows]

    async def history(
        self, block: int, since: float | datetime | None = None, until: float | datetime | None = None
    ) -> list[dict[str, Any]]:
        """History rows of one block with ``since <= ts < until``, oldest first."""
        lo = to_epoch(since) if since is not None else -math.inf
        hi = to_epoch(until) if until is not None else math.inf
        rows = await self._fetchall(
            f"SELECT {_STATE_COLS13} FROM block_history WHERE block = ? AND ts >= ? AND ts < ? ORDER BY ts, owner, tick",
            (block, lo, hi),
        )
        return [dict(zip((*BLOCK_COLUMNS, "ts"), r)) for r in rows]

    async def history_count(self) -> int:
        return int((await self._fetchall("SELECT count(*) FROM block_history"))[0][0])

    async def prune_history(self, before: float | datetime, *, chunk: int = 10_000) -> int:
        """Delete local history older than ``before``, oldest first, in short transactions.

        Local history is a short window (a busy node writes blocks x ticks rows; PostgreSQL
        keeps the long record): call this now and then, e.g. every few minutes keeping an hour
        or a day. Walks rowid (arrival) order and stops at the first chunk holding a newer row.
        Returns rows deleted.
        """
        cutoff = to_epoch(before)
        total, last = 0, 0
        while True:
            async with self._tx() as conn:
                async with conn.execute(
                    "SELECT max(rowid), count(*) FROM "
                    "(SELECT rowid FROM block_history WHERE rowid > ? ORDER BY rowid LIMIT ?)", (last, chunk)
                ) as cur:
                    hi, n = await cur.fetchone()
                deleted = 0
                if n:
                    cur = await conn.execute(
                        "DELETE FROM block_history WHERE rowid > ? AND rowid <= ? AND ts < ?", (last, hi, cutoff))
                    deleted = cur.rowcount
            total += deleted
            if not n or deleted < n:
                return total
            last = hi

    # -- members ---------------------------------------------------------------------------------

    async def save_members(self, states: Iterable[MemberState]) -> None:
        """Replace the members snapshot (a hint for rejoining; not fsynced)."""
        now = time.time()
        rows = [(s.name, s.addr, s.pub, int(s.inc), MemberStatus(s.status).label) for s in states]
        async with self._tx() as conn:
            await conn.execute("DELETE FROM members")
            await conn.executemany(
                "INSERT INTO members (name, addr, pub, inc, status, updated_at) VALUES (?, ?, ?, ?, ?, ?)",
                [(*r, now) for r in rows],
            )
            if self.outbox_enabled:
                dropped = await self._replace_keyed(conn, "member", "members", len(rows),
                                                    _pack({"node": self.node, "ts": now, "members": rows}), now)
                self._delta += len(rows) - dropped

    async def load_members(self) -> list[MemberState]:
        rows = await self._fetchall("SELECT name, addr, pub, inc, status FROM members ORDER BY name")
        out = []
        for name, addr, pub, inc, status in rows:
            try:
                out.append(MemberState(name=name, addr=addr, pub=pub, inc=int(inc), status=MemberStatus[status.upper()]))
            except KeyError:
                continue  # a status this version does not know: the node rejoins by config
        return out

    # -- block genomes ----------------------------------------------------------------------------

    async def save_genomes(self, items: Iterable[tuple[int, str, Mapping[str, Any] | None]],
                           owned: Iterable[int] = ()) -> int:
        """Save genomes and forecaster states (``engine/adaptive.py``), replacing what was
        saved for the same blocks; others stay (a node that restarted and has not got its
        blocks back yet must not lose them). The genomes of the ``owned`` blocks also go
        to PostgreSQL (one coalesced outbox entry: the latest save). Returns how many."""
        now = time.time()
        items = list(items)
        rows = [(int(b), text, None if state is None else json.dumps(state, separators=(",", ":")), now)
                for b, text, state in items]
        mine = set(owned)
        genomes = [[int(b), text] for b, text, _ in items if b in mine]
        if rows:
            async with self._tx() as conn:
                await conn.executemany("INSERT OR REPLACE INTO block_genomes (block, genome, state, saved_at) "
                                       "VALUES (?, ?, ?, ?)", rows)
                if self.outbox_enabled and genomes:
                    payload = _pack({"node": self.node, "ts": now, "genomes": genomes})
                    self._delta += len(genomes) - await self._replace_keyed(conn, "genome", "genomes", len(genomes),
                                                                            payload, now)
        return len(rows)

    async def genome_save_times(self) -> dict[int, float]:
        """When each block's genome and state were saved (wall seconds): the restored
        forecasters' phase moves on by the ticks since (a block saved long ago, more)."""
        return {int(b): float(t) for b, t in await self._fetchall("SELECT block, saved_at FROM block_genomes")}

    async def load_genomes(self) -> list[tuple[int, str, dict[str, Any] | None]]:
        """What ``save_genomes`` kept: (block, genome JSON, forecaster state or None); a
        state that does not parse is None (the block warms up again)."""
        out = []
        for block, genome, state in await self._fetchall("SELECT block, genome, state FROM block_genomes ORDER BY block"):
            try:
                parsed = None if state is None else json.loads(state)
            except ValueError:
                parsed = None
            out.append((int(block), genome, parsed if isinstance(parsed, dict) else None))
        return out

    # -- intelligent blocks' weights ------------------------------------------------------------

    async def save_nano_weights(self, items: Iterable[tuple[int, bytes]]) -> int:
        """Save blocks' NanoNet states (``shell/intelligence.py``), replacing what was saved
        for the same blocks; others stay (as ``save_genomes``). Returns how many."""
        now = time.time()
        rows = [(int(b), bytes(blob), now) for b, blob in items]
        if rows:
            async with self._tx() as conn:
                await conn.executemany("INSERT OR REPLACE INTO nano_weights (block, weights, saved_at) "
                                       "VALUES (?, ?, ?)", rows)
        return len(rows)

    async def load_nano_weights(self) -> dict[int, bytes]:
        """What ``save_nano_weights`` kept: block -> its saved bytes."""
        return {int(b): bytes(w) for b, w in await self._fetchall("SELECT block, weights FROM nano_weights")}

    # -- alerts and audit ------------------------------------------------------------------------

    async def add_alert(
        self, kind: str, message: str, *, severity: str = "warning", block: int | None = None,
        details: Mapping[str, Any] | None = None, ts: float | datetime | None = None,
        uid: str | None = None, node: str | None = None,
    ) -> str:
        """Record an alert; returns its uid (the key that makes its PostgreSQL copy idempotent).
        ``uid`` and ``node``: a peer's alert, under its raiser's uid and name; one already
        kept is not kept twice."""
        uid = uid or uuid.uuid4().hex
        when = to_epoch(ts) if ts is not None else time.time()
        det = _jsonable(details)
        async with self._tx() as conn:
            cur = await conn.execute(
                "INSERT OR IGNORE INTO alerts (uid, ts, kind, severity, block, message, details, node) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (uid, when, kind, severity, block, message, det, node),
            )
            if self.outbox_enabled and cur.rowcount == 1:
                payload = {"uid": uid, "ts": when, "node": node or self.node, "kind": kind, "severity": severity,
                           "block": block, "message": message, "details": det}
                await conn.execute(_INSERT_OUTBOX, ("alert", None, 1, _pack(payload), time.time()))
                self._delta += 1
        return uid

    async def add_audit(
        self, kind: str, subject: str, reason: str, *, term: int | None = None,
        details: Mapping[str, Any] | None = None, ts: float | datetime | None = None,
    ) -> str:
        """Record a repair, fusion, leader change, placement change...; returns its uid.

        With ``term`` it is a nucleus decision and is fenced: :class:`StaleTermError` if the
        term is older than the highest this node has seen (nucleus or vote), and nothing is written.
        """
        uid = uuid.uuid4().hex
        when = to_epoch(ts) if ts is not None else time.time()
        det = _jsonable(details)
        async with self._tx() as conn:
            if term is not None:
                await self._fence(conn, int(term))
                await conn.execute(_NOTE_TERM, (str(int(term)),))
            await conn.execute(
                "INSERT INTO audit (uid, ts, kind, subject, reason, term, details) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (uid, when, kind, subject, reason, term, det),
            )
            if self.outbox_enabled:
                payload = {"uid": uid, "ts": when, "node": self.node, "kind": kind, "subject": subject,
                           "reason": reason, "term": term, "details": det}
                await conn.execute(_INSERT_OUTBOX, ("audit", None, 1, _pack(payload), time.time()))
                self._delta += 1
        return uid

    async def alerts(self, since: float | datetime | None = None) -> list[dict[str, Any]]:
        lo = to_epoch(since) if since is not None else -math.inf
        rows = await self._fetchall(
            "SELECT uid, ts, kind, severity, block, message, details, node FROM alerts WHERE ts >= ? ORDER BY id", (lo,))
        keys = ("uid", "ts", "kind", "severity", "block", "message", "details")
        return [{**dict(zip(keys, r)), "details": json.loads(r[6]), "node": r[7] or self.node} for r in rows]

    async def audit(self, since: float | datetime | None = None, kind: str | None = None,
                    subject: str | None = None) -> list[dict[str, Any]]:
        lo = to_epoch(since) if since is not None else -math.inf
        sql = "SELECT uid, ts, kind, subject, reason, term, details FROM audit WHERE ts >= ?"
        params: list[Any] = [lo]
        if kind is not None:
            sql += " AND kind = ?"
            params.append(kind)
        if subject is not None:
            sql += " AND subject = ?"
            params.append(subject)
        rows = await self._fetchall(sql + " ORDER BY id", params)
        keys = ("uid", "ts", "kind", "subject", "reason", "term", "details")
        return [{**dict(zip(keys, r)), "details": json.loads(r[6])} for r in rows]

    # -- election and nucleus (fenced) ---------------------------------------------------------

    async def save_vote(self, term: int, voted_for: str | None) -> None:
        """Durably record the vote (fsynced before returning): send the vote only after this.

        Refuses (StaleTermError) a term lower than the stored one, and a second, different
        vote in the same term: a restarted node cannot vote twice in one term.
        """
        async with self._lock:
            await self._conn.execute("PRAGMA synchronous=FULL")
            try:
                await self._conn.execute("BEGIN IMMEDIATE")
                try:
                    async with self._conn.execute("SELECT term, voted_for FROM election WHERE id = 1") as cur:
                        old_term, old_vote = await cur.fetchone()
                    if term < old_term:
                        raise StaleTermError(term, old_term, f"SQLite database {self.path}", "vote")
                    if term == old_term and old_vote is not None and voted_for != old_vote:
                        raise StaleTermError(term, old_term, f"SQLite database {self.path}",
                                             f"already voted for {old_vote!r} in term {term}")
                    await self._conn.execute("UPDATE election SET term = ?, voted_for = ? WHERE id = 1",
                                             (int(term), voted_for))
                except BaseException:
                    await self._conn.rollback()
                    raise
                await self._conn.commit()  # synchronous=FULL: the WAL is fsynced before this returns
            finally:
                await self._conn.execute("PRAGMA synchronous=NORMAL")

    async def load_vote(self) -> tuple[int, str | None]:
        term, voted = (await self._fetchall("SELECT term, voted_for FROM election WHERE id = 1"))[0]
        return int(term), voted

    async def nucleus(self) -> tuple[int, str | None]:
        """(highest nucleus term recorded here, its leader or None)."""
        term, leader = (await self._fetchall("SELECT term, leader FROM nucleus WHERE id = 1"))[0]
        return int(term), leader

    async def note_term(self, term: int) -> None:
        """Raise the term row to ``term`` (never lowers it). Every write that carries a term
        (an audit row with one, a nucleus or placement record) raises it too, so it holds
        the highest term this node acknowledged: a vote file found older than it at start
        is not trusted (``shell/datacheck.py``)."""
        async with self._tx() as conn:
            await conn.execute(_NOTE_TERM, (str(int(term)),))

    async def highest_term(self) -> int:
        """The highest term recorded here: the term row, the election row, the nucleus."""
        rows = await self._fetchall(
            f"SELECT max(coalesce((SELECT CAST(value AS INTEGER) FROM meta WHERE key = '{TERM_KEY}'), 0), "
            "(SELECT term FROM election WHERE id = 1), (SELECT term FROM nucleus WHERE id = 1))")
        return int(rows[0][0])

    async def _fence(self, conn: aiosqlite.Connection, term: int) -> tuple[int, str | None]:
        """Inside a write transaction: refuse a term below the highest seen (nucleus or vote)."""
        async with conn.execute(
            "SELECT n.term, n.leader, e.term FROM nucleus n, election e WHERE n.id = 1 AND e.id = 1"
        ) as cur:
            n_term, leader, e_term = await cur.fetchone()
        highest = max(n_term, e_term)
        if term < highest:
            raise StaleTermError(term, highest, f"SQLite database {self.path}")
        return n_term, leader

    async def record_nucleus(self, term: int, leader: str, ts: float | datetime | None = None) -> bool:
        """Record ``leader`` as nucleus of ``term`` (fenced). Returns False when already recorded.

        Raises StaleTermError for an older term, or for this term with another leader recorded.
        """
        when = to_epoch(ts) if ts is not None else time.time()
        async with self._tx() as conn:
            n_term, n_leader = await self._fence(conn, int(term))
            if term == n_term and n_leader is not None:
                if n_leader == leader:
                    return False
                raise StaleTermError(term, n_term, f"SQLite database {self.path}",
                                     f"term {term} already has leader {n_leader!r}")
            await conn.execute("UPDATE nucleus SET term = ?, leader = ?, updated_at = ? WHERE id = 1",
                               (int(term), leader, when))
            await conn.execute(_NOTE_TERM, (str(int(term)),))
            if self.outbox_enabled:
                payload = {"op": "leader", "term": int(term), "leader": leader, "ts": when}
                await conn.execute(_INSERT_OUTBOX, ("nucleus", None, 1, _pack(payload), time.time()))
                self._delta += 1
        return True

    async def record_placement(
        self, term: int, placements: Mapping[int, str] | Iterable[tuple[int, str]], ts: float | datetime | None = None
    ) -> int:
        """Confirm block -> owner placements decided by the nucleus of ``term`` (fenced)."""
        when = to_epoch(ts) if ts is not None else time.time()
        items = list(placements.items()) if isinstance(placements, Mapping) else list(placements)
        pairs = [(int(b), str(o)) for b, o in items]
        async with self._tx() as conn:
            await self._fence(conn, int(term))
            await conn.execute(_NOTE_TERM, (str(int(term)),))
            await conn.executemany(
                "INSERT INTO placement (block, owner, term, updated_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (block) DO UPDATE SET owner = excluded.owner, term = excluded.term, "
                "updated_at = excluded.updated_at WHERE excluded.term >= placement.term",
                [(b, o, int(term), when) for b, o in pairs],
            )
            if self.outbox_enabled:
                payload = {"op": "placement", "term": int(term), "ts": when, "placements": pairs}
                await conn.execute(_INSERT_OUTBOX, ("nucleus", None, 1, _pack(payload), time.time()))
                self._delta += 1
        return len(pairs)

    async def placement(self) -> dict[int, tuple[str, int]]:
        rows = await self._fetchall("SELECT block, owner, term FROM placement")
        return {int(b): (o, int(t)) for b, o, t in rows}

    # -- outbox ------------------------------------------------------------------------------------

    @property
    def outbox_rows(self) -> int:
        """Block rows (plus one per other entry) waiting in the outbox; kept in memory, exact."""
        return self._outbox_rows

    async def outbox_size(self) -> int:
        return self._outbox_rows

    async def outbox_oldest(self) -> float | None:
        """created_at of the oldest entry (wall time), None when the outbox is empty."""
        rows = await self._fetchall("SELECT created_at FROM outbox ORDER BY id LIMIT 1")
        return float(rows[0][0]) if rows else None

    async def outbox_batch(self, limit: int = 5000, *, after: int = 0) -> list[OutboxItem]:
        """The oldest entries with an id above ``after``, in order, up to ``limit`` block rows
        (always at least one entry). ``after``: the last id of a batch still in flight, so a
        pipelined drain reads the next batch before the previous one is deleted."""
        async with self._lock:
            async with self._conn.execute(
                "SELECT id, rows FROM outbox WHERE id > ? ORDER BY id LIMIT ?", (after, BATCH_SCAN)
            ) as cur:
                heads = await cur.fetchall()
            if not heads:
                if not after:
                    self._outbox_rows = 0  # self-healing: an empty outbox holds nothing, whatever was counted
                return []
            last, total = heads[0][0], 0
            for i, n in heads:
                if total and total + n > limit:
                    break
                last, total = i, total + n
            async with self._conn.execute(
                "SELECT id, kind, key, rows, payload, created_at FROM outbox WHERE id > ? AND id <= ? ORDER BY id",
                (after, last),
            ) as cur:
                fetched = await cur.fetchall()

        def decode() -> list[OutboxItem]:
            return [OutboxItem(i, k, key, n, _unpack(p), c) for i, k, key, n, p, c in fetched]

        return await asyncio.to_thread(decode) if total > OFFLOAD_ROWS else decode()

    async def outbox_delete(self, ids: Iterable[int]) -> int:
        """Delete entries by id (after PostgreSQL committed them); returns block rows removed."""
        idl = [(int(i),) for i in ids]
        if not idl:
            return 0
        async with self._tx() as conn:
            removed = 0
            for start in range(0, len(idl), 500):
                part = [i for (i,) in idl[start:start + 500]]
                marks = ",".join("?" * len(part))
                async with conn.execute(f"SELECT coalesce(sum(rows), 0) FROM outbox WHERE id IN ({marks})", part) as cur:
                    removed += int((await cur.fetchone())[0])
                await conn.execute(f"DELETE FROM outbox WHERE id IN ({marks})", part)
            self._delta -= removed
        return removed

    async def quarantine(self, item: OutboxItem, error: str) -> None:
        """Move an entry PostgreSQL rejects as bad data to ``outbox_dead`` (kept for a human)."""
        async with self._tx() as conn:
            async with conn.execute("SELECT rows FROM outbox WHERE id = ?", (item.id,)) as cur:
                row = await cur.fetchone()
            if row is None:
                return
            await conn.execute(
                "INSERT OR REPLACE INTO outbox_dead (id, kind, key, rows, payload, created_at, failed_at, error) "
                "SELECT id, kind, key, rows, payload, created_at, ?, ? FROM outbox WHERE id = ?",
                (time.time(), error[:2000], item.id),
            )
            await conn.execute("DELETE FROM outbox WHERE id = ?", (item.id,))
            self._delta -= int(row[0])

    async def dead_letters(self) -> list[dict[str, Any]]:
        rows = await self._fetchall("SELECT id, kind, key, rows, created_at, failed_at, error FROM outbox_dead ORDER BY id")
        return [dict(zip(("id", "kind", "key", "rows", "created_at", "failed_at", "error"), r)) for r in rows]

    async def trim_outbox(self, max_rows: int) -> int:
        """Keep the outbox under ``max_rows`` block rows by dropping the OLDEST history entries.

        Never drops state, alerts, audit, members or nucleus entries. When history is dropped,
        the ``state`` snapshot entry is rewritten from the local block_state, so PostgreSQL
        still gets the latest state of every block. Returns the history rows dropped (0 when
        under the limit); the caller logs and counts them. ``max_rows`` should exceed the
        number of blocks, or the snapshot alone keeps the outbox over it.
        """
        if self._outbox_rows <= max_rows:
            return 0
        async with self._tx() as conn:
            excess = self._outbox_rows - max_rows
            dropped, last = 0, None
            async with conn.execute("SELECT id, rows FROM outbox WHERE kind = 'history' ORDER BY id") as cur:
                while dropped < excess:
                    chunk = await cur.fetchmany(256)
                    if not chunk:
                        break
                    for i, n in chunk:
                        last, dropped = i, dropped + n
                        if dropped >= excess:
                            break
            if last is None:
                return 0
            await conn.execute("DELETE FROM outbox WHERE kind = 'history' AND id <= ?", (last,))
            async with conn.execute(f"SELECT {_STATE_COLS13} FROM block_state ORDER BY block") as cur:
                snapshot = [tuple(r) for r in await cur.fetchall()]
            now = time.time()
            old = await self._replace_keyed(conn, "state", "snapshot", len(snapshot), _pack({"rows": snapshot}), now)
            self._delta += len(snapshot) - old - dropped
        return dropped

    async def _replace_keyed(self, conn: aiosqlite.Connection, kind: str, key: str, rows: int,
                             payload: bytes, now: float) -> int:
        """Replace the coalesced entry (kind, key) with a new id; returns the rows it carried."""
        async with conn.execute("SELECT coalesce(sum(rows), 0) FROM outbox WHERE kind = ? AND key = ?", (kind, key)) as cur:
            old = int((await cur.fetchone())[0])
        await conn.execute("DELETE FROM outbox WHERE kind = ? AND key = ?", (kind, key))
        await conn.execute(_INSERT_OUTBOX, (kind, key, rows, payload, now))
        return old
