"""CurveZMQ with real sockets: who gets in, who does not, and what the wire shows."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import stat
import threading
import time
from pathlib import Path

import pytest
import zmq
import zmq.auth
from meshutil import eventually
from zmq.utils.monitor import recv_monitor_message

from corec_node.config import ConfigError, load_config
from corec_node.shell.curve import (
    DENIAL_LOG_PERIOD,
    CurveConfig,
    SecurityError,
    add_cli,
    cmd_keygen,
    configure_client,
    configure_server,
    keygen,
    start_authenticator,
    stop_authenticator,
)
from corec_node.testing.stranger import Attempt, reset_peak, rss_kib, send_message

pytestmark = pytest.mark.timeout(120)

MARKER = b"CoreC-plaintext-marker-0123456789"


# -- fixtures ---------------------------------------------------------------------------


class Keys:
    """A cluster key, member keys a and b (authorized), and mallory (not authorized)."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "keys"
        self.authorized = root / "authorized"
        self.authorized.mkdir(parents=True)
        for name in ("cluster", "a", "b", "mallory"):
            keygen(self.dir, name)
        for name in ("a", "b"):
            shutil.copy(self.dir / f"{name}.key", self.authorized / f"{name}.key")

    def secret(self, name: str) -> Path:
        return self.dir / f"{name}.key_secret"

    def curve(self, name: str) -> CurveConfig:
        return CurveConfig.load(self.secret(name), self.authorized)


@pytest.fixture
def keys(tmp_path) -> Keys:
    return Keys(tmp_path)


class Zmq:
    """Contexts and authenticators of one test, all torn down at its end."""

    def __init__(self) -> None:
        self.contexts: list[zmq.Context] = []
        self.auths = []

    def context(self) -> zmq.Context:
        ctx = zmq.Context()
        self.contexts.append(ctx)
        return ctx

    def server(self, curve: CurveConfig, kind: int) -> tuple[zmq.Socket, int]:
        """A CURVE server socket on its own context with ZAP, bound to a random port."""
        ctx = self.context()
        self.auths.append(start_authenticator(ctx, curve))
        sock = ctx.socket(kind)
        sock.linger = 0
        configure_server(sock, curve)
        port = sock.bind_to_random_port("tcp://127.0.0.1")
        return sock, port

    def client(self, kind: int, port: int, curve: CurveConfig | None, server_key: bytes | None = None) -> zmq.Socket:
        """A client on its own context (another node); no curve: a plain ZeroMQ peer."""
        sock = self.context().socket(kind)
        sock.linger = 0
        if curve is not None:
            configure_client(sock, curve, server_key)
        if kind == zmq.SUB:
            sock.setsockopt(zmq.SUBSCRIBE, b"")
        sock.connect(f"tcp://127.0.0.1:{port}")
        return sock

    def close(self) -> None:
        for auth in self.auths:
            stop_authenticator(auth)
        for ctx in self.contexts:
            ctx.destroy(linger=0)


@pytest.fixture
def z():
    env = Zmq()
    yield env
    env.close()


def recv(sock: zmq.Socket, timeout: float) -> list[zmq.Frame] | None:
    if sock.poll(int(timeout * 1000), zmq.POLLIN):
        return sock.recv_multipart(copy=False)
    return None


def drain(sock: zmq.Socket) -> list[list[bytes]]:
    got = []
    while sock.poll(0, zmq.POLLIN):
        got.append(sock.recv_multipart())
    return got


class Handshakes:
    """The CURVE handshakes a server socket saw (a ZeroMQ socket monitor): the positive event
    that shows an intruder really knocked, and was turned away, before the test looks for
    what did not get through."""

    FAILED = {zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
              zmq.EVENT_HANDSHAKE_FAILED_AUTH}

    def __init__(self, sock: zmq.Socket) -> None:
        self.monitor = sock.get_monitor_socket()
        self.failed = 0
        self.succeeded = 0

    def poll(self) -> Handshakes:
        while self.monitor.poll(0, zmq.POLLIN):
            ev = recv_monitor_message(self.monitor)["event"]
            self.failed += ev in self.FAILED
            self.succeeded += ev == zmq.EVENT_HANDSHAKE_SUCCEEDED
        return self


