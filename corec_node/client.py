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
from typing import Any

import numpy as np
import zmq

from corec_node.transport import tcp
from corec_node.wire import as_entity_array, encode_message, make_batch
from corec_node.wire.limits import MAX_BATCH_RECORDS

DEFAULT_BATCH = 10_000  # records per message: 100 KB frames, far past per-message overhead


class Client:
    """A DEALER connected to one node's direct socket. Not thread-safe (ZeroMQ sockets are not)."""

    def __init__(self, addr: str, *, cluster: str = "corec", name: str | None = None,
                 batch: int = DEFAULT_BATCH, compress: bool = False) -> None:
        if not 0 < batch <= MAX_BATCH_RECORDS:
            raise ValueError(f"batch must be 1..{MAX_BATCH_RECORDS}")
        self.addr = addr
        self.cluster = cluster
        self.name = name or f"client-{socket.gethostname()}-{os.getpid()}"
        self.batch = batch
        self.compress = compress
        self._ctx = zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 5_000)  # on close, give queued batches 5 s to leave
        self._sock.setsockopt(zmq.SNDHWM, 1_000)
        self._sock.connect(tcp(addr))
        self._seq = 0
        self.sent_records = 0

    def send(self, records: Any) -> int:
        """Send records (any channels); returns how many were queued. Blocks when the queue is full."""
        arr = as_entity_array(records)
        if arr.size == 0:
            return 0
        channels = arr["channel"]
        if (channels == channels[0]).all():
            groups = [(int(channels[0]), arr)]
        else:
            order = np.argsort(channels, kind="stable")
            arr = arr[order]
            cuts = np.flatnonzero(np.diff(arr["channel"])) + 1
            groups = [(int(part["channel"][0]), part) for part in np.split(arr, cuts)]
        for channel, part in groups:
            for start in range(0, len(part), self.batch):
                chunk = part[start:start + self.batch]
                header, payload = make_batch(chunk, channel, compress=self.compress)
                self._seq += 1
                frames = encode_message(header, sender=self.name, seq=self._seq, cluster=self.cluster, payload=payload)
                self._sock.send_multipart(frames, copy=len(payload) < 65536)
        self.sent_records += len(arr)
        return len(arr)

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
