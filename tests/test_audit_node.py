"""The block auditor on a real node: no alert storm on a healthy cluster, one alert for a sick block."""

from __future__ import annotations

import time

import numpy as np
import pytest

from corec_node.client import Client
from corec_node.wire import ENTITY_DTYPE
from meshutil import eventually

pytestmark = pytest.mark.timeout(120)


def anomaly_alerts(node) -> list[dict[str, str]]:
    return [e for e in node.log_events() if e.get("event") == "alert" and e.get("kind") == "audit_anomaly"]


def test_healthy_blocks_raise_no_alert_and_a_sick_block_raises_one(cluster):
    node = cluster.start("a", extra_env={"COREC_ENGINE_TICK_INTERVAL": "0.2"}).wait_ready()
    n = 300_000  # 300 blocks in 3 channels: enough rows for the auditor's first fit
    recs = np.zeros(n, ENTITY_DTYPE)
    recs["channel"] = np.arange(n) // 100_000
    recs["id"] = np.arange(n) % 100_000
    recs["active"] = 1
    rng = np.random.default_rng(11)
    sick = (recs["channel"] == 1) & (recs["id"] // 1000 == 5)  # block 1:5

    def stream(seconds: float, shift: float) -> None:
        end = time.monotonic() + seconds
        with Client(node.addr) as c:
            while time.monotonic() < end:
                recs["value"] = rng.normal(20, 2, n)
                recs["value"][sick] += shift
                c.send(recs)
                time.sleep(0.2)  # a tick's worth

    stream(1.0, 0.0)
    eventually(lambda: node.ctl("status")["audit_fits"] >= 1, 30)
    stream(4.0, 0.0)  # about 20 audits of healthy blocks
    assert anomaly_alerts(node) == []
    stream(3.0, 10.0)  # block 1:5 reads 5 sigma high from now on
    eventually(lambda: anomaly_alerts(node), 10)
    stream(1.0, 10.0)
    alerts = anomaly_alerts(node)
    assert len(alerts) == 1, alerts  # one alert for the episode, not one a tick
    assert alerts[0]["block"] == str(1 << 32 | 5) and "mean" in alerts[0]["text"]
