"""Regenerate the golden vectors of CoreC wire protocol 1.5 (protocol/SPEC.md, section 16).

    python protocol/vectors/generate.py          # rewrite entities.json and messages.json
    python protocol/vectors/generate.py --check  # exit 1 if the files differ from what
                                                 # this script would write (zstd bytes aside)

The vectors are a contract: once published, a canonical vector changes only with a new
protocol version. Valid vectors are built with the reference encoder and then checked
against an independent msgpack encoding of their JSON form (in tests/test_wire_vectors.py);
invalid vectors are built by hand, below, one defect each (two for the ``order_*`` vectors,
which test the order of SPEC section 19), and each is refused by the reference decoder with
its reason before it is written (``refused``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import struct
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

import msgpack  # noqa: E402
import numpy as np  # noqa: E402
import zstandard  # noqa: E402

from corec_node.engine.placement import map_digest, members_digest, owners  # noqa: E402
from corec_node.engine.genome import make, to_dict  # noqa: E402
from corec_node.wire import (  # noqa: E402
    ENTITY_DTYPE,
    PROTOCOL_MAJOR,
    PROTOCOL_MINOR,
    SCHEMAS,
    Ack,
    AggregateColumns,
    Aggregates,
    Alert,
    BatchReply,
    EntityBatch,
    Flow,
    FusionPlan,
    Gossip,
    Heartbeat,
    HeartbeatAck,
    MemberState,
    MemberStatus,
    MsgType,
    Nack,
    Owner,
    Ping,
    PingReq,
    Placement,
    PlacementRequest,
    SequenceHandoff,
    CopyDone,
    Ready,
    Learners,
    EvolutionPlan,
    NanoWeights,
    StatePush,
    StateReply,
    Vote,
    Voter,
    VoteRequest,
    WireError,
    decode_entities,
    decode_message,
    encode_entities,
    encode_message,
)
from corec_node.wire import PROTOCOL as WIRE_VERSION  # noqa: E402
from corec_node.wire.overlay_messages import (  # noqa: E402
    Disconnect,
    ForwardJoin,
    Graft,
    IHave,
    Join,
    JoinReply,
    Neighbor,
    NeighborReply,
    Prune,
    Shuffle,
    ShuffleReply,
    TreeGossip,
)

PROTOCOL = f"CoreC wire protocol {WIRE_VERSION}"
ZSTD_LEVEL = 1
S = MemberStatus


# -- entity records ----------------------------------------------------------------------


def refused(name: str, reason: str, decode: Any, *args: Any, **kwargs: Any) -> None:
    """An invalid vector's reason is what the reference decoder says, never a guess."""
    try:
        decode(*args, **kwargs)
    except WireError as exc:
        if exc.reason != reason:
            raise AssertionError(f"vector {name}: the decoder says {exc.reason!r}, not {reason!r}") from None
        return
    raise AssertionError(f"vector {name}: the decoder accepts it")


def record_json(rec: np.void) -> dict[str, Any]:
    value = float(rec["value"])
    bits = struct.pack(">f", rec["value"]).hex()
    if math.isnan(value):
        shown: Any = "nan"
    elif math.isinf(value):
        shown = "inf" if value > 0 else "-inf"
    else:
        shown = value  # every float32 is exact as a (shortest round-trip) float64 literal
    return {
        "id": int(rec["id"]),
        "channel": int(rec["channel"]),
        "value": shown,
        "value_bits": bits,
        "active": bool(rec["active"]),
    }


def records(rows: list[tuple[int, int, float, bool]]) -> np.ndarray:
    return np.array(rows, dtype=ENTITY_DTYPE)


def sensor_records(n: int, channel: int) -> np.ndarray:
    arr = np.zeros(n, dtype=ENTITY_DTYPE)
    arr["id"] = np.arange(1000, 1000 + n)
    arr["channel"] = channel
    arr["value"] = np.round(20.0 + np.sin(np.arange(n) / 5.0) * 3.0, 2)
    arr["active"] = (np.arange(n) % 7) != 3
    return arr


ENTITY_SAMPLES: list[tuple[str, str, np.ndarray]] = [
    ("empty", "zero records: an empty batch", records([])),
    ("one", "one record, all fields set", records([(1, 7, 1.5, True)])),
    (
        "extremes",
        "extreme values: max id and channel, signed zero, subnormal, largest float32",
        records(
            [
                (0, 0, 0.0, False),
                (0xFFFFFFFF, 255, -0.0, True),
                (2, 128, float(np.float32(1e-45)), True),
                (3, 1, float(np.finfo(np.float32).max), False),
                (4, 2, -2.25, True),
            ]
        ),
    ),
    (
        "non_finite",
        "NaN and infinities are valid on the wire (the engine counts them as entity errors)",
        records([(10, 3, math.nan, True), (11, 3, math.inf, True), (12, 3, -math.inf, False)]),
    ),
    ("sensor", "a realistic batch: sequential ids, a slow signal rounded to 0.01",
     sensor_records(24, 5)),
]


def entity_vectors() -> dict[str, Any]:
    valid = []
    for name, description, arr in ENTITY_SAMPLES:
        raw = encode_entities(arr)
        recs = [record_json(r) for r in arr]
        valid.append(
            {"name": f"raw_{name}", "description": description, "compressed": False,
             "canonical": True, "data": raw.hex(), "records": recs}
        )
        valid.append(
            {"name": f"zstd_{name}", "description": description + f" (zstd level {ZSTD_LEVEL})",
             "compressed": True, "canonical": False, "raw": raw.hex(),
             "data": encode_entities(arr, compress=True, level=ZSTD_LEVEL).hex(), "records": recs}
        )
    # A frame with a content checksum, at another level, as another encoder might write it.
    arr = sensor_records(200, 9)
    raw = encode_entities(arr)
    cctx = zstandard.ZstdCompressor(level=3, write_checksum=True, write_content_size=True)
    valid.append(
        {"name": "zstd_checksum", "description": "zstd frame with a content checksum (level 3)",
         "compressed": True, "canonical": False, "raw": raw.hex(), "data": cctx.compress(raw).hex(),
         "records": [record_json(r) for r in arr]}
    )

    one = encode_entities(records([(1, 7, 1.5, True)]))
    three = encode_entities(records([(1, 7, 1.5, True), (2, 7, 2.5, False), (3, 7, 3.5, True)]))
    z = zstandard.ZstdCompressor(level=1)
    no_size = zstandard.ZstdCompressor(level=1, write_content_size=False).compress(three)
    two = encode_entities(records([(1, 7, 1.5, True), (2, 7, 2.5, False)]))
    lying = bytearray(z.compress(two))
    assert lying[4] & 0x20 and lying[4] >> 6 == 0  # single segment, 1-byte content size
    lying[5] = 30  # declares 3 records, holds 2
    # Frame header only: single segment, 8-byte content size = 1 TiB, then an empty raw block.
    size = (1 << 40).to_bytes(8, "little")
    huge = bytes.fromhex("28b52ffd") + bytes([0xE0]) + size + b"\x01\x00\x00"
    bomb = z.compress(bytes(32 << 20))  # 32 MiB of zeros in ~1 KiB
    active2 = bytearray(three)
    active2[19] = 2
    invalid = [
        ("raw_partial_record", False, one[:9], "length", "9 bytes: less than one record"),
        ("raw_odd_length", False, three + b"\x00", "length", "31 bytes: not a multiple of 10"),
        ("raw_active_2", False, bytes(active2), "active", "second record's active byte is 2"),
        ("raw_active_ff", False, one[:9] + b"\xff", "active", "active byte 0xff"),
        ("raw_too_many", False, three, "too_large", "3 records with max_records=2", 2),
        ("zstd_garbage", True, b"\x00\x01\x02\x03\x04\x05\x06\x07", "zstd", "not a zstd frame"),
        ("zstd_empty", True, b"", "zstd", "no bytes at all"),
        ("zstd_no_content_size", True, no_size, "zstd", "frame without a content size"),
        ("zstd_size_mismatch", True, bytes(lying), "zstd", "declares 30 bytes, holds 20"),
        ("zstd_truncated", True, z.compress(three)[:-2], "zstd", "frame cut short"),
        ("zstd_trailing", True, z.compress(three) + b"\x00", "zstd", "a byte after the frame"),
        ("zstd_two_frames", True, z.compress(one) + z.compress(one), "zstd", "two frames"),
        ("zstd_odd_length", True, z.compress(three[:25]), "length", "decompresses to 25 bytes"),
        ("zstd_declares_1tib", True, huge, "too_large", "declares 1 TiB (refused unallocated)"),
        ("zstd_bomb", True, bomb, "too_large", "32 MiB of zeros: above MAX_PAYLOAD_BYTES"),
        ("zstd_too_many", True, z.compress(three), "too_large", "3 records with max_records=2", 2),
    ]
    invalid_json = []
    for name, compressed, data, reason, description, *max_records in invalid:
        refused(name, reason, decode_entities, data, compressed=compressed, **(
            {"max_records": max_records[0]} if max_records else {}))
        item = {"name": name, "description": description, "compressed": compressed,
                "data": data.hex(), "reason": reason}
        if max_records:
            item["max_records"] = max_records[0]
        invalid_json.append(item)
    return {"protocol": PROTOCOL, "kind": "entities", "valid": valid, "invalid": invalid_json}


