"""Producer client: send entity batches to any node of a cluster.

    from corec_node.client import Client
    with Client("127.0.0.1:7400") as c:
        c.send(records)          # an ENTITY_DTYPE array (any channels), or columns
    print(c.accepted, c.rejected, c.unconfirmed)

The node that receives a batch publishes it on its PUB stream under the channel's topic;
every record ends in the store of its block's owner. Send big batches (thousands of
records): one record per message is tens of times slower.

Every batch is answered (SPEC 9.4, protocol 1.4): accepted (queued for storing and
republished) or refused with a reason. The client keeps at most ``window`` batches
unanswered, so a busy node holds its producers without ever holding its own socket; a
batch refused as busy is sent again, with backoff, for ``retry_busy`` seconds. A node that
answers nothing within ``reply_timeout`` (down, of another cluster, or older than 1.4)
leaves its batches *unconfirmed*: the client then stops waiting for answers from it and
counts everything it sends there as unconfirmed. An answer that comes late still counts:
the batch moves from unconfirmed to what the node said.
"""

from __future__ import annotations

import collections
import os
import socket
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import zmq

from corec_node.shell.transport import tcp
from corec_node.wire import (
    BatchReply,
    EntityBatch,
    ReplyStage,
    WireError,
    as_entity_array,
    decode_message,
    encode_message,
    make_batch,
)
from corec_node.wire.limits import MAX_BATCH_RECORDS

LINGER_MS = 5_000  # what close() leaves queued batches to reach the node; past it they are dropped
DEFAULT_BATCH = 10_000  # records per message: 100 KB frames, far past per-message overhead
DEFAULT_WINDOW = 32  # batches unanswered at most: 320 K records in flight keep a node's worker busy
REPLY_TIMEOUT = 30.0  # seconds a batch waits for its answer (a node refuses as busy after 5 of its own)
RETRY_BUSY = 30.0  # seconds a batch refused as busy is offered again
BACKOFF_MIN, BACKOFF_MAX = 0.01, 0.5  # seconds between two offers of a busy batch, doubling
LATE_KEPT = 1024  # unconfirmed batches whose late answer still counts (older ones stay unconfirmed)


@dataclass(slots=True)
class _Batch:
    """One batch on its way: what to send again if the node is busy."""

    channel: int
    count: int
    payload: bytes
    first_sent: float
    sent: float = 0.0
    backoff: float = BACKOFF_MIN
    due: float | None = None  # when to offer it again, once refused as busy


