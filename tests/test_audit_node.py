"""The block auditor on a real node: no alert storm on a healthy cluster, one alert for a sick block."""

from __future__ import annotations

import numpy as np
import pytest
from meshutil import eventually
from records import entities

from corec_node.client import Client

pytestmark = pytest.mark.timeout(400)


def anomaly_alerts(node) -> list[dict[str, str]]:
    return [e for e in node.log_events() if e.get("event") == "alert" and e.get("kind") == "audit_anomaly"]


def test_healthy_blocks_raise_no_alert_and_a_sick_block_raises_one(cluster):
    node = cluster.start("a", extra_env={"COREC_ENGINE_TICK_INTERVAL": "0.2"}).wait_ready()
    n = 300_000  # 300 blocks in 3 channels: enough rows for the auditor's first fit
    recs = entities(np.arange(n) % 100_000, np.arange(n) // 100_000)  # values: set by each send
    rng = np.random.default_rng(11)
    sick = (recs["channel"] == 1) & (recs["id"] // 1000 == 5)  # block 1:5

    def tick() -> int:
        """The engine's tick, from the aggregates it publishes."""
        return max((r["tick"] for r in node.ctl("blocks", channel=1)), default=-1)

    def fits() -> int:
        return node.ctl("status")["audit_fits"]

    def stream(shift: float, until, timeout: float = 90):
        """Send every entity once a tick's worth (0.2 s), with fresh values and block 1:5
        shifted by ``shift``, until ``until()`` holds: windows counted in ticks and audits,
        not seconds, so a slow machine makes them longer, never emptier."""
        with Client(node.addr) as c:
            def send_then_check():
                recs["value"] = rng.normal(20, 2, n)
                recs["value"][sick] += shift
                c.send(recs)
                return until()

            return eventually(send_then_check, timeout, interval=0.2)

    stream(0.0, lambda: fits() >= 1)  # enough rows for the auditor's first fit
    t, f = tick(), fits()
    stream(0.0, lambda: tick() >= t + 20 and fits() >= f + 2)  # about 20 audits of healthy blocks
    assert anomaly_alerts(node) == []
    stream(10.0, lambda: anomaly_alerts(node))  # block 1:5 reads 5 sigma high from now on
    t = tick()
    stream(10.0, lambda: tick() >= t + 5)  # the episode goes on for 5 more ticks
    alerts = anomaly_alerts(node)
    assert len(alerts) == 1, alerts  # one alert for the episode, not one a tick
    assert alerts[0]["block"] == str(1 << 32 | 5) and "mean" in alerts[0]["text"]
