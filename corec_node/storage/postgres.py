"""PostgresSync: the optional PostgreSQL target (asyncpg pool), written to by the outbox drain.

Rules:

1. One outbox batch is one transaction. Block rows go through a binary COPY into a per-connection
   temporary staging table, then one ``INSERT .. SELECT`` into ``block_history`` (ON CONFLICT DO
   NOTHING on ``(block, owner, tick, ts)``) and one upsert into ``block_state``.
2. ``block_state`` only moves forward (:func:`corec_node.storage.rows.newer`), and no host's
   clock decides how: same owner, a higher tick; another owner, a placement ``epoch`` at least
   as high (the stored ``epoch`` of an owner's row is the highest it wrote for the block).
   ``updated_at`` is the owner's wall time of the tick, kept for people, never compared. A
   replayed row of the stored owner changes nothing, so replaying an old outbox is a no-op.
   :meth:`PostgresSync.max_epoch` is the floor a starting node raises its epoch to, so that a
   node alone in a new cluster still outranks rows left by nodes that are gone.
3. ``block_history`` is partitioned by day (UTC) on ``ts``. Partitions are created ahead
   (yesterday .. today + ``partitions_ahead``) at connect and by :meth:`maintain`, and on demand
   before a batch whose rows fall outside them (under an advisory lock, IF NOT EXISTS).
4. Fencing: a nucleus write (leader of a term, placement, audit with a term) first locks the one
   ``nucleus`` row (``SELECT .. FOR UPDATE``) and is refused when its term is below the stored
   term, or equal with another leader recorded. Direct calls raise :class:`StaleTermError`; in a
   drained batch the refused entry is skipped and reported (the rest of the batch commits).
5. Alerts and audit rows carry a uuid made by the node: ON CONFLICT DO NOTHING. Members merge
   by ``(inc, rank)``, which only grows, so any order of snapshots from any node converges.
6. Several batch transactions may be in flight at once, each on its own pooled connection
   (:meth:`PostgresSync.write_batches`, the Syncer's ``pipeline``): their commits share WAL
   flushes and this process encodes the next batch while the server works. Both statements read
   the staging table ``ORDER BY`` the key, so concurrent transactions take row locks in the same
   order and cannot deadlock. Whichever commits last, rule 2 keeps the newest state and history
   keeps each row once (rule 1).
"""

from __future__ import annotations

import asyncio
import json
import struct
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from corec_node.storage.errors import StaleTermError
from corec_node.storage.local import OutboxItem
from corec_node.storage.migrations import CORE_POSTGRES, migrate_postgres, quote_ident
from corec_node.storage.rows import (
    EPOCH_INDEX,
    TS,
    Row,
    epoch_us,
    latest_per_block,
    row_epoch,
    to_datetime,
    to_epoch,
    utc_day,
)

OFFLOAD_ROWS = 2_000  # a batch above this many block rows is prepared in a worker thread
PIPELINE = 2  # batch transactions in flight at once (rule 6); 1: one after the other
PARTITIONS_AHEAD = 3  # days of history partitions kept ready: a node clock a little ahead still has one
PARTITION_PREFIX = "block_history_p"
STATUS_RANK = {"alive": 0, "suspect": 1, "dead": 2, "left": 3}  # mesh rule 2, at equal incarnation

_PG_EPOCH_US = 946_684_800 * 1_000_000  # 2000-01-01, the zero of PostgreSQL's binary timestamps

STAGE = "corec_stage"
_STAGE_DDL = f"""
CREATE TEMP TABLE IF NOT EXISTS {STAGE} (
    block bigint, channel smallint, tick bigint, count integer, active integer,
    mean double precision, min double precision, max double precision, std double precision,
    error_rate double precision, fitness double precision,
    ts timestamptz, hist boolean, latest boolean, epoch bigint, owner text
) ON COMMIT DELETE ROWS
"""
_STAGE_NFIELDS = 16

_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
_COPY_TRAILER = struct.pack(">h", -1)
# every field but owner, all floats present: the common case packs in one call
_ROW_FAST = struct.Struct(">h" + "iq" + "ih" + "iq" + "ii" + "ii" + "id" * 6 + "iq" + "iB" + "iB" + "iq" + "i")
_I8, _I2, _I4, _F8, _B = (struct.Struct(">iq"), struct.Struct(">ih"), struct.Struct(">ii"),
                          struct.Struct(">id"), struct.Struct(">iB"))
