"""The producer client against a real ROUTER socket: what it puts on the wire, and how it
counts the node's answers (BatchReply, SPEC 9.4)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import zmq

from corec_node.client import Client
from corec_node.testing.cluster import eventually
from corec_node.wire import BatchReply, decode_batch, decode_message, encode_message
from records import entities


def _answer(router: Router, identity: bytes, seq: int, accepted: int, rejected: dict | None = None) -> None:
    reply = BatchReply(seq=seq, accepted=accepted, rejected=rejected or {})
    router.send_multipart([identity, *encode_message(reply, sender="node", seq=0, cluster="corec")])


def _received(router: Router, count: int) -> list[tuple[int, np.ndarray]]:
    """Batches until ``count`` records came, each answered as accepted, as a node does."""
    out = []
    while sum(len(r) for _, r in out) < count:
        assert router.poll(5000), "the client's batches did not arrive"
        identity, *frames = router.recv_multipart()
        _, env, payload = decode_message(frames, cluster="corec")
        out.append((env.msg.channel, decode_batch(env.msg, payload).copy()))
        _answer(router, identity, env.seq, env.msg.count)
    return out


class Router:
    """A ROUTER on a random loopback port, where a node would be."""

    def __init__(self) -> None:
        self.sock = zmq.Context.instance().socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.port = self.sock.bind_to_random_port("tcp://127.0.0.1")

    def __getattr__(self, name: str):
        return getattr(self.sock, name)


@pytest.fixture
def router():
    r = Router()
    yield r
    r.sock.close(0)


def test_send_splits_by_channel_keeps_order_and_copies(router):
    rng = np.random.default_rng(3)
    channels = rng.integers(0, 3, 2_500)  # interleaved
    recs = entities(np.arange(2_500), channels, rng.normal(0, 1, 2_500))
    with Client(f"127.0.0.1:{router.port}", batch=400) as client:
        assert client.send(recs) == 2_500
        recs["value"] = 99.0  # the caller reuses its array at once: what was sent stays
        got = _received(router, 2_500)
    assert all(len(r) <= 400 and (r["channel"] == ch).all() for ch, r in got)
    for ch in range(3):
        sent = np.concatenate([r for c, r in got if c == ch])
        want = recs[recs["channel"] == ch]
        assert np.array_equal(sent["id"], want["id"])  # in the caller's order
        assert not np.any(sent["value"] == 99.0)
    assert (client.sent_records, client.accepted, client.unconfirmed, dict(client.rejected)) == (2_500, 2_500, 0, {})


def test_the_window_holds_the_producer_until_the_node_answers(router):
    client = Client(f"127.0.0.1:{router.port}", batch=10, window=4)
    sending = threading.Thread(target=client.send, args=(entities(np.arange(100)),))
    sending.start()
    first = []
    while len(first) < 4:  # the window: four batches come, then nothing until one is answered
        assert router.poll(5000)
        first.append(router.recv_multipart())
    assert not router.poll(300)  # (a pass proves nothing is lost by waiting longer)
    seen = 4
    for identity, *frames in first:
        _, env, _ = decode_message(frames, cluster="corec")
        _answer(router, identity, env.seq, env.msg.count)
    while seen < 10:
        assert router.poll(5000)
        identity, *frames = router.recv_multipart()
        _, env, _ = decode_message(frames, cluster="corec")
        _answer(router, identity, env.seq, env.msg.count)
        seen += 1
    sending.join(10)
    assert client.flush(10) and client.accepted == 100
    client.close()


def test_refusals_are_counted_and_busy_batches_offered_again(router):
    seen = []  # (first id, seq) of each batch as it came

    def node():  # batch 0..9 busy once, 10..19 malformed, the rest accepted
        while len(seen) < 4 and router.poll(5000):
            identity, *frames = router.recv_multipart()
            _, env, payload = decode_message(frames, cluster="corec")
            first_id = int(decode_batch(env.msg, payload)["id"][0])
            seen.append((first_id, env.seq))
            if first_id == 0 and len(seen) == 1:
                _answer(router, identity, env.seq, 0, {"busy": 10})
            elif first_id == 10:
                _answer(router, identity, env.seq, 0, {"malformed": 10})
            else:
                _answer(router, identity, env.seq, 10)

    serving = threading.Thread(target=node)
    serving.start()
    with Client(f"127.0.0.1:{router.port}", batch=10, retry_busy=30) as client:
        client.send(entities(np.arange(30)))
    serving.join(10)
    offers = [seq for first_id, seq in seen if first_id == 0]
    assert len(offers) == 2 and offers[0] != offers[1]  # offered again, under a new sequence number
    assert (client.accepted, dict(client.rejected), client.retries, client.unconfirmed) == (20, {"malformed": 10}, 1, 0)


def test_a_node_that_never_answers_leaves_records_unconfirmed(router):
    # an older node (protocol < 1.4) takes batches and answers nothing
    with Client(f"127.0.0.1:{router.port}", batch=10, window=2, reply_timeout=0.3) as client:
        client.send(entities(np.arange(100)))
        assert client.silent  # it stopped waiting after the first reply_timeout
    assert (client.accepted, client.unconfirmed) == (0, 100)
    got = 0
    while got < 10 and router.poll(5000):  # the batches still went out
        router.recv_multipart()
        got += 1
    assert got == 10


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


def test_a_late_answer_moves_a_batch_from_unconfirmed_to_what_the_node_said(router):
    client = Client(f"127.0.0.1:{router.port}", batch=10, window=1, reply_timeout=0.3)
    client.send(entities(np.arange(30)))  # the first waits out its timeout: no answer yet
    assert client.silent and client.unconfirmed == 30
    for _ in range(3):  # the node answers them all, late
        assert router.poll(5000)
        identity, *frames = router.recv_multipart()
        _, env, _ = decode_message(frames, cluster="corec")
        _answer(router, identity, env.seq, env.msg.count)
    eventually(lambda: client.flush() and client.unconfirmed == 0, 10)
    assert client.accepted == 30 and client.answered and not client.silent
    client.close()