def publish_until(pub: zmq.Socket, sub: zmq.Socket, payload: bytes, timeout: float) -> list[bytes] | None:
    """PUB/SUB has a slow joiner: publish until the SUB hears it or the time is up."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pub.send_multipart([b"mbr", payload])
        frames = recv(sub, 0.05)
        if frames is not None:
            return [f.bytes for f in frames]
    return None


# -- who gets in ------------------------------------------------------------------------


def test_authorized_client_reaches_router(keys, z):
    router, port = z.server(keys.curve("a"), zmq.ROUTER)
    dealer = z.client(zmq.DEALER, port, keys.curve("b"))
    dealer.send_multipart([b"dir", b"hello from b"])
    frames = recv(router, 10)
    assert frames is not None, "an authorized client got nothing through"
    assert [f.bytes for f in frames[1:]] == [b"dir", b"hello from b"]
    assert frames[-1].get("User-Id") == "b"  # the authenticator names the key's node


def test_authorized_subscriber_reads_pub(keys, z):
    pub, port = z.server(keys.curve("a"), zmq.PUB)
    sub = z.client(zmq.SUB, port, keys.curve("b"))
    assert publish_until(pub, sub, b"gossip", 10) == [b"mbr", b"gossip"]


@pytest.mark.parametrize("intruder", ["unauthorized_key", "plain_zmq"])
def test_intruder_reaches_no_router(keys, z, intruder):
    router, port = z.server(keys.curve("a"), zmq.ROUTER)
    auth = z.auths[-1]
    handshakes = Handshakes(router)
    bad = z.client(zmq.DEALER, port, keys.curve("mallory") if intruder == "unauthorized_key" else None)

    def knocked_and_refused() -> bool:
        try:
            bad.send_multipart([b"dir", b"intruder"], flags=zmq.NOBLOCK)
        except zmq.Again:  # no connection to queue on: the handshake never completes
            pass
        return handshakes.poll().failed >= 1

    # the intruder's messages wait in its queue while it knocks: go on once its handshake failed
    eventually(knocked_and_refused, 30, message="the intruder's handshake refused")
    good = z.client(zmq.DEALER, port, keys.curve("b"))
    good.send_multipart([b"dir", b"member"])
    got = [f.bytes for f in recv(router, 30) or []]
    assert got and got[-1] != b"intruder", "an intruder's message reached the ROUTER"
    assert got[-1] == b"member", "the member's message must arrive (control)"
    rest = drain(router)
    assert all(f[-1] != b"intruder" for f in rest), "an intruder's message reached the ROUTER"
    eventually(lambda: handshakes.poll().succeeded >= 1, 30, message="the member's handshake seen")
    assert handshakes.succeeded == 1  # the member's: the intruder never got a session
    if intruder == "unauthorized_key":
        assert auth.denied >= 1  # refused by ZAP, not merely slow
    assert auth.allowed >= 1


@pytest.mark.parametrize("intruder", ["unauthorized_key", "plain_zmq"])
def test_intruder_reads_nothing_from_pub(keys, z, intruder):
    pub, port = z.server(keys.curve("a"), zmq.PUB)
    auth = z.auths[-1]
    handshakes = Handshakes(pub)
    bad = z.client(zmq.SUB, port, keys.curve("mallory") if intruder == "unauthorized_key" else None)
    good = z.client(zmq.SUB, port, keys.curve("b"))
    assert publish_until(pub, good, b"secret gossip", 30) is not None, "the member must hear the PUB (control)"
    heard = 0

    def member_hears_intruder_refused() -> bool:
        # publish until the intruder's handshake has failed and the member heard 20 more
        # messages: the stream flowed all along, and none of it reached the intruder
        nonlocal heard
        pub.send_multipart([b"mbr", b"secret gossip"])
        heard += len(drain(good))
        assert recv(bad, 0.01) is None, "an intruder read the PUB stream"
        return handshakes.poll().failed >= 1 and heard >= 20

    eventually(member_hears_intruder_refused, 30, interval=0.01, message="the intruder refused, the member served")
    assert drain(bad) == [], "an intruder read the PUB stream"
    if intruder == "unauthorized_key":
        assert auth.denied >= 1


def test_client_refuses_impostor_server(keys, z, tmp_path):
    """An outsider with its own server key, even one that admits our key, gets no connection."""
    impostor_keys = tmp_path / "impostor"
    keygen(impostor_keys, "cluster")
    keygen(impostor_keys, "x")
    impostor = CurveConfig.load(impostor_keys / "x.key_secret", keys.authorized)  # admits a and b
    router, port = z.server(impostor, zmq.ROUTER)
    handshakes = Handshakes(router)
    dealer = z.client(zmq.DEALER, port, keys.curve("b"))  # b expects the real cluster key
    dealer.send_multipart([b"dir", b"for members only"])
    # the client retries: two handshakes refused, the message still waits on the client's side
    eventually(lambda: handshakes.poll().failed >= 2, 30, message="the handshakes with the impostor failed")
    assert drain(router) == [] and handshakes.poll().succeeded == 0


def test_server_refuses_to_run_without_authenticator(keys, z):
    """Without a ZAP handler libzmq would admit any client key: fail closed instead."""
    sock = z.context().socket(zmq.ROUTER)
    with pytest.raises(SecurityError, match="start_authenticator"):
        configure_server(sock, keys.curve("a"))
    sock.close(0)


def test_reload_admits_a_new_key_and_revokes_an_old_one(keys, z):
    router, port = z.server(keys.curve("a"), zmq.ROUTER)
    auth = z.auths[-1]
    shutil.copy(keys.dir / "mallory.key", keys.authorized / "mallory.key")
    (keys.authorized / "b.key").unlink()
    assert auth.reload() == 2  # a and mallory
    newcomer = z.client(zmq.DEALER, port, keys.curve("mallory"))
    newcomer.send_multipart([b"dir", b"now admitted"])
    frames = recv(router, 10)
    assert frames is not None and frames[-1].bytes == b"now admitted"
    revoked = z.client(zmq.DEALER, port, keys.curve("b"))
    revoked.send_multipart([b"dir", b"revoked"])
    eventually(lambda: auth.denied >= 1, 30, message="b's handshake denied")
    assert drain(router) == [], "a revoked key's message reached the ROUTER"


# -- what the wire shows ----------------------------------------------------------------


class SniffingProxy:
    """A TCP relay between client and server that keeps a copy of every byte."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self.captured = bytearray()
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                down, _ = self.listener.accept()
            except (TimeoutError, OSError):
                continue
            up = socket.create_connection(("127.0.0.1", self.upstream_port))
            self.conns += [down, up]
            threading.Thread(target=self._pump, args=(down, up), daemon=True).start()
            threading.Thread(target=self._pump, args=(up, down), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                with self.lock:
                    self.captured += data
                dst.sendall(data)
        except OSError:
            pass
        finally:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def seen(self) -> bytes:
        with self.lock:
            return bytes(self.captured)

    def close(self) -> None:
        self.stopped.set()
        self.listener.close()
        for conn in self.conns:
            conn.close()


@pytest.fixture
def proxies():
    made: list[SniffingProxy] = []
    yield lambda port: made.append(SniffingProxy(port)) or made[-1]
    for p in made:
        p.close()


@pytest.mark.parametrize("secured", [True, False])
def test_direct_messages_are_sealed_on_the_wire(keys, z, proxies, secured):
    """With CURVE the marker never crosses the wire in clear; without it, the sniffer sees it."""
    if secured:
        router, port = z.server(keys.curve("a"), zmq.ROUTER)
    else:
        router = z.context().socket(zmq.ROUTER)
        port = router.bind_to_random_port("tcp://127.0.0.1")
    proxy = proxies(port)
    dealer = z.client(zmq.DEALER, proxy.port, keys.curve("b") if secured else None)
    for _ in range(20):
        dealer.send_multipart([b"dir", MARKER])
    frames = recv(router, 10)
    assert frames is not None and frames[-1].bytes == MARKER, "the message must arrive through the proxy"
    router.send_multipart([frames[0].bytes, b"dir", MARKER])  # and the other direction
    assert recv(dealer, 10) is not None
    wire = proxy.seen()
    assert len(wire) > 20 * len(MARKER)
    if secured:
        assert MARKER not in wire and MARKER[:12] not in wire
    else:
        assert MARKER in wire  # the sniffer works: the secured case's silence means something


def test_broadcasts_are_sealed_on_the_wire(keys, z, proxies):
    pub, port = z.server(keys.curve("a"), zmq.PUB)
    proxy = proxies(port)
    sub = z.client(zmq.SUB, proxy.port, keys.curve("b"))
    assert publish_until(pub, sub, MARKER, 10) == [b"mbr", MARKER]
    wire = proxy.seen()
    assert wire and MARKER not in wire and MARKER[:12] not in wire


# -- keys and their errors --------------------------------------------------------------


def test_keygen_writes_a_zmq_certificate_pair(tmp_path):
    public, secret = keygen(tmp_path / "k", "node-a")
    assert (public.name, secret.name) == ("node-a.key", "node-a.key_secret")
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE(public.stat().st_mode) == 0o644
    pub_key, none = zmq.auth.load_certificate(public)
    pub_again, sec_key = zmq.auth.load_certificate(secret)
    assert none is None and pub_key == pub_again and len(sec_key) == 40
    assert sorted(p.name for p in (tmp_path / "k").iterdir()) == ["node-a.key", "node-a.key_secret"]  # no scratch left


def test_keygen_keeps_existing_keys_unless_forced(tmp_path):
    _, secret = keygen(tmp_path, "a")
    before = secret.read_bytes()
    with pytest.raises(FileExistsError, match="a.key"):
        keygen(tmp_path, "a")
    assert secret.read_bytes() == before
    keygen(tmp_path, "a", force=True)
    assert secret.read_bytes() != before


@pytest.mark.parametrize("name", ["", "../x", ".hidden", " a"])
def test_keygen_refuses_odd_names(tmp_path, name):
    with pytest.raises(ValueError):
        keygen(tmp_path, name)


def test_keygen_command(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="corec-node")
    add_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["keygen", "node-a", "--dir", str(tmp_path / "keys")])
    assert args.func is cmd_keygen
    assert cmd_keygen(args) == 0
    out = capsys.readouterr().out
    assert str(tmp_path / "keys" / "node-a.key") in out and str(tmp_path / "keys" / "node-a.key_secret") in out
    assert cmd_keygen(args) == 1  # exists: kept
    assert "exists" in capsys.readouterr().err
    assert cmd_keygen(parser.parse_args(["keygen", "../x", "--dir", str(tmp_path)])) == 2


