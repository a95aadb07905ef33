"""LocalStore and the plugin SQLite store, on real SQLite files (no PostgreSQL needed)."""

from __future__ import annotations

import asyncio
import math
import sqlite3
import threading

import aiosqlite
import pytest
from pgutil import eventually  # async: polls on the running loop

from corec_node.storage import LocalStore, PluginStore, SchemaTooNewError, StaleTermError
from corec_node.storage.migrations import CORE_SQLITE
from corec_node.wire.messages import MemberState, MemberStatus

T0 = 1_700_000_000.0


def rows_for(tick: int, blocks: range, owner: str = "a", channel: int = 1, nan_every: int = 0) -> list[dict]:
    out = []
    for b in blocks:
        empty = nan_every and b % nan_every == 0
        out.append({
            "block": (channel << 32) | b, "channel": channel, "owner": owner, "tick": tick,
            "count": 1000, "active": 0 if empty else 990,
            "mean": math.nan if empty else 20.0 + b * 0.25 + tick,
            "min": math.nan if empty else 1.5, "max": math.nan if empty else 40.125,
            "std": math.nan if empty else 2.5 + tick / 8,
            "error_rate": 0.01, "fitness": 0.75,
        })
    return out


@pytest.fixture
async def store(tmp_path):
    s = await LocalStore.open(tmp_path / "corec.db", node="a")
    try:
        yield s
    finally:
        await s.close()


async def test_migrations_from_empty_and_rerun(tmp_path):
    path = tmp_path / "corec.db"
    s = await LocalStore.open(path)
    assert await s.schema_version() == len(CORE_SQLITE)
    await s.close()
    with sqlite3.connect(path) as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"members", "block_state", "block_history", "alerts", "audit", "outbox", "meta", "election"} <= tables
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        before = db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
    s = await LocalStore.open(path)  # again: nothing to do, nothing changes
    assert await s.schema_version() == len(CORE_SQLITE)
    await s.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == before
        assert db.execute("SELECT count(*) FROM nucleus").fetchone()[0] == 1


async def test_schema_too_new_is_refused(tmp_path):
    path = tmp_path / "corec.db"
    await (await LocalStore.open(path)).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(SchemaTooNewError) as err:
        await LocalStore.open(path)
    msg = str(err.value)
    assert str(path) in msg and "99" in msg and str(len(CORE_SQLITE)) in msg
    assert err.value.found == 99 and err.value.known == len(CORE_SQLITE)


async def test_record_tick_state_history_outbox_in_one_call(store):
    rows = rows_for(1, range(10), nan_every=4)
    assert await store.record_tick(rows, T0) == 10
    state = {r["block"]: r for r in await store.block_state()}
    assert len(state) == 10
    for r in rows:
        got = state[r["block"]]
        for k, v in r.items():
            if isinstance(v, float) and math.isnan(v):
                assert got[k] is None, k  # NaN -> NULL
            else:
                assert got[k] == v, k
        assert got["ts"] == T0
    assert len(await store.history((1 << 32) | 3)) == 1
    assert store.outbox_rows == 10
    items = await store.outbox_batch(100)
    assert [i.kind for i in items] == ["history"] and items[0].rows == 10
    assert items[0].payload["ts"] == T0 and len(items[0].payload["rows"]) == 10
    assert await store.last_tick("a") == 1


async def test_state_moves_forward_only(store):
    b = (1 << 32) | 7
    await store.record_tick(rows_for(5, range(7, 8)), T0 + 5)
    await store.record_tick(rows_for(3, range(7, 8)), T0 + 3)  # older tick, same owner: ignored
    assert (await store.block_state(b))[0]["tick"] == 5
    await store.record_tick(rows_for(1, range(7, 8), owner="b"), T0 + 4)  # other owner, older ts
    assert (await store.block_state(b))[0]["owner"] == "a"
    await store.record_tick(rows_for(1, range(7, 8), owner="b"), T0 + 6)  # other owner, newer ts
    got = (await store.block_state(b))[0]
    assert (got["owner"], got["tick"], got["ts"]) == ("b", 1, T0 + 6)
    # history keeps every row, a replayed row once
    await store.record_tick(rows_for(5, range(7, 8)), T0 + 5)
    assert sorted((h["owner"], h["tick"]) for h in await store.history(b)) == [("a", 3), ("a", 5), ("b", 1)]


async def test_outbox_batch_limit_and_delete(store):
    for t in range(5):
        await store.record_tick(rows_for(t, range(100)), T0 + t)
    await store.add_alert("hot", "too hot", block=3)
    assert store.outbox_rows == 501
    batch = await store.outbox_batch(250)
    assert [i.rows for i in batch] == [100, 100]  # whole entries, at most 250 rows
    assert await store.outbox_delete(i.id for i in batch) == 200
    assert store.outbox_rows == 301
    assert [i.rows for i in await store.outbox_batch(10)] == [100]  # always at least one entry
    assert await store.outbox_oldest() is not None


