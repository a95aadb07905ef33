"""Versioned schema migrations for SQLite and PostgreSQL, applied at start.

Rules:

1. Migrations are append-only: version N is the N-th entry of its list, and a released entry is
   never edited (a fix is a new entry). The version a database is at is recorded in it.
2. Applying is idempotent: a database at the newest version is left untouched.
3. A database at a version newer than the list raises :class:`SchemaTooNewError` before anything
   is written: an older node must not write into a schema it does not understand.
4. SQLite: each migration runs in one ``BEGIN IMMEDIATE`` transaction with its version bump.
   Version table: ``meta`` (key ``schema_version``) for the core, ``corec_plugin_meta`` for a
   plugin file.
5. PostgreSQL: every pending migration runs in one transaction under an advisory lock on the
   schema name, so nodes starting together migrate once. Version table: ``schema_migrations``
   inside the schema. Core SQL names the schema as ``{s}``; plugin SQL is unqualified and runs
   with ``search_path`` set to the plugin's schema only.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiosqlite

from corec_node.storage.errors import SchemaTooNewError

IDENT_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    description: str
    sql: str


def numbered(statements: Sequence[str], prefix: str = "migration") -> list[Migration]:
    """A plugin's list of SQL strings as migrations 1..N."""
    return [Migration(i + 1, f"{prefix} {i + 1}", sql) for i, sql in enumerate(statements)]


def quote_ident(name: str) -> str:
    """Double-quote a name we validated ourselves (lower-case letters, digits, underscore)."""
    if not IDENT_RE.match(name):
        raise ValueError(f"not a valid schema or table name: {name!r} (use a-z, 0-9, _; at most 63)")
    return f'"{name}"'


def _check_list(migrations: Sequence[Migration]) -> None:
    for i, m in enumerate(migrations):
        if m.version != i + 1:
            raise ValueError(f"migration list out of order: entry {i} has version {m.version}")


# -- SQLite ---------------------------------------------------------------------------------


