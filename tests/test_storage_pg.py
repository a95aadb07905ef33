"""PostgreSQL sync against a real server: values, replays, outages, crashes, fencing, migrations.

Each test gets its own schema (see pgutil); nothing is mocked.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import asyncpg
import pytest
from pgutil import eventually  # the pg, pg_dsn and pg_schema fixtures come through conftest
from test_storage_local import rows_for

from corec_node.storage import (
    LocalStore,
    PluginStore,
    PostgresSync,
    SchemaTooNewError,
    StaleTermError,
    Syncer,
)
from corec_node.storage.migrations import CORE_POSTGRES, migrate_postgres
from corec_node.testing.cluster import free_port
from corec_node.wire.messages import MemberState, MemberStatus

COLS = ("block", "channel", "owner", "tick", "count", "active", "mean", "min", "max", "std", "error_rate", "fitness")
NOW = time.time()


def bad_dsn(port: int) -> str:
    return f"postgresql://postgres@127.0.0.1:{port}/postgres"


def with_epoch(rows: list[dict], epoch: int) -> list[dict]:
    """Engine rows stamped with their owner's placement epoch, as EngineHost.tick does."""
    return [{**r, "epoch": epoch} for r in rows]


@pytest.fixture
async def store(tmp_path):
    s = await LocalStore.open(tmp_path / "corec.db", node="a")
    try:
        yield s
    finally:
        await s.close()


async def pg_history(pg, schema: str) -> list[asyncpg.Record]:
    return await pg.fetch(f'SELECT * FROM "{schema}".block_history ORDER BY block, owner, tick')


async def pg_state(pg, schema: str) -> dict[int, asyncpg.Record]:
    return {r["block"]: r for r in await pg.fetch(f'SELECT * FROM "{schema}".block_state')}


async def assert_pg_matches_local(pg, schema: str, store: LocalStore, *, history: bool = True) -> None:
    """Every local block_state row (and, with ``history``, every history row) is in PostgreSQL, equal."""
    local = {r["block"]: r for r in await store.block_state()}
    remote = await pg_state(pg, schema)
    assert remote.keys() == local.keys()
    for b, lr in local.items():
        rr = remote[b]
        assert tuple(rr[c] for c in COLS) == tuple(lr[c] for c in COLS), b
        assert rr["updated_at"].timestamp() == pytest.approx(lr["ts"], abs=1e-6)
    if history:
        async with store._lock:
            async with store._conn.execute("SELECT block, owner, tick FROM block_history") as cur:
                keys = sorted(await cur.fetchall())
        remote_keys = [(r["block"], r["owner"], r["tick"]) for r in await pg_history(pg, schema)]
        assert remote_keys == keys  # none missing, none twice


# -- values -----------------------------------------------------------------------------------------


async def test_rows_in_postgres_equal_what_was_recorded(store, pg_dsn, pg_schema, pg):
    rows = rows_for(7, range(50), nan_every=5)
    await store.record_tick(rows, NOW)
    await store.record_tick(rows_for(8, range(50), nan_every=5), NOW + 1)
    syncer = Syncer(store, pg_dsn, schema=pg_schema)
    assert await syncer.flush() == 100
    hist = {(r["block"], r["tick"]): r for r in await pg_history(pg, pg_schema)}
    assert len(hist) == 100
    for r in rows:
        got = hist[(r["block"], 7)]
        for c in COLS:
            v = r[c]
            if isinstance(v, float) and math.isnan(v):
                assert got[c] is None, c  # NaN -> NULL
            else:
                assert got[c] == v, c
        assert got["ts"].timestamp() == pytest.approx(NOW, abs=1e-6)
    await assert_pg_matches_local(pg, pg_schema, store)
    assert all(r["tick"] == 8 for r in (await pg_state(pg, pg_schema)).values())
    st = syncer.status()
    assert st["outbox"] == 0 and st["drained_total"] == 100 and st["lag_seconds"] == 0.0
    await syncer.stop()


