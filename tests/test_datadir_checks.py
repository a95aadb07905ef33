"""State on disk is verified: the store, the vote and the voter configuration are checked
before the node acts on them, on real files and real node processes."""

from __future__ import annotations

import json
import random
import sqlite3
import subprocess
from pathlib import Path

import pytest
from meshutil import eventually, free_port
from storeutil import cli, damaged_header, garbage_in_the_middle, make_store, truncate

from corec_node.config import load_config
from corec_node.mesh.effects import Send
from corec_node.mesh.election import Election, ElectionConfig
from corec_node.shell.datacheck import START_CHECK_SECONDS, check_data_dir, start_check
from corec_node.shell.datadir import (
    RESTORED_FILE,
    VOTE_UNKNOWN,
    DamagedFile,
    load_vote,
    load_voters,
    save_vote,
    save_voters,
)
from corec_node.storage import LocalStore
from corec_node.storage.verify import check_store
from corec_node.testing import voters_agree
from corec_node.wire.messages import VoteRequest

pytestmark = pytest.mark.timeout(180)


def config_for(data_dir: Path, join: list[str] | None = None):
    return load_config(None, env={}, overrides={"node.data_dir": str(data_dir), "node.name": "a",
                                                "node.listen": "127.0.0.1:7101", "mesh.join": join})


