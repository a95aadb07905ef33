"""The control socket's commands refuse a bad parameter with one line and do nothing."""

from __future__ import annotations

import json
import socket

import pytest
from meshutil import eventually

from corec_node.shell.control import (
    MAX_REQUEST_BYTES,
    PARAMS,
    CommandError,
    ControlError,
    check_params,
)

pytestmark = pytest.mark.timeout(120)

# (command, parameters, the parameter the error must name)
BAD = [
    ("leave", {"spred": 0}, "spred"),
    ("leave", {"spread": "1"}, "spread"),
    ("leave", {"spread": -1}, "spread"),
    ("leave", {"spread": 1e9}, "spread"),
    ("leave", {"spread": float("nan")}, "spread"),
    ("leave", {"spread": True}, "spread"),
    ("join", {}, "addrs"),
    ("join", {"addrs": "127.0.0.1:1"}, "addrs"),
    ("join", {"addrs": []}, "addrs"),
    ("join", {"addrs": ["no-port"]}, "addrs"),
    ("join", {"addrs": ["127.0.0.1:1"], "wait": "5"}, "wait"),
    ("join", {"addrs": ["127.0.0.1:1"], "peers": ["127.0.0.1:2"]}, "peers"),
    ("force-leave", {}, "name"),
    ("force-leave", {"name": 7}, "name"),
    ("force-leave", {"name": ""}, "name"),
    ("force-leave", {"name": "a", "force": True}, "force"),
    ("recover-voters", {}, "names"),
    ("recover-voters", {"names": "a"}, "names"),
    ("recover-voters", {"names": ["a", "a"]}, "names"),
    ("recover-voters", {"names": ["a", 1]}, "names"),
    ("blocks", {"channel": "2"}, "channel"),
    ("blocks", {"channel": 256}, "channel"),
    ("blocks", {"chanel": 2}, "chanel"),
    ("status", {"verbose": True}, "verbose"),
    ("members", {"detailed": True}, "detailed"),
    ("leader", {"term": 1}, "term"),
    ("voters", {"all": 1}, "all"),
    ("plugins", {"name": "x"}, "name"),
    ("logs", {"node": -2}, "node"),
    ("logs", {"mesh": "0"}, "mesh"),
    ("logs", {"node": True}, "node"),
    ("logs", {"since": 0}, "since"),
    ("genome", {}, "block"),
    ("genome", {"block": "1"}, "block"),
    ("genome", {"block": "256:1"}, "block"),
    ("genome", {"block": -1}, "block"),
    ("genome", {"block": True}, "block"),
    ("force-leave", {"name": "a", "prune": "yes"}, "prune"),
    ("alerts", {"since": -1}, "since"),
    ("alerts", {"since": "1h"}, "since"),
    ("alerts", {"node": "a"}, "node"),
    ("drift", {"all": True}, "all"),
    ("explain", {"block": "1"}, "block"),
    ("explain", {"alert": "xyz1"}, "alert"),
    ("explain", {"alert": "abc"}, "alert"),
    ("explain", {"block": "1:0", "refine": "yes"}, "refine"),
    ("explain", {"uid": "abcd"}, "uid"),
    ("settings", {"set": "engine.replicas=2"}, "set"),
    ("settings", {"set": ["engine.replicas"]}, "set"),
    ("settings", {"set": [2]}, "set"),
    ("settings", {"key": "x"}, "key"),
]


def test_every_command_has_bad_cases():
    assert {cmd for cmd, _, _ in BAD} == set(PARAMS)


@pytest.mark.parametrize(("cmd", "params", "culprit"), BAD, ids=[f"{c}-{k}" for c, _, k in BAD])
def test_check_names_the_parameter(cmd, params, culprit):
    with pytest.raises(CommandError) as err:
        check_params(cmd, params)
    text = str(err.value)
    assert "\n" not in text and text.startswith(f"{cmd}: ") and repr(culprit)[1:-1] in text


@pytest.mark.parametrize(("cmd", "params"), [
    ("status", {}), ("members", {}), ("leader", {}), ("voters", {}), ("plugins", {}), ("leave", {}),
    ("blocks", {"channel": None}), ("blocks", {"channel": 2}),  # what the CLI sends, with and without --channel
    ("join", {"addrs": ["127.0.0.1:7400", "[::1]:7400"], "wait": 5.0}),
    ("force-leave", {"name": "node-b"}), ("force-leave", {"name": "node-b", "prune": True}),
    ("genome", {"block": 4294967300}), ("alerts", {"since": None}), ("alerts", {"since": 60.0}), ("recover-voters", {"names": ["a", "b"]}), ("leave", {"spread": 0}),
])
def test_what_the_cli_sends_passes(cmd, params):
    assert check_params(cmd, params) == {"cmd": cmd, **params}


