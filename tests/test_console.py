"""The web console (issue 21, item 1): real node processes, real HTTP, a real headless Chromium.

The browser is Debian's ``chromium`` driven over its DevTools websocket by
``bench/console_screenshot.py``'s ``Chromium`` (the helper that also makes docs/console.png).
Under CI=true a missing chromium fails the browser tests; elsewhere they skip, saying why.
The parser and the feed's helpers are pure and are tested here without processes.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from meshutil import eventually, free_port

from corec_node.shell.console import (
    BadRequest,
    channel_param,
    host_name,
    is_loopback,
    parse_request,
)
from corec_node.shell.console_feed import Tail, channels, placement, role, strict

pytestmark = pytest.mark.timeout(240)

IN_CI = os.environ.get("CI", "").lower() == "true"
_spec = importlib.util.spec_from_file_location(
    "console_screenshot", Path(__file__).resolve().parents[1] / "bench" / "console_screenshot.py")
shot = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(shot)


# -- pure: the request parser and the feed's helpers -----------------------------------------


def test_parse_request_takes_a_plain_get():
    req = parse_request(b"GET /api/snapshot?channel=3 HTTP/1.1\r\nHost: 127.0.0.1:8500\r\nAccept: */*\r\n\r\n")
    assert (req.method, req.path, req.query) == ("GET", "/api/snapshot", {"channel": "3"})
    assert req.headers["host"] == "127.0.0.1:8500"
    assert parse_request(b"GET / HTTP/1.0\r\n\r\n").path == "/"  # HTTP/1.0 needs no Host
    assert parse_request(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n").method == "POST"  # 405 later


@pytest.mark.parametrize(("head", "status"), [
    (b"\x00\xff\xfe\r\n\r\n", "400"),
    (b"GET / HTTP/1.1\r\n\r\n", "400"),  # no Host
    (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", "400"),
    (b"GET http://evil/ HTTP/1.1\r\nHost: x\r\n\r\n", "400"),  # not a proxy
    (b"get / HTTP/1.1\r\nHost: x\r\n\r\n", "400"),
    (b"GET / HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n", "400"),
    (b"GET / HTTP/1.1\r\nHost: x\r\n folded: value\r\n\r\n", "400"),
    (b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", "400"),
    (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n", "400"),  # a GET has no body
    (b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", "400"),
    (b"GET /?a=1&&=&b HTTP/1.1\r\nHost: x\r\n\r\n", "400"),
    (b"GET / HTTP/1.1\r\nHost: caf\xc3\xa9\r\n\r\n", "400"),
    (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-A: 1\r\n" * 80 + b"\r\n", "431"),
])
def test_parse_request_refuses_malformed_heads(head, status):
    with pytest.raises(BadRequest) as info:
        parse_request(head)
    assert info.value.status.startswith(status)


def test_parse_request_never_raises_anything_else_on_random_bytes():
    rng = random.Random(21)
    alphabet = b"GETPOS /?=&:\r\n\t\x00\xffHTP1.0ahost"
    for _ in range(2000):
        head = bytes(rng.choice(alphabet) for _ in range(rng.randrange(60))) + b"\r\n\r\n"
        try:
            parse_request(head)
        except BadRequest:
            pass


def test_channel_param_and_host_names():
    assert channel_param({}) is None and channel_param({"channel": ""}) is None
    assert channel_param({"channel": "255"}) == 255
    for bad in ("256", "-1", "x", "1.5", "\u0663"):  # an Arabic-Indic digit is no channel either
        with pytest.raises(BadRequest):
            channel_param({"channel": bad})
    assert host_name("127.0.0.1:8500") == "127.0.0.1" and host_name("[::1]:8500") == "::1"
    assert host_name("localhost") == "localhost" and host_name("::1") == "::1"
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.9.9.9", "::1", "localhost", "app.localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "10.0.0.1", "evil.example", "localhost.evil.example", ""))


def test_feed_helpers():
    member = {"name": "b", "voter": True}
    assert role(member, "b") == "leader" and role(member, "a") == "voter"
    assert role({"name": "c", "voter": False}, "a") == "member"
    rows = [{"block": 1, "channel": 3, "owner": "a", "count": 10, "replicas": ["b"]},
            {"block": 2, "channel": 3, "owner": "b", "count": 5, "replicas": ["a", "c"]},
            {"block": 3, "channel": 4, "owner": "a", "count": 7, "replicas": []}]
    assert placement(rows) == [{"name": "a", "blocks": 2, "entities": 17, "replicas": 1},
                               {"name": "b", "blocks": 1, "entities": 5, "replicas": 1},
                               {"name": "c", "blocks": 0, "entities": 0, "replicas": 1}]
    assert channels(rows) == [{"channel": 3, "blocks": 2, "entities": 15}, {"channel": 4, "blocks": 1, "entities": 7}]
    assert strict({"mean": float("nan"), "rows": [1.5, float("inf")], "n": 2}) == {"mean": None, "rows": [1.5, None], "n": 2}


def test_tail_reads_on_from_the_newest_row_without_repeats():
    tail = Tail(keep=3)
    assert tail.start(wall=100.0) < 100.0 - 3600  # the first read looks back a while
    tail.add([{"uid": "a", "ts": 10.0}, {"uid": "b", "ts": 20.0}])
    assert 10.0 < tail.start(wall=100.0) < 20.0  # then from the newest row, less a little: a row may commit late
    tail.add([{"uid": "b", "ts": 20.0}, {"uid": "c", "ts": 19.0}, {"uid": "d", "ts": 21.0}])
    assert [r["uid"] for r in tail.newest()] == ["d", "b", "c"]  # newest first, three kept, none twice


# -- real nodes ------------------------------------------------------------------------------


def get(port: int, path: str, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def snapshot(port: int, channel: int | None = None) -> dict:
    status, _headers, body = get(port, "/api/snapshot" + (f"?channel={channel}" if channel is not None else ""))
    assert status == 200, body
    return json.loads(body)


def raw(port: int, data: bytes, *, half_close: bool = False) -> bytes:
    """Bytes sent on a fresh connection, and everything the console answered until it closed."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
        s.sendall(data)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