def run_node(data_dir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """A node that is expected to refuse to start."""
    return cli("run", "--name", "a", "--data-dir", str(data_dir), "--listen", f"127.0.0.1:{free_port()}", *extra)


# -- the small files: checksums ---------------------------------------------------------


def test_vote_and_voters_carry_a_checksum_and_a_changed_byte_is_caught(tmp_path):
    save_vote(tmp_path, 5, "b")
    save_voters(tmp_path, 3, 5, (("a", "127.0.0.1:1"), ("b", "127.0.0.1:2")), "c1")
    assert "crc32" in json.loads((tmp_path / "vote.json").read_text())
    assert load_vote(tmp_path) == (5, "b")
    assert load_voters(tmp_path) == (3, 5, (("a", "127.0.0.1:1"), ("b", "127.0.0.1:2")), "c1", ())
    # valid JSON, a plausible vote, one digit changed: only the checksum tells
    vote = tmp_path / "vote.json"
    vote.write_text(vote.read_text().replace('"term": 5', '"term": 4'))
    with pytest.raises(DamagedFile, match="checksum mismatch"):
        load_vote(tmp_path)
    voters = tmp_path / "voters.json"
    voters.write_text(voters.read_text().replace('"index": 3', '"index": 9'))
    with pytest.raises(DamagedFile, match="checksum mismatch"):
        load_voters(tmp_path)
    report = check_data_dir(tmp_path, tmp_path / "corec.db")
    assert report.damaged
    assert {f.name for f in report.files if f.state == "damaged"} == {"vote.json", "voters.json"}


def test_files_without_a_checksum_are_accepted_once_and_rewritten_with_one(tmp_path):
    (tmp_path / "vote.json").write_text(json.dumps({"term": 4, "voted_for": "b"}))
    (tmp_path / "voters.json").write_text(json.dumps(
        {"index": 2, "term": 4, "cluster": "c1", "voters": [{"name": "a", "addr": "127.0.0.1:7101"}]}))
    assert start_check(config_for(tmp_path)) == (4, "b")
    assert "crc32" in json.loads((tmp_path / "vote.json").read_text())
    assert "crc32" in json.loads((tmp_path / "voters.json").read_text())
    assert load_voters(tmp_path) == (2, 4, (("a", "127.0.0.1:7101"),), "c1", ())


# -- the vote against the store's term row ---------------------------------------------------


async def test_the_term_row_only_rises_with_every_write_that_carries_a_term(tmp_path):
    store = await LocalStore.open(tmp_path / "corec.db", node="a")
    try:
        assert await store.highest_term() == 0
        await store.add_audit("leader_change", "b", "elected", term=4)
        assert await store.highest_term() == 4
        await store.note_term(2)  # never lowered
        assert await store.highest_term() == 4
        await store.record_nucleus(6, "a")
        await store.record_placement(7, {1: "a"})
        assert await store.highest_term() == 7
        await store.note_term(9)
        assert await store.highest_term() == 9
    finally:
        await store.close()
    assert check_store(tmp_path / "corec.db").term == 9


def test_a_vote_file_older_than_the_store_is_not_trusted(tmp_path):
    make_store(tmp_path / "corec.db", ticks=1, term=7)
    save_vote(tmp_path, 3, "b")  # rolled back: the node had reached term 7
    report = check_data_dir(tmp_path, tmp_path / "corec.db")
    assert report.healthy and report.file("vote.json").state == "note"
    assert "older than term 7" in report.file("vote.json").detail
    assert start_check(config_for(tmp_path)) == (7, VOTE_UNKNOWN)
    assert load_vote(tmp_path) == (7, VOTE_UNKNOWN)  # rewritten: the next start agrees
    assert start_check(config_for(tmp_path)) == (7, VOTE_UNKNOWN)


def test_a_missing_vote_file_is_not_trusted_when_the_store_has_a_term(tmp_path):
    make_store(tmp_path / "corec.db", ticks=1, term=5)
    assert start_check(config_for(tmp_path)) == (5, VOTE_UNKNOWN)
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    assert start_check(config_for(fresh)) == (0, None)  # a new node: nothing to distrust


def test_a_node_with_an_unknown_vote_refuses_every_candidate_in_that_term():
    voters = {"a": "127.0.0.1:1", "b": "127.0.0.1:2", "c": "127.0.0.1:3"}
    node = Election("a", voters["a"], ElectionConfig.test(), random.Random(1), 0.0, term=7, voted_for=VOTE_UNKNOWN)
    node.set_voters(voters, 0.0, (1, 1), "c1")

    def asks(sender: str, term: int) -> bool:
        effects = node.handle(sender, VoteRequest(term, False, voters[sender], 1, 1, "c1"), 10.0)
        return next(e.msg.granted for e in effects if type(e) is Send)

    assert not asks("b", 7) and not asks("c", 7)  # it may have voted in term 7 already
    assert asks("b", 8)  # a new term: a vote of its own again
    assert node.voted_for == "b" and node.term == 8


# -- a damaged store stops the node: one line, exit 65 ------------------------------------


@pytest.mark.parametrize("damage", [garbage_in_the_middle, truncate, damaged_header],
                         ids=["garbage", "truncated", "header"])
def test_a_damaged_store_stops_the_node_with_one_line_and_exit_65(tmp_path, damage):
    data = tmp_path / "a"
    make_store(data / "corec.db", term=3)
    damage(data / "corec.db")
    out = run_node(data)
    assert out.returncode == 65, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert f"{data / 'corec.db'} is damaged (" in lines[0]
    assert f"corec-node check --data-dir {data}" in lines[0] and f"corec-node recover --data-dir {data}" in lines[0]
    assert "Traceback" not in out.stdout + out.stderr
    assert not out.stdout.strip(), "nothing else is printed"


def test_a_vote_file_with_a_wrong_checksum_stops_the_node(tmp_path):
    data = tmp_path / "a"
    data.mkdir()
    save_vote(data, 5, "b")
    (data / "vote.json").write_text((data / "vote.json").read_text().replace('"b"', '"c"'))
    out = run_node(data)
    assert out.returncode == 65
    assert len(out.stderr.strip().splitlines()) == 1
    assert f"{data / 'vote.json'} is damaged (checksum mismatch)" in out.stderr
    assert "Traceback" not in out.stdout + out.stderr


def test_a_rolled_back_vote_file_is_not_trusted_by_a_running_node(cluster):
    a = cluster.start("a").wait_ready()
    term = eventually(lambda: a.ctl("leader")["leader"] == "a" and a.ctl("leader")["term"], 15, message="a leads")
    assert a.stop() == 0
    stored = check_store(a.data_dir / "corec.db").term
    assert stored >= term, "every leader change raised the term row"
    save_vote(a.data_dir, 0, None)  # a vote file from before any election
    a.start().wait_ready()
    untrusted = eventually(lambda: [e for e in a.log_events() if e.get("event") == "vote_untrusted"], 10)
    assert untrusted[0]["term"] == str(stored) and "older than term" in untrusted[0]["reason"]
    # it never votes in the term it may have voted in: its next election is a term above
    assert eventually(lambda: a.ctl("leader")["leader"] == "a" and a.ctl("leader")["term"], 15) > stored


# -- corec-node check --------------------------------------------------------------------


def test_check_healthy_damaged_and_json(tmp_path):
    data = tmp_path / "a"
    make_store(data / "corec.db", term=2)
    save_vote(data, 2, "a")
    out = cli("check", "--data-dir", str(data))
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip().endswith("healthy")
    assert "quick_check passed" in out.stdout and "term 2, voted for a" in out.stdout
    full = json.loads(cli("check", "--data-dir", str(data), "--full", "--json").stdout)
    assert full["healthy"] and full["store"]["check"] == "integrity_check" and full["store"]["term"] == 2
    garbage_in_the_middle(data / "corec.db")
    out = cli("check", "--data-dir", str(data))
    assert out.returncode == 65
    assert "corec.db     DAMAGED" in out.stdout and "corec-node recover" in out.stdout
    report = json.loads(cli("check", "--data-dir", str(data), "--json").stdout)
    assert report["damaged"] and not report["healthy"] and report["store"]["problems"]
    missing = cli("check", "--data-dir", str(tmp_path / "nowhere"))
    assert missing.returncode == 1 and "no data directory" in missing.stderr
    assert not (tmp_path / "nowhere").exists()


def test_check_beside_a_running_node_reads_only(cluster):
    a = cluster.start("a").wait_ready()
    eventually(lambda: a.ctl("leader")["leader"] == "a", 15)
    out = cli("check", "--data-dir", str(a.data_dir))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "a node is running on this directory: checked read-only" in out.stdout
    assert json.loads(cli("check", "--data-dir", str(a.data_dir), "--json").stdout)["live"]
    refused = cli("recover", "--data-dir", str(a.data_dir))
    assert refused.returncode == 1 and "stop it first" in refused.stderr
    assert a.ctl("status")  # untouched


def test_a_check_with_a_budget_stops_in_time(tmp_path):
    """The start check's bound (START_CHECK_SECONDS) on a file too large to read in it."""
    path = tmp_path / "big.db"
    make_store(path, ticks=1)
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE t (v BLOB)")  # 60 MB more
    db.execute("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 60000) "
               "INSERT INTO t SELECT randomblob(1000) FROM c")
    db.commit()
    db.close()
    started = check_store(path, budget=0.005)
    assert not started.complete and not started.damaged  # the budget cut it short, and said so
    assert check_store(path).complete  # no budget: the whole file
    assert START_CHECK_SECONDS <= 15, "the units give a start 30 s in all"


# -- corec-node recover ------------------------------------------------------------------


def test_recover_rebuilds_a_damaged_store_and_the_node_rejoins(cluster, tmp_path):
    a = cluster.start("a").wait_ready()
    eventually(lambda: a.ctl("leader")["leader"] == "a", 15, message="a leads")
    term = a.ctl("leader")["term"]
    data = tmp_path / "b-data"
    make_store(data / "corec.db", term=term, ticks=20)  # b had followed a in a's term
    save_vote(data, term, "a")
    garbage_in_the_middle(data / "corec.db")
    with sqlite3.connect(data / "corec.db") as db:  # what the damaged file still holds
        assert db.execute("SELECT count(*) FROM block_state").fetchone()[0] == 1000

    out = cli("recover", "--data-dir", str(data))
    assert out.returncode == 0, out.stdout + out.stderr
    aside = next(data.glob("damaged-*"))
    assert (aside / "corec.db").exists(), "the damaged file is kept"
    assert str(aside / "corec.db") in out.stdout
    assert "block state will be rebuilt from the cluster on rejoin" in out.stdout
    assert "member snapshot was dropped" in out.stdout
    salvaged = next(line for line in out.stdout.splitlines() if line.startswith("corec.db: rebuilt"))
    assert "block_history" in salvaged and " lost" in salvaged, "what was salvaged, and what was not"
    assert out.stdout.strip().endswith("healthy")
    assert load_vote(data) == (term, VOTE_UNKNOWN), "the highest known term, with no vote in it"
    with sqlite3.connect(data / "corec.db") as db:
        assert db.execute("SELECT count(*) FROM block_history").fetchone()[0] > 19_000
        assert db.execute("SELECT count(*) FROM members").fetchone()[0] == 0
        assert db.execute("SELECT tick FROM owner_ticks WHERE owner = 'a'").fetchone()[0] == 19
    assert cli("check", "--data-dir", str(data)).returncode == 0

    alone = run_node(data)  # it would found a cluster of its own
    assert alone.returncode == 2 and "--join" in alone.stderr and len(alone.stderr.strip().splitlines()) == 1
    b = cluster.start("b", join=[a.addr], data_dir=data).wait_ready()
    eventually(lambda: voters_agree([a, b], ["a", "b"]), 30, message="b rejoined and was added as a voter")
    assert any(e.get("event") == "restored_rejoining" for e in b.log_events())
    assert b.stop() == 0
    b = cluster.start("b", join=[a.addr], data_dir=data, port=b.port, pub_port=b.pub_port).wait_ready()
    eventually(lambda: any(e.get("event") == "restore_completed" for e in b.log_events()), 10)
    assert not (data / RESTORED_FILE).exists()


def test_recover_a_damaged_vote_file_keeps_the_highest_term(tmp_path):
    data = tmp_path / "a"
    make_store(data / "corec.db", ticks=1, term=4)
    save_vote(data, 9, "b")
    (data / "vote.json").write_bytes(b'{"term": 9, "voted_f')  # torn
    before = cli("check", "--data-dir", str(data))
    assert before.returncode == 65 and "vote.json" in before.stdout and "not valid JSON" in before.stdout
    out = cli("recover", "--data-dir", str(data), "--json")
    assert out.returncode == 0, out.stderr
    done = json.loads(out.stdout)
    assert done["healthy"] and done["term"] == 4 and not done["needs_join"]
    assert load_vote(data) == (4, VOTE_UNKNOWN)
    assert any(p.endswith("vote.json") for p in done["moved_aside"])
    assert cli("recover", "--data-dir", str(data)).stdout.startswith("nothing to recover")
