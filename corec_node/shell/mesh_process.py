"""The mesh process: the node's sockets and its control plane, in a child process.

Why a process. Heartbeats, probes and votes must keep their timing whatever the data plane
does; msgpack, numpy, SQLite and torch hold the GIL, so a thread of the node process was
late by up to 0.14 s under a flood and a child process by at most 0.06 s (ARCHITECTURE.md,
``bench/controlplane.py``). The mesh process owns every network socket (``Transport``),
decodes what arrives, hands control messages to the ``ControlPlane`` and forwards data
messages, as the frames that arrived, to the node process over the link (``link.py``); it
sends what the data plane asks. The node process keeps the data plane, storage, plugins,
metrics and the control socket, and asks the mesh process for the control commands.

The two sides:
- ``MeshHandle`` (node process): starts the child, carries the link, mirrors the cluster
  view and the counters the child reports, forwards requests, and is the data plane's
  transport (``send``, ``publish``, ``reply``).
- ``MeshProcess`` (child): the composition of the control plane; ``child_main`` is its
  entry point. It dies with the node process (``PR_SET_PDEATHSIG``): a SIGKILLed node
  closes its ports at once, as one process did.

The data plane beats over the link from the node's tick loop; a leader whose data plane
has not beaten for ``ENGINE_STALL_BOUND`` gives up leadership (mesh core rule 14).
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import pickle
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import zmq

from corec_node import cluster_settings, log
from corec_node.config import Config
from corec_node.mesh.core import IDLE_PERIOD, TICK_PERIOD
from corec_node.shell.commands import Identity, MeshCommands
from corec_node.shell.control import CommandError
from corec_node.shell.control_plane import (
    CONTROL_TYPES,
    OVERLAY_TYPES,
    TREE_DATA_CLASSES,
    ClusterView,
    ControlEvents,
    ControlPlane,
)
from corec_node.shell.curve import CurveConfig, reload_keys
from corec_node.shell.discovery import Discovery
from corec_node.shell.link import (
    ANSWER,
    BROADCAST,
    DIRECT,
    EVENT,
    OPERATION,
    PUBLISH,
    REPLY,
    REQUEST,
    SEND,
    LinkEnd,
    RequestFailed,
    Requests,
    endpoint_for,
)
from corec_node.shell.traffic import Outbox, Traffic
from corec_node.shell.transport import Transport
from corec_node.wire import (
    MsgType,
    SeqEvent,
    SequenceTracker,
    WireError,
    decode_message,
    encode_message,
    message_type,
    topic_for,
)
from corec_node.wire.envelope import DATA_CARRIED_TYPES
from corec_node.wire.messages import (
    COLUMNS_FEATURE,
    COLUMNS_MINOR,
    REPLY_MINOR,
    BatchReply,
    EntityBatch,
    MemberState,
)
from corec_node.wire.topics import (
    TOPIC_AGGREGATES,
    TOPIC_ALERTS,
    TOPIC_COLUMNS,
    TOPIC_DIRECT,
    TOPIC_ENTITIES_ALL,
    TOPIC_FLOW,
    TOPIC_MEMBERSHIP,
    TOPIC_NUCLEUS,
)

STALL_REPORT = 0.05  # loop lag above this is fed to Lifeguard's local health
# over the overlay: a direct link nothing was sent on for this long is closed; a probe round
# takes one member outside the neighbours (overlay rule 3), so this bounds those links to
# about this many a node, whatever the cluster's size
IDLE_LINK_AFTER = 15.0
IDLE_LINK_CHECK = 10.0  # and looked for this often
STATS_PERIOD = 1.0  # counters and status reported to the node process once a second (each a wake of both)
VIEW_PERIOD = 0.5  # and the view sent again, if it differs, twice a second (a member's data socket)
ENGINE_STALL_BOUND = 8.0  # a data plane silent this long is stalled (systemd's watchdog: 10 s)
START_TIMEOUT = 30.0  # the child binds and reports ready within this (TimeoutStartSec)
STOP_TIMEOUT = 5.0  # the child saves its snapshot and exits within this, or is killed
REQUEST_TIMEOUT = 30.0  # a control command answered by the mesh process
MESH_SILENCE_BOUND = ENGINE_STALL_BOUND  # a mesh process silent this long is hung (stopped, or stuck)
PR_SET_PDEATHSIG = 1
TREE_DATA_TOPICS = frozenset((TOPIC_COLUMNS, TOPIC_ALERTS, TOPIC_FLOW))  # of those, what the node process publishes
# data messages forwarded whole to the node process, which checks and builds their bodies;
# producer batches are built here (a small body: the busy answer needs its count)
FORWARDED_BODIES = frozenset((MsgType.AGGREGATES, MsgType.AGGREGATE_COLUMNS, MsgType.FUSION_PLAN, MsgType.ALERT,
                              MsgType.FLOW, MsgType.LEARNERS, MsgType.EVOLUTION_PLAN))


@dataclass(frozen=True, slots=True)
class MeshSpec:
    """What the child needs to start, pickled to it."""

    config: Config
    snapshot: tuple[MemberState, ...]
    term: int
    voted_for: str | None
    endpoint: str
    parent_pid: int
    identity: Identity
    abstain: bool = False  # a restored data directory: no vote until led (election rule 15)
    settings: tuple[str, ...] = ()  # announced with our member record (corec-node drift)


# -- the node process's side ------------------------------------------------------------


class MeshHandle:
    """The mesh process as the node process sees it (see the module docstring)."""

    def __init__(self, config: Config, identity: Identity, events: ControlEvents) -> None:
        self.config = config
        self.identity = identity
        self.events = events
        self.settings: tuple[str, ...] = ()  # set by the node before start (its plugins are known by then)
        self.endpoint = endpoint_for(os.getpid())
        self.link: LinkEnd | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.requests = Requests()
        self.view = ClusterView(members={}, live=(config.name,), leader=None, term=0)
        self.stats: dict[str, Any] = {}
        self.stats_at: float | None = None  # loop time of the last report (once a second)
        self.failure: str | None = None  # why the child could not start or stopped
        self.unbindable = False  # it could not start because its ports could not be bound
        self._ready: asyncio.Future[bool] | None = None
        self._stopped: asyncio.Future[bool] | None = None
        self._handlers: dict[bytes, Any] = {}

    async def start(self, snapshot: Sequence[MemberState], term: int, voted_for: str | None,
                    on_direct: Any, on_broadcast: Any, *, abstain: bool = False) -> bool:
        """Spawn the child and wait until its sockets are bound; False: ``failure`` says why."""
        loop = asyncio.get_running_loop()
        self._ready, self._stopped = loop.create_future(), loop.create_future()
        self.link = LinkEnd(self.endpoint, bind=True)
        self._handlers = {DIRECT: on_direct, BROADCAST: on_broadcast}
        self.link.start(self._on_link)
        spec = MeshSpec(self.config, tuple(snapshot), term, voted_for, self.endpoint, os.getpid(), self.identity,
                        abstain, self.settings)
        # a fresh interpreter that imports only the mesh (not the caller's __main__, as
        # multiprocessing's spawn would); the spec arrives on its stdin
        self.proc = subprocess.Popen([sys.executable, "-c", CHILD_COMMAND], stdin=subprocess.PIPE, close_fds=True)
        assert self.proc.stdin is not None
        data = pickle.dumps(spec, protocol=pickle.HIGHEST_PROTOCOL)
        await loop.run_in_executor(None, self._hand_over, data)
        deadline = loop.time() + START_TIMEOUT
        while not self._ready.done() and self.alive and loop.time() < deadline:
            await asyncio.sleep(0.01)
        if self._ready.done() and self._ready.result():
            return True
        if self.alive and not self._ready.done():
            self.failure = f"the mesh process did not start within {START_TIMEOUT:g} s"
        elif self.failure is None:
            self.failure = f"the mesh process exited with code {self.proc.poll()}"
        await self.close()
        return False

    def _hand_over(self, data: bytes) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        try:
            self.proc.stdin.write(data)
            self.proc.stdin.close()
        except OSError:  # it died at once: start() reports its exit code
            pass

    def silence(self, now: float) -> float:
        """Seconds since the mesh process last reported (0 before it has): a live process
        that stays silent past ``MESH_SILENCE_BOUND`` is stopped or stuck."""
        return 0.0 if self.stats_at is None else max(0.0, now - self.stats_at)

    def hung(self) -> str | None:
        """One line when the mesh process is silent past ``MESH_SILENCE_BOUND``, else None."""
        silent = self.silence(asyncio.get_running_loop().time())
        if silent <= MESH_SILENCE_BOUND:
            return None
        return f"the mesh process has not reported for {silent:.1f} s (stopped or stuck; pid {self.pid})"

    @property
    def link_dropped(self) -> dict[str, int]:
        return dict(self.link.dropped) if self.link is not None else {}

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def exit_code(self) -> int | None:
        return self.proc.poll() if self.proc is not None else None

    def _on_link(self, kind: bytes, frames: list[Any]) -> None:
        if kind in (DIRECT, BROADCAST):
            result = self._handlers[kind](frames)
            if result is not None:  # the data plane admits a batch later: never hold the link
                asyncio.ensure_future(result)
        elif kind == EVENT:
            name, args = pickle.loads(frames[0])
            self._event(name, args)
        elif kind == REPLY:
            rid, ok, value = pickle.loads(frames[0])
            self.requests.done(rid, ok, value)

    def _event(self, name: str, args: Any) -> None:
        events = self.events
        match name:
            case "view":
                self.view = args
                events.view_changed(args)
            case "placement":
                events.leader_placement(args)
            case "member_event":
                events.member_event(args)
            case "leader_changed":
                events.leader_changed(*args)
            case "audit":
                kind, subject, reason, term, details = args
                events.audit(kind, subject, reason, term=term, **details)
            case "nucleus":
                events.nucleus(*args)
            case "members":
                events.members(args)
            case "vote":
                events.vote(args)
            case "stats":
                self.stats = args
                self.stats_at = asyncio.get_running_loop().time()
            case "stop":
                events.stop(args)
            case "ready":
                if self._ready is not None and not self._ready.done():
                    self._ready.set_result(True)
            case "failed":
                if isinstance(args, (list, tuple)):  # ["bind", why]: a port taken, a config problem
                    self.unbindable, args = True, args[1]
                self.failure = args
                if self._ready is not None and not self._ready.done():
                    self._ready.set_result(False)
            case "stopped":
                if self._stopped is not None and not self._stopped.done():
                    self._stopped.set_result(True)

    # -- the data plane's transport -------------------------------------------------------

    def send(self, addr: str, frames: Sequence[Any]) -> bool:
        return self.link is not None and self.link.put([SEND, addr.encode(), *frames])

    def publish(self, frames: Sequence[Any]) -> None:
        if self.link is not None:
            self.link.put([PUBLISH, *frames])

    def reply(self, identity: bytes, frames: Sequence[Any]) -> bool:
        return self.link is not None and self.link.put([ANSWER, identity, *frames])

    # -- operations and requests ----------------------------------------------------------

    def operation(self, name: str, *args: Any) -> None:
        if self.link is not None:
            self.link.put_object(OPERATION, (name, args))

    async def request(self, command: str, params: dict[str, Any], *, timeout: float | None = None) -> Any:
        """A control command run by the mesh process; RequestFailed carries its error line.
        ``timeout``: the wait (default REQUEST_TIMEOUT, and a waiting command's own wait)."""
        if self.link is None or not self.alive:
            raise RequestFailed("the mesh process is not running")
        rid, fut = self.requests.new()
        if not self.link.put_object(REQUEST, (rid, command, params)):
            self.requests.forget(rid)
            raise RequestFailed("the link to the mesh process is full")
        try:
            if timeout is None:  # a command that waits (join --timeout) gets its time and more
                wait = params.get("wait")
                timeout = REQUEST_TIMEOUT + (float(wait) if isinstance(wait, (int, float)) else 0.0)
            return await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            self.requests.forget(rid)
            raise RequestFailed(f"the mesh process did not answer {command} within {timeout:g} s") from None

    async def stop(self) -> None:
        """Ask the child to save its snapshot and leave; kill it if it does not. Its events
        up to ``stopped`` (the last it sends, on the ordered control lane) are handled before
        the link closes: the member snapshot and audit rows it sends on the way out."""
        if self.proc is None:
            return
        if self.alive:
            self.operation("stop", 0)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + STOP_TIMEOUT
            while self.alive and loop.time() < deadline and not (self._stopped is not None and self._stopped.done()):
                await asyncio.sleep(0.02)
            while self.alive and loop.time() < deadline:
                await asyncio.sleep(0.02)
            if self.alive:
                log.event("mesh_process_killed", logging.WARNING, detail=f"no exit within {STOP_TIMEOUT:g} s")
                self.proc.kill()
        await self.close()

    async def close(self) -> None:
        if self.proc is not None:
            try:
                await asyncio.get_running_loop().run_in_executor(None, self.proc.wait, STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(1.0)
        self.requests.fail_all("the mesh process stopped")
        if self.link is not None:
            await self.link.close()
            self.link = None
            shutil.rmtree(os.path.dirname(self.endpoint.removeprefix("ipc://")), ignore_errors=True)


class MeshOutbox(Outbox):
    """The node process's outbox. Messages on a topic the mesh process also publishes on
    (``nuc``: its heartbeats, the data plane's fusion plans) are handed to the mesh process
    to be numbered and sent there: one sequence counter per topic, as receivers expect."""

    MESH_TOPICS = frozenset((TOPIC_NUCLEUS,))

    def __init__(self, mesh: MeshHandle, traffic: Traffic, *, name: str, cluster: str) -> None:
        super().__init__(mesh, traffic, name=name, cluster=cluster)  # type: ignore[arg-type]
        self.mesh = mesh

    def publish(self, msg: Any, payload: Any = None) -> None:
        if topic_for(msg) in self.MESH_TOPICS:
            self.mesh.operation("publish", msg, payload)
            self.traffic.messages_out[message_type(msg).name.lower()] += 1
            return
        super().publish(msg, payload)


# -- the child's side -----------------------------------------------------------------------


class LinkEvents:
    """``ControlEvents`` carried over the link to the node process."""

    def __init__(self, link: LinkEnd) -> None:
        self.link = link

    def _put(self, name: str, args: Any) -> None:
        self.link.put_object(EVENT, (name, args))

    def view_changed(self, view: ClusterView) -> None:
        self._put("view", view)

    def leader_placement(self, digest: str) -> None:
        self._put("placement", digest)

    def member_event(self, event: dict[str, Any]) -> None:
        self._put("member_event", event)

    def leader_changed(self, leader: str | None, term: int) -> None:
        self._put("leader_changed", (leader, term))

    def audit(self, kind: str, subject: str, reason: str, *, term: int | None = None, **details: Any) -> None:
        self._put("audit", (kind, subject, reason, term, details))

    def nucleus(self, term: int, leader: str) -> None:
        self._put("nucleus", (term, leader))

    def members(self, snapshot: Sequence[MemberState]) -> None:
        self._put("members", list(snapshot))

    def vote(self, term: int) -> None:
        self._put("vote", term)

    def stop(self, code: int) -> None:
        self._put("stop", code)


class MeshProcess:
    """The child: transport, control plane, discovery, and the commands they answer."""

    def __init__(self, spec: MeshSpec) -> None:
        self.spec = spec
        cfg = self.config = spec.config
        self.name = cfg.name
        sec = cfg.security
        curve = CurveConfig.load(sec.secret_key_file, sec.public_keys_dir) if sec.enabled else None
        self.transport = Transport(max_message_bytes=cfg.mesh.max_message_bytes, security=curve,
                                   allow=cfg.security.allow)
        self.traffic = Traffic()
        self.cluster = cfg.node.cluster
        self.outbox = Outbox(self.transport, self.traffic, name=self.name, cluster=self.cluster)
        self.sequences = SequenceTracker()
        self.link = LinkEnd(spec.endpoint, bind=False)
        self.events = LinkEvents(self.link)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.control = ControlPlane(
            name=self.name, addr=cfg.advertise, pub=cfg.pub_advertise, profile=cfg.mesh.profile,
            max_voters=cfg.mesh.max_voters, data_dir=cfg.data_dir, transport=self.transport,
            outbox=self.outbox, events=self.events, clock=self.now, data=cfg.data_advertise, tags=cfg.node.tags,
            settings=spec.settings, cluster_settings=cluster_settings.own(cfg), overlay=cfg.mesh.overlay)
        self._control_types = CONTROL_TYPES | OVERLAY_TYPES if cfg.mesh.overlay else CONTROL_TYPES
        self.control.on_tree_data = self._tree_data
        self.commands = MeshCommands(identity=spec.identity, control=self.control, traffic=self.traffic,
                                     transport=self.transport, now=self.now, stop=self.events.stop,
                                     link_dropped=self.link.dropped)
        self.discovery: Discovery | None = None
        self._stop = asyncio.Event()
        self._engine_beat = 0.0
        self._beaten = False
        self._stats_at = self._view_at = float("-inf")
        self._row_maps = True  # subscribed to AGGREGATES row maps (``_follow_row_maps``)
        self._row_maps_seen = -1  # the control plane's member_changes when we last looked
        self._sleep: asyncio.Future[None] | None = None  # the tick loop's sleep (``_nudge`` cuts it short)
        self._alarm: asyncio.TimerHandle | None = None
        self._wake_at = 0.0
        self._last_tick = 0.0
        self._idle_links_at = 0.0

    def now(self) -> float:
        assert self.loop is not None
        return self.loop.time()

    def _reload_keys(self) -> None:
        """SIGHUP: re-read the authorized keys for the mesh sockets (a bad directory keeps
        the old set in force)."""
        reload_keys(self.transport.auth, "mesh")

    async def run(self) -> int:
        self.loop = asyncio.get_running_loop()
        self.loop.set_exception_handler(log.loop_exception)  # one line each, never a raw traceback
        self.loop.add_signal_handler(signal.SIGTERM, self._stop.set)
        self.loop.add_signal_handler(signal.SIGHUP, self._reload_keys)  # the node process passes its SIGHUP on
        self.link.start(self._on_link)
        cfg = self.config
        try:
            self.transport.bind(cfg.node.listen, f"{cfg.pub_listen[0]}:{cfg.pub_listen[1]}")
        except zmq.ZMQError as exc:
            log.event("bind_failed", logging.ERROR, listen=cfg.node.listen, error=str(exc))
            pub = f"{cfg.pub_listen[0]}:{cfg.pub_listen[1]}"
            self.events._put("failed", ["bind", f"cannot bind {cfg.node.listen} (node.listen) or {pub} "
                                                f"(mesh.pub_listen): {exc.strerror}"])
            await self._close()
            return 1
        self.transport.subscribe([TOPIC_MEMBERSHIP, TOPIC_NUCLEUS, TOPIC_AGGREGATES, TOPIC_COLUMNS, TOPIC_ALERTS,
                                  TOPIC_ENTITIES_ALL, TOPIC_FLOW])
        self._engine_beat = self.now()
        self.transport.watch_peers(self._peer_hint)
        self.control.start(list(self.spec.snapshot), cfg.mesh.join, term=self.spec.term,
                           voted_for=self.spec.voted_for, now=self.now(), abstain=self.spec.abstain,
                           join_required=cfg.mesh.join_required, join_timeout=cfg.mesh.join_timeout)
        self.transport.start(self._on_direct, self._on_broadcast)
        if cfg.mesh.discovery:
            self.discovery = Discovery(cluster=self.cluster, name=self.name, addr=cfg.advertise,
                                       target=(cfg.mesh.discovery_addr, cfg.mesh.discovery_port),
                                       on_peer=self._discovered)
            try:
                await self.discovery.start()
            except OSError as exc:
                log.event("discovery_failed", logging.WARNING, port=cfg.mesh.discovery_port, error=str(exc))
                self.discovery = None
        self._report(self.now())  # and the first view
        self.events._put("ready", None)
        ticks = asyncio.create_task(self._tick_loop())
        try:
            await self._stop.wait()
        finally:
            ticks.cancel()
            try:
                await ticks
            except asyncio.CancelledError:
                pass
            self.control.save_snapshot(self.now(), force=True)
            self._report(self.now())
            self.events._put("stopped", None)
            await self._close()
        return 0

    async def _close(self) -> None:
        if self.discovery is not None:
            await self.discovery.close()
        await self.transport.close()
        await asyncio.sleep(0.05)  # the last events leave the link before it closes
        await self.link.close(linger_ms=1000)

    async def _tick_loop(self) -> None:
        """The cores' timers, woken when the next is due (``MeshCore.next_deadline``), never
        more often than every ``TICK_PERIOD`` and never less than every ``IDLE_PERIOD``; an
        input that brings a timer nearer wakes it sooner (``_nudge``)."""
        loop = asyncio.get_running_loop()
        self._wake_at = self.now() + TICK_PERIOD
        self._last_tick = self.now()
        while True:
            self._sleep = loop.create_future()
            self._alarm = loop.call_at(self._wake_at, self._ring, self._sleep)
            await self._sleep
            now = self.now()
            lag = now - self._wake_at
            if lag > STALL_REPORT:
                self.control.note_stall(lag, now)
                log.event("loop_stall", logging.DEBUG, lag=lag)
            self._last_tick = now
            try:
                self._watch_engine(now)
                self.control.tick(now)
                self._follow_row_maps()
                self._close_idle_links(now)
            except Exception:  # a bug in a core must not silently stop the timers
                logging.getLogger(log.LOGGER_NAME).exception("tick_failed")
            if now - self._stats_at >= STATS_PERIOD:
                self._report(now)
            elif now - self._view_at >= VIEW_PERIOD:
                self._view_at = now
                self.control.refresh_view()
            self._wake_at = self._next_wake(now)

    def _close_idle_links(self, now: float) -> None:
        """Over the overlay, keep direct links to the neighbours and the voters, and close
        the others once idle: a node's connections stay bounded whatever the cluster's size."""
        core = self.control.core
        if not self.control.overlay or core is None or now - self._idle_links_at < IDLE_LINK_CHECK:
            return
        self._idle_links_at = now
        if self.control.full_mesh:  # meanwhile (overlay rule 10): every member is probed
            return
        keep = self.control.neighbors | {addr for _, addr in core.config.voters}
        closed = self.transport.close_idle(IDLE_LINK_AFTER, keep)
        if closed:
            log.event("idle_links_closed", logging.DEBUG, closed=closed, open=len(self.transport.dealers))

    def _next_wake(self, now: float) -> float:
        core = self.control.core
        due = min(core.next_deadline(now) if core is not None else now, now + IDLE_PERIOD,
                  self._view_at + VIEW_PERIOD)
        return max(self._last_tick + TICK_PERIOD, due)

    @staticmethod
    def _ring(sleep: asyncio.Future[None]) -> None:
        if not sleep.done():
            sleep.set_result(None)

    def _nudge(self) -> None:
        """After an input: if it brought a timer nearer than the loop's next wake, wake then."""
        if self._sleep is None or self._sleep.done():
            return  # the loop is running, or not started: it plans its wake after the tick
        wake = self._next_wake(self.now())
        if wake < self._wake_at:
            self._alarm.cancel()
            self._wake_at = wake
            self._alarm = asyncio.get_running_loop().call_at(wake, self._ring, self._sleep)

    def _peer_hint(self, addr: str, refused: bool) -> None:
        self.control.peer_hint(addr, refused)  # a probe at once (membership rule 17)
        self._nudge()

    def _discovered(self, name: str, addr: str) -> None:
        self.control.discovered(name, addr, self.now())
        self._nudge()

    def _watch_engine(self, now: float) -> None:
        core = self.control.core
        assert core is not None
        if not self._beaten:  # rule 14 judges only a data plane that has started beating
            return
        silent = now - self._engine_beat
        if silent > ENGINE_STALL_BOUND and not core.stalled:
            log.event("engine_stalled", logging.WARNING, silent=round(silent, 3), leader=core.leader == self.name,
                      detail="the data plane stopped beating: standing for nothing, stepping down if leading")
            self.control.apply(core.engine_stalled(True, now))
        elif silent <= ENGINE_STALL_BOUND and core.stalled:
            log.event("engine_resumed", silent=round(silent, 3))
            self.control.apply(core.engine_stalled(False, now))

    def _follow_row_maps(self, *, anyway: bool = False) -> None:
        """Take AGGREGATES row maps only while a live member does not publish columns (an
        older build), or while we know no other member (a join tells us who they are): from
        every other owner they are a copy of its AGGREGATE_COLUMNS, twice the bytes and
        twice the work to decode and check (``engine/wire_rows.py``). Looked at on the tick
        after a member changes, so an older member's rows are heard within one, and once a
        second (``anyway``: a member that restarted with another build keeps its status)."""
        if self.control.member_changes == self._row_maps_seen and not anyway:
            return
        self._row_maps_seen = self.control.member_changes
        self.control.follow_tree_data()
        core = self.control.core
        wanted = core is None or len(core.membership.alive()) <= 1 or not core.membership.announced(COLUMNS_FEATURE)
        if wanted != self._row_maps:
            (self.transport.subscribe if wanted else self.transport.unsubscribe)([TOPIC_AGGREGATES])
            self._row_maps = wanted
            log.event("row_maps", subscribed=wanted)

    def _report(self, now: float) -> None:
        self._stats_at = self._view_at = now
        self._follow_row_maps(anyway=True)
        self.control.refresh_view()
        self.events._put("stats", self.commands.stats())

    # -- inbound from the network --------------------------------------------------------

    def _decode(self, where: str, frames: list[Any]) -> Any:
        try:
            return decode_message(frames, cluster=self.cluster, max_payload=self.config.mesh.max_message_bytes,
                                  skip_body=FORWARDED_BODIES)
        except WireError as exc:
            self.traffic.reject(where, exc)
            return None

    def _on_direct(self, frames: list[Any], identity: bytes = b"") -> None:
        decoded = self._decode("direct", frames)
        if decoded is None:
            return
        topic, env, _payload = decoded
        self.traffic.count_in(env.type.name.lower(), topic, frames)
        if env.type in OVERLAY_TYPES:
            if not self.control.overlay:
                self.traffic.reject("direct", WireError("type", f"{env.type.name}: this node runs no overlay (mesh.overlay)"))
                return
            if not self.control.speaks_for(env.sender, env.msg.sender):  # type: ignore[union-attr]
                self.traffic.reject("direct", WireError(
                    "sender", f"{env.type.name} from {env.sender} names {env.msg.sender}, not its address"))  # type: ignore[union-attr]
                return
        if env.type in self._control_types:
            if topic != TOPIC_DIRECT and env.type is not MsgType.HEARTBEAT:  # a leader's, straight to a voter (core rule 15)
                self.traffic.reject("direct", WireError("topic", f"{topic!r} on the direct socket"))
            else:
                self.control.handle(env.sender, env.msg, self.now())
                self._nudge()
            return
        if not self.link.put([DIRECT, identity, *frames]) and identity and type(env.msg) is EntityBatch \
                and env.minor >= REPLY_MINOR:  # the node process is behind: the producer hears so now
            self.traffic.rejected["busy"] += 1
            self.outbox.reply(identity, BatchReply(seq=env.seq, accepted=0, rejected={"busy": env.msg.count}))

    def _share(self, frames: list[Any]) -> None:
        """One of the node process's broadcasts, over the tree too (SPEC 7.1, 1.16); row
        maps are left out, by their topic before any decoding: every member on the tree
        reads columns."""
        if bytes(frames[0]) not in TREE_DATA_TOPICS:
            return
        try:
            _topic, env, _payload = decode_message(frames, cluster=self.cluster)
        except WireError as exc:  # ours: never expected; counted where a peer's would be
            self.traffic.reject("share", exc)
            return
        if env.type in DATA_CARRIED_TYPES:
            self.control.share(env.msg)

    def _tree_data(self, origin: str, msg: Any) -> None:
        """A data broadcast the tree delivered: to the node process as if it had come on its
        topic from its originator (no sequence number: the tree drops copies by id). Not
        while this node follows the PUB streams: every sender writes its own too, so the
        tree's copy would be a second one."""
        if not self.control.tree_data:
            return
        try:
            frames = encode_message(msg, sender=origin, seq=0, cluster=self.cluster)
        except ValueError as exc:
            self.traffic.reject("tree", WireError("field", str(exc)))
            return
        self.traffic.count_in(message_type(msg).name.lower(), frames[0], frames)
        self.link.put([BROADCAST, *frames])

    def _on_broadcast(self, frames: list[Any]) -> None:
        decoded = self._decode("broadcast", frames)
        if decoded is None:
            return
        topic, env, _payload = decoded
        if env.sender == self.name:
            return
        self.traffic.count_in(env.type.name.lower(), topic, frames)
        last = self.sequences.last(env.sender, topic)
        verdict = self.sequences.observe(env.sender, topic, env.seq)
        if verdict is SeqEvent.DUPLICATE:
            return
        if env.type in CONTROL_TYPES:
            missed = env.seq - last - 1 if verdict is SeqEvent.GAP and topic == TOPIC_MEMBERSHIP else 0
            self.control.handle(env.sender, env.msg, self.now(), missed)
            self._nudge()
        elif env.type is not MsgType.AGGREGATES or env.minor < COLUMNS_MINOR:  # else its columns carry the same
            self.link.put([BROADCAST, *frames])

    # -- inbound from the node process ---------------------------------------------------

    def _on_link(self, kind: bytes, frames: list[Any]) -> None:
        if kind == SEND:
            self.transport.send(bytes(frames[0]).decode(), frames[1:])
        elif kind == PUBLISH:
            self.transport.publish(frames)
            if self.control.tree_data:
                self._share(frames)
        elif kind == ANSWER:
            self.transport.reply(bytes(frames[0]), frames[1:])
        elif kind == OPERATION:
            name, args = pickle.loads(frames[0])
            if name == "beat":
                self._engine_beat = self.now()
                self._beaten = True
            elif name == "digest":
                self.control.placement_digest = args[0]
            elif name == "publish":  # a message on a topic this process numbers (``MeshOutbox``)
                if type(args[0]) in TREE_DATA_CLASSES:  # first: its body, written for the tree, is kept
                    self.control.share(args[0])
                self.outbox.publish(*args)
            elif name == "stop":
                self._stop.set()
        elif kind == REQUEST:
            rid, command, params = pickle.loads(frames[0])
            asyncio.ensure_future(self._answer(rid, command, params))

    async def _answer(self, rid: int, command: str, params: dict[str, Any]) -> None:
        handler = self.commands.table().get(command)
        try:
            if handler is None:
                raise CommandError(f"unknown command {command!r}")
            result: tuple[int, bool, Any] = (rid, True, await handler(params))
            self._nudge()  # a join, a leave: timers of their own
        except CommandError as exc:
            result = (rid, False, str(exc))
        except Exception as exc:  # a bug answers with its one line, never kills the process
            logging.getLogger(log.LOGGER_NAME).exception("command_failed", extra={"fields": {"command": command}})
            result = (rid, False, f"{type(exc).__name__}: {exc}")
        self.link.put_object(REPLY, result)


def _die_with_parent(parent_pid: int) -> None:
    """SIGKILL this process when the node process dies (Linux); exit now if it already has."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent_pid:
        os._exit(1)


CHILD_COMMAND = "from corec_node.shell.mesh_process import child_main; child_main()"


def child_main() -> None:
    """The mesh process's entry point: its ``MeshSpec`` is pickled on stdin."""
    spec: MeshSpec = pickle.load(sys.stdin.buffer)
    _die_with_parent(spec.parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the group: the node process stops us
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until run() reloads on it: a reload must never kill us
    log.setup(spec.config.name, spec.config.node.log_level)
    try:
        code = asyncio.run(MeshProcess(spec).run())
    except Exception:
        logging.getLogger(log.LOGGER_NAME).exception("mesh_process_failed")
        code = 1
    sys.stdout.flush()
    os._exit(code)


__all__ = ["ENGINE_STALL_BOUND", "MESH_SILENCE_BOUND", "MeshHandle", "MeshOutbox", "MeshProcess", "MeshSpec", "child_main"]
