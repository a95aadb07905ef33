"""The analyzer's own database, through whatever the node offers.

The interface the plugin needs (``PredictionStore``): ``await execute(sql, params)``,
``await executemany(sql, rows)``, ``await fetchall(sql, params) -> list[tuple]``,
``await close()``. It is met by:

1. ``await node.plugin_store(NAME)`` when the node has it: the storage layer's
   ``PluginStore`` (its ``.sqlite`` is an aiosqlite connection, migrated by the node with
   this plugin's ``corec_storage_migrations``); or any object with ``execute``,
   ``executemany`` and ``fetchall`` (sync or async).
2. Otherwise the stdlib ``sqlite3`` on ``<node.data_dir>/plugins/<NAME>.db``, run in a
   worker thread (never on the loop), migrated here with the same meta table the storage
   layer uses (``corec_plugin_meta``, key ``schema_version``), so the file is the same
   whichever side opens it later.
"""

from __future__ import annotations

import asyncio
import inspect
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

META_TABLE = "corec_plugin_meta"


async def _maybe(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


class PredictionStore:
    async def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        raise NotImplementedError

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        raise NotImplementedError

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        raise NotImplementedError

    async def close(self) -> None:
        pass


class AioSqliteStore(PredictionStore):
    """Over an aiosqlite connection the node owns (it closes it)."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        await self.conn.execute(sql, tuple(params))

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        # the connection is in autocommit mode: one transaction for the batch, not one per row
        await self.conn.execute("BEGIN")
        try:
            await self.conn.executemany(sql, rows)
        except BaseException:
            await self.conn.execute("ROLLBACK")
            raise
        await self.conn.execute("COMMIT")

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        return [tuple(r) for r in await self.conn.execute_fetchall(sql, tuple(params))]


class GenericStore(PredictionStore):
    """Over any object with execute/executemany/fetchall, sync or async."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        await _maybe(self.handle.execute(sql, tuple(params)))

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        await _maybe(self.handle.executemany(sql, rows))

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        return [tuple(r) for r in await _maybe(self.handle.fetchall(sql, tuple(params)))]


class SqliteStore(PredictionStore):
    """stdlib sqlite3 in worker threads, one statement at a time (a lock), WAL."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    @classmethod
    async def open(cls, path: Path, migrations: Sequence[str]) -> SqliteStore:
        store = cls(path)
        await asyncio.to_thread(store._open, list(migrations))
        return store

    def _open(self, migrations: list[str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=5000")
        conn.execute(f"CREATE TABLE IF NOT EXISTS {META_TABLE} (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        row = conn.execute(f"SELECT value FROM {META_TABLE} WHERE key = 'schema_version'").fetchone()
        current = int(row[0]) if row else 0
        if current > len(migrations):
            conn.close()
            raise RuntimeError(f"{self.path}: schema version {current} is newer than this plugin's {len(migrations)}")
        for version, sql in enumerate(migrations[current:], start=current + 1):
            conn.executescript(
                f"BEGIN IMMEDIATE;\n{sql.rstrip().rstrip(';')};\n"
                f"INSERT INTO {META_TABLE} (key, value) VALUES ('schema_version', '{version}') "
                f"ON CONFLICT (key) DO UPDATE SET value = excluded.value;\nCOMMIT;"
            )
        self._conn = conn

    def _run(self, fn: str, sql: str, arg: Any) -> Any:
        assert self._conn is not None
        with self._lock:
            if fn == "executemany":
                with self._conn:  # one transaction for the batch
                    self._conn.executemany(sql, arg)
                return None
            cur = self._conn.execute(sql, arg)
            return cur.fetchall() if fn == "fetchall" else None

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        await asyncio.to_thread(self._run, "execute", sql, tuple(params))

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        await asyncio.to_thread(self._run, "executemany", sql, list(rows))

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        return await asyncio.to_thread(self._run, "fetchall", sql, tuple(params))

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await asyncio.to_thread(conn.close)


async def open_store(node: Any, name: str, migrations: Sequence[str]) -> tuple[PredictionStore, bool]:
    """The plugin's store and whether the plugin must close it: the node's
    ``plugin_store(name)`` if it keeps one (the node closes it), else SQLite under
    ``node.data_dir``. A NodeFacade over a node without stores raises NoPluginStore, a
    LookupError; an older node passed itself, with or without the method."""
    opener = getattr(node, "plugin_store", None)
    if callable(opener):
        try:
            handle = await _maybe(opener(name))
        except LookupError:
            handle = None
        if handle is not None:
            if getattr(handle, "sqlite", None) is not None:  # corec_node.storage.PluginStore
                return AioSqliteStore(handle.sqlite), False
            return GenericStore(handle), False
    return await SqliteStore.open(Path(node.data_dir) / "plugins" / f"{name}.db", migrations), True
