"""Clusters with a node of an older protocol, run from its own source tree, and nodes of
this version. With 1.4 (the last release before owner-routed ingest): producer batches go
through the PUB stream as 1.4 did, every record is stored once by its owner with the values
sent, and once the 1.4 node is gone the others route by owner (SPEC 9.5). With 1.13 (the
last before AGGREGATE_COLUMNS): every node shows every owner's rows, and once the 1.13 node
is gone the others take row maps no more (SPEC 9.2)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from corec_node.testing.cluster import eventually

LAST_1_4 = "6e6e3f312873c40e2e066e23f899f5eef7f0604d"  # main before protocol 1.5
LAST_1_13 = "426b6bdc005a7384a1459c0b09c0b494caaefe92"  # main before protocol 1.14 (AGGREGATE_COLUMNS)
REPO = Path(__file__).resolve().parents[1]
BLOCK_SIZE = 1000  # the default


def _tree(factory: pytest.TempPathFactory, commit: str, protocol: str) -> Path:
    """The package of protocol ``protocol``, exported from the repository's history."""
    why = None
    if shutil.which("git") is None:
        why = "git is not installed"
    else:
        probe = subprocess.run(["git", "-C", str(REPO), "cat-file", "-e", f"{commit}^{{commit}}"],
                               capture_output=True)
        if probe.returncode != 0:
            why = f"commit {commit[:12]} (protocol {protocol}) is not in this checkout's history (a shallow clone?)"
    if why is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the mixed-version test needs the {protocol} source: {why}")
        pytest.skip(why)
    root = factory.mktemp(f"corec-{protocol}")
    archive = subprocess.run(["git", "-C", str(REPO), "archive", commit, "corec_node"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(root)], input=archive.stdout, check=True)
    check = subprocess.run([sys.executable, "-c", "import corec_node.wire as w; print(w.PROTOCOL)"],
                           cwd=root, capture_output=True, text=True, check=True)
    assert check.stdout.strip() == protocol
    return root


@pytest.fixture(scope="module")
def old_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tree(tmp_path_factory, LAST_1_4, "1.4")