async def test_outbox_batch_after_reads_past_batches_in_flight(store):
    for t in range(4):
        await store.record_tick(rows_for(t, range(10)), T0 + t)
    first = await store.outbox_batch(15)
    second = await store.outbox_batch(15, after=first[-1].id)  # the first is not deleted yet
    assert [i.payload["rows"][0][3] for i in first + second] == [0, 1]
    assert await store.outbox_batch(15, after=10**9) == []
    assert store.outbox_rows == 40  # an empty read past the end does not reset the count
    await store.outbox_delete([second[0].id])  # out of order: the later batch committed first
    assert [i.payload["rows"][0][3] for i in await store.outbox_batch(100)] == [0, 2, 3]


async def test_trim_drops_oldest_history_never_state(store):
    blocks = range(20)
    for t in range(10):
        await store.record_tick(rows_for(t, blocks), T0 + t)
    await store.add_audit("repair", "block:1", "errors")
    await store.add_alert("hot", "too hot")
    await store.record_nucleus(1, "a")
    assert store.outbox_rows == 203
    dropped = await store.trim_outbox(100)
    assert dropped >= 103 and dropped % 20 == 0
    items = await store.outbox_batch(10_000)
    kinds = [i.kind for i in items]
    assert kinds.count("alert") == 1 and kinds.count("audit") == 1 and kinds.count("nucleus") == 1
    ticks = sorted({r[3] for i in items if i.kind == "history" for r in i.payload["rows"]})
    assert ticks == list(range(10 - len(ticks), 10))  # the OLDEST went, the newest stay
    snaps = [i for i in items if i.kind == "state"]
    assert len(snaps) == 1  # the latest state of every block survives in the snapshot
    snap = {r[0]: r for r in snaps[0].payload["rows"]}
    assert len(snap) == 20 and all(r[3] == 9 for r in snap.values())
    assert store.outbox_rows == sum(i.rows for i in items)
    # trimming again keeps one snapshot (coalesced), never two
    await store.record_tick(rows_for(10, blocks), T0 + 10)
    await store.trim_outbox(50)
    items = await store.outbox_batch(10_000)
    assert [i.kind for i in items].count("state") == 1
    assert store.outbox_rows == sum(i.rows for i in items)
    # the count survives a reopen
    path, n = store.path, store.outbox_rows
    await store.close()
    again = await LocalStore.open(path)
    assert again.outbox_rows == n
    await again.close()


async def test_members_roundtrip(store):
    states = [MemberState("a", "127.0.0.1:7400", "127.0.0.1:7401", 3, MemberStatus.ALIVE),
              MemberState("b", "127.0.0.1:7410", "127.0.0.1:7411", 1, MemberStatus.SUSPECT)]
    await store.save_members(states)
    await store.save_members(states)  # coalesced: one member entry in the outbox
    assert await store.load_members() == states
    items = await store.outbox_batch(100)
    assert [i.kind for i in items] == ["member"] and store.outbox_rows == 2


async def test_vote_is_durable_and_never_twice_in_a_term(tmp_path):
    path = tmp_path / "corec.db"
    s = await LocalStore.open(path)
    assert await s.load_vote() == (0, None)
    await s.save_vote(3, "b")
    await s.save_vote(3, "b")  # the same vote again is fine
    with pytest.raises(StaleTermError):
        await s.save_vote(3, "c")  # a second vote in term 3
    with pytest.raises(StaleTermError):
        await s.save_vote(2, "c")
    async with s._conn.execute("PRAGMA synchronous") as cur:
        assert (await cur.fetchone())[0] == 1  # back to NORMAL after the FULL write
    await s.close()
    s = await LocalStore.open(path)
    assert await s.load_vote() == (3, "b")
    await s.close()


async def test_local_fencing(store):
    assert await store.record_nucleus(4, "a") is True
    assert await store.record_nucleus(4, "a") is False  # replay: no-op
    with pytest.raises(StaleTermError):
        await store.record_nucleus(4, "b")  # another leader for the same term
    await store.save_vote(6, "b")  # this node has seen term 6
    with pytest.raises(StaleTermError):
        await store.record_nucleus(5, "a")
    with pytest.raises(StaleTermError):
        await store.add_audit("placement", "block:1", "rebalance", term=4)
    with pytest.raises(StaleTermError):
        await store.record_placement(5, {1: "a"})
    assert await store.nucleus() == (4, "a")
    assert await store.audit() == [] and await store.placement() == {}
    await store.record_nucleus(6, "b")
    await store.record_placement(6, {1: "b", 2: "c"})
    await store.add_audit("placement", "block:1", "rebalance", term=6, details={"from": "a"})
    assert await store.placement() == {1: ("b", 6), 2: ("c", 6)}
    [entry] = await store.audit()
    assert entry["term"] == 6 and entry["details"] == {"from": "a"}


async def test_no_outbox_without_postgres(tmp_path):
    s = await LocalStore.open(tmp_path / "corec.db", outbox=False)
    await s.record_tick(rows_for(1, range(10)), T0)
    await s.add_alert("hot", "x")
    assert s.outbox_rows == 0 and await s.outbox_batch(10) == []
    assert len(await s.block_state()) == 10
    await s.close()


