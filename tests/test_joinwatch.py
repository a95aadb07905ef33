"""Join peers that never answer are visible (JoinWatch), and with join_required the node exits."""

from __future__ import annotations

from meshutil import eventually

from corec_node.shell.joinwatch import WARN_FIRST, JoinWatch
from corec_node.testing.cluster import free_port


def test_unanswered_joins_warn_at_growing_intervals_until_one_answers():
    watch = JoinWatch(["10.0.0.1:7400", "10.0.0.2:7400"], 100.0)
    pending = {"10.0.0.1:7400", "10.0.0.2:7400"}
    said = [(t, watch.check(pending, 100.0 + t)) for t in range(0, 60)]
    warnings = [t for t, news in said if news is not None]
    assert warnings[0] == WARN_FIRST and warnings == sorted(warnings) and len(warnings) >= 3
    gaps = [b - a for a, b in zip(warnings, warnings[1:], strict=False)]
    assert gaps == sorted(gaps) and gaps[-1] > gaps[0]  # backing off, not one a second
    news = watch.check({"10.0.0.1:7400"}, 200.0)
    assert news is not None and news.event == "join_answered" and news.addrs == ("10.0.0.2:7400",)
    assert watch.done and watch.check(set(), 300.0) is None


def test_an_answer_before_any_warning_says_nothing_and_required_gives_up_in_time():
    quiet = JoinWatch(["a:1"], 0.0, required=True, timeout=10.0)
    assert quiet.check({"a:1"}, 1.0) is None and quiet.check(set(), 2.0) is None and quiet.done
    strict = JoinWatch(["a:1"], 0.0, required=True, timeout=10.0)
    events = [news.event for t in range(12) if (news := strict.check({"a:1"}, float(t)))]
    assert events == ["join_unanswered", "join_failed"]
    assert JoinWatch([], 0.0).done  # nothing to join: nothing to say


def test_a_node_whose_join_peer_never_answers_logs_it_and_exits_when_required(cluster):
    nobody = f"127.0.0.1:{free_port()}"
    alone = cluster.start("alone", join=[nobody]).wait_ready()
    events = eventually(lambda: [e for e in alone.log_events() if e.get("event") == "join_unanswered"], 20)
    assert events[0]["peers"] == nobody and events[0]["level"] == "warning"
    strict = cluster.start("strict", join=[nobody], extra_env={"COREC_MESH_JOIN_REQUIRED": "true",
                                                                "COREC_MESH_JOIN_TIMEOUT": "3"})
    assert strict.proc.wait(30) == 1
    failed = [e for e in strict.log_events() if e.get("event") == "join_failed"]
    assert len(failed) == 1 and failed[0]["peers"] == nobody and "mesh.join_required" in failed[0]["detail"]
