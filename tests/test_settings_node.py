"""The cluster's committed settings on real nodes: a node whose file disagrees says so,
alerts, and runs with the committed values; ``settings set`` on the leader changes them for
every node, each restarting in place (the same process), or, for the tick interval, while
it runs; the founding keys cannot change."""

from __future__ import annotations

import json
import subprocess
import sys

from meshutil import eventually

from corec_node.testing.cluster import Cluster, voters_agree


def _cli(node, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "corec_node", *args, "--data-dir", str(node.data_dir)],
                          capture_output=True, text=True, timeout=60)


def _settings(node) -> dict:
    out = _cli(node, "settings", "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _answers(node, check) -> bool:
    try:
        return bool(check(_settings(node)))
    except (AssertionError, json.JSONDecodeError):
        return False  # restarting: its control socket is not there yet


def test_a_node_runs_with_the_committed_settings_and_set_changes_them_everywhere(tmp_path):
    cluster = Cluster(tmp_path)
    try:
        a = cluster.start("a").wait_ready()
        b = cluster.start("b", join=[a.addr], extra_env={"COREC_ENGINE_REPLICAS": "2"}).wait_ready()
        nodes = [a, b]
        pids = {n.name: n.proc.pid for n in nodes}
        eventually(lambda: voters_agree(nodes, ["a", "b"]), 30, message="two voters")

        # b's file says 2 copies; a founded the cluster with 1: b runs with 1 and says so
        eventually(lambda: _answers(b, lambda s: s["running"]["engine.replicas"] == "1"), 40,
                   message="b runs with the committed replicas")
        s = _settings(b)
        assert s["committed"]["engine.replicas"] == "1" and s["file"]["engine.replicas"] == "2"
        assert s["differences"] == {"engine.replicas": {"file": "2", "committed": "1"}}
        assert b.proc.poll() is None and b.proc.pid == pids["b"], "restarted in place: the same process"
        events = [e for e in b.log_events() if e.get("event") == "cluster_setting_differs"]
        assert events and events[0]["key"] == "engine.replicas" and events[0]["committed"] == "1"
        eventually(lambda: any(al["kind"] == "cluster_settings" and al["node"] == "b"
                               for al in a.ctl("alerts")), 20, message="b's alert reaches a")
        text = _cli(b, "settings")
        assert "this node's file says 2: running with 1" in text.stdout, text.stdout

        # the founding keys stay; a follower sends the operator to the leader
        out = _cli(a, "settings", "set", "engine.block_size=500")
        assert out.returncode == 1 and "engine.block_size is fixed" in out.stderr, out.stderr
        assert len(out.stderr.strip().splitlines()) == 1
        follower = b if a.ctl("leader")["leader"] == "a" else a
        leader = a if follower is b else b
        out = _cli(follower, "settings", "set", "engine.replicas=2")
        assert out.returncode == 1 and f"run it on {leader.name}" in out.stderr, out.stderr

        # the leader commits 2 copies: both nodes restart in place and run with them
        out = _cli(leader, "settings", "set", "engine.replicas=2", "--json")
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["changed"] == {"engine.replicas": "2"}
        for n in nodes:
            eventually(lambda: _answers(n, lambda s: s["running"]["engine.replicas"] == "2"
                                        and s["committed"]["engine.replicas"] == "2"), 40,
                       message=f"{n.name} runs with the new value")
            assert n.proc.poll() is None and n.proc.pid == pids[n.name]
        assert _settings(b)["differences"] == {}, "b's file now agrees with the cluster"
        assert _settings(a)["differences"] == {"engine.replicas": {"file": "1", "committed": "2"}}
        assert any(e.get("event") == "cluster_settings_changed" for e in a.log_events())
        try:
            eventually(lambda: voters_agree(nodes, ["a", "b"]) and all(
                sorted(n.members().values()) == ["alive", "alive"] for n in nodes), 30, message="the cluster is back")
        except AssertionError as exc:  # say what each node sees
            seen = {n.name: (n.voters(), n.members(), [e.get("event") for e in n.log_events()][-12:]) for n in nodes}
            raise AssertionError(f"{exc}; voters, members and last events on each node: {seen}") from None

        # the tick interval changes while the nodes run: no restart
        restarts = {n.name: sum(e.get("event") == "ready" for e in n.log_events()) for n in nodes}
        leader = next(n for n in nodes if n.name == a.ctl("leader")["leader"])
        assert _cli(leader, "settings", "set", "engine.tick_interval=0.5").returncode == 0
        for n in nodes:
            eventually(lambda: _answers(n, lambda s: s["running"]["engine.tick_interval"] == "0.5"), 20,
                       message=f"{n.name} ticks every 0.5 s")
            assert any(e.get("event") == "cluster_settings_applied" for e in n.log_events())
            assert sum(e.get("event") == "ready" for e in n.log_events()) == restarts[n.name], "not restarted"
    finally:
        cluster.close()