_NULL = struct.pack(">i", -1)


def encode_stage(rows: Sequence[Row], hist: Sequence[bool], latest: set[int]) -> bytes:
    """Binary COPY data for the staging table from 13-field rows (ts in epoch seconds) or
    14-field rows (ts, then the placement epoch)."""
    out = [_COPY_HEADER]
    append = out.append
    pack = _ROW_FAST.pack
    owners: dict[str, bytes] = {}
    for i, r in enumerate(rows):
        ob = owners.get(r[2])
        if ob is None:
            ob = owners[r[2]] = r[2].encode()
        ts = epoch_us(r[TS]) - _PG_EPOCH_US
        ep = r[EPOCH_INDEX] if len(r) > EPOCH_INDEX else 0
        if None not in r:
            append(pack(_STAGE_NFIELDS, 8, r[0], 2, r[1], 8, r[3], 4, r[4], 4, r[5],
                        8, r[6], 8, r[7], 8, r[8], 8, r[9], 8, r[10], 8, r[11],
                        8, ts, 1, hist[i], 1, i in latest, 8, ep, len(ob)))
        else:
            parts = [struct.pack(">h", _STAGE_NFIELDS), _I8.pack(8, r[0]), _I2.pack(2, r[1]),
                     _I8.pack(8, r[3]), _I4.pack(4, r[4]), _I4.pack(4, r[5])]
            parts += [_NULL if v is None else _F8.pack(8, v) for v in r[6:12]]
            parts += [_I8.pack(8, ts), _B.pack(1, hist[i]), _B.pack(1, i in latest), _I8.pack(8, ep),
                      struct.pack(">i", len(ob))]
            append(b"".join(parts))
        append(ob)
    append(_COPY_TRAILER)
    return b"".join(out)


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


def describe_dsn(dsn: str) -> str:
    """host:port/db of a DSN, without user or password, for messages."""
    try:
        u = urlsplit(dsn)
        if u.scheme.startswith("postgres"):
            return f"{u.hostname or 'localhost'}:{u.port or 5432}{u.path or '/'}"
    except ValueError:
        pass
    return "(dsn)"


def _count(status: str) -> int:
    """Rows affected from a command tag such as 'INSERT 0 12'."""
    try:
        return int(status.rsplit(" ", 1)[-1])
    except (ValueError, IndexError):
        return 0


@dataclass(slots=True)
class ApplyResult:
    """What one drained batch did in PostgreSQL."""

    items: int = 0
    rows: int = 0  # block rows carried by the batch
    history_inserted: int = 0  # new history rows (a replay inserts 0)
    state_updated: int = 0  # block_state rows inserted or moved forward
    refused: list[tuple[int, str]] = field(default_factory=list)  # (outbox id, why) fenced and stale


def merge_results(results: Iterable[ApplyResult]) -> ApplyResult:
    """The sum of several batches' results."""
    out = ApplyResult()
    for r in results:
        out.items += r.items
        out.rows += r.rows
        out.history_inserted += r.history_inserted
        out.state_updated += r.state_updated
        out.refused += r.refused
    return out