def test_load_reads_every_key(keys):
    curve = keys.curve("a")
    assert set(curve.authorized.values()) == {"a", "b"}
    assert curve.server_public_key != curve.public_key
    assert curve.cluster_key_file == str(keys.dir / "cluster.key_secret")
    assert "secret_key=" not in repr(curve)  # secrets stay out of logs and tracebacks


def _broken(keys: Keys, case: str) -> tuple[Path, Path, Path | None, str]:
    """(secret_key_file, public_keys_dir, cluster_key_file, the file the error must name)."""
    secret, authorized = keys.secret("a"), keys.authorized
    if case == "missing_node_key":
        return keys.dir / "nope.key_secret", authorized, None, "nope.key_secret"
    if case == "missing_cluster_key":
        return secret, authorized, keys.dir / "other.key_secret", "other.key_secret"
    if case == "public_half_given":
        return keys.dir / "a.key", authorized, keys.secret("cluster"), "a.key"
    if case == "world_readable_secret":
        os.chmod(secret, 0o644)
        return secret, authorized, None, "a.key_secret"
    if case == "cluster_key_as_node_key":
        return keys.secret("cluster"), authorized, None, "cluster.key_secret"
    if case == "no_authorized_dir":
        return secret, keys.dir / "absent", None, "absent"
    if case == "empty_authorized_dir":
        empty = keys.dir.parent / "empty"
        empty.mkdir()
        return secret, empty, None, "empty"
    if case == "garbage_public_key":
        (authorized / "junk.key").write_text("curve\n    public-key = \"short\"\n")
        return secret, authorized, None, "junk.key"
    if case == "cluster_key_authorized":
        shutil.copy(keys.dir / "cluster.key", authorized / "cluster.key")
        return secret, authorized, None, "cluster.key"
    raise AssertionError(case)


