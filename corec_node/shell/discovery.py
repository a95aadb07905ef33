"""LAN discovery: nodes on one subnet find each other by a UDP beacon, with no ``join``.

Off by default (``mesh.discovery``). Every ``DISCOVERY_INTERVAL`` a node broadcasts one
datagram (protocol/SPEC.md, "LAN discovery beacon") to ``mesh.discovery_addr`` on
``mesh.discovery_port``; a node that hears a beacon of its own cluster from a node it does
not know asks its membership to join that address. A beacon only says "I am here": the
join that follows is the ordinary push-pull over ZeroMQ (and, with security on, CurveZMQ
admission), so a forged beacon can at most make a node dial an address.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

import msgpack

from corec_node.config import split_addr

MAGIC = b"CORECB1"  # protocol name and beacon version; anything else is not a beacon
MAX_BEACON = 600  # bytes: magic + a map of three short strings
DISCOVERY_INTERVAL = 2.0  # seconds between beacons: a new node is found within ~2 s


def encode_beacon(cluster: str, name: str, addr: str) -> bytes:
    return MAGIC + msgpack.packb({"c": cluster, "n": name, "a": addr})


def decode_beacon(data: bytes) -> tuple[str, str, str] | None:
    """(cluster, name, addr), or None for anything that is not a valid beacon."""
    if len(data) > MAX_BEACON or not data.startswith(MAGIC):
        return None
    try:
        body = msgpack.unpackb(data[len(MAGIC):], raw=False, max_str_len=255, max_map_len=8, max_array_len=0,
                               max_bin_len=0, max_ext_len=0)
        cluster, name, addr = body["c"], body["n"], body["a"]
        if not all(isinstance(v, str) and 0 < len(v) <= 255 for v in (cluster, name, addr)):
            return None
        split_addr(addr)
    except (ValueError, TypeError, KeyError, msgpack.UnpackException, msgpack.ExtraData):
        return None
    return cluster, name, addr


class Discovery(asyncio.DatagramProtocol):
    """Sends beacons and reports the addresses of unknown peers of the same cluster."""

    def __init__(self, *, cluster: str, name: str, addr: str, target: tuple[str, int],
                 on_peer: Callable[[str, str], None]) -> None:
        self.cluster, self.name, self.addr = cluster, name, addr
        self.target = target
        self.on_peer = on_peer
        self.beacon = encode_beacon(cluster, name, addr)
        self.transport: asyncio.DatagramTransport | None = None
        self.rejected = 0
        self.heard = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        # several nodes on one host share the port; broadcasts reach each of them
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        sock.bind(("", self.target[1]))
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        self.transport, _ = await loop.create_datagram_endpoint(lambda: self, sock=sock)
        self._task = loop.create_task(self._beacon_loop())

    async def _beacon_loop(self) -> None:
        while True:
            if self.transport is not None:
                try:
                    self.transport.sendto(self.beacon, self.target)
                except OSError:
                    pass  # no route yet (interface down): try again next time
            await asyncio.sleep(DISCOVERY_INTERVAL)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        beacon = decode_beacon(data)
        if beacon is None:
            self.rejected += 1
            return
        cluster, name, peer = beacon
        if cluster != self.cluster or name == self.name:
            return
        self.heard += 1
        self.on_peer(name, peer)

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP errors on a broadcast socket say nothing about the mesh

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self.transport is not None:
            self.transport.close()
