"""Storage benchmark: block rows per second into PostgreSQL and SQLite.

    python bench/storage.py [--rows 100000] [--batch 1000] [--baseline-rows 2000] [--pipeline 2] [--dsn DSN]

PostgreSQL (own schema ``corec_bench_<random>``, dropped at the end):

- ``pg copy+upsert``: binary COPY into the staging table, then one upsert of block_state, one
  transaction per batch, one batch after the other (``PostgresSync.write_rows(history=False)``).
- ``pg copy+upsert pipelined``: the same transactions, ``--pipeline`` of them in flight on their
  own connections (``PostgresSync.write_batches``); every commit is still durable.
- ``pg copy+history+upsert`` (and ``pipelined``): the same plus the history insert (what a
  drained tick costs).
- ``pg executemany upsert``: the same upsert with ``executemany``, one transaction per batch.
- ``pg outbox drain``: ``Syncer.flush()`` of an outbox holding the rows (end to end), with the
  default pipeline; ``pg outbox drain serial``: the same with one batch in flight.
- ``pg commit per row``: the baseline, one autocommitted upsert per row, on ``--baseline-rows``.

SQLite (a temporary file):

- ``sqlite upsert``: block_state upserts, one transaction per batch.
- ``sqlite record_tick``: ``LocalStore.record_tick``: state upsert + history + outbox, one transaction.
- ``sqlite commit per row``: the baseline, one committed upsert per row, on ``--baseline-rows``.

Rows cycle over ``--blocks`` blocks with a rising tick, so after the first pass every upsert
updates an existing row (the steady state of a node). Prints a table, then one JSON line
``{"bench": "storage", ...}``. Figures only: nothing here passes or fails on time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # works without installing

import asyncpg  # noqa: E402

from corec_node.storage import LocalStore, PostgresSync, Syncer  # noqa: E402
from corec_node.storage.local import _UPSERT_STATE  # noqa: E402
from corec_node.storage.postgres import PIPELINE

TARGET_PG = 100_000  # upserted rows/s into PostgreSQL
TARGET_SQLITE = 200_000  # rows/s into SQLite
DEFAULT_DSN = os.environ.get("COREC_BENCH_PG_DSN") or os.environ.get(
    "COREC_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")


def make_batches(rows: int, batch: int, blocks: int, t0: float) -> list[list[tuple[Any, ...]]]:
    """13-field rows (ts last) in batches; a batch is one tick of ``batch`` consecutive blocks."""
    out = []
    per_pass = max(1, blocks // batch)
    for k in range(rows // batch):
        tick = k // per_pass
        first = (k % per_pass) * batch
        ts = t0 + tick
        out.append([
            ((1 << 32) | (first + i), 1, "bench-node", tick, 1000, 990,
             20.0 + (i % 17) * 0.5, 1.25, 40.5, 2.0 + tick * 0.01, 0.01, 0.875, ts)
            for i in range(batch)
        ])
    return out


async def timed(label: str, rows: int, coro_fn: Any, results: dict[str, dict[str, float]], scaled: bool = False) -> None:
    t = time.perf_counter()
    await coro_fn()
    dt = time.perf_counter() - t
    results[label] = {"rows": rows, "seconds": round(dt, 4), "rows_per_s": round(rows / dt), "scaled": scaled}


async def bench_pg(dsn: str, batches: list[list[tuple[Any, ...]]], baseline: list[tuple[Any, ...]],
                   results: dict[str, dict[str, float]], tmp: Path, pipeline: int) -> None:
    schema = f"corec_bench_{uuid.uuid4().hex[:10]}"
    sync = await PostgresSync.connect(dsn, schema=schema, max_size=max(4, pipeline + 1))
    s = f'"{schema}"'
    n = sum(len(b) for b in batches)
    try:
        async def copy_upsert() -> None:
            for b in batches:
                await sync.write_rows(b, history=False)

        async def copy_history_upsert() -> None:
            for b in batches:
                await sync.write_rows(b, history=True)

        async def copy_upsert_pipelined() -> None:
            await sync.write_batches(batches, history=False, pipeline=pipeline)

        async def copy_history_upsert_pipelined() -> None:
            await sync.write_batches(batches, history=True, pipeline=pipeline)

        async def executemany() -> None:
            for b in batches:
                await sync.upsert_state_executemany(b)

        async def per_row() -> None:
            sql = sync._sql["state_values"]
            from corec_node.storage.rows import to_datetime
            async with sync.pool.acquire() as conn:
                for r in baseline:
                    await conn.execute(sql, *r[:12], to_datetime(r[12]))  # autocommit: one commit each

        async def reset() -> None:
            async with sync.pool.acquire() as conn:
                await conn.execute(f"TRUNCATE {s}.block_state, {s}.block_history")
                await conn.execute(f"VACUUM ANALYZE {s}.block_state")

        for label, fn in (("pg copy+upsert", copy_upsert), ("pg copy+upsert pipelined", copy_upsert_pipelined),
                          ("pg executemany upsert", executemany),
                          ("pg copy+history+upsert", copy_history_upsert),
                          ("pg copy+history+upsert pipelined", copy_history_upsert_pipelined)):
            await reset()
            await timed(label, n, fn, results)
        await reset()
        await timed("pg commit per row", len(baseline), per_row, results, scaled=True)

        for label, in_flight in (("pg outbox drain", PIPELINE), ("pg outbox drain serial", 1)):
            await reset()
            store = await LocalStore.open(tmp / f"drain{in_flight}.db", node="bench-node")
            for b in batches:
                await store.record_tick([r[:12] for r in b], b[0][12])
            syncer = Syncer(store, dsn, schema=schema, pipeline=in_flight)
            await timed(label, n, syncer.flush, results)
            await syncer.stop(flush=False)
            await store.close()
    finally:
        await sync.close()
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(f"DROP SCHEMA IF EXISTS {s} CASCADE")
        finally:
            await conn.close()


async def bench_sqlite(batches: list[list[tuple[Any, ...]]], baseline: list[tuple[Any, ...]],
                       results: dict[str, dict[str, float]], tmp: Path) -> None:
    n = sum(len(b) for b in batches)
    store = await LocalStore.open(tmp / "upsert.db", node="bench-node", outbox=False)

    async def upsert() -> None:
        for b in batches:
            sql = _UPSERT_STATE.format(ts=repr(b[0][12]))
            async with store._tx() as conn:
                await conn.executemany(sql, [r[:12] for r in b])

    await timed("sqlite upsert", n, upsert, results)
    await store.close()

    store = await LocalStore.open(tmp / "tick.db", node="bench-node")
    plain = [([r[:12] for r in b], b[0][12]) for b in batches]

    async def record_tick() -> None:
        for rows, ts in plain:
            await store.record_tick(rows, ts)

    await timed("sqlite record_tick", n, record_tick, results)
    await store.close()

    store = await LocalStore.open(tmp / "baseline.db", node="bench-node", outbox=False)

    async def per_row() -> None:
        for r in baseline:
            async with store._tx() as conn:
                await conn.execute(_UPSERT_STATE.format(ts=repr(r[12])), r[:12])

    await timed("sqlite commit per row", len(baseline), per_row, results, scaled=True)
    await store.close()


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=1_000)
    ap.add_argument("--blocks", type=int, default=10_000)
    ap.add_argument("--baseline-rows", type=int, default=2_000)
    ap.add_argument("--pipeline", type=int, default=PIPELINE, help="transactions in flight for the pipelined lines")
    ap.add_argument("--dsn", default=DEFAULT_DSN)
    ap.add_argument("--no-pg", action="store_true", help="SQLite only")
    args = ap.parse_args()

    t0 = time.time() - 3600
    batches = make_batches(args.rows, args.batch, args.blocks, t0)
    baseline = [r for b in make_batches(args.baseline_rows, min(args.batch, args.baseline_rows), args.blocks, t0)
                for r in b]
    results: dict[str, dict[str, float]] = {}
    pg_error = None
    with tempfile.TemporaryDirectory(prefix="corec-bench-") as d:
        tmp = Path(d)
        await bench_sqlite(batches, baseline, results, tmp)
        if not args.no_pg:
            try:
                await bench_pg(args.dsn, batches, baseline, results, tmp, args.pipeline)
            except (OSError, asyncpg.PostgresError) as exc:
                pg_error = f"{type(exc).__name__}: {exc}"

    print(f"{'path':<34} {'rows':>8} {'seconds':>9} {'rows/s':>10}  note")
    for label, r in results.items():
        note = "baseline, scaled from a subset" if r["scaled"] else ""
        if label in ("pg copy+upsert", "pg copy+upsert pipelined"):
            note = f"target >= {TARGET_PG:,}: {'met' if r['rows_per_s'] >= TARGET_PG else 'NOT met'}"
            if label.endswith("pipelined"):
                note += f" ({args.pipeline} in flight)"
        if label == "sqlite upsert":
            note = f"target >= {TARGET_SQLITE:,}: {'met' if r['rows_per_s'] >= TARGET_SQLITE else 'NOT met'}"
        print(f"{label:<34} {r['rows']:>8} {r['seconds']:>9.3f} {r['rows_per_s']:>10,}  {note}")
    if pg_error:
        print(f"PostgreSQL skipped: {pg_error}")

    def speedup(fast: str, slow: str) -> float | None:
        if fast in results and slow in results:
            return round(results[fast]["rows_per_s"] / results[slow]["rows_per_s"], 1)
        return None

    summary = {
        "bench": "storage",
        "rows": args.rows,
        "batch": args.batch,
        "blocks": args.blocks,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "results": {k: v["rows_per_s"] for k, v in results.items()},
        "pipeline": args.pipeline,
        "pg_copy_vs_per_row_x": speedup("pg copy+upsert", "pg commit per row"),
        "pg_pipelined_vs_serial_x": speedup("pg copy+upsert pipelined", "pg copy+upsert"),
        "sqlite_batch_vs_per_row_x": speedup("sqlite upsert", "sqlite commit per row"),
        "pg_error": pg_error,
    }
    print(json.dumps(summary, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
