"""Golden vectors (protocol/vectors/): every valid vector both ways, every invalid one refused.

The canonical check is independent of the encoder under test: the expected envelope bytes
are rebuilt with plain msgpack from the vector's JSON (header and body in spec key order).
"""

from __future__ import annotations

import importlib.util
import json
import math
import struct
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
import zstandard

from corec_node.wire import (
    ENTITY_DTYPE,
    PROTOCOL,
    SCHEMAS,
    MsgType,
    WireError,
    decode_batch,
    decode_entities,
    decode_message,
    encode_entities,
    encode_message,
)

VECTORS = Path(__file__).resolve().parents[1] / "protocol" / "vectors"
ENTITIES = json.loads((VECTORS / "entities.json").read_text(encoding="utf-8"))
MESSAGES = json.loads((VECTORS / "messages.json").read_text(encoding="utf-8"))


def _ids(items: list[dict]) -> list[str]:
    return [item["name"] for item in items]


def records_from_json(records: list[dict]) -> np.ndarray:
    arr = np.zeros(len(records), dtype=ENTITY_DTYPE)
    for i, rec in enumerate(records):
        bits = bytes.fromhex(rec["value_bits"])
        value = struct.unpack(">f", bits)[0]
        shown = rec["value"]
        if isinstance(shown, str):
            assert (shown == "nan" and math.isnan(value)) or float(shown) == value
        else:
            assert struct.pack(">f", shown) == bits  # the JSON number is the same float32
        arr[i] = (rec["id"], rec["channel"], 0.0, rec["active"])
        arr["value"].view(">u4")[i] = int.from_bytes(bits, "big")  # exact bits, NaN payload too
    return arr


def test_vector_files_describe_this_protocol() -> None:
    assert ENTITIES["protocol"] == MESSAGES["protocol"] == "CoreC wire protocol 1.16" == f"CoreC wire protocol {PROTOCOL}"
    assert MESSAGES["types"] == {t.name: int(t) for t in MsgType}
    covered = {v["header"]["type_name"] for v in MESSAGES["valid"] if v["canonical"]}
    assert covered == {t.name for t in SCHEMAS}, "a canonical vector for every message type"


def test_every_optional_field_is_written_by_a_canonical_vector() -> None:
    """Each key a minor added appears, with a value other than its default, in a canonical
    vector: a stranger sees how it is written (SPEC 4.1, 6)."""
    from corec_node.wire.fields import _MEMBER

    written: dict[str, set[str]] = {}
    for vector in MESSAGES["valid"]:
        if not vector["canonical"]:
            continue
        body = vector["body"]
        written.setdefault(vector["header"]["type_name"], set()).update(body)
        for key in ("updates", "members"):
            for member in body.get(key, ()):
                written.setdefault("member state", set()).update(member)
    wanted = {t.name: set(schema.body.defaults) for t, schema in SCHEMAS.items()}
    wanted["member state"] = set(_MEMBER.defaults)
    for where, keys in wanted.items():
        missing = keys - written.get(where, set())
        assert not missing, f"no canonical vector writes {sorted(missing)} of {where}"


# -- entities --------------------------------------------------------------------------------


@pytest.mark.parametrize("vector", ENTITIES["valid"], ids=_ids(ENTITIES["valid"]))
def test_entity_vector_valid(vector: dict) -> None:
    data = bytes.fromhex(vector["data"])
    expected = records_from_json(vector["records"])
    decoded = decode_entities(data, compressed=vector["compressed"])
    assert decoded.tobytes() == expected.tobytes()
    encoded = encode_entities(expected, compress=vector["compressed"])
    if vector["compressed"]:
        raw = bytes.fromhex(vector["raw"])
        assert zstandard.ZstdDecompressor().decompress(encoded) == raw == expected.tobytes()
    else:
        assert vector["canonical"] and encoded == data
        # independent of numpy: the struct layout of SPEC.md s.10.1
        for rec, unpacked in zip(vector["records"], struct.iter_unpack("!IBf?", data), strict=True):
            id_, channel, _, active = unpacked
            assert (rec["id"], rec["channel"], rec["active"]) == (id_, channel, active)


@pytest.mark.parametrize("vector", ENTITIES["invalid"], ids=_ids(ENTITIES["invalid"]))
def test_entity_vector_invalid(vector: dict) -> None:
    kw = {"max_records": vector["max_records"]} if "max_records" in vector else {}
    with pytest.raises(WireError) as info:
        decode_entities(bytes.fromhex(vector["data"]), compressed=vector["compressed"], **kw)
    assert info.value.reason == vector["reason"]


# -- messages --------------------------------------------------------------------------------


def _canonical_envelope(vector: dict) -> bytes:
    h = vector["header"]
    env = {"v": h["version"], "m": h["minor"], "t": h["type"], "c": h["cluster"], "s": h["sender"],
           "q": h["seq"], "b": vector["body"]}
    return msgpack.packb(env, use_bin_type=True)


def _expected_message(vector: dict) -> Any:
    """The typed message the body JSON describes (unknown keys dropped)."""
    schema = SCHEMAS[MsgType(vector["header"]["type"])]
    return schema.body.load(vector["body"])


@pytest.mark.parametrize("vector", MESSAGES["valid"], ids=_ids(MESSAGES["valid"]))
def test_message_vector_valid(vector: dict) -> None:
    frames = [bytes.fromhex(f) for f in vector["frames"]]
    topic, env, payload = decode_message(frames, cluster=vector["header"]["cluster"])
    h = vector["header"]
    assert topic == vector["topic"].encode("ascii")
    got = (env.version, env.minor, int(env.type), env.type.name, env.cluster, env.sender, env.seq)
    keys = ("version", "minor", "type", "type_name", "cluster", "sender", "seq")
    assert got == tuple(h[k] for k in keys)
    assert env.msg == _expected_message(vector)
    assert (None if payload is None else bytes(payload).hex()) == vector["payload"]
    if "records" in vector:
        expected = records_from_json(vector["records"])
        assert decode_batch(env.msg, payload).tobytes() == expected.tobytes()

    if not vector["canonical"]:
        return
    assert _canonical_envelope(vector) == frames[1]
    again = encode_message(env.msg, sender=env.sender, seq=env.seq, cluster=env.cluster,
                           payload=None if payload is None else bytes(payload))
    assert again[:2] == frames[:2]
    if "records" in vector:  # re-encode the records themselves too
        expected = records_from_json(vector["records"])
        payload2 = encode_entities(expected, compress=env.msg.compressed)
        if env.msg.compressed:
            unz = zstandard.ZstdDecompressor().decompress
            assert unz(payload2) == unz(frames[2])
        else:
            assert payload2 == frames[2]


@pytest.mark.parametrize("vector", MESSAGES["invalid"], ids=_ids(MESSAGES["invalid"]))
def test_message_vector_invalid(vector: dict) -> None:
    frames = [bytes.fromhex(f) for f in vector["frames"]]
    with pytest.raises(WireError) as info:
        decode_message(frames, cluster=vector.get("cluster"))
    assert info.value.reason == vector["reason"]


def test_vectors_are_up_to_date() -> None:
    """The JSON files are what generate.py writes (zstd bytes aside)."""
    spec = importlib.util.spec_from_file_location("corec_vectors_generate", VECTORS / "generate.py")
    assert spec is not None and spec.loader is not None
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    assert gen._strip_zstd(gen.entity_vectors()) == gen._strip_zstd(ENTITIES)
    assert gen._strip_zstd(gen.message_vectors()) == gen._strip_zstd(MESSAGES)
