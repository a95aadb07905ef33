"""A real node syncing to the real PostgreSQL, through an outage.

The node reaches PostgreSQL through a TCP proxy owned by the test, so the test can "pull
the cable" (close the proxy and every connection through it) and put it back.
"""

from __future__ import annotations

import asyncio
import contextlib

import numpy as np
import pytest
from meshutil import free_port
from pgutil import eventually  # the pg, pg_dsn and pg_schema fixtures come through conftest
from records import entities

from corec_node.client import Client

pytestmark = pytest.mark.timeout(180)


class Cable:
    """A TCP proxy to PostgreSQL that can be unplugged and plugged back in."""

    def __init__(self, port: int, target: tuple[str, int]) -> None:
        self.port, self.target = port, target
        self.server: asyncio.base_events.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def plug(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def unplug(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in list(self.writers):
            w.close()
        self.writers.clear()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self.writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


def records(n: int, value: float) -> np.ndarray:
    """n records of channel 1, ids 0..n-1, values value + (id % 7)."""
    return entities(np.arange(n), 1, value + np.arange(n) % 7)


async def test_block_state_reaches_postgres_through_an_outage(cluster, pg_dsn, pg_schema, pg):
    cable = Cable(free_port(), ("127.0.0.1", 5432))
    await cable.plug()
    dsn = f"postgresql://postgres@127.0.0.1:{cable.port}/postgres"
    env = {"COREC_STORAGE_POSTGRES_DSN": dsn, "COREC_STORAGE_POSTGRES_SCHEMA": pg_schema,
           "COREC_ENGINE_TICK_INTERVAL": "0.2"}
    node = cluster.start("edge", extra_env=env)
    await asyncio.to_thread(node.wait_ready)
    await asyncio.to_thread(lambda: Client(node.addr).send(records(5000, 10.0)) and None)
    table = f'"{pg_schema}".block_state'

    async def state() -> dict[int, tuple[int, float]]:
        try:
            rows = await pg.fetch(f"SELECT block, count, mean FROM {table}")
        except Exception:
            return {}
        return {r["block"]: (r["count"], r["mean"]) for r in rows}

    await eventually(lambda: _all(state, 5, 13.0), 30, message="block state in PostgreSQL")

    await cable.unplug()  # PostgreSQL unreachable: the node keeps working, the outbox grows
    await asyncio.to_thread(lambda: Client(node.addr).send(records(5000, 110.0)) and None)
    status = await asyncio.to_thread(node.ctl, "status")
    assert status["members"]["alive"] == 1
    await eventually(lambda: _outbox(node, minimum=5), 30, message="outbox grows while PostgreSQL is away")

    await cable.plug()  # back: the outbox drains, nothing lost, nothing twice
    await eventually(lambda: _all(state, 5, 113.0), 60, message="new state after the outage")
    await eventually(lambda: _outbox(node, maximum=0), 30, message="outbox drained")
    hist = await pg.fetch(f'SELECT block, array_agg(tick ORDER BY tick) AS ticks FROM "{pg_schema}".block_history GROUP BY block')
    assert len(hist) == 5
    for row in hist:
        ticks = row["ticks"]
        assert ticks == list(range(ticks[0], ticks[0] + len(ticks))), "a tick of history was lost or doubled"
    await cable.unplug()


async def _all(state, blocks: int, mean: float) -> bool:
    s = await state()
    return len(s) == blocks and all(c == 1000 and m is not None and abs(m - mean) < 0.01 for c, m in s.values())


async def _outbox(node, minimum: int | None = None, maximum: int | None = None) -> bool:
    st = (await asyncio.to_thread(node.ctl, "status"))["storage"]
    if minimum is not None:
        return st["outbox"] >= minimum
    return st["outbox"] <= maximum