@pytest.fixture(scope="module")
def tree_1_13(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tree(tmp_path_factory, LAST_1_13, "1.13")


def _send(node, channel: int, count: int, seed: int) -> str:
    out = subprocess.run([sys.executable, "-m", "corec_node", "send", "--to", node.addr, "--channel", str(channel),
                          "--count", str(count), "--seed", str(seed), "--timeout", "20"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"{count:,} accepted, 0 rejected" in out.stdout, out.stdout
    return out.stdout


def _expected(channel: int, count: int, seed: int) -> dict[tuple[int, int], tuple[int, float]]:
    """Per block: the record count and mean of what ``send --seed`` generates (cli.py)."""
    rng = np.random.default_rng(seed)
    values = (20 + rng.normal(0, 2, count)).astype(np.float32)
    blocks = np.arange(count) // BLOCK_SIZE
    return {(channel, int(b)): (int((blocks == b).sum()), float(values[blocks == b].astype(np.float64).mean()))
            for b in np.unique(blocks)}


def _rows(node) -> dict[tuple[int, int], tuple[int, float]]:
    out = subprocess.run([sys.executable, "-m", "corec_node", "blocks", "--json", "--data-dir", str(node.data_dir)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return {(r["channel"], r["block"] & 0xFFFFFFFF): (r["count"], r["mean"]) for r in json.loads(out.stdout)}


def _matches(rows: dict, expected: dict) -> bool:
    for key, (count, mean) in expected.items():
        got = rows.get(key)
        if got is None or got[0] != count or abs(got[1] - mean) > 1e-3:
            return False
    return True


def _entities(nodes) -> int:
    return sum(n.ctl("status")["entities"] for n in nodes)


def _three(cluster, tree: Path) -> list:
    """a and b of this version and ``old`` run from ``tree``, joined through a, all alive everywhere."""
    a = cluster.start("a").wait_ready()
    old = cluster.start("old", join=[a.addr], cwd=tree).wait_ready()
    b = cluster.start("b", join=[a.addr]).wait_ready()
    nodes = [a, old, b]
    eventually(lambda: all(sorted(n.members().values()) == ["alive"] * 3 for n in nodes), 20, message="3 alive")
    return nodes


def test_a_cluster_with_a_1_4_node_stores_every_record_once_then_routes_without_it(cluster, old_tree):
    a, old, b = nodes = _three(cluster, old_tree)
    assert old.ctl("status")["version"] != a.ctl("status")["version"] or "routed" not in old.ctl("status")
    eventually(lambda: a.ctl("status")["routed"] is False and b.ctl("status")["routed"] is False, 10,
               message="a 1.4 member: not routed")

    _send(a, 0, 60_000, 1)  # through a node of this version
    _send(old, 1, 40_000, 2)  # through the 1.4 node
    expected = _expected(0, 60_000, 1) | _expected(1, 40_000, 2)
    eventually(lambda: _entities(nodes) == 100_000, 30, message="every record stored once")
    eventually(lambda: _matches(_rows(a), expected), 30, message="a's blocks hold the values sent")
    assert sum(n.ctl("status")["producers"]["forwarded"] for n in (a, b)) == 0  # the 1.4 way: the PUB stream

    old.stop()
    try:
        eventually(lambda: all(n.ctl("status")["routed"] and n.ctl("status")["placement_members"] == ["a", "b"]
                               for n in (a, b)), 20, message="without the 1.4 node, the cluster routes by owner")
    except AssertionError:
        for n in (a, b):
            s = n.ctl("status")
            print(n.name, s["routed"], s["placement_members"], s["placement_confirmed"], s["leader"], n.members())
        raise
    before = _entities([a, b])
    _send(b, 2, 30_000, 3)  # this CLI may route by owner or send it all to b: b forwards what it does not own
    eventually(lambda: _entities([a, b]) == before + 30_000, 30, message="the routed records stored once")
    eventually(lambda: _matches(_rows(b), _expected(2, 30_000, 3)), 30, message="b's blocks hold the values sent")


def _in(node, kind: str) -> int:
    return node.ctl("status")["messages_in_by_type"].get(kind, 0)


def test_a_1_13_node_and_nodes_of_this_version_show_each_others_rows(cluster, tree_1_13):
    a, old, b = nodes = _three(cluster, tree_1_13)
    _send(a, 0, 60_000, 1)
    expected = _expected(0, 60_000, 1)
    eventually(lambda: _entities(nodes) == 60_000, 30, message="every record stored once")
    for node in nodes:  # the 1.13 node's rows reach a and b as row maps; theirs reach it as row maps too
        eventually(lambda node=node: _matches(_rows(node), expected), 30, message=f"{node.name} shows every block")
    owners = {r["owner"] for r in json.loads(subprocess.run(
        [sys.executable, "-m", "corec_node", "blocks", "--json", "--data-dir", str(a.data_dir)],
        capture_output=True, text=True, timeout=30).stdout)}
    assert owners == {"a", "old", "b"}, owners  # each of them owns some of the 60 blocks
    assert _in(a, "aggregates") > 0 and _in(a, "aggregate_columns") > 0

    old.stop()
    eventually(lambda: a.members().get("old") in ("left", "dead", None), 20, message="old is gone")
    eventually(lambda: any(e.get("event") == "row_maps" and e.get("subscribed") == "false" for e in a.log_events()),
               10, message="a takes row maps no more")
    maps, columns = _in(a, "aggregates"), _in(a, "aggregate_columns")
    _send(b, 0, 60_000, 2)  # new values for every block: every owner publishes rows again
    eventually(lambda: _in(a, "aggregate_columns") > columns, 20, message="b's rows as columns")
    eventually(lambda: _matches(_rows(a), _expected(0, 60_000, 2)), 30, message="a shows the new values")
    assert _in(a, "aggregates") == maps  # b still publishes row maps, but a subscribes to them no more