async def test_alerts_audit_members_reach_postgres(tmp_path, pg_dsn, pg_schema, pg):
    a = await LocalStore.open(tmp_path / "a.db", node="a")
    b = await LocalStore.open(tmp_path / "b.db", node="b")
    uid = await a.add_alert("hot", "too hot", severity="error", block=5, details={"t": 91.5})
    await a.add_audit("repair", "block:5", "error rate 0.3", details={"entities": 12})
    # two views of the membership: PostgreSQL keeps the highest (inc, status rank) per member
    await a.save_members([MemberState("a", "h:1", "h:2", 1, MemberStatus.ALIVE),
                          MemberState("c", "h:5", "h:6", 2, MemberStatus.SUSPECT)])
    await b.save_members([MemberState("a", "h:1", "h:2", 1, MemberStatus.ALIVE),
                          MemberState("c", "h:5", "h:6", 2, MemberStatus.ALIVE),
                          MemberState("d", "h:7", "h:8", 0, MemberStatus.DEAD)])
    for st in (a, b):
        syncer = Syncer(st, pg_dsn, schema=pg_schema)
        await syncer.flush()
        await syncer.stop()
    s = f'"{pg_schema}"'
    alert = await pg.fetchrow(f"SELECT * FROM {s}.alerts")
    assert alert["uid"].hex == uid and alert["node"] == "a" and alert["block"] == 5
    assert alert["severity"] == "error" and '"t": 91.5' in alert["details"]
    audit = await pg.fetchrow(f"SELECT * FROM {s}.audit")
    assert audit["kind"] == "repair" and audit["term"] is None
    members = {r["name"]: (r["inc"], r["status"]) for r in await pg.fetch(f"SELECT * FROM {s}.members")}
    assert members == {"a": (1, "alive"), "c": (2, "suspect"), "d": (0, "dead")}
    await a.close()
    await b.close()


# -- replay -----------------------------------------------------------------------------------------


async def test_replaying_the_outbox_writes_nothing_twice(store, pg_dsn, pg_schema, pg):
    for t in range(3):
        await store.record_tick(rows_for(t, range(40)), NOW + t)
    await store.add_alert("hot", "x")
    await store.add_audit("fusion", "channel:1", "weak blocks", details={})
    await store.record_nucleus(2, "a")
    items = await store.outbox_batch(10_000)
    sync = await PostgresSync.connect(pg_dsn, schema=pg_schema)
    first = await sync.apply(items)
    assert first.history_inserted == 120 and first.state_updated == 40 and not first.refused
    second = await sync.apply(items)  # a crash before outbox_delete: the whole batch again
    assert second.history_inserted == 0 and second.state_updated == 0 and not second.refused
    s = f'"{pg_schema}"'
    assert await pg.fetchval(f"SELECT count(*) FROM {s}.block_history") == 120
    assert await pg.fetchval(f"SELECT count(*) FROM {s}.alerts") == 1
    assert await pg.fetchval(f"SELECT count(*) FROM {s}.audit") == 1
    # an OLD entry replayed after newer state: block_state does not go back
    await store.outbox_delete(i.id for i in items)
    await store.record_tick(rows_for(9, range(40)), NOW + 9)
    newer = await store.outbox_batch(10_000)
    await sync.apply(newer)
    third = await sync.apply(items)
    assert third.state_updated == 0
    assert {r["tick"] for r in (await pg_state(pg, pg_schema)).values()} == {9}
    await sync.close()


async def test_write_batches_in_flight_commit_in_any_order(pg_dsn, pg_schema, pg):
    sync = await PostgresSync.connect(pg_dsn, schema=pg_schema)
    # 12 batches over the same 30 blocks, newest last: whatever order the commits land in,
    # block_state ends at the newest tick and history holds every row once
    batches = [[(*tuple(r[c] for c in COLS), NOW + t) for r in rows_for(t, range(30))] for t in range(12)]
    result = await sync.write_batches(batches, history=True, pipeline=4)
    assert result.rows == 360 and result.history_inserted == 360
    again = await sync.write_batches(batches[::-1], history=True, pipeline=4)  # a replay, any order
    assert again.history_inserted == 0 and again.state_updated == 0
    assert {r["tick"] for r in (await pg_state(pg, pg_schema)).values()} == {11}
    assert len(await pg_history(pg, pg_schema)) == 360
    await sync.close()


