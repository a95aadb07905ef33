"""`corec-node explain` on real nodes: node a asks an OpenAI-style endpoint (a small HTTP
server in the test, on loopback) and answers with its text beside the account by rules;
node b has no endpoint and answers by rules; unknown blocks and alerts exit 1 naming why."""

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
    """On node a: one alert about the first block of its rows."""
    from corec_node.hookspecs import hookimpl

    RAISED = []

    @hookimpl
    def corec_block_aggregates(node, tick, aggregates):
        if node.name == "a" and not RAISED and aggregates:
            block = aggregates[0]["block"]
            RAISED.append(block)
            node.raise_alert("probe_hot", f"block {block >> 32}:{block & 0xFFFFFFFF} is too hot", severity="critical",
                             block=block, value=99.5)
'''


class _Endpoint(http.server.BaseHTTPRequestHandler):
    got: list[tuple[dict, dict]] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.got.append((dict(self.headers), body))
        data = json.dumps({"model": body.get("model"), "usage": {"total_tokens": 123}, "choices": [
            {"message": {"role": "assistant", "content": "The block ran hot once; nothing else happened."}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


def explain(node, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "corec_node", "explain", *args, "--data-dir", str(node.data_dir)],
                          capture_output=True, text=True, timeout=60)


def test_explain_answers_with_and_without_the_endpoint(tmp_path):
    organs = tmp_path / "organs"
    organs.mkdir()
    (organs / "probe.py").write_text(textwrap.dedent(PROBE))
    _Endpoint.got = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Endpoint)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = {"COREC_PLUGINS_PATHS": str(organs), "COREC_ENGINE_TICK_INTERVAL": "0.2", "COREC_ENGINE_AUDIT": "false"}
    llm = {"COREC_EXPLAIN_URL": f"http://127.0.0.1:{server.server_address[1]}/v1",
           "COREC_EXPLAIN_API_KEY": "sk-node-test", "COREC_EXPLAIN_MODEL": "tiny-model"}
    cluster = Cluster(tmp_path)
    try:
        a = cluster.start("a", extra_env={**base, **llm})
        a.wait_ready(30)
        b = cluster.start("b", join=[a.addr], extra_env=base).wait_ready(30)
        eventually(lambda: all(len(n.members()) == 2 and set(n.members().values()) == {"alive"} for n in (a, b)), 30,
                   message="two alive members")
        with Client(a.addr) as client:
            client.send(entities(np.arange(3000), 1, 20.0))
            client.flush(10)

        def raised() -> dict | None:
            rows = [r for r in a.ctl("alerts") if r["kind"] == "probe_hot"]
            return rows[0] if rows else None

        alert = eventually(raised, 60, interval=0.3, message="the probe's alert")
        name = alert["name"]

        def account(node, *args: str) -> dict | None:
            out = explain(node, name, "--json", *args)
            assert out.returncode == 0, out.stderr
            got = json.loads(out.stdout)
            return got if any(f["what"] == "alert" for f in got["facts"]) else None

        # a: the block it raised the alert about, reworded by the endpoint
        got = eventually(lambda: account(a), 30, interval=0.5, message="a's account of the block")
        assert (got["kind"], got["name"], got["source"], got["node"]) == ("block", name, "rules", "a")
        assert got["refined"] is True and got["model"] == "tiny-model"
        assert got["text"] == "The block ran hot once; nothing else happened."
        assert f"Block {name} is block" in got["summary"] and "probe_hot (critical) from a" in got["summary"]
        assert any(f["what"] == "owner" for f in got["facts"]) or "does not hold it" in got["summary"]
        headers, body = _Endpoint.got[-1]
        assert headers["Authorization"] == "Bearer sk-node-test" and body["model"] == "tiny-model"
        assert name in body["messages"][1]["content"]

        text = explain(a, name)
        assert text.returncode == 0, text.stderr
        assert text.stdout.startswith("The block ran hot once") and "timeline:" in text.stdout
        assert "probe_hot raised by a" in text.stdout

        local = json.loads(explain(a, name, "--json", "--local").stdout)
        assert local["refined"] is False and local["fallback"] == "not asked (--local)"
        assert local["facts"] and "text" not in local and "model" not in local

        about = json.loads(explain(a, alert["uid"][:10], "--json").stdout)
        assert (about["kind"], about["uid"], about["name"], about["refined"]) == ("alert", alert["uid"], name, True)
        assert f"Alert {alert['uid']} (probe_hot, critical) was raised by a (this node)" in about["summary"]

        # b: no endpoint; the peer's alert is there, the account is by rules
        plain = eventually(lambda: account(b), 30, interval=0.5, message="b's account of the block")
        assert plain["refined"] is False and plain["fallback"] == "no endpoint configured (explain.url)"
        assert "text" not in plain and "probe_hot (critical) from a" in plain["summary"]
        shown = explain(b, name)
        assert shown.returncode == 0 and shown.stdout.startswith(f"Block {name} is block")
        assert "(by rules: no endpoint configured (explain.url))" in shown.stdout

        # all digits: tried as a block id, then as an alert uid prefix; neither names the block's miss
        for node, subject, words in ((a, "9:99", "no block 9:99"), (b, "deadbeef", "no alert deadbeef"),
                                     (a, "12345678", "no block 0:12345678")):
            out = explain(node, subject)
            assert out.returncode == 1 and words in out.stderr and len(out.stderr.strip().splitlines()) == 1
        assert explain(a, "nonsense").returncode == 2
    finally:
        cluster.close()
        server.shutdown()
        server.server_close()
