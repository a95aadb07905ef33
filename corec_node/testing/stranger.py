"""A stranger at a node's ports: raw ZMTP bytes from a peer no node admitted, and RSS.

Used by the input-bound test and ``bench/input_bound.py``. The stranger speaks ZMTP 3.0
by hand over a plain TCP socket, so its bytes really go on the wire: a libzmq peer keeps
an unsent message in its own memory until its handshake succeeds, which would prove
nothing about the node. It never waits for the node's answers: it writes the greeting
and then the message frames as fast as the kernel takes them, as a hostile peer would.

Two kinds:
- ``NULL``: the greeting of an unsecured peer, a READY, then the multipart message. A
  node without CURVE takes the message whole; a CURVE node closes at the greeting.
- ``CURVE``: the greeting of a CURVE client, then the message where its HELLO should
  be. A CURVE node reads at most the first frame (up to the socket's MAXMSGSIZE) before
  it closes: the one thing a stranger can make it hold.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from dataclasses import dataclass

SIGNATURE = b"\xff" + b"\x00" * 8 + b"\x7f"
CHUNK = 1 << 20  # bytes per sendall: fast, and fine-grained enough to count what went in


def greeting(mechanism: bytes) -> bytes:
    """The 64-byte ZMTP 3.0 greeting of a client using ``mechanism``."""
    return SIGNATURE + bytes([3, 0]) + mechanism.ljust(20, b"\0") + b"\x00" + b"\x00" * 31


def ready_command(socket_type: bytes) -> bytes:
    """The NULL mechanism's READY command with the Socket-Type property."""
    body = b"\x05READY" + b"\x0bSocket-Type" + struct.pack(">I", len(socket_type)) + socket_type
    return bytes([0x04, len(body)]) + body


def frame_header(size: int, *, more: bool, command: bool = False) -> bytes:
    """A long-form frame header (8-byte size)."""
    return bytes([0x02 | (0x01 if more else 0) | (0x04 if command else 0)]) + struct.pack(">Q", size)


@dataclass
class Attempt:
    """What one stranger managed: the bytes the node's kernel took, and how its tries ended."""

    offered: int = 0  # bytes of the message the stranger meant to deliver
    written: int = 0  # bytes the kernel accepted, over all connections
    connections: int = 0
    refused: int = 0  # connections the node closed before the message was through
    delivered: bool = False  # the whole message went out on one connection, closed cleanly
    seconds: float = 0.0


def send_message(addr: tuple[str, int], frames: int, frame_bytes: int, *, mechanism: bytes = b"NULL",
                 socket_type: bytes = b"DEALER", tries: int = 20, deadline: float = 60.0) -> Attempt:
    """Try to deliver one multipart message of ``frames`` frames of ``frame_bytes`` each.

    On a refused connection the stranger reconnects and starts again, up to ``tries``
    connections or ``deadline`` seconds: a bounded node refuses every one of them, an
    unbounded one takes the message whole on the first.
    """
    chunk = memoryview(b"\xa5" * min(frame_bytes, CHUNK))
    result = Attempt(offered=frames * frame_bytes)
    start = time.monotonic()
    while result.connections < tries and time.monotonic() - start < deadline:
        result.connections += 1
        try:
            sock = socket.create_connection(addr, timeout=10)
        except OSError:
            result.refused += 1
            time.sleep(0.05)
            continue
        try:
            head = greeting(mechanism) + (ready_command(socket_type) if mechanism == b"NULL" else b"")
            sock.sendall(head)
            result.written += len(head)
            for i in range(frames):
                # where a CURVE client's HELLO belongs, the stranger's first frame: a command
                sock.sendall(frame_header(frame_bytes, more=i < frames - 1, command=mechanism != b"NULL" and i == 0))
                left = frame_bytes
                while left:
                    piece = chunk[: min(left, len(chunk))]
                    sock.sendall(piece)
                    result.written += len(piece)
                    left -= len(piece)
            # read what the node said, then close with a FIN: unread bytes would make the
            # close a reset, and the kernel would throw away the message's tail
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(65536):
                pass
            result.delivered = True
            break
        except OSError:  # reset, broken pipe, or a timeout because the node stopped reading
            result.refused += 1
        finally:
            sock.close()
    result.seconds = time.monotonic() - start
    return result


def family(pid: int) -> list[int]:
    """``pid`` and every process below it: a node may run its sockets in a child process."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rpartition(")")[2].split()[1])
            except (OSError, ValueError, IndexError):
                continue  # gone meanwhile
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) in KiB of ``pid`` and its children, summed, from /proc/PID/status.

    The summed VmHWM is an upper bound of the family's peak (each process's own peak)."""
    rss = hwm = 0
    for p in family(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    key, _, value = line.partition(":")
                    if key == "VmRSS":
                        rss += int(value.split()[0])
                    elif key == "VmHWM":
                        hwm += int(value.split()[0])
        except OSError:
            continue
    return rss, hwm


def reset_peak(pid: int) -> bool:
    """Set the VmHWM of ``pid`` and its children back to their RSS (Linux's clear_refs 5);
    False if the kernel refused."""
    try:
        for p in family(pid):
            with open(f"/proc/{p}/clear_refs", "w") as f:
                f.write("5")
        return True
    except OSError:
        return False


__all__ = ["Attempt", "family", "frame_header", "greeting", "ready_command", "reset_peak", "rss_kib", "send_message"]