# -- messages ------------------------------------------------------------------------------

MEMBERS = (
    MemberState("node-a", "10.0.0.1:7946", "10.0.0.1:7947", 0, S.ALIVE),
    MemberState("node-b.edge", "gw-1.example.net:7946", "gw-1.example.net:7947", 7, S.SUSPECT),
    MemberState("nodo-ñandú", "[fe80::1%eth0]:7946", "[fe80::1%eth0]:7947", 1 << 40, S.DEAD),
    MemberState("node-d", "127.0.0.1:65535", "127.0.0.1:1", 3, S.LEFT),
)
U64_MAX = (1 << 64) - 1


def _hdr(sender: str, seq: int, cluster: str = "") -> dict[str, Any]:
    return {"sender": sender, "seq": seq, "cluster": cluster}


def _batch(channel: int, rows: list[tuple[int, int, float, bool]],
           compress: bool) -> tuple[EntityBatch, bytes]:
    arr = records(rows)
    msg = EntityBatch(channel=channel, count=len(arr), compressed=compress)
    return msg, encode_entities(arr, compress=compress)


_B_RAW = _batch(7, [(1, 7, 1.5, True), (2, 7, -0.25, False), (3, 7, 100.0, True)], False)
_B_ZSTD = _batch(255, [(i, 255, i / 4, i % 2 == 0) for i in range(10)], True)
_B_EMPTY = _batch(0, [], False)
_ROW = {"block": 3, "mean": 20.5, "min": -1.25, "label": "b3", "ok": True, "x": None}

AGG_ROW_KEYS = ("block", "channel", "owner", "count", "active", "mean", "min", "max", "std",
                "error_rate", "fitness", "tick", "epoch")
"""SPEC 9.2: the keys of an AGGREGATES row, in canonical order (tests/test_spec_conformance.py
checks that the engine's rows have exactly these, in this order)."""
FUSION_KEYS = ("weak", "strong", "channel", "reason")
"""SPEC 9.2: the keys of a FUSION_PLAN map, in canonical order."""
CLUSTER_ID = "3f2a9c0d5e7b1486"


def _fitness(count: int, active: int, error_rate: float, mean: float | None, std: float | None) -> float:
    """SPEC 9.2's fitness, to build rows whose figures agree with each other."""
    if not active or mean is None or std is None:
        return 0.0
    ratio = abs(mean) / (abs(mean) + std) if std > 0 else 1.0
    return min(1.0, max(0.0, active / count * (1 - error_rate) * (1 + ratio) / 2))


def agg_row(block: int, count: int, active: int, stats: tuple[float, float, float, float] | None,
            error_rate: float, tick: int, epoch: int, owner: str = "node-a") -> dict[str, Any]:
    """One AGGREGATES row as an owner publishes it: AGG_ROW_KEYS in order, nil statistics
    when the block has no active entity."""
    mean, lo, hi, std = stats if stats is not None else (None, None, None, None)
    values = (block, block >> 32, owner, count, active, mean, lo, hi, std, error_rate,
              _fitness(count, active, error_rate, mean, std), tick, epoch)
    return dict(zip(AGG_ROW_KEYS, values, strict=True))


_EPOCH = (3 << 32) | 2  # term 3, the second map adopted in it
_AGG_ROWS = (
    agg_row((7 << 32) | 1, 1000, 998, (20.25, 17.5, 23.0, 1.5), 0.0, 41, _EPOCH),
    agg_row((7 << 32) | 2, 3, 0, None, 1 / 3, 41, _EPOCH - 1),  # held, not owned: one epoch less
)
_B_PRODUCER = _batch(3, [(5000, 3, 21.5, True), (5001, 3, 21.75, True)], False)

# -- owner-routed ingest (SPEC 9.6, since 1.5) --
BLOCK_SIZE = 1000
OWNERS = (Owner("node-a", "10.0.0.1:7948"), Owner("node-b", "10.0.0.2:7948"), Owner("node-c", "10.0.0.3:7948"))
"""The map of vector ``placement``: three members and their data sockets (the direct port + 2)."""
FUSIONS = ({"block": (7 << 32) | 2, "root": (7 << 32) | 1},)
"""Its fusion: block 7:2 (node-c's by its own id) is placed under its root 7:1 (node-b's)."""
PRODUCER_ID = 0x9A3F1C7E5B2D4086  # a producer id drawn at random, above 2^63: written as uint 64
ROUTING_EXAMPLE = ((3, 5000), (3, 2999), (3, 4000), (7, 2500), (7, 6001))
"""Records (channel, id) whose owners under OWNERS and FUSIONS the table of SPEC 9.6 shows
(tests/test_spec_conformance.py holds the table to ``owner_of``)."""


def owner_of(channel: int, id_: int) -> str:
    """SPEC 9.6: a record's block, replaced by its fusion root, owned by rendezvous over OWNERS."""
    block = channel << 32 | id_ // BLOCK_SIZE
    root = {f["block"]: f["root"] for f in FUSIONS}.get(block, block)
    names = [o.name for o in OWNERS]
    return names[int(owners([root], names)[0])]


def _routed(channel: int, rows: list[tuple[int, int, float, bool]], **fields: Any) -> tuple[EntityBatch, bytes]:
    msg, payload = _batch(channel, rows, False)
    return dataclasses.replace(msg, **fields), payload


_ROUTED_ROWS = [(5000, 3, 21.5, True), (5001, 3, 21.75, True), (8123, 3, 19.0, False)]
assert {owner_of(3, r[0]) for r in _ROUTED_ROWS} == {"node-b"}  # blocks 3:5 and 3:8
_B_ROUTED = _routed(3, _ROUTED_ROWS, producer=PRODUCER_ID, pseq=2, epoch=_EPOCH)
_B_ACKS_0 = _routed(3, _ROUTED_ROWS[:1], producer=PRODUCER_ID, pseq=3, acks=0, epoch=_EPOCH)
_FORWARDED_ROWS = [(4000, 3, 18.25, True), (4999, 3, 18.5, True)]
assert {owner_of(3, r[0]) for r in _FORWARDED_ROWS} == {"node-c"}  # block 3:4
_B_FORWARDED = _routed(3, _FORWARDED_ROWS, producer=PRODUCER_ID, pseq=4, epoch=_EPOCH, hops=1)
_B_REPLICA = _routed(3, _ROUTED_ROWS[:2], producer=PRODUCER_ID, pseq=2, acks=2, replica=1)
_B_COPY = _routed(3, _ROUTED_ROWS, acks=0, replica=2)
_B_DELETE = _routed(3, [(5000, 3, 0.0, False), (8123, 3, 0.0, False)], producer=PRODUCER_ID, pseq=9, epoch=_EPOCH,
                    delete=True)

