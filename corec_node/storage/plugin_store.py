"""PluginStore: a plugin's own databases, isolated from the core's.

- SQLite: its own file ``<data_dir>/plugins/<name>.db`` (WAL). ATTACH and DETACH are denied on
  the connection (an authorizer), so SQL run through it cannot open the core's file.
- PostgreSQL (when a DSN is given): its own schema ``<core schema>_plugin_<name>`` and its own
  small pool whose ``search_path`` is that schema only. The core pool is never handed out.
- Migrations: the plugin's own list of SQL strings, applied in order at open, versioned inside
  its store only (table ``corec_plugin_meta`` in its file, ``schema_migrations`` in its schema);
  a store migrated by a newer plugin raises :class:`SchemaTooNewError`.

The boundary in PostgreSQL: the plugin's connections use the same role as the core unless the
operator gives the plugin its own DSN. search_path keeps honest SQL in its schema; a plugin
that writes ``corec.block_state`` by its full name is not stopped by it. For a hard wall, give
each plugin a DSN whose role owns only its schema (``postgres_dsn`` of :meth:`PluginStore.open`).

Hooks run on the event loop: use the async API here; never open a blocking sqlite3 connection.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite
import asyncpg

from corec_node.storage.migrations import migrate_postgres, migrate_sqlite, numbered, quote_ident
from corec_node.storage.postgres import describe_dsn

PLUGIN_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")  # a file name and part of a schema name
PLUGIN_META_TABLE = "corec_plugin_meta"


def _deny_attach(action: int, *args: Any) -> int:
    if action in (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH):
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


def plugin_schema(core_schema: str, name: str) -> str:
    return f"{core_schema}_plugin_{name}"


class PluginPostgres:
    """A plugin's PostgreSQL handle: its own pool, search_path = its schema only."""

    def __init__(self, pool: asyncpg.Pool, schema: str) -> None:
        self._pool = pool
        self.schema = schema

    async def execute(self, sql: str, *args: Any, timeout: float | None = None) -> str:
        return await self._pool.execute(sql, *args, timeout=timeout)

    async def executemany(self, sql: str, args: Sequence[Sequence[Any]], timeout: float | None = None) -> None:
        await self._pool.executemany(sql, args, timeout=timeout)

    async def fetch(self, sql: str, *args: Any, timeout: float | None = None) -> list[asyncpg.Record]:
        return await self._pool.fetch(sql, *args, timeout=timeout)

    async def fetchrow(self, sql: str, *args: Any, timeout: float | None = None) -> asyncpg.Record | None:
        return await self._pool.fetchrow(sql, *args, timeout=timeout)

    async def fetchval(self, sql: str, *args: Any, timeout: float | None = None) -> Any:
        return await self._pool.fetchval(sql, *args, timeout=timeout)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection of the plugin's pool inside one transaction (commit on success)."""
        async with self._pool.acquire() as conn, conn.transaction():
            yield conn

    async def close(self) -> None:
        await self._pool.close()


class PluginStore:
    """A plugin's isolated store. Build it with ``await PluginStore.open(name, data_dir=...)``."""

    def __init__(self, name: str, sqlite_path: Path, conn: aiosqlite.Connection, postgres: PluginPostgres | None) -> None:
        self.name = name
        self.sqlite_path = sqlite_path
        self.sqlite = conn  # aiosqlite connection to the plugin's own file (autocommit mode)
        self.postgres = postgres

    @classmethod
    async def open(
        cls, name: str, *, data_dir: str | Path, sqlite_migrations: Sequence[str] = (),
        postgres_dsn: str = "", postgres_schema: str = "corec", postgres_migrations: Sequence[str] = (),
        connect_timeout: float = 5.0,
    ) -> PluginStore:
        """Open (create, migrate) the plugin's SQLite file, and its PostgreSQL schema if a DSN is given.

        ``postgres_schema`` is the core schema name; the plugin's is ``<it>_plugin_<name>``.
        An unreachable PostgreSQL raises (after closing the SQLite side): the plugin decides.
        """
        if not PLUGIN_NAME_RE.match(name):
            raise ValueError(f"plugin store name {name!r}: use a-z, 0-9 and _, starting with a letter, at most 32")
        path = Path(data_dir) / "plugins" / f"{name}.db"
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        conn = await aiosqlite.connect(path, isolation_level=None)
        pg: PluginPostgres | None = None
        try:
            await conn.execute("PRAGMA journal_mode=WAL")
            await conn.execute("PRAGMA synchronous=NORMAL")
            await conn.execute("PRAGMA busy_timeout=5000")
            await conn.set_authorizer(_deny_attach)  # before the plugin's own SQL runs, migrations included
            await migrate_sqlite(conn, numbered(sqlite_migrations, f"plugin {name}"),
                                 database=f"plugin {name!r} SQLite database {path}", table=PLUGIN_META_TABLE)
            if postgres_dsn:
                schema = plugin_schema(postgres_schema, name)
                quote_ident(schema)
                pool = await asyncpg.create_pool(
                    postgres_dsn, min_size=1, max_size=2, timeout=connect_timeout,
                    server_settings={"search_path": quote_ident(schema), "application_name": f"corec-plugin-{name}"},
                )
                try:
                    async with pool.acquire() as c:
                        await migrate_postgres(
                            c, schema, numbered(postgres_migrations, f"plugin {name}"), plugin=True,
                            database=f"plugin {name!r} PostgreSQL schema {schema!r} on {describe_dsn(postgres_dsn)}",
                        )
                except BaseException:
                    pool.terminate()
                    raise
                pg = PluginPostgres(pool, schema)
        except BaseException:
            await conn.close()
            raise
        return cls(name, path, conn, pg)

    @classmethod
    async def for_config(cls, name: str, config: Any, *, sqlite_migrations: Sequence[str] = (),
                         postgres_migrations: Sequence[str] = ()) -> PluginStore:
        """From a :class:`corec_node.config.Config`: data_dir, postgres_dsn and schema from it."""
        return await cls.open(
            name, data_dir=config.data_dir, sqlite_migrations=sqlite_migrations,
            postgres_dsn=config.storage.postgres_dsn, postgres_schema=config.storage.postgres_schema,
            postgres_migrations=postgres_migrations,
        )

    async def close(self) -> None:
        try:
            if self.postgres is not None:
                await self.postgres.close()
        finally:
            await self.sqlite.close()

    async def __aenter__(self) -> PluginStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