async def test_pipelined_drain_loses_nothing_duplicates_nothing(tmp_path, pg_dsn, pg_schema, pg):
    # two nodes drain at once into one schema, several batches in flight each, over the same
    # blocks (a block that moved owner): no deadlock, every row once, the newest state wins
    a = await LocalStore.open(tmp_path / "a.db", node="a")
    b = await LocalStore.open(tmp_path / "b.db", node="b")
    syncers = [Syncer(st, pg_dsn, schema=pg_schema, batch_rows=160, pipeline=3) for st in (a, b)]
    try:
        for t in range(30):
            await a.record_tick(with_epoch(rows_for(t, range(80), owner="a"), 2), NOW + t)
            await b.record_tick(with_epoch(rows_for(t, range(40, 120), owner="b"), 1), NOW + t + 0.5)
            if t % 7 == 3:
                await a.add_alert("hot", f"alert {t}")
        await a.record_nucleus(4, "a")  # fenced, mid-outbox: drained alone, in outbox order
        await a.record_placement(4, {1: "a"})
        for t in range(30, 40):
            await a.record_tick(with_epoch(rows_for(t, range(80), owner="a"), 2), NOW + t)
        await a.record_nucleus(5, "a")
        await a.record_placement(5, {1: "a", 2: "a"})
        await a.add_audit("placement", "block:2", "moved to a", term=5)
        drained = await asyncio.gather(*(s.flush() for s in syncers))
        assert drained == [40 * 80 + 4 + 5, 30 * 80]  # block rows, plus one per other entry
        assert a.outbox_rows == 0 and b.outbox_rows == 0
        s = f'"{pg_schema}"'
        hist = [(r["block"], r["owner"], r["tick"]) for r in await pg_history(pg, pg_schema)]
        assert len(hist) == len(set(hist)) == 40 * 80 + 30 * 80
        state = await pg_state(pg, pg_schema)
        assert len(state) == 120
        for block, row in state.items():
            n = block & 0xFFFF_FFFF
            # 0..39: only a; 40..79: both, a's placement epoch 2 is above b's 1; 80..: only b
            assert (row["owner"], row["tick"]) == (("b", 29) if n >= 80 else ("a", 39)), n
        assert await pg.fetchval(f"SELECT count(*) FROM {s}.alerts") == 4
        assert await pg.fetchval(f"SELECT count(*) FROM {s}.audit") == 1
        assert tuple(await pg.fetchrow(f"SELECT term, leader FROM {s}.nucleus")) == (5, "a")
        placed = sorted(tuple(r) for r in await pg.fetch(f"SELECT block, owner, term FROM {s}.placement"))
        assert placed == [(1, "a", 5), (2, "a", 5)]
        assert [x.status()["refused_total"] for x in syncers] == [0, 0]
    finally:
        for x in syncers:
            await x.stop(flush=False)
        await a.close()
        await b.close()


async def test_pipelined_drain_keeps_fenced_entries_in_order(store, pg_dsn, pg_schema, pg):
    # every entry its own batch, many in flight: a placement of term t landing after the leader
    # of term t + 1 would be refused, so none refused means they reached PostgreSQL in order
    for term in range(1, 13):
        await store.record_tick(rows_for(term, range(20)), NOW + term)
        await store.record_nucleus(term, "a")
        await store.record_placement(term, {term: "a"})
        await store.add_audit("placement", f"block:{term}", "placed", term=term)
    syncer = Syncer(store, pg_dsn, schema=pg_schema, batch_rows=1, pipeline=8)
    await syncer.flush()
    assert syncer.status()["refused_total"] == 0 and store.outbox_rows == 0
    s = f'"{pg_schema}"'
    assert tuple(await pg.fetchrow(f"SELECT term, leader FROM {s}.nucleus")) == (12, "a")
    assert await pg.fetchval(f"SELECT count(*) FROM {s}.placement") == 12
    assert await pg.fetchval(f"SELECT count(*) FROM {s}.audit") == 12
    await assert_pg_matches_local(pg, pg_schema, store)
    await syncer.stop()


# -- which row of a block is the latest: placement epochs and ticks, never clocks ---------------------

HOUR = 3600.0


