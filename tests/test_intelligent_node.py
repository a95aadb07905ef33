"""Intelligent channels on a real node (shell/intelligence.py): rows of an `engine.intelligent`
channel carry the torch forecaster's `nano_forecast` and `nano_error`, other channels' rows
do not; torch loads only in the trainer's child, which is reaped when the node stops; the
weights come back after a restart; a replica promoted when its owner dies forecasts, with
its scaled error, from its first row. Plus the rows' wire round trip and the scaled error."""

from __future__ import annotations

import json
import math
import os
import sqlite3
import subprocess
import sys
import time
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest
from meshutil import NodeProc, WaveStream, eventually
from records import entities

from corec_node.client import Client
from corec_node.shell.intelligence import WINDOW, _Block
from corec_node.storage import LocalStore
from corec_node.wire import decode_message, encode_message
from corec_node.wire.messages import Aggregates

pytestmark = pytest.mark.timeout(120)

SMART, PLAIN = 1, 2  # the intelligent channel, and one that is not
ENV = {"COREC_ENGINE_TICK_INTERVAL": "0.2", "COREC_ENGINE_INTELLIGENT": str(SMART),
       "COREC_ENGINE_INTELLIGENT_SAVE_EVERY": "10", "COREC_ENGINE_AUDIT": "false",
       "COREC_ENGINE_EVOLVE_EVERY": "0"}
needs_torch = pytest.mark.skipif(find_spec("torch") is None,
                                 reason="torch is not installed (the optional 'ml' extra; CI installs it)")


def stream(node: NodeProc) -> WaveStream:
    """3 blocks of SMART and 1 of PLAIN, each a period-6 wave plus noise, a step a tick."""
    return WaveStream(node, [(SMART, 3000), (PLAIN, 1000)], period=6, every=0.2, seed=5)


