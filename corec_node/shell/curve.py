"""CurveZMQ for the mesh: who may join, publish and read, and nobody reads the wire.

Key design (one shared server key, one client key per node)
-----------------------------------------------------------
A ZeroMQ CURVE client must know the server's public key before it connects, but a node
joins by address ("host:port") and learns peers by gossip, so it cannot know which node
owns a key before it has talked to it. Hence:

- **The cluster key** (``cluster.key_secret``, made once with ``corec-node keygen cluster``)
  is the *server* key pair of every node: its ROUTER and its PUB are CURVE servers with it,
  and every DEALER and SUB names its public half as the server key. Every node holds a
  copy of it. A client therefore knows it talks to *a* cluster node, never to an
  impostor that lacks the cluster secret.
- **A node key** (``NAME.key_secret``, ``corec-node keygen NAME``) per node is its *client*
  key pair. Each node's public half (``NAME.key``) goes into the authorized directory of
  every node; the ZAP authenticator on each node admits a client only if its public key is
  in that directory. ``security.secret_key_file`` names the node key; the cluster key is
  read from ``cluster.key_secret`` beside it unless given explicitly.
- The cluster's own public key must not be in the authorized directory (load refuses it):
  that would admit any holder of the cluster secret, i.e. every node ever provisioned,
  and per-node revocation would be lost.

Threat model
------------
Protected, against anyone who can reach the ports or sit on the network path:
- confidentiality and integrity of every mesh message (CurveZMQ: Curve25519 key exchange,
  XSalsa20-Poly1305, per-connection transient keys so recorded traffic stays sealed even
  if a long-term secret leaks later);
- admission: a client without an authorized node key cannot join, send direct messages
  (probes, votes, state pushes) or subscribe to broadcasts; nothing it sends reaches the
  node's protocol code, and a plain (NULL) ZeroMQ or raw TCP peer fails the handshake;
- server authenticity: a node connects only to servers holding the cluster secret, so an
  outsider cannot pose as a member's ROUTER or PUB.

Not protected:
- a member is fully trusted: any holder of an authorized node key and the cluster key can
  send any protocol message and claim any node name (the envelope's sender is not yet
  bound to the CURVE key; the authenticator's User-Id is the key's file name, which makes
  that check possible later);
- revocation is two steps: remove ``NAME.key`` from every authorized directory (and reload
  or restart the nodes) so the node can no longer connect out, *and* rotate the cluster key,
  because the revoked node still holds the cluster secret and could serve as a PUB/ROUTER
  to nodes that still dial its old address;
- keys on disk are protected by file permissions only (secret files 0600 or 0640 to the
  service group; world-readable secrets are refused at load);
- traffic analysis (who talks to whom, when, how much) and denial of service: anyone who
  reaches the ports can open TCP connections and start handshakes;
- memory, only in part: a stranger's message is refused before libzmq queues it (a peer
  without an authorized key fails the handshake, a peer outside ``security.allow`` is
  refused by ZAP during it), but during a handshake libzmq holds the frame in flight, one
  per connection, up to the socket's MAXMSGSIZE (the ROUTER's
  ``mesh.max_message_bytes`` + 1 MiB, the PUB's 16 KiB), for at most the 30 s handshake
  interval. Without CURVE or an allowlist nothing bounds what libzmq buffers (a multipart
  message of any number of frames) except the kernel: systemd's ``MemoryMax=``;
- the control socket (local unix socket, 0600) and the metrics endpoint are outside CURVE:
  bind metrics to loopback or a management network.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import stat
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from corec_node import log

CLUSTER_KEY_NAME = "cluster"  # file stem of the shared server key pair
SECRET_SUFFIX = ".key_secret"  # zmq.auth's naming: NAME.key (public), NAME.key_secret (both halves)
PUBLIC_SUFFIX = ".key"
DENIAL_LOG_PERIOD = 10.0  # seconds between "curve_denied" lines: a scanner must not flood the log

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_AUTH_CONTEXTS: set[int] = set()  # libzmq contexts (by address) with a running authenticator
_AUTH_LOCK = threading.Lock()


class SecurityError(Exception):
    """A local key or setup problem; the message names the file and the fix."""


# -- keys ---------------------------------------------------------------------------


def keygen(directory: str | os.PathLike[str], name: str, *, force: bool = False) -> tuple[Path, Path]:
    """Write ``NAME.key`` (public, 0644) and ``NAME.key_secret`` (0600) into ``directory``.

    Uses ``zmq.auth.create_certificates`` in a private (0700) scratch directory, so the
    secret is never readable by others, then moves both files into place. Existing files
    are kept (FileExistsError) unless ``force``.
    """
    if not name or "/" in name or name.startswith(".") or name != name.strip():
        raise ValueError(f"key name {name!r}: expected a plain file name such as a node name")
    if not zmq.has("curve"):
        raise SecurityError("this libzmq has no CURVE support (built without libsodium/tweetnacl)")
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    public_path, secret_path = target / f"{name}{PUBLIC_SUFFIX}", target / f"{name}{SECRET_SUFFIX}"
    if not force:
        for path in (public_path, secret_path):
            if path.exists():
                raise FileExistsError(f"{path} exists; keep it, or pass --force to replace it")
    scratch = Path(tempfile.mkdtemp(prefix=".keygen-", dir=target))
    try:
        tmp_public, tmp_secret = (Path(p) for p in zmq.auth.create_certificates(scratch, name))
        os.chmod(tmp_secret, 0o600)
        os.chmod(tmp_public, 0o644)
        for tmp, final in ((tmp_secret, secret_path), (tmp_public, public_path)):
            if force:
                os.replace(tmp, final)
            else:
                os.link(tmp, final)  # atomic and never overwrites: FileExistsError if another keygen won
    finally:
        for leftover in scratch.iterdir():
            leftover.unlink()
        scratch.rmdir()
    return public_path, secret_path


def _check_key(key: bytes | None, path: Path, what: str) -> bytes:
    if key is None:
        raise SecurityError(f"{path}: no {what} in this file")
    try:
        if len(key) != 40 or len(z85.decode(key)) != 32:
            raise ValueError
    except ValueError:
        raise SecurityError(f"{path}: the {what} is not a 40-character Z85 CURVE key") from None
    return key


def _load_secret(path: Path, role: str) -> tuple[bytes, bytes]:
    """(public, secret) from a ``.key_secret`` file, refusing unreadable or world-readable files."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise SecurityError(f"{path}: {role} not found (make it with: corec-node keygen NAME --dir DIR)") from None
    except OSError as exc:
        raise SecurityError(f"{path}: {role} unreadable: {exc.strerror}") from None
    if not stat.S_ISREG(mode):
        raise SecurityError(f"{path}: {role} is not a regular file")
    if mode & stat.S_IROTH:
        raise SecurityError(f"{path}: {role} is readable by everyone; run: chmod 600 {path}")
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise SecurityError(f"{path}: {role} unreadable: {exc}") from None
    if secret is None:
        raise SecurityError(f"{path}: {role} has no secret-key; give the .key_secret file, not the public .key")
    return _check_key(public, path, "public-key"), _check_key(secret, path, "secret-key")


