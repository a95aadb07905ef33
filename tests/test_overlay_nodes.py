"""``mesh.overlay`` on real processes: membership news, heartbeats and (since 1.16) the data
plane's broadcasts travel the overlay's tree (TREE_GOSSIP over the direct sockets, SPEC
7.1), not the PUB streams, which no node follows; and the cluster still converges, elects
one leader, answers ``blocks`` for the whole cluster from every node, sees a SIGKILLed node
dead everywhere, and takes it back when it restarts at the same address (its new life's
broadcasts are not taken for the old one's, plumtree rule 3)."""

from __future__ import annotations

import pytest
import zmq
from meshutil import eventually
from records import random_entities
from test_engine_cluster import matches, reference, send_through

from corec_node.mesh.member import NO_BUILD, Member
from corec_node.shell.control_plane import data_rides_tree
from corec_node.wire import encode_message
from corec_node.wire.messages import MemberStatus
from corec_node.wire.overlay_messages import Graft

pytestmark = pytest.mark.timeout(240)

OVERLAY = {"COREC_MESH_OVERLAY": "true", "COREC_MESH_MAX_VOTERS": "3"}


def statuses(node) -> dict[str, str]:
    return node.members()


def test_an_overlay_cluster_converges_elects_and_sees_a_kill_over_the_tree(cluster):
    first = cluster.start("v0", extra_env=OVERLAY).wait_ready()
    nodes = [first] + [cluster.start(f"v{i}", join=[first.addr], extra_env=OVERLAY) for i in range(1, 6)]
    for n in nodes:
        n.wait_ready(30)
    names = {n.name for n in nodes}
    eventually(lambda: all(statuses(n) == dict.fromkeys(names, "alive") for n in nodes), 60, 0.5,
               message="six nodes alive everywhere")
    eventually(lambda: len({n.ctl("leader")["leader"] for n in nodes}) == 1 and nodes[0].ctl("leader")["leader"],
               30, message="one leader named by all")
    linked = {n.addr: set(n.ctl("status")["overlay_neighbors"]) for n in nodes}
    for addr, peers in linked.items():  # six nodes under the cap of 8: a full mesh by the same rules
        assert peers == set(linked) - {addr}, (addr, peers)
    for n in nodes:
        status = n.ctl("status")
        got = status["messages_in_by_type"]
        assert got.get("tree_gossip", 0) > 0, (n.name, got)  # the news came over the tree
        assert got.get("gossip", 0) == 0, (n.name, got)  # and not on anyone's PUB stream
        assert status["rejected"] == {}, (n.name, status["rejected"])
    eventually(lambda: all(n.ctl("status")["tree_data"] for n in nodes), 20,
               message="every node sends the data plane's broadcasts over the tree")

    # block rows reach every node over the tree: each answers for the whole cluster,
    # following no member's PUB stream
    eventually(lambda: all(n.ctl("status")["placement_version"] > 0 for n in nodes), 20, message="a placement map")
    recs = random_entities(60_000)
    ref = reference(recs)
    send_through(nodes, recs)
    for n in nodes:
        eventually(lambda: matches(n.ctl("blocks"), ref), 60, 0.5, message=f"{n.name} sees every owner's rows")
    assert len({r["owner"] for r in nodes[0].ctl("blocks")}) > 1  # rows of other owners, not only its own
    for n in nodes:
        status = n.ctl("status")
        assert status["subscribed_peers"] == 0, (n.name, status["subscribed_peers"])
        assert status["messages_in_by_type"].get("aggregate_columns", 0) > 0, n.name
        assert status["rejected"] == {}, (n.name, status["rejected"])

    # an overlay message whose body names another address than the member's own is refused
    forged = encode_message(Graft("127.0.0.1:9", (("127.0.0.1:9", 1),)), sender=nodes[1].name, seq=1,
                            cluster="corec")
    ctx = zmq.Context.instance()
    dealer = ctx.socket(zmq.DEALER)
    try:
        dealer.connect(f"tcp://{first.addr}")
        dealer.send_multipart(forged)
        eventually(lambda: first.ctl("status")["rejected"].get("sender") == 1, 10, 0.1,
                   message="the forged GRAFT refused as sender")
    finally:
        dealer.close(0)

    victim = nodes[3]
    victim.kill()
    survivors = [n for n in nodes if n is not victim]
    eventually(lambda: all(statuses(n).get(victim.name) == "dead" for n in survivors), 60, 0.2,
               message=f"{victim.name} dead everywhere")

    back = cluster.start(victim.name, port=victim.port, pub_port=victim.pub_port, data_port=victim.data_port,
                         join=[first.addr], extra_env=OVERLAY).wait_ready(30)
    nodes = [*survivors, back]
    eventually(lambda: all(statuses(n) == dict.fromkeys(names, "alive") for n in nodes), 60, 0.5,
               message=f"{victim.name} alive again everywhere")
    leader = first.ctl("leader")["leader"]
    eventually(lambda: {n.ctl("leader")["leader"] for n in nodes} == {leader}, 20, 0.2,
               message=f"{back.name} follows the leader it hears over the tree")


