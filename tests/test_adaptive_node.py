"""Adaptive blocks on real nodes: forecasts in `blocks`, evolution planned by the nucleus and
run by owners (audited), genomes and forecaster state through a restart and a SIGKILL."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

import pytest
from meshutil import WaveStream

from corec_node.testing.cluster import Cluster, NodeProc, eventually, voters_agree

pytestmark = pytest.mark.timeout(300)

FAST = {"COREC_ENGINE_TICK_INTERVAL": "0.1", "COREC_ENGINE_EVOLVE_EVERY": "5"}
CHANNEL, BLOCKS = 1, 10


def stream(node: NodeProc) -> WaveStream:
    """Each block's entities follow a period-4 wave plus noise, one step per send (about a tick)."""
    return WaveStream(node, [(CHANNEL, BLOCKS * 1000)], period=4, every=0.1, seed=3)


def cli(*args: str, node: NodeProc, check: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([sys.executable, "-m", "corec_node", *args, "--data-dir", str(node.data_dir)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 or not check, out.stderr
    return out


def genomes(node: NodeProc) -> dict[int, tuple[str, int]]:
    return {r["block"]: (r["genome"], r["generation"]) for r in node.ctl("blocks", channel=CHANNEL)}


def audit(node: NodeProc, kind: str) -> list[dict]:
    with sqlite3.connect(f"file:{node.data_dir / 'corec.db'}?mode=ro", uri=True) as db:
        return [{"subject": s, "reason": r, **json.loads(d)}
                for s, r, d in db.execute("SELECT subject, reason, details FROM audit WHERE kind = ?", (kind,))]


def test_forecasts_evolve_and_what_blocks_learned_survives_a_restart(cluster):
    node = cluster.start("a", extra_env=FAST).wait_ready()
    with stream(node):
        rows = eventually(lambda: [r for r in node.ctl("blocks", channel=CHANNEL) if r["forecast"] is not None]
                          if len(node.ctl("blocks", channel=CHANNEL)) == BLOCKS else None, 30,
                          message="every block forecast")
        row = json.loads(cli("blocks", "--json", node=node).stdout)[0]
        assert {"forecast", "forecast_error", "generation", "genome"} <= set(row) and "genome_spec" not in row
        assert all(r["genome"] and r["generation"] >= 0 for r in rows)
        # the nucleus plans challengers; the owner runs them in shadow and keeps the better one
        eventually(lambda: audit(node, "genome_replaced"), 150, interval=0.5, message="a challenger won")
        replaced = audit(node, "genome_replaced")[0]
        assert replaced["challenger_mase"] < replaced["current_mase"] and replaced["parents"]
        evolved = eventually(lambda: {b: g for b, g in genomes(node).items() if g[1] > 0}, 10,
                             message="blocks show the new generation")
        assert any(e.get("event") == "evolution_planned" for e in node.log_events())
        block = next(iter(evolved))
        name = f"{block >> 32}:{block & 0xFFFFFFFF}"
        info = json.loads(cli("genome", name, "--json", node=node).stdout)
        assert (info["genome"]["id"], info["genome"]["generation"]) == evolved[block]
        assert info["genome"]["parents"] and info["held_here"] and info["owner"] == "a"
        assert any(t["kind"] == "genome_replaced" and t["challenger"] == info["genome"]["id"] for t in info["trials"])
        text = cli("genome", str(block), node=node).stdout
        assert f"genome {evolved[block][0]}, generation {evolved[block][1]}" in text
        missing = cli("genome", "9:9", node=node, check=False)
        assert missing.returncode == 1 and missing.stderr.count("\n") == 1 and "no block 9:9" in missing.stderr
    node.stop()
    node.start().wait_ready()
    with stream(node):
        eventually(lambda: len(node.ctl("blocks", channel=CHANNEL)) == BLOCKS, 30, message="blocks back")
        back = genomes(node)
        assert {b: back[b] for b in evolved} == evolved  # the same genomes, generations kept
        # the forecaster's state came back too: a fresh block has no scaled error for 48 ticks
        rows = node.ctl("blocks", channel=CHANNEL)
        assert all(r["forecast_error"] is not None for r in rows if r["block"] in evolved)
    assert any(e.get("event") == "genomes_restored" for e in node.log_events())


def test_a_replica_holds_the_owners_genome_and_keeps_it_when_the_owner_is_killed(tmp_path):
    cluster = Cluster(tmp_path)
    env = {**FAST, "COREC_ENGINE_REPLICAS": "2"}
    try:
        nodes = [cluster.start("a", extra_env=env)]
        nodes += [cluster.start(n, join=[nodes[0].addr], extra_env=env) for n in ("b", "c")]
        for node in nodes:
            node.wait_ready(30)
        eventually(lambda: voters_agree(nodes, ["a", "b", "c"]), 60, message="three voters")
        with stream(nodes[0]):
            def evolved_elsewhere() -> dict[int, tuple[str, int, str]]:
                rows = nodes[0].ctl("blocks", channel=CHANNEL)
                return {r["block"]: (r["genome"], r["generation"], r["owner"]) for r in rows
                        if r["generation"] > 0 and r["owner"] != "a"}
            evolved = eventually(evolved_elsewhere, 200, interval=0.5, message="a block of b or c evolved")
            block, (genome, generation, owner) = next(iter(evolved.items()))
            victim = next(n for n in nodes if n.name == owner)
            survivors = [n for n in nodes if n is not victim]
            victim.kill()
            eventually(lambda: all(next((r for r in n.ctl("blocks", channel=CHANNEL) if r["block"] == block),
                                        {}).get("owner") not in (None, owner) for n in survivors), 30,
                       message="the block has a new owner")
            row = next(r for r in survivors[0].ctl("blocks", channel=CHANNEL) if r["block"] == block)
            assert (row["genome"], row["generation"]) == (genome, generation) or row["generation"] > generation
    finally:
        cluster.close()