class PostgresSync:
    """The core schema in PostgreSQL. Build it with ``await PostgresSync.connect(dsn, schema=...)``.

    Holds an asyncpg pool for the core only; plugins get their own (see plugin_store).
    """

    def __init__(self, pool: asyncpg.Pool, dsn: str, schema: str, *, partitions_ahead: int) -> None:
        self.pool = pool
        self.dsn = dsn
        self.schema = schema
        self.partitions_ahead = partitions_ahead
        self.database = f"PostgreSQL schema {schema!r} on {describe_dsn(dsn)}"
        self._s = quote_ident(schema)
        self._partitions: set[date] = set()
        self._partitions_loaded = False
        self._sql = self._statements(self._s)

    @classmethod
    async def connect(
        cls, dsn: str, *, schema: str = "corec", partitions_ahead: int = PARTITIONS_AHEAD,
        connect_timeout: float = 5.0, command_timeout: float = 30.0, max_size: int = 4,
    ) -> PostgresSync:
        """Connect, apply migrations, create the partitions ahead.

        Raises OSError / asyncpg errors / TimeoutError when the server does not answer, and
        :class:`SchemaTooNewError` when the schema was migrated by a newer corec-node.
        """
        quote_ident(schema)
        pool = await asyncpg.create_pool(
            dsn, min_size=1, max_size=max_size, timeout=connect_timeout, command_timeout=command_timeout,
            init=_init_connection, server_settings={"application_name": "corec-node"},
        )
        self = cls(pool, dsn, schema, partitions_ahead=partitions_ahead)
        try:
            async with pool.acquire() as conn:
                await migrate_postgres(conn, schema, CORE_POSTGRES, database=self.database)
            await self.maintain()
        except BaseException:
            pool.terminate()
            raise
        return self

    async def close(self, timeout: float = 5.0) -> None:
        try:
            await asyncio.wait_for(self.pool.close(), timeout)
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            self.pool.terminate()

    def terminate(self) -> None:
        self.pool.terminate()

    @staticmethod
    def _statements(s: str) -> dict[str, str]:
        cols = "block, channel, owner, tick, count, active, mean, min, max, std, error_rate, fitness"
        # rows.newer and rows.merged_epoch; updated_at (the owner's clock) is stored, never compared
        state_set = (", ".join(f"{c} = EXCLUDED.{c}" for c in cols.split(", ")[1:])
                     + ", updated_at = EXCLUDED.updated_at, epoch = CASE WHEN EXCLUDED.owner = t.owner "
                     "THEN greatest(EXCLUDED.epoch, t.epoch) ELSE EXCLUDED.epoch END")
        state_rule = ("WHERE (EXCLUDED.owner = t.owner AND EXCLUDED.tick > t.tick) "
                      "OR (EXCLUDED.owner <> t.owner AND EXCLUDED.epoch >= t.epoch)")
        return {
            "history": f"INSERT INTO {s}.block_history (ts, {cols}) SELECT ts, {cols} FROM pg_temp.{STAGE} "
                       "WHERE hist ORDER BY block, owner, tick, ts ON CONFLICT DO NOTHING",
            "state": f"INSERT INTO {s}.block_state AS t ({cols}, updated_at, epoch) SELECT {cols}, ts, epoch "
                     f"FROM pg_temp.{STAGE} WHERE latest ORDER BY block "
                     f"ON CONFLICT (block) DO UPDATE SET {state_set} {state_rule}",
            "state_values": f"INSERT INTO {s}.block_state AS t ({cols}, updated_at, epoch) VALUES "
                            "($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) "
                            f"ON CONFLICT (block) DO UPDATE SET {state_set} {state_rule}",
            "members": f"INSERT INTO {s}.members AS m (name, addr, pub, inc, status, rank, reported_by, updated_at) "
                       "VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (name) DO UPDATE SET "
                       "addr = EXCLUDED.addr, pub = EXCLUDED.pub, inc = EXCLUDED.inc, status = EXCLUDED.status, "
                       "rank = EXCLUDED.rank, reported_by = EXCLUDED.reported_by, updated_at = EXCLUDED.updated_at "
                       "WHERE EXCLUDED.inc > m.inc OR (EXCLUDED.inc = m.inc AND EXCLUDED.rank > m.rank)",
            "alert": f"INSERT INTO {s}.alerts (uid, ts, node, kind, severity, block, message, details) "
                     "VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb) ON CONFLICT (uid) DO NOTHING",
            "genome": f"INSERT INTO {s}.block_genomes AS g (block, channel, block_index, owner, genome_id, generation, "
                      "genome, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8) ON CONFLICT (block) DO UPDATE "
                      "SET owner = EXCLUDED.owner, genome_id = EXCLUDED.genome_id, generation = EXCLUDED.generation, "
                      "genome = EXCLUDED.genome, updated_at = EXCLUDED.updated_at "
                      "WHERE EXCLUDED.generation >= g.generation",
            "audit": f"INSERT INTO {s}.audit (uid, ts, node, kind, subject, reason, term, details) "
                     "VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb) ON CONFLICT (uid) DO NOTHING",
            "fence": f"SELECT term, leader FROM {s}.nucleus WHERE id = 1 FOR UPDATE",
            "leader": f"UPDATE {s}.nucleus SET term = $1, leader = $2, updated_at = $3 WHERE id = 1",
            "placement": f"INSERT INTO {s}.placement AS p (block, owner, term, updated_at) VALUES ($1, $2, $3, $4) "
                         "ON CONFLICT (block) DO UPDATE SET owner = EXCLUDED.owner, term = EXCLUDED.term, "
                         "updated_at = EXCLUDED.updated_at WHERE EXCLUDED.term >= p.term",
        }

    # -- partitions ------------------------------------------------------------------------------

    async def maintain(self, today: date | None = None) -> list[date]:
        """Create the daily history partitions from yesterday to today + partitions_ahead."""
        today = today or datetime.now(timezone.utc).date()
        days = [today + timedelta(days=d) for d in range(-1, self.partitions_ahead + 1)]
        return await self.ensure_partitions(days)

    async def ensure_partitions(self, days: Iterable[date]) -> list[date]:
        """Create the partitions of these UTC days that do not exist yet; returns those created."""
        wanted = set(days) - self._partitions
        if not wanted:
            return []
        async with self.pool.acquire() as conn:
            if not self._partitions_loaded:
                self._partitions |= await self._existing_partitions(conn)
                self._partitions_loaded = True
                wanted -= self._partitions
                if not wanted:
                    return []
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"corec-partition:{self.schema}")
                for day in sorted(wanted):
                    nxt = day + timedelta(days=1)
                    await conn.execute(
                        f"CREATE TABLE IF NOT EXISTS {self._s}.{PARTITION_PREFIX}{day:%Y%m%d} "
                        f"PARTITION OF {self._s}.block_history "
                        f"FOR VALUES FROM ('{day.isoformat()} 00:00:00+00') TO ('{nxt.isoformat()} 00:00:00+00')"
                    )
        self._partitions |= wanted
        return sorted(wanted)

    async def _existing_partitions(self, conn: Any) -> set[date]:
        names = await conn.fetch(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = to_regclass($1)", f"{self._s}.block_history")
        out = set()
        for (name,) in names:
            if name.startswith(PARTITION_PREFIX):
                try:
                    out.add(datetime.strptime(name[len(PARTITION_PREFIX):], "%Y%m%d").date())
                except ValueError:
                    continue
        return out

    async def partitions(self) -> list[date]:
        async with self.pool.acquire() as conn:
            return sorted(await self._existing_partitions(conn))

    async def drop_partitions_before(self, day: date) -> list[date]:
        """Retention: drop whole history partitions of days before ``day``; returns them."""
        async with self.pool.acquire() as conn:
            old = sorted(d for d in await self._existing_partitions(conn) if d < day)
            async with conn.transaction():
                for d in old:
                    await conn.execute(f"DROP TABLE IF EXISTS {self._s}.{PARTITION_PREFIX}{d:%Y%m%d}")
        self._partitions -= set(old)
        return old

    # -- block rows --------------------------------------------------------------------------------

    async def _write_stage(self, conn: Any, stage: bytes, history: bool, result: ApplyResult) -> None:
        """Inside a transaction: COPY into staging, then history insert + state upsert."""
        await conn.copy_to_table(STAGE, source=_one(stage), schema_name="pg_temp", format="binary")
        if history:
            result.history_inserted += _count(await conn.execute(self._sql["history"]))
        result.state_updated += _count(await conn.execute(self._sql["state"]))

    async def write_rows(self, rows: Sequence[Row], *, history: bool = True) -> ApplyResult:
        """COPY + upsert 13- or 14-field rows (ts, then the placement epoch) in one transaction;
        ``history=False``: state only."""
        rows = list(rows)
        result = ApplyResult(items=0, rows=len(rows))
        if not rows:
            return result
        if history:
            await self.ensure_partitions(_days(rows))
        stage = encode_stage(rows, [history] * len(rows), set(latest_per_block(rows).values()))
        async with self.pool.acquire() as conn, conn.transaction():
            await self._write_stage(conn, stage, history, result)
        return result

    async def write_batches(self, batches: Iterable[Sequence[Row]], *, history: bool = True,
                            pipeline: int = PIPELINE) -> ApplyResult:
        """:meth:`write_rows` for each batch, one transaction each, up to ``pipeline`` in flight (rule 6).

        A failure cancels the batches not yet committed and raises; the committed ones stay.
        """
        gate = asyncio.Semaphore(max(1, pipeline))

        async def one(rows: Sequence[Row]) -> ApplyResult:
            async with gate:
                return await self.write_rows(rows, history=history)

        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(one(b)) for b in batches]
        return merge_results(t.result() for t in tasks)

    async def upsert_state_executemany(self, rows: Sequence[Row]) -> None:
        """block_state upsert with executemany, one transaction (the bench's comparison path)."""
        dt_cache: dict[float, datetime] = {}
        args = []
        for r in rows:
            ts = dt_cache.get(r[TS])
            if ts is None:
                ts = dt_cache[r[TS]] = to_datetime(r[TS])
            args.append((*r[:12], ts, row_epoch(r)))
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.executemany(self._sql["state_values"], args)

    # -- the drain ---------------------------------------------------------------------------------

    async def apply(self, items: Sequence[OutboxItem]) -> ApplyResult:
        """Write a batch of outbox entries in ONE transaction; commit, then return what it did.

        Stale fenced entries are skipped and listed in ``refused``. Bad data raises
        (ValueError, TypeError, struct.error, asyncpg.DataError...) and nothing commits.
        """
        result = ApplyResult(items=len(items), rows=sum(i.rows for i in items))
        # decoding and COPY encoding are CPU work: a big batch does it in a thread, off the loop
        prep = await asyncio.to_thread(_prepare, items) if result.rows > OFFLOAD_ROWS else _prepare(items)
        if prep.days:
            await self.ensure_partitions(prep.days)
        async with self.pool.acquire() as conn, conn.transaction():
            if prep.stage:
                await self._write_stage(conn, prep.stage, prep.has_history, result)
            if prep.members:
                await conn.executemany(self._sql["members"], prep.members)
            if prep.alerts:
                await conn.executemany(self._sql["alert"], prep.alerts)
            if prep.audits:
                await conn.executemany(self._sql["audit"], prep.audits)
            if prep.genomes:
                await conn.executemany(self._sql["genome"], prep.genomes)
            if prep.fenced:
                term, leader = await conn.fetchrow(self._sql["fence"])
                for item_id, op in prep.fenced:
                    why, term, leader = await self._fenced_op(conn, op, term, leader)
                    if why:
                        result.refused.append((item_id, why))
        return result

    async def _fenced_op(self, conn: Any, op: Mapping[str, Any], term: int, leader: str | None
                         ) -> tuple[str, int, str | None]:
        """Apply one fenced op under the locked nucleus row; returns (refusal or '', term, leader)."""
        t = int(op["term"])
        if t < term:
            return f"term {t} below the highest term {term}", term, leader
        if op["_kind"] == "audit":
            await conn.execute(self._sql["audit"], *_audit_args(op))
        elif op["op"] == "leader":
            if t == term and leader is not None:
                if leader != op["leader"]:
                    return f"term {t} already has leader {leader!r}", term, leader
                return "", term, leader  # already recorded: a replay
            await conn.execute(self._sql["leader"], t, op["leader"], to_datetime(float(op["ts"])))
            return "", t, op["leader"]
        elif op["op"] == "placement":
            when = to_datetime(float(op["ts"]))
            await conn.executemany(self._sql["placement"], [(int(b), str(o), t, when) for b, o in op["placements"]])
        else:
            raise ValueError(f"unknown nucleus op {op['op']!r}")
        return "", term, leader

    # -- direct fenced writes (raise StaleTermError) ---------------------------------------------

    async def _fenced_call(self, op: dict[str, Any]) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            term, leader = await conn.fetchrow(self._sql["fence"])
            why, _, _ = await self._fenced_op(conn, op, term, leader)
            if why:
                raise StaleTermError(int(op["term"]), int(term), self.database, why)

    async def record_nucleus(self, term: int, leader: str, ts: float | datetime | None = None) -> None:
        """Record ``leader`` as nucleus of ``term``; StaleTermError for an older term or another leader."""
        when = to_epoch(ts) if ts is not None else time.time()
        await self._fenced_call({"_kind": "nucleus", "op": "leader", "term": int(term), "leader": leader, "ts": when})

    async def record_placement(self, term: int, placements: Mapping[int, str] | Iterable[tuple[int, str]],
                               ts: float | datetime | None = None) -> None:
        when = to_epoch(ts) if ts is not None else time.time()
        pairs = list(placements.items()) if isinstance(placements, Mapping) else list(placements)
        await self._fenced_call({"_kind": "nucleus", "op": "placement", "term": int(term), "ts": when,
                                 "placements": pairs})

    async def record_audit(self, kind: str, subject: str, reason: str, *, term: int, node: str = "",
                           details: Mapping[str, Any] | None = None, ts: float | datetime | None = None) -> str:
        """A fenced audit row written straight to PostgreSQL; returns its uid."""
        uid = uuid.uuid4().hex
        when = to_epoch(ts) if ts is not None else time.time()
        await self._fenced_call({"_kind": "audit", "uid": uid, "ts": when, "node": node, "kind": kind,
                                 "subject": subject, "reason": reason, "term": int(term),
                                 "details": json.dumps(dict(details or {}), default=str)})
        return uid

    async def nucleus(self) -> tuple[int, str | None]:
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(f"SELECT term, leader FROM {self._s}.nucleus WHERE id = 1")
        return int(row["term"]), row["leader"]

    async def max_epoch(self) -> int:
        """The highest placement epoch in ``block_state`` (0 when empty): the floor for a node's own."""
        async with self.pool.acquire() as conn:
            return int(await conn.fetchval(f"SELECT coalesce(max(epoch), 0) FROM {self._s}.block_state"))


