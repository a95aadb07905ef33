"""ZeroMQ sockets of the network (the link between a node's two processes is link.py; both
read through reader.py).

One node owns:
- a ROUTER bound on its direct address: probes, push-pull and votes arrive here;
- a PUB bound on its PUB address: gossip, heartbeats, aggregates, alerts, entity batches;
- a SUB connected to every known member's PUB, subscribed to the topics the node wants;
- one DEALER per peer it talks to directly, connected to that peer's ROUTER.

Frames are opaque here: the node encodes and decodes them with ``corec_node.wire``. Sends
never block the event loop: a full queue or an unreachable peer drops the message and
counts it (the mesh protocols tolerate loss by design: probes time out, gossip is
retransmitted, anti-entropy repairs the rest).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from corec_node import log
from corec_node.config import join_addr, split_addr
from corec_node.log import LOGGER_NAME
from corec_node.shell.curve import (
    CurveConfig,
    configure_client,
    configure_server,
    start_authenticator,
    stop_authenticator,
)
from corec_node.shell.reader import ZERO_COPY_MIN, SocketReader

Handler = Callable[[list[bytes]], Awaitable[None] | None]
DirectHandler = Callable[[list[bytes], bytes], Awaitable[None] | None]  # (frames, ROUTER identity)
PeerHint = Callable[[str, bool], None]  # (peer's direct addr, reconnect refused)

# Socket options, each on purpose:
LINGER_MS = 0  # on close, drop unsent frames: a stopping node must not hang on dead peers
SNDHWM = 10_000  # per-peer send queue; past it PUB drops (lossy by design), DEALER raises EAGAIN
DEALER_HWM = 64  # direct messages queued towards one peer that is not (yet) connected
RCVHWM = 100_000  # deep receive queues absorb bursts of entity batches
ROUTER_RCVHWM = 1_000  # per peer: a producer the node makes wait holds at most this many batches here
RECONNECT_IVL_MS = 100  # first reconnect after 100 ms: a restarted peer is heard again quickly
RECONNECT_IVL_MAX_MS = 2_000  # back off to 2 s for peers that stay down
# ZMTP heartbeats find dead TCP connections (a host gone without a FIN, a cut link) that
# SWIM already suspects, so their connecting side redials. Only the dialling sockets (DEALER,
# SUB) send them; the peer answers each and, told the TTL, closes a connection gone silent.
# Every 5 s, not every 1 s from both ends: an idle node's ZeroMQ I/O thread handled ~600
# pings and pongs a second at 40 nodes (more than half of its mesh process's CPU), while
# detection does not wait for them (a killed process's FIN closes its connections at once).
# A connection silent through a cut is closed within 10 s and redialled every 2 s, so a
# healed link carries traffic again at once instead of after TCP's retransmit backoff.
HEARTBEAT_IVL_MS = 5_000
HEARTBEAT_TIMEOUT_MS = 5_000
HEARTBEAT_TTL_MS = 15_000
# A dial whose SYN went out into a cut link is retried by the kernel at 1, 3, 7, 15 s...:
# after a link flaps, a connect could wait half a minute on a link that is long back up.
# Past 2 s libzmq abandons the attempt and dials again (RECONNECT_IVL, backing off to 2 s).
CONNECT_TIMEOUT_MS = 2_000
AUTH_RETRY = 5.0  # seconds before a DEALER whose key a peer refused dials it again (libzmq never does)
ENVELOPE_OVERHEAD = 1 << 20  # the envelope frame's own limit, on top of the payload limit
# What a PUB reads is subscriptions (a topic of a few bytes) and, with CURVE, the handshake
# (its largest command, INITIATE, is under 1 KiB). libzmq reads a frame of any declared size
# into memory, even before the handshake, unless told a limit: without this a stranger's
# single 1 GB "frame" at the PUB port costs the node 1 GB.
PUB_MAXMSGSIZE = 16 << 10
ZAP_DOMAIN = "corec"  # libzmq asks ZAP about NULL (unsecured) peers only on sockets with a domain


def tcp(addr: str) -> str:
    host, port = split_addr(addr)
    return f"tcp://{join_addr(host, port)}"


class Transport:
    """Owns the sockets and the receive loops; knows nothing of the protocol."""

    def __init__(self, *, max_message_bytes: int, security: CurveConfig | None = None,
                 allow: Sequence[str] = ()) -> None:
        self.ctx = zmq.asyncio.Context()
        # sends never wait: sending sockets are plain (sync) sockets on the same context,
        # so NOBLOCK raises zmq.Again at once instead of parking it in a future
        self.sync_ctx = zmq.Context.shadow(self.ctx.underlying)
        self.max_message_bytes = max_message_bytes
        self.security = security  # CurveZMQ keys; None: plain TCP (the node warns at start)
        self.allow = tuple(allow)  # peer networks admitted ("10.0.0.0/8"); empty: every address
        self.auth = None  # the ZAP authenticator thread while security or an allowlist is on
        self.router: zmq.Socket | None = None
        self.pub: zmq.Socket | None = None
        self.sub: zmq.Socket | None = None
        self.dealers: dict[str, zmq.Socket] = {}
        self._sent_at: dict[str, float] = {}  # addr -> when we last sent there (close_idle)
        self.sub_peers: set[str] = set()
        self.dropped: collections.Counter[str] = collections.Counter()
        self.sent = 0
        self._readers: list[SocketReader] = []
        self._router_reader: SocketReader | None = None  # poked after our own sends on its socket
        self._sub_reader: SocketReader | None = None
        self._on_peer: PeerHint | None = None
        self._monitors: dict[str, asyncio.Task[None]] = {}
        self.refused_by: dict[str, float] = {}  # peer addr -> when it last refused our CURVE key
        self._down: set[str] = set()  # peers whose DEALER lost its connection (libzmq redials with backoff)
        self.redials = 0  # DEALERs dialled afresh: their peer was heard from, or found dead on a connection that looked open
        self._monitor_seq = 0  # names each socket monitor's inproc endpoint once
        self.auth_refusals = 0  # handshakes in which a peer refused our key

    def _common(self, sock: zmq.Socket) -> None:
        sock.setsockopt(zmq.LINGER, LINGER_MS)
        sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)
        sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
        sock.setsockopt(zmq.HEARTBEAT_TTL, HEARTBEAT_TTL_MS)
        sock.setsockopt(zmq.CONNECT_TIMEOUT, CONNECT_TIMEOUT_MS)

    def bind(self, direct: str, pub: str) -> None:
        """Bind ROUTER and PUB; raises zmq.ZMQError (e.g. EADDRINUSE) for the caller to report."""
        self.bind_router(direct)
        limit = self.max_message_bytes + ENVELOPE_OVERHEAD
        self.pub = self.sync_ctx.socket(zmq.PUB)
        self._common(self.pub)
        self.pub.setsockopt(zmq.HEARTBEAT_IVL, 0)  # subscribers ping it (see HEARTBEAT_IVL_MS)
        self.pub.setsockopt(zmq.SNDHWM, SNDHWM)
        self.pub.setsockopt(zmq.MAXMSGSIZE, PUB_MAXMSGSIZE)
        if self.allow:
            self.pub.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN.encode())
        if self.security is not None:
            configure_server(self.pub, self.security)
        try:
            self.pub.bind(tcp(pub))
        except zmq.ZMQError:
            assert self.router is not None
            self.router.close(0)
            raise
        self.sub = self.sync_ctx.socket(zmq.SUB)
        self._common(self.sub)
        self.sub.setsockopt(zmq.RCVHWM, RCVHWM)
        self.sub.setsockopt(zmq.MAXMSGSIZE, limit)
        if self.security is not None:
            configure_client(self.sub, self.security)

    def bind_router(self, direct: str) -> None:
        """Bind the ROUTER alone (the node process's data socket has no PUB or SUB)."""
        limit = self.max_message_bytes + ENVELOPE_OVERHEAD
        if (self.security is not None or self.allow) and self.auth is None:
            # before any server socket exists: a stranger is refused before libzmq buffers its message
            self.auth = start_authenticator(self.sync_ctx, self.security, allow=self.allow)
        self.router = self.sync_ctx.socket(zmq.ROUTER)
        self._common(self.router)
        # No ZMTP heartbeats on the ROUTER. In libzmq 4.3.5 an engine whose peer filled its
        # receive pipe stops reading, so it cannot see the peer's PONGs: after
        # HEARTBEAT_TIMEOUT it drops the connection and what was in flight with it, and if
        # the peer hangs up meanwhile the next heartbeat aborts the process (assertion
        # !_io_error, stream_engine_base.cpp:310). Peers' DEALERs keep theirs.
        self.router.setsockopt(zmq.HEARTBEAT_IVL, 0)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a reply nobody can take is counted, not lost silently
        self.router.setsockopt(zmq.RCVHWM, ROUTER_RCVHWM)
        self.router.setsockopt(zmq.MAXMSGSIZE, limit)  # a hostile sender is cut at the socket
        self.router.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a restarted peer reusing its identity
        if self.allow:
            self.router.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN.encode())
        if self.security is not None:
            configure_server(self.router, self.security)
        self.router.bind(tcp(direct))

    @property
    def refused(self) -> dict[str, int]:
        """Handshakes refused by the authenticator, by reason (``curve_denied``, ``address_denied``)."""
        return self.auth.refused() if self.auth is not None else {}

    def subscribe(self, topics: Iterable[bytes]) -> None:
        assert self.sub is not None
        for topic in topics:
            self.sub.setsockopt(zmq.SUBSCRIBE, topic)
        self._poke_sub()

    def unsubscribe(self, topics: Iterable[bytes]) -> None:
        assert self.sub is not None
        for topic in topics:
            self.sub.setsockopt(zmq.UNSUBSCRIBE, topic)
        self._poke_sub()

    def connect_sub(self, pub_addr: str) -> None:
        """Listen to a member's PUB stream (idempotent)."""
        if pub_addr in self.sub_peers or self.sub is None:
            return
        self.sub.connect(tcp(pub_addr))
        self.sub_peers.add(pub_addr)
        self._poke_sub()

    def disconnect_sub(self, pub_addr: str) -> None:
        if pub_addr not in self.sub_peers or self.sub is None:
            return
        self.sub_peers.discard(pub_addr)
        try:
            self.sub.disconnect(tcp(pub_addr))
        except zmq.ZMQError:
            pass
        self._poke_sub()

    def _poke_sub(self) -> None:
        """An operation on the SUB may have taken its descriptor's signal: look again."""
        if self._sub_reader is not None:
            self._sub_reader.poke()

    def _dealer(self, addr: str) -> zmq.Socket:
        sock = self.dealers.get(addr)
        refused = self.refused_by.get(addr)
        if sock is not None and refused is not None and time.monotonic() - refused >= AUTH_RETRY:
            # libzmq gives up on a peer that refused our key: dial again, in case it reloaded its keys
            self.refused_by[addr] = time.monotonic()
            self.forget(addr)
            sock = None
        if sock is None:
            sock = self.sync_ctx.socket(zmq.DEALER)
            self._common(sock)
            # A short queue per peer, and no IMMEDIATE: the first messages to a new peer
            # (a join, a probe) wait the few ms its TCP connection takes instead of being
            # dropped. Towards a dead peer at most DEALER_HWM stale messages wait; the
            # protocols ignore them (old probe numbers, old terms) when it comes back.
            sock.setsockopt(zmq.SNDHWM, DEALER_HWM)
            # nothing is read here, but a server could still send (or, before its handshake,
            # declare) a frame of any size: cap it as the ROUTER does
            sock.setsockopt(zmq.MAXMSGSIZE, self.max_message_bytes + ENVELOPE_OVERHEAD)
            if self.security is not None:
                configure_client(sock, self.security)
            self.dealers[addr] = sock
            # watched before it dials: a peer that refuses our key does so once, in the first
            # handshake, and libzmq never dials it again; an event raised before the monitor
            # existed was lost, and with it the curve_refused line and the AUTH_RETRY redial
            self._monitor(addr, sock)
            sock.connect(tcp(addr))
        return sock

    def watch_peers(self, on_peer: PeerHint) -> None:
        """Report ``on_peer(addr, refused)`` when a DEALER's connection to ``addr`` closes
        (``refused``: and the reconnect that follows is refused). Needs the running loop."""
        self._on_peer = on_peer
        for addr, sock in self.dealers.items():
            self._monitor(addr, sock)

    def _monitor(self, addr: str, sock: zmq.Socket) -> None:
        if (self._on_peer is None and self.security is None) or addr in self._monitors:
            return
        self._monitor_seq += 1  # not id(sock): a socket made after a closed one may get its id while its endpoint lingers
        endpoint = f"inproc://corec-monitor-{id(self)}-{self._monitor_seq}"
        sock.monitor(endpoint, zmq.EVENT_DISCONNECTED | zmq.EVENT_CONNECT_RETRIED | zmq.EVENT_CONNECTED
                     | zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_SUCCEEDED)
        pair = self.ctx.socket(zmq.PAIR)
        pair.setsockopt(zmq.RCVHWM, 0)  # never full: see _unmonitor
        pair.connect(endpoint)
        self._monitors[addr] = asyncio.get_running_loop().create_task(self._watch(addr, pair))

    async def _watch(self, addr: str, pair: zmq.asyncio.Socket) -> None:
        """One peer's socket events; the first refused reconnect after a close is reported."""
        closed = False
        try:
            while True:
                event = parse_monitor_message(await pair.recv_multipart())["event"]
                if event == zmq.EVENT_CONNECTED:
                    closed = False
                    self._down.discard(addr)
                elif event == zmq.EVENT_DISCONNECTED:
                    closed = True
                    self._down.add(addr)
                    self._hint(addr, False)
                elif event == zmq.EVENT_CONNECT_RETRIED:
                    self._down.add(addr)
                    if closed:
                        closed = False  # once per close: the retries go on every RECONNECT_IVL
                        self._hint(addr, True)
                elif event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                    self._auth_refused(addr)
                elif event == zmq.EVENT_HANDSHAKE_SUCCEEDED and self.refused_by.pop(addr, None) is not None:
                    log.event("curve_admitted", peer=addr, detail="the peer accepts this node's key now")
        except (asyncio.CancelledError, zmq.ZMQError):
            pass
        finally:
            if self._monitors.get(addr) is asyncio.current_task():
                self._unmonitor(addr)  # ended by itself: the DEALER must stop reporting first
            pair.close(0)

    def _auth_refused(self, addr: str) -> None:
        """The refused side says why (the refusing side logs ``curve_denied``): once per
        peer until it admits us."""
        self.auth_refusals += 1
        if addr not in self.refused_by:
            log.event("curve_refused", logging.WARNING, peer=addr,
                      detail=f"the peer refused this node's CURVE key: its authorized directory lacks this node's "
                             f"public key (add it there and reload that node); dialing again every {AUTH_RETRY:g} s")
        self.refused_by[addr] = time.monotonic()

    def _hint(self, addr: str, refused: bool) -> None:
        if self._on_peer is not None and addr in self.dealers:
            try:
                self._on_peer(addr, refused)
            except Exception:  # a hint must never break the transport
                logging.getLogger(LOGGER_NAME).exception("peer_hint_failed")

    def redial_if_down(self, addr: str) -> bool:
        """A peer our DEALER lost just reached us (it restarted): dial it now. libzmq would
        retry only at the end of its backoff (up to RECONNECT_IVL_MAX), and the answers we
        are about to send (an Ack to its probe) would wait there until its probe timed out."""
        if addr not in self._down or addr not in self.dealers:
            return False
        self._down.discard(addr)
        self.forget(addr)  # what waited there is stale (old probes, old terms): dropped
        self.redials += 1
        return True

    def redial(self, addr: str, pub_addr: str | None = None) -> None:
        """A member was found dead while our connections to it looked open: over a cut
        link, TCP's retransmit backoff can hold what we send there for tens of seconds
        after the link is back (and ZMTP heartbeats close such a connection only after
        10 s). Dial it afresh, so the reconnect pushes of membership rule 12 go out on a
        new connection; a peer whose connection already closed is being redialled by libzmq."""
        if addr in self.dealers and addr not in self._down:
            self.forget(addr)
            self.redials += 1
        if pub_addr is not None and pub_addr in self.sub_peers:
            self.disconnect_sub(pub_addr)
            self.connect_sub(pub_addr)

    def _unmonitor(self, addr: str) -> asyncio.Task[None] | None:
        """Stop watching ``addr``'s DEALER before its PAIR closes. libzmq's I/O thread sends
        each socket event to the monitor with a blocking send: an event of a DEALER being
        torn down, towards a PAIR already closed, blocked that thread for good, and with it
        every connection of the process (the node then heard nobody and was declared dead
        everywhere). ``disable_monitor`` ends the monitor under the lock those sends take."""
        task = self._monitors.pop(addr, None)
        if task is None:
            return None
        sock = self.dealers.get(addr)
        if sock is not None and not sock.closed:
            try:
                sock.disable_monitor()
            except zmq.ZMQError:
                pass
        task.cancel()
        return task

    def forget(self, addr: str) -> None:
        """Close the DEALER to ``addr`` (a member reaped, or dialled afresh)."""
        self._unmonitor(addr)
        sock = self.dealers.pop(addr, None)
        if sock is not None:
            sock.close(0)

    def close_idle(self, idle_for: float, keep: Iterable[str]) -> int:
        """Close the DEALERs nothing was sent on for ``idle_for`` seconds, but those to
        ``keep``; how many. Over the overlay a node talks to few peers at a time (its
        neighbours, its voters) and to others now and then (a probe outside its neighbours, a
        push-pull, a view request to an address that is gone): without this each of those
        would stay dialled for good, and its connections would grow with the cluster."""
        now = time.monotonic()
        kept = set(keep)
        idle = [a for a in self.dealers if a not in kept and now - self._sent_at.setdefault(a, now) >= idle_for]
        for addr in idle:
            self.forget(addr)
            del self._sent_at[addr]
        return len(idle)

    def send(self, addr: str, frames: Sequence[bytes]) -> bool:
        """Send direct frames to ``addr`` without blocking; False (and counted) if dropped."""
        self._sent_at[addr] = time.monotonic()
        try:
            self._dealer(addr).send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            self.dropped["direct_queue_full"] += 1
            return False
        except (zmq.ZMQError, ValueError):
            self.dropped["direct_error"] += 1
            return False
        self.sent += 1
        return True

    def publish(self, frames: Sequence[Any]) -> None:
        assert self.pub is not None
        last = frames[-1]
        if isinstance(last, memoryview) and isinstance(last.obj, zmq.Frame) and last.nbytes == len(last.obj):
            # a payload received here goes out as its own zmq.Frame: libzmq shares the bytes
            # (no copy, and no tracking thread as for a zero-copy send of a buffer)
            frames = [*frames[:-1], last.obj]
        try:
            self.pub.send_multipart(frames, flags=zmq.NOBLOCK, copy=len(last) < ZERO_COPY_MIN)
        except zmq.Again:
            self.dropped["pub_queue_full"] += 1
            return
        except (zmq.ZMQError, ValueError, TypeError):  # never raises into its caller's loop
            self.dropped["pub_error"] += 1
            return
        self.sent += 1

    def reply(self, identity: bytes, frames: Sequence[Any]) -> bool:
        """Send frames back on the ROUTER to the connection ``identity`` (a producer's);
        False (and counted) when it is gone or its queue is full. The send may take the
        wake-up of a message that arrived meanwhile: the reader is poked to look."""
        assert self.router is not None
        try:
            self.router.send_multipart([identity, *frames], flags=zmq.NOBLOCK)
        except zmq.ZMQError as error:
            self.dropped["reply_queue_full" if isinstance(error, zmq.Again) else "reply_unroutable"] += 1
            return False
        finally:
            if self._router_reader is not None:
                self._router_reader.poke()
        self.sent += 1
        return True

    def start(self, on_direct: DirectHandler, on_broadcast: Handler | None) -> None:
        """Start reading; each frame list goes to its handler, identity stripped (the
        direct handler gets it as its second argument, for ``reply``). Needs the running loop."""
        assert self.router is not None
        self._router_reader = SocketReader(self.router, lambda frames: on_direct(frames[1:], bytes(frames[0])),
                                           self.dropped)
        self._readers = [self._router_reader]
        if self.sub is not None and on_broadcast is not None:
            self._sub_reader = SocketReader(self.sub, on_broadcast, self.dropped)
            self._readers.append(self._sub_reader)
        for reader in self._readers:
            reader.start()

    async def close(self) -> None:
        monitors = [task for task in map(self._unmonitor, list(self._monitors)) if task is not None]
        # each monitor closes its PAIR socket as it ends: ctx.term() below waits for every
        # socket of the context, so it would block this loop for good on one left open
        await asyncio.gather(*monitors, return_exceptions=True)
        for reader in self._readers:
            reader.close()
        self._readers.clear()
        for sock in list(self.dealers.values()):
            sock.close(0)
        self.dealers.clear()
        for sock in (self.router, self.pub, self.sub):
            if sock is not None:
                sock.close(0)
        if self.auth is not None:
            stop_authenticator(self.auth)
            self.auth = None
        self.ctx.term()
