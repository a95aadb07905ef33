"""The partition test bed's election checker (corec_node/testing/netns.py), on logs alone."""

from __future__ import annotations

from corec_node.testing.netns import check_leaders


def test_two_changes_of_one_node_in_one_millisecond_are_read_in_log_order(tmp_path):
    """A node that lost and named a leader in the same millisecond (``leader=null`` then
    ``leader=n5``) must not make the checker compare None with a name."""
    logs = {}
    for node in ("n3", "n4"):
        path = tmp_path / f"{node}.log"
        path.write_text(
            f"ts=2026-12-05T04:22:04.746Z level=info node={node} event=leader_changed leader=null term=2\n"
            f"ts=2026-12-05T04:22:04.746Z level=info node={node} event=leader_changed leader=n5 term=2\n")
        logs[node] = path
    assert check_leaders(logs, [], ["n3", "n4", "n5"]) == []
    (tmp_path / "n4.log").write_text(
        "ts=2026-12-05T04:22:04.746Z level=info node=n4 event=leader_changed leader=n4 term=2\n")
    assert any("term 2" in v for v in check_leaders(logs, [], ["n3", "n4", "n5"]))