def load_authorized(public_keys_dir: str | os.PathLike[str]) -> dict[bytes, str]:
    """Authorized client keys: Z85 public key -> name (the ``NAME.key`` file stem)."""
    directory = Path(public_keys_dir)
    if not directory.is_dir():
        raise SecurityError(f"{directory}: authorized public keys directory not found")
    keys: dict[bytes, str] = {}
    for path in sorted(directory.glob(f"*{PUBLIC_SUFFIX}")):
        try:
            public, _secret = zmq.auth.load_certificate(path)
        except (OSError, ValueError) as exc:
            raise SecurityError(f"{path}: not a public key file: {exc}") from None
        keys[_check_key(public, path, "public-key")] = path.name[: -len(PUBLIC_SUFFIX)]
    if not keys:
        raise SecurityError(f"{directory}: no NAME.key public key files; nobody could connect")
    return keys


@dataclass(frozen=True, slots=True)
class CurveConfig:
    """This node's keys and whom it admits; immutable, safe to share between threads."""

    public_key: bytes  # this node's client key pair (Z85)
    secret_key: bytes = field(repr=False)
    server_public_key: bytes  # the cluster key pair, used by every ROUTER and PUB
    server_secret_key: bytes = field(repr=False)
    authorized: Mapping[bytes, str]  # Z85 public key -> node name
    secret_key_file: str = ""
    cluster_key_file: str = ""
    public_keys_dir: str = ""

    @classmethod
    def load(cls, secret_key_file: str | os.PathLike[str], public_keys_dir: str | os.PathLike[str],
             cluster_key_file: str | os.PathLike[str] | None = None) -> CurveConfig:
        """Read and check every key; :class:`SecurityError` names the file at fault.

        ``cluster_key_file`` defaults to ``cluster.key_secret`` beside ``secret_key_file``.
        """
        if not zmq.has("curve"):
            raise SecurityError("this libzmq has no CURVE support (built without libsodium/tweetnacl)")
        node_path = Path(secret_key_file)
        cluster_path = Path(cluster_key_file) if cluster_key_file else node_path.with_name(CLUSTER_KEY_NAME + SECRET_SUFFIX)
        public, secret = _load_secret(node_path, "node secret key")
        server_public, server_secret = _load_secret(cluster_path, "cluster secret key")
        if public == server_public:
            raise SecurityError(f"{node_path}: this is the cluster key; give the node's own key (corec-node keygen NAME)")
        authorized = load_authorized(public_keys_dir)
        if server_public in authorized:
            raise SecurityError(
                f"{Path(public_keys_dir) / (authorized[server_public] + PUBLIC_SUFFIX)}: the cluster's public key "
                "must not be authorized (every key holder, revoked ones too, would get in); remove it")
        if public not in authorized:
            log.event("own_key_not_authorized", logging.WARNING, key_file=str(node_path), dir=str(public_keys_dir),
                      detail="this node's public key is not in its authorized directory; peers with the same directory will refuse it")
        return cls(public, secret, server_public, server_secret, authorized,
                   str(node_path), str(cluster_path), str(public_keys_dir))


