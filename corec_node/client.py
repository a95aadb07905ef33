"""Producer client: send entity batches to any node of a cluster.

    from corec_node.client import Client
    with Client("127.0.0.1:7400") as c:
        c.send(records)          # an ENTITY_DTYPE array (any channels), or columns

The node that receives a batch publishes it on its PUB stream under the channel's topic;
every record ends in the store of its block's owner. Send big batches (thousands of
records): one record per message is tens of times slower.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

import numpy as np
import zmq

from corec_node.shell.transport import tcp
from corec_node.wire import EntityBatch, as_entity_array, encode_message, make_batch
from corec_node.wire.limits import MAX_BATCH_RECORDS

LINGER_MS = 5_000  # what close() leaves queued batches to reach the node; past it they are dropped
DEFAULT_BATCH = 10_000  # records per message: 100 KB frames, far past per-message overhead


class Client:
    """A DEALER connected to one node's direct socket. Not thread-safe (ZeroMQ sockets are not)."""

    def __init__(self, addr: str, *, cluster: str = "corec", name: str | None = None,
                 batch: int = DEFAULT_BATCH, compress: bool = False, timeout: float | None = None) -> None:
        """``timeout``: seconds one batch may wait for the node to take it before ``send``
        raises TimeoutError (None: wait as long as it takes; a busy node makes its producers
        wait on purpose, so set it only to notice a node that is gone)."""
        if not 0 < batch <= MAX_BATCH_RECORDS:
            raise ValueError(f"batch must be 1..{MAX_BATCH_RECORDS}")
        self.addr = addr
        self.cluster = cluster
        self.name = name or f"client-{socket.gethostname()}-{os.getpid()}"
        self.batch = batch
        self.compress = compress
        self._ctx = zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, LINGER_MS)  # on close, give queued batches 5 s to leave
        self._sock.setsockopt(zmq.SNDHWM, 1_000)
        self.timeout = timeout
        if timeout is not None:
            self._sock.setsockopt(zmq.SNDTIMEO, max(1, int(timeout * 1000)))
        self._sock.connect(tcp(addr))
        self._seq = 0
        self.sent_records = 0

    def send(self, records: Any) -> int:
        """Send records (any channels); returns how many were queued. Blocks when the queue is full."""
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
        self.sent_records += len(arr)
        return len(arr)

    def _send_chunk(self, channel: int, chunk: np.ndarray) -> None:
        """One ENTITY_BATCH of valid records of one channel. Uncompressed, the payload is the
        records' own memory, copied once by ZeroMQ (the caller may reuse its array at once)."""
        if self.compress:
            header, payload = make_batch(chunk, channel, compress=True)
        else:
            header, payload = EntityBatch(channel=channel, count=len(chunk), compressed=False), memoryview(chunk).cast("B")
        self._seq += 1
        try:
            self._sock.send_multipart(encode_message(header, sender=self.name, seq=self._seq, cluster=self.cluster,
                                                     payload=payload))
        except zmq.Again:
            raise TimeoutError(f"{self.addr} did not take a batch within {self.timeout:g} s") from None

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def flush_all() -> bool:
    """Wait until ZeroMQ has written out what every closed ``Client`` left queued: True, or
    False when LINGER_MS passed first (what was still queued is dropped). It ends this
    process's ZeroMQ context: call it once, after the last Client is closed."""
    started = time.perf_counter()
    zmq.Context.instance().term()
    return (time.perf_counter() - started) * 1000 < LINGER_MS
