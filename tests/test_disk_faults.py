"""A vote that cannot be written is never acted on (mesh/core.py rule 11), on a real full
file system: a node's data directory on a small tmpfs, filled to the last byte."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest
from meshutil import eventually

from corec_node.testing import voters_agree

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs (root only: CI runs as root; elsewhere the test says why it skips)."""
    mount = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail(f"cannot mount a tmpfs under CI: {done.stderr.strip()}")
        pytest.skip(f"mounting a tmpfs needs root: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def fill(disk: Path) -> Path:
    """Write until the file system refuses: ENOSPC for the next vote."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as f:  # unbuffered: nothing left to flush (and fail) at close
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    for i in range(1000):  # the last partial blocks
        try:
            with open(disk / f"crumb{i}", "wb", buffering=0) as f:
                f.write(b"\0" * 512)
        except OSError:
            break
    return filler


def leader_of(nodes):
    views = {(r["leader"], r["term"]) for r in (n.ctl("leader") for n in nodes)}
    return next(iter(views)) if len(views) == 1 and next(iter(views))[0] else None


def test_a_node_that_cannot_write_its_vote_does_not_grant_it(cluster, small_disk):
    a = cluster.start("a").wait_ready()
    eventually(lambda: leader_of([a]), 15, message="a leads its new cluster")
    b = cluster.start("b", join=[a.addr]).wait_ready()
    c = cluster.start("c", join=[a.addr], data_dir=small_disk / "c").wait_ready()
    nodes = [a, b, c]
    eventually(lambda: voters_agree(nodes, ["a", "b", "c"]), 30, message="every node a voter")
    leader, term = eventually(lambda: leader_of(nodes), 15, message="one leader")
    assert leader == "a", "a founded the cluster and has led it since"
    filler = fill(small_disk)
    a.kill()  # b (or c) must stand; b needs c's vote, which c cannot write
    rest = [b, c]
    eventually(lambda: c.ctl("status")["disk_error"], 30, message="c reports it cannot write its vote")
    status = c.ctl("status")
    assert "cannot write the vote" in status["disk_error"]
    assert any(e.get("event") == "disk_write_failed" for e in c.log_events())
    # b keeps standing, in higher and higher terms, and never wins: c grants nothing it
    # could not store (before, c's core took the vote as saved and b led at once)
    start_term = b.ctl("leader")["term"]
    eventually(lambda: b.ctl("leader")["term"] >= start_term + 3, 30, message="b stood three more times")
    assert all(n.ctl("leader")["leader"] is None for n in rest)
    assert c.ctl("leader")["term"] == term, "c adopted a term it could not write"
    filler.unlink()
    for crumb in small_disk.glob("crumb*"):
        crumb.unlink()
    new, _ = eventually(lambda: leader_of(rest), 30, message="a leader once the disk has room")
    assert new in ("b", "c")
    eventually(lambda: c.ctl("status")["disk_error"] is None, 15, message="c says the disk recovered")
