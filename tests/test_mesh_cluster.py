"""Membership with real `corec-node run` processes on loopback ports.

Each test starts its own nodes and kills them at the end (the ``cluster`` fixture).
Failures are real: SIGKILL, SIGSTOP, and hostile bytes on the node's own ports.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys

import msgpack
import pytest
import zmq
from meshutil import eventually, free_port

from corec_node.wire import encode_message
from corec_node.wire.messages import Gossip, MemberState, MemberStatus, Ping, StatePush

pytestmark = pytest.mark.timeout(180)


def statuses(node) -> dict[str, str]:
    return node.members()


def all_see(nodes, expected: dict[str, str]) -> bool:
    return all({k: v for k, v in statuses(n).items() if k in expected} == expected for n in nodes)


def messages_in(nodes) -> list[int]:
    return [n.ctl("status")["messages_in"] for n in nodes]


def wait_for_traffic(nodes, count: int, timeout: float = 60) -> None:
    """Wait until each node has received ``count`` more messages (probes, acks, gossip).

    An observation that something does NOT happen lasts this many protocol rounds, counted,
    not a fixed time: a slow machine makes the window longer, never emptier."""
    start = messages_in(nodes)
    eventually(lambda: all(now >= first + count for now, first in zip(messages_in(nodes), start)), timeout,
               message=f"{count} more messages received by each of {[n.name for n in nodes]}")


def verdicts(node, name: str) -> list[str]:
    """Every status ``node`` logged for member ``name``, in order (transient ones included)."""
    return [e["new"] for e in node.log_events() if e.get("event") == "member_changed" and e.get("name") == name]


def start_chain(cluster, names):
    """Start nodes joined in a chain (each through the previous one): convergence needs gossip."""
    nodes = []
    for name in names:
        join = [nodes[-1].addr] if nodes else []
        nodes.append(cluster.start(name, join=join))
    for node in nodes:
        node.wait_ready()
    alive = {n.name: "alive" for n in nodes}
    eventually(lambda: all_see(nodes, alive), 20, message=f"all of {names} alive everywhere")
    return nodes


def test_join_through_different_peers_converges(cluster):
    nodes = start_chain(cluster, ["a", "b", "c", "d", "e"])
    for node in nodes:
        members = node.ctl("members")
        assert sorted(m["name"] for m in members) == ["a", "b", "c", "d", "e"]
        by_name = {m["name"]: m for m in members}
        for other in nodes:
            assert by_name[other.name]["addr"] == other.addr
            assert by_name[other.name]["incarnation"] >= 0


def test_cli_join_and_members(cluster):
    a = cluster.start("a").wait_ready()
    b = cluster.start("b").wait_ready()
    out = subprocess.run([sys.executable, "-m", "corec_node", "join", a.addr, "--data-dir", str(b.data_dir)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    out = subprocess.run([sys.executable, "-m", "corec_node", "members", "--json", "--data-dir", str(a.data_dir)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0
    eventually(lambda: all_see([a, b], {"a": "alive", "b": "alive"}), 10)
    rows = json.loads(out.stdout)
    assert {"name", "addr", "status", "incarnation"} <= set(rows[0])
    out = subprocess.run([sys.executable, "-m", "corec_node", "members", "--data-dir", str(a.data_dir)],
                         capture_output=True, text=True, timeout=30)
    assert "NAME" in out.stdout and "alive" in out.stdout


def test_join_unreachable_peer_says_so(cluster):
    a = cluster.start("a").wait_ready()
    out = subprocess.run([sys.executable, "-m", "corec_node", "join", f"127.0.0.1:{free_port()}", "--timeout", "1",
                          "--data-dir", str(a.data_dir)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 1
    assert "no answer" in out.stderr


def test_sigkill_is_seen_dead_by_all(cluster):
    nodes = start_chain(cluster, ["a", "b", "c", "d"])
    victim = nodes[2]
    victim.kill()
    survivors = [n for n in nodes if n is not victim]
    eventually(lambda: all(statuses(n)["c"] == "dead" for n in survivors), 20, message="c dead everywhere")
    assert all(all(statuses(n)[o.name] == "alive" for o in survivors) for n in survivors)


def test_graceful_leave_is_left_not_dead(cluster):
    nodes = start_chain(cluster, ["a", "b", "c"])
    out = subprocess.run([sys.executable, "-m", "corec_node", "leave", "--data-dir", str(nodes[1].data_dir)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert nodes[1].proc.wait(15) == 0
    survivors = [nodes[0], nodes[2]]
    eventually(lambda: all(statuses(n)["b"] == "left" for n in survivors), 15)
    # and it stays left (nobody turns a departed node into a dead one): ~10 probe rounds more
    wait_for_traffic(survivors, 20)
    for n in survivors:
        assert statuses(n)["b"] == "left"
        assert "dead" not in verdicts(n, "b"), f"{n.name} logged b: {verdicts(n, 'b')}"


def test_a_node_that_left_does_not_rejoin_by_itself(cluster):
    # Serf's default: leave is an intent. b started again as it was (no --join) stops with
    # one line and exit 2; started with --join it rejoins, and the mark is gone
    nodes = start_chain(cluster, ["a", "b", "c"])
    b = nodes[1]
    assert subprocess.run([sys.executable, "-m", "corec_node", "leave", "--data-dir", str(b.data_dir)],
                          capture_output=True, text=True, timeout=30).returncode == 0
    assert b.proc.wait(15) == 0
    b.join = []
    b.start()
    assert b.proc.wait(30) == 2
    refused = b.log_path.read_text().splitlines()[-1]
    assert refused.startswith("corec-node: this node left its cluster with `corec-node leave` at ")
    assert "mesh.rejoin_after_leave" in refused and "--join" in refused
    b.join = [nodes[0].addr]
    b.start().wait_ready()
    eventually(lambda: all_see(nodes, {"a": "alive", "b": "alive", "c": "alive"}), 20, message="b rejoined with --join")
    assert any(e.get("event") == "rejoining_after_leave" for e in b.log_events())
    assert not (b.data_dir / "left.json").exists()


def test_force_leave_marks_dead_member_left(cluster):
    nodes = start_chain(cluster, ["a", "b", "c"])
    nodes[2].kill()
    eventually(lambda: statuses(nodes[0])["c"] == "dead", 20)
    with pytest.raises(Exception):
        nodes[0].ctl("force-leave", name="b")  # alive members cannot be forced out
    nodes[0].ctl("force-leave", name="c")
    eventually(lambda: all(statuses(n).get("c") in ("left", None) for n in nodes[:2]), 10)


def test_force_leave_prune_removes_a_dead_member_from_every_list_now(cluster):
    nodes = start_chain(cluster, ["a", "b", "c", "d"])
    nodes[3].kill()
    survivors = nodes[:3]
    eventually(lambda: all(statuses(n).get("d") == "dead" for n in survivors), 20, message="d dead everywhere")
    out = subprocess.run([sys.executable, "-m", "corec_node", "force-leave", "d", "--prune",
                          "--data-dir", str(nodes[0].data_dir)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "d left and pruned: forgotten here now, and by each member as the news reaches it\n"
    assert "d" not in statuses(nodes[0])  # at once on the node that was asked
    # the others forget it on the gossip, long before the reap delay (a day by default)
    eventually(lambda: all("d" not in statuses(n) for n in survivors), 10, message="d pruned everywhere")
    eventually(lambda: all(v["name"] != "d" for n in survivors for v in n.ctl("voters")["voters"]), 10,
               message="d out of the voter configuration")
    out = subprocess.run([sys.executable, "-m", "corec_node", "force-leave", "d", "--prune",
                          "--data-dir", str(nodes[1].data_dir)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and out.stderr.count("\n") == 1 and "no member named 'd'" in out.stderr, out.stderr


def test_restarted_node_rejoins_from_snapshot(cluster):
    nodes = start_chain(cluster, ["a", "b", "c"])
    c = nodes[2]
    c.kill()
    eventually(lambda: statuses(nodes[0])["c"] == "dead", 20)
    c.join = []  # no --join: it must find the cluster from its own snapshot
    c.start().wait_ready()
    eventually(lambda: all_see(nodes, {"a": "alive", "b": "alive", "c": "alive"}), 20, message="c back alive")


def test_sigstop_shorter_than_suspicion_is_never_dead(cluster):
    nodes = start_chain(cluster, ["a", "b", "c"])
    victim = nodes[1]
    survivors = [nodes[0], nodes[2]]
    victim.signal(signal.SIGSTOP)
    try:
        # stopped just until the stall is noticed (a survivor suspects b): long enough to
        # matter, and much shorter than the suspicion timeout (0.8 s or more) that follows
        eventually(lambda: any(statuses(n)["b"] == "suspect" for n in survivors), 30, interval=0.01,
                   message="b suspected while stopped")
    finally:
        victim.signal(signal.SIGCONT)
    # b wakes, refutes, and everyone holds it alive again; then several more probe rounds
    eventually(lambda: all_see(nodes, {"a": "alive", "b": "alive", "c": "alive"}), 20)
    wait_for_traffic(nodes, 30)
    assert all(statuses(n)["b"] == "alive" for n in nodes)
    for n in nodes:  # the logs hold every verdict, however briefly it stood
        assert "dead" not in verdicts(n, "b"), f"{n.name} declared b dead after a short stall: {verdicts(n, 'b')}"
    assert "suspect" in [v for n in survivors for v in verdicts(n, "b")]


def test_two_clusters_merge_through_one_member(cluster):
    left = start_chain(cluster, ["l1", "l2"])
    right = start_chain(cluster, ["r1", "r2", "r3"])
    left[1].ctl("join", addrs=[right[2].addr])
    everyone = left + right
    eventually(lambda: all_see(everyone, {n.name: "alive" for n in everyone}), 20, message="one merged cluster")


def test_duplicate_name_is_reported(cluster):
    a = cluster.start("same").wait_ready()
    b = cluster.start("same", join=[a.addr], data_name="same-2")
    b.proc.wait(20)
    assert b.proc.returncode == 1
    assert any(e.get("event") == "name_conflict" for e in b.log_events())
    eventually(lambda: any(e.get("event") == "name_conflict" for e in a.log_events()), 10)
    assert a.proc.poll() is None


def _raw_tcp(port: int, payload: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        try:
            s.sendall(payload)
            s.settimeout(0.5)
            s.recv(100)
        except OSError:
            pass


def test_hostile_frames_are_dropped_and_counted(cluster):
    nodes = start_chain(cluster, ["a", "b", "c"])
    target = nodes[0]
    ctx = zmq.Context()
    evil_pub = ctx.socket(zmq.PUB)
    evil_pub_port = evil_pub.bind_to_random_port("tcp://127.0.0.1")
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(f"tcp://{target.addr}")
    try:
        good = encode_message(Ping(probe=1, target="a", reply_to="127.0.0.1:1"), sender="x", seq=1, cluster="corec")
        envelope = msgpack.unpackb(good[1])
        bad_frames = [
            [b"garbage"],
            [b"dir", b"\xc1\xff\x00"],  # not msgpack
            [good[0], good[1][: len(good[1]) // 2]],  # truncated
            [good[0], msgpack.packb({**envelope, "v": 99})],  # unknown major version
            [good[0], msgpack.packb({**envelope, "b": {"probe": "one", "target": 5}})],  # wrong types
            [good[0], msgpack.packb({**envelope, "c": "another-cluster"})],  # other cluster
            [b"dir", good[1], b"\x00" * (16 * 1024 * 1024 + 100)],  # oversized payload
        ]
        for frames in bad_frames:
            dealer.send_multipart(frames)
        # raw bytes that are not even ZMTP, on both ports
        _raw_tcp(target.port, b"\xff" * 64 + b"GET / HTTP/1.1\r\n\r\n")
        _raw_tcp(target.pub_port, b"\x00" * 1000)
        # a "member" whose PUB stream is garbage: push its state so nodes subscribe to it (a
        # build that speaks no overlay: every node then follows every PUB stream, overlay rule 10)
        evil = MemberState("evil", f"127.0.0.1:{free_port()}", f"127.0.0.1:{evil_pub_port}", 0, MemberStatus.ALIVE,
                           version="0.3.0", protocol="1.15")
        push = StatePush(join=False, reply_to=evil.addr, members=(evil,))
        dealer.send_multipart(encode_message(push, sender="evil", seq=2, cluster="corec"))
        gossip = encode_message(Gossip(updates=()), sender="evil", seq=1, cluster="corec")

        def rejected() -> int:
            return sum(target.ctl("status")["rejected"].values())

        def publish_junk_until_counted() -> bool:
            # the nodes' SUB sockets connect to the hostile PUB some time after the push
            # (PUB/SUB's slow joiner): publish junk until they have received some of it
            evil_pub.send_multipart([b"mbr", b"\x93\x01\x02"])
            evil_pub.send_multipart([b"mbr", gossip[1][:-3]])
            evil_pub.send_multipart([b"nuc", msgpack.packb({**msgpack.unpackb(gossip[1]), "v": 7})])
            return sum(sum(n.ctl("status")["rejected"].values()) for n in nodes[1:]) > 0

        eventually(lambda: rejected() >= 7, 30, message="direct junk counted")
        eventually(publish_junk_until_counted, 30, interval=0.02, message="PUB junk counted by the other nodes")
        reasons = target.ctl("status")["rejected"]
        assert {"version", "cluster"} <= set(reasons), reasons
    finally:
        dealer.close(0)
        evil_pub.close(0)
        ctx.term()
    for node in nodes:
        assert node.proc.poll() is None, f"{node.name} died from hostile bytes"
    eventually(lambda: all_see(nodes, {"a": "alive", "b": "alive", "c": "alive"}), 20)


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_a_restart_raises_no_suspicion_of_healthy_peers(cluster, how):
    # a node restarted on a quiet cluster (cleanly, or after SIGKILL) must not suspect the
    # peers it finds again, nor make them suspect each other: only its own absence is news
    nodes = start_chain(cluster, ["a", "b", "c"])
    wait_for_traffic(nodes, 30)
    c = nodes[2]
    c.stop() if how == "stop" else c.kill()
    eventually(lambda: statuses(nodes[0])["c"] in ("dead", "left", "suspect"), 20)
    seen = {n.name: len(n.log_events()) for n in nodes}
    c.join = []
    c.start().wait_ready()
    eventually(lambda: all_see(nodes, {"a": "alive", "b": "alive", "c": "alive"}), 20, message="c back alive")
    wait_for_traffic(nodes, 60)
    for n in nodes:
        suspicions = [e for e in n.log_events()[seen[n.name]:] if e.get("event") == "member_changed"
                      and e.get("new") in ("suspect", "dead") and e.get("name") != "c"]
        assert not suspicions, f"{n.name} after c's restart: {suspicions}"
