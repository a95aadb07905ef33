"""The I/O shell and composition root: sockets, clock and files around the pure cores.

Rules of the shell:
1. Only here is there a clock: every core call gets ``now`` from the loop's monotonic time.
2. Effects returned by a core are carried out in order, at once (a vote is persisted
   before it is sent).
3. Nothing a peer sends can raise out of a handler: bad frames are dropped and counted by
   reason, and a core's refusal is logged, never fatal.

The shell is one class in three files, one concern each: this one (life, sockets in and
out, membership and election effects, alerts, operations), ``nodeentities.py`` (the entity
path: ingest, flow control, handoffs, ticks, fusions) and ``nodecommands.py`` (the
control socket's commands).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import os
import random
import signal
import threading
import time
from collections.abc import Awaitable
from typing import Any

import zmq

from corec_node import __version__, log
from corec_node.config import Config
from corec_node.shell.control import ControlServer
from corec_node.shell.discovery import Discovery
from corec_node.engine.audit import AlertGate, Auditor
from corec_node.engine.host import EngineHost
from corec_node.shell.ingestqueue import IngestQueue
from corec_node.shell.commands import ControlCommands
from corec_node.shell.entities import FLOW_HIGH_SHARE, FLOW_LOW_SHARE, EntityPath
from corec_node.mesh.effects import (
    Broadcast,
    Effect,
    LeaderChanged,
    MemberChanged,
    MemberReaped,
    NameConflict,
    PersistVote,
    Send,
)
from corec_node.mesh.election import Election, ElectionConfig
from corec_node.mesh.flow import FlowControl
from corec_node.mesh.membership import Membership, MembershipConfig
from corec_node.shell.metrics import Metrics, MetricsServer, TickHistogram
from corec_node.shell.systemd import Notifier
from corec_node.plugins import PluginManager
from corec_node.shell.curve import CurveConfig
from corec_node.shell.datadir import load_vote, lock_data_dir, save_vote
from corec_node.storage import LocalStore, SchemaTooNewError, StaleTermError, StorageError
from corec_node.shell.transport import Transport
from corec_node.wire import (
    SeqEvent,
    SequenceCounter,
    SequenceTracker,
    WireError,
    decode_message,
    encode_message,
    topic_for,
)
from corec_node.wire.messages import Alert, Heartbeat, MemberStatus, MsgType
from corec_node.wire.topics import (
    TOPIC_AGGREGATES,
    TOPIC_ALERTS,
    TOPIC_DIRECT,
    TOPIC_ENTITIES_ALL,
    TOPIC_FLOW,
    TOPIC_MEMBERSHIP,
    TOPIC_NUCLEUS,
)

TICK_PERIOD = 0.02  # cores' timers resolve to 20 ms: well under the 100 ms probe timeout
STALL_REPORT = 0.05  # loop lag above this is fed to Lifeguard's local health
SNAPSHOT_PERIOD = 1.0  # write the member snapshot at most once a second
STATUS_PERIOD = 5.0  # seconds between two STATUS= lines to systemd
CONFLICT_GRACE = 10.0  # a node that finds its name taken this soon after it joined exits
MEMBERSHIP_TYPES = frozenset({
    MsgType.PING, MsgType.ACK, MsgType.PING_REQ, MsgType.NACK,
    MsgType.GOSSIP, MsgType.STATE_PUSH, MsgType.STATE_REPLY,
})
ELECTION_TYPES = frozenset({MsgType.VOTE_REQUEST, MsgType.VOTE, MsgType.HEARTBEAT})
PRUNE_PERIOD = 60.0  # local history older than storage.history_retention goes once a minute
PG_CONNECT_WAIT = 5.0  # at start, wait this long for PostgreSQL; after that the outbox waits for it


def profile_configs(profile: str) -> tuple[MembershipConfig, ElectionConfig]:
    return getattr(MembershipConfig, profile)(), getattr(ElectionConfig, profile)()


class Node(EntityPath, ControlCommands):
    """One CoreC node process. ``await Node(config).run()`` returns the exit code."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.name = config.name
        self.addr = config.advertise
        self.pub_addr = config.pub_advertise
        self.cluster = config.node.cluster
        self.data_dir = config.data_dir
        self.started_wall = time.time()
        sec = config.security
        # SecurityError (names the key file) propagates: cmd_run turns it into exit 2
        self.curve = CurveConfig.load(sec.secret_key_file, sec.public_keys_dir) if sec.enabled else None
        self.transport = Transport(max_message_bytes=config.mesh.max_message_bytes, security=self.curve)
        self.notifier = Notifier.from_env(unset=True)
        self.tick_time = TickHistogram()
        self.metrics_server: MetricsServer | None = None
        self._status_at = float("-inf")
        self.elections_started = 0
        self.topic_in: collections.Counter[bytes] = collections.Counter()
        self.topic_out: collections.Counter[bytes] = collections.Counter()
        self.bytes_in: collections.Counter[bytes] = collections.Counter()
        self.bytes_out: collections.Counter[bytes] = collections.Counter()
        self.rng = random.Random()
        self.membership: Membership | None = None
        self.election: Election | None = None
        self.sequences = SequenceTracker()
        self.engine = EngineHost(self.name, block_size=config.engine.block_size, max_errors=config.engine.max_errors)
        self._next_engine_tick = 0.0
        self.local: LocalStore | None = None
        self.syncer: Any = None  # storage.Syncer when a PostgreSQL DSN is set
        self._next_prune = 0.0
        self._tasks: set[asyncio.Task[Any]] = set()
        self.storage_errors = 0
        self._batches: IngestQueue | None = None  # made on the loop (ingestqueue.py)
        self.ingest_dropped = 0
        self._burst = 0  # producer bytes republished since the receive loop last yielded
        self.ingest_limit = int(config.engine.ingest_queue_mb * (1 << 20))
        # asks for, and grants, pauses of the stream
        self.flow = FlowControl(int(self.ingest_limit * FLOW_HIGH_SHARE), int(self.ingest_limit * FLOW_LOW_SHARE))
        self.counters = SequenceCounter()
        self.messages_in: collections.Counter[str] = collections.Counter()
        self.messages_out: collections.Counter[str] = collections.Counter()
        self.rejected: collections.Counter[str] = collections.Counter()
        self.conflicts: dict[str, str] = {}
        self._peers: dict[str, tuple[str, str]] = {}  # name -> (direct addr, pub addr), for cleanup on reap
        self.leader: str | None = None
        # the digest in our leader's last heartbeat: None = not heard since it was elected,
        # "" = it does not confirm maps (a 1.0 leader)
        self._leader_placement: str | None = None
        self.term = 0
        self.exit_code = 0
        self._voters_held = False
        self.discovery: Discovery | None = None
        self._discovered: dict[str, float] = {}  # addr -> when we last tried to join it
        self._joined_at = float("-inf")  # wall time of our last join: we are the newcomer in a conflict
        self._stop = asyncio.Event()
        self._snapshot_dirty = False
        self._snapshot_at = 0.0
        self._lock_fd: int | None = None
        self._last_reject_log = 0.0
        self.control: ControlServer | None = None
        self._loop_thread: int | None = None
        self._plugin_stores: dict[str, asyncio.Future[Any]] = {}
        # IsolationForest over this node's block rows (engine/audit.py); 0.1 % of healthy rows
        # are flagged on a tick, and only a block flagged 3 audits in a row raises an alert
        self.auditor = Auditor(contamination=0.001)
        self.alert_gate = AlertGate(persist=3)
        self._auditing = False
        # loads, validates and configures every plugin now: a PluginError is a ConfigError (exit 2)
        self.plugins = PluginManager(config, on_alert=self._publish_alert).load()
        self.loop: asyncio.AbstractEventLoop | None = None

    # -- life -----------------------------------------------------------------------

    def now(self) -> float:
        assert self.loop is not None
        return self.loop.time()

    def request_stop(self, code: int = 0) -> None:
        self.exit_code = self.exit_code or code
        self._stop.set()

    async def run(self) -> int:
        self.loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._lock_fd = lock_data_dir(self.data_dir)
        try:
            return await self._run()
        finally:
            os.close(self._lock_fd)

    async def _open_storage(self) -> bool:
        """SQLite always; PostgreSQL sync when a DSN is set. False: refuse to start."""
        cfg = self.config
        try:
            self.local = await LocalStore.for_config(cfg)
        except SchemaTooNewError as exc:
            log.event("storage_refused", logging.ERROR, error=str(exc))
            return False
        self.engine.tick_no = await self.local.last_tick(self.name) or 0  # ticks keep rising across restarts
        if cfg.storage.postgres_dsn:
            from corec_node.storage import Syncer

            self.syncer = Syncer.from_config(self.local, cfg)
            try:
                await asyncio.wait_for(self.syncer.connect(), PG_CONNECT_WAIT)
            except SchemaTooNewError as exc:
                log.event("storage_refused", logging.ERROR, error=str(exc))
                await self.local.close()
                return False
            except Exception as exc:  # unreachable now: the outbox keeps everything until it answers
                log.event("postgres_unreachable", logging.WARNING, error=str(exc) or type(exc).__name__,
                          detail="keeping block state in the SQLite outbox until PostgreSQL answers")
            self.syncer.start()
        return True

    async def _close_storage(self) -> None:
        for task in list(self._tasks):
            try:
                await asyncio.wait_for(task, 2.0)
            except Exception:
                pass
        if self.syncer is not None:
            await self.syncer.stop(flush=True, timeout=2.0)
        if self.local is not None:
            await self.local.close()

    def _spawn(self, what: str, coro: Any) -> None:
        """Run a storage write off the hot path; a failure is logged and counted, never fatal."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and (exc := t.exception()) is not None:
                self.storage_errors += 1
                level = logging.WARNING if isinstance(exc, (StorageError, StaleTermError)) else logging.ERROR
                log.event("storage_write_failed", level, what=what, error=str(exc) or type(exc).__name__)

        task.add_done_callback(done)

    def audit(self, kind: str, subject: str, reason: str, **details: Any) -> None:
        if self.local is not None:
            self._spawn(f"audit {kind}", self.local.add_audit(kind, subject, reason, details=details or None))

    async def _run(self) -> int:
        cfg = self.config
        term, voted_for = load_vote(self.data_dir)
        if not await self._open_storage():
            return 1
        mcfg, ecfg = profile_configs(cfg.mesh.profile)
        now = self.now()
        self.membership = Membership(self.name, self.addr, self.pub_addr, mcfg, self.rng, now)
        self.election = Election(self.name, self.addr, ecfg, self.rng, now, term=term, voted_for=voted_for)
        self.term = term
        try:
            self.transport.bind(cfg.node.listen, f"{cfg.pub_listen[0]}:{cfg.pub_listen[1]}")
        except zmq.ZMQError as exc:
            log.event("bind_failed", logging.ERROR, listen=cfg.node.listen, error=str(exc))
            await self.transport.close()
            await self._close_storage()
            return 1
        self.transport.subscribe([TOPIC_MEMBERSHIP, TOPIC_NUCLEUS, TOPIC_AGGREGATES, TOPIC_ALERTS, TOPIC_ENTITIES_ALL, TOPIC_FLOW])
        self._next_engine_tick = self.now() + cfg.engine.tick_interval
        if cfg.metrics.listen:
            metrics = Metrics(self.metrics_snapshot, name=self.name, cluster=self.cluster, version=__version__)
            try:
                self.metrics_server = await metrics.start_http(cfg.metrics.listen)
            except OSError as exc:
                log.event("metrics_bind_failed", logging.ERROR, listen=cfg.metrics.listen, error=str(exc))
                await self.transport.close()
                await self._close_storage()
                return 1
        self.control = ControlServer(cfg.control_path, self._commands())
        await self.control.start()
        self.transport.start(self._on_direct, self._on_broadcast)
        await self.plugins.startup(self)
        if not cfg.security.enabled:
            log.event("security_off", logging.WARNING, detail="CurveZMQ is off: anyone who reaches these ports can join and read")
        assert self.local is not None
        snapshot = await self.local.load_members()
        # A fresh node told to join keeps out of elections until a peer answered: otherwise
        # a node whose seeds are unreachable would lead a cluster of one and merge later.
        self._voters_held = bool(cfg.mesh.join) and not snapshot
        if not self._voters_held:
            self._apply(self.election.set_voters(self.membership.voters(), now))
        if snapshot:
            self._joined_at = time.time()
            self._apply(self.membership.restore(snapshot, now))
        if cfg.mesh.join:
            self._joined_at = time.time()
            self._apply(self.membership.join(cfg.mesh.join, now))
        if cfg.mesh.discovery:
            self.discovery = Discovery(cluster=self.cluster, name=self.name, addr=self.addr,
                                       target=(cfg.mesh.discovery_addr, cfg.mesh.discovery_port),
                                       on_peer=self._discovered_peer)
            try:
                await self.discovery.start()
            except OSError as exc:
                log.event("discovery_failed", logging.WARNING, port=cfg.mesh.discovery_port, error=str(exc))
                self.discovery = None
        log.event("ready", listen=cfg.node.listen, pub=self.pub_addr, advertise=self.addr,
                  cluster=self.cluster, version=__version__, data_dir=str(self.data_dir),
                  rejoin=len(snapshot), join=",".join(cfg.mesh.join))
        self.notifier.ready(self.status_line())
        ticker = asyncio.create_task(self._tick_loop())
        worker = asyncio.create_task(self._ingest_worker())
        try:
            await self._stop.wait()
        finally:
            self.notifier.stopping()
            for task in (ticker, worker):
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
            self._save_snapshot()
            await self.plugins.shutdown(self)
            for opening in self._plugin_stores.values():
                try:
                    await (await opening).close()
                except Exception as exc:
                    log.event("plugin_store_close_failed", logging.WARNING, error=str(exc))
            if self.discovery is not None:
                await self.discovery.close()
            await self.control.close()
            if self.metrics_server is not None:
                await self.metrics_server.close()
            await self.transport.close()
            await self._close_storage()
            self.notifier.close()
            log.event("stopped", code=self.exit_code)
        return self.exit_code

    async def _tick_loop(self) -> None:
        expected = self.now() + TICK_PERIOD
        while True:
            await asyncio.sleep(max(0.0, expected - self.now()))
            now = self.now()
            lag = now - expected
            if lag > STALL_REPORT:
                assert self.membership is not None
                self.membership.note_stall(lag, now)
                log.event("loop_stall", logging.DEBUG, lag=lag)
            expected = max(expected + TICK_PERIOD, now)
            started = time.perf_counter()
            try:
                self._tick(now)
            except Exception:  # a bug in a core must not silently stop the timers
                logging.getLogger(log.LOGGER_NAME).exception("tick_failed")
            self.tick_time.observe(time.perf_counter() - started)
            self.notifier.watchdog_due()  # from the loop itself: a hung loop stops the pings
            if now - self._status_at >= STATUS_PERIOD:
                self._status_at = now
                self.notifier.status(self.status_line())

    def _tick(self, now: float) -> None:
        assert self.membership is not None and self.election is not None
        self._apply(self.membership.tick(now))
        self._apply(self.election.tick(now))
        if now >= self._next_engine_tick:
            self._next_engine_tick = max(self._next_engine_tick + self.config.engine.tick_interval, now)
            self._engine_tick()
        if self._snapshot_dirty and now - self._snapshot_at >= SNAPSHOT_PERIOD:
            self._save_snapshot()
        if now >= self._next_prune and self.local is not None and self.config.storage.history_retention > 0:
            self._next_prune = now + PRUNE_PERIOD
            self._spawn("prune history", self.local.prune_history(time.time() - self.config.storage.history_retention))

    def _save_snapshot(self) -> None:
        if self.membership is None or not self._snapshot_dirty:
            return
        self._snapshot_dirty = False
        self._snapshot_at = self.now()
        if self.local is not None:
            self._spawn("member snapshot", self.local.save_members(self.membership.snapshot()))

    # -- inbound --------------------------------------------------------------------

    def _reject(self, where: str, exc: WireError) -> None:
        self.rejected[exc.reason] += 1
        now = time.monotonic()
        if now - self._last_reject_log > 1.0:  # rate-limited: a flood must not flood the log
            self._last_reject_log = now
            log.event("frame_rejected", logging.INFO, where=where, reason=exc.reason,
                      detail=exc.detail[:200], total=sum(self.rejected.values()))

    def _decode(self, where: str, frames: list[bytes]):
        try:
            return decode_message(frames, cluster=self.cluster, max_payload=self.config.mesh.max_message_bytes)
        except WireError as exc:
            self._reject(where, exc)
            return None

    def _on_direct(self, frames: list[bytes]) -> Awaitable[None] | None:
        decoded = self._decode("direct", frames)
        if decoded is None:
            return None
        topic, env, payload = decoded
        self.messages_in[env.type.name.lower()] += 1
        self._count_in(topic, frames)
        if env.type == MsgType.ENTITY_BATCH:
            return self._queue_batch(env, payload, "direct")
        if topic != TOPIC_DIRECT:
            self._reject("direct", WireError("topic", f"{topic!r} on the direct socket"))
        else:
            self._dispatch(env, self.now())
        return None

    def _on_broadcast(self, frames: list[bytes]) -> None:
        decoded = self._decode("broadcast", frames)
        if decoded is None:
            return
        topic, env, payload = decoded
        if env.sender == self.name:
            return
        self.messages_in[env.type.name.lower()] += 1
        self._count_in(topic, frames)
        now = self.now()
        verdict = self.sequences.observe(env.sender, topic, env.seq)
        if verdict is SeqEvent.DUPLICATE:
            return
        if env.type == MsgType.ENTITY_BATCH:
            self._queue_batch(env, payload, "broadcast")
            return
        if env.type == MsgType.AGGREGATES:
            self.engine.observe_rows(env.sender, env.msg.rows)
            return
        if env.type == MsgType.ALERT:
            log.event("peer_alert", logging.INFO, sender=env.sender, kind=env.msg.kind, text=env.msg.text)
            return
        if env.type == MsgType.FUSION_PLAN:
            self._fusion_plan(env.sender, env.msg)
            return
        if env.type == MsgType.FLOW:
            self.flow.peer_flow(env.sender, env.msg.hold_ms, now)
            return
        self._dispatch(env, now)
        if env.type == MsgType.HEARTBEAT:
            self._placement_heartbeat(env.sender, env.msg)
        if verdict is SeqEvent.GAP and topic == TOPIC_MEMBERSHIP and self.membership is not None:
            self._apply(self.membership.on_gap(env.sender, now))

    def _dispatch(self, env, now: float) -> None:
        assert self.membership is not None and self.election is not None
        self.election.heard_from(env.sender, now)
        try:
            if env.type in MEMBERSHIP_TYPES:
                self._apply(self.membership.handle(env.sender, env.msg, now))
            elif env.type in ELECTION_TYPES:
                self._apply(self.election.handle(env.sender, env.msg, now))
        except Exception:  # a core bug on one message must not take the node down
            logging.getLogger(log.LOGGER_NAME).exception("handle_failed", extra={"fields": {"type": env.type.name}})

    # -- outbound -------------------------------------------------------------------

    def _frames(self, msg: Any, topic: bytes) -> list[bytes]:
        return encode_message(msg, sender=self.name, seq=self.counters.next(topic), cluster=self.cluster)

    def _apply(self, effects: list[Effect]) -> None:
        voters_changed = placement_dirty = False
        for effect in effects:
            match effect:
                case Send(to=to, msg=msg):
                    if to == self.addr:
                        continue
                    frames = self._frames(msg, TOPIC_DIRECT)
                    if self.transport.send(to, frames):
                        self.messages_out[type(msg).__name__.lower()] += 1
                        self._count_out(TOPIC_DIRECT, frames)
                case Broadcast(msg=msg):
                    if type(msg) is Heartbeat:  # the nucleus confirms the map it acts on
                        msg = dataclasses.replace(msg, placement=self.engine.placement_digest())
                    topic = topic_for(msg)
                    frames = self._frames(msg, topic)
                    self.transport.publish(frames)
                    self.messages_out[type(msg).__name__.lower()] += 1
                    self._count_out(topic, frames)
                case MemberChanged():
                    self._member_changed(effect)
                    voters_changed = True
                    if self.election is not None and effect.name != self.name:
                        if effect.new == MemberStatus.DEAD:
                            self._apply(self.election.member_dead(effect.name, self.now()))
                        elif effect.old == MemberStatus.DEAD:
                            self._apply(self.election.member_alive(effect.name, self.now()))
                case MemberReaped(name=name):
                    self._member_reaped(name)
                    voters_changed = True
                case NameConflict(name=name, addr=addr):
                    self._name_conflict(name, addr)
                case PersistVote(term=term, voted_for=voted_for):
                    save_vote(self.data_dir, term, voted_for)
                    if voted_for == self.name:  # only a candidate votes for itself
                        self.elections_started += 1
                case LeaderChanged(leader=leader, term=term):
                    self.leader, self.term = leader, term
                    self._leader_placement = None  # the new leader has confirmed nothing yet
                    placement_dirty = True
                    log.event("leader_changed", leader=leader, term=term)
                    self.plugins.spawn(self.plugins.leader_changed(self, leader, term))
                    self.audit("leader_change", leader or "-", "elected" if leader else "leader lost", term=term)
                    if leader == self.name and self.local is not None:
                        self._spawn("nucleus term", self.local.record_nucleus(term, leader))
        if voters_changed and self.election is not None and self.membership is not None:
            if self._voters_held and any(m.status == MemberStatus.ALIVE and m.name != self.name
                                         for m in self.membership.members()):
                self._voters_held = False
            if not self._voters_held:
                self._apply(self.election.set_voters(self.membership.voters(), self.now()))
        if (voters_changed or placement_dirty) and self.membership is not None:
            self._placement_changed()

    def _member_changed(self, change: MemberChanged) -> None:
        assert self.membership is not None
        self._snapshot_dirty = True
        if change.name != self.name:
            member = self.membership.member(change.name)
            if member is not None:
                self._peers[change.name] = (member.addr, member.pub)
                if change.new in (MemberStatus.ALIVE, MemberStatus.SUSPECT, MemberStatus.DEAD):
                    self.transport.connect_sub(member.pub)  # dead: keep listening, it may return
                elif change.new == MemberStatus.LEFT:
                    self.transport.disconnect_sub(member.pub)
        log.event("member_changed", name=change.name, addr=change.addr,
                  old=change.old.label if change.old is not None else None,
                  new=change.new.label, inc=change.inc, reason=change.reason)
        self.plugins.spawn(self.plugins.member_event(self, {
            "name": change.name, "addr": change.addr, "old": change.old.label if change.old is not None else None,
            "new": change.new.label, "incarnation": change.inc, "reason": change.reason}))

    def _member_reaped(self, name: str) -> None:
        self._snapshot_dirty = True
        self.sequences.forget(name)
        addr, pub = self._peers.pop(name, ("", ""))
        if addr:
            self.transport.disconnect_sub(pub)
            self.transport.forget(addr)
        log.event("member_reaped", name=name)
        self.plugins.spawn(self.plugins.member_event(self, {
            "name": name, "addr": addr, "old": None, "new": "reaped", "incarnation": None, "reason": "reaped"}))

    def _name_conflict(self, name: str, addr: str) -> None:
        if self.conflicts.get(addr) == name:
            return
        self.conflicts[addr] = name
        newcomer = time.time() - self._joined_at < CONFLICT_GRACE
        log.event("name_conflict", logging.ERROR, name=name, other_addr=addr,
                  detail=f"another live node at {addr} uses the name {name!r}; give each node its own --name",
                  action="exiting: this node joined last" if newcomer else "keeping the name: the node that joined last exits")
        if newcomer:
            self.request_stop(1)

    # -- operations: metrics and systemd status ----------------------------------------

    def _count_in(self, topic: bytes, frames: list[bytes]) -> None:
        self.topic_in[topic] += 1  # after decode: a hostile topic frame never becomes a label
        self.bytes_in[topic] += sum(len(f) for f in frames)

    def _count_out(self, topic: bytes, frames: list[bytes]) -> None:
        self.topic_out[topic] += 1
        self.bytes_out[topic] += sum(len(f) for f in frames)

    def status_line(self) -> str:
        alive = self.membership.counts().get("alive", 0) if self.membership is not None else 0
        return f"members {alive} alive, leader {self.leader or '(none)'} (term {self.term})"

    def storage_status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"sqlite": str(self.config.sqlite_path), "postgres": None,
                               "outbox": 0, "sync_lag": 0.0, "errors": self.storage_errors}
        if self.syncer is not None:
            st = self.syncer.status()
            out.update(postgres=st["state"], connected=st["connected"], outbox=st["outbox"],
                       sync_lag=round(st["lag_seconds"], 3), last_error=st["last_error"],
                       drained=st["drained_total"], dropped=st["dropped_total"])
        return out

    def metrics_snapshot(self) -> dict[str, Any]:
        """Read at scrape time on the loop (metrics.py's contract); live Counters, no copies."""
        rejected = dict(self.rejected)
        if self.transport.auth is not None:
            rejected["curve_denied"] = self.transport.auth.denied
        return {
            "members": self.membership.counts() if self.membership is not None else {},
            "term": self.term,
            "elections": self.elections_started,
            "messages": {"in": self.topic_in, "out": self.topic_out},
            "message_bytes": {"in": self.bytes_in, "out": self.bytes_out},
            "rejected": rejected,
            "tick": self.tick_time,
            "entities": self.engine.store.count(),
            "blocks": len(self.engine.store.block_ids()),
            "ingest_queue_bytes": self._batches.bytes if self._batches is not None else 0,
            "flow_requests": self.flow.requests,
            "flow_holds": self.flow.holds,
            **({"sync_lag": self.syncer.status()["lag_seconds"], "outbox_rows": self.syncer.status()["outbox"]}
               if self.syncer is not None else {}),
        }

    # -- plugins and audit: the API hooks may call on ``node`` -----------------------------

    def raise_alert(self, kind: str, text: str, *, severity: str = "warning", **fields: Any) -> None:
        """Record, log and publish an alert. Safe from any thread (sync hooks run in workers)."""
        alert = {"kind": kind, "text": text, "severity": severity, "plugin": fields.pop("plugin", None), **fields}
        if self.loop is not None and threading.get_ident() != self._loop_thread:
            self.loop.call_soon_threadsafe(self._publish_alert, alert)
        else:
            self._publish_alert(alert)

    def _publish_alert(self, alert: dict[str, Any]) -> None:
        """On the loop: the PluginManager's on_alert, and raise_alert's end."""
        log.event("alert", logging.WARNING, **alert)
        text = alert["text"] if len(alert["text"].encode()) <= 4096 else alert["text"][:1000] + "..."
        try:  # published for every node and subscriber (topic alr)
            frames = self._frames(Alert(kind=alert["kind"], text=text), TOPIC_ALERTS)
        except (ValueError, TypeError):  # a kind that is not a valid name on the wire
            frames = None
        if frames is not None:
            self.transport.publish(frames)
            self._count_out(TOPIC_ALERTS, frames)
        if self.local is not None:
            details = {k: v for k, v in alert.items() if k not in ("kind", "text", "severity", "block")}
            self._spawn("alert", self.local.add_alert(alert["kind"], alert["text"], severity=alert["severity"],
                                                      block=alert.get("block"), details=details))
        self.plugins.spawn(self.plugins.alert(self, alert))

    async def plugin_store(self, name: str) -> Any:
        """The plugin's own store (opened and migrated once, with its corec_storage_migrations)."""
        opening = self._plugin_stores.get(name)
        if opening is None:
            from corec_node.storage import PluginStore

            opening = self._plugin_stores[name] = asyncio.ensure_future(PluginStore.for_config(
                name, self.config, sqlite_migrations=self.plugins.migrations().get(name, ())))
        return await opening

    async def _audit_tick(self, rows: list[dict[str, Any]], tick: int) -> None:
        try:
            findings, records = await asyncio.to_thread(self.auditor.step, rows, tick)
        finally:
            self._auditing = False
        alerted = self.alert_gate.step(findings)  # a flag alone is chance; the same block again is not
        for rec in [r for r in records if r.kind != "audit_flag"] + [f.record() for f in alerted]:
            log.event("audit", kind=rec.kind, subject=rec.subject, reason=rec.reason, tick=rec.tick)
            self.audit(rec.kind, rec.subject, rec.reason, tick=rec.tick, **rec.details)
        for finding in alerted:
            alert = finding.alert()
            self.raise_alert(alert.pop("kind"), alert.pop("text"), **alert)

    def _discovered_peer(self, name: str, addr: str) -> None:
        """A beacon from a node of our cluster: join it unless we know it alive already."""
        assert self.membership is not None
        member = self.membership.member(name)
        if member is not None and member.addr == addr and member.status in (MemberStatus.ALIVE, MemberStatus.SUSPECT):
            return
        now = self.now()
        if now - self._discovered.get(addr, float("-inf")) < 5.0:  # one join a peer per 5 s
            return
        self._discovered[addr] = now
        log.event("peer_discovered", name=name, addr=addr)
        self._apply(self.membership.join([addr], now))

def install_signal_handlers(node: Node) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, node.request_stop, 0)