# (name, description, message, header, payload)
MESSAGE_SAMPLES: list[tuple[str, str, Any, dict[str, Any], bytes | None]] = [
    ("ping", "direct probe",
     Ping(probe=5, target="node-b", reply_to="10.0.0.1:7946"), _hdr("node-a", 3), None),
    ("ack", "answer to a probe",
     Ack(probe=5, target="node-b"), _hdr("node-b", 0), None),
    ("ping_req", "indirect probe request, IPv6 target",
     PingReq(probe=300, target="node-c", target_addr="[2001:db8::7]:7946",
             reply_to="10.0.0.1:7946"), _hdr("node-a", 4), None),
    ("nack", "Lifeguard nack from a relay",
     Nack(probe=300, target="node-c"), _hdr("node-d", 65536), None),
    ("gossip", "member updates of every status, a UTF-8 name, a large incarnation",
     Gossip(updates=MEMBERS), _hdr("node-a", 42, "prod"), None),
    ("gossip_build", "a member announcing its build, protocol and features (since 1.3)",
     Gossip(updates=(MemberState("node-b", "10.0.0.2:7946", "10.0.0.2:7947", 3, MemberStatus.ALIVE,
                                 "0.4.0", "1.3", ("placement", "flow", "voters")),)),
     _hdr("node-b", 44), None),
    ("gossip_empty", "no updates",
     Gossip(updates=()), _hdr("node-a", 43), None),
    ("gossip_quiet", "updates with quiet: the 3 GOSSIPs before this one sent no update for the last time (since 1.13)",
     Gossip(updates=MEMBERS[:1], quiet=3), _hdr("node-a", 45), None),
    ("state_push_join", "join push-pull",
     StatePush(join=True, reply_to="10.0.0.9:7946", members=MEMBERS[:1]),
     _hdr("node-new", 0, "prod"), None),
    ("state_reply", "full member list",
     StateReply(members=MEMBERS), _hdr("node-a", 9), None),
    ("vote_request_pre", "pre-vote",
     VoteRequest(term=8, pre=True, reply_to="10.0.0.3:7946"), _hdr("node-c", 200), None),
    ("vote_request", "real vote request",
     VoteRequest(term=9, pre=False, reply_to="10.0.0.3:7946"), _hdr("node-c", 201), None),
    ("vote", "vote granted",
     Vote(term=9, granted=True, pre=False), _hdr("node-a", 10), None),
    ("vote_refused", "pre-vote refused",
     Vote(term=8, granted=False, pre=True), _hdr("node-b", 1), None),
    ("heartbeat", "leader heartbeat; term and seq at the uint64 maximum",
     Heartbeat(term=U64_MAX, leader="node-a"), _hdr("node-a", U64_MAX), None),
    ("heartbeat_placement", "leader heartbeat confirming a placement map (since 1.1)",
     Heartbeat(term=12, leader="node-a", placement="9f86d081884c7d65"), _hdr("node-a", 40), None),
    ("heartbeat_voters", "leader heartbeat with its numbered voter configuration (since 1.3)",
     Heartbeat(term=12, leader="node-a", placement="9f86d081884c7d65", seq=77, cfg_term=12, cfg_index=5,
               voters=(Voter("node-a", "10.0.0.1:7946"), Voter("node-b", "10.0.0.2:7946"),
                       Voter("node-c", "10.0.0.3:7946")), commit=4), _hdr("node-a", 41), None),
    ("heartbeat_ack", "a voter answers heartbeat 77 and has stored configuration (12, 5) (since 1.3)",
     HeartbeatAck(term=12, seq=77, cfg_term=12, cfg_index=5), _hdr("node-b", 9), None),
    ("vote_request_config", "real vote request carrying the candidate's configuration (since 1.3)",
     VoteRequest(term=13, pre=False, reply_to="10.0.0.3:7946", cfg_term=12, cfg_index=5),
     _hdr("node-c", 202), None),
    ("entity_batch_raw", "3 raw records on channel 7 (topic ent.007)",
     _B_RAW[0], _hdr("producer-1", 17), _B_RAW[1]),
    ("entity_batch_zstd", "10 zstd records on channel 255 (payload bytes depend on zstd)",
     _B_ZSTD[0], _hdr("producer-1", 0), _B_ZSTD[1]),
    ("entity_batch_empty", "no records: an empty payload frame",
     _B_EMPTY[0], _hdr("producer-1", 1), _B_EMPTY[1]),
    ("aggregates", "rows are flat maps: the wire checks their form, SPEC 9.2 names their keys",
     Aggregates(tick=12, rows=(_ROW,)), _hdr("node-a", 5), None),
    ("fusion_plan", "the nucleus of term 9 fuses block 7:3 into 7:1",
     FusionPlan(term=9, fusions=({"weak": (7 << 32) | 3, "strong": (7 << 32) | 1, "channel": 7,
                                  "reason": "fitness 0.050 < min_fitness 0.2"},)), _hdr("node-a", 7), None),
    ("flow_hold", "ingest flow control: pause republishing for 100 ms (since 1.2)",
     Flow(hold_ms=100), _hdr("node-b", 3), None),
    ("flow_release", "ingest flow control: the pause is over (since 1.2)",
     Flow(hold_ms=0), _hdr("node-b", 4), None),
    ("batch_reply_accepted", "a node accepted all 10,000 records of a producer's batch 17 (since 1.4)",
     BatchReply(seq=17, accepted=10_000), _hdr("node-a", 12), None),
    ("batch_reply_busy", "a node refused a producer's batch 18 as busy: no room in time (since 1.4)",
     BatchReply(seq=18, accepted=0, rejected={"busy": 10_000}), _hdr("node-a", 13, "prod"), None),
    ("batch_reply_reasons", "a later minor's partial answer at stage 1: reasons sorted by name (since 1.4)",
     BatchReply(seq=U64_MAX, accepted=5, rejected={"too_large": 2, "busy": 3}, stage=1), _hdr("node-b", 2), None),
    ("alert", "an alert with a two-line text",
     Alert(kind="threshold", text="channel 7 mean 98.5 > 90\nblock 3"), _hdr("node-b", 6), None),
    ("alert_facts", ("a 1.10 alert with its facts: every node keeps it under this uid and the sender's name, "
     "and hands it to its corec_alert hooks marked remote"),
     Alert(kind="threshold", text="block 7:3 mean 98.5 > 90", facts={
         "uid": "9b2f6c1e4d8a4f0b8c7e6d5a4b3c2d1e", "severity": "critical", "block": (7 << 32) | 3, "channel": 7,
         "value": 98.5, "plugin": "alerts"}), _hdr("node-b", 7), None),
    # -- rules a stranger's implementation needs (SPEC 5, 9.2, 9.5, 12) --
    ("entity_batch_producer", ("a producer's first batch as `corec-node send` writes it: the default "
     "label corec, the producer's own name (no member's), q from its one counter for all channels, "
     "topic ent.003 on the node's direct socket, its minor (4 or more: the node answers; SPEC 9.5), "
     "none of the optional keys of 1.5 (a producer that does not route, SPEC 9.6)"),
     _B_PRODUCER[0], _hdr("client-gw1-4242", 1, "corec"), _B_PRODUCER[1]),
    ("batch_reply_to_producer", ("the node's answer to that batch: its own name, label and dir counter, "
     "seq = the batch's q (SPEC 9.4)"),
     BatchReply(seq=1, accepted=2), _hdr("node-a", 30, "corec"), None),
    ("aggregates_rows", ("two rows as an owner publishes them after its tick: every key of SPEC 9.2 "
     "in canonical order; a block with no active entity has nil statistics; floats as float 64"),
     Aggregates(tick=41, rows=_AGG_ROWS), _hdr("node-a", 88, "corec"), None),
    ("heartbeat_cluster_id", ("leader heartbeat with the cluster id drawn at bootstrap, cfg_cluster "
     "(a digest, SPEC 5 and 8.1; since 1.3)"),
     Heartbeat(term=12, leader="node-a", placement="9f86d081884c7d65", seq=78, cfg_term=12, cfg_index=5,
               voters=(Voter("node-a", "10.0.0.1:7946"), Voter("node-b", "10.0.0.2:7946"),
                       Voter("node-c", "10.0.0.3:7946")), commit=5, cfg_cluster=CLUSTER_ID),
     _hdr("node-a", 42, "corec"), None),
    ("heartbeat_settings", ("leader heartbeat whose configuration carries the cluster's settings, "
     "key=value sorted by key (SPEC 8.1; since 1.11)"),
     Heartbeat(term=12, leader="node-a", placement="9f86d081884c7d65", seq=79, cfg_term=12, cfg_index=6,
               voters=(Voter("node-a", "10.0.0.1:7946"), Voter("node-b", "10.0.0.2:7946"),
                       Voter("node-c", "10.0.0.3:7946")), commit=6, cfg_cluster=CLUSTER_ID,
               settings=("engine.block_size=1000", "engine.min_insync=0", "engine.replicas=2",
                         "engine.tick_interval=1.0", "security.enabled=false")),
     _hdr("node-a", 43, "corec"), None),
    ("vote_request_cluster_id", "pre-vote carrying the candidate's configuration and cluster id (since 1.3)",
     VoteRequest(term=13, pre=True, reply_to="10.0.0.3:7946", cfg_term=12, cfg_index=5, cfg_cluster=CLUSTER_ID),
     _hdr("node-c", 203, "corec"), None),
    ("names_printable", ("printable names (SPEC 5): a space, non-ASCII letters, an emoji; a label "
     "with a slash"),
     Gossip(updates=(MemberState("rack 1 node", "10.0.0.5:7946", "10.0.0.5:7947", 1, S.ALIVE),
                     MemberState("nodo-ñandú-東京", "10.0.0.6:7946", "10.0.0.6:7947", 1, S.ALIVE),
                     MemberState("edge-\U0001F600", "10.0.0.7:7946", "10.0.0.7:7947", 1, S.ALIVE))),
     _hdr("rack 1 node", 3, "site/eu-1"), None),
    ("addresses", ("every form of address (SPEC 5): DNS name with _ and -, IPv4, IPv6, IPv4-mapped "
     "IPv6, IPv6 with a zone, ports 1 and 65535"),
     Gossip(updates=(MemberState("a", "gw_1.rack-2.example:1", "10.0.0.1:65535", 0, S.ALIVE),
                     MemberState("b", "[2001:db8::7]:7946", "[::ffff:10.0.0.1]:7947", 0, S.ALIVE),
                     MemberState("c", "[fe80::1%eth0]:7946", "localhost:7947", 0, S.ALIVE))),
     _hdr("a", 5), None),
    # -- owner-routed ingest (SPEC 9.6, since 1.5) --
    ("gossip_data", ("a 1.5 member announcing its data socket (`data`, the direct port + 2 by default) "
     "and the feature owner_routing"),
     Gossip(updates=(MemberState("node-b", "10.0.0.2:7946", "10.0.0.2:7947", 3, MemberStatus.ALIVE, "0.5.0", "1.5",
                                 ("placement", "flow", "voters", "batch_reply", "owner_routing"), "10.0.0.2:7948"),)),
     _hdr("node-b", 45, "corec"), None),
    ("gossip_tags", ("a 1.8 member announcing the tags of its config (node.tags): key=value names, "
     "kept as they came, acted on by no node"),
     Gossip(updates=(MemberState("pi-7", "10.0.0.7:7946", "10.0.0.7:7947", 2, MemberStatus.ALIVE, "0.1.0", "1.8",
                                 ("placement", "flow", "voters", "batch_reply", "owner_routing", "replicas", "ring"),
                                 "10.0.0.7:7948", ("role=gateway", "zone=eu-1")),)),
     _hdr("pi-7", 12, "corec"), None),
    ("gossip_settings", ("a 1.10 member announcing the settings that must agree cluster-wide and its plugins' "
     "versions, for corec-node drift: key=value names, acted on by no node"),
     Gossip(updates=(MemberState("pi-7", "10.0.0.7:7946", "10.0.0.7:7947", 2, MemberStatus.ALIVE, "0.1.0", "1.10",
                                 ("placement", "flow", "voters", "batch_reply", "owner_routing", "replicas", "ring",
                                  "evolution"), "10.0.0.7:7948", (), False,
                                 ("engine.block_size=1000", "engine.replicas=2", "plugin.alerts=0.1.0")),)),
     _hdr("pi-7", 13, "corec"), None),
    ("gossip_pruned", ("a 1.9 node gossips an operator's force-leave --prune: the member left at the "
     "incarnation it died with, and every receiver not holding a higher one forgets it now"),
     Gossip(updates=(MemberState("pi-3", "10.0.0.3:7946", "10.0.0.3:7947", 4, MemberStatus.LEFT, "0.1.0", "1.8",
                                 ("placement", "flow", "voters", "batch_reply", "owner_routing", "replicas", "ring"),
                                 "10.0.0.3:7948", (), True),)),
     _hdr("pi-1", 31, "corec"), None),
    ("placement_request", ("a producer asks the node it was given for the placement map: no map held yet, "
     "so no epoch (an empty body); q from the producer's one counter"),
     PlacementRequest(), _hdr("client-gw1-4242", 1, "corec"), None),
    ("placement_request_epoch", "a producer asks again, naming the epoch of the map it holds",
     PlacementRequest(epoch=_EPOCH), _hdr("client-gw1-4242", 7, "corec"), None),
    ("placement", ("the map the node acts on: its epoch, the digest of its members (SPEC 9.1), the block "
     "size, every owner with its data socket, and the fusion 7:2 -> 7:1 (blocks 30064771074 and "
     "30064771073); answered on the connection the request came in on"),
     Placement(epoch=_EPOCH, digest=members_digest(o.name for o in OWNERS), block_size=BLOCK_SIZE,
               owners=OWNERS, fusions=FUSIONS), _hdr("node-a", 31, "corec"), None),
    ("placement_no_owners", ("a cluster with a member older than 1.5 (no data socket): owners left out, "
     "the producer sends everything to this node as in 1.4"),
     Placement(epoch=_EPOCH, digest=members_digest(["node-a", "node-b", "node-c", "node-old"]),
               block_size=BLOCK_SIZE), _hdr("node-a", 32, "corec"), None),
    ("entity_batch_owner_routed", ("a producer's part for node-b, sent to node-b's data socket: blocks 3:5 "
     "and 3:8, node-b's under the map of vector placement; producer id and pseq, the epoch it split "
     "by; acks 1 and hops 0 are defaults, not written"),
     _B_ROUTED[0], _hdr("client-gw1-4242", 2, "corec"), _B_ROUTED[1]),
    ("entity_batch_acks_0", "fire and forget: acks 0 is written, and no node answers the batch",
     _B_ACKS_0[0], _hdr("client-gw1-4242", 3, "corec"), _B_ACKS_0[1]),
    ("entity_batch_forwarded", ("node-a forwards to node-c's data socket the records of block 3:4 that a "
     "producer sent it: hops 1, the producer's id and pseq, node-a's epoch, q from node-a's direct counter"),
     _B_FORWARDED[0], _hdr("node-a", 57, "corec"), _B_FORWARDED[1]),
    ("batch_reply_not_owner", ("node-c answers node-a's part at node-a's data socket: seq = the part's q; one "
     "record it does not own under its newer map, refused, not forwarded again; its epoch"),
     BatchReply(seq=57, accepted=1, rejected={"not_owner": 1}, epoch=_EPOCH + 1), _hdr("node-c", 12, "corec"), None),
    ("batch_reply_epoch", ("node-a's answer to a producer once every part is answered: some records refused, "
     "a part unanswered in time; its epoch, so that the producer fetches the map again"),
     BatchReply(seq=5, accepted=6, rejected={"unconfirmed": 2, "duplicate": 1}, epoch=_EPOCH + 1),
     _hdr("node-a", 58, "corec"), None),
    ("sequence_handoff", ("the producer sequences of block 3:5 (12884901893) handed to its new owner before "
     "the block's records: rows producer, block, pseq"),
     SequenceHandoff(rows=({"producer": PRODUCER_ID, "block": (3 << 32) | 5, "pseq": 2},
                           {"producer": 17, "block": (3 << 32) | 5, "pseq": 40})), _hdr("node-b", 60, "corec"), None),
    ("placement_replicas", "a 1.6 node's map: two copies of each block, so a producer may ask acks 2 (all)",
     Placement(epoch=_EPOCH, digest=members_digest(o.name for o in OWNERS), block_size=BLOCK_SIZE,
               owners=OWNERS, replicas=2), _hdr("node-a", 33, "corec"), None),
    ("placement_ring", ("a 1.7 node's map: blocks placed on the token ring (rule 5 of SPEC 9.1), two "
     "copies; the digest ends with the rule's name"),
     Placement(epoch=_EPOCH, digest=map_digest([o.name for o in OWNERS], (), "ring"), block_size=BLOCK_SIZE,
               owners=OWNERS, replicas=2, rule="ring"), _hdr("node-a", 34, "corec"), None),
    ("entity_batch_replica", ("node-b, owner of block 3:5, sends to the block's replica the records it queued "
     "from a producer's batch sent with acks 2: replica 1, the producer's id and pseq, node-b's q"),
     _B_REPLICA[0], _hdr("node-b", 61, "corec"), _B_REPLICA[1]),
    ("entity_batch_copy", ("node-b copies blocks 3:5 and 3:8 to a new holder, after their sequences and "
     "before its later writes: replica 2, acks 0"),
     _B_COPY[0], _hdr("node-b", 62, "corec"), _B_COPY[1]),
    ("entity_batch_delete", ("a producer removes entities 3:5000 and 3:8123 (node-b's blocks): delete true, "
     "values ignored; checked for sequences and replicated like a write"),
     _B_DELETE[0], _hdr("client-gw1-4242", 9, "corec"), _B_DELETE[1]),
    ("copy_done", "node-b sent the learner node-d every copy it owes it under the map of this digest",
     CopyDone(digest=map_digest(["node-a", "node-b", "node-c"], ["node-d"]), records=3, epoch=_EPOCH),
     _hdr("node-b", 63, "corec"),
     None),
    ("ready", "node-d caught up under that map: it tells the nucleus's data socket",
     Ready(digest=map_digest(["node-a", "node-b", "node-c"], ["node-d"])), _hdr("node-d", 1, "corec"), None),
    ("learners", "the nucleus of term 7 names node-d a learner: it holds copies and owns nothing yet",
     Learners(term=7, names=("node-d",)), _hdr("node-a", 40, "corec"), None),
    ("evolution_plan", ("the nucleus of term 7 gives block 1:4 a challenger genome (season 12, bred from two parents) "
     "to run in shadow beside the default genome it names"),
     EvolutionPlan(term=7, challenges=({
         "block": (1 << 32) | 4,
         "challenger": json.dumps(to_dict(make({"season": 12, "alpha": 0.3, "gamma": 0.2}, 1,
                                               ("f75dcb80f7193ce2", "398cee2ae2d139f4"))),
                                  separators=(",", ":"), sort_keys=True),
         "current": "f75dcb80f7193ce2"},)),
     _hdr("node-a", 41, "corec"), None),
    ("nano_weights", ("node-a gives node-b the forecasters of blocks 1:4 and 1:9, which the map moved to it, after "
     "their copies: 3 and 2 bytes of opaque state one after the other in the payload, and the ticks each has seen"),
     NanoWeights(rows=({"block": (1 << 32) | 4, "ticks": 120, "size": 3}, {"block": (1 << 32) | 9, "ticks": 118, "size": 2})),
     _hdr("node-a", 42, "corec"), bytes.fromhex("0102030405")),
    ("aggregate_columns", ("the rows of vector aggregates_rows as columns (since 1.14): each key of SPEC 9.2 "
     "once, in canonical order, with its values in the rows' order; published on col beside the row maps"),
     AggregateColumns(tick=41, columns={key: tuple(row[key] for row in _AGG_ROWS) for key in _AGG_ROWS[0]}),
     _hdr("node-a", 12, "corec"), None),
    ("view_join", "node-new asks node-a to take it into its active view (the overlay, since 1.15)",
     Join(sender="10.0.0.9:7946"), _hdr("node-new", 0, "corec"), None),
    ("view_join_reply", "node-a took the joiner in, and gives it two peers for its passive view",
     JoinReply(sender="10.0.0.1:7946", peers=("10.0.0.2:7946", "[2001:db8::7]:7946")),
     _hdr("node-a", 0, "corec"), None),
    ("forward_join", "node-a walks node-new's join on, 5 hops left",
     ForwardJoin(sender="10.0.0.1:7946", joiner="10.0.0.9:7946", ttl=5), _hdr("node-a", 0, "corec"), None),
    ("neighbor", "node-b, with no active peer left, asks node-a to link at high priority",
     Neighbor(sender="10.0.0.2:7946", high=True), _hdr("node-b", 0, "corec"), None),
    ("neighbor_reply", "node-a refuses: its active view is full",
     NeighborReply(sender="10.0.0.1:7946", accepted=False), _hdr("node-a", 0, "corec"), None),
    ("disconnect", "node-a leaves the cluster and drops the link for good",
     Disconnect(sender="10.0.0.1:7946", leaving=True), _hdr("node-a", 0, "corec"), None),
    ("shuffle", "node-c's sample of its views, walked on by node-a with 2 hops left",
     Shuffle(sender="10.0.0.1:7946", origin="10.0.0.3:7946", peers=("10.0.0.3:7946", "10.0.0.4:7946"), ttl=2),
     _hdr("node-a", 0, "corec"), None),
    ("shuffle_reply", "node-d answers node-c's shuffle with a sample of its passive view",
     ShuffleReply(sender="10.0.0.4:7946", peers=("10.0.0.5:7946",)), _hdr("node-d", 0, "corec"), None),
    ("tree_gossip_heartbeat", ("node-a pushes node-b's heartbeat down the tree: broadcast 1733400000000001 "
     "of 10.0.0.2:7946, 2 links crossed"),
     TreeGossip(sender="10.0.0.1:7946", msg_id=("10.0.0.2:7946", 1733400000000001), hops=2,
                payload=("node-b", Heartbeat(term=3, leader="node-b", seq=17, cfg_term=1, cfg_index=2,
                                             voters=(Voter("node-b", "10.0.0.2:7946"),), commit=2))),
     _hdr("node-a", 0, "corec"), None),
    ("tree_gossip_members", "a membership GOSSIP of node-c carried by the tree, one hop from its origin",
     TreeGossip(sender="10.0.0.3:7946", msg_id=("10.0.0.3:7946", 1733400000000007), hops=1,
                payload=("node-c", Gossip(updates=MEMBERS[:1]))),
     _hdr("node-c", 0, "corec"), None),
    ("tree_gossip_columns", ("node-a pushes node-c's block aggregates down the tree (since 1.16: the data "
     "plane's broadcasts ride the tree where every member announces tree_data)"),
     TreeGossip(sender="10.0.0.1:7946", msg_id=("10.0.0.3:7946", 1733400000000042), hops=3,
                payload=("node-c", AggregateColumns(tick=41, columns={key: tuple(row[key] for row in _AGG_ROWS)
                                                                      for key in _AGG_ROWS[0]}))),
     _hdr("node-a", 0, "corec"), None),
    ("tree_gossip_alert", "an alert node-c raised, carried by the tree one hop from its origin (since 1.16)",
     TreeGossip(sender="10.0.0.3:7946", msg_id=("10.0.0.3:7946", 1733400000000043), hops=1,
                payload=("node-c", Alert(kind="anomaly", text="block 7:3 mean 41.5 beyond 3 sigma"))),
     _hdr("node-c", 0, "corec"), None),
    ("ihave", "node-a announces two broadcasts it holds, with their hop counts",
     IHave(sender="10.0.0.1:7946", ids=((("10.0.0.2:7946", 1733400000000001), 2),
                                        (("10.0.0.3:7946", 1733400000000007), 1))),
     _hdr("node-a", 0, "corec"), None),
    ("graft", "node-d asks node-a for a broadcast it missed, and for eager pushes from now on",
     Graft(sender="10.0.0.4:7946", ids=(("10.0.0.2:7946", 1733400000000001),)), _hdr("node-d", 0, "corec"), None),
    ("prune", "node-b got a duplicate from node-a: announce to me instead",
     Prune(sender="10.0.0.2:7946"), _hdr("node-b", 0, "corec"), None),
]


