"""The producer client against a real ROUTER socket: what it puts on the wire."""

from __future__ import annotations

import numpy as np
import zmq

from corec_node.client import Client
from corec_node.wire import decode_batch, decode_message
from records import entities


def _received(router: zmq.Socket, count: int) -> list[tuple[int, np.ndarray]]:
    out = []
    while sum(len(r) for _, r in out) < count:
        assert router.poll(5000), "the client's batches did not arrive"
        frames = router.recv_multipart()[1:]  # identity stripped
        _, env, payload = decode_message(frames, cluster="corec")
        out.append((env.msg.channel, decode_batch(env.msg, payload).copy()))
    return out


def test_send_splits_by_channel_keeps_order_and_copies(tmp_path):
    ctx = zmq.Context.instance()
    router = ctx.socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    try:
        rng = np.random.default_rng(3)
        channels = rng.integers(0, 3, 2_500)  # interleaved
        recs = entities(np.arange(2_500), channels, rng.normal(0, 1, 2_500))
        with Client(f"127.0.0.1:{port}", batch=400) as client:
            assert client.send(recs) == 2_500
            recs["value"] = 99.0  # the caller reuses its array at once: what was sent stays
            got = _received(router, 2_500)
        assert all(len(r) <= 400 and (r["channel"] == ch).all() for ch, r in got)
        for ch in range(3):
            sent = np.concatenate([r for c, r in got if c == ch])
            want = recs[recs["channel"] == ch]
            assert np.array_equal(sent["id"], want["id"])  # in the caller's order
            assert not np.any(sent["value"] == 99.0)
    finally:
        router.close(0)


def test_a_send_nobody_takes_times_out_when_asked_to():
    import socket as pysocket

    import pytest

    with pysocket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # 2000 one-record batches: past the 1000-batch queue
    recs = entities(np.arange(2_000), active=0)
    with Client(f"127.0.0.1:{port}", batch=1, timeout=0.2) as client:
        with pytest.raises(TimeoutError, match="did not take a batch within 0.2 s"):
            client.send(recs)
        client._sock.setsockopt(zmq.LINGER, 0)  # nothing to wait for at close