# -- authenticator ------------------------------------------------------------------


def parse_allow(entries: Iterable[str]) -> tuple[Network, ...]:
    """Networks from ``security.allow`` ("10.0.0.0/8", "192.0.2.7", "fd00::/8");
    ValueError names the entry that is not one."""
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{entry!r} is not an IP address or network (such as 10.0.0.0/8)") from None
    return tuple(networks)


def _address_in(address: str, networks: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address.partition("%")[0])
    except ValueError:
        return False  # not an IP peer (ipc, inproc): no address of ours to admit
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # a dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d
    return any(ip in net for net in networks)


class CurveAuthenticator(ThreadAuthenticator):
    """ZAP handler admitting the authorized node keys and, if given, only peers from the
    allowed networks; in its own thread.

    A thread rather than the node's event loop: handshakes are then answered even while
    the loop is busy, and nothing here can block the loop. A refusal here ends the
    connection during its handshake, before libzmq queues any message from it: that is
    what bounds what a stranger can make the node hold (the one frame in flight). User-Id
    of a connection is the node name of its key
    file. :attr:`allowed` counts admitted handshakes, :attr:`denied` refused ones;
    :meth:`refused` says why.
    """

    def __init__(self, context: zmq.Context, curve: CurveConfig | None, allow: Iterable[str] = ()) -> None:
        super().__init__(context=context, log=logging.getLogger("corec.zap"))
        self.curve = curve
        self._authorized: Mapping[bytes, str] = dict(curve.authorized) if curve is not None else {}
        self.networks = parse_allow(allow)
        self.allowed = 0
        self.denied = 0
        self.key_denied = 0
        self.address_denied = 0
        self._peer = ""  # the address of the request being answered (one ZAP thread: one at a time)
        self._last_denial_log = float("-inf")

    def refused(self) -> dict[str, int]:
        """Refused handshakes by reason, as status and metrics show them."""
        out = {}
        if self.curve is not None:
            out["curve_denied"] = self.key_denied
        if self.networks:
            out["address_denied"] = self.address_denied
        return out

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        """The address check first, for every mechanism; then zmq.auth's own (CURVE: :meth:`callback`)."""
        self._peer = msg[3].decode("utf-8", "replace") if len(msg) >= 6 else ""
        if self.networks and len(msg) >= 6 and not _address_in(self._peer, self.networks):
            self.denied += 1
            self.address_denied += 1
            self._log_denial("address_denied", "a peer outside security.allow tried to connect",
                             mechanism=msg[5].decode("ascii", "replace"))
            self._send_zap_reply(msg[1], b"400", b"Address not allowed")
            return
        await super().handle_zap_message(msg)
        if self.curve is None and len(msg) >= 6 and msg[5] == b"NULL":
            self.allowed += 1  # an allowed address on an unsecured socket: nothing more to check

    def callback(self, domain: str, key: bytes) -> bool:
        """Credentials-provider hook (runs on the ZAP thread; a dict lookup, never blocks)."""
        if key in self._authorized:
            self.allowed += 1
            return True
        self.denied += 1
        self.key_denied += 1
        self._log_denial("curve_denied", "a client with an unknown key tried to connect",
                         key=key.decode("ascii", "replace"))
        return False

    def _log_denial(self, event: str, detail: str, **fields: Any) -> None:
        """One line per DENIAL_LOG_PERIOD at most, naming the latest peer: a scanner must not flood the log."""
        now = time.monotonic()
        if now - self._last_denial_log >= DENIAL_LOG_PERIOD:
            self._last_denial_log = now
            log.event(event, logging.WARNING, peer=self._peer, **fields, total=self.denied, detail=detail)

    def curve_user_id(self, client_public_key: bytes) -> str:
        return self._authorized.get(z85.encode(client_public_key), "")

    def reload(self) -> int:
        """Re-read the authorized directory (after a key was added or revoked); returns the count.

        On a bad directory the old set stays in force and SecurityError is raised.
        """
        if self.curve is None:
            return 0
        self._authorized = load_authorized(self.curve.public_keys_dir)
        return len(self._authorized)


