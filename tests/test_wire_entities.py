"""Entity records and batches: layout, round trips, hostile input (protocol/SPEC.md s.10)."""

from __future__ import annotations

import math
import struct
import tracemalloc

import numpy as np
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from corec_node.wire import (
    ENTITY_DTYPE,
    EntityBatch,
    WireError,
    decode_batch,
    decode_entities,
    encode_entities,
    limits,
    make_batch,
)

FAST = settings(max_examples=75, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])


@st.composite
def record_arrays(draw: st.DrawFn, max_size: int = 100) -> np.ndarray:
    n = draw(st.integers(0, max_size))
    arr = np.zeros(n, dtype=ENTITY_DTYPE)
    arr["id"] = draw(hnp.arrays(np.uint32, n))
    arr["channel"] = draw(hnp.arrays(np.uint8, n))
    arr["value"] = draw(hnp.arrays(np.float32, n, elements=st.floats(width=32)))
    arr["active"] = draw(hnp.arrays(np.bool_, n))
    return arr


def same_records(a: np.ndarray, b: np.ndarray) -> bool:
    """Bitwise equality (NaN payloads included)."""
    return a.dtype == b.dtype and a.tobytes() == b.tobytes()


# -- layout ------------------------------------------------------------------------------


def test_dtype_is_the_wire_record() -> None:
    assert ENTITY_DTYPE.itemsize == 10 == limits.ENTITY_RECORD_BYTES
    assert ENTITY_DTYPE.names == ("id", "channel", "value", "active")
    assert [ENTITY_DTYPE.fields[n][1] for n in ENTITY_DTYPE.names] == [0, 4, 5, 9]
    assert ENTITY_DTYPE["id"] == np.dtype(">u4") and ENTITY_DTYPE["value"] == np.dtype(">f4")
    assert ENTITY_DTYPE["channel"] == np.dtype("u1") and ENTITY_DTYPE["active"] == np.dtype("u1")
    assert struct.calcsize("!IBf?") == 10


def test_record_bytes_match_struct() -> None:
    arr = np.array([(1, 7, 1.5, True), (0xFFFFFFFF, 255, -2.0, False)], dtype=ENTITY_DTYPE)
    pack = struct.Struct("!IBf?").pack
    expected = pack(1, 7, 1.5, True) + pack(0xFFFFFFFF, 255, -2.0, False)
    assert encode_entities(arr) == expected
    assert expected[:10].hex() == "00000001073fc0000001"


@FAST
@given(record_arrays())
def test_raw_matches_struct_loop(arr: np.ndarray) -> None:
    raw = encode_entities(arr)
    assert len(raw) == 10 * len(arr)
    for rec, (id_, ch, value, active) in zip(arr, struct.iter_unpack("!IBf?", raw), strict=True):
        assert (id_, ch, active) == (rec["id"], rec["channel"], bool(rec["active"]))
        assert (math.isnan(value) and math.isnan(rec["value"])) or value == rec["value"]


# -- round trips ---------------------------------------------------------------------------


@FAST
@given(record_arrays())
def test_raw_round_trip(arr: np.ndarray) -> None:
    out = decode_entities(encode_entities(arr))
    assert same_records(out, arr)


@FAST
@given(record_arrays(), st.sampled_from([-1, 1, 3, 9]))
def test_zstd_round_trip(arr: np.ndarray, level: int) -> None:
    data = encode_entities(arr, compress=True, level=level)
    assert zstandard.frame_content_size(data) == 10 * len(arr)
    assert same_records(decode_entities(data, compressed=True), arr)


def test_decoded_array_is_a_read_only_view() -> None:
    raw = encode_entities(np.array([(1, 2, 3.0, True)], dtype=ENTITY_DTYPE))
    out = decode_entities(raw)
    assert not out.flags.writeable
    copy = out.copy()
    copy["value"] = 9.0
    assert out["value"][0] == 3.0
    # a writable buffer gives a view of it, no copy
    buf = bytearray(raw)
    assert np.shares_memory(decode_entities(buf), np.frombuffer(buf, np.uint8))


def test_decode_accepts_buffers() -> None:
    raw = encode_entities(np.array([(1, 2, 3.0, True), (4, 5, 6.0, False)], dtype=ENTITY_DTYPE))
    for data in (raw, bytearray(raw), memoryview(raw), np.frombuffer(raw, np.uint8)):
        assert decode_entities(data).tobytes() == raw