async def test_block_state_follows_placement_epochs_not_clocks(tmp_path, pg_dsn, pg_schema, pg):
    # c's clock runs an hour ahead; it owned blocks 0..9 at epoch 5 and died. a took them over
    # at epoch 6 with a true clock: a's rows win, and nothing c left behind brings c back
    c = await LocalStore.open(tmp_path / "c.db", node="c")
    a = await LocalStore.open(tmp_path / "a.db", node="a")
    sync = await PostgresSync.connect(pg_dsn, schema=pg_schema)
    try:
        await c.record_tick(with_epoch(rows_for(37, range(10), owner="c"), 5), NOW + HOUR)
        c_items = await c.outbox_batch(10_000)
        await sync.apply(c_items)
        state = await pg_state(pg, pg_schema)
        assert {(r["owner"], r["tick"], r["epoch"]) for r in state.values()} == {("c", 37, 5)}
        assert all(r["updated_at"].timestamp() == pytest.approx(NOW + HOUR) for r in state.values())

        await a.record_tick(with_epoch(rows_for(3, range(10), owner="a"), 6), NOW)
        assert (await sync.apply(await a.outbox_batch(10_000))).state_updated == 10
        await c.record_tick(with_epoch(rows_for(38, range(10), owner="c"), 5), NOW + HOUR + 1)
        late = await c.outbox_batch(10_000)  # c's outbox, drained late (c came back, or a replay)
        assert (await sync.apply(late)).state_updated == 0
        assert (await sync.apply(c_items)).state_updated == 0
        await sync.write_rows([tuple(r[k] for k in COLS) + (NOW + 2 * HOUR,)
                               for r in rows_for(99, range(10), owner="c")], history=False)  # no epoch: 0
        state = await pg_state(pg, pg_schema)
        assert {(r["owner"], r["tick"], r["epoch"]) for r in state.values()} == {("a", 3, 6)}
        assert all(r["updated_at"].timestamp() == pytest.approx(NOW) for r in state.values())

        # the same owner moves on by its ticks alone; its stored epoch keeps the highest it wrote
        await sync.write_rows([(*(r[k] for k in COLS), NOW - HOUR, 1) for r in rows_for(4, range(10), owner="a")])
        state = await pg_state(pg, pg_schema)
        assert {(r["owner"], r["tick"], r["epoch"]) for r in state.values()} == {("a", 4, 6)}
        # another owner at the same epoch: the row that arrives last is the one still written
        await sync.write_rows([(*(r[k] for k in COLS), NOW - HOUR, 6) for r in rows_for(1, range(5), owner="b")])
        state = await pg_state(pg, pg_schema)
        assert sorted({(r["owner"], r["tick"], r["epoch"]) for r in state.values()}) == [("a", 4, 6), ("b", 1, 6)]
        # history keeps every row, whoever won the state
        assert len(await pg_history(pg, pg_schema)) == 4 * 10 + 5  # c 37, 38; a 3, 4; b 1
    finally:
        await sync.close()
        await a.close()
        await c.close()


async def test_block_state_epoch_migration_from_version_1(pg_dsn, pg_schema, pg):
    # a schema written before rows carried epochs: its rows get epoch 0, which the first row
    # of another owner passes; the migration can run again without harm
    conn = await asyncpg.connect(pg_dsn)
    try:
        assert await migrate_postgres(conn, pg_schema, CORE_POSTGRES[:1], database="test") == 1
    finally:
        await conn.close()
    s = f'"{pg_schema}"'
    await pg.execute(f"INSERT INTO {s}.block_state (block, channel, owner, tick, count, active, updated_at) "
                     "VALUES (7, 0, 'old', 500, 1, 1, now() + interval '1 hour')")
    sync = await PostgresSync.connect(pg_dsn, schema=pg_schema)
    try:
        assert await pg.fetchval(f"SELECT max(version) FROM {s}.schema_migrations") == len(CORE_POSTGRES)
        assert tuple(await pg.fetchrow(f"SELECT owner, tick, epoch FROM {s}.block_state")) == ("old", 500, 0)
        await pg.execute(CORE_POSTGRES[1].sql.replace("{s}", s))  # idempotent
        assert await sync.max_epoch() == 0
        await sync.write_rows([(7, 0, "new", 1, 1, 1, 1.0, 1.0, 1.0, 0.0, 0.0, 1.0, NOW, 1)])
        assert tuple(await pg.fetchrow(f"SELECT owner, tick, epoch FROM {s}.block_state")) == ("new", 1, 1)
        assert await sync.max_epoch() == 1
    finally:
        await sync.close()


async def test_syncer_hands_the_highest_epoch_in_postgres_to_the_node(store, pg_dsn, pg_schema, pg):
    # a node alone in a new cluster must still outrank rows left by nodes that are gone
    sync = await PostgresSync.connect(pg_dsn, schema=pg_schema)
    await sync.write_rows([(*(r[k] for k in COLS), NOW, 41) for r in rows_for(9, range(3), owner="gone")])
    await sync.close()
    floors: list[int] = []
    syncer = Syncer(store, pg_dsn, schema=pg_schema, on_epoch=floors.append)
    await syncer.connect()
    assert floors == [41]
    await store.record_tick(with_epoch(rows_for(1, range(3)), 41), NOW - HOUR)
    await syncer.flush()
    assert {(r["owner"], r["epoch"]) for r in (await pg_state(pg, pg_schema)).values()} == {("a", 41)}
    await syncer.stop()


# -- outage -----------------------------------------------------------------------------------------


