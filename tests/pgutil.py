"""PostgreSQL for the storage tests: a server that answers, a schema of our own per test.

The DSN comes from ``COREC_TEST_PG_DSN`` (default: local trust auth). Each test that asks for
``pg_schema`` gets a fresh, uniquely named schema, dropped at the end with the plugin schemas
made from it. No server answering: the test skips with the reason, except under CI
(``CI=true``) where it fails, so CI can never pass by skipping the database.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest

PG_DSN = os.environ.get("COREC_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
IN_CI = os.environ.get("CI", "").lower() == "true"
_probe: list[str | None] = []  # [error or None] once probed: one slow probe per run, not per test


async def _answers() -> str | None:
    if not _probe:
        try:
            conn = await asyncpg.connect(PG_DSN, timeout=3)
            await conn.close()
            _probe.append(None)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            _probe.append(f"{type(exc).__name__}: {exc}")
    return _probe[0]


@pytest.fixture
async def pg_dsn() -> str:
    error = await _answers()
    if error is not None:
        why = f"PostgreSQL at COREC_TEST_PG_DSN={PG_DSN!r} does not answer ({error})"
        if IN_CI:
            pytest.fail(f"CI=true: {why}", pytrace=False)
        pytest.skip(why)
    return PG_DSN


@pytest.fixture
async def pg_schema(pg_dsn: str) -> AsyncIterator[str]:
    """A unique schema name for this test; it and ``<name>_plugin_*`` are dropped afterwards."""
    name = f"corec_t_{uuid.uuid4().hex[:12]}"
    yield name
    conn = await asyncpg.connect(pg_dsn, timeout=5)
    try:
        schemas = await conn.fetch(
            "SELECT nspname FROM pg_namespace WHERE nspname = $1 OR nspname LIKE $2",
            name, name.replace("_", r"\_") + r"\_plugin\_%",
        )
        for (s,) in schemas:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{s}" CASCADE')
    finally:
        await conn.close()


@pytest.fixture
async def pg(pg_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A plain connection for checking what reached PostgreSQL."""
    conn = await asyncpg.connect(pg_dsn, timeout=5)
    try:
        yield conn
    finally:
        await conn.close()


async def eventually(condition: Callable[[], Any | Awaitable[Any]], timeout: float = 10.0,
                     interval: float = 0.02, message: str = "") -> Any:
    """Poll ``condition`` (sync or async) until truthy; fail with ``message`` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"not true within {timeout} s: {message or condition}")
        await asyncio.sleep(interval)
