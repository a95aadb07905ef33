"""Background writes to the node's local store: audit rows, alerts, block state, the member
snapshot and the nucleus term, each off the hot path as its own task.

A failed write is logged with what it was and counted (``errors``, shown by ``status``);
it never raises into the loop that asked for it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Sequence
from typing import Any

from corec_node import log
from corec_node.storage import LocalStore, StaleTermError, StorageError
from corec_node.wire.messages import MemberState

CLOSE_WAIT = 2.0  # seconds each pending write gets at shutdown


class Recorder:
    """Owns the tasks of pending writes; ``store`` is None until storage is open."""

    def __init__(self) -> None:
        self.store: LocalStore | None = None
        self.errors = 0
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, what: str, coro: Coroutine[Any, Any, Any]) -> None:
        """Run a write off the hot path; a failure is logged and counted, never fatal."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and (exc := t.exception()) is not None:
                self.errors += 1
                level = logging.WARNING if isinstance(exc, (StorageError, StaleTermError)) else logging.ERROR
                log.event("storage_write_failed", level, what=what, error=str(exc) or type(exc).__name__)

        task.add_done_callback(done)

    def audit(self, kind: str, subject: str, reason: str, *, term: int | None = None, **details: Any) -> None:
        if self.store is not None:
            self.spawn(f"audit {kind}", self.store.add_audit(kind, subject, reason, term=term,
                                                             details=details or None))

    def alert(self, kind: str, text: str, *, severity: str, block: Any, details: dict[str, Any],
              uid: str | None = None, node: str | None = None) -> None:
        if self.store is not None:
            self.spawn("alert", self.store.add_alert(kind, text, severity=severity, block=block, details=details,
                                                     uid=uid, node=node))

    def block_state(self, rows: list[dict[str, Any]], wall: float) -> None:
        if self.store is not None:
            self.spawn("block state", self.store.record_tick(rows, wall))

    def members(self, snapshot: Sequence[MemberState]) -> None:
        if self.store is not None:
            self.spawn("member snapshot", self.store.save_members(list(snapshot)))

    def nucleus(self, term: int, leader: str) -> None:
        if self.store is not None:
            self.spawn("nucleus term", self.store.record_nucleus(term, leader))

    def prune(self, before_wall: float) -> None:
        if self.store is not None:
            self.spawn("prune history", self.store.prune_history(before_wall))

    async def drain(self) -> None:
        """At shutdown: give every pending write a moment to finish."""
        for task in list(self._tasks):
            try:
                await asyncio.wait_for(task, CLOSE_WAIT)
            except Exception:
                pass
