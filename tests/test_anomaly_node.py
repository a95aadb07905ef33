"""Forecast anomalies on a real node: a block whose values jump gets one `forecast_anomaly`
alert, listed by `corec-node alerts --json` and the control socket's `alerts`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from records import entities

from corec_node.testing.cluster import NodeProc, eventually

pytestmark = pytest.mark.timeout(180)

FAST = {"COREC_ENGINE_TICK_INTERVAL": "0.1"}
CHANNEL = 3
BLOCK = CHANNEL << 32  # the first block of the channel: ids 0..999


def cli(*args: str, node: NodeProc | None = None) -> str:
    where = ["--data-dir", str(node.data_dir)] if node is not None else []
    out = subprocess.run([sys.executable, "-m", "corec_node", *args, *where],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout


def send(node: NodeProc, path: Path, value: float) -> None:
    path.write_bytes(entities(range(1000), CHANNEL, value).tobytes())
    cli("send", "--to", node.addr, "--file", str(path))


def forecast_alerts(node: NodeProc) -> list[dict]:
    return [a for a in json.loads(cli("alerts", "--json", node=node)) if a["kind"] == "forecast_anomaly"]


def test_a_block_whose_values_jump_raises_one_forecast_anomaly(cluster, tmp_path):
    node = cluster.start("a", extra_env=FAST).wait_ready()
    send(node, tmp_path / "calm.bin", 10.0)

    def row() -> dict | None:
        return next((r for r in node.ctl("blocks", channel=CHANNEL) if r["block"] == BLOCK), None)

    # the sensitivity judges only once the block's window (48 ticks) is scored
    eventually(lambda: (r := row()) is not None and r["forecast_error"] is not None, 60,
               message="the block's forecast is scored")
    assert forecast_alerts(node) == []
    send(node, tmp_path / "jump.bin", 30.0)
    (alert,) = eventually(lambda: forecast_alerts(node), 30, message="a forecast_anomaly alert")
    assert alert["severity"] == "warning" and alert["block"] == BLOCK and alert["node"] == "a"
    facts = alert["details"]
    assert (facts["value"], facts["forecast"], facts["channel"]) == (30.0, 10.0, CHANNEL)
    assert facts["sigmas"] > 4 and "robust sigmas from its forecast 10" in alert["text"]
    # a level shift is one episode: the flags that follow while the forecaster catches up are not alerts
    eventually(lambda: (r := row()) is not None and abs(r["forecast"] - 30.0) < 1e-3, 30,
               message="the forecaster caught up")
    assert len(forecast_alerts(node)) == 1
    audit = [r for r in node.ctl("alerts") if r["kind"] == "forecast_anomaly"]
    assert len(audit) == 1
