"""The network sockets (shell/transport.py) on real ZeroMQ sockets over loopback TCP."""

from __future__ import annotations

import asyncio

import pytest
import zmq
from meshutil import free_port, until

from corec_node.shell.transport import CONNECT_TIMEOUT_MS, Transport

pytestmark = pytest.mark.timeout(60)  # a blocked I/O thread hangs the context's term() for good


def test_a_member_found_dead_is_dialled_afresh_and_heard_again() -> None:
    """A DEALER and a SUB connection that look open to a member membership declared dead
    are replaced by new connections; what is sent and published afterwards arrives."""

    async def main() -> None:
        peer = Transport(max_message_bytes=1 << 20)
        direct, pub = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
        peer.bind(direct, pub)
        got: list[bytes] = []
        peer.start(lambda frames, identity: got.append(bytes(frames[0])), None)
        t = Transport(max_message_bytes=1 << 20)
        t.bind(f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}")
        heard: list[bytes] = []
        t.watch_peers(lambda addr, refused: None)
        t.start(lambda frames, identity: None, lambda frames: heard.append(bytes(frames[-1])))
        t.subscribe([b""])
        t.connect_sub(pub)
        try:
            assert t.send(direct, [b"one"])
            await until(lambda: got == [b"one"])
            first = t.dealers[direct]
            assert first.getsockopt(zmq.CONNECT_TIMEOUT) == CONNECT_TIMEOUT_MS

            async def published(payload: bytes) -> None:
                async def again() -> None:
                    while payload not in heard:
                        peer.publish([b"t", payload])
                        await asyncio.sleep(0.02)
                await asyncio.wait_for(again(), 10)

            await published(b"before")
            t.redial(direct, pub)
            assert direct not in t.dealers and t.redials == 1 and pub in t.sub_peers
            assert t.send(direct, [b"two"])
            assert t.dealers[direct] is not first
            await until(lambda: got == [b"one", b"two"])
            await published(b"after")
        finally:
            await asyncio.wait_for(t.close(), 10)
            await asyncio.wait_for(peer.close(), 10)

    asyncio.run(main())


def test_a_dealer_whose_connection_closed_is_left_to_libzmq() -> None:
    """A peer that went away closed its connection: libzmq is already dialling it with
    backoff, and the queued messages wait for it; ``redial`` leaves that socket alone."""

    async def main() -> None:
        direct = f"127.0.0.1:{free_port()}"
        peer = Transport(max_message_bytes=1 << 20)
        peer.bind_router(direct)
        got: list[bytes] = []
        peer.start(lambda frames, identity: got.append(bytes(frames[0])), None)
        t = Transport(max_message_bytes=1 << 20)
        t.bind(f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}")
        hints: list[str] = []
        t.watch_peers(lambda addr, refused: hints.append(addr))
        t.start(lambda frames, identity: None, None)
        try:
            assert t.send(direct, [b"one"])
            await until(lambda: got == [b"one"])
            sock = t.dealers[direct]
            await asyncio.wait_for(peer.close(), 10)
            await until(lambda: direct in hints and direct in t._down)
            t.redial(direct)
            assert t.dealers.get(direct) is sock and t.redials == 0
        finally:
            await asyncio.wait_for(t.close(), 10)

    asyncio.run(main())


def test_a_dealer_no_longer_watched_cannot_block_the_io_thread() -> None:
    """libzmq's I/O thread hands each socket event to the monitor with a blocking send: a
    DEALER still dialling a refusing port after its monitor's PAIR closed blocked that
    thread for good, and the process heard nobody again. ``_unmonitor`` (what ``forget``
    and ``close`` do first) ends the monitor before the PAIR goes; the DEALER here keeps
    retrying for half a second after, and the transport still carries messages."""

    async def main() -> None:
        refusing = f"127.0.0.1:{free_port()}"
        peer = Transport(max_message_bytes=1 << 20)
        direct = f"127.0.0.1:{free_port()}"
        peer.bind_router(direct)
        peer.start(lambda frames, identity: None, None)
        t = Transport(max_message_bytes=1 << 20)
        own = f"127.0.0.1:{free_port()}"
        t.bind(own, f"127.0.0.1:{free_port()}")
        heard: list[bytes] = []
        t.watch_peers(lambda addr, refused: None)
        t.start(lambda frames, identity: heard.append(bytes(frames[0])), None)
        try:
            t.send(refusing, [b"anyone?"])
            await until(lambda: refusing in t._down)  # its retries are being reported
            task = t._unmonitor(refusing)
            assert task is not None
            await asyncio.gather(task, return_exceptions=True)  # the PAIR is closed
            await asyncio.sleep(0.5)  # the DEALER retries every 100 ms meanwhile
            assert peer.send(own, [b"still here"])
            await until(lambda: heard == [b"still here"], 5)
        finally:
            t.forget(refusing)
            await asyncio.wait_for(t.close(), 10)
            await asyncio.wait_for(peer.close(), 10)

    asyncio.run(main())


def test_idle_direct_links_are_closed_but_those_kept() -> None:
    """Over the overlay the mesh process closes the DEALERs nothing was sent on lately, but
    those to its neighbours and voters: a node's connections stay bounded."""

    async def main() -> None:
        t = Transport(max_message_bytes=1 << 20)
        t.bind(f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}")
        t.watch_peers(lambda addr, refused: None)
        t.start(lambda frames, identity: None, None)
        peers = [f"127.0.0.1:{free_port()}" for _ in range(3)]  # nobody listens: the sends wait queued
        try:
            for addr in peers:
                assert t.send(addr, [b"hello"])
            assert t.close_idle(60.0, keep=()) == 0  # all sent on just now
            assert set(t.dealers) == set(peers)
            assert t.close_idle(0.0, keep=peers[:1]) == 2
            assert set(t.dealers) == set(peers[:1])
            assert t.send(peers[1], [b"again"]) and set(t.dealers) == set(peers[:2])  # dialled afresh when needed
        finally:
            await asyncio.wait_for(t.close(), 10)

    asyncio.run(main())