def test_the_data_plane_rides_the_tree_only_while_every_member_heard_announces_it():
    """SPEC 7.1 (1.16): one live member of an older build (no ``tree_data``) puts every
    node back on the PUB streams; a dead one, or one whose build has not arrived, does not."""
    new = ("0.4.0", "1.16", ("overlay", "tree_data"), "", (), ())
    old = ("0.4.0", "1.15", ("overlay",), "", (), ())

    def member(name: str, build: tuple, status: MemberStatus = MemberStatus.ALIVE) -> Member:
        return Member(name, f"{name}:1", f"{name}:2", 1, status, 0.0, build)

    assert data_rides_tree([member("a", new), member("b", new)])
    assert not data_rides_tree([member("a", new), member("b", old)])
    assert not data_rides_tree([member("a", new), member("b", old, MemberStatus.SUSPECT)])
    assert data_rides_tree([member("a", new), member("b", old, MemberStatus.DEAD)])
    assert data_rides_tree([member("a", new), member("b", NO_BUILD)])


def test_a_member_that_speaks_no_overlay_makes_the_cluster_a_full_mesh_until_it_goes(cluster):
    """Overlay rule 10, as in a rolling upgrade: a node run with ``mesh.overlay = false``
    (what an older release is) joins three on the overlay. While it lives every node runs as
    a full mesh: it follows every PUB stream, the broadcasts go on them, one leader is named
    by all, and nothing of the overlay reaches the old node (it would reject it). Once it is
    dead, the others are back on the tree, following no stream."""
    first = cluster.start("o0", extra_env=OVERLAY).wait_ready()
    nodes = [first] + [cluster.start(f"o{i}", join=[first.addr], extra_env=OVERLAY).wait_ready(30) for i in (1, 2)]
    eventually(lambda: all(n.ctl("status")["tree_data"] for n in nodes), 30, 0.2, message="three on the tree")
    old = cluster.start("old", join=[first.addr],
                        extra_env={**OVERLAY, "COREC_MESH_OVERLAY": "false"}).wait_ready(30)
    everyone = [*nodes, old]
    names = {n.name for n in everyone}
    eventually(lambda: all(statuses(n) == dict.fromkeys(names, "alive") for n in everyone), 60, 0.5,
               message="four nodes alive everywhere")

    def full_mesh(n) -> bool:
        s = n.ctl("status")
        return s["overlay_legacy_members"] == ["old"] and not s["tree_data"] and s["subscribed_peers"] == 3

    eventually(lambda: all(full_mesh(n) for n in nodes), 30, 0.2, message="the three follow every PUB stream")
    eventually(lambda: len({n.ctl("leader")["leader"] for n in everyone}) == 1 and first.ctl("leader")["leader"],
               30, message="one leader named by all four")
    gossip_before = {n.name: n.ctl("status")["messages_in_by_type"].get("gossip", 0) for n in everyone}
    # news from now on goes on the PUB streams the old node follows: a member that leaves
    nodes[2].ctl("leave")
    eventually(lambda: all(statuses(n).get("o2") == "left" for n in [*nodes[:2], old]), 30, 0.2,
               message="o2 left, as seen by the old node too")
    after = old.ctl("status")
    assert after["messages_in_by_type"].get("gossip", 0) > gossip_before["old"], after["messages_in_by_type"]
    assert after["rejected"] == {}, after["rejected"]  # no TREE_GOSSIP or view message reached it
    assert after["overlay_neighbors"] is None and after["overlay_legacy_members"] == []

    old.kill()
    rest = nodes[:2]
    eventually(lambda: all(statuses(n).get("old") == "dead" for n in rest), 60, 0.2, message="old dead everywhere")

    def on_tree(n) -> bool:
        s = n.ctl("status")
        return s["overlay_legacy_members"] == [] and s["tree_data"] and s["subscribed_peers"] == 0

    eventually(lambda: all(on_tree(n) for n in rest), 30, 0.2, message="back on the tree, following no stream")
    before = {n.name: n.ctl("status")["tree_delivered_by_type"].get("heartbeat", 0) for n in rest}
    eventually(lambda: all(n.ctl("status")["tree_delivered_by_type"].get("heartbeat", 0) > before[n.name]
                           for n in rest if n.name != n.ctl("leader")["leader"]), 30, 0.2,
               message="the leader's heartbeats over the tree again")