def blocks_json(node: NodeProc) -> list[dict]:
    out = subprocess.run([sys.executable, "-m", "corec_node", "blocks", "--json", "--data-dir", str(node.data_dir)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def maps(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] in "ZX"  # a zombie is gone too
    except OSError:
        return True


def test_rows_with_the_nano_keys_cross_the_wire():
    row = {"block": (SMART << 32) | 2, "channel": SMART, "owner": "a", "count": 1000, "mean": 10.5,
           "forecast": 10.4, "anomaly": True, "nano_forecast": 10.25, "nano_error": None}
    frames = encode_message(Aggregates(tick=7, rows=(row, {**row, "nano_error": 0.61})), sender="a", seq=1)
    rows = decode_message(frames)[1].msg.rows
    assert rows == (row, {**row, "nano_error": 0.61})


def test_the_scaled_error_is_against_naive_last_value():
    b = _Block()
    for t in range(WINDOW + 5):  # y alternates 0, 2: naive errs by 2, a forecast of 1 by 1
        y = 2.0 * (t % 2)
        b.score(y, t)
        assert (b.error() is None) == (b.scored < WINDOW)
        b.target, b.forecast = t + 1, 1.0
    assert b.error() == pytest.approx(0.5)
    b.target = 99  # a forecast for another tick is never scored
    scored = b.scored
    b.score(5.0, 50)
    assert b.scored == scored and b.last == 5.0


async def test_weights_are_kept_per_block_in_the_local_store(tmp_path):
    store = await LocalStore.open(tmp_path / "corec.db", node="a")
    try:
        assert await store.load_nano_weights() == {}
        assert await store.save_nano_weights([(1 << 32, b"one"), ((1 << 32) | 1, b"two")]) == 2
        await store.save_nano_weights([(1 << 32, b"newer")])  # replaces that block's, keeps the other
        assert await store.load_nano_weights() == {1 << 32: b"newer", (1 << 32) | 1: b"two"}
    finally:
        await store.close()


@needs_torch
def test_an_intelligent_channel_forecasts_in_a_child_and_keeps_its_weights(cluster):
    node = cluster.start("a", extra_env={**ENV, "COREC_ENGINE_INTELLIGENT_TRAIN_EVERY": "3"}).wait_ready()
    with stream(node):
        def forecasts() -> list[dict] | None:
            rows = blocks_json(node)
            smart = [r for r in rows if r["channel"] == SMART]
            ok = len(smart) == 3 and all(isinstance(r.get("nano_forecast"), float) for r in smart)
            return rows if ok else None
        rows = eventually(forecasts, 60, interval=0.3, message="every block of the intelligent channel has nano_forecast")
        assert all(math.isfinite(r["nano_forecast"]) and "nano_error" in r for r in rows if r["channel"] == SMART)
        plain = [r for r in rows if r["channel"] == PLAIN]
        assert plain and all("nano_forecast" not in r and "nano_error" not in r for r in plain)
        # the scaled error comes once WINDOW ticks are scored; the seasonal wave beats naive
        eventually(lambda: all(isinstance(r.get("nano_error"), float) for r in blocks_json(node)
                               if r["channel"] == SMART), 30, interval=0.3, message="nano_error on every block")
        intel = node.ctl("status")["intelligent"]
        assert intel["channels"] == [SMART] and intel["running"] and intel["blocks"] == 3 and intel["train_every"] == 3
        assert intel["answered"] > 0 and intel["child_rss_mb"] > 0 and intel["restarts"] == 0
        child = intel["child_pid"]
        assert child in node.pids()  # a child of the node process
        assert "libtorch" in maps(child) and "libtorch" not in maps(node.proc.pid)  # torch only in the child
        eventually(lambda: node.ctl("status")["intelligent"]["saved_blocks"] >= 3, 20, message="weights saved")
    assert node.stop() == 0
    assert gone(child), "the trainer child outlived the node"
    with sqlite3.connect(f"file:{node.data_dir / 'corec.db'}?mode=ro", uri=True) as db:
        saved = dict(db.execute("SELECT block, length(weights) FROM nano_weights").fetchall())
    assert {b >> 32 for b in saved} == {SMART} and len(saved) == 3 and all(n > 0 for n in saved.values())

    node.start().wait_ready()
    with stream(node):
        intel = eventually(lambda: (s := node.ctl("status")["intelligent"])["restored_blocks"] == 3 and s, 30,
                           message="the saved weights are loaded into the trainer")
        assert intel["load_errors"] == 0
        # the restored models forecast again (the scaled error's sums live in the node process:
        # they start again, the models do not)
        eventually(lambda: all(isinstance(r.get("nano_forecast"), float) for r in blocks_json(node)
                               if r["channel"] == SMART), 30, interval=0.3, message="forecasts after the restart")
    assert any(e.get("event") == "intelligent_started" for e in node.log_events())


def test_no_intelligent_channel_no_trainer(cluster):
    node = cluster.start("a", extra_env={"COREC_ENGINE_TICK_INTERVAL": "0.2", "COREC_ENGINE_AUDIT": "false"}).wait_ready()
    with Client(node.addr) as client:
        client.send(entities(np.arange(100), SMART, 1.0))
        client.flush(5)
    eventually(lambda: node.ctl("blocks", channel=SMART), 10, message="a block")
    intel = node.ctl("status")["intelligent"]
    assert intel == {"channels": [], "running": False, "off": None, "train_every": 2, "blocks": 0,
                     "restored_blocks": 0, "saved_blocks": 0}
    assert "libtorch" not in maps(node.proc.pid) and len(node.pids()) == 2  # the node and its mesh process


def test_without_torch_one_warning_and_the_node_runs_on(cluster, tmp_path):
    """A real node in an environment where torch cannot be found (a sitecustomize hides it
    from importlib's lookup): one ``intelligent_needs_torch`` warning, no child, rows as usual."""
    hide = tmp_path / "notorch"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(
        "import importlib.util as _u\n_find = _u.find_spec\n"
        "_u.find_spec = lambda name, package=None: None if name.split('.')[0] == 'torch' else _find(name, package)\n")
    path = ":".join(p for p in (str(hide), os.environ.get("PYTHONPATH", "")) if p)
    node = cluster.start("a", extra_env={**ENV, "PYTHONPATH": path}).wait_ready()
    with Client(node.addr) as client:
        for t in range(4):
            client.send(entities(np.arange(100), SMART, float(t)))
            client.flush(5)
            time.sleep(0.3)
    intel = eventually(lambda: (s := node.ctl("status")["intelligent"])["off"] and s, 10, message="off")
    assert intel["off"] == "torch is not installed" and not intel["running"]
    rows = node.ctl("blocks", channel=SMART)
    assert rows and all("nano_forecast" not in r for r in rows)
    assert [e["event"] for e in node.log_events()].count("intelligent_needs_torch") == 1
    assert len(node.pids()) == 2 and node.stop() == 0


@needs_torch
def test_with_replicas_every_holder_trains_and_only_the_owner_writes_rows(cluster):
    env = {**ENV, "COREC_ENGINE_REPLICAS": "2"}
    a = cluster.start("a", extra_env=env).wait_ready()
    b = cluster.start("b", extra_env=env, join=[a.addr]).wait_ready()
    eventually(lambda: all(n.ctl("status")["placement_members"] == ["a", "b"] for n in (a, b)), 30,
               message="both nodes own blocks")
    with stream(a):
        # two nodes, two copies: each holds all 3 blocks of the channel and trains a model for each
        eventually(lambda: all((s := n.ctl("status")["intelligent"])["blocks"] == 3 and s["answered"] > 0
                               for n in (a, b)), 60, interval=0.3, message="a model per block on both holders")
        rows = eventually(lambda: [r for r in blocks_json(a) if r["channel"] == SMART
                                   and isinstance(r.get("nano_forecast"), float)], 30, interval=0.3,
                          message="rows with nano_forecast")
        assert {r["owner"] for r in rows} <= {"a", "b"}
        owned = {n.name: n.ctl("status")["entities"] for n in (a, b)}
        assert all(owned.values()), owned  # both own some blocks, and hold the others as replicas


def test_the_blocks_table_shows_the_torch_columns_only_where_rows_carry_them():
    from corec_node.render import render_blocks

    row = {"block": (SMART << 32) | 2, "channel": SMART, "owner": "a", "count": 1000, "active": 1000, "mean": 10.0,
           "min": 9.0, "max": 11.0, "std": 0.5, "error_rate": 0.0, "fitness": 0.9, "forecast": 10.1,
           "forecast_error": 0.8, "generation": 0, "tick": 7}
    plain = render_blocks([row]).splitlines()
    assert "NANO" not in plain[0] and "N.ERR" not in plain[0]
    smart = render_blocks([{**row, "nano_forecast": 9.95, "nano_error": 0.42}]).splitlines()
    header, line = smart[0].split(), smart[1].split()
    assert line[header.index("NANO")] == "9.950" and line[header.index("N.ERR")] == "0.420"


@needs_torch
def test_a_replica_promoted_when_its_owner_dies_forecasts_with_the_model_it_trained(cluster):
    env = {**ENV, "COREC_ENGINE_REPLICAS": "2"}
    a = cluster.start("a", extra_env=env).wait_ready()
    b = cluster.start("b", extra_env=env, join=[a.addr]).wait_ready()
    c = cluster.start("c", extra_env=env, join=[a.addr]).wait_ready()
    nodes = (a, b, c)
    eventually(lambda: all(n.ctl("status")["placement_members"] == ["a", "b", "c"] for n in nodes), 30,
               message="three nodes own blocks")
    with WaveStream(a, [(SMART, 6000)], period=6, every=0.2, seed=5):
        # every holder has scored its model for WINDOW ticks: each row carries its scaled error
        rows = eventually(lambda: (rs := [r for r in blocks_json(a) if r["channel"] == SMART]) and len(rs) == 6
                          and all(isinstance(r.get("nano_error"), float) for r in rs) and rs,
                          90, interval=0.3, message="nano_error on every block")
        victim = next(n for n in (b, c) if any(r["owner"] == n.name for r in rows))
        moved = {r["block"] for r in rows if r["owner"] == victim.name}
        survivors = [n for n in nodes if n is not victim]
        victim.kill()
        # the first row each moved block gets from its new owner already has the error of a model
        # that saw WINDOW ticks: a fresh one would answer None for the next 24 ticks (4.8 s)
        first: dict[int, dict] = {}

        def promoted() -> bool:
            for r in blocks_json(a):
                if r["block"] in moved and r["owner"] != victim.name:
                    first.setdefault(r["block"], r)
            return first.keys() == moved
        eventually(promoted, 40, interval=0.2, message="the dead owner's blocks have a new owner")
        assert {r["owner"] for r in first.values()} <= {n.name for n in survivors}
        assert all(isinstance(r.get("nano_forecast"), float) and isinstance(r.get("nano_error"), float)
                   for r in first.values()), first
        assert all(n.ctl("status")["intelligent"]["restarts"] == 0 for n in survivors)
