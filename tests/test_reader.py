"""SocketReader (shell/reader.py) on real ZeroMQ sockets over loopback TCP."""

from __future__ import annotations

import asyncio
import collections
import threading
from typing import Any

import pytest
import zmq
from meshutil import free_port, until

from corec_node.shell.reader import SocketReader


@pytest.fixture
def ctx():
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


def pair(ctx: zmq.Context, kind_in: int = zmq.PULL, kind_out: int = zmq.PUSH) -> tuple[zmq.Socket, zmq.Socket]:
    """Queues without limit: a test that sends a backlog before reading must not block on
    a full queue (how many fit depends on the machine's TCP buffers)."""
    port = free_port()
    sink = ctx.socket(kind_in)
    sink.setsockopt(zmq.RCVHWM, 0)
    sink.bind(f"tcp://127.0.0.1:{port}")
    source = ctx.socket(kind_out)
    source.setsockopt(zmq.SNDHWM, 0)
    source.connect(f"tcp://127.0.0.1:{port}")
    return sink, source


def test_messages_reach_the_handler_in_order_and_a_failing_handler_is_counted(ctx: zmq.Context) -> None:
    sink, source = pair(ctx)
    seen: list[bytes] = []
    dropped: collections.Counter[str] = collections.Counter()

    def handler(frames: list[Any]) -> None:
        if frames[0] == b"bad":
            raise ValueError("a bug on one message")
        seen.append(bytes(frames[0]) + b"/" + bytes(frames[1]))

    async def main() -> None:
        reader = SocketReader(sink, handler, dropped)
        source.send_multipart([b"0", b"early"])  # queued before reading starts
        reader.start()
        for i in range(1, 300):
            source.send_multipart([b"bad"] if i == 150 else [str(i).encode(), b"x"])
        await until(lambda: len(seen) == 299)
        reader.close()

    asyncio.run(main())
    assert seen == [b"0/early"] + [f"{i}/x".encode() for i in range(1, 300) if i != 150]
    assert dropped == {"handler_error": 1}


def test_an_awaitable_from_the_handler_holds_reading_until_it_is_done(ctx: zmq.Context) -> None:
    sink, source = pair(ctx)
    events: list[str] = []
    dropped: collections.Counter[str] = collections.Counter()

    async def slow(n: bytes) -> None:
        events.append(f"start {n.decode()}")
        await asyncio.sleep(0.05)
        events.append(f"end {n.decode()}")

    def handler(frames: list[Any]) -> Any:
        n = bytes(frames[0])
        return slow(n) if n in (b"1", b"3") else events.append(f"take {n.decode()}")

    async def main() -> None:
        reader = SocketReader(sink, handler, dropped)
        reader.start()
        for i in range(5):
            source.send(str(i).encode())
        await until(lambda: len(events) == 7)
        reader.close()

    asyncio.run(main())
    assert events == ["take 0", "start 1", "end 1", "take 2", "start 3", "end 3", "take 4"]
    assert not dropped


def test_replies_sent_on_the_read_socket_do_not_strand_a_waiting_message(ctx: zmq.Context) -> None:
    """The ROUTER answers on the socket it reads, from outside the reader's callback: a send
    can take the descriptor's signal of a request that arrived meanwhile, and the reader
    must still see it (``poke``)."""
    router, _unused = pair(ctx, zmq.ROUTER, zmq.DEALER)
    port = router.getsockopt(zmq.LAST_ENDPOINT).decode().rsplit(":", 1)[1]
    rounds = 2000
    answered = threading.Event()

    def client() -> None:
        c = zmq.Context()
        d = c.socket(zmq.DEALER)
        d.connect(f"tcp://127.0.0.1:{port}")
        d.setsockopt(zmq.RCVTIMEO, 5000)
        try:
            for i in range(rounds):
                d.send_multipart([b"req", str(i).encode(), b"extra"])  # two in flight at once
                d.send_multipart([b"req", str(i).encode(), b"again"])
                assert d.recv_multipart()[1] == str(i).encode()
                assert d.recv_multipart()[1] == str(i).encode()
            answered.set()
        finally:
            d.close(0)
            c.term()

    async def main() -> None:
        dropped: collections.Counter[str] = collections.Counter()
        reader: SocketReader | None = None

        def answer(frames: list[Any]) -> None:  # later, outside the reader's callback
            router.send_multipart([frames[0], b"ack", frames[2]], flags=zmq.NOBLOCK)
            assert reader is not None
            reader.poke()

        def handler(frames: list[Any]) -> None:
            asyncio.get_running_loop().call_soon(answer, frames)

        reader = SocketReader(router, handler, dropped)
        reader.start()
        t = threading.Thread(target=client)
        t.start()
        await until(answered.is_set, 60)
        t.join()
        reader.close()
        assert not dropped

    asyncio.run(main())


def test_a_backlog_leaves_the_loop_its_timers(ctx: zmq.Context) -> None:
    sink, source = pair(ctx)
    taken = 0
    timer_saw: list[int] = []

    def handler(frames: list[Any]) -> None:
        nonlocal taken
        taken += 1
        if taken == 1:
            asyncio.get_running_loop().call_soon(lambda: timer_saw.append(taken))

    async def main() -> None:
        reader = SocketReader(sink, handler, collections.Counter())
        for _ in range(50_000):
            source.send(b"x" * 64, zmq.NOBLOCK)  # never blocks: no queue limit
        await until(lambda: sink.poll(0) != 0)
        await asyncio.sleep(0.3)  # most of it queued at the sink
        reader.start()
        await until(lambda: taken == 50_000, 60)
        reader.close()

    asyncio.run(main())
    assert timer_saw and timer_saw[0] < 50_000, "the timer ran only after the whole backlog"


def test_a_handler_result_that_cannot_be_awaited_is_counted_and_reading_goes_on(ctx: zmq.Context) -> None:
    sink, source = pair(ctx)
    seen: list[bytes] = []
    dropped: collections.Counter[str] = collections.Counter()

    def handler(frames: list[Any]) -> Any:
        seen.append(bytes(frames[0]))
        return 5 if frames[0] == b"1" else None

    async def main() -> None:
        reader = SocketReader(sink, handler, dropped)
        reader.start()
        for i in range(3):
            source.send(str(i).encode())
        await until(lambda: len(seen) == 3)
        reader.close()

    asyncio.run(main())
    assert seen == [b"0", b"1", b"2"] and dropped == {"handler_error": 1}


@pytest.mark.timeout(60)  # the failure is a hang inside ctx.term()
def test_a_transport_with_watched_peers_closes() -> None:
    """Closing waits for its socket monitors to close their sockets: the context's term()
    would otherwise block the loop for good."""
    from corec_node.shell.transport import Transport

    async def main() -> None:
        peer = Transport(max_message_bytes=1 << 20)
        peer.bind(f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}")
        port = peer.router.getsockopt(zmq.LAST_ENDPOINT).decode().rsplit(":", 1)[1]
        got: list[bytes] = []
        peer.start(lambda frames, identity: got.append(bytes(frames[0])), None)
        t = Transport(max_message_bytes=1 << 20)
        t.bind(f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}")
        t.watch_peers(lambda addr, refused: None)
        t.start(lambda frames, identity: None, lambda frames: None)
        assert t.send(f"127.0.0.1:{port}", [b"hello"])  # a DEALER, and its monitor
        await until(lambda: got == [b"hello"])
        await asyncio.wait_for(t.close(), 10)
        await asyncio.wait_for(peer.close(), 10)

    asyncio.run(main())