def _to_json(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_to_json(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_json(v) for k, v in value.items()}
    return value


def _payload_json(msg: Any, payload: bytes | None) -> dict[str, Any]:
    if payload is None:
        return {"payload": None}
    out: dict[str, Any] = {"payload": payload.hex()}
    if isinstance(msg, EntityBatch):
        raw = zstandard.ZstdDecompressor().decompress(payload) if msg.compressed else payload
        out["records"] = [record_json(r) for r in np.frombuffer(raw, dtype=ENTITY_DTYPE)]
    return out


def valid_message(name: str, description: str, frames: list[bytes], canonical: bool,
                  cluster: str | None = None) -> dict[str, Any]:
    topic, env, payload = decode_message(frames, cluster=cluster)
    wire = msgpack.unpackb(frames[1], raw=False)
    item = {
        "name": name,
        "description": description,
        "canonical": canonical,
        "frames": [bytes(f).hex() for f in frames],
        "topic": topic.decode("ascii"),
        "header": {"version": env.version, "minor": env.minor, "type": int(env.type),
                   "type_name": env.type.name, "cluster": env.cluster, "sender": env.sender,
                   "seq": env.seq},
        "body": _to_json(wire["b"]),
    }
    item.update(_payload_json(env.msg, payload if payload is None else bytes(payload)))
    return item


def pack(env: Any) -> bytes:
    return msgpack.packb(env, use_bin_type=True)


_DROP = object()


def envelope(t: int, body: Any, /, **over: Any) -> dict[str, Any]:
    """An envelope of this version as a dict, with header keys replaced (or dropped with ``_DROP``)."""
    env = {"v": PROTOCOL_MAJOR, "m": PROTOCOL_MINOR, "t": t, "c": "", "s": "node-a", "q": 1,
           "b": body}
    for key, value in over.items():
        if value is _DROP:
            del env[key]
        else:
            env[key] = value
    return env


PING_BODY = {"probe": 5, "target": "node-b", "reply_to": "10.0.0.1:7946"}
MEMBER = {"name": "node-a", "addr": "10.0.0.1:7946", "pub": "10.0.0.1:7947", "inc": 2, "status": 0}
RAW_BODY = {"channel": 7, "count": 3, "compressed": False}
BIG = "x" * 256


def ping_header(**over: Any) -> list[bytes]:
    """A PING on ``dir`` with header keys replaced."""
    return [b"dir", pack(envelope(MsgType.PING, PING_BODY, **over))]


def ping_body(**fields: Any) -> list[bytes]:
    """A PING on ``dir`` with body fields replaced (or dropped with ``_DROP``)."""
    body = {k: v for k, v in dict(PING_BODY, **fields).items() if v is not _DROP}
    return [b"dir", pack(envelope(MsgType.PING, body))]


def gossip(**fields: Any) -> list[bytes]:
    """A GOSSIP of one member state with fields replaced (or dropped with ``_DROP``)."""
    member = {k: v for k, v in dict(MEMBER, **fields).items() if v is not _DROP}
    return [b"mbr", pack(envelope(MsgType.GOSSIP, {"updates": [member]}))]


PLACEMENT_BODY = {"epoch": 1, "digest": "", "block_size": 1000, "owners": [{"name": "node-a", "data": "10.0.0.1:7948"}]}


def placement(**fields: Any) -> list[bytes]:
    """A PLACEMENT on ``dir`` with body fields replaced (or dropped with ``_DROP``)."""
    body = {k: v for k, v in dict(PLACEMENT_BODY, **fields).items() if v is not _DROP}
    return [b"dir", pack(envelope(MsgType.PLACEMENT, body))]


TREE_BODY = {"sender": "10.0.0.1:7946", "msg_id": ["10.0.0.2:7946", 9],
             "payload": ["node-b", int(MsgType.HEARTBEAT), {"term": 3, "leader": "node-b"}], "hops": 1}


def tree_gossip(**fields: Any) -> list[bytes]:
    """A TREE_GOSSIP on ``dir`` with body fields replaced."""
    return [b"dir", pack(envelope(MsgType.TREE_GOSSIP, dict(TREE_BODY, **fields)))]


def batch(topic: bytes, payload: bytes | None, **fields: Any) -> list[bytes]:
    """An ENTITY_BATCH (raw channel-7 header unless replaced) on ``topic``."""
    frames = [topic, pack(envelope(MsgType.ENTITY_BATCH, dict(RAW_BODY, **fields)))]
    return frames if payload is None else [*frames, payload]


def message_vectors() -> dict[str, Any]:
    valid = []
    for name, description, msg, header, payload in MESSAGE_SAMPLES:
        frames = encode_message(msg, payload=payload, **header)
        valid.append(valid_message(name, description, frames, True))

    future = envelope(MsgType.GOSSIP, {"updates": [dict(MEMBER, zone="eu-1")], "hops": 3},
                      m=7, trace="abc", x=[1, 2, {"k": b"\x00\x01"}])
    valid.append(valid_message(
        "future_minor", "minor 7 with unknown keys in header, body and member state: "
        "accepted, unknown keys ignored (decode only)", [b"mbr", pack(future)], False))
    no_minor = envelope(MsgType.PING, PING_BODY, m=_DROP)
    valid.append(valid_message("no_minor_key", "header without 'm' means minor 0 (decode only)",
                               [b"dir", pack(no_minor)], False))
    reordered = dict(reversed(list(envelope(MsgType.PING, PING_BODY).items())))
    valid.append(valid_message("reordered_keys", "keys in another order, a non-minimal int "
                               "(decode only)", [b"dir", _non_minimal_ping(reordered)], False))
    valid.append(valid_message("minor_2_sender", "a 1.2 node's PING: every message carries its "
                               "sender's own minor, whatever its type (decode only)",
                               ping_header(m=2), False))
    hb_empty = envelope(MsgType.HEARTBEAT, {"term": 3, "leader": "node-a", "placement": ""})
    valid.append(valid_message("placement_empty", "placement written as \"\": the same as absent, the "
                               "sender confirms no map (decode only; senders omit the key)",
                               [b"nuc", pack(hb_empty)], False))
    loose_row = dict(_AGG_ROWS[0], mean=20, min=17, std=0, error_rate=0, x_future="kept")
    loose = msgpack.packb(envelope(MsgType.AGGREGATES, {"tick": 41, "rows": [loose_row]}),
                          use_bin_type=True, use_single_float=True)
    valid.append(valid_message("aggregates_loose_numbers", "a row with ints where floats are expected, "
                               "floats as float 32 and a key of a later minor: all accepted (decode only)",
                               [b"agg", loose], False))
    valid.append(valid_message("addr_leading_zero_port", "port written with a leading zero (5 digits "
                               "at most): accepted, port 7946 (decode only; senders write none)",
                               ping_body(reply_to="10.0.0.1:07946"), False))

    p_raw, p_zstd = _B_RAW[1], _B_ZSTD[1]
    ok_ping = pack(envelope(MsgType.PING, PING_BODY))
    bad_utf8 = pack(envelope(MsgType.PING, PING_BODY, s="@@")).replace(b"\xa2@@", b"\xa2\xff\xfe")
    ext = pack(envelope(MsgType.PING, PING_BODY, x=msgpack.ExtType(1, b"z")))
    zstd_9 = {"channel": 255, "count": 9, "compressed": True}
    z1 = zstandard.ZstdCompressor(level=1)
    huge = bytes.fromhex("28b52ffd") + bytes([0xE0]) + (10**12).to_bytes(8, "little") + b"\x01\x00\x00"
    # (name, description, frames, reason[, cluster the receiver expects])
    inv: list[tuple[Any, ...]] = [
        # frames
        ("one_frame", "a lone envelope frame", [ok_ping], "frames"),
        ("four_frames", "topic, envelope, payload and one more",
         [b"dir", ok_ping, b"", b""], "frames"),
        # msgpack
        ("not_msgpack", "0xc1 is never used in msgpack", [b"dir", b"\xc1"], "msgpack"),
        ("trailing_bytes", "a valid envelope followed by a byte",
         [b"dir", ok_ping + b"\x00"], "msgpack"),
        ("bad_utf8", "a str with invalid UTF-8", [b"dir", bad_utf8], "msgpack"),
        ("ext_type", "an ext object (none in 1.0)", [b"dir", ext], "msgpack"),
        ("int_map_key", "a map key that is not a string", [b"dir", pack({1: 1})], "msgpack"),
        ("deep_nesting", "arrays nested 2000 deep", [b"dir", b"\x91" * 2000 + b"\xc0"], "msgpack"),
        ("truncated", "envelope cut one byte short", [b"dir", ok_ping[:-1]], "truncated"),
        ("empty_envelope", "zero-byte envelope frame", [b"dir", b""], "truncated"),
        ("huge_array_header", "declares 2^32-1 elements in 5 bytes",
         [b"dir", b"\xdd\xff\xff\xff\xff"], "msgpack"),
        # header
        ("not_a_map", "envelope is an array", [b"dir", pack([1, 1, "", "a", 1, {}])], "header"),
        ("no_version", "no 'v'", ping_header(v=_DROP), "header"),
        ("version_str", "'v' is a string", ping_header(v="1"), "header"),
        ("no_sender", "no 's'", ping_header(s=_DROP), "header"),
        ("empty_sender", "empty sender name", ping_header(s=""), "header"),
        ("long_sender", "sender of 256 bytes", ping_header(s=BIG), "header"),
        ("seq_negative", "'q' = -1", ping_header(q=-1), "header"),
        ("seq_float", "'q' = 1.0", ping_header(q=1.0), "header"),
        ("cluster_int", "'c' = 0", ping_header(c=0), "header"),
        ("type_str", "'t' = \"PING\"", ping_header(t="PING"), "header"),
        ("no_body", "no 'b'", ping_header(b=_DROP), "header"),
        ("minor_negative", "'m' = -1", ping_header(m=-1), "header"),
        # version, type
        ("major_2", "major version 2", ping_header(v=2), "version"),
        ("major_0", "major version 0", ping_header(v=0), "version"),
        ("major_2_other_layout", "major 2 may change everything but 'v'",
         [b"dir", pack({"v": 2})], "version"),
        ("unknown_type", "type 99", ping_header(t=99), "type"),
        ("unassigned_type", "type 8 (a gap in the table)", ping_header(t=8), "type"),
        # cluster (decoded with cluster="test")
        ("cluster_mismatch", "label 'prod' where 'test' is expected",
         ping_header(c="prod"), "cluster", "test"),
        ("cluster_missing_label", "empty label where 'test' is expected",
         [b"dir", ok_ping], "cluster", "test"),
        # topic
        ("ping_on_mbr", "direct message on a PUB topic", [b"mbr", ok_ping], "topic"),
        ("gossip_on_dir", "gossip must come on mbr",
         [b"dir", pack(envelope(MsgType.GOSSIP, {"updates": []}))], "topic"),
        ("heartbeat_on_nucx", "topic with an extra byte",
         [b"nucx", pack(envelope(MsgType.HEARTBEAT, {"term": 1, "leader": "a"}))], "topic"),
        ("batch_wrong_channel", "channel 7 batch on ent.008", batch(b"ent.008", p_raw), "topic"),
        ("batch_short_topic", "ent.7 is not a topic: three digits",
         batch(b"ent.7", p_raw), "topic"),
        ("batch_on_all_prefix", "ent. alone is a prefix, not a topic",
         batch(b"ent.", p_raw), "topic"),
        # payload
        ("ping_with_payload", "PING takes no payload", [b"dir", ok_ping, b"x"], "payload"),
        ("batch_without_payload", "ENTITY_BATCH needs one", batch(b"ent.007", None), "payload"),
        # body fields
        ("body_not_map", "'b' is an array",
         [b"dir", pack(envelope(MsgType.PING, [5, "a", "h:1"]))], "field"),
        ("probe_missing", "no probe", ping_body(probe=_DROP), "field"),
        ("probe_negative", "probe -1", ping_body(probe=-1), "field"),
        ("probe_float", "probe 5.0", ping_body(probe=5.0), "field"),
        ("probe_bool", "probe true", ping_body(probe=True), "field"),
        ("probe_str", "probe \"5\"", ping_body(probe="5"), "field"),
        ("target_empty", "empty name", ping_body(target=""), "field"),
        ("target_long", "name of 256 bytes", ping_body(target=BIG), "field"),
        ("target_long_utf8", "128 chars, 256 UTF-8 bytes", ping_body(target="ñ" * 128), "field"),
        ("target_newline", "control character in a name", ping_body(target="a\nb"), "field"),
        ("target_bin", "name sent as bin, not str", ping_body(target=b"node-b"), "field"),
        ("addr_no_port", "reply_to without a port", ping_body(reply_to="10.0.0.1"), "field"),
        ("addr_port_0", "port 0", ping_body(reply_to="10.0.0.1:0"), "field"),
        ("addr_port_65536", "port 65536", ping_body(reply_to="10.0.0.1:65536"), "field"),
        ("addr_ipv6_bare", "IPv6 without brackets", ping_body(reply_to="::1:7946"), "field"),
        ("addr_url", "a URL, not host:port", ping_body(reply_to="tcp://h:1"), "field"),
        ("join_int", "join = 1 (bool expected)",
         [b"dir", pack(envelope(MsgType.STATE_PUSH, {"join": 1, "reply_to": "h:1",
                                                     "members": []}))], "field"),
        ("status_4", "member status 4", gossip(status=4), "field"),
        ("status_str", "member status as a string", gossip(status="alive"), "field"),
        ("member_no_inc", "member state without inc", gossip(inc=_DROP), "field"),
        ("member_not_map", "member state as an array",
         [b"mbr", pack(envelope(MsgType.GOSSIP, {"updates": [list(MEMBER.values())]}))], "field"),
        ("updates_not_array", "updates is a map",
         [b"mbr", pack(envelope(MsgType.GOSSIP, {"updates": MEMBER}))], "field"),
        ("inc_too_big", "inc = 2^64 does not fit: sent as float",
         gossip(inc=float(1 << 64)), "field"),
        ("channel_256", "channel 256", batch(b"ent.256", p_raw, channel=256), "topic"),
        ("channel_256_body", "channel 256 on a valid topic",
         batch(b"ent.007", p_raw, channel=256), "field"),
        ("count_over_limit", "count above MAX_BATCH_RECORDS",
         batch(b"ent.007", p_raw, count=1 << 32), "too_large"),
        ("reply_reasons_17", "BATCH_REPLY with 17 reasons",
         [b"dir", pack(envelope(MsgType.BATCH_REPLY, {"seq": 1, "accepted": 0,
                                                       "rejected": {f"r{i:02d}": 1 for i in range(17)}}))],
         "too_large"),
        ("reply_reason_negative", "a reason's count is -1",
         [b"dir", pack(envelope(MsgType.BATCH_REPLY, {"seq": 1, "accepted": 0, "rejected": {"busy": -1}}))],
         "field"),
        ("reply_reason_empty_name", "a reason with an empty name",
         [b"dir", pack(envelope(MsgType.BATCH_REPLY, {"seq": 1, "accepted": 0, "rejected": {"": 1}}))],
         "field"),
        ("reply_rejected_array", "rejected is an array",
         [b"dir", pack(envelope(MsgType.BATCH_REPLY, {"seq": 1, "accepted": 0, "rejected": [["busy", 1]]}))],
         "field"),
        ("reply_accepted_over_limit", "accepted above MAX_BATCH_RECORDS",
         [b"dir", pack(envelope(MsgType.BATCH_REPLY, {"seq": 1, "accepted": 1 << 32, "rejected": {}}))],
         "too_large"),
        ("reply_stage_256", "stage 256 (uint8)",
         [b"dir", pack(envelope(MsgType.BATCH_REPLY, {"seq": 1, "accepted": 0, "rejected": {}, "stage": 256}))],
         "field"),
        ("reply_on_ent", "BATCH_REPLY on an entity topic",
         [b"ent.007", pack(envelope(MsgType.BATCH_REPLY, {"seq": 1, "accepted": 0, "rejected": {}}))],
         "topic"),
        ("alert_text_long", "alert text of 4097 bytes",
         [b"alr", pack(envelope(MsgType.ALERT, {"kind": "k", "text": "t" * 4097}))], "field"),
        ("rows_not_maps", "aggregates row that is not a map",
         [b"agg", pack(envelope(MsgType.AGGREGATES, {"tick": 1, "rows": [[1, 2]]}))], "field"),
        ("row_nested", "aggregates row value that is an array",
         [b"agg", pack(envelope(MsgType.AGGREGATES, {"tick": 1, "rows": [{"a": [1]}]}))],
         "field"),
        # entity payload against the header
        ("batch_count_mismatch", "header says 4 records, payload holds 3",
         batch(b"ent.007", p_raw, count=4), "count"),
        ("batch_partial_record", "raw payload of 25 bytes",
         batch(b"ent.007", p_raw[:25]), "length"),
        ("batch_zstd_count_mismatch", "zstd frame declares 10 records, header says 9",
         batch(b"ent.255", p_zstd, **zstd_9), "count"),
        ("batch_zstd_not_zstd", "compressed flag on a raw payload",
         batch(b"ent.007", p_raw, compressed=True), "zstd"),
        ("batch_zstd_declares_1tb", ("a zstd frame declaring 10^12 bytes (10^11 records) under a header "
         "of 9 records: the declared size is checked against count, unallocated (SPEC 10.2)"),
         batch(b"ent.255", huge, **zstd_9), "count"),
        ("batch_zstd_declares_odd", "a zstd frame declaring 25 bytes: not whole records, before count",
         batch(b"ent.007", z1.compress(p_raw[:25]), compressed=True), "length"),
        # -- the topic frame (SPEC 3) --
        ("topic_33_bytes", "a topic frame of 33 bytes", [b"ent." + b"0" * 29, ok_ping], "topic"),
        ("topic_33_bytes_not_msgpack", "a 33-byte topic is refused before the envelope is parsed",
         [b"x" * 33, b"\xc1"], "topic"),
        ("batch_on_dir", "ENTITY_BATCH travels on ent.NNN on every socket, never on dir",
         batch(b"dir", p_raw), "topic"),
        ("ping_on_ent", "a direct message on an entity topic", [b"ent.007", ok_ping], "topic"),
        # -- the cluster label (SPEC 12) --
        ("cluster_empty_vs_default", "empty label where the default corec is expected",
         [b"dir", ok_ping], "cluster", "corec"),
        ("cluster_case", "labels are compared byte for byte: Corec is not corec",
         ping_header(c="Corec"), "cluster", "corec"),
        ("cluster_label_tab", "a label with a control character", ping_header(c="a\tb"), "header"),
        ("cluster_label_256", "a label of 256 bytes", ping_header(c=BIG), "header"),
        # -- printable names and addresses (SPEC 5) --
        ("sender_tab", "a sender name with a tab", ping_header(s="node\ta"), "header"),
        ("name_nbsp", "U+00A0 no-break space (Zs) in a name", ping_body(target="node\u00a0b"), "field"),
        ("name_zero_width", "U+200B zero width space (Cf) in a name", ping_body(target="node\u200bb"), "field"),
        ("name_del", "U+007F DEL (Cc) in a name", ping_body(target="node\x7fb"), "field"),
        ("name_private_use", "U+E000 private use (Co) in a name", ping_body(target="node\ue000"), "field"),
        ("name_line_separator", "U+2028 line separator (Zl) in a name", ping_body(target="a\u2028b"), "field"),
        ("name_unassigned", "U+0378, unassigned (Cn), in a name", ping_body(target="a\u0378"), "field"),
        ("addr_space", "a space in the host", ping_body(reply_to="my host:7946"), "field"),
        ("addr_non_ascii", "a non-ASCII host (IDNs travel as punycode)", ping_body(reply_to="höst:7946"), "field"),
        ("addr_port_6_digits", "six port digits, though the value is 80", ping_body(reply_to="h:000080"), "field"),
        ("addr_port_plus", "a sign before the port", ping_body(reply_to="h:+80"), "field"),
        ("addr_empty_host", "no host", ping_body(reply_to=":7946"), "field"),
        ("addr_empty_zone", "an IPv6 zone of no characters", ping_body(reply_to="[fe80::1%]:7946"), "field"),
        ("addr_ipv6_no_port", "an IPv6 address in brackets without a port", ping_body(reply_to="[::1]"), "field"),
        ("addr_trailing_space", "a space after the port", ping_body(reply_to="h:7946 "), "field"),
        # -- the placement digest (SPEC 5) --
        ("placement_33", "a digest of 33 characters",
         [b"nuc", pack(envelope(MsgType.HEARTBEAT, {"term": 1, "leader": "a", "placement": "f" * 33}))],
         "field"),
        ("placement_int", "a digest sent as an int",
         [b"nuc", pack(envelope(MsgType.HEARTBEAT, {"term": 1, "leader": "a", "placement": 7}))], "field"),
        ("placement_newline", "a digest with a newline",
         [b"nuc", pack(envelope(MsgType.HEARTBEAT, {"term": 1, "leader": "a", "placement": "9f86\n"}))],
         "field"),
        ("cfg_cluster_bin", "a cluster id sent as bin",
         [b"nuc", pack(envelope(MsgType.HEARTBEAT, {"term": 1, "leader": "a", "cfg_cluster": b"3f2a"}))],
         "field"),
        # -- rows of AGGREGATES and FUSION_PLAN (SPEC 9.2) --
        ("row_bin_value", "a row value sent as bin",
         [b"agg", pack(envelope(MsgType.AGGREGATES, {"tick": 1, "rows": [{"block": b"\x07"}]}))], "field"),
        ("row_map_value", "a row value that is a map",
         [b"agg", pack(envelope(MsgType.AGGREGATES, {"tick": 1, "rows": [{"a": {"b": 1}}]}))], "field"),
        ("row_empty_key", "a row key of no characters",
         [b"agg", pack(envelope(MsgType.AGGREGATES, {"tick": 1, "rows": [{"": 1}]}))], "field"),
        ("row_key_newline", "a row key with a newline",
         [b"agg", pack(envelope(MsgType.AGGREGATES, {"tick": 1, "rows": [{"a\nb": 1}]}))], "field"),
        ("row_65_keys", "a row of 65 keys",
         [b"agg", pack(envelope(MsgType.AGGREGATES, {"tick": 1, "rows": [{f"k{i:02d}": i for i in range(65)}]}))],
         "too_large"),
        ("row_text_4097", "a row str of 4097 bytes",
         [b"agg", pack(envelope(MsgType.AGGREGATES, {"tick": 1, "rows": [{"owner": "t" * 4097}]}))], "field"),
        ("fusion_not_map", "a fusion that is an array",
         [b"nuc", pack(envelope(MsgType.FUSION_PLAN, {"term": 1, "fusions": [[1, 2, 0, "r"]]}))], "field"),
        # -- owner-routed ingest (SPEC 5, 6, 9.6; since 1.5) --
        ("member_data_not_addr", "a member's data socket without a port", gossip(data="10.0.0.1"), "field"),
        ("member_data_empty", "data \"\" is not an address: a member without a data socket leaves the key out",
         gossip(data=""), "field"),
        ("batch_acks_256", "acks 256 (uint8)", batch(b"ent.007", p_raw, acks=256), "field"),
        ("batch_acks_bool", "acks true: a bool is not an int", batch(b"ent.007", p_raw, acks=True), "field"),
        ("batch_hops_256", "hops 256 (uint8)", batch(b"ent.007", p_raw, hops=256), "field"),
        ("batch_hops_negative", "hops -1", batch(b"ent.007", p_raw, hops=-1), "field"),
        ("batch_producer_negative", "producer -1", batch(b"ent.007", p_raw, producer=-1), "field"),
        ("batch_producer_2_64", "producer 2^64 does not fit: sent as float",
         batch(b"ent.007", p_raw, producer=float(1 << 64)), "field"),
        ("batch_pseq_str", "pseq \"2\"", batch(b"ent.007", p_raw, pseq="2"), "field"),
        ("batch_epoch_float", "epoch 1.0", batch(b"ent.007", p_raw, epoch=1.0), "field"),
        ("reply_epoch_negative", "BATCH_REPLY epoch -1",
         [b"dir", pack(envelope(MsgType.BATCH_REPLY, {"seq": 1, "accepted": 0, "rejected": {}, "epoch": -1}))],
         "field"),
        ("placement_request_epoch_str", "PLACEMENT_REQUEST epoch \"3\"",
         [b"dir", pack(envelope(MsgType.PLACEMENT_REQUEST, {"epoch": "3"}))], "field"),
        ("placement_request_on_ent", "PLACEMENT_REQUEST travels on dir, whatever the socket",
         [b"ent.003", pack(envelope(MsgType.PLACEMENT_REQUEST, {}))], "topic"),
        ("aggregate_columns_of_two_lengths", "every column of AGGREGATE_COLUMNS has one value a row",
         [b"col", pack(envelope(MsgType.AGGREGATE_COLUMNS, {"tick": 1, "columns": {"block": [1, 2], "count": [3]}}))],
         "field"),
        ("aggregate_columns_not_arrays", "a column is an array of values",
         [b"col", pack(envelope(MsgType.AGGREGATE_COLUMNS, {"tick": 1, "columns": {"block": 1}}))], "field"),
        ("nano_weights_without_payload", "NANO_WEIGHTS needs one",
         [b"dir", pack(envelope(MsgType.NANO_WEIGHTS, {"rows": []}))], "payload"),
        ("placement_request_with_payload", "PLACEMENT_REQUEST takes no payload",
         [b"dir", pack(envelope(MsgType.PLACEMENT_REQUEST, {})), b""], "payload"),
        ("placement_no_digest", "PLACEMENT without digest (required; \"\" when none)",
         placement(digest=_DROP), "field"),
        ("placement_no_block_size", "PLACEMENT without block_size", placement(block_size=_DROP), "field"),
        ("placement_block_size_2_32", "block_size 2^32 (uint32)", placement(block_size=1 << 32), "field"),
        ("placement_owners_map", "owners is a map, not an array",
         placement(owners={"node-a": "10.0.0.1:7948"}), "field"),
        ("placement_owner_no_data", "an owner without its data socket",
         placement(owners=[{"name": "node-a"}]), "field"),
        ("placement_owner_data_empty", "an owner whose data socket is \"\"",
         placement(owners=[{"name": "node-a", "data": ""}]), "field"),
        ("placement_owner_data_url", "an owner's data socket as a URL",
         placement(owners=[{"name": "node-a", "data": "tcp://10.0.0.1:7948"}]), "field"),
        ("placement_owner_name_empty", "an owner of no name",
         placement(owners=[{"name": "", "data": "10.0.0.1:7948"}]), "field"),
        ("placement_fusion_not_map", "a fusion that is an array",
         placement(fusions=[[(7 << 32) | 2, (7 << 32) | 1]]), "field"),
        ("placement_on_nuc", "PLACEMENT is a direct answer, never on nuc",
         [b"nuc", pack(envelope(MsgType.PLACEMENT, PLACEMENT_BODY))], "topic"),
        ("sequence_handoff_row_array", "a sequence row that is an array",
         [b"dir", pack(envelope(MsgType.SEQUENCE_HANDOFF, {"rows": [[1, 2, 3]]}))], "field"),
        ("sequence_handoff_on_mbr", "SEQUENCE_HANDOFF is direct",
         [b"mbr", pack(envelope(MsgType.SEQUENCE_HANDOFF, {"rows": []}))], "topic"),
        # -- the order of the checks (SPEC 19): several defects, the first check gives the reason --
        ("order_frames_first", "four frames, garbage in each", [b"x" * 40, b"\xc1", b"", b""], "frames"),
        ("order_minor_before_type", "'m' = -1 and type 99", ping_header(m=-1, t=99), "header"),
        ("order_type_before_cluster", "type 99 and 'c' = 0", ping_header(t=99, c=0), "type"),
        ("order_version_before_sender", "major 2 and no 's'", ping_header(v=2, s=_DROP), "version"),
        ("order_body_present_before_cluster", "no 'b' and a foreign label",
         ping_header(b=_DROP, c="prod"), "header", "test"),
        ("order_cluster_before_topic", "a foreign label on the wrong topic",
         [b"mbr", pack(envelope(MsgType.PING, PING_BODY, c="prod"))], "cluster", "test"),
        ("order_topic_before_payload", "PING on mbr with a payload", [b"mbr", ok_ping, b"x"], "topic"),
        ("order_payload_before_body", "ENTITY_BATCH without payload and with a bad body",
         batch(b"ent.007", None, compressed=1), "payload"),
        ("order_batch_topic_before_body", ("ENTITY_BATCH on dir with a bad body: the entity topic "
         "is checked before the body"), batch(b"dir", p_raw, channel="x"), "topic"),
        ("order_body_before_channel", ("channel 7 on ent.008 and compressed = 1: the body is checked "
         "before its channel is compared with the topic"), batch(b"ent.008", p_raw, compressed=1), "field"),
        ("order_channel_before_count", ("channel 7 on ent.008 and count 4 for 3 records: the channel "
         "is compared before the payload"), batch(b"ent.008", p_raw, count=4), "topic"),
        ("order_fields_in_order", "probe and target both bad: probe comes first",
         ping_body(probe=-1, target=""), "field"),
        ("order_length_before_count", "25 raw bytes under count 9", batch(b"ent.007", p_raw[:25], count=9),
         "length"),
        ("order_hops_before_count", ("hops 256 and count 4 for 3 records: the body is checked before the "
         "payload against it"), batch(b"ent.007", p_raw, count=4, hops=256), "field"),
        ("tree_gossip_carries_ping", "a TREE_GOSSIP that carries a PING: only broadcasts ride the tree",
         tree_gossip(payload=["node-b", int(MsgType.PING), PING_BODY]), "field"),
        ("tree_gossip_bad_carried_body", "a carried HEARTBEAT without its term",
         tree_gossip(payload=["node-b", int(MsgType.HEARTBEAT), {"leader": "node-b"}]), "field"),
        ("tree_gossip_short_id", "a message id of one item, not [addr, uint64]",
         tree_gossip(msg_id=["10.0.0.2:7946"]), "field"),
        ("ihave_too_many", "an IHAVE of 1,025 ids: at most 1,024",
         [b"dir", pack(envelope(MsgType.IHAVE, {"sender": "10.0.0.1:7946",
                                                "ids": [[["10.0.0.2:7946", i], 1] for i in range(1025)]}))],
         "too_large"),
    ]
    assert _B_RAW[0].count == 3 and _B_ZSTD[0].count == 10
    invalid = []
    for name, description, frames, reason, *cluster in inv:
        refused(name, reason, decode_message, frames, cluster=cluster[0] if cluster else None)
        item: dict[str, Any] = {"name": name, "description": description,
                                "frames": [f.hex() for f in frames], "reason": reason}
        if cluster:
            item["cluster"] = cluster[0]
        invalid.append(item)
    return {"protocol": PROTOCOL, "kind": "messages",
            "types": {t.name: int(t) for t in SCHEMAS}, "valid": valid, "invalid": invalid}


def _non_minimal_ping(env: dict[str, Any]) -> bytes:
    """The reordered ping with 'q' written as a uint64 (0xcf) instead of a fixint."""
    data = pack(env)
    marker = b"\xa1q\x01"
    assert data.count(marker) == 1
    return data.replace(marker, b"\xa1q\xcf" + (1).to_bytes(8, "big"))


def render(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=1, ensure_ascii=False) + "\n"


def _strip_zstd(doc: dict[str, Any]) -> dict[str, Any]:
    """Drop what depends on the zstd library version, for --check."""
    doc = json.loads(json.dumps(doc))
    for item in doc["valid"]:
        if item.get("compressed"):
            item["data"] = None
        if item.get("header", {}).get("type_name") == "ENTITY_BATCH" and item["body"]["compressed"]:
            item["payload"] = None
            item["frames"] = item["frames"][:2]
    for item in doc["invalid"]:
        if item.get("compressed") or "zstd" in item["name"]:
            item["data"] = item["frames"] = None
    return doc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args()
    outputs = {"entities.json": entity_vectors(), "messages.json": message_vectors()}
    if args.check:
        stale = [name for name, doc in outputs.items()
                 if _strip_zstd(json.loads((HERE / name).read_text())) != _strip_zstd(doc)]
        for name in stale:
            print(f"{name} differs from the generator", file=sys.stderr)
        return 1 if stale else 0
    for name, doc in outputs.items():
        (HERE / name).write_text(render(doc), encoding="utf-8")
        print(f"wrote {HERE / name}: {len(doc['valid'])} valid, {len(doc['invalid'])} invalid")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
