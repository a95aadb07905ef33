"""The queue between a node's receive loops and its ingest worker, bounded by bytes.

Entity batches go through it to their own worker task, so probes, gossip and heartbeats
never wait behind a backlog of data. Nothing here ever makes a receive loop wait: a loop
that stops reading its socket holds every peer on it, and ZeroMQ's heartbeats drop a
connection whose reader fell behind. Two bounds, each on purpose:

- A producer's batch is taken only while there is ``room``: fewer than ``wait_bytes`` of
  direct batches and fewer than ``limit_bytes`` in all are queued. Until then it waits at
  the data plane's door, in a task of its own, and the producer waits for its answer
  (SPEC 9.4); past the door's limits the node refuses it as busy. A room check usually
  passes again at the worker's next take; a stream backlog alone closes the door only at
  the whole limit, which flow control keeps the stream far from. A handoff (block state
  from the previous owner) is always taken (``add``): refusing it would lose the state.
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

Item = tuple[Any, ...]  # (envelope, payload, "direct" | "broadcast"[, records already decoded])


def payload_bytes(item: Item) -> int:
    payload = item[1]
    if payload is None:  # a marker in the order (a learner's CopyDone): no bytes
        return 0
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

    def room(self) -> bool:
        """Whether a producer's batch may be queued now (see the module docstring)."""
        return self.direct_bytes < self.wait_bytes and self.bytes < self.limit_bytes

    async def wait_room(self, timeout: float) -> bool:
        """Wait until there is ``room`` (True) or ``timeout`` seconds pass (False)."""
        if self.room():
            return True
        self._room.clear()
        try:
            await asyncio.wait_for(self._room.wait(), timeout)
        except TimeoutError:
            return False
        return self.room()

    def add(self, item: Item) -> None:
        """Queue a batch whatever the bounds: one the caller admitted (``room``), or a handoff."""
        self._add(item)

    async def take(self, max_records: int) -> list[Item]:
        """Wait for a batch, then take it and what follows it, up to ``max_records`` records."""
        items = [await self._items.get()]
        records = getattr(items[0][0].msg, "count", 0)
        while records < max_records and not self._items.empty():
            items.append(self._items.get_nowait())
            records += getattr(items[-1][0].msg, "count", 0)
        return self._taken(items)

    def take_now(self) -> list[Item]:
        """Everything queued, at once: what must be stored before the placement map
        changes (a copy for a new holder is cut from the store)."""
        items = []
        while not self._items.empty():
            items.append(self._items.get_nowait())
        return self._taken(items)

    def _taken(self, items: list[Item]) -> list[Item]:
        for item in items:
            size = payload_bytes(item)
            self.bytes -= size
            if item[2] == "direct":
                self.direct_bytes -= size
        if self.room():
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
    wait_share: float = 1 / 4  # a producer's batch waits at the door while this much is direct batches
    flow_high_share: float = 1 / 16  # a stream backlog this deep asks its sources to pause (SPEC 9.3)
    flow_low_share: float = 1 / 64  # ... and this shallow ends the pause

    @classmethod
    def from_mb(cls, mb: float) -> IngestLimits:
        return cls(int(mb * (1 << 20)))

    def queue(self) -> IngestQueue:
        return IngestQueue(limit_bytes=self.limit_bytes, wait_bytes=int(self.limit_bytes * self.wait_share))

    def flow(self) -> FlowControl:
        return FlowControl(int(self.limit_bytes * self.flow_high_share), int(self.limit_bytes * self.flow_low_share))
