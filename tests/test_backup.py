"""Backups of a store while the node writes, and restores that bring a node back: real
files, a real writer process, real node processes."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from meshutil import eventually
from storeutil import cli, garbage_in_the_middle, make_store, rows

from corec_node.shell.datadir import RESTORED_FILE, VOTE_UNKNOWN, load_vote
from corec_node.storage import LocalStore
from corec_node.storage.backup import copy_store
from corec_node.storage.verify import check_store
from corec_node.testing import voters_agree

pytestmark = pytest.mark.timeout(180)

# commits the same number of rows to two tables in each transaction, until told to stop
WRITER = """
import sqlite3, sys, time, pathlib
db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=10)
stop = pathlib.Path(sys.argv[2])
n = 0
while not stop.exists():
    db.execute("BEGIN IMMEDIATE")
    for _ in range(50):
        n += 1
        db.execute("INSERT INTO alerts (uid, ts, kind, severity, message) VALUES (?, ?, 'k', 'info', 'm')", (f"w{n}", time.time()))
        db.execute("INSERT INTO audit (uid, ts, kind, subject, reason) VALUES (?, ?, 'k', 's', 'r')", (f"w{n}", time.time()))
    db.execute("COMMIT")
"""


def counts(path: Path) -> tuple[int, int]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        return (db.execute("SELECT count(*) FROM alerts").fetchone()[0],
                db.execute("SELECT count(*) FROM audit").fetchone()[0])


def test_a_backup_is_one_consistent_moment_while_a_writer_commits(tmp_path):
    store = tmp_path / "corec.db"
    make_store(store, ticks=2)
    stop = tmp_path / "stop"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(store), str(stop)])
    try:
        eventually(lambda: counts(store)[0] > 0, 10, message="the writer commits")
        seen = []
        for i in range(5):
            before = counts(store)[0]
            eventually(lambda before=before: counts(store)[0] > before, 10, message="the writer moved on")
            copied = copy_store(store, tmp_path / f"backup-{i}.db")
            assert copied.check.complete and not copied.check.damaged
            assert check_store(copied.path, full=True).problems == []
            alerts, audit = counts(copied.path)
            assert alerts == audit and alerts % 50 == 0, "a whole number of transactions, no half of one"
            seen.append(alerts)
        assert seen == sorted(seen) and seen[-1] > seen[0], "each copy a later moment"
        assert writer.poll() is None, "the writer was never blocked out"
    finally:
        stop.touch()
        writer.wait(10)


async def test_the_store_backs_itself_up_and_checks_itself_while_it_writes(tmp_path):
    store = await LocalStore.open(tmp_path / "corec.db", node="a")
    done = asyncio.Event()

    async def ticks() -> None:
        t = 0
        while not done.is_set():
            await store.record_tick(rows(t, blocks=500), 1_700_000_000.0 + t)
            t += 1

    task = asyncio.create_task(ticks())
    try:
        while await store.history_count() < 5000:
            await asyncio.sleep(0.01)
        copied = await store.backup(tmp_path / "copy.db")
        check = await store.quick_check(budget=10.0)
    finally:
        done.set()
        await task
        await store.close()
    assert check.complete and not check.damaged and check.schema_version is not None
    assert not copied.check.damaged
    with sqlite3.connect(copied.path) as db:
        history = db.execute("SELECT count(*) FROM block_history").fetchone()[0]
        ticks_done = db.execute("SELECT tick FROM owner_ticks WHERE owner = 'a'").fetchone()[0]
    assert history == 500 * (ticks_done + 1), "every tick whole: its rows and its owner tick in one commit"


def history_rows(path: Path) -> int:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        return db.execute("SELECT count(*) FROM block_history").fetchone()[0]


def test_backup_a_running_node_restore_it_into_a_fresh_directory_and_it_rejoins(cluster, tmp_path):
    a = cluster.start("a").wait_ready()
    eventually(lambda: a.ctl("leader")["leader"] == "a", 15, message="a leads")
    b = cluster.start("b", join=[a.addr]).wait_ready()
    eventually(lambda: voters_agree([a, b], ["a", "b"]), 30, message="a and b voters")
    cli("send", "--to", a.addr, "--channel", "2", "--count", "20000")
    eventually(lambda: history_rows(a.data_dir / "corec.db") > 0, 20, message="a stored block state")

    sending = threading.Event()

    def keep_sending() -> None:  # the node keeps writing while it is backed up
        while not sending.is_set():
            cli("send", "--to", a.addr, "--channel", "2", "--count", "20000", "--seed", "3")

    sender = threading.Thread(target=keep_sending)
    sender.start()
    try:
        backup = tmp_path / "a.backup"
        out = cli("backup", "--data-dir", str(a.data_dir), "--to", str(backup), "--json")
    finally:
        sending.set()
        sender.join(60)
    assert out.returncode == 0, out.stdout + out.stderr
    made = json.loads(out.stdout)
    assert made["backup"] == str(backup) and made["size"] == backup.stat().st_size
    assert cli("backup", "--data-dir", str(a.data_dir), "--to", str(backup)).returncode == 1, "never overwritten"
    stored = history_rows(backup)
    assert stored > 0 and check_store(backup, full=True).problems == []

    a.kill()  # its disk is lost: a new, empty data directory
    fresh = tmp_path / "a-new"
    out = cli("restore", "--data-dir", str(fresh), "--from", str(backup))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "--join" in out.stdout and (fresh / RESTORED_FILE).exists()
    term, voted = load_vote(fresh)
    assert term >= made["term"] and voted == VOTE_UNKNOWN

    back = cluster.start("a", join=[b.addr], data_dir=fresh, port=a.port, pub_port=a.pub_port).wait_ready()
    assert history_rows(fresh / "corec.db") >= stored, "the data is there"
    assert any(e.get("event") == "restored_rejoining" for e in back.log_events())
    eventually(lambda: voters_agree([back, b], ["a", "b"]), 30, message="a rejoined and is a voter again")


def test_restore_refuses_a_live_directory_and_a_damaged_backup(cluster, tmp_path):
    a = cluster.start("a").wait_ready()
    backup = tmp_path / "a.backup"
    assert cli("backup", "--data-dir", str(a.data_dir), "--to", str(backup)).returncode == 0
    live = cli("restore", "--data-dir", str(a.data_dir), "--from", str(backup))
    assert live.returncode == 1 and "stop it first" in live.stderr
    assert cli("restore", "--data-dir", str(tmp_path / "x"), "--from", str(tmp_path / "none")).returncode == 1

    big = tmp_path / "big.db"
    make_store(big)
    bad = tmp_path / "bad.backup"
    assert cli("backup", "--data-dir", str(tmp_path), "--to", str(bad),
               "--config", str(_config(tmp_path, big))).returncode == 0
    garbage_in_the_middle(bad)
    fresh = tmp_path / "fresh"
    out = cli("restore", "--data-dir", str(fresh), "--from", str(bad))
    assert out.returncode == 65 and f"{bad} is damaged" in out.stderr and "not restored" in out.stderr
    assert not (fresh / "corec.db").exists() and not (fresh / RESTORED_FILE).exists()


def _config(tmp_path: Path, store: Path) -> Path:
    """A config whose store lives outside the data directory."""
    path = tmp_path / "node.toml"
    path.write_text(f'[storage]\nsqlite_path = "{store}"\n')
    return path
