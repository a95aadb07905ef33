"""Reading a ZeroMQ socket from the event loop's reader callback (``SocketReader``).

An awaited ``recv`` costs a Future and one more turn of the loop for every message. On an
idle node every message wakes the loop by itself, so that turn is most of what a message
costs: 540 us against 270 us a message on loopback (bench/idle_mesh.py measures a whole
cluster). ``SocketReader`` registers the socket's file descriptor with ``add_reader`` and
hands each queued message to a plain function, for at most ``YIELD_EVERY`` seconds at a
time before the loop's other work (timers, the control socket) gets its turn.

libzmq's descriptor is edge-like: readable means "look at the socket", and another
operation on the same socket (a send, a subscription) can take that signal while a message
waits. Whoever does one calls ``poke``, which schedules a look.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import zmq

from corec_node.log import LOGGER_NAME

__all__ = ["YIELD_EVERY", "ZERO_COPY_MIN", "SocketReader"]

YIELD_EVERY = 0.005  # a receive backlog holds the loop at most ~5 ms at a time
ZERO_COPY_MIN = 65536  # ZeroMQ copies frames under 64 KiB anyway; above, hand out views

FrameHandler = Callable[[list[Any]], Awaitable[None] | None]


class SocketReader:
    """Takes one socket's messages in the loop's reader callback. A handler that returns
    an awaitable holds further reading until it is done (backpressure); an exception in a
    handler is logged and counted (``dropped[prefix + "handler_error"]``), never raised."""

    __slots__ = ("_closed", "_fd", "_handler", "_loop", "_prefix", "_scheduled", "_sock", "_waiting",
                 "dropped", "failure_event")

    def __init__(self, sock: zmq.Socket, handler: FrameHandler, dropped: collections.Counter[str], *,
                 prefix: str = "", failure_event: str = "receive_handler_failed") -> None:
        self._sock = sock
        self._handler = handler
        self.dropped = dropped
        self._prefix = prefix
        self.failure_event = failure_event
        self._fd: int = sock.getsockopt(zmq.FD)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scheduled = False
        self._waiting: asyncio.Future[Any] | None = None
        self._closed = False

    def start(self) -> None:
        """Needs the running loop; messages queued before are taken at once."""
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._fd, self._readable)
        self.poke()

    def poke(self) -> None:
        """Look at the socket soon: after a send or subscription on it, which may have
        taken the descriptor's signal for a message that is waiting."""
        if self._scheduled or self._loop is None or self._waiting is not None or self._closed:
            return
        self._scheduled = True
        self._loop.call_soon(self._poked)

    def close(self) -> None:
        """Stop reading (before the socket closes)."""
        if self._closed:
            return
        self._closed = True
        if self._loop is not None and not self._loop.is_closed() and self._waiting is None:
            self._loop.remove_reader(self._fd)
        if self._waiting is not None:
            self._waiting.cancel()

    def _readable(self) -> None:
        if not self._scheduled:  # a look is already on its way: at most one a loop turn
            self._drain()

    def _poked(self) -> None:
        self._scheduled = False
        self._drain()

    def _drain(self) -> None:
        if self._closed or self._waiting is not None:
            return
        assert self._loop is not None
        until = self._loop.time() + YIELD_EVERY
        sock = self._sock
        while True:
            try:
                raw = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return  # the socket is empty and its descriptor armed again
            except zmq.ZMQError as exc:
                if sock.closed or exc.errno in (zmq.ETERM, zmq.ENOTSOCK):
                    self.close()  # for good: looking again would only spin
                    return
                self.dropped[self._prefix + "recv_error"] += 1
                self.poke()  # an error must not spin here: the rest on the next turn
                return
            # small frames as bytes (cheapest to parse); big payloads as zero-copy views that
            # keep their zmq.Frame alive for as long as someone holds them
            frames = [f.bytes if len(f) < ZERO_COPY_MIN else f.buffer for f in raw]
            raw = None
            try:
                result = self._handler(frames)
            except Exception:  # a bug on one message must not stop this socket's reading
                self._failed()
                result = None
            # drop the message now, not when the next one comes: on a quiet socket a
            # stranger's 1.5 GB would otherwise stay in memory until someone else speaks
            frames = None  # type: ignore[assignment]
            if result is not None and self._hold(result):
                return
            if self._loop.time() >= until:
                self.poke()  # the rest after the loop's other work
                return

    def _hold(self, result: Awaitable[None]) -> bool:
        """Reading waits for ``result``; False (counted) when it is not awaitable."""
        assert self._loop is not None
        try:
            waiting = asyncio.ensure_future(result)
        except TypeError:
            self._failed()
            return False
        self._waiting = waiting
        self._loop.remove_reader(self._fd)
        waiting.add_done_callback(self._resume)
        return True

    def _resume(self, done: asyncio.Future[Any]) -> None:
        self._waiting = None
        if self._closed or self._loop is None or self._loop.is_closed():
            return
        if done.cancelled():
            self._failed()  # cancelled by someone else than close(): the socket is still read
        elif done.exception() is not None:
            self._failed(done.exception())
        self._loop.add_reader(self._fd, self._readable)
        self.poke()

    def _failed(self, exc: BaseException | None = None) -> None:
        self.dropped[self._prefix + "handler_error"] += 1
        logger = logging.getLogger(LOGGER_NAME)
        if exc is None:
            logger.error(self.failure_event, exc_info=True)
        else:
            logger.error(self.failure_event, exc_info=exc)
