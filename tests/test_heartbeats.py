"""Core rule 15 on real processes: a leader sends its heartbeats straight to the voters and
publishes one in ten (over the overlay's tree), so a member that is not a voter handles a
tenth of them, while the leader's lease (acked by the voters) holds and every node names
the same leader."""

from __future__ import annotations

import pytest
from meshutil import eventually

from corec_node.testing import voters_agree

pytestmark = pytest.mark.timeout(180)


def heartbeats_in(node) -> int:
    """Heard direct, on the PUB stream, or over the overlay's tree."""
    status = node.ctl("status")
    return status["messages_in_by_type"].get("heartbeat", 0) + status["tree_delivered_by_type"].get("heartbeat", 0)


def test_members_that_do_not_vote_hear_one_heartbeat_in_ten(cluster):
    env = {"COREC_MESH_MAX_VOTERS": "3"}
    first = cluster.start("h0", extra_env=env).wait_ready()
    nodes = [first] + [cluster.start(f"h{i}", join=[first.addr], extra_env=env).wait_ready() for i in (1, 2, 3)]
    leader = eventually(lambda: len({n.ctl("leader")["leader"] for n in nodes}) == 1 and nodes[0].ctl("leader")["leader"],
                        30, message="one leader named by all")
    voters = eventually(lambda: len(v := first.voters()) == 3 and voters_agree(nodes, v) and v, 30,
                        message="three voters, agreed")
    term = first.ctl("leader")["term"]
    member = next(n for n in nodes if n.name not in voters)
    followers = [n for n in nodes if n.name in voters and n.name != leader]
    before = {n.name: heartbeats_in(n) for n in [member, *followers]}
    # a window of 40 heartbeats to each voter, however long this machine takes for them
    eventually(lambda: all(heartbeats_in(f) - before[f.name] >= 40 for f in followers), 60,
               message="40 heartbeats to each voter")
    got = {n.name: heartbeats_in(n) - before[n.name] for n in [member, *followers]}
    assert 1 <= got[member.name] <= min(got[f.name] for f in followers) / 4, got
    status = followers[0].ctl("status")  # both directions name a message by its type, as the wire does
    assert status["messages_out_by_type"].get("heartbeat_ack", 0) >= 40 and "heartbeat" in status["messages_in_by_type"]
    for n in nodes:  # the lease held throughout, and everyone still names the leader
        assert n.ctl("leader") == {"leader": leader, "term": term}
        assert n.ctl("status")["rejected"].get("topic", 0) == 0