@pytest.mark.parametrize("case", [
    "missing_node_key", "missing_cluster_key", "public_half_given", "world_readable_secret",
    "cluster_key_as_node_key", "no_authorized_dir", "empty_authorized_dir", "garbage_public_key",
    "cluster_key_authorized",
])
def test_load_errors_name_the_file(keys, case):
    secret, authorized, cluster, culprit = _broken(keys, case)
    with pytest.raises(SecurityError) as err:
        CurveConfig.load(secret, authorized, cluster)
    assert culprit in str(err.value)


# -- end to end: real nodes (passes once node.py/transport.py apply [security]) ---------


def _secured_config(path: Path, keys: Keys, name: str) -> Path:
    path.write_text(
        "[security]\nenabled = true\n"
        f'secret_key_file = "{keys.secret(name)}"\n'
        f'public_keys_dir = "{keys.authorized}"\n'
    )
    return path


def test_intruder_cannot_join_secured_cluster(cluster, keys, tmp_path):
    """Members a and b (CURVE) see each other; plain x and unauthorized mallory never get in."""
    test = ["--profile", "test"]
    a = cluster.start("a", args=["--config", str(_secured_config(tmp_path / "a.toml", keys, "a")), *test]).wait_ready()
    b = cluster.start("b", join=[a.addr], args=["--config", str(_secured_config(tmp_path / "b.toml", keys, "b")), *test]).wait_ready()
    members = {"a": "alive", "b": "alive"}
    eventually(lambda: a.members() == members and b.members() == members, 20, message="secured a and b see each other")

    # x: no CURVE at all; mallory: CURVE with the cluster key (a stolen copy) but an unauthorized node key
    x = cluster.start("x", join=[a.addr, b.addr], args=test).wait_ready()
    mallory = cluster.start("mallory", join=[a.addr, b.addr],
                            args=["--config", str(_secured_config(tmp_path / "m.toml", keys, "mallory")), *test]).wait_ready()
    # Long enough for any join to land, counted in events rather than seconds: mallory's
    # handshakes were refused by both members (they log it), x pushed its join again and
    # again (join retries), and a and b went on with many probe and gossip rounds meanwhile
    start_in = {m.name: m.ctl("status")["messages_in"] for m in (a, b)}

    def join_pushes(node) -> int:
        # sent, or refused by a DEALER whose handshake failed (no connection to queue on)
        st = node.ctl("status")
        return st["messages_out"] + st["dropped"].get("direct_queue_full", 0) + st["dropped"].get("direct_error", 0)

    def intruders_knocked_and_members_talked() -> bool:
        refused = all(any(e.get("event") == "curve_denied" for e in m.log_events()) for m in (a, b))
        retried = join_pushes(x) >= 6  # its join to a and b, then retried twice or more
        talked = all(m.ctl("status")["messages_in"] >= start_in[m.name] + 40 for m in (a, b))
        return refused and retried and talked

    eventually(intruders_knocked_and_members_talked, 60, message="the intruders tried, the members went on")
    assert a.members() == members and b.members() == members, "an intruder joined the secured cluster"
    for intruder in (x, mallory):
        alive = {name for name, status in intruder.members().items() if status == "alive"}
        assert alive == {intruder.name}, f"{intruder.name} sees members it should not reach: {intruder.members()}"
    for member in (a, b):
        names = {e.get("name") for e in member.log_events() if e.get("event") == "member_changed"}
        assert not names & {"x", "mallory"}