def alive(snap: dict) -> set[str]:
    return {m["name"] for m in snap["members"] or [] if m["status"] == "alive"}


def start_three(cluster, port: int):
    a = cluster.start("a", args=["--profile", "test", "--console", f"127.0.0.1:{port}"]).wait_ready()
    b = cluster.start("b", join=[a.addr], args=["--profile", "test"]).wait_ready()
    c = cluster.start("c", join=[a.addr], args=["--profile", "test"]).wait_ready()
    eventually(lambda: alive(snapshot(port)) == {"a", "b", "c"}, 30, message="three members alive in the snapshot")
    return a, b, c


@pytest.fixture
def browser():
    binary = shot.find_chromium()
    why = ""
    if binary is None:
        why = "no chromium on PATH (Debian: apt-get install chromium)"
    elif importlib.util.find_spec("websocket") is None:
        why = "websocket-client is not installed (pip install -e '.[test]')"
    if why:
        if IN_CI:
            pytest.fail(f"CI=true: {why}", pytrace=False)
        pytest.skip(why)
    b = shot.Chromium(binary)
    try:
        yield b
    finally:
        b.close()


def test_console_shows_the_cluster_live(cluster, browser):
    port = free_port()
    a, b, c = start_three(cluster, port)

    # the snapshot is the CLI's answers: members (with a role), and the blocks of a channel
    eventually(lambda: sorted(m["role"] for m in snapshot(port)["members"]) == ["leader", "voter", "voter"], 30,
               message="one leader and two voters")
    snap = snapshot(port)
    assert {m["name"]: m["status"] for m in snap["members"]} == a.members()
    assert snap["leader"] == a.ctl("leader") and snap["status"]["name"] == "a"
    subprocess.run([sys.executable, "-m", "corec_node", "send", "--to", a.addr, "--channel", "5", "--count", "3000"],
                   check=True, capture_output=True, timeout=60)

    def same_blocks() -> bool:
        rows = snapshot(port, 5)["blocks"]
        cli = a.ctl("blocks", channel=5)
        return len(rows) == 3 and {(r["block"], r["owner"]) for r in rows} == {(r["block"], r["owner"]) for r in cli}

    eventually(same_blocks, 30, message="channel 5's three blocks, as `blocks --channel 5` answers")
    assert any(r["kind"] == "leader_change" and r["term"] for r in snapshot(port)["audit"])

    # the event stream pushes the same snapshot
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/events?channel=5", timeout=15) as stream:
        assert stream.headers["Content-Type"] == "text/event-stream"
        lines = []
        while not (lines and lines[-1] == b"\n" and any(x.startswith(b"data: ") for x in lines)):
            lines.append(stream.readline())
    assert b"event: snapshot\n" in lines
    pushed = json.loads(next(x for x in lines if x.startswith(b"data: "))[len(b"data: "):])
    assert alive(pushed) == {"a", "b", "c"} and pushed["channel"] == 5

    # the page, in a real browser: the three members, the three blocks
    browser.navigate(f"http://127.0.0.1:{port}/#channel=5")
    eventually(lambda: shot.members_shown(browser) == {"a": "alive", "b": "alive", "c": "alive"}, 30,
               message="the page lists three alive members")
    eventually(lambda: browser.evaluate("document.querySelectorAll('#heatmap div[data-block]').length") == 3, 30,
               message="the heatmap shows channel 5's three blocks")
    assert browser.evaluate("document.querySelectorAll('#members span.role.leader').length") == 1
    assert browser.evaluate("document.getElementById('link').dataset.state") == "live"

    # SIGKILL a member: the page already open shows it dead, without a reload
    browser.evaluate("window.__sameLoad = 'yes'")
    victim = c if a.ctl("leader")["leader"] != "c" else b
    victim.kill()
    eventually(lambda: shot.members_shown(browser).get(victim.name) == "dead", 60,
               message=f"the open page shows {victim.name} dead")
    assert browser.evaluate("window.__sameLoad") == "yes"  # the same page load: updated live
    assert a.members()[victim.name] == "dead"  # and the CLI says the same
    eventually(lambda: snapshot(port)["console"]["viewers"] == 1, 15, message="one viewer: the page")
    browser.navigate("about:blank")  # the viewer goes: its event stream ends on the node too
    eventually(lambda: snapshot(port)["console"]["viewers"] == 0, 30, message="the closed page's stream ended")