# -- what encode accepts -------------------------------------------------------------------


def test_encode_from_columns_and_other_layouts() -> None:
    tuples = [(1, 7, 0.5, True), (2, 7, 1.25, False), (3, 7, -4.0, True)]
    expected = np.array(tuples, dtype=ENTITY_DTYPE)
    columns = {
        "id": np.array([1, 2, 3], dtype=np.int64),
        "channel": 7,  # scalars broadcast
        "value": np.array([0.5, 1.25, -4.0]),  # float64
        "active": np.array([True, False, True]),
    }
    assert encode_entities(columns) == expected.tobytes()
    assert encode_entities({**columns, "active": [1, 0, 1], "id": [1, 2, 3]}) == expected.tobytes()
    native = np.dtype(
        [("active", "?"), ("value", "<f8"), ("extra", "<i2"), ("channel", "<i2"), ("id", "<i8")]
    )
    other = np.zeros(3, dtype=native)
    for name in ENTITY_DTYPE.names:
        other[name] = expected[name]
    assert encode_entities(other) == expected.tobytes()
    assert encode_entities(tuples) == expected.tobytes()
    assert encode_entities(expected[::-1][::-1]) == expected.tobytes()  # non-contiguous view
    assert encode_entities(np.zeros(0, ENTITY_DTYPE)) == b""


def test_float64_values_round_to_float32() -> None:
    columns = {"id": [1, 2], "channel": 0, "value": [0.1, 1e300], "active": True}
    out = decode_entities(encode_entities(columns))
    assert out["value"][0] == np.float32(0.1)
    assert math.isinf(out["value"][1])


@pytest.mark.parametrize(
    "columns",
    [
        {"id": [-1], "channel": 0, "value": 0.0, "active": True},
        {"id": [1 << 32], "channel": 0, "value": 0.0, "active": True},
        {"id": [1], "channel": 256, "value": 0.0, "active": True},
        {"id": [1], "channel": -1, "value": 0.0, "active": True},
        {"id": [1], "channel": 0, "value": 0.0, "active": 2},
        {"id": [1], "channel": 0, "value": "x", "active": True},
        {"id": [1.5], "channel": 0, "value": 0.0, "active": True},
        {"id": [1, 2], "channel": [0, 1, 2], "value": 0.0, "active": True},
        {"id": [1], "channel": 0, "value": 0.0},
        {"id": [[1]], "channel": 0, "value": 0.0, "active": True},
    ],
)
def test_encode_refuses_invalid_records(columns: dict) -> None:
    with pytest.raises(ValueError) as info:
        encode_entities(columns)
    assert not isinstance(info.value, WireError)  # local misuse, not a peer's fault


def test_encode_refuses_bad_active_in_entity_dtype() -> None:
    arr = np.zeros(2, dtype=ENTITY_DTYPE)
    arr["active"][1] = 2
    with pytest.raises(ValueError):
        encode_entities(arr)
    with pytest.raises(ValueError):
        encode_entities(np.zeros((2, 2), dtype=ENTITY_DTYPE))


# -- hostile input -------------------------------------------------------------------------


def _raw(n: int = 3) -> bytes:
    return encode_entities({"id": np.arange(n), "channel": 1, "value": 1.0, "active": True})


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x00" * 9, "length"),
        (b"\x00" * 11, "length"),
        (_raw()[:-1], "length"),
        (_raw()[:19] + b"\x02" + _raw()[20:], "active"),
        (b"\x00" * 9 + b"\xff", "active"),
    ],
)
def test_raw_rejections(data: bytes, reason: str) -> None:
    with pytest.raises(WireError) as info:
        decode_entities(data)
    assert info.value.reason == reason


def test_nan_and_inf_are_not_wire_errors() -> None:
    raw = struct.pack("!IBf?", 1, 1, math.nan, True) + struct.pack("!IBf?", 2, 1, -math.inf, False)
    out = decode_entities(raw)
    assert math.isnan(out["value"][0]) and out["value"][1] == -math.inf


def test_max_records() -> None:
    with pytest.raises(WireError) as info:
        decode_entities(_raw(3), max_records=2)
    assert info.value.reason == "too_large"
    assert len(decode_entities(_raw(3), max_records=3)) == 3
    z = encode_entities(np.frombuffer(_raw(3), ENTITY_DTYPE), compress=True)
    with pytest.raises(WireError) as info:
        decode_entities(z, compressed=True, max_records=2)
    assert info.value.reason == "too_large"


