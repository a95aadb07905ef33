"""Syncer: the asyncio task that drains the SQLite outbox into PostgreSQL.

Rules:

1. Take the oldest entries (``batch_rows`` block rows), write them to PostgreSQL in ONE
   transaction, and delete them from the outbox only AFTER that commit. A crash between the
   two replays the batch, which writes nothing twice (see postgres.py rules 1, 2, 5).
2. PostgreSQL down or slow (refused, timeout, lost connection): the node keeps working, the
   drain backs off exponentially (``interval`` doubling, capped at ``max_backoff``, with
   jitter) and reconnects with a fresh pool. Every wake trims the outbox to
   ``outbox_max_rows`` (oldest history first, never state), logging and counting the drop.
3. An entry PostgreSQL rejects as bad data (DataError, a constraint, an undecodable payload)
   would block the queue forever: the batch is retried entry by entry and the bad entry moves
   to ``outbox_dead`` (logged, counted). Any other error counts as an outage (rule 2).
4. A stale fenced entry (a deposed nucleus's late write) is refused by PostgreSQL, logged,
   counted, and removed from the outbox: it must not be retried.
5. :class:`SchemaTooNewError` stops the syncer for good (status ``failed``): this node must not
   write into a schema it does not understand. The node itself keeps running on SQLite.
6. Up to ``pipeline`` batches are in flight at once, each its own transaction on its own pooled
   connection (postgres.py rule 6), and each deleted from the outbox right after ITS commit; the
   next batch is read past the last id in flight. A batch carrying fenced entries (nucleus,
   audit with a term) waits for those in flight and is written alone, so fenced decisions
   still reach PostgreSQL one at a time, in outbox order. On an outage the batches in flight
   finish (or fail) before the error is raised; what did not commit stays in the outbox.
7. On every (re)connect, the highest placement epoch in ``block_state`` goes to ``on_epoch``
   (the node raises its engine's epoch to it): rows left by nodes that are gone are then
   outranked by this node's next rows, even when no other node is left to hear it from.
"""

from __future__ import annotations

import asyncio
import logging
import random
import struct
import time
from collections.abc import Callable
from typing import Any

import asyncpg

from corec_node.log import event
from corec_node.storage.errors import SchemaTooNewError
from corec_node.storage.local import LocalStore, OutboxItem
from corec_node.storage.postgres import (
    PARTITIONS_AHEAD,
    PIPELINE,
    ApplyResult,
    PostgresSync,
    describe_dsn,
)

BATCH_ROWS = 5_000  # block rows per PostgreSQL transaction: ~50 ms of work, a few MB of COPY data
MAINTENANCE_INTERVAL = 3600.0  # seconds between partition checks (partitions are daily)

# Bad data: retrying cannot help, the entry goes to outbox_dead (rule 3).
POISON_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.DataError, asyncpg.IntegrityConstraintViolationError,
    ValueError, TypeError, KeyError, struct.error, OverflowError,
)


def is_fenced(item: OutboxItem) -> bool:
    """A nucleus decision (leader, placement) or an audit row with a term: drained alone (rule 6)."""
    if item.kind == "nucleus":
        return True
    return item.kind == "audit" and isinstance(item.payload, dict) and item.payload.get("term") is not None


