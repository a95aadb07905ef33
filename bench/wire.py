"""Wire codec benchmark: entity records per second, compressed size, envelope cost, and what
another owner's block rows cost a node to take in.

    python bench/wire.py [--records 1000000] [--struct-records 100000] [--repeat 5] [--rows 2000]

Prints a table, then one JSON line ``{"bench": "wire", ...}``. Figures only: nothing here
passes or fails on time. The baseline is a ``struct`` loop over ``!IBf?`` (the seed
documents' way), run in the same process on fewer records and scaled per record.

Rows: every node takes in each row every other owner publishes, so this is paid N - 1
times a row. --rows rows of a real ``EngineHost`` tick (forecast keys included) are sent
as one AGGREGATES message (row maps, the 1.13 way) and as AGGREGATE_COLUMNS (1.14); each is
timed decoded, checked and kept by another node's engine (``observe_rows`` /
``observe_columns``), and decoded by its mesh process, which forwards them unchecked to the
node process, beside a bare ``msgpack.unpackb`` of the row maps' frame, the floor
of any decode of them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # works without installing

import msgpack  # noqa: E402
import numpy as np  # noqa: E402
import zstandard  # noqa: E402

from corec_node.wire import (  # noqa: E402
    ENTITY_DTYPE,
    Gossip,
    MemberState,
    MemberStatus,
    MsgType,
    Ping,
    decode_entities,
    decode_message,
    encode_entities,
    encode_message,
)
from corec_node.engine.host import EngineHost  # noqa: E402
from corec_node.engine.wire_rows import wire_messages  # noqa: E402
from _machine import cpu_model  # noqa: E402  (bench/ is on sys.path when run as a script)

TARGET_DECODE_X = 100
TARGET_ENCODE_X = 30


def sensor_batch(n: int, channels: int = 4, seed: int = 7) -> np.ndarray:
    """Sensor-like records: sequential ids, a few channels, a slow signal plus noise rounded
    to 0.01, mostly active."""
    rng = np.random.default_rng(seed)
    ids = np.arange(n, dtype=np.uint32)
    channel = (ids % channels).astype(np.uint8)
    t = ids / 5000.0
    value = 20.0 + 5.0 * np.sin(t + channel) + rng.normal(0.0, 0.05, n)
    arr = np.empty(n, dtype=ENTITY_DTYPE)
    arr["id"] = ids
    arr["channel"] = channel
    arr["value"] = np.round(value, 2)
    arr["active"] = rng.random(n) > 0.02
    return arr


def best_of(fn: Callable[[], Any], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--struct-records", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--rows", type=int, default=2000, help="block rows of one owner's message (2,000 at most)")
    args = parser.parse_args()
    n, ns, repeat = args.records, args.struct_records, args.repeat

    arr = sensor_batch(n)
    raw = encode_entities(arr)
    rows: dict[str, dict[str, float]] = {}

    def measure(name: str, records: int, encode: Callable[[], Any], decode: Callable[[], Any],
                size: int | None = None) -> None:
        rows[name] = {
            "records": records,
            "encode_rps": records / best_of(encode, repeat),
            "decode_rps": records / best_of(decode, repeat),
            "bytes_per_record": (size if size is not None else records * 10) / records,
        }

    measure("numpy raw", n, lambda: encode_entities(arr), lambda: decode_entities(raw))
    for level in (1, 3):
        z = encode_entities(arr, compress=True, level=level)
        measure(f"numpy zstd-{level}", n,
                lambda lv=level: encode_entities(arr, compress=True, level=lv),
                lambda z=z: decode_entities(z, compressed=True), size=len(z))

    # Baseline: a struct loop over Python tuples (the tuples are built outside the timing).
    sub = arr[:ns]
    tuples = list(zip(sub["id"].tolist(), sub["channel"].tolist(), sub["value"].tolist(),
                      sub["active"].astype(bool).tolist(), strict=True))
    packer = struct.Struct("!IBf?")
    pack = packer.pack
    sub_raw = b"".join([pack(*t) for t in tuples])
    assert sub_raw == encode_entities(sub)
    measure(f"struct loop ({ns:,} scaled)", ns, lambda: b"".join([pack(*t) for t in tuples]),
            lambda: list(packer.iter_unpack(sub_raw)))

    # Per-channel batches, as ENTITY_BATCH sends them (one channel a batch).
    per_channel = {}
    for level in (1, 3):
        total = sum(len(encode_entities(arr[arr["channel"] == ch], compress=True, level=level))
                    for ch in np.unique(arr["channel"]))
        per_channel[f"zstd-{level}"] = total / n

    # Envelope cost, for scale: a PING and a 100-member GOSSIP.
    ping = Ping(probe=123456, target="node-b", reply_to="10.0.0.2:7946")
    hosts = [f"10.0.{i // 250}.{i % 250}" for i in range(100)]
    gossip = Gossip(updates=tuple(
        MemberState(f"node-{i}", f"{h}:7946", f"{h}:7947", i, MemberStatus.ALIVE)
        for i, h in enumerate(hosts)
    ))
    envelope = {}
    for name, msg in (("ping", ping), ("gossip_100", gossip)):
        frames = encode_message(msg, sender="node-a", seq=42, cluster="prod")
        k = 2000 if name == "ping" else 100
        def encode_k(m: Any = msg, k: int = k) -> None:
            for _ in range(k):
                encode_message(m, sender="node-a", seq=42)

        enc = best_of(encode_k, repeat)
        dec = best_of(lambda f=frames, k=k: [decode_message(f) for _ in range(k)], repeat)
        envelope[name] = {
            "bytes": len(frames[1]), "encode_us": enc / k * 1e6, "decode_us": dec / k * 1e6
        }

    taken = rows_taken_in(min(args.rows, 2000), repeat)

    base = rows[f"struct loop ({ns:,} scaled)"]
    fast = rows["numpy raw"]
    decode_x = fast["decode_rps"] / base["decode_rps"]
    encode_x = fast["encode_rps"] / base["encode_rps"]

    print(f"CoreC wire benchmark: {n:,} sensor-like records "
          f"(struct loop on {ns:,}, scaled per record)")
    print(f"{cpu_model()}, Python {platform.python_version()}, numpy {np.__version__}, "
          f"zstandard {zstandard.__version__} (zstd {'.'.join(map(str, zstandard.ZSTD_VERSION))}), "
          f"best of {repeat}")
    print()
    print(f"{'codec':<30} {'encode rec/s':>14} {'decode rec/s':>14} {'bytes/record':>13}")
    for name, row in rows.items():
        print(f"{name:<30} {row['encode_rps']:>14,.0f} {row['decode_rps']:>14,.0f} "
              f"{row['bytes_per_record']:>13.3f}")
    print()
    print(f"per-channel batches (as sent): zstd-1 {per_channel['zstd-1']:.3f} B/record, "
          f"zstd-3 {per_channel['zstd-3']:.3f} B/record")
    print(f"raw decode vs struct loop: {decode_x:,.0f}x (target >= {TARGET_DECODE_X}x: "
          f"{'met' if decode_x >= TARGET_DECODE_X else 'NOT met'})")
    print(f"raw encode vs struct loop: {encode_x:,.0f}x (target >= {TARGET_ENCODE_X}x: "
          f"{'met' if encode_x >= TARGET_ENCODE_X else 'NOT met'})")
    for name, e in envelope.items():
        print(f"envelope {name}: {e['bytes']} bytes, "
              f"encode {e['encode_us']:.1f} us, decode {e['decode_us']:.1f} us")
    print(f"another owner's rows taken in ({taken['rows']:,} rows of a tick, us a row; bytes a row):")
    for name in ("row maps", "columns", "row maps, the mesh process's decode", "columns, the mesh process's decode",
                 "msgpack.unpackb of the row maps (floor)"):
        t = taken[name]
        print(f"  {name:<42} {t['us_per_row']:6.2f} us  {t['bytes_per_row']:6.1f} B")
    print(json.dumps({
        "bench": "wire",
        "records": n,
        "struct_records": ns,
        "repeat": repeat,
        "codecs": rows,
        "per_channel_bytes_per_record": per_channel,
        "decode_speedup_vs_struct": decode_x,
        "encode_speedup_vs_struct": encode_x,
        "targets": {"decode_x": TARGET_DECODE_X, "encode_x": TARGET_ENCODE_X,
                    "decode_met": decode_x >= TARGET_DECODE_X,
                    "encode_met": encode_x >= TARGET_ENCODE_X},
        "envelope": envelope,
        "rows_taken_in": taken,
        "env": {"python": platform.python_version(), "numpy": np.__version__,
                "zstandard": zstandard.__version__, "msgpack": ".".join(map(str, msgpack.version)),
                "cpu": cpu_model(), "cpus": os.cpu_count()},
    }))
    return 0


def rows_taken_in(n: int, repeat: int) -> dict[str, Any]:
    """Per row: decode, check and keep ``n`` rows another owner sent, as row maps and as
    columns, by a node's engine; and a bare unpack of the row maps' frame."""
    owner = EngineHost("b", block_size=10)
    owner.set_members(["a", "b"])
    ids = np.arange(n * 10 * 4, dtype=np.uint32)  # enough blocks that b owns n of them
    records = np.zeros(len(ids), ENTITY_DTYPE)
    records["id"], records["value"], records["active"] = ids, (ids % 97).astype(np.float32), 1
    owner.ingest(records)
    for _ in range(3):
        owner.tick()
    wire = owner.cluster_rows()[:n]  # rows as the owner made and published them
    maps, columns = [], []
    for msg in wire_messages(owner.tick_no, wire):
        (maps if hasattr(msg, "rows") else columns).append(encode_message(msg, sender="b", seq=1))

    def take(frames_list: list[list[bytes]], columnar: bool) -> None:
        node = EngineHost("a", block_size=10)
        node.set_members(["a", "b"])
        for frames in frames_list:
            _, env, _ = decode_message(frames)
            if columnar:
                node.observe_columns("b", env.msg.columns)
            else:
                node.observe_rows("b", env.msg.rows)
        assert len(node.rows) == len(wire)

    forwarded = frozenset((MsgType.AGGREGATES, MsgType.AGGREGATE_COLUMNS))  # as the mesh process decodes them
    out: dict[str, Any] = {"rows": len(wire)}
    for name, frames_list, fn in (
            ("row maps", maps, lambda: take(maps, False)),
            ("columns", columns, lambda: take(columns, True)),
            ("row maps, the mesh process's decode", maps, lambda: [decode_message(f, skip_body=forwarded) for f in maps]),
            ("columns, the mesh process's decode", columns,
             lambda: [decode_message(f, skip_body=forwarded) for f in columns]),
            ("msgpack.unpackb of the row maps (floor)", maps, lambda: [msgpack.unpackb(f[1]) for f in maps])):
        out[name] = {"us_per_row": best_of(fn, repeat) / len(wire) * 1e6,
                     "bytes_per_row": sum(len(f[1]) for f in frames_list) / len(wire)}
    return out


if __name__ == "__main__":
    raise SystemExit(main())