async def test_postgres_down_then_back_loses_nothing(store, pg_dsn, pg_schema, pg):
    port = free_port()  # nothing listens there: connection refused
    syncer = Syncer(store, bad_dsn(port), schema=pg_schema, interval=0.05, max_backoff=0.2, connect_timeout=1.0)
    syncer.start()
    for t in range(30):
        await store.record_tick(rows_for(t, range(64)), NOW + t)
        await asyncio.sleep(0.005)
    await eventually(lambda: syncer.status()["last_error"], message="the syncer notices the outage")
    st = syncer.status()
    assert not st["connected"] and st["outbox"] == 30 * 64 and st["state"] == "backoff"
    assert st["lag_seconds"] > 0 and "ConnectionRefused" in st["last_error"]
    # a server that accepts and never answers (slow, hung): a timeout, still no loss
    accepted: list[asyncio.StreamWriter] = []
    hung = await asyncio.start_server(lambda r, w: accepted.append(w), "127.0.0.1", 0)
    hung_port = hung.sockets[0].getsockname()[1]
    syncer.set_dsn(bad_dsn(hung_port))
    syncer.connect_timeout = 0.3
    await eventually(lambda: "Timeout" in (syncer.status()["last_error"] or ""), message="a timeout is reported")
    await store.record_tick(rows_for(30, range(64)), NOW + 30)
    hung.close()
    for w in accepted:
        w.close()
    # back: the outbox drains, everything arrives (a loaded machine may take more than the
    # hung server's 0.3 s to connect; the error clears at the end of the pass that drained)
    syncer.connect_timeout = 5.0
    syncer.set_dsn(pg_dsn)
    await eventually(lambda: syncer.status()["outbox"] == 0 and syncer.status()["last_error"] is None, timeout=20,
                     message="the outbox drains")
    st = syncer.status()
    assert st["connected"] and st["last_error"] is None and st["drained_total"] == 31 * 64 and st["dropped_total"] == 0
    await syncer.stop()
    await assert_pg_matches_local(pg, pg_schema, store)


async def test_bounded_outbox_during_outage_keeps_latest_state(store, pg_dsn, pg_schema, pg):
    syncer = Syncer(store, bad_dsn(free_port()), schema=pg_schema, interval=0.02, max_backoff=0.05,
                    outbox_max_rows=500)
    syncer.start()
    for t in range(40):
        await store.record_tick(rows_for(t, range(50)), NOW + t)
        await asyncio.sleep(0.003)
    await eventually(lambda: syncer.status()["outbox"] <= 500, message="the outbox is trimmed")
    dropped = syncer.status()["dropped_total"]
    assert dropped > 0
    syncer.set_dsn(pg_dsn)
    await eventually(lambda: syncer.status()["outbox"] == 0, timeout=20)
    await syncer.stop()
    # every block has its latest state; history lost only its oldest ticks, and says how many
    await assert_pg_matches_local(pg, pg_schema, store, history=False)
    assert {r["tick"] for r in (await pg_state(pg, pg_schema)).values()} == {39}
    ticks = {r["tick"] for r in await pg_history(pg, pg_schema)}
    assert 39 in ticks and 0 not in ticks
    assert await pg.fetchval(f'SELECT count(*) FROM "{pg_schema}".block_history') == 40 * 50 - dropped


# -- crash ------------------------------------------------------------------------------------------

CHILD = textwrap.dedent("""
    import asyncio, sys
    from corec_node.storage import LocalStore, Syncer

    async def main(db, dsn, schema, pause_at):
        store = await LocalStore.open(db, node="a")
        syncer = Syncer(store, dsn, schema=schema, batch_rows=1000)
        delete = store.outbox_delete
        n = 0

        async def delete_after_commit(ids):
            nonlocal n
            n += 1
            print(f"committed {n}", flush=True)  # PostgreSQL has committed this batch
            if n == pause_at:
                await asyncio.sleep(60)  # killed here: committed in PostgreSQL, still in the outbox
            return await delete(ids)

        store.outbox_delete = delete_after_commit
        await syncer.flush()
        print("done", flush=True)

    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
""")