def test_bad_requests_are_answered_and_counted(cluster):
    port = free_port()
    node = cluster.start("solo", args=["--profile", "test", "--console", str(port)]).wait_ready()  # a port alone: loopback
    eventually(lambda: snapshot(port)["members"], 15, message="the console answering")
    host = b"Host: 127.0.0.1\r\n"
    answers = {
        b"\x00\xff\xfe garbage\r\n\r\n": b"400",
        b"GET / HTTP/1.1\r\n\r\n": b"400",
        b"GET / HTTP/1.1\r\n" + host + b"Content-Length: 5\r\n\r\nhello": b"400",
        b"GET / HTTP/1.1\r\n" + host + b"not a header\r\n\r\n": b"400",
        b"GET /api/snapshot?channel=999 HTTP/1.1\r\n" + host + b"\r\n": b"400",
        b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\n\r\n": b"431",
        b"POST /api/snapshot HTTP/1.1\r\n" + host + b"Content-Length: 0\r\n\r\n": b"405",
        b"DELETE / HTTP/1.1\r\n" + host + b"\r\n": b"405",
        b"GET /etc/passwd HTTP/1.1\r\n" + host + b"\r\n": b"404",
        b"GET /../console.py HTTP/1.1\r\n" + host + b"\r\n": b"404",
        b"GET /api/snapshot HTTP/1.1\r\nHost: rebind.evil.example\r\n\r\n": b"403",
    }
    for request, status in answers.items():
        reply = raw(port, request)
        assert reply.startswith(b"HTTP/1.1 " + status), (request[:60], reply[:200])
        if status == b"405":
            assert b"\r\nAllow: GET, HEAD\r\n" in reply
    assert raw(port, b"GET / HTTP/1.1\r\n" + host, half_close=True).startswith(b"HTTP/1.1 400")  # cut short
    rng = random.Random(7)
    for _ in range(40):  # random bytes: an answer (4xx) or a closed connection, never a crash
        junk = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))) + b"\r\n\r\n"
        reply = raw(port, junk)
        assert reply == b"" or reply[9:10] == b"4", reply[:80]

    assert node.proc.poll() is None and node.ctl("status")["name"] == "solo"  # the node stays up
    status, headers, body = get(port, "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html") and b"console.js" in body
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    head = raw(port, b"HEAD /api/snapshot HTTP/1.1\r\n" + host + b"\r\n")
    assert head.startswith(b"HTTP/1.1 200") and head.endswith(b"\r\n\r\n")  # the headers only


    def counted() -> bool:  # a snapshot is up to a refresh old
        refused = snapshot(port)["console"]["refused"]
        return (refused.get("malformed", 0) >= 6 and refused.get("too_large") == 1 and refused.get("method") == 2
                and refused.get("not_found") == 2 and refused.get("host") == 1)

    eventually(counted, 15, message="every refusal counted by reason")


def test_console_port_taken_is_one_line_and_exit_2(cluster):
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        node = cluster.start("a", args=["--profile", "test", "--console", f"127.0.0.1:{port}"])
        assert node.proc.wait(30) == 2
    text = node.log_path.read_text()
    line = f"corec-node: config error: cannot bind 127.0.0.1:{port} (console.listen): Address already in use"
    assert line in text.splitlines(), text[-2000:]
    assert "Traceback" not in text


def test_console_is_off_by_default(cluster):
    node = cluster.start("quiet", args=["--profile", "test"]).wait_ready()
    assert not any(e.get("event") == "console_listening" for e in node.log_events())