def test_a_block_is_named_as_blocks_shows_it_or_by_its_id():
    assert check_params("genome", {"block": "1:4"}) == {"cmd": "genome", "block": 1 << 32 | 4}


def _snapshot(a, b) -> dict:
    status = b.ctl("status")
    return {"a_sees": a.members(), "b_sees": b.members(), "voters": b.voters(), "leader": status["leader"],
            "term": status["term"]}


@pytest.fixture
def pair(cluster):
    """a founded the cluster; b joined it and is a voter: both would notice b leaving."""
    test = ["--profile", "test"]
    a = cluster.start("a", args=test).wait_ready()
    b = cluster.start("b", join=[a.addr], args=test).wait_ready()
    eventually(lambda: a.voters() == ["a", "b"] and b.voters() == ["a", "b"], 30, message="b is a voter")
    eventually(lambda: b.ctl("leader")["leader"] == a.ctl("leader")["leader"] is not None, 30, message="one leader")
    return a, b


def test_leave_with_a_bad_parameter_stays_a_member(pair):
    """A typo in leave's parameter once announced "left", answered an error and left the node running."""
    a, b = pair
    before = _snapshot(a, b)
    with pytest.raises(ControlError, match=r"^leave: unknown parameter 'spred'"):
        b.ctl("leave", spred=0)
    # a does not hear b leave: b keeps answering its probes through many rounds
    start = a.ctl("status")["messages_in"]
    eventually(lambda: a.ctl("status")["messages_in"] >= start + 50, 30, message="a and b kept talking")
    assert b.proc.poll() is None, "b stopped"
    assert _snapshot(a, b) == before
    for node in (a, b):
        assert not [e for e in node.log_events() if e.get("event") == "member_changed" and e.get("name") == "b"
                    and e.get("new") == "left"]


def test_every_command_refuses_bad_parameters_and_changes_nothing(pair):
    a, b = pair
    before = _snapshot(a, b)
    for cmd, params, culprit in BAD:
        with pytest.raises(ControlError) as err:
            b.ctl(cmd, **params)
        text = str(err.value)
        assert text.startswith(f"{cmd}: ") and culprit in text and "\n" not in text, (cmd, params, text)
    start = a.ctl("status")["messages_in"]
    eventually(lambda: a.ctl("status")["messages_in"] >= start + 50, 30, message="a and b kept talking")
    assert b.proc.poll() is None, "b stopped"
    assert _snapshot(a, b) == before
    assert b.ctl("blocks", channel=None) == [] and b.ctl("leader")["leader"] == before["leader"]  # valid still works


def _raw(node, data: bytes) -> dict:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(node.data_dir / "control.sock"))
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    reply = b"".join(chunks)
    assert reply.count(b"\n") == 1, reply
    return json.loads(reply)


MALFORMED = [
    (b"not json\n", "JSON"),
    (b"[1, 2]\n", "cmd"),
    (b'{"leave": true}\n', "cmd"),
    (b'{"cmd": 5}\n', "cmd"),
    (b'{"cmd": "frobnicate"}\n', "unknown command"),
    (b'{"cmd": "leave", "spread": Infinity}\n', "spread"),
    (b'{"cmd": "leave", "x": "' + b"y" * (MAX_REQUEST_BYTES + 10) + b'"}\n', "longer than"),
]


def test_malformed_requests_get_one_error_line(cluster):
    node = cluster.start("solo", args=["--profile", "test"]).wait_ready()
    for request_bytes, says in MALFORMED:
        reply = _raw(node, request_bytes)
        assert reply["ok"] is False and says in reply["error"], (request_bytes[:40], reply)
    assert node.proc.poll() is None and node.ctl("status")["name"] == "solo"
    assert node.members() == {"solo": "alive"}


def test_a_valid_leave_leaves_and_stops(pair):
    """The control for the tests above: the same command, well formed, does leave."""
    a, b = pair
    assert b.ctl("leave", spread=0.5)["left"] is True
    assert b.proc.wait(30) == 0
    eventually(lambda: a.members().get("b") == "left", 30, message="a hears b leave")