def test_zip_bomb_is_refused_without_allocating() -> None:
    bomb = zstandard.ZstdCompressor(level=3).compress(bytes(64 << 20))
    assert len(bomb) < 4096
    tracemalloc.start()
    try:
        with pytest.raises(WireError) as info:
            decode_entities(bomb, compressed=True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.reason == "too_large"
    assert peak < 1 << 20


def test_declared_size_is_checked_before_decompressing() -> None:
    # magic, single-segment descriptor, 8-byte content size = 1 TiB, one empty raw block
    size = (1 << 40).to_bytes(8, "little")
    header_only = bytes.fromhex("28b52ffd") + bytes([0xE0]) + size + b"\x01\x00\x00"
    with pytest.raises(WireError) as info:
        decode_entities(header_only, compressed=True)
    assert info.value.reason == "too_large"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not zstd at all",
        zstandard.ZstdCompressor(write_content_size=False).compress(_raw()),
        zstandard.ZstdCompressor().compress(_raw())[:-1],
        zstandard.ZstdCompressor().compress(_raw()) + b"\x00",
        zstandard.ZstdCompressor().compress(_raw()) * 2,
    ],
)
def test_zstd_rejections(data: bytes) -> None:
    with pytest.raises(WireError) as info:
        decode_entities(data, compressed=True)
    assert info.value.reason == "zstd"


@FAST
@given(st.binary(max_size=300))
def test_arbitrary_raw_bytes_only_raise_wire_error(data: bytes) -> None:
    try:
        out = decode_entities(data)
    except WireError:
        return
    assert len(data) % 10 == 0 and out.tobytes() == data and (out["active"] <= 1).all()


@FAST
@given(st.binary(max_size=300))
def test_arbitrary_zstd_bytes_only_raise_wire_error(data: bytes) -> None:
    try:
        decode_entities(data, compressed=True)
    except WireError:
        pass


@FAST
@given(record_arrays(max_size=50), st.data())
def test_corrupted_zstd_frames_only_raise_wire_error(arr: np.ndarray, data: st.DataObject) -> None:
    frame = bytearray(encode_entities(arr, compress=True))
    pos = data.draw(st.integers(0, len(frame) - 1))
    frame[pos] ^= data.draw(st.integers(1, 255))
    try:
        decode_entities(bytes(frame), compressed=True)
    except WireError:
        pass


def test_non_buffer_input_is_a_wire_error() -> None:
    with pytest.raises(WireError) as info:
        decode_entities(memoryview(b"\x00" * 20)[::2])
    assert info.value.reason == "frames"


# -- batches (EntityBatch header + payload) ------------------------------------------------


@FAST
@given(record_arrays(max_size=100), st.integers(0, 255), st.booleans())
def test_make_and_decode_batch(arr: np.ndarray, channel: int, compress: bool) -> None:
    arr["channel"] = channel
    msg, payload = make_batch(arr, channel, compress=compress)
    assert msg == EntityBatch(channel=channel, count=len(arr), compressed=compress)
    assert same_records(decode_batch(msg, payload), arr)


def test_batch_rejections() -> None:
    arr = np.frombuffer(_raw(3), ENTITY_DTYPE)  # channel 1
    with pytest.raises(ValueError):
        make_batch(arr, 2)
    _, payload = make_batch(arr, 1)
    with pytest.raises(WireError) as info:
        decode_batch(EntityBatch(channel=2, count=3, compressed=False), payload)
    assert info.value.reason == "channel"
    with pytest.raises(WireError) as info:
        decode_batch(EntityBatch(channel=1, count=2, compressed=False), payload)
    assert info.value.reason == "count"
    with pytest.raises(WireError) as info:
        decode_batch(EntityBatch(channel=1, count=4, compressed=False), payload)
    assert info.value.reason == "count"
    z = encode_entities(arr, compress=True)
    with pytest.raises(WireError) as info:
        decode_batch(EntityBatch(channel=1, count=2, compressed=True), z)
    assert info.value.reason == "count"
    with pytest.raises(WireError) as info:
        decode_batch(EntityBatch(channel=1, count=3, compressed=False), payload, max_records=2)
    assert info.value.reason == "too_large"