class Syncer:
    """Drains ``store``'s outbox into the PostgreSQL at ``dsn`` (see the module rules)."""

    def __init__(
        self, store: LocalStore, dsn: str, *, schema: str = "corec", interval: float = 1.0,
        batch_rows: int = BATCH_ROWS, max_backoff: float = 30.0, outbox_max_rows: int = 1_000_000,
        connect_timeout: float = 5.0, command_timeout: float = 30.0,
        partitions_ahead: int = PARTITIONS_AHEAD, pipeline: int = PIPELINE,
        on_epoch: Callable[[int], None] | None = None,
    ) -> None:
        self.store = store
        self.on_epoch = on_epoch
        self.pipeline = max(1, pipeline)
        self.schema = schema
        self.interval = interval
        self.batch_rows = batch_rows
        self.max_backoff = max_backoff
        self.outbox_max_rows = outbox_max_rows
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self.partitions_ahead = partitions_ahead
        self._dsn = dsn
        self._pg: PostgresSync | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._stopping = False
        self._failures = 0
        self._retry_at = 0.0
        self._next_maintenance = 0.0
        self._oldest: float | None = None
        self._state = "idle"
        self.last_error: str | None = None
        self.drained_total = 0
        self.dropped_total = 0
        self.refused_total = 0
        self.quarantined_total = 0
        self.batches_total = 0

    @classmethod
    def from_config(cls, store: LocalStore, config: Any, **kwargs: Any) -> Syncer:
        """From a :class:`corec_node.config.Config` whose ``storage.postgres_dsn`` is set."""
        st = config.storage
        return cls(store, st.postgres_dsn, schema=st.postgres_schema, outbox_max_rows=st.outbox_max_rows, **kwargs)

    # -- control -----------------------------------------------------------------------------------

    @property
    def dsn(self) -> str:
        return self._dsn

    def set_dsn(self, dsn: str) -> None:
        """Point at another server: the current pool is dropped and the next attempt is now."""
        self._dsn = dsn
        self._drop_pg()
        self._retry_at = 0.0
        self._wake.set()

    def kick(self) -> None:
        """Drain now instead of at the next interval (e.g. after a big tick). Safe from the loop."""
        self._wake.set()

    async def connect(self) -> PostgresSync:
        """Connect (and migrate) now if not connected. The node may call this at start to refuse
        a schema that is too new; an unreachable server raises and the caller carries on."""
        if self._pg is None:
            dsn = self._dsn
            pg = await PostgresSync.connect(
                dsn, schema=self.schema, partitions_ahead=self.partitions_ahead,
                connect_timeout=self.connect_timeout, command_timeout=self.command_timeout,
            )
            if dsn != self._dsn or self._pg is not None:  # set_dsn (or another caller) won meanwhile
                pg.terminate()
                return await self.connect()
            self._pg = pg
            self._next_maintenance = time.monotonic() + MAINTENANCE_INTERVAL
            event("storage_pg_connected", logging.INFO, server=describe_dsn(self._dsn), schema=self.schema)
            if self.on_epoch is not None:  # rule 7
                try:
                    self.on_epoch(await pg.max_epoch())
                except BaseException:
                    self._drop_pg()
                    raise
        return self._pg

    def start(self) -> asyncio.Task[None]:
        """Start the drain loop as a task of the running loop (returns it)."""
        if self._task is None or self._task.done():
            self._stopping = False
            self._task = asyncio.create_task(self._run(), name="corec-storage-syncer")
        return self._task

    async def stop(self, *, flush: bool = True, timeout: float = 5.0) -> None:
        """Stop the loop; with ``flush``, first try to drain what is left. Takes at most about
        ``timeout`` seconds; what is not drained stays in the outbox for the next start."""
        deadline = time.monotonic() + timeout
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except TimeoutError:
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        left = deadline - time.monotonic()
        if flush and self._state != "failed" and self.store.outbox_rows and left > 0:
            try:
                await asyncio.wait_for(self.flush(), left)
            except Exception as exc:
                event("storage_flush_incomplete", logging.WARNING, error=repr(exc), outbox=self.store.outbox_rows)
        if self._pg is not None:
            await self._pg.close(timeout=max(0.1, min(deadline - time.monotonic(), 2.0)))
            self._pg = None
        if self._state != "failed":
            self._state = "stopped"

    def _drop_pg(self) -> None:
        if self._pg is not None:
            self._pg.terminate()
            self._pg = None

    # -- draining ------------------------------------------------------------------------------------

    async def flush(self) -> int:
        """Drain until the outbox is empty; returns block rows drained. Raises on an outage."""
        return (await self._drain_pass(None))[0]

    async def _drain_pass(self, deadline: float | None) -> tuple[int, bool]:
        """Drain the outbox front to back, ``pipeline`` batches in flight (rule 6), until it is
        empty or, with a ``deadline``, that passes or the syncer stops.

        Returns (block rows drained, True when stopped with entries probably left). Raises on
        an outage once the batches in flight have settled, and drops the pool.
        """
        pg = await self.connect()
        flying: set[asyncio.Task[int]] = set()
        drained, after = 0, 0

        async def settle(wait: str) -> None:
            nonlocal flying, drained
            if flying:
                done, flying = await asyncio.wait(flying, return_when=wait)
                errors = [e for e in (t.exception() for t in done) if e is not None]
                drained += sum(t.result() for t in done if t.exception() is None)
                if errors:
                    raise errors[0]

        try:
            while deadline is None or (time.monotonic() < deadline and not self._stopping):
                items = await self.store.outbox_batch(self.batch_rows, after=after)
                if not items:
                    await settle(asyncio.ALL_COMPLETED)
                    return drained, False
                after = items[-1].id
                if self.pipeline == 1 or any(map(is_fenced, items)):
                    await settle(asyncio.ALL_COMPLETED)
                    drained += await self._apply_batch(pg, items)
                    continue
                flying.add(asyncio.create_task(self._apply_batch(pg, items), name="corec-storage-batch"))
                if len(flying) >= self.pipeline:
                    await settle(asyncio.FIRST_COMPLETED)
            await settle(asyncio.ALL_COMPLETED)
            return drained, True
        except BaseException as exc:
            cancelled = isinstance(exc, asyncio.CancelledError)
            if cancelled:
                for t in flying:
                    t.cancel()
            if flying:  # settle them before the pool goes: a commit that lands still deletes its entries
                await asyncio.gather(*flying, return_exceptions=True)
            if not cancelled and self._pg is pg:
                self._drop_pg()  # an outage: the next attempt starts from a fresh pool
            raise

    async def _apply_batch(self, pg: PostgresSync, items: list[OutboxItem]) -> int:
        """Write one batch, then delete its entries; returns its block rows. Bad data: the batch
        again entry by entry, the bad entry to outbox_dead (rule 3). Raises on an outage."""
        try:
            result = await pg.apply(items)
        except POISON_ERRORS as exc:
            if len(items) == 1:
                await self._quarantine(items[0], exc)
                return 0
            return await self._apply_one_by_one(pg, items)
        await self._done(items, result)
        return result.rows

    async def _done(self, items: list[OutboxItem], result: ApplyResult) -> None:
        """After the PostgreSQL commit: delete the entries, count, log refusals."""
        await self.store.outbox_delete(i.id for i in items)
        self.drained_total += result.rows
        self.batches_total += 1
        for item_id, why in result.refused:
            self.refused_total += 1
            event("storage_fenced_write_refused", logging.WARNING, outbox_id=item_id, reason=why)

    async def _apply_one_by_one(self, pg: PostgresSync, items: list[OutboxItem]) -> int:
        total = 0
        for item in items:
            try:
                result = await pg.apply([item])
            except POISON_ERRORS as exc:
                await self._quarantine(item, exc)
                continue
            await self._done([item], result)
            total += result.rows
        return total

    async def _quarantine(self, item: OutboxItem, exc: BaseException) -> None:
        await self.store.quarantine(item, repr(exc))
        self.quarantined_total += 1
        event("storage_outbox_entry_quarantined", logging.ERROR, outbox_id=item.id, kind=item.kind,
              rows=item.rows, error=repr(exc))

    async def _run(self) -> None:
        self._state = "running"
        while not self._stopping:
            self._wake.clear()  # before the work: a kick() during it still wakes the next wait
            await self._trim()
            now = time.monotonic()
            more = False
            if now >= self._retry_at:
                try:
                    more = (await self._drain_pass(time.monotonic() + self.interval))[1]
                    if self._pg is not None and now >= self._next_maintenance:
                        await self._pg.maintain()
                        self._next_maintenance = now + MAINTENANCE_INTERVAL
                    if self._failures:
                        event("storage_pg_recovered", logging.INFO, after_failures=self._failures)
                    self._failures = 0
                    self._state = "running"
                    self.last_error = None
                except SchemaTooNewError as exc:
                    self._state = "failed"
                    self.last_error = str(exc)
                    self._drop_pg()
                    event("storage_pg_schema_too_new", logging.ERROR, error=str(exc))
                    return
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self._on_failure(exc)
            self._oldest = await self.store.outbox_oldest()
            if more and self._state == "running" and not self._stopping:
                await asyncio.sleep(0)  # a backlog outlasted the budget: go round again at once
                continue
            try:
                wait = self.interval
                if self._state == "backoff":
                    wait = max(0.0, min(self.interval, self._retry_at - time.monotonic()))
                await asyncio.wait_for(self._wake.wait(), wait)
            except TimeoutError:
                pass

    async def _trim(self) -> None:
        dropped = await self.store.trim_outbox(self.outbox_max_rows)
        if dropped:
            self.dropped_total += dropped
            event("storage_outbox_trimmed", logging.WARNING, dropped_history_rows=dropped,
                  dropped_total=self.dropped_total, outbox=self.store.outbox_rows, limit=self.outbox_max_rows)

    def _on_failure(self, exc: BaseException) -> None:
        self._failures += 1
        self._drop_pg()
        delay = min(self.max_backoff, self.interval * 2 ** min(self._failures - 1, 30))
        delay *= random.uniform(0.8, 1.2)
        self._retry_at = time.monotonic() + delay
        self._state = "backoff"
        self.last_error = f"{type(exc).__name__}: {exc}"
        level = logging.WARNING if self._failures == 1 or self._failures % 10 == 0 else logging.DEBUG
        event("storage_pg_unavailable", level, error=self.last_error, failures=self._failures,
              retry_in=round(delay, 2), outbox=self.store.outbox_rows)

    # -- status ------------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """A snapshot for metrics and the control socket (no I/O)."""
        oldest = self._oldest
        return {
            "connected": self._pg is not None,
            "state": self._state,
            "outbox": self.store.outbox_rows,
            "lag_seconds": max(0.0, time.time() - oldest) if oldest is not None and self.store.outbox_rows else 0.0,
            "last_error": self.last_error,
            "drained_total": self.drained_total,
            "dropped_total": self.dropped_total,
            "refused_total": self.refused_total,
            "quarantined_total": self.quarantined_total,
            "batches_total": self.batches_total,
            "retry_in": max(0.0, self._retry_at - time.monotonic()) if self._state == "backoff" else 0.0,
        }
