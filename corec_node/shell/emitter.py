"""Entities a plugin emits (``NodeFacade.emit``) into the mesh, by the producers' own path.

An emission is made into what a producer's batch on the data socket is once decoded (an
ENTITY_BATCH envelope from this node, acks 1) and handed to ``DataPlane.batch``: the same
door, flow control, memory admission, owner routing (this node's ingest for the blocks it
owns, a forward for the rest), replication and ``producers`` counters; nothing is written
twice. Its answer (a ``BatchReply``, once this node and the owners it forwarded to have
answered) is counted on the plugin's record: ``emit_accepted`` and ``emit_refused`` by
reason.

Care: plugins call from worker threads and from tasks; the data plane lives on the loop.
A call from another thread hands its batches over with ``call_soon_threadsafe`` and
returns at once; nothing here waits.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from corec_node import log
from corec_node.plugins.emit import EMIT_CHUNK
from corec_node.wire import PROTOCOL_MAJOR, PROTOCOL_MINOR, make_batch
from corec_node.wire.envelope import Envelope
from corec_node.wire.messages import BatchReply, MsgType

Take = Callable[[Any, Any, str, Callable[[Any], None] | None], None]  # DataPlane.batch


class NodeStopped(RuntimeError):
    """The node is not running (not started yet, or stopped): nothing was emitted."""


class Emitter:
    """Plugins' emissions into one node's data plane (see the module docstring)."""

    def __init__(self, *, name: str, cluster: str, take: Take, records: Callable[[str], Any]) -> None:
        """``take``: ``DataPlane.batch``; ``records(plugin)``: the plugin's PluginRecord (or
        None), where its counts go."""
        self.name = name
        self.cluster = cluster
        self._take = take
        self._records = records
        self._seq = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """The node's loop, once it runs (from its thread)."""
        self.loop = loop
        self._loop_thread = threading.get_ident()

    def emit(self, plugin: str, records: np.ndarray) -> int:
        """Hand ``records`` (checked, one channel: ``plugins/emit.py``) to the data plane;
        returns how many. From any thread; never waits."""
        loop = self.loop
        if loop is None or loop.is_closed():
            raise NodeStopped("the node is not running: nothing was emitted")
        if threading.get_ident() == self._loop_thread:
            self._submit(plugin, records)
        else:
            try:
                loop.call_soon_threadsafe(self._submit, plugin, records)
            except RuntimeError:  # closed between the test and the call
                raise NodeStopped("the node is stopping: nothing was emitted") from None
        return len(records)

    def _submit(self, plugin: str, records: np.ndarray) -> None:
        """On the loop: one producer's batch per EMIT_CHUNK records."""
        rec = self._records(plugin)
        channel = int(records["channel"][0])
        for start in range(0, len(records), EMIT_CHUNK):
            chunk = records[start:start + EMIT_CHUNK]
            header, payload = make_batch(chunk, channel)
            self._seq += 1
            env = Envelope(version=PROTOCOL_MAJOR, type=MsgType.ENTITY_BATCH, cluster=self.cluster,
                           sender=self.name, seq=self._seq, msg=header, minor=PROTOCOL_MINOR)
            if rec is not None:
                rec.emitted += len(chunk)
            try:
                self._take(env, payload, "direct", self._answer(rec))
            except Exception:  # a bug of ours must not reach the plugin, nor stop the loop
                logging.getLogger(log.LOGGER_NAME).exception("emit_failed")
                if rec is not None:
                    rec.emit_refused["error"] = rec.emit_refused.get("error", 0) + len(chunk)

    @staticmethod
    def _answer(rec: Any) -> Callable[[Any], None] | None:
        if rec is None:
            return None

        def answer(reply: Any) -> None:
            if isinstance(reply, BatchReply):
                rec.emit_accepted += reply.accepted
                for reason, count in reply.rejected.items():
                    rec.emit_refused[reason] = rec.emit_refused.get(reason, 0) + count
        return answer
