"""The queue between a node's receive loops and its ingest worker, bounded by bytes.

Entity batches go through it to their own worker task, so probes, gossip and heartbeats
never wait behind a backlog of data on the same socket. Two bounds, each on purpose:

- A batch on the direct socket (a producer's, or a handoff) waits while ``wait_bytes`` of
  direct batches, or ``limit_bytes`` in all, are queued: its receive loop pauses, ZeroMQ
  holds what follows and the producer's send blocks, so nothing is lost. A wait usually
  ends with the worker's next take, so member probes on the same socket are not held
  long; a stream backlog alone stops the direct socket only at the whole limit, which
  flow control keeps the stream far from.
- A batch from the PUB stream cannot make its publisher wait. It is queued up to
  ``limit_bytes`` and dropped past it (the caller counts it). A stream batch was already
  received into memory when it is offered, so this bound is a safety net against a
  sustained overload, not the first defence: flow control (``mesh/flow.py``) asks the
  stream's sources to pause long before it is reached.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from corec_node.mesh.flow import FlowControl

Item = tuple[Any, Any, str]  # (envelope, payload, "direct" | "broadcast")


def payload_bytes(item: Item) -> int:
    payload = item[1]
    return payload.nbytes if isinstance(payload, memoryview) else len(payload)


class IngestQueue:
    def __init__(self, *, limit_bytes: int, wait_bytes: int) -> None:
        if not 0 < wait_bytes <= limit_bytes:
            raise ValueError("need 0 < wait_bytes <= limit_bytes")
        self.limit_bytes = limit_bytes
        self.wait_bytes = wait_bytes
        self.bytes = 0  # payload bytes queued
        self.direct_bytes = 0  # of which direct batches
        self._items: asyncio.Queue[Item] = asyncio.Queue()  # unbounded: the byte bounds are the limits
        self._room = asyncio.Event()
        self._room.set()

    def qsize(self) -> int:
        return self._items.qsize()

    def offer(self, item: Item) -> bool:
        """Queue a stream batch unless ``limit_bytes`` are queued (then False: drop it)."""
        if self.bytes >= self.limit_bytes:
            return False
        self._add(item)
        return True

    def put_now(self, item: Item) -> bool:
        """Queue a direct batch if it need not wait (True), else do nothing (False)."""
        if self._full():
            return False
        self._add(item)
        return True

    async def put(self, item: Item) -> None:
        """Queue a direct batch once it need not wait."""
        while self._full():
            self._room.clear()
            await self._room.wait()
        self._add(item)

    def _full(self) -> bool:
        return self.direct_bytes >= self.wait_bytes or self.bytes >= self.limit_bytes

    async def take(self, max_records: int) -> list[Item]:
        """Wait for a batch, then take it and what follows it, up to ``max_records`` records."""
        items = [await self._items.get()]
        records = items[0][0].msg.count
        while records < max_records and not self._items.empty():
            items.append(self._items.get_nowait())
            records += items[-1][0].msg.count
        for item in items:
            size = payload_bytes(item)
            self.bytes -= size
            if item[2] == "direct":
                self.direct_bytes -= size
        if not self._full():
            self._room.set()
        return items

    def _add(self, item: Item) -> None:
        size = payload_bytes(item)
        self.bytes += size
        if item[2] == "direct":
            self.direct_bytes += size
        self._items.put_nowait(item)


@dataclass(frozen=True, slots=True)
class IngestLimits:
    """``engine.ingest_queue_mb`` and its shares, in one place: the queue's bounds and the
    flow-control thresholds are cut from the same budget, so they stay in proportion.
    Past the whole of it, stream batches are dropped (and counted)."""

    limit_bytes: int
    wait_share: float = 1 / 4  # a producer's batch waits while this much is direct batches
    flow_high_share: float = 1 / 16  # a stream backlog this deep asks its sources to pause (SPEC 9.3)
    flow_low_share: float = 1 / 64  # ... and this shallow ends the pause

    @classmethod
    def from_mb(cls, mb: float) -> IngestLimits:
        return cls(int(mb * (1 << 20)))

    def queue(self) -> IngestQueue:
        return IngestQueue(limit_bytes=self.limit_bytes, wait_bytes=int(self.limit_bytes * self.wait_share))

    def flow(self) -> FlowControl:
        return FlowControl(int(self.limit_bytes * self.flow_high_share), int(self.limit_bytes * self.flow_low_share))
