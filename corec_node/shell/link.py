"""The link between the node process and its mesh process: ZeroMQ PUSH/PULL pairs over
unix sockets in a private directory, and both ends.

The mesh process (``mesh_process.py``) owns the node's network sockets and its control
plane; the node process owns the data plane. Across the link travel:

- data messages, as the raw frames that arrived (``D`` direct, with the producer's ROUTER
  identity; ``B`` broadcast), mesh -> node, and what the data plane sends (``S`` to one
  member, ``P`` published, ``Y`` a reply to a producer), node -> mesh. Frames are not
  decoded again on the way: the mesh process forwards bytes;
- events (``E``), mesh -> node: the cluster view, the leader's placement digest, member
  and leader changes for the plugin hooks, rows for SQLite, counters, a stop request;
- operations (``C``), node -> mesh: the placement digest our heartbeats carry, the engine's
  beat, stop; and requests (``Q``) answered by replies (``R``): the control commands.

Two lanes each way, read by one PULL that takes from each in turn (ZeroMQ fair-queues
its pipes), so a backlog of data never delays an event:

- the *data lane* (``put``) is bounded: at most ``LINK_BYTES`` sent and not yet read by
  the other end (it returns credit, ``K``, every 1/``CREDIT_SHARE`` of it that it reads), and at
  most ``LINK_HWM`` messages. Past either, the message is dropped and counted, as a full
  socket towards a peer is (``dropped["link_full"]``): a stalled reader costs bounded
  memory, never the other loop's time;
- the *control lane* (``put_object``: events, operations, requests, replies, credit) is
  lossless and ordered: its volume is a few messages a second, and a lost view change or
  vote would leave the two processes disagreeing about the cluster.

Events and requests are pickled: both ends run the same code and the sockets are private
to the two processes. Sends never block either loop. A socket is used by one loop for one
direction only, on purpose: a ZeroMQ socket's file descriptor is edge-triggered, and a
plain send on a socket that a loop also awaits for receiving can swallow the wake-up of a
message that arrived meanwhile.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import pickle
from collections.abc import Callable, Sequence
from typing import Any

import zmq

from corec_node.log import LOGGER_NAME
from corec_node.shell.reader import SocketReader

DIRECT, BROADCAST, EVENT, REPLY = b"D", b"B", b"E", b"R"  # mesh -> node
SEND, PUBLISH, ANSWER, OPERATION, REQUEST = b"S", b"P", b"Y", b"C", b"Q"  # node -> mesh
CREDIT = b"K"  # either way, on the control lane: bytes of data read so far (kept by LinkEnd)
DATA_KINDS = frozenset((DIRECT, BROADCAST, SEND, PUBLISH, ANSWER))  # the data lane's; the rest is control
LINK_HWM = 200_000  # data messages queued either way before the link drops (and counts)
LINK_BYTES = 64 << 20  # data bytes sent and not yet read by the other end, at most
CREDIT_SHARE = 64  # the reader returns credit every LINK_BYTES / CREDIT_SHARE bytes it reads


def endpoint_for(pid: int) -> str:
    """Unix sockets in a fresh directory of mode 0700 (``mkdtemp``): only this user can
    connect. (Abstract sockets have no permission check: any local process could.) The
    node process removes the directory when the link closes."""
    import tempfile

    return f"ipc://{tempfile.mkdtemp(prefix=f'corec-link-{pid}-')}/s"


class LinkEnd:
    """One end of the link: a PUSH per lane for non-blocking sends, a PULL and its receive
    loop. The node process binds (``bind=True``: its PUSHes on ``endpoint-down`` and
    ``endpoint-down-c``, its PULL on ``endpoint-up``); the mesh process connects the other
    way round (both its PUSHes to ``endpoint-up``)."""

    def __init__(self, endpoint: str, *, bind: bool) -> None:
        self.ctx = zmq.Context()  # plain sockets: NOBLOCK raises at once, no future
        self._out = self.ctx.socket(zmq.PUSH)
        self._ctl = self.ctx.socket(zmq.PUSH)
        self.sock = self.ctx.socket(zmq.PULL)  # read by SocketReader, never awaited
        for sock in (self._out, self._ctl, self.sock):
            sock.setsockopt(zmq.LINGER, 0)
        self._out.setsockopt(zmq.SNDHWM, LINK_HWM)
        self._ctl.setsockopt(zmq.SNDHWM, 0)  # no limit: the control lane never drops
        self.sock.setsockopt(zmq.RCVHWM, LINK_HWM)
        if bind:
            self._out.bind(f"{endpoint}-down")
            self._ctl.bind(f"{endpoint}-down-c")
            self.sock.bind(f"{endpoint}-up")
        else:
            self._out.connect(f"{endpoint}-up")
            self._ctl.connect(f"{endpoint}-up")
            self.sock.connect(f"{endpoint}-down")
            self.sock.connect(f"{endpoint}-down-c")
        self.dropped: collections.Counter[str] = collections.Counter()
        self.sent_bytes = 0  # data bytes this end sent
        self.credited_bytes = 0  # ... of which the other end has read this many
        self.read_bytes = 0  # data bytes this end read
        self._credit_sent = 0
        self._reader: SocketReader | None = None

    @property
    def in_flight(self) -> int:
        """Data bytes sent and not yet known to be read (at most ``LINK_BYTES``)."""
        return self.sent_bytes - self.credited_bytes

    def put(self, frames: Sequence[Any]) -> bool:
        """Data: dropped and counted when the other end is ``LINK_BYTES`` behind."""
        size = _nbytes(frames)
        if self.sent_bytes - self.credited_bytes + size > LINK_BYTES:
            self.dropped["link_full"] += 1
            return False
        try:
            self._out.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            self.dropped["link_full"] += 1
            return False
        except (zmq.ZMQError, ValueError, TypeError):
            self.dropped["link_error"] += 1
            return False
        self.sent_bytes += size
        return True

    def put_object(self, kind: bytes, obj: Any) -> bool:
        """Control: never dropped while the other end lives (False only once it is closed)."""
        try:
            self._ctl.send_multipart([kind, pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)],
                                     flags=zmq.NOBLOCK)
        except (zmq.ZMQError, pickle.PicklingError, TypeError) as exc:
            self.dropped["link_error"] += 1
            logging.getLogger(LOGGER_NAME).warning("link_control_send_failed: %s", exc)
            return False
        return True

    def _take(self, kind: bytes, frames: list[Any]) -> bool:
        """Count data read and return credit; True: the message was the link's own."""
        if kind == CREDIT:
            self.credited_bytes = max(self.credited_bytes, int(frames[0]))
            return True
        if kind not in DATA_KINDS:
            return False
        self.read_bytes += len(kind) + _nbytes(frames)
        if self.read_bytes - self._credit_sent >= LINK_BYTES // CREDIT_SHARE:
            self._credit_sent = self.read_bytes
            try:
                self._ctl.send_multipart([CREDIT, str(self.read_bytes).encode()], flags=zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
        return False

    def start(self, handler: Callable[[bytes, list[Any]], None]) -> None:
        """Read the link from the loop's reader callback (reader.py); needs the running loop."""
        def take(frames: list[Any]) -> None:
            if not self._take(frames[0], frames[1:]):
                handler(frames[0], frames[1:])

        self._reader = SocketReader(self.sock, take, self.dropped, prefix="link_", failure_event="link_handler_failed")
        self._reader.start()

    async def close(self, linger_ms: int = 0) -> None:
        """``linger_ms``: how long what is still queued may take to leave."""
        if self._reader is not None:
            self._reader.close()
        self._out.close(linger_ms)
        self._ctl.close(linger_ms)
        self.sock.close(0)
        self.ctx.term()


def _nbytes(frames: Sequence[Any]) -> int:
    return sum(len(f) if type(f) is bytes else memoryview(f).nbytes for f in frames)


class Requests:
    """Requests awaiting their replies, by number (the node process's side)."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Any]] = {}

    def new(self) -> tuple[int, asyncio.Future[Any]]:
        rid = next(self._ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[rid] = fut
        return rid, fut

    def done(self, rid: int, ok: bool, value: Any) -> None:
        fut = self._waiting.pop(rid, None)
        if fut is None or fut.done():
            return
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(RequestFailed(value))

    def forget(self, rid: int) -> None:
        self._waiting.pop(rid, None)

    def fail_all(self, why: str) -> None:
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(RequestFailed(why))
        self._waiting.clear()


class RequestFailed(Exception):
    """The mesh process refused a request (its one-line reason) or is gone."""
