"""LAN discovery by UDP beacon, on the loopback network's broadcast address."""

from __future__ import annotations

import socket

import pytest
from meshutil import eventually, free_port

from corec_node.shell.discovery import MAGIC, decode_beacon, encode_beacon

pytestmark = pytest.mark.timeout(120)


def test_beacon_round_trip_and_junk():
    assert decode_beacon(encode_beacon("corec", "a", "127.0.0.1:7400")) == ("corec", "a", "127.0.0.1:7400")
    for junk in (b"", b"hello", MAGIC, MAGIC + b"\xc1", MAGIC + b"\x93\x01\x02\x03", MAGIC + b"\x80" * 700,
                 encode_beacon("corec", "a", "no-port")):
        assert decode_beacon(junk) is None


def test_nodes_find_each_other_without_join(cluster):
    port = free_port()
    env = {"COREC_MESH_DISCOVERY": "true", "COREC_MESH_DISCOVERY_PORT": str(port),
           "COREC_MESH_DISCOVERY_ADDR": "127.255.255.255"}
    nodes = [cluster.start(name, extra_env=env) for name in ("d1", "d2", "d3")]
    for n in nodes:
        n.wait_ready()
    # junk on the discovery port is ignored
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        s.sendto(b"\xff" * 100, ("127.255.255.255", port))
        s.sendto(encode_beacon("another-cluster", "x", f"127.0.0.1:{free_port()}"), ("127.255.255.255", port))
    want = {"d1": "alive", "d2": "alive", "d3": "alive"}
    eventually(lambda: all(n.members() == want for n in nodes), 30, message="one cluster found by beacons")
    assert all(n.proc.poll() is None for n in nodes)