# -- bounded input: what a stranger can make a node hold ------------------------------------

STRANGER_FRAMES, STRANGER_FRAME_BYTES = 128, 2 << 20  # one 256 MiB multipart message
BOUND_KIB = 50 << 10  # growth of the node's RSS a refused stranger may cause, at most


def _peak_growth_kib(node, action) -> tuple[int, object]:
    """How far the node's peak RSS rose above its RSS while ``action`` ran, and its result."""
    pid = node.proc.pid
    assert reset_peak(pid), "the kernel refused to reset VmHWM (clear_refs)"
    before, _ = rss_kib(pid)
    result = action()
    _, peak = rss_kib(pid)
    return peak - before, result


def _strangers(node) -> list[tuple[str, Attempt]]:
    """Each kind of stranger at each port, trying to deliver the 256 MiB message."""
    out = []
    for port, socket_type in ((node.port, b"DEALER"), (node.pub_port, b"SUB")):
        for mechanism in (b"NULL", b"CURVE"):
            attempt = send_message(("127.0.0.1", port), STRANGER_FRAMES, STRANGER_FRAME_BYTES,
                                   mechanism=mechanism, socket_type=socket_type, tries=5, deadline=30)
            out.append((f"{mechanism.decode()} at {socket_type.decode()} port", attempt))
    return out


