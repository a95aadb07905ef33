"""The overlay's messages on the wire (protocol 1.15, SPEC 7.1): what the real overlay cores
send in a simulated cluster crosses the codec unchanged, and what the tree may carry is
only broadcasts: the mesh core's, and since 1.16 the data plane's."""

from __future__ import annotations

from collections import Counter

import pytest

from corec_node.mesh.overlay import OVERLAY_TYPES, OverlayConfig
from corec_node.sim.cluster import Cluster
from corec_node.sim.report import SHELL_TIMING
from corec_node.wire import WireError, decode_message, encode_message
from corec_node.wire.messages import (
    AggregateColumns,
    Alert,
    EvolutionPlan,
    Flow,
    FusionPlan,
    Learners,
    Ping,
)
from corec_node.wire.overlay_messages import Graft, TreeGossip


class RecordingCluster(Cluster):
    """A simulated cluster that keeps every overlay message its nodes send."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.overlay_sent: list[object] = []

    def _send(self, node, to, msg, kind=""):  # type: ignore[no-untyped-def]
        if kind:
            self.overlay_sent.append(msg)
        super()._send(node, to, msg, kind)


def test_every_message_the_overlay_sends_crosses_the_wire_unchanged():
    c = RecordingCluster(24, seed=3, overlay=OverlayConfig(), strict=False, **SHELL_TIMING)
    c.bootstrap("join", stagger=0.05)
    c.await_convergence(60, every=0.5)
    victims = sorted(c.nodes)[:3]
    for name in victims:
        c.crash(name)
    c.run(20)
    kinds = Counter(type(m) for m in c.overlay_sent)
    assert set(kinds) == OVERLAY_TYPES  # all twelve: joins, shuffles, repairs after the crashes, the tree
    carried = Counter(type(m.payload[1]).__name__ for m in c.overlay_sent if type(m) is TreeGossip)
    assert carried["Gossip"] > 0 and carried["Heartbeat"] > 0
    for seq, msg in enumerate(c.overlay_sent):
        frames = encode_message(msg, sender="node-a", seq=seq, cluster="corec")
        topic, env, payload = decode_message(frames, cluster="corec")
        assert (topic, env.msg, payload) == (b"dir", msg, None)


def test_the_tree_carries_only_broadcasts():
    ping = TreeGossip("10.0.0.1:7946", ("10.0.0.1:7946", 1), ("node-a", Ping(1, "node-b", "10.0.0.1:7946")), 1)
    with pytest.raises(ValueError, match="a message of GOSSIP \\(5\\), HEARTBEAT \\(12\\), ALERT \\(22\\)"):
        encode_message(ping, sender="node-a", seq=1)


@pytest.mark.parametrize("carried", [
    AggregateColumns(tick=9, columns={"block": (7 << 32 | 3,), "count": (12,)}),
    Alert(kind="anomaly", text="block 7:3", facts={"uid": "a1", "block": 7 << 32 | 3}),
    FusionPlan(term=4, fusions=({"weak": 1, "strong": 2, "channel": 7, "reason": "low fitness"},)),
    EvolutionPlan(term=4, challenges=()),
    Learners(term=4, names=("node-c",)),
    Flow(hold_ms=250),
], ids=lambda m: type(m).__name__)
def test_the_tree_carries_the_data_planes_broadcasts_since_1_16(carried):
    msg = TreeGossip("10.0.0.1:7946", ("10.0.0.3:7946", 17), ("node-c", carried), 2)
    topic, env, _ = decode_message(encode_message(msg, sender="node-a", seq=1, cluster="corec"), cluster="corec")
    assert (topic, env.msg.payload[0], type(env.msg.payload[1])) == (b"dir", "node-c", type(carried))


def test_a_graft_of_too_many_ids_is_refused_as_too_large():
    ids = tuple(("10.0.0.2:7946", i) for i in range(1025))
    with pytest.raises(ValueError, match="1025 items > 1024"):
        encode_message(Graft("10.0.0.1:7946", ids), sender="node-a", seq=1)
    frames = encode_message(Graft("10.0.0.1:7946", ids[:1024]), sender="node-a", seq=1)
    assert len(decode_message(frames)[1].msg.ids) == 1024
    with pytest.raises(WireError):
        decode_message([frames[0], frames[1][:-3]])
