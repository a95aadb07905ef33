"""Alerts cluster-wide on real nodes: an alert raised on one node is kept by every node
under its raiser's name and uid, passed to their corec_alert hooks marked remote, and
listed by `corec-node alerts` from any node."""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
from records import entities

from corec_node.client import Client
from corec_node.testing.cluster import Cluster, eventually

pytestmark = pytest.mark.timeout(180)

PROBE = '''
    """On node a, raises one alert about the first block of its rows; on every node, writes
    each alert its hook is given to <data dir>/alerts.jsonl (a plugin is not handed the
    alerts it raised itself)."""
    import json
    from corec_node.hookspecs import hookimpl

    RAISED = []

    @hookimpl
    def corec_block_aggregates(node, tick, aggregates):
        if node.name == "a" and not RAISED and aggregates:
            block = aggregates[0]["block"]
            RAISED.append(block)
            node.raise_alert("probe_hot", f"block {block >> 32}:{block & 0xFFFFFFFF} is too hot", severity="critical",
                             block=block, value=99.5)

    @hookimpl
    def corec_alert(node, alert):
        with open(node.data_dir / "alerts.jsonl", "a") as f:
            f.write(json.dumps({k: alert.get(k) for k in ("kind", "node", "remote", "severity", "block", "uid")}) + "\\n")
'''