def run_and_kill(script: Path, db: Path, dsn: str, schema: str, pause_at: int, kill_on: str) -> None:
    proc = subprocess.Popen([sys.executable, str(script), str(db), dsn, schema, str(pause_at)],
                            stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        for line in proc.stdout:
            if line.strip() == kill_on:
                break
            assert line.strip() != "done", "the drain finished before it could be killed"
            assert time.monotonic() < deadline
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()


async def test_sigkill_during_drain_loses_nothing_duplicates_nothing(tmp_path, pg_dsn, pg_schema, pg):
    db = tmp_path / "corec.db"
    store = await LocalStore.open(db, node="a")
    for t in range(40):
        await store.record_tick(rows_for(t, range(500)), NOW + t)  # 20,000 history rows
    for i in range(20):
        await store.add_alert("hot", f"alert {i}")
    total_rows = store.outbox_rows
    await store.close()
    script = tmp_path / "drain.py"
    script.write_text(CHILD)
    # 1: killed while draining, at whatever point the next batch has reached
    await asyncio.to_thread(run_and_kill, script, db, pg_dsn, pg_schema, 0, "committed 3")
    # 2: killed after a PostgreSQL commit and before the outbox delete: that batch is replayed
    await asyncio.to_thread(run_and_kill, script, db, pg_dsn, pg_schema, 2, "committed 2")
    s = f'"{pg_schema}"'
    in_pg = await pg.fetchval(f"SELECT count(*) FROM {s}.block_history")
    store = await LocalStore.open(db, node="a")
    assert 0 < in_pg < 40 * 500 and store.outbox_rows < total_rows
    waiting = sum(i.rows for i in await store.outbox_batch(10**9) if i.kind == "history")
    assert in_pg + waiting > 40 * 500  # the second kill left a committed batch in the outbox: it replays
    syncer = Syncer(store, pg_dsn, schema=pg_schema)
    await syncer.flush()
    await syncer.stop()
    assert store.outbox_rows == 0
    assert await pg.fetchval(f"SELECT count(*) FROM {s}.block_history") == 40 * 500
    assert await pg.fetchval(f"SELECT count(*) FROM {s}.alerts") == 20
    await assert_pg_matches_local(pg, pg_schema, store)
    await store.close()


# -- fencing ----------------------------------------------------------------------------------------


async def test_stale_term_is_refused(tmp_path, pg_dsn, pg_schema, pg):
    sync = await PostgresSync.connect(pg_dsn, schema=pg_schema)
    await sync.record_nucleus(5, "b")
    await sync.record_nucleus(5, "b")  # the same record again: fine
    for call in (sync.record_nucleus(4, "a"), sync.record_nucleus(5, "c"),
                 sync.record_audit("placement", "block:1", "late", term=4),
                 sync.record_placement(4, {1: "a"})):
        with pytest.raises(StaleTermError):
            await call
    assert await sync.nucleus() == (5, "b")
    await sync.record_placement(5, {1: "b"})
    # a deposed nucleus wakes late: its outbox holds term-3 decisions
    old = await LocalStore.open(tmp_path / "old.db", node="a")
    await old.record_nucleus(3, "a")
    await old.record_placement(3, {1: "a", 2: "a"})
    await old.add_audit("placement", "block:1", "moved to a", term=3)
    await old.add_alert("hot", "not fenced: still arrives")
    syncer = Syncer(old, pg_dsn, schema=pg_schema)
    await syncer.flush()
    st = syncer.status()
    assert st["refused_total"] == 3 and st["outbox"] == 0  # refused once, not retried
    s = f'"{pg_schema}"'
    assert await sync.nucleus() == (5, "b")
    assert [tuple(r) for r in await pg.fetch(f"SELECT block, owner, term FROM {s}.placement")] == [(1, "b", 5)]
    assert await pg.fetchval(f"SELECT count(*) FROM {s}.audit") == 0
    assert await pg.fetchval(f"SELECT count(*) FROM {s}.alerts") == 1
    # a newer term goes through
    await sync.record_nucleus(6, "c")
    await sync.record_audit("leader", "c", "elected", term=6)
    assert await sync.nucleus() == (6, "c")
    await syncer.stop()
    await sync.close()
    await old.close()


# -- migrations and partitions --------------------------------------------------------------------


async def test_postgres_migrations_from_empty_rerun_and_too_new(pg_dsn, pg_schema, pg):
    s = f'"{pg_schema}"'
    # two nodes starting at once migrate once
    a, b = await asyncio.gather(PostgresSync.connect(pg_dsn, schema=pg_schema),
                                PostgresSync.connect(pg_dsn, schema=pg_schema))
    await a.close()
    await b.close()
    rows = await pg.fetch(f"SELECT version FROM {s}.schema_migrations ORDER BY version")
    assert [r["version"] for r in rows] == list(range(1, len(CORE_POSTGRES) + 1))
    tables = {r["tablename"] for r in await pg.fetch("SELECT tablename FROM pg_tables WHERE schemaname = $1", pg_schema)}
    assert {"block_state", "members", "alerts", "audit", "nucleus", "placement", "schema_migrations"} <= tables
    assert await pg.fetchval("SELECT relkind::text FROM pg_class WHERE oid = to_regclass($1)", f"{s}.block_history") == "p"
    c = await PostgresSync.connect(pg_dsn, schema=pg_schema)  # rerun: nothing applied twice
    await c.close()
    assert await pg.fetchval(f"SELECT count(*) FROM {s}.schema_migrations") == len(CORE_POSTGRES)
    await pg.execute(f"INSERT INTO {s}.schema_migrations (version, description) VALUES (99, 'from the future')")
    with pytest.raises(SchemaTooNewError) as err:
        await PostgresSync.connect(pg_dsn, schema=pg_schema)
    msg = str(err.value)
    assert pg_schema in msg and "99" in msg and str(len(CORE_POSTGRES)) in msg and "PostgreSQL" in msg


async def test_views_name_blocks_as_the_cli_does_and_every_column_is_described(tmp_path, pg_dsn, pg_schema, pg):
    a = await LocalStore.open(tmp_path / "a.db", node="a")
    block = 3 << 32 | 17
    await a.record_tick([{**dict(zip(COLS, (block, 3, "a", 9, 4, 3, 2.5, 1.0, 4.0, 1.1, 0.25, 0.6))), "epoch": 2}], NOW)
    await a.add_alert("hot", "too hot", severity="warning", block=block)
    await a.add_alert("cold", "no block")
    syncer = Syncer(a, pg_dsn, schema=pg_schema)
    await syncer.flush()
    await syncer.stop()
    await a.close()
    s = f'"{pg_schema}"'
    row = await pg.fetchrow(f"SELECT channel, block_index, name, owner, epoch, mean FROM {s}.blocks")
    assert tuple(row) == (3, 17, "3:17", "a", 2, 2.5)
    row = await pg.fetchrow(f"SELECT channel, block_index, name, tick FROM {s}.history")
    assert tuple(row) == (3, 17, "3:17", 9)
    alerts = {r["kind"]: tuple(r)[1:] for r in await pg.fetch(f"SELECT kind, channel, block_index, name FROM {s}.block_alerts")}
    assert alerts == {"hot": (3, 17, "3:17"), "cold": (None, None, None)}
    # \d+ shows a description of every table, view and column a user reads
    relations = await pg.fetch(
        "SELECT c.oid, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = $1 AND c.relkind IN ('r', 'p', 'v') AND NOT c.relispartition "
        "AND c.relname <> 'schema_migrations'", pg_schema)
    assert {r["relname"] for r in relations} >= {"blocks", "history", "block_alerts", "block_state", "block_history"}
    undescribed = []
    for rel in relations:
        if await pg.fetchval("SELECT obj_description($1, 'pg_class')", rel["oid"]) is None:
            undescribed.append(rel["relname"])
        for col in await pg.fetch("SELECT attnum, attname FROM pg_attribute WHERE attrelid = $1 AND attnum > 0 "
                                  "AND NOT attisdropped", rel["oid"]):
            if await pg.fetchval("SELECT col_description($1, $2)", rel["oid"], col["attnum"]) is None:
                undescribed.append(f"{rel['relname']}.{col['attname']}")
    assert undescribed == []


async def test_syncer_refuses_a_too_new_schema(store, pg_dsn, pg_schema, pg):
    await (await PostgresSync.connect(pg_dsn, schema=pg_schema)).close()
    await pg.execute(f'INSERT INTO "{pg_schema}".schema_migrations (version, description) VALUES (99, \'future\')')
    await store.record_tick(rows_for(1, range(3)), NOW)
    syncer = Syncer(store, pg_dsn, schema=pg_schema, interval=0.02)
    with pytest.raises(SchemaTooNewError):
        await syncer.connect()
    syncer.start()
    await eventually(lambda: syncer.status()["state"] == "failed")
    assert "99" in syncer.status()["last_error"] and store.outbox_rows == 3
    await syncer.stop()


async def test_history_partitions_ahead_and_on_demand(store, pg_dsn, pg_schema, pg):
    sync = await PostgresSync.connect(pg_dsn, schema=pg_schema, partitions_ahead=2)
    today = datetime.now(timezone.utc).date()
    assert set(await sync.partitions()) == {today + timedelta(days=d) for d in range(-1, 3)}
    old = time.time() - 40 * 86_400
    await store.record_tick(rows_for(1, range(5)), old)  # outside every partition
    await store.record_tick(rows_for(2, range(5)), NOW)
    await sync.apply(await store.outbox_batch(100))
    days = await sync.partitions()
    assert datetime.fromtimestamp(old, timezone.utc).date() in days
    assert await pg.fetchval(f'SELECT count(*) FROM "{pg_schema}".block_history') == 10
    # retention drops whole old days
    assert await sync.drop_partitions_before(today - timedelta(days=1)) == [datetime.fromtimestamp(old, timezone.utc).date()]
    assert await pg.fetchval(f'SELECT count(*) FROM "{pg_schema}".block_history') == 5
    await sync.close()


async def test_bad_entry_is_quarantined_not_blocking(store, pg_dsn, pg_schema, pg):
    await store.record_tick(rows_for(1, range(5)), NOW)
    bad = rows_for(1, range(5, 6))
    bad[0]["channel"] = 70_000  # does not fit PostgreSQL's smallint: bad data, not an outage
    await store.record_tick(bad, NOW)
    await store.record_tick(rows_for(2, range(5)), NOW + 1)
    syncer = Syncer(store, pg_dsn, schema=pg_schema)
    await syncer.flush()
    st = syncer.status()
    assert st["quarantined_total"] == 1 and st["outbox"] == 0
    [dead] = await store.dead_letters()
    assert dead["kind"] == "history" and dead["rows"] == 1
    assert await pg.fetchval(f'SELECT count(*) FROM "{pg_schema}".block_history') == 10
    await syncer.stop()


# -- plugin schema ------------------------------------------------------------------------------------


async def test_plugin_postgres_schema_isolated(tmp_path, pg_dsn, pg_schema, pg):
    await (await PostgresSync.connect(pg_dsn, schema=pg_schema)).close()  # the core schema exists
    migrations = ["CREATE TABLE samples (id bigserial PRIMARY KEY, v double precision NOT NULL)"]
    p = await PluginStore.open("metrics", data_dir=tmp_path, postgres_dsn=pg_dsn, postgres_schema=pg_schema,
                               postgres_migrations=migrations)
    assert p.postgres is not None and p.postgres.schema == f"{pg_schema}_plugin_metrics"
    await p.postgres.execute("INSERT INTO samples (v) VALUES ($1)", 2.5)
    with pytest.raises(asyncpg.UndefinedTableError):
        await p.postgres.fetch("SELECT * FROM block_state")  # the core schema is not on its path
    with pytest.raises(asyncpg.UndefinedTableError):
        await p.postgres.fetch("SELECT * FROM nucleus")
    await p.close()
    p = await PluginStore.open("metrics", data_dir=tmp_path, postgres_dsn=pg_dsn, postgres_schema=pg_schema,
                               postgres_migrations=migrations)  # reopen: migrations not applied again
    assert await p.postgres.fetchval("SELECT count(*) FROM samples") == 1
    assert await p.postgres.fetchval("SELECT count(*) FROM schema_migrations") == 1
    await p.close()
    assert await pg.fetchval("SELECT to_regclass($1)::text", f'"{pg_schema}".samples') is None
    with pytest.raises(SchemaTooNewError):
        await PluginStore.open("metrics", data_dir=tmp_path, postgres_dsn=pg_dsn, postgres_schema=pg_schema,
                               postgres_migrations=[])


async def test_the_owners_genomes_reach_postgres_and_a_lower_generation_never_wins(tmp_path, pg_dsn, pg_schema, pg):
    from corec_node.engine.adaptive import genome_text
    from corec_node.engine.genome import default_genome, make

    evolved = make({"season": 12, "alpha": 0.3}, generation=2, parents=("f75dcb80f7193ce2",))
    block = 3 << 32 | 4
    a = await LocalStore.open(tmp_path / "a.db", node="a")
    b = await LocalStore.open(tmp_path / "b.db", node="b")
    await a.save_genomes([(block, genome_text(default_genome()), None)], owned=[block])
    await a.save_genomes([(block, genome_text(evolved), {"v": 1}), (block + 1, genome_text(default_genome()), None)],
                         owned=[block])  # replaces the pending entry; block + 1 is a replica here: not sent
    await b.save_genomes([(block, genome_text(default_genome()), None)], owned=[block])  # an older owner's
    for st in (a, b):
        syncer = Syncer(st, pg_dsn, schema=pg_schema)
        await syncer.flush()
        await syncer.stop()
        await st.close()
    s = f'"{pg_schema}"'
    rows = await pg.fetch(f"SELECT block, channel, block_index, owner, genome_id, generation, genome FROM {s}.block_genomes")
    assert [tuple(r)[:6] for r in rows] == [(block, 3, 4, "a", evolved.id, 2)]
    assert json.loads(rows[0]["genome"])["params"]["season"] == 12