def reload_keys(auth: CurveAuthenticator | None, sockets: str) -> int | None:
    """SIGHUP's work in one process: re-read the authorized directory and log the outcome
    (``keys_reloaded``, or ``keys_reload_failed`` naming the cause; the old keys stay).
    None when this process has no CURVE."""
    if auth is None or auth.curve is None:
        return None
    try:
        count = auth.reload()
    except SecurityError as exc:
        log.event("keys_reload_failed", logging.ERROR, sockets=sockets, error=str(exc),
                  detail="the keys authorized before stay in force")
        return None
    log.event("keys_reloaded", sockets=sockets, keys=count, dir=str(auth.curve.public_keys_dir))
    return count


def start_authenticator(context: zmq.Context, curve: CurveConfig | None,
                        allow: Iterable[str] = ()) -> CurveAuthenticator:
    """Start ZAP on ``context`` (any shadow of the node's context); call before binding.

    Without a ZAP handler libzmq admits every CURVE client, so :func:`configure_server`
    refuses to run on a context that has none. ``allow``: admit only peers from these
    networks, with CURVE or without (an unsecured socket asks ZAP only if it has a
    ZAP_DOMAIN). Stop it with :func:`stop_authenticator` before terminating the context.
    """
    if isinstance(context, zmq.asyncio.Context):  # the handler thread needs plain sockets
        context = zmq.Context.shadow(context.underlying)
    auth = CurveAuthenticator(context, curve, allow)
    auth.start()
    if curve is not None:
        auth.configure_curve_callback(domain="*", credentials_provider=auth)
    with _AUTH_LOCK:
        _AUTH_CONTEXTS.add(context.underlying)
    return auth


def stop_authenticator(auth: CurveAuthenticator) -> None:
    with _AUTH_LOCK:
        _AUTH_CONTEXTS.discard(auth.context.underlying)
    auth.stop()


def configure_server(sock: zmq.Socket, curve: CurveConfig) -> None:
    """Make ``sock`` (ROUTER or PUB) a CURVE server with the cluster key; before ``bind``.

    A PUB is a server too, so a SUB must be an authorized client to receive anything.
    """
    with _AUTH_LOCK:
        guarded = sock.context.underlying in _AUTH_CONTEXTS
    if not guarded:
        raise SecurityError("no CURVE authenticator on this socket's context: call start_authenticator first "
                            "(without one libzmq admits every client key)")
    sock.setsockopt(zmq.CURVE_SECRETKEY, curve.server_secret_key)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, curve.server_public_key)
    sock.setsockopt(zmq.CURVE_SERVER, 1)


def configure_client(sock: zmq.Socket, curve: CurveConfig, server_public_key: bytes | None = None) -> None:
    """Make ``sock`` (DEALER or SUB) a CURVE client with this node's key; before ``connect``.

    ``server_public_key`` defaults to the cluster key, which every node serves with.
    """
    sock.setsockopt(zmq.CURVE_SECRETKEY, curve.secret_key)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, curve.public_key)
    sock.setsockopt(zmq.CURVE_SERVERKEY, server_public_key or curve.server_public_key)


# -- command line -------------------------------------------------------------------


def add_cli(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``keygen NAME --dir DIR [--force]`` to the ``corec-node`` subcommands."""
    p = subparsers.add_parser(
        "keygen", help="make a CurveZMQ key pair (a node's, or 'cluster' for the shared server key)",
        description="Write NAME.key (public) and NAME.key_secret (secret, mode 0600) for CurveZMQ. "
                    "Make the cluster key once with NAME 'cluster' and a node key per node; put every "
                    "node's NAME.key (never cluster.key) into each node's security.public_keys_dir.")
    p.add_argument("name", metavar="NAME", help="node name, or 'cluster' for the shared server key")
    p.add_argument("--dir", required=True, metavar="DIR", help="directory to write the key files into")
    p.add_argument("--force", action="store_true", help="replace existing key files")
    p.set_defaults(func=cmd_keygen)
    return p


def cmd_keygen(args: argparse.Namespace) -> int:
    """Exit 0 and print the two paths; 1 if the files exist or cannot be written; 2 on a bad name."""
    try:
        public, secret = keygen(args.dir, args.name, force=getattr(args, "force", False))
    except ValueError as exc:
        print(f"corec-node: {exc}", file=sys.stderr)
        return 2
    except (OSError, SecurityError) as exc:
        print(f"corec-node: keygen: {exc}", file=sys.stderr)
        return 1
    print(f"public: {public}")
    print(f"secret: {secret}")
    return 0


__all__ = [
    "CLUSTER_KEY_NAME",
    "CurveAuthenticator",
    "CurveConfig",
    "SecurityError",
    "add_cli",
    "cmd_keygen",
    "configure_client",
    "configure_server",
    "keygen",
    "load_authorized",
    "parse_allow",
    "reload_keys",
    "start_authenticator",
    "stop_authenticator",
]