def alerts(node, *extra: str) -> list[dict]:
    out = subprocess.run([sys.executable, "-m", "corec_node", "alerts", "--json", *extra, "--data-dir",
                          str(node.data_dir)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_an_alert_raised_on_one_node_is_listed_by_every_node(tmp_path):
    organs = tmp_path / "organs"
    organs.mkdir()
    (organs / "probe.py").write_text(textwrap.dedent(PROBE))
    env = {"COREC_PLUGINS_PATHS": str(organs), "COREC_ENGINE_TICK_INTERVAL": "0.2"}
    cluster = Cluster(tmp_path)
    try:
        a = cluster.start("a", extra_env=env)
        nodes = [a] + [cluster.start(n, join=[a.addr], extra_env=env) for n in ("b", "c")]
        for node in nodes:
            node.wait_ready(30)
        eventually(lambda: all(len(n.members()) == 3 and set(n.members().values()) == {"alive"} for n in nodes), 30,
                   message="three alive members")
        with Client(a.addr) as client:  # 5 blocks: a owns some
            client.send(entities(np.arange(5000), 1, 20.0))
            client.flush(10)

        def everywhere() -> list[list[dict]]:
            lists = [[r for r in alerts(n) if r["kind"] == "probe_hot"] for n in nodes]
            return lists if all(lists) else None

        lists = eventually(everywhere, 60, interval=0.5, message="the alert listed by every node")
        uids = {r["uid"] for rows in lists for r in rows}
        assert len(uids) == 1 and all(len(rows) == 1 for rows in lists)  # one alert, kept once each
        block = lists[0][0]["block"]
        name = f"{block >> 32}:{block & 0xFFFFFFFF}"
        for rows in lists:
            r = rows[0]
            assert (r["node"], r["severity"], r["block"], r["name"], r["text"]) == (
                "a", "critical", block, name, f"block {name} is too hot")
        for node in nodes[1:]:  # the peers' hooks saw it, marked remote (a's raiser is not handed its own)
            seen = eventually(lambda n=node: [json.loads(line) for line in (n.data_dir / "alerts.jsonl").read_text()
                                              .splitlines() if '"probe_hot"' in line]
                              if (n.data_dir / "alerts.jsonl").exists() else None, 30, message=f"{node.name}'s hook")
            assert (seen[0]["remote"], seen[0]["node"], seen[0]["severity"], seen[0]["block"], seen[0]["uid"]) == (
                True, "a", "critical", block, next(iter(uids)))
        assert alerts(nodes[2], "--since", "3600") and not alerts(nodes[2], "--since", "0")
        text = subprocess.run([sys.executable, "-m", "corec_node", "alerts", "--data-dir", str(nodes[1].data_dir)],
                              capture_output=True, text=True, timeout=30).stdout
        assert "probe_hot" in text and " a " in text and "critical" in text
    finally:
        cluster.close()


class _Sink(http.server.BaseHTTPRequestHandler):
    """A webhook and an Alertmanager: the first POST to each path fails (500), to be retried."""

    got: list[tuple[str, object]] = []
    failed: set[str] = set()

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path not in self.failed:
            self.failed.add(self.path)
            self.send_response(500)
        else:
            self.got.append((self.path, body))
            self.send_response(200)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


EVERYWHERE = '''
    """On every node, once rows come: the same alert about block 1:0 (as a threshold plugin
    on every holder of a block would raise it)."""
    from corec_node.hookspecs import hookimpl

    RAISED = []

    @hookimpl
    def corec_block_aggregates(node, tick, aggregates):
        if not RAISED and aggregates:
            RAISED.append(tick)
            node.raise_alert("probe_hot", "block 1:0 is too hot", severity="critical", block=1 << 32, value=99.5)
'''


def test_the_nucleus_sends_an_episode_once_to_a_webhook_and_alertmanager_with_retries(tmp_path):
    organs = tmp_path / "organs"
    organs.mkdir()
    (organs / "probe.py").write_text(textwrap.dedent(EVERYWHERE))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    env = {"COREC_PLUGINS_PATHS": str(organs), "COREC_ENGINE_TICK_INTERVAL": "0.2",
           "COREC_ALERTS_WEBHOOK": f"{base}/hook", "COREC_ALERTS_ALERTMANAGER": base}
    cluster = Cluster(tmp_path)
    try:
        a = cluster.start("a", extra_env=env)
        nodes = [a] + [cluster.start(n, join=[a.addr], extra_env=env) for n in ("b",)]
        for node in nodes:
            node.wait_ready(30)
        eventually(lambda: all(len(n.members()) == 2 and n.ctl("leader")["leader"] for n in nodes), 30,
                   message="two members, one leader")
        with Client(a.addr) as client:
            client.send(entities(np.arange(5000), 1, 20.0))
            client.flush(10)
        eventually(lambda: {p for p, _ in _Sink.got} == {"/hook", "/api/v2/alerts"}, 60, interval=0.2,
                   message="both sinks took the alert after a failed try")
        # both raised it, both nodes keep both, and the sinks hear the episode once
        eventually(lambda: all({r["node"] for r in alerts(n)} == {"a", "b"} for n in nodes), 30,
                   message="every node keeps both alerts")
        got = dict(_Sink.got)
        assert len(_Sink.got) == 2, _Sink.got  # one episode: one webhook call, one Alertmanager call
        hook = got["/hook"]
        assert (hook["kind"], hook["severity"], hook["cluster"], hook["block"]) == ("probe_hot", "critical", "corec", 1 << 32)
        (am,) = got["/api/v2/alerts"]
        assert am["labels"]["alertname"] == "probe_hot" and am["labels"]["node"] == hook["node"] in ("a", "b")
        assert am["labels"]["severity"] == "critical" and am["labels"]["block"] == "1:0"
        assert am["annotations"]["uid"] == hook["uid"] in {r["uid"] for r in alerts(nodes[1])}
    finally:
        cluster.close()
        server.shutdown()


def test_drift_names_the_member_whose_settings_differ(tmp_path):
    cluster = Cluster(tmp_path)
    try:
        a = cluster.start("a")
        nodes = [a, cluster.start("b", join=[a.addr]),
                 cluster.start("c", join=[a.addr], extra_env={"COREC_ENGINE_EVOLVE_EVERY": "7"})]
        for node in nodes:
            node.wait_ready(30)

        def drift(node, *extra: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "corec_node", "drift", *extra, "--data-dir",
                                   str(node.data_dir)], capture_output=True, text=True, timeout=30)

        out = eventually(lambda: (lambda o: o if len(json.loads(o.stdout)["members"]) == 3 else None)(
            drift(a, "--json")), 30, message="every member's settings heard")
        assert out.returncode == 1
        report = json.loads(out.stdout)
        assert report["unknown"] == [] and report["keys"] >= 8
        assert report["differences"] == [{"key": "engine.evolve_every", "values": {"a": "60", "b": "60", "c": "7"}}]
        text = drift(nodes[1])
        assert text.returncode == 1 and text.stdout.startswith("drift: 1 of ") and "engine.evolve_every" in text.stdout
        nodes[2].stop()
        eventually(lambda: drift(a).returncode == 0, 30, message="no drift once c left")
        assert drift(a).stdout.startswith("no drift: 2 members agree on ")
    finally:
        cluster.close()


def test_an_episode_is_one_kind_about_one_block_within_the_window():
    from corec_node.shell.alerts import Episodes

    e = Episodes(window=300.0, kept=3)
    hot = {"kind": "hot", "block": 7}
    assert e.first(hot, 0.0) and not e.first({**hot, "node": "b"}, 10.0)  # another node, same episode
    assert e.first({"kind": "hot", "block": 8}, 10.0) and e.first({"kind": "cold", "block": 7}, 10.0)
    assert e.first(hot, 301.0)  # the window passed: a new episode
    assert e.folded == 1
    for b in range(10, 20):  # bounded: the oldest episodes are forgotten
        e.first({"kind": "hot", "block": b}, 400.0)
    assert len(e._last) == 3
