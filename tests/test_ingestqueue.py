"""The ingest queue's two bounds (ingestqueue.py), on a real event loop: nothing in it ever waits
for room; a producer's batch asks ``room`` and waits at the data plane's door."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from corec_node.shell.ingestqueue import IngestQueue


def batch(where: str, size: int, count: int = 10) -> tuple:
    env = SimpleNamespace(msg=SimpleNamespace(count=count))
    return (env, bytes(size), where)


async def test_stream_batches_past_the_limit_are_refused_and_the_door_closes_for_producers():
    q = IngestQueue(limit_bytes=1000, wait_bytes=400)
    assert all(q.offer(batch("broadcast", 100)) for _ in range(5))  # 500 of stream: over wait_bytes
    assert q.room()  # a stream backlog alone does not close the door to producers
    q.add(batch("direct", 100))
    q.add(batch("direct", 300))  # 400 of direct now
    assert not q.room()
    waiting = asyncio.ensure_future(q.wait_room(30))  # (30 s: a hang)
    for _ in range(10):  # loop turns, not a duration: the wait runs up to where it waits
        await asyncio.sleep(0)
    assert not waiting.done()
    assert not await q.wait_room(0.01)  # no take: no room within its timeout
    assert q.offer(batch("broadcast", 100))  # 1000 in all
    assert not q.offer(batch("broadcast", 1))  # past the limit: the caller drops and counts it
    q.add(batch("direct", 50))  # a handoff is taken whatever the bounds
    taken = await q.take(max_records=70)  # the stream batches (7 x 10 records)
    assert [w for _, _, w in taken] == ["broadcast"] * 5 + ["direct"] * 2
    assert await asyncio.wait_for(waiting, 30)  # direct bytes went down: room again
    assert (q.bytes, q.direct_bytes) == (150, 50) and q.room()
    rest = await q.take(max_records=1000)
    assert [w for _, _, w in rest] == ["broadcast", "direct"]
    assert (q.bytes, q.direct_bytes, q.qsize()) == (0, 0, 0)


def test_bounds_are_checked():
    with pytest.raises(ValueError):
        IngestQueue(limit_bytes=100, wait_bytes=200)
