"""`corec-node demo` runs to the end: three real nodes, entities, a leader killed, failover,
its blocks rebuilt and handed back (the demo itself checks every entity is held once)."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.timeout(180)
def test_demo_runs_to_the_end():
    out = subprocess.run([sys.executable, "-m", "corec_node", "demo"], capture_output=True, text=True, timeout=170)
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    assert "cluster formed: 3 members alive" in text
    assert "SIGKILL the leader" in text
    assert "failover:" in text and "is dead on every survivor" in text
    assert "entities in" in text
    assert "blocks are rebuilt by the survivors from the stream: 100,000 entities held again" in text
    assert "gets its blocks back" in text
    assert text.rstrip().endswith("stopped every node")