def _allowlist_config(path: Path, networks: list[str]) -> Path:
    path.write_text("[security]\nallow = [" + ", ".join(f'"{n}"' for n in networks) + "]\n")
    return path


def test_unsecured_node_buffers_a_strangers_message(cluster):
    """The case CURVE exists for: without it, the stranger's message is taken whole (and
    the test's stranger is big enough to show it)."""
    node = cluster.start("open", args=["--profile", "test"]).wait_ready()
    growth, attempt = _peak_growth_kib(node, lambda: send_message(
        ("127.0.0.1", node.port), STRANGER_FRAMES, STRANGER_FRAME_BYTES, tries=1))
    assert attempt.delivered and attempt.written >= attempt.offered
    assert growth > 200 << 10, f"RSS rose by {growth >> 10} MiB only"
    eventually(lambda: node.ctl("status")["rejected"].get("frames", 0) >= 1, 10,
               message="the message reached the node and was rejected there")


def test_curve_node_holds_nothing_of_a_strangers_message(cluster, keys, tmp_path, z):
    """With CURVE a stranger's message is refused before libzmq buffers it, at either port,
    whether the stranger speaks plain ZMTP or starts a CURVE handshake it cannot finish."""
    node = cluster.start("a", args=["--config", str(_secured_config(tmp_path / "a.toml", keys, "a")),
                                    "--profile", "test"]).wait_ready()
    growth, attempts = _peak_growth_kib(node, lambda: _strangers(node))
    for what, attempt in attempts:
        assert not attempt.delivered and attempt.refused == attempt.connections == 5, (what, attempt)
        assert attempt.written < attempt.offered, (what, attempt)
    # mallory: libzmq with a key the node does not know; its message never leaves its process
    mallory = z.client(zmq.DEALER, node.port, keys.curve("mallory"))
    mallory.send_multipart([b"dir", b"x" * STRANGER_FRAME_BYTES], copy=False)
    eventually(lambda: node.ctl("status")["rejected"].get("curve_denied", 0) >= 1, 30, message="mallory refused")
    denied = [e for e in node.log_events() if e.get("event") == "curve_denied"]
    assert denied and denied[0]["peer"] == "127.0.0.1" and denied[0]["key"] == keys.curve("mallory").public_key.decode()
    assert growth < BOUND_KIB, f"a refused stranger moved RSS by {growth >> 10} MiB"
    assert node.proc.poll() is None and node.members() == {"a": "alive"}


def test_allowlist_refuses_a_stranger_before_buffering(cluster, tmp_path):
    """CURVE off, security.allow on: a peer from outside the networks is refused at ZAP,
    counted and logged with its address, and holds nothing."""
    # 192.0.2.0/24 is a documentation network: only the stranger's address (127.0.0.1) matters
    node = cluster.start("w", args=["--config", str(_allowlist_config(tmp_path / "w.toml", ["192.0.2.0/24"])),
                                    "--profile", "test"]).wait_ready()
    started = time.monotonic()
    growth, attempts = _peak_growth_kib(node, lambda: _strangers(node))
    took = time.monotonic() - started
    for what, attempt in attempts:
        assert not attempt.delivered and attempt.refused == attempt.connections == 5, (what, attempt)
    assert growth < BOUND_KIB, f"a refused stranger moved RSS by {growth >> 10} MiB"
    # the NULL strangers are refused by ZAP (a few are cut by a frame over the PUB's limit first)
    refused = node.ctl("status")["rejected"]
    assert refused.get("address_denied", 0) >= 5, refused
    denied = [e for e in node.log_events() if e.get("event") == "address_denied"]
    assert denied and denied[0]["peer"] == "127.0.0.1" and denied[0]["mechanism"] == "NULL"
    assert len(denied) <= 1 + took / DENIAL_LOG_PERIOD, "one line per refusal: the log must be rate-limited"