class Client:
    """A DEALER connected to one node's direct socket. Not thread-safe (ZeroMQ sockets are not)."""

    def __init__(self, addr: str, *, cluster: str = "corec", name: str | None = None,
                 batch: int = DEFAULT_BATCH, compress: bool = False, timeout: float | None = None,
                 window: int = DEFAULT_WINDOW, reply_timeout: float = REPLY_TIMEOUT,
                 retry_busy: float = RETRY_BUSY) -> None:
        """``timeout``: seconds ``send`` may wait for the node to take or answer a batch
        before it raises TimeoutError (None: wait; a busy node makes its producers wait on
        purpose, so set it only to notice a node that is gone). ``window``: batches sent
        and not yet answered, at most. ``reply_timeout``: seconds after which an unanswered
        batch counts as unconfirmed. ``retry_busy``: seconds a batch refused as busy is
        offered again (0: never)."""
        if not 0 < batch <= MAX_BATCH_RECORDS:
            raise ValueError(f"batch must be 1..{MAX_BATCH_RECORDS}")
        if window < 1 or reply_timeout <= 0 or retry_busy < 0:
            raise ValueError("window must be >= 1, reply_timeout > 0 and retry_busy >= 0")
        self.addr = addr
        self.cluster = cluster
        self.name = name or f"client-{socket.gethostname()}-{os.getpid()}"
        self.batch = batch
        self.compress = compress
        self.window = window
        self.reply_timeout = reply_timeout
        self.retry_busy = retry_busy
        self._ctx = zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, LINGER_MS)  # on close, give queued batches 5 s to leave
        self._sock.setsockopt(zmq.SNDHWM, 1_000)
        self.timeout = timeout
        if timeout is not None:
            self._sock.setsockopt(zmq.SNDTIMEO, max(1, int(timeout * 1000)))
        self._sock.connect(tcp(addr))
        self._seq = 0
        self._pending: dict[int, _Batch] = {}  # sent, awaiting an answer, by the seq it was sent under
        self._parked: list[_Batch] = []  # refused as busy, to be offered again when due
        self._late: collections.OrderedDict[int, _Batch] = collections.OrderedDict()  # counted unconfirmed, answer still welcome
        self.sent_records = 0  # records handed to send()
        self.accepted = 0  # records the node accepted (queued for storing, republished)
        self.rejected: collections.Counter[str] = collections.Counter()  # records refused, by reason
        self.unconfirmed = 0  # records sent and never answered
        self.retries = 0  # batches offered again after a busy answer
        self.answered = False  # the node has answered: it speaks 1.4 or later
        self.silent = False  # it answered nothing within reply_timeout: answers are no longer awaited

    # -- sending --------------------------------------------------------------------------

    def send(self, records: Any) -> int:
        """Send records (any channels); returns how many were handed over. Waits while
        ``window`` batches are unanswered."""
        arr = as_entity_array(records)  # validated once here, not again per frame
        if arr.size == 0:
            return 0
        channels = np.ascontiguousarray(arr["channel"])
        cuts = np.flatnonzero(channels[1:] != channels[:-1]) + 1
        if len(cuts) and not (channels[cuts] > channels[cuts - 1]).all():  # not grouped by channel yet
            arr = arr[np.argsort(channels, kind="stable")]
            channels = np.ascontiguousarray(arr["channel"])
            cuts = np.flatnonzero(channels[1:] != channels[:-1]) + 1
        for part in np.split(arr, cuts) if len(cuts) else (arr,):
            channel = int(part["channel"][0])
            for start in range(0, len(part), self.batch):
                self._send_chunk(channel, part[start:start + self.batch])
                self.sent_records += min(self.batch, len(part) - start)
        return len(arr)

    def _send_chunk(self, channel: int, chunk: np.ndarray) -> None:
        """One ENTITY_BATCH of valid records of one channel, kept (as bytes: the caller may
        reuse its array at once) until the node answers it."""
        if self.compress:
            _, payload = make_batch(chunk, channel, compress=True)
        else:
            payload = chunk.tobytes()
        self._wait_for_room()
        item = _Batch(channel, len(chunk), payload, time.monotonic())
        self._put(item)

    def _put(self, item: _Batch) -> None:
        header = EntityBatch(channel=item.channel, count=item.count, compressed=self.compress)
        self._seq += 1
        try:
            self._sock.send_multipart(encode_message(header, sender=self.name, seq=self._seq, cluster=self.cluster,
                                                     payload=item.payload))
        except zmq.Again:
            raise TimeoutError(f"{self.addr} did not take a batch within {self.timeout:g} s") from None
        if self.silent:  # no answer is awaited: counted now, a late one still welcome
            self._unconfirmed(self._seq, item)
            return
        item.sent = time.monotonic()
        self._pending[self._seq] = item

    def _wait_for_room(self) -> None:
        while len(self._pending) + len(self._parked) >= self.window:
            self._pump(self._next_deadline(), in_send=True)

    # -- answers ------------------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every batch sent is answered (or counted unconfirmed, or ``timeout``
        seconds pass); True when none is left unanswered."""
        end = None if timeout is None else time.monotonic() + timeout
        while self._pending or self._parked:
            deadline = self._next_deadline()
            if end is not None:
                if time.monotonic() >= end:
                    return False
                deadline = min(deadline, end)
            self._pump(deadline)
        if self._late:
            self._pump(time.monotonic())  # late answers that came meanwhile
        return True

    def _next_deadline(self) -> float:
        """When something must happen without an answer: a busy batch's next offer, the
        oldest batch's reply timeout, or ``timeout``."""
        limit = self.reply_timeout if self.timeout is None else min(self.timeout, self.reply_timeout)
        times = [b.sent + limit for b in self._pending.values()] + [b.due for b in self._parked if b.due is not None]
        return min(times, default=time.monotonic())

    def _pump(self, deadline: float, *, in_send: bool = False) -> None:
        """Read answers until ``deadline``, then offer due batches again and expire old ones
        (``in_send``: a node that never answered within ``timeout`` raises TimeoutError)."""
        wait_ms = max(0, int((deadline - time.monotonic()) * 1000))
        if self._sock.poll(wait_ms, zmq.POLLIN):
            while True:
                try:
                    frames = self._sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                self._on_answer(frames)
        self._due(in_send)

    def _on_answer(self, frames: list[bytes]) -> None:
        try:
            _, env, _ = decode_message(frames, cluster=self.cluster)
        except WireError:
            return  # not ours to understand: the batch it may answer expires unconfirmed
        reply = env.msg
        if not isinstance(reply, BatchReply) or reply.stage != ReplyStage.QUEUED:
            return  # a later stage or another message: nothing 1.4 acts on
        item = self._pending.pop(reply.seq, None)
        if item is None:
            item = self._late.pop(reply.seq, None)
            if item is None:
                return  # answered already
            self.unconfirmed -= item.count  # a late answer: the batch is accounted for after all
            self.silent = False
        self.answered = True
        accepted = min(reply.accepted, item.count)
        self.accepted += accepted
        left = item.count - accepted
        if not left:
            return
        refused = dict(reply.rejected) or {"unknown": left}
        if set(refused) == {"busy"} and not accepted and time.monotonic() - item.first_sent < self.retry_busy:
            item.due = time.monotonic() + item.backoff
            item.backoff = min(item.backoff * 2, BACKOFF_MAX)
            self._parked.append(item)
            return
        first = next(iter(refused))
        for reason, n in refused.items():  # the node's counts, and what it did not count under the first
            take = min(n, left)
            self.rejected[reason] += take
            left -= take
        if left:
            self.rejected[first] += left

    def _due(self, in_send: bool) -> None:
        now = time.monotonic()
        due = [b for b in self._parked if b.due is not None and b.due <= now]
        if due:
            self._parked = [b for b in self._parked if b not in due]
            for item in due:
                self.retries += 1
                item.due = None
                self._put(item)
        for key, item in list(self._pending.items()):
            if in_send and self.timeout is not None and now - item.sent >= self.timeout and not self.answered:
                self._give_up_answers()  # nothing more to wait for: close() returns at once
                raise TimeoutError(f"{self.addr} did not take a batch within {self.timeout:g} s")
            if now - item.sent >= self.reply_timeout:
                del self._pending[key]
                self._unconfirmed(key, item)
                if not self.answered:
                    self._give_up_answers()
                    return

    def _unconfirmed(self, seq: int, item: _Batch) -> None:
        """No answer in time: counted unconfirmed until (if ever) its answer comes."""
        self.unconfirmed += item.count
        self._late[seq] = item
        while len(self._late) > LATE_KEPT:
            self._late.popitem(last=False)

    def _give_up_answers(self) -> None:
        """Nothing answered within reply_timeout: an older node, or none. Count what is in
        flight as unconfirmed and stop waiting for answers (ZeroMQ's queue holds the rest)."""
        self.silent = True
        for seq, item in self._pending.items():
            self._unconfirmed(seq, item)
        for item in self._parked:
            self.unconfirmed += item.count
        self._pending.clear()
        self._parked.clear()
        if self.timeout is None:  # the legacy node's queue blocks the send: bound it anyway
            self._sock.setsockopt(zmq.SNDTIMEO, max(1, int(self.reply_timeout * 1000)))
            self.timeout = self.reply_timeout

    # -- the end ------------------------------------------------------------------------

    @property
    def outstanding(self) -> int:
        """Records sent and not answered yet (busy ones waiting to be offered again included)."""
        return sum(b.count for b in [*self._pending.values(), *self._parked])

    def close(self) -> None:
        """Wait for the answers still due (``flush``), then close the socket."""
        if not self._sock.closed:
            try:
                self.flush()
            finally:
                self._sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is not None:  # an error on the way: do not wait for answers
            self._sock.close()
            return
        self.close()


def flush_all() -> bool:
    """Wait until ZeroMQ has written out what every closed ``Client`` left queued: True, or
    False when LINGER_MS passed first (what was still queued is dropped). It ends this
    process's ZeroMQ context: call it once, after the last Client is closed."""
    started = time.perf_counter()
    zmq.Context.instance().term()
    return (time.perf_counter() - started) * 1000 < LINGER_MS