async def test_prune_history(store):
    for t in range(4):
        await store.record_tick(rows_for(t, range(50)), T0 + t * 100)
    assert await store.prune_history(T0 + 150, chunk=30) == 100
    assert await store.history_count() == 100


async def test_record_tick_does_not_stall_the_loop(store):
    """A big tick is written in aiosqlite's thread: the loop keeps turning meanwhile.

    SQLite's trace callback runs in whichever thread executes the statement. It holds the
    tick's first block_state upsert until a ticker on the event loop has turned 3 times since
    the write began. In aiosqlite's thread that happens however slow the machine is; were the
    write run on the loop, the ticker could not turn, the hold would run out, and the test fails.
    """
    rows = rows_for(1, range(20_000))
    writing = threading.Event()  # set by the thread that runs the upsert, when it starts
    turned = threading.Event()  # set by the loop's ticker: 3 turns while the write was held
    held: list[bool] = []  # per hold: did the loop turn while the write waited?

    def trace(sql: str) -> None:
        if "INSERT INTO block_state" in sql and not held:
            writing.set()
            held.append(turned.wait(30))

    async def ticker() -> None:
        turns = 0
        while not turned.is_set():
            await asyncio.sleep(0.005)
            if writing.is_set():
                turns += 1
                if turns >= 3:
                    turned.set()

    await store._conn.set_trace_callback(trace)
    task = asyncio.create_task(ticker())
    try:
        assert await store.record_tick(rows, T0) == 20_000
    finally:
        turned.set()
        await task
        await store._conn.set_trace_callback(None)
    assert held == [True], "the event loop stood still while the tick was being written"
    assert len(await store.block_state()) == 20_000


# -- plugin SQLite store ---------------------------------------------------------------------------


async def test_plugin_sqlite_isolated_and_migrated_once(tmp_path):
    core = await LocalStore.open(tmp_path / "corec.db")
    await core.record_tick(rows_for(1, range(3)), T0)
    await core.close()
    migrations = ["CREATE TABLE samples (id INTEGER PRIMARY KEY, v REAL NOT NULL)"]
    p = await PluginStore.open("metrics", data_dir=tmp_path, sqlite_migrations=migrations)
    assert p.sqlite_path == tmp_path / "plugins" / "metrics.db"
    await p.sqlite.execute("INSERT INTO samples (v) VALUES (1.5)")
    with pytest.raises(sqlite3.OperationalError):
        await p.sqlite.execute("SELECT * FROM block_state")  # the core's tables are not in its file
    with pytest.raises(sqlite3.DatabaseError):
        await p.sqlite.execute(f"ATTACH DATABASE '{tmp_path / 'corec.db'}' AS core")
    await p.close()
    # reopen with one more migration: only the new one runs; the data is still there
    p = await PluginStore.open("metrics", data_dir=tmp_path,
                               sqlite_migrations=[*migrations, "ALTER TABLE samples ADD COLUMN unit TEXT"])
    async with p.sqlite.execute("SELECT v, unit FROM samples") as cur:
        assert await cur.fetchall() == [(1.5, None)]
    async with p.sqlite.execute("SELECT value FROM corec_plugin_meta WHERE key = 'schema_version'") as cur:
        assert (await cur.fetchone())[0] == "2"
    await p.close()
    # an older plugin version (one migration) refuses the newer file
    with pytest.raises(SchemaTooNewError, match="metrics"):
        await PluginStore.open("metrics", data_dir=tmp_path, sqlite_migrations=migrations)
    # the core file never saw the plugin's tables
    async with aiosqlite.connect(tmp_path / "corec.db") as db:
        async with db.execute("SELECT count(*) FROM sqlite_master WHERE name = 'samples'") as cur:
            assert (await cur.fetchone())[0] == 0
    with pytest.raises(ValueError):
        await PluginStore.open("../core", data_dir=tmp_path)


async def test_syncer_without_a_server_keeps_the_node_working(store):
    """Nothing listens at the DSN: ticks still record, the drain backs off, stop is bounded."""
    from corec_node.storage import Syncer
    from corec_node.testing.cluster import free_port

    syncer = Syncer(store, f"postgresql://postgres@127.0.0.1:{free_port()}/postgres",
                    interval=0.02, max_backoff=0.1, connect_timeout=0.5)
    syncer.start()
    for t in range(20):
        await store.record_tick(rows_for(t, range(10)), T0 + t)
        await asyncio.sleep(0.01)
    await eventually(lambda: syncer.status()["last_error"], 30, message="the syncer tried and failed")
    st = syncer.status()
    assert st["state"] == "backoff" and not st["connected"] and st["last_error"]
    assert st["outbox"] == 200 and st["drained_total"] == 0
    # bounded: with nothing to drain to, stop(timeout=1) gives up instead of retrying forever
    # (30 s is a hang detector, not a speed requirement)
    await asyncio.wait_for(syncer.stop(flush=True, timeout=1.0), 30)
    assert store.outbox_rows == 200 and syncer.status()["state"] == "stopped"