async def sqlite_version(conn: aiosqlite.Connection, table: str) -> int:
    await conn.execute(f"CREATE TABLE IF NOT EXISTS {table} (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    async with conn.execute(f"SELECT value FROM {table} WHERE key = 'schema_version'") as cur:
        row = await cur.fetchone()
    return int(row[0]) if row else 0


async def migrate_sqlite(
    conn: aiosqlite.Connection, migrations: Sequence[Migration], *, database: str, table: str = "meta"
) -> int:
    """Bring an SQLite database (connection in autocommit mode) to the newest version; returns it."""
    _check_list(migrations)
    current = await sqlite_version(conn, table)
    if current > len(migrations):
        raise SchemaTooNewError(database, current, len(migrations))
    for m in migrations[current:]:
        # executescript runs BEGIN..COMMIT as written: the DDL and the version bump commit together
        script = (
            f"BEGIN IMMEDIATE;\n{m.sql.rstrip().rstrip(';')};\n"
            f"INSERT INTO {table} (key, value) VALUES ('schema_version', '{m.version}') "
            f"ON CONFLICT (key) DO UPDATE SET value = excluded.value;\nCOMMIT;"
        )
        try:
            await conn.executescript(script)
        except Exception:
            if conn.in_transaction:
                await conn.rollback()
            raise
    return len(migrations)


# -- PostgreSQL -----------------------------------------------------------------------------


async def postgres_version(conn: Any, schema: str) -> int:
    """The schema's version, 0 when it or its version table does not exist."""
    exists = await conn.fetchval(
        "SELECT to_regclass($1) IS NOT NULL", f"{quote_ident(schema)}.schema_migrations"
    )
    if not exists:
        return 0
    return int(await conn.fetchval(f"SELECT coalesce(max(version), 0) FROM {quote_ident(schema)}.schema_migrations"))


async def migrate_postgres(
    conn: Any, schema: str, migrations: Sequence[Migration], *, database: str, plugin: bool = False
) -> int:
    """Create the schema if needed and apply pending migrations in one transaction; returns the version."""
    _check_list(migrations)
    s = quote_ident(schema)
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"corec-migrate:{schema}")
        has_schema = await conn.fetchval("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)", schema)
        if not has_schema:
            await conn.execute(f"CREATE SCHEMA {s}")
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {s}.schema_migrations (version integer PRIMARY KEY, "
            "description text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        current = await postgres_version(conn, schema)
        if current > len(migrations):
            raise SchemaTooNewError(database, current, len(migrations))
        if plugin:
            await conn.execute(f"SET LOCAL search_path TO {s}")
        for m in migrations[current:]:
            await conn.execute(m.sql if plugin else m.sql.replace("{s}", s))
            await conn.execute(
                f"INSERT INTO {s}.schema_migrations (version, description) VALUES ($1, $2)",
                m.version, m.description,
            )
    return len(migrations)


# -- the core schema --------------------------------------------------------------------------

# WARNING: ONLY APPEND TO THESE LISTS. A released migration is never edited.

CORE_SQLITE: list[Migration] = [
    Migration(1, "core tables", """
CREATE TABLE members (
    name TEXT PRIMARY KEY,
    addr TEXT NOT NULL,
    pub TEXT NOT NULL,
    inc INTEGER NOT NULL,
    status TEXT NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE block_state (           -- latest row per block (rule: rows.newer)
    block INTEGER PRIMARY KEY,
    channel INTEGER NOT NULL,
    owner TEXT NOT NULL,
    tick INTEGER NOT NULL,
    count INTEGER NOT NULL,
    active INTEGER NOT NULL,
    mean REAL, min REAL, max REAL, std REAL,
    error_rate REAL, fitness REAL,
    ts REAL NOT NULL                 -- wall time of the tick, epoch seconds
);
CREATE TABLE block_history (         -- append only: rowid order is arrival order (pruned from the front)
    block INTEGER NOT NULL,
    owner TEXT NOT NULL,
    tick INTEGER NOT NULL,
    channel INTEGER NOT NULL,
    count INTEGER NOT NULL,
    active INTEGER NOT NULL,
    mean REAL, min REAL, max REAL, std REAL,
    error_rate REAL, fitness REAL,
    ts REAL NOT NULL
);
-- a replayed row is ignored; a rowid table plus this small index is about twice as fast to
-- append to as a table clustered on (block, ...), whose every tick lands on every leaf page
CREATE UNIQUE INDEX block_history_key ON block_history (block, owner, tick);
CREATE TABLE owner_ticks (           -- highest tick recorded per owner (LocalStore.last_tick)
    owner TEXT PRIMARY KEY,
    tick INTEGER NOT NULL
);
CREATE TABLE alerts (
    id INTEGER PRIMARY KEY,
    uid TEXT NOT NULL UNIQUE,
    ts REAL NOT NULL,
    kind TEXT NOT NULL,
    severity TEXT NOT NULL,
    block INTEGER,
    message TEXT NOT NULL,
    details TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE audit (
    id INTEGER PRIMARY KEY,
    uid TEXT NOT NULL UNIQUE,
    ts REAL NOT NULL,
    kind TEXT NOT NULL,              -- repair, fusion, leader, placement, ...
    subject TEXT NOT NULL,
    reason TEXT NOT NULL,
    term INTEGER,                    -- set: a nucleus decision, fenced
    details TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE outbox (                -- what must still reach PostgreSQL, oldest first
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL CHECK (kind IN ('state', 'history', 'alert', 'audit', 'member', 'nucleus')),
    key TEXT,                        -- coalescing key ('state', 'member'), else NULL
    rows INTEGER NOT NULL DEFAULT 1, -- block rows carried; outbox_max_rows counts these
    payload BLOB NOT NULL,           -- msgpack
    created_at REAL NOT NULL
);
CREATE INDEX outbox_keyed ON outbox (kind, key) WHERE key IS NOT NULL;
CREATE TABLE outbox_dead (           -- entries PostgreSQL rejected as bad data, kept for a human
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    key TEXT,
    rows INTEGER NOT NULL,
    payload BLOB NOT NULL,
    created_at REAL NOT NULL,
    failed_at REAL NOT NULL,
    error TEXT NOT NULL
);
CREATE TABLE election (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    term INTEGER NOT NULL,
    voted_for TEXT
);
INSERT INTO election (id, term, voted_for) VALUES (1, 0, NULL);
CREATE TABLE nucleus (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    term INTEGER NOT NULL,
    leader TEXT,
    updated_at REAL NOT NULL
);
INSERT INTO nucleus (id, term, leader, updated_at) VALUES (1, 0, NULL, 0);
CREATE TABLE placement (
    block INTEGER PRIMARY KEY,
    owner TEXT NOT NULL,
    term INTEGER NOT NULL,
    updated_at REAL NOT NULL
)
"""),
    # engine/adaptive.py: what a block learned survives a restart
    Migration(2, "block genomes", """
CREATE TABLE block_genomes (         -- each held block's genome and forecaster state, saved now and then
    block INTEGER PRIMARY KEY,
    genome TEXT NOT NULL,            -- JSON (engine/genome.py to_dict)
    state TEXT,                      -- JSON (engine/forecast.py export), NULL none
    saved_at REAL NOT NULL
)
"""),
    # shell/alerts.py: peers' alerts are kept too, under their raiser's name (NULL: this node)
    Migration(3, "alerts from every node", """
ALTER TABLE alerts ADD COLUMN node TEXT;
CREATE INDEX alerts_ts ON alerts (ts);
CREATE INDEX audit_ts ON audit (ts)
"""),
    # the owner's genomes go to PostgreSQL too: the outbox takes a kind more (SQLite cannot
    # change a CHECK in place, so the table is rebuilt with its rows and ids)
    Migration(4, "outbox kind genome", """
CREATE TABLE outbox_new (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL CHECK (kind IN ('state', 'history', 'alert', 'audit', 'member', 'nucleus', 'genome')),
    key TEXT,
    rows INTEGER NOT NULL DEFAULT 1,
    payload BLOB NOT NULL,
    created_at REAL NOT NULL
);
INSERT INTO outbox_new (id, kind, key, rows, payload, created_at) SELECT id, kind, key, rows, payload, created_at FROM outbox;
DROP TABLE outbox;
ALTER TABLE outbox_new RENAME TO outbox;
CREATE INDEX outbox_keyed ON outbox (kind, key) WHERE key IS NOT NULL
"""),
    # shell/intelligence.py: the torch forecasters of intelligent channels survive a restart
    Migration(5, "nano weights", """
CREATE TABLE nano_weights (          -- each owned intelligent block's NanoNet state, saved now and then
    block INTEGER PRIMARY KEY,
    weights BLOB NOT NULL,           -- engine/nanonet.py export (torch.save bytes, read with weights_only)
    saved_at REAL NOT NULL
)
"""),
]

# For people who write SQL (migration 3): the block id split as the CLI shows it
# (CHANNEL:INDEX), and every table, view and column described where psql's \d+ and any
# SQL tool show it. Part of a released migration: append new wording in a new one.
_VIEWS_SQL = """
CREATE VIEW {s}.blocks AS
SELECT block, channel, (block & 4294967295) AS block_index,
       channel::text || ':' || (block & 4294967295)::text AS name,
       owner, epoch, tick, count, active, mean, min, max, std, error_rate, fitness, updated_at
FROM {s}.block_state;
CREATE VIEW {s}.history AS
SELECT ts, block, channel, (block & 4294967295) AS block_index,
       channel::text || ':' || (block & 4294967295)::text AS name,
       owner, tick, count, active, mean, min, max, std, error_rate, fitness
FROM {s}.block_history;
CREATE VIEW {s}.block_alerts AS
SELECT uid, ts, node, kind, severity, block, (block >> 32) AS channel, (block & 4294967295) AS block_index,
       (block >> 32)::text || ':' || (block & 4294967295)::text AS name, message, details
FROM {s}.alerts;
"""

_DESCRIBED = {  # relation: (what it is, {column: what it holds})
    "block_state": ("the latest aggregate row of each block, written by the node that owns it (a row from "
                    "a newer placement epoch replaces an older one); read it through the view blocks", {}),
    "block_history": ("one aggregate row per block and tick, append only, partitioned by day on ts, written "
                      "by the block's owner; read it through the view history", {}),
    "blocks": ("the latest row of each block with its channel, index and name (CHANNEL:INDEX, as corec-node "
               "blocks shows it)", {}),
    "history": ("block_history with channel, index and name; filter on ts to read only the days you need", {}),
    "members": ("each member as the nodes last reported it; (inc, rank) only grows, so a late report never "
                "undoes a newer one", {
                    "name": "member name (node.name of its config)",
                    "addr": "host:port of its direct (ROUTER) socket",
                    "pub": "host:port of its PUB socket",
                    "inc": "incarnation: only the member itself raises it, to refute a suspicion",
                    "status": "alive, suspect, dead or left",
                    "rank": "status as a number: alive 0, suspect 1, dead 2, left 3",
                    "reported_by": "the node whose view this row is",
                    "updated_at": "when that node reported it (its wall clock)"}),
    "alerts": ("alerts raised by nodes and plugins, one row each; read them with block names through the "
               "view block_alerts", {}),
    "block_alerts": ("alerts with the channel, index and name of their block (NULL: an alert about no block)", {}),
    "audit": ("every repair, fusion, leader change, placement change and voter change, with its reason", {
        "uid": "unique id of the row (a replay writes it once)",
        "ts": "when it happened (the wall clock of the node that wrote it)",
        "node": "member name of the node that decided or saw it",
        "kind": "what happened: repair, fusion, leader, placement, voters, ...",
        "subject": "what it is about: a block, a member, the voter set",
        "reason": "why, in words",
        "term": "election term of the nucleus that decided it (NULL: not a nucleus decision); a term "
                "older than the highest seen is refused",
        "details": "the figures behind it, as JSON"}),
    "nucleus": ("one row: the current nucleus (leader) and its term, written by the leader only, so give "
                "every voter a DSN", {
                    "id": "always 1: the table has one row",
                    "term": "election term of the leader",
                    "leader": "member name of the leader (NULL: none yet)",
                    "updated_at": "when the leader wrote it"}),
    "placement": ("block -> owner as the nucleus last placed it, written by the leader only, fenced by its "
                  "term", {
                      "owner": "member name of the node the nucleus placed the block on",
                      "term": "election term of the nucleus that placed it",
                      "updated_at": "when the nucleus wrote it"}),
}
_BLOCK_COLUMNS = {  # the columns the block tables, their views and the alerts share
    "block": "block id: channel << 32 | index (the views split it; the CLI shows CHANNEL:INDEX)",
    "channel": "channel 0-255 the block belongs to",
    "block_index": "the block's index within its channel",
    "name": "CHANNEL:INDEX, as corec-node blocks names the block",
    "owner": "member name of the node that owned the block and wrote the row",
    "epoch": "placement epoch the owner acted on: a row of a newer map replaces an older one, whatever the clocks say",
    "tick": "the owner's tick number (one more each engine tick of that owner)",
    "count": "entities held in the block, erroring ones included",
    "active": "how many of them are active (mean, min, max and std are over these)",
    "mean": "mean of the active entities' values at the tick (NULL: no active entity)",
    "min": "smallest active value at the tick",
    "max": "largest active value at the tick",
    "std": "population standard deviation of the active values at the tick",
    "error_rate": "share of the block's entities whose last report was an error, 0-1 (the CLI's ERRORS column)",
    "fitness": "health 0-1: active share x (1 - error_rate) x stability (dispersion can at most halve it); "
               "repair and fusion act on it",
    "updated_at": "the owner's wall clock at the tick (shown, never used to order rows)",
    "ts": "the wall clock at the tick (the history's partition key) or when the alert was raised",
    "uid": "unique id of the row (a replay writes it once)",
    "node": "member name of the node that raised it",
    "kind": "what kind of alert (blocks_lost, audit_anomaly, a plugin's own kind, ...)",
    "severity": "as the raiser set it (plugins: info, warning or critical)",
    "message": "the alert in words",
    "details": "what the raiser attached, as JSON",
}
_COLUMNS = {
    "block_state": ("block", "channel", "owner", "tick", "count", "active", "mean", "min", "max", "std",
                    "error_rate", "fitness", "updated_at", "epoch"),
    "block_history": ("ts", "block", "owner", "tick", "channel", "count", "active", "mean", "min", "max",
                      "std", "error_rate", "fitness"),
    "blocks": ("block", "channel", "block_index", "name", "owner", "epoch", "tick", "count", "active", "mean",
               "min", "max", "std", "error_rate", "fitness", "updated_at"),
    "history": ("ts", "block", "channel", "block_index", "name", "owner", "tick", "count", "active", "mean",
                "min", "max", "std", "error_rate", "fitness"),
    "alerts": ("uid", "ts", "node", "kind", "severity", "block", "message", "details"),
    "block_alerts": ("uid", "ts", "node", "kind", "severity", "block", "channel", "block_index", "name",
                     "message", "details"),
    "placement": ("block",),
}
_VIEWS = ("blocks", "history", "block_alerts")


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _comments_sql() -> str:
    """COMMENT statements for every relation and column of ``_DESCRIBED``."""
    out = []
    for rel, (what, columns) in _DESCRIBED.items():
        kind = "VIEW" if rel in _VIEWS else "TABLE"
        out.append(f"COMMENT ON {kind} {{s}}.{rel} IS {_literal('CoreC: ' + what)};")
        for col in _COLUMNS.get(rel, ()):
            out.append(f"COMMENT ON COLUMN {{s}}.{rel}.{col} IS {_literal(_BLOCK_COLUMNS[col])};")
        for col, text in columns.items():
            out.append(f"COMMENT ON COLUMN {{s}}.{rel}.{col} IS {_literal(text)};")
    return "\n".join(out) + "\n"


CORE_POSTGRES: list[Migration] = [
    Migration(1, "core tables", """
CREATE TABLE {s}.block_state (
    block bigint PRIMARY KEY,
    channel smallint NOT NULL,
    owner text NOT NULL,
    tick bigint NOT NULL,
    count integer NOT NULL,
    active integer NOT NULL,
    mean double precision,
    min double precision,
    max double precision,
    std double precision,
    error_rate double precision,
    fitness double precision,
    updated_at timestamptz NOT NULL
) WITH (fillfactor = 70);  -- room on the page: the per-tick update of a row stays HOT
CREATE TABLE {s}.block_history (
    ts timestamptz NOT NULL,
    block bigint NOT NULL,
    owner text NOT NULL,
    tick bigint NOT NULL,
    channel smallint NOT NULL,
    count integer NOT NULL,
    active integer NOT NULL,
    mean double precision,
    min double precision,
    max double precision,
    std double precision,
    error_rate double precision,
    fitness double precision,
    PRIMARY KEY (block, owner, tick, ts)  -- ts: a partitioned table's keys include its partition key
) PARTITION BY RANGE (ts);
CREATE TABLE {s}.members (
    name text PRIMARY KEY,
    addr text NOT NULL,
    pub text NOT NULL,
    inc bigint NOT NULL,
    status text NOT NULL,
    rank smallint NOT NULL,      -- alive 0, suspect 1, dead 2, left 3: (inc, rank) only grows
    reported_by text NOT NULL,
    updated_at timestamptz NOT NULL
);
CREATE TABLE {s}.alerts (
    uid uuid PRIMARY KEY,
    ts timestamptz NOT NULL,
    node text NOT NULL,
    kind text NOT NULL,
    severity text NOT NULL,
    block bigint,
    message text NOT NULL,
    details jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX alerts_ts ON {s}.alerts (ts);
CREATE TABLE {s}.audit (
    uid uuid PRIMARY KEY,
    ts timestamptz NOT NULL,
    node text NOT NULL,
    kind text NOT NULL,
    subject text NOT NULL,
    reason text NOT NULL,
    term bigint,
    details jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_ts ON {s}.audit (ts);
CREATE TABLE {s}.nucleus (
    id smallint PRIMARY KEY CHECK (id = 1),
    term bigint NOT NULL,
    leader text,
    updated_at timestamptz NOT NULL
);
INSERT INTO {s}.nucleus (id, term, leader, updated_at) VALUES (1, 0, NULL, now());
CREATE TABLE {s}.placement (
    block bigint PRIMARY KEY,
    owner text NOT NULL,
    term bigint NOT NULL,
    updated_at timestamptz NOT NULL
)
"""),
    # A block's latest row is chosen by placement epoch and tick, never by updated_at (the
    # owner's wall clock): rows from before this have epoch 0, which any owner's new row passes.
    Migration(2, "block_state placement epoch", """
ALTER TABLE {s}.block_state ADD COLUMN IF NOT EXISTS epoch bigint NOT NULL DEFAULT 0
"""),
    Migration(3, "views with block names, comments", _VIEWS_SQL + _comments_sql()),
    Migration(4, "block genomes", """
CREATE TABLE {s}.block_genomes (
    block bigint PRIMARY KEY,
    channel smallint NOT NULL,
    block_index bigint NOT NULL,
    owner text NOT NULL,
    genome_id text NOT NULL,
    generation integer NOT NULL,
    genome jsonb NOT NULL,
    updated_at timestamptz NOT NULL
);
COMMENT ON TABLE {s}.block_genomes IS 'CoreC: each block''s genome as its owner last saved it (engine/genome.py); a lower generation never replaces a higher one';
COMMENT ON COLUMN {s}.block_genomes.block IS 'block id: channel << 32 | index';
COMMENT ON COLUMN {s}.block_genomes.channel IS 'channel 0-255 the block belongs to';
COMMENT ON COLUMN {s}.block_genomes.block_index IS 'the block''s index within its channel';
COMMENT ON COLUMN {s}.block_genomes.owner IS 'member name of the node that owned the block and saved this genome';
COMMENT ON COLUMN {s}.block_genomes.genome_id IS 'the genome''s id (a digest of its genes, generation and parents), as blocks --json shows it';
COMMENT ON COLUMN {s}.block_genomes.generation IS 'how many breedings led to this genome (0: the channel''s first)';
COMMENT ON COLUMN {s}.block_genomes.genome IS 'the genome: {"v", "id", "generation", "parents", "params"}';
COMMENT ON COLUMN {s}.block_genomes.updated_at IS 'when its owner saved it (its wall clock; never used to order)'
"""),
]
