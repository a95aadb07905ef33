"""The NANO_WEIGHTS message (SPEC 9.8, since 1.12), packed and unpacked: the torch
forecasters' weights of blocks a map change gives a new holder. Pure: bytes and rows in,
rows and bytes out; the weights are opaque bytes here (the node process never imports
torch: only the trainer's child reads them).

A message is one row map ``{"block": id, "ticks": n, "size": bytes}`` per block, and a
payload frame with the blocks' bytes one after the other in the rows' order. ``pack``
keeps each message's payload under ``CHUNK_BYTES`` (a block larger than that goes alone)
and its rows under the wire's row limit; ``unpack`` checks everything a peer could get
wrong and raises ``Refused`` with the reason it is counted by, never anything else.
"""

from __future__ import annotations

from typing import Any

from corec_node.wire import limits
from corec_node.wire.messages import NanoWeights

NANO_MINOR = 12  # the protocol minor that added NANO_WEIGHTS: sent only to peers that announce it
CHUNK_BYTES = 1 << 20  # payload of one message: 1 MiB, as a handoff's record frames
MAX_BLOB = 4 << 20  # one block's weights (a default NanoNet's are ~20 KB); larger: neither sent nor taken
MAX_BLOCK = (1 << 40) - 1  # a block id: channel (u8) << 32 | block number (u32)
MAX_TICKS = (1 << 63) - 1


class Refused(Exception):
    """A NANO_WEIGHTS message that is dropped whole: ``reason`` is its counter's label."""

    def __init__(self, reason: str, blocks: int = 1) -> None:
        super().__init__(reason)
        self.reason = reason
        self.blocks = blocks  # how many weights it claimed to carry (counted as dropped)


def pack(items: list[tuple[int, int, bytes]]) -> list[tuple[NanoWeights, bytes]]:
    """``(block, ticks, weights)`` items as messages with their payloads (``MAX_BLOB`` and
    larger items are the caller's to leave out)."""
    out: list[tuple[NanoWeights, bytes]] = []
    rows: list[dict[str, int]] = []
    blobs: list[bytes] = []
    size = 0
    for block, ticks, blob in items:
        if rows and (size + len(blob) > CHUNK_BYTES or len(rows) >= limits.MAX_ROWS_PER_MESSAGE):
            out.append((NanoWeights(rows=tuple(rows)), b"".join(blobs)))
            rows, blobs, size = [], [], 0
        rows.append({"block": int(block), "ticks": int(ticks), "size": len(blob)})
        blobs.append(bytes(blob))
        size += len(blob)
    if rows:
        out.append((NanoWeights(rows=tuple(rows)), b"".join(blobs)))
    return out


def _uint(row: dict[str, Any], key: str, hi: int) -> int:
    value = row.get(key)
    if type(value) is not int or not 0 <= value <= hi:
        raise Refused("malformed")
    return value


def unpack(msg: Any, payload: Any) -> list[tuple[int, int, bytes]]:
    """The ``(block, ticks, weights)`` of a decoded NANO_WEIGHTS; ``Refused`` when a row is
    not ``{block, ticks, size}`` of unsigned ints, a block is named twice, a size is 0 or
    above ``MAX_BLOB`` (``too_large``), or the sizes do not add up to the payload."""
    rows = getattr(msg, "rows", None)
    if type(rows) is not tuple:
        raise Refused("malformed")
    n = len(rows)
    try:
        view = memoryview(payload if payload is not None else b"").cast("B")
    except (TypeError, ValueError):
        raise Refused("malformed", n) from None
    out: list[tuple[int, int, bytes]] = []
    seen: set[int] = set()
    offset = 0
    try:
        for row in rows:
            if type(row) is not dict:
                raise Refused("malformed")
            block, ticks = _uint(row, "block", MAX_BLOCK), _uint(row, "ticks", MAX_TICKS)
            size = _uint(row, "size", 1 << 62)
            if size > MAX_BLOB:
                raise Refused("too_large")
            if size == 0 or block in seen or offset + size > len(view):
                raise Refused("malformed")
            seen.add(block)
            out.append((block, ticks, view[offset:offset + size].tobytes()))
            offset += size
    except Refused as exc:
        exc.blocks = n
        raise
    if offset != len(view):
        raise Refused("malformed", n)
    return out
