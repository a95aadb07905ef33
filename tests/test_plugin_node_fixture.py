"""``corec_node.testing.plugin_node``: the example corec-alerts plugin inside a real node,
from its source folder (``target``), as a plugin author tests one not installed yet."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from meshutil import eventually
from piputil import is_installed
from records import entities

# the fixture; a venv where corec-node is installed has it already (entry point pytest11)
pytest_plugins = ["corec_node.testing.pytest_plugin"]

ALERTS_DIR = Path(__file__).resolve().parent.parent / "plugins" / "corec-alerts"


@pytest.fixture
def alerts_source() -> dict:
    """How to run corec-alerts: from its source folder, unless this venv has it installed
    (then its entry point: two plugins of one name would not load)."""
    if is_installed("corec-alerts"):
        return {}
    return {"target": "corec_alerts:plugin", "pythonpath": [ALERTS_DIR]}


def test_alerts_plugin_in_a_real_node(plugin_node, alerts_source):
    node = plugin_node("alerts", settings={"thresholds": {"3": {"max": 40.0}}}, **alerts_source)
    row = node.info()
    assert row["state"] == "active" and row["hooks"] == ["corec_configure", "corec_block_aggregates"]
    assert row["source"] == ("path" if alerts_source else "entrypoint")
    assert {p["name"] for p in node.plugins() if p["state"] == "active"} == {"alerts"}  # alone

    hot = np.where(np.arange(3000) < 1000, 50.0, 20.0)  # block 3:0 too hot
    assert node.send(entities(np.arange(3000), 3, hot)) == 3000
    raised = eventually(lambda: node.alerts("threshold_exceeded"), 20, message="threshold alert")
    assert {int(a["block"]) for a in raised} == {3 << 32}
    assert node.info()["faults"] == 0 and node.info()["calls"] > 0

    # `corec-node plugins` asks this node: the node's view, the same rows
    out = subprocess.run([sys.executable, "-m", "corec_node", "plugins", "--json", "--data-dir", str(node.data_dir)],
                         capture_output=True, text=True, timeout=60)
    rows = {r["name"]: r for r in json.loads(out.stdout)}
    assert rows["alerts"]["view"] == "node" and rows["alerts"]["state"] == "active"
    assert node.stop() == 0


def test_a_bad_setting_fails_the_fixture_with_the_nodes_words(plugin_node, alerts_source):
    from corec_node.testing import PluginNodeError  # after pytest took the plugin module in

    with pytest.raises(PluginNodeError, match=r"exited with code 2(.|\n)*plugin\.alerts\.field: expected one of mean"):
        plugin_node("alerts", settings={"field": "temperature"}, **alerts_source, timeout=60)
