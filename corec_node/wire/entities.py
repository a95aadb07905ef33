"""Entity records: the 10-byte ``!IBf?`` record and batches of them (SPEC.md, "Entity records").

A batch is records back to back, big-endian, with no header; optionally one zstd frame of
those bytes. Encoding and decoding go through one numpy structured dtype: no Python loop
per record, so a million records take milliseconds.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import numpy as np
import zstandard

from corec_node.wire import limits
from corec_node.wire.errors import WireError

ENTITY_DTYPE = np.dtype(
    [("id", ">u4"), ("channel", "u1"), ("value", ">f4"), ("active", "u1")]
)
"""One record, exactly as on the wire: 10 bytes, big-endian, no padding (``!IBf?``)."""

ENTITY_FIELDS = ENTITY_DTYPE.names
RECORD_BYTES = limits.ENTITY_RECORD_BYTES
DEFAULT_ZSTD_LEVEL = 1

assert ENTITY_DTYPE.itemsize == RECORD_BYTES
assert [ENTITY_DTYPE.fields[n][1] for n in ENTITY_FIELDS] == [0, 4, 5, 9]

_INT_RANGES = {"id": (0, 0xFFFF_FFFF), "channel": (0, 0xFF)}

# zstd contexts are costly to build and not safe to share between threads: one per thread.
_local = threading.local()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    cache = getattr(_local, "compressors", None)
    if cache is None:
        cache = _local.compressors = {}
    cctx = cache.get(level)
    if cctx is None:
        # write_content_size: receivers refuse frames that do not declare their size.
        cctx = cache[level] = zstandard.ZstdCompressor(level=level, write_content_size=True)
    return cctx


def _decompressor() -> zstandard.ZstdDecompressor:
    dctx = getattr(_local, "decompressor", None)
    if dctx is None:
        dctx = _local.decompressor = zstandard.ZstdDecompressor()
    return dctx


# -- encoding (local data: misuse raises ValueError/TypeError, never WireError) -------


def as_entity_array(records: Any) -> np.ndarray:
    """Return ``records`` as a C-contiguous 1-D ENTITY_DTYPE array, validated.

    Accepts an ENTITY_DTYPE array (returned as is when contiguous), a structured array
    with the same field names in any byte order or layout, a mapping of columns
    ``{"id", "channel", "value", "active"}`` (scalars broadcast), or a sequence of
    ``(id, channel, value, active)`` tuples (slow; for tests). Raises ValueError when an
    id or channel is out of range or ``active`` is not 0/1.
    """
    if isinstance(records, np.ndarray) and records.dtype == ENTITY_DTYPE:
        if records.ndim != 1:
            raise ValueError(f"entity records must be 1-D, got shape {records.shape}")
        arr = np.ascontiguousarray(records)
        _check_active(arr["active"])
        return arr
    if isinstance(records, np.ndarray) and records.dtype.names is not None:
        if records.ndim != 1:
            raise ValueError(f"entity records must be 1-D, got shape {records.shape}")
        missing = set(ENTITY_FIELDS) - set(records.dtype.names)
        if missing:
            raise ValueError(f"entity records lack fields {sorted(missing)}")
        return _from_columns({name: records[name] for name in ENTITY_FIELDS}, len(records))
    if isinstance(records, Mapping):
        missing = set(ENTITY_FIELDS) - set(records)
        if missing:
            raise ValueError(f"entity columns lack {sorted(missing)}")
        ids = np.asarray(records["id"])
        if ids.ndim != 1:
            raise ValueError("entity column 'id' must be 1-D")
        return _from_columns(records, len(ids))
    try:
        arr = np.array(records, dtype=ENTITY_DTYPE)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValueError(f"cannot convert to entity records: {exc}") from exc
    if arr.ndim != 1:
        raise ValueError(f"entity records must be 1-D, got shape {arr.shape}")
    _check_active(arr["active"])
    return arr


def _from_columns(columns: Mapping[str, Any], n: int) -> np.ndarray:
    out = np.empty(n, dtype=ENTITY_DTYPE)
    for name in ENTITY_FIELDS:
        col = np.asarray(columns[name])
        if col.ndim > 1:
            raise ValueError(f"entity column {name!r} must be 1-D or a scalar")
        if name in _INT_RANGES:
            if col.dtype.kind not in "iub":
                raise ValueError(f"entity column {name!r} must hold integers, got {col.dtype}")
            lo, hi = _INT_RANGES[name]
            if col.size and (int(col.min()) < lo or int(col.max()) > hi):
                raise ValueError(f"entity column {name!r} out of range [{lo}, {hi}]")
        elif name == "active":
            if col.dtype.kind not in "iub":
                raise ValueError(f"entity column 'active' must be bool or 0/1, got {col.dtype}")
            _check_active(col)
        elif col.dtype.kind not in "iuf":
            raise ValueError(f"entity column 'value' must be numeric, got {col.dtype}")
        with np.errstate(over="ignore", invalid="ignore"):  # float64 -> float32 may be inf
            out[name] = col  # broadcasts scalars; raises ValueError on a length mismatch
    return out


def _check_active(col: np.ndarray) -> None:
    if col.size and col.dtype != np.bool_ and ((col.dtype.kind == "i" and col.min() < 0) or col.max() > 1):
        raise ValueError("entity field 'active' must be 0 or 1")


def encode_entities(records: Any, compress: bool = False, level: int = DEFAULT_ZSTD_LEVEL) -> bytes:
    """Encode records (see :func:`as_entity_array`) as a raw batch, or one zstd frame of it.

    The zstd frame declares its content size (receivers require it). Compressed bytes
    depend on the zstd version and level; the decompressed bytes do not.
    """
    raw = as_entity_array(records).tobytes()
    if len(raw) > limits.MAX_PAYLOAD_BYTES:
        raise ValueError(
            f"{len(raw) // RECORD_BYTES} records exceed MAX_BATCH_RECORDS "
            f"({limits.MAX_BATCH_RECORDS}); split the batch"
        )
    if compress:
        return _compressor(level).compress(raw)
    return raw


# -- decoding (remote bytes: every failure is a WireError) ---------------------------


def _as_bytes_view(data: Any) -> memoryview:
    try:
        view = memoryview(data)
        if not view.c_contiguous:
            raise ValueError("not contiguous")
        if view.ndim != 1 or view.format not in ("B", "b", "c"):
            view = view.cast("B")
        return view
    except (TypeError, ValueError) as exc:
        raise WireError("frames", f"entity data is not a contiguous buffer: {exc}") from None


def decode_entities(
    data: Any, compressed: bool = False, max_records: int = limits.MAX_BATCH_RECORDS
) -> np.ndarray:
    """Decode a batch into an ENTITY_DTYPE array, or raise WireError.

    The array is usually a read-only view of ``data`` (or of the decompressed bytes): a
    caller that needs to write must ``.copy()`` it. NaN and infinite values are not wire
    errors (the engine counts them); a length that is not a multiple of 10 ("length"), an
    active byte other than 0/1 ("active"), a bad zstd frame ("zstd") and anything above
    ``max_records`` ("too_large") are. A zstd frame must declare its content size, which is
    checked before anything is allocated, so a zip bomb costs nothing.
    """
    view = _as_bytes_view(data)
    max_bytes = max(0, min(max_records, limits.MAX_BATCH_RECORDS)) * RECORD_BYTES
    if compressed:
        view = _decompress(view, max_bytes)
    size = view.nbytes
    if size % RECORD_BYTES:
        raise WireError("length", f"{size} bytes is not a whole number of 10-byte records")
    if size > max_bytes:
        records, limit = size // RECORD_BYTES, max_bytes // RECORD_BYTES
        raise WireError("too_large", f"{records} records > {limit}")
    arr = np.frombuffer(view, dtype=ENTITY_DTYPE)
    if size:
        active = np.frombuffer(view, dtype=np.uint8)[RECORD_BYTES - 1 :: RECORD_BYTES]
        if active.max() > 1:
            bad = int(np.flatnonzero(active > 1)[0])
            raise WireError("active", f"record {bad}: active byte {int(active[bad])} not 0/1")
    return arr


def _decompress(view: memoryview, max_bytes: int) -> memoryview:
    try:
        declared = zstandard.frame_content_size(view)
    except zstandard.ZstdError as exc:
        raise WireError("zstd", f"bad frame header: {exc}") from None
    if declared < 0:
        raise WireError("zstd", "frame does not declare its content size")
    if declared > max_bytes:
        raise WireError("too_large", f"frame declares {declared} bytes > {max_bytes}")
    if declared % RECORD_BYTES:
        raise WireError("length", f"frame declares {declared} bytes, not whole records")
    try:
        # Output is bounded by the declared size checked above; zstd verifies that the
        # frame really decompresses to exactly that size, and no bytes may follow it.
        raw = _decompressor().decompress(view, allow_extra_data=False)
    except (zstandard.ZstdError, ValueError, MemoryError) as exc:
        raise WireError("zstd", str(exc)) from None
    if len(raw) != declared:  # zstd already checks; keep the invariant local
        raise WireError("zstd", f"frame decompressed to {len(raw)} bytes, declared {declared}")
    return memoryview(raw)


def frame_record_count(data: Any) -> int:
    """Records a zstd frame declares (without decompressing), or raise WireError."""
    view = _as_bytes_view(data)
    try:
        declared = zstandard.frame_content_size(view)
    except zstandard.ZstdError as exc:
        raise WireError("zstd", f"bad frame header: {exc}") from None
    if declared < 0:
        raise WireError("zstd", "frame does not declare its content size")
    if declared % RECORD_BYTES:
        raise WireError("length", f"frame declares {declared} bytes, not whole records")
    return declared // RECORD_BYTES