@dataclass(slots=True)
class _Prepared:
    """A batch decoded and encoded, ready for one transaction."""

    stage: bytes = b""  # binary COPY data, empty when the batch has no block rows
    has_history: bool = False
    days: list[date] = field(default_factory=list)  # UTC days of its history rows
    members: list[tuple[Any, ...]] = field(default_factory=list)
    alerts: list[tuple[Any, ...]] = field(default_factory=list)
    audits: list[tuple[Any, ...]] = field(default_factory=list)
    fenced: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    genomes: list[tuple[Any, ...]] = field(default_factory=list)


def _days(rows: Iterable[Row]) -> list[date]:
    return [utc_day(d * 86_400) for d in {int(r[TS] // 86_400) for r in rows}]


def _prepare(items: Sequence[OutboxItem]) -> _Prepared:
    """Pure CPU: outbox entries to staging bytes and statement arguments (raises on bad data)."""
    prep = _Prepared()
    rows: list[Row] = []
    hist: list[bool] = []
    for item in items:
        p = item.payload
        if item.kind == "history":
            ts = float(p["ts"])
            epochs = p.get("epochs", 0)  # absent: written before rows carried one
            if isinstance(epochs, int):
                rows.extend((*r, ts, epochs) for r in p["rows"])
            else:
                if len(epochs) != len(p["rows"]):
                    raise ValueError(f"outbox entry {item.id}: {len(epochs)} epochs for {len(p['rows'])} rows")
                rows.extend((*r, ts, int(e)) for r, e in zip(p["rows"], epochs))
            hist.extend([True] * len(p["rows"]))
            prep.has_history = True
        elif item.kind == "state":
            rows.extend(tuple(r) for r in p["rows"])
            hist.extend([False] * len(p["rows"]))
        elif item.kind == "member":
            when = to_datetime(float(p["ts"]))
            for name, addr, pub, inc, status in p["members"]:
                prep.members.append((name, addr, pub, int(inc), status, STATUS_RANK[status], p["node"], when))
        elif item.kind == "alert":
            prep.alerts.append((uuid.UUID(p["uid"]), to_datetime(float(p["ts"])), p["node"], p["kind"],
                                p["severity"], p["block"], p["message"], p["details"]))
        elif item.kind == "audit" and p.get("term") is None:
            prep.audits.append(_audit_args(p))
        elif item.kind == "genome":
            when = to_datetime(float(p["ts"]))
            for block, text in p["genomes"]:
                g = json.loads(text)
                block = int(block)
                prep.genomes.append((block, block >> 32, block & 0xFFFFFFFF, p["node"], str(g["id"]),
                                     int(g["generation"]), text, when))
        elif item.kind in ("audit", "nucleus"):
            prep.fenced.append((item.id, {**p, "_kind": item.kind}))
        else:
            raise ValueError(f"outbox entry {item.id}: unknown kind {item.kind!r}")
    if rows:
        if prep.has_history:
            prep.days = _days(r for r, h in zip(rows, hist) if h)
        prep.stage = encode_stage(rows, hist, set(latest_per_block(rows).values()))
    return prep


def _audit_args(p: Mapping[str, Any]) -> tuple[Any, ...]:
    return (uuid.UUID(p["uid"]), to_datetime(float(p["ts"])), p["node"], p["kind"], p["subject"],
            p["reason"], None if p.get("term") is None else int(p["term"]), p["details"])


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.execute(_STAGE_DDL)