def test_allowlist_admits_members_from_its_networks(cluster, tmp_path):
    config = str(_allowlist_config(tmp_path / "lo.toml", ["127.0.0.0/8", "::1"]))
    a = cluster.start("a", args=["--config", config, "--profile", "test"]).wait_ready()
    b = cluster.start("b", join=[a.addr], args=["--config", config, "--profile", "test"]).wait_ready()
    both = {"a": "alive", "b": "alive"}
    eventually(lambda: a.members() == both and b.members() == both, 30, message="a and b see each other")
    assert a.ctl("status")["rejected"].get("address_denied") == 0


@pytest.mark.parametrize("entry", ["10.0.0.0/33", "localhost", ""])
def test_allowlist_entries_are_checked(tmp_path, entry):
    with pytest.raises(ConfigError) as err:
        load_config(_allowlist_config(tmp_path / "bad.toml", [entry]), env={})
    assert "security.allow" in str(err.value)


def test_sighup_reloads_the_authorized_keys_of_a_running_cluster(cluster, keys, tmp_path):
    """mallory's key is not authorized: refused. Its key is added and a and b get SIGHUP:
    its join retries get in, with no restart of anyone."""
    test = ["--profile", "test"]
    a = cluster.start("a", args=["--config", str(_secured_config(tmp_path / "a.toml", keys, "a")), *test]).wait_ready()
    b = cluster.start("b", join=[a.addr], args=["--config", str(_secured_config(tmp_path / "b.toml", keys, "b")), *test]).wait_ready()
    eventually(lambda: a.members() == {"a": "alive", "b": "alive"}, 20)
    mallory = cluster.start("mallory", join=[a.addr],
                            args=["--config", str(_secured_config(tmp_path / "m.toml", keys, "mallory")), *test]).wait_ready()
    eventually(lambda: any(e.get("event") == "curve_denied" for e in a.log_events()), 30, message="mallory refused")
    # the refused side says why, naming the peer that refused it
    eventually(lambda: any(e.get("event") == "curve_refused" and e.get("peer") == a.addr for e in mallory.log_events()),
               30, message="mallory told it was refused")
    assert "mallory" not in a.members()

    shutil.copy(keys.dir / "mallory.key", keys.authorized / "mallory.key")
    for node in (a, b, mallory):
        node.proc.send_signal(signal.SIGHUP)  # the node process only, as systemd's ExecReload: it passes it on
    everyone = {"a": "alive", "b": "alive", "mallory": "alive"}
    eventually(lambda: all(n.members() == everyone for n in (a, b, mallory)), 60, message="mallory admitted after the reload")
    for node in (a, b):
        reloaded = {e["sockets"]: e for e in node.log_events() if e.get("event") == "keys_reloaded"}
        assert set(reloaded) == {"data", "mesh"} and reloaded["mesh"]["keys"] == "3", reloaded
        assert node.proc.poll() is None  # both processes took the signal and run on
    eventually(lambda: any(e.get("event") == "curve_admitted" and e.get("peer") == a.addr for e in mallory.log_events()),
               10, message="mallory told it is admitted now")


def test_a_reload_that_cannot_read_the_keys_keeps_the_old_ones(cluster, keys, tmp_path):
    """A directory that fails to load changes nothing: the keys in force stay in force."""
    a = cluster.start("a", args=["--config", str(_secured_config(tmp_path / "a.toml", keys, "a")),
                                 "--profile", "test"]).wait_ready()
    # b's key revoked and a broken file beside it: the reload fails whole, b stays authorized
    (keys.authorized / "b.key").unlink()
    (keys.authorized / "broken.key").write_text("not a certificate\n")
    a.proc.send_signal(signal.SIGHUP)
    failed = eventually(lambda: [e for e in a.log_events() if e.get("event") == "keys_reload_failed"], 20)
    assert {e["sockets"] for e in failed} <= {"data", "mesh"} and "broken.key" in failed[0]["error"]
    (keys.authorized / "broken.key").unlink()  # b reads the directory at its own start
    cluster.start("b", join=[a.addr], args=["--config", str(_secured_config(tmp_path / "b.toml", keys, "b")),
                                                "--profile", "test"]).wait_ready()
    eventually(lambda: a.members() == {"a": "alive", "b": "alive"}, 30, message="the old keys still admit b")
