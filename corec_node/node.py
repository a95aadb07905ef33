"""The I/O shell and composition root: sockets, clock and files around the pure cores.

Rules of the shell:
1. Only here is there a clock: every core call gets ``now`` from the loop's monotonic time.
2. Effects returned by a core are carried out in order, at once (a vote is persisted
   before it is sent).
3. Nothing a peer sends can raise out of a handler: bad frames are dropped and counted by
   reason, and a core's refusal is logged, never fatal.
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

import numpy as np
import zmq

from corec_node import __version__, log
from corec_node.config import Config
from corec_node.control import CommandError, ControlServer
from corec_node.discovery import Discovery
from corec_node.engine import Fusion
from corec_node.engine.audit import Auditor
from corec_node.enginehost import EngineHost
from corec_node.ingestqueue import IngestQueue, payload_bytes
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
from corec_node.mesh.flow import MAX_WAIT, FlowControl
from corec_node.mesh.membership import Membership, MembershipConfig
from corec_node.metrics import Metrics, MetricsServer, TickHistogram
from corec_node.notify import Notifier
from corec_node.plugins import PluginManager
from corec_node.security import CurveConfig
from corec_node.state import load_vote, lock_data_dir, save_vote
from corec_node.storage import LocalStore, SchemaTooNewError, StaleTermError, StorageError
from corec_node.transport import Transport
from corec_node.wire import (
    SeqEvent,
    SequenceCounter,
    SequenceTracker,
    WireError,
    decode_batch,
    decode_message,
    encode_message,
    make_batch,
    topic_for,
)
from corec_node.wire.messages import Aggregates, Alert, EntityBatch, Flow, FusionPlan, Heartbeat, MemberStatus, MsgType
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
HANDOFF_CHUNK = 100_000  # records per handoff message (1 MB frames)
FUSION_EVERY = 10  # the nucleus plans fusions every 10 engine ticks: rows from every owner are in
PRUNE_PERIOD = 60.0  # local history older than storage.history_retention goes once a minute
# The ingest queue's bounds, as shares of engine.ingest_queue_mb (ingestqueue.py, mesh/flow.py):
INGEST_WAIT_SHARE = 1 / 4  # a producer's batch waits while this much is queued
FLOW_HIGH_SHARE = 1 / 16  # a stream backlog this deep asks the stream's sources to pause (SPEC 9.3)
FLOW_LOW_SHARE = 1 / 64  # ... and this shallow ends the pause; past the whole, stream batches are dropped
REPUBLISH_BURST = 1 << 20  # producer bytes republished between two looks at the members' FLOW messages
COALESCE_RECORDS = 200_000  # queued batches the worker ingests in one store call: new keys merge once, not per batch
PG_CONNECT_WAIT = 5.0  # at start, wait this long for PostgreSQL; after that the outbox waits for it


def profile_configs(profile: str) -> tuple[MembershipConfig, ElectionConfig]:
    return getattr(MembershipConfig, profile)(), getattr(ElectionConfig, profile)()


class Node:
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
        self.auditor = Auditor()  # IsolationForest over this node's block rows (engine/audit.py)
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

    # -- entities -----------------------------------------------------------------------

    def _queue_batch(self, env: Any, payload: Any, where: str) -> Awaitable[None] | None:
        """Queue a batch for the ingest worker (bounds and waits: ingestqueue.py).

        A producer's batch (direct socket, sender not a member) is republished on the PUB
        stream as it arrives, unless a member asked for a pause (SPEC 9.3): then it waits at
        the door, and the producer behind it. A stream batch that finds the queue over its
        limit is dropped and counted; this node asks for pauses long before that."""
        queue = self._ingest_queue()
        item = (env, payload, where)
        if where == "direct":
            if not self._is_handoff(env):
                if self.flow.may_hold(self.now()):
                    return self._admit(item)
                self._republish(env, payload)
                self._burst += payload_bytes(item)
                if self._burst >= REPUBLISH_BURST:
                    self._burst = 0  # let a member's FLOW in before republishing more
                    return asyncio.sleep(0) if queue.put_now(item) else queue.put(item)
            return None if queue.put_now(item) else queue.put(item)
        if not queue.offer(item):  # we cannot keep up: shed stream data, never the control plane
            self.ingest_dropped += 1
            self.rejected["ingest_overflow"] += 1
            return None
        self._ask_flow(self.flow.stream_queued(payload_bytes(item), self.now()))
        return None

    def _ingest_queue(self) -> IngestQueue:
        if self._batches is None:
            self._batches = IngestQueue(limit_bytes=self.ingest_limit, wait_bytes=int(self.ingest_limit * INGEST_WAIT_SHARE))
        return self._batches

    async def _admit(self, item: tuple[Any, Any, str]) -> None:
        """A producer's batch during a member's pause: wait until the pause ends (MAX_WAIT
        at most, so that member messages on the same socket are not held long), then go on."""
        start = self.now()
        while (until := self.flow.held_until(now := self.now())) is not None and now - start < MAX_WAIT:
            await asyncio.sleep(min(until - now, start + MAX_WAIT - now, 0.002))  # a release ends it early
        now = self.now()
        self.flow.held(now - start, now)
        env, payload, _ = item
        self._republish(env, payload)
        await self._ingest_queue().put(item)

    def _ask_flow(self, hold_ms: int | None) -> None:
        if hold_ms is not None:
            frames = self._frames(Flow(hold_ms=hold_ms), TOPIC_FLOW)
            self.transport.publish(frames)
            self._count_out(TOPIC_FLOW, frames)

    async def _ingest_worker(self) -> None:
        """Ingest queued batches in arrival order. A backlog is taken in one go (up to
        COALESCE_RECORDS records): one store call merges all its new keys at once."""
        queue = self._ingest_queue()
        while True:
            items = await queue.take(COALESCE_RECORDS)
            try:
                self._ingest_items(items)
            except Exception:  # a bug on one batch must not stop ingest
                logging.getLogger(log.LOGGER_NAME).exception("ingest_failed")
            stream = sum(payload_bytes(item) for item in items if item[2] == "broadcast")
            self._ask_flow(self.flow.stream_taken(stream, self.now()))  # publish never raises
            await asyncio.sleep(0)  # timers and control messages go between two takes

    def _ingest_items(self, items: list[tuple[Any, Any, str]]) -> None:
        """A sweep of known entities is stored at once (``ingest_sweep``); other batches are
        stored together, in one call, with every batch after them; a handoff is applied in its
        place in the order (what came before it is stored first)."""
        pending: list[np.ndarray] = []
        for env, payload, where in items:
            if where == "direct" and self._is_handoff(env):
                self._store(pending)
                self._handoff(env, payload)
                continue
            records = self._decode_batch(env.msg, payload, where)
            if records is not None:
                if pending or self.engine.ingest_sweep(records, env.msg.channel) is None:  # in order, after pending
                    pending.append(records)
                if self.plugins.wants(env.msg.channel):
                    self.plugins.spawn(self.plugins.entities(self, env.msg.channel, records))
        self._store(pending)

    def _is_handoff(self, env: Any) -> bool:
        assert self.membership is not None
        return env.sender != self.name and self.membership.member(env.sender) is not None

    def _handoff(self, env: Any, payload: Any) -> None:
        """Block state handed over by a member."""
        records = self._decode_batch(env.msg, payload, "direct")
        if records is not None:
            self.engine.receive_handoff(records)

    def _republish(self, env: Any, payload: Any) -> None:
        """A producer's batch: publish it for every owner and subscriber of its channel."""
        topic = topic_for(env.msg)
        try:
            frames = encode_message(env.msg, sender=self.name, seq=self.counters.next(topic),
                                    cluster=self.cluster, payload=payload)
        except ValueError as exc:  # accepted here but not sendable (over the wire's payload limit)
            self._reject("republish", WireError("too_large", str(exc)))
            return
        self.transport.publish(frames)
        self._count_out(topic, frames)

    def _decode_batch(self, header: EntityBatch, payload: Any, where: str) -> np.ndarray | None:
        try:
            records = decode_batch(header, payload)
        except WireError as exc:
            self._reject(where, exc)
            return None
        return records

    def _store(self, pending: list[np.ndarray]) -> None:
        """Ingest decoded batches in one store call (and empty the list)."""
        if pending:
            self.engine.ingest(pending[0] if len(pending) == 1 else np.concatenate(pending))
            pending.clear()

    def _engine_tick(self) -> None:
        rows, repairs = self.engine.tick()
        self.plugins.spawn(self.plugins.block_aggregates(self, self.engine.tick_no, rows))
        if rows and not self._auditing:  # one audit at a time, in a worker thread
            self._auditing = True
            self._spawn("audit", self._audit_tick(rows, self.engine.tick_no))
        if rows and self.local is not None:
            self._spawn("block state", self.local.record_tick(rows, time.time()))
        for chunk in self.engine.chunks(rows):
            if chunk:
                msg = Aggregates(tick=self.engine.tick_no, rows=tuple(chunk))
                frames = self._frames(msg, TOPIC_AGGREGATES)
                self.transport.publish(frames)
                self._count_out(TOPIC_AGGREGATES, frames)
        if self.leader == self.name and self.engine.tick_no % FUSION_EVERY == 0:
            self._plan_fusions()
        for record in repairs:
            log.event("repair", kind=record.kind, block=record.block, channel=record.channel,
                      entities=record.entities, reason=record.reason)
            self.audit(record.kind, f"block {record.channel}:{record.block & 0xFFFFFFFF}", record.reason,
                       block=record.block, entities=record.entities)

    def _plan_fusions(self) -> None:
        """As nucleus: fuse weak blocks into strong ones of their channel, fenced by our term."""
        plan = self.engine.plan(self.config.engine.min_fitness)
        if not plan:
            return
        msg = FusionPlan(term=self.term, fusions=tuple(
            {"weak": f.weak_block, "strong": f.strong_block, "channel": f.channel, "reason": f.reason} for f in plan))
        frames = self._frames(msg, TOPIC_NUCLEUS)
        self.transport.publish(frames)
        self._count_out(TOPIC_NUCLEUS, frames)
        self._apply_fusions(plan, self.term)

    def _fusion_plan(self, sender: str, msg: FusionPlan) -> None:
        """A plan from the nucleus: applied only if it comes from the leader of our term."""
        if sender != self.leader or msg.term != self.term:
            log.event("fusion_plan_refused", logging.WARNING, sender=sender, term=msg.term,
                      leader=self.leader, our_term=self.term)
            return
        try:
            plan = [Fusion(int(f["weak"]), int(f["strong"]), int(f["channel"]), str(f.get("reason", "")))
                    for f in msg.fusions]
        except (KeyError, TypeError, ValueError):
            self.rejected["fusion_plan"] += 1
            return
        self._apply_fusions(plan, msg.term)

    def _apply_fusions(self, plan: list[Fusion], term: int) -> None:
        try:
            records, handoffs = self.engine.apply_fusions(plan)
        except ValueError as exc:  # e.g. a plan across channels: the nucleus's bug, not ours
            log.event("fusion_failed", logging.WARNING, error=str(exc))
            return
        for record in records:
            log.event("fusion", block=record.block, into=record.target, channel=record.channel,
                      entities=record.entities, reason=record.reason, term=term)
            if self.local is not None:
                self._spawn("audit fusion", self.local.add_audit(
                    "fusion", f"block {record.channel}:{record.block & 0xFFFFFFFF}", record.reason, term=term,
                    details={"into": record.target, "entities": record.entities}))
        self._hand_off(handoffs)

    def _placement_changed(self) -> None:
        """Our live view changed (or the leader did): act on it now if we are the nucleus or
        nobody confirms maps, else wait for the leader's digest (SPEC 9.1)."""
        assert self.membership is not None
        self.engine.observe_view(m.name for m in self.membership.members()
                                 if m.status in (MemberStatus.ALIVE, MemberStatus.SUSPECT))
        if self._acts_on_own_view():
            self._hand_off(self.engine.adopt_view())
        elif self._leader_placement is not None:
            self._confirm_placement()

    def _acts_on_own_view(self) -> bool:
        """True when we are the nucleus, know none, or ours does not confirm maps (1.0)."""
        return self.leader is None or self.leader == self.name or self._leader_placement == ""

    def _placement_confirmed(self) -> bool:
        """Whether the map we act on is the one the nucleus confirmed (our own view when
        nobody else confirms)."""
        confirmed = self.engine.view_digest() if self._acts_on_own_view() else self._leader_placement
        return self.engine.placement_digest() == confirmed

    def _placement_heartbeat(self, sender: str, msg: Heartbeat) -> None:
        """A heartbeat, after the election core saw it: from our leader, its digest."""
        if sender != self.leader or msg.term != self.term or sender == self.name:
            return
        if msg.placement != self._leader_placement:
            self._leader_placement = msg.placement
            if msg.placement:
                self._confirm_placement()
            else:  # a leader that does not confirm maps: act on our own view
                self._hand_off(self.engine.adopt_view())

    def _confirm_placement(self) -> None:
        handoffs = self.engine.confirm(self._leader_placement or "")
        if handoffs is not None:
            self._hand_off(handoffs)

    def _hand_off(self, handoffs: dict[str, np.ndarray]) -> None:
        assert self.membership is not None
        for owner, records in handoffs.items():
            member = self.membership.member(owner)
            if member is None:
                continue
            for start in range(0, len(records), HANDOFF_CHUNK):
                chunk = records[start:start + HANDOFF_CHUNK]
                channels = np.unique(chunk["channel"])
                for channel in channels.tolist():
                    header, payload = make_batch(chunk[chunk["channel"] == channel], channel)
                    frames = encode_message(header, sender=self.name, seq=self.counters.next(TOPIC_DIRECT),
                                            cluster=self.cluster, payload=payload)
                    self.transport.send(member.addr, frames)
            log.event("blocks_handed_off", to=owner, records=len(records), map_version=self.engine.placement.version)
            self.audit("placement", owner, "membership changed: blocks handed to their new owner",
                       records=len(records), map_version=self.engine.placement.version)

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
        for rec in records:
            log.event("audit", kind=rec.kind, subject=rec.subject, reason=rec.reason, tick=rec.tick)
            self.audit(rec.kind, rec.subject, rec.reason, tick=rec.tick, **rec.details)
        for finding in findings:
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

    # -- control commands -------------------------------------------------------------

    def _commands(self) -> dict[str, Any]:
        return {
            "status": self._cmd_status,
            "members": self._cmd_members,
            "leader": self._cmd_leader,
            "join": self._cmd_join,
            "leave": self._cmd_leave,
            "force-leave": self._cmd_force_leave,
            "blocks": self._cmd_blocks,
            "plugins": self._cmd_plugins,
        }

    def members_json(self) -> list[dict[str, Any]]:
        assert self.membership is not None
        return [
            {"name": m.name, "addr": m.addr, "pub": m.pub, "status": m.status.label,
             "incarnation": m.inc, "self": m.name == self.name}
            for m in self.membership.members()
        ]

    async def _cmd_status(self, _req: dict[str, Any]) -> dict[str, Any]:
        assert self.membership is not None
        return {
            "name": self.name,
            "addr": self.addr,
            "pub": self.pub_addr,
            "cluster": self.cluster,
            "version": __version__,
            "uptime": round(time.time() - self.started_wall, 3),
            "members": self.membership.counts(),
            "leader": self.leader,
            "term": self.term,
            "awareness": self.membership.awareness,
            "messages_in": sum(self.messages_in.values()),
            "messages_out": sum(self.messages_out.values()),
            "entities": self.engine.store.count(),
            "blocks": len(self.engine.store.block_ids()),
            "cluster_blocks": len(self.engine.cluster_rows()),
            "entity_errors": self.engine.entity_errors,
            "ingested": self.engine.ingested,
            "ingest_dropped": self.ingest_dropped,
            "ingest_queue": self._batches.qsize() if self._batches is not None else 0,
            "ingest_queue_bytes": self._batches.bytes if self._batches is not None else 0,
            "repairs": self.engine.repairs,
            "fusions": self.engine.fusions,
            "audit_fits": self.auditor.fits,
            "flow": self.flow.status(),
            "placement_version": self.engine.placement.version,
            "placement_confirmed": self._placement_confirmed(),
            "storage": self.storage_status(),
            "rejected": dict(self.rejected),
            "dropped": dict(self.transport.dropped),
            "name_conflicts": [{"name": n, "addr": a} for a, n in self.conflicts.items()],
        }

    async def _cmd_plugins(self, _req: dict[str, Any]) -> list[dict[str, Any]]:
        return self.plugins.info()

    async def _cmd_blocks(self, req: dict[str, Any]) -> list[dict[str, Any]]:
        channel = req.get("channel")
        if channel is not None and not isinstance(channel, int):
            raise CommandError("channel must be an integer")
        return self.engine.cluster_rows(channel)

    async def _cmd_members(self, _req: dict[str, Any]) -> list[dict[str, Any]]:
        return self.members_json()

    async def _cmd_leader(self, _req: dict[str, Any]) -> dict[str, Any]:
        return {"leader": self.leader, "term": self.term}

    async def _cmd_join(self, req: dict[str, Any]) -> dict[str, Any]:
        assert self.membership is not None
        addrs = req.get("addrs")
        timeout = float(req.get("wait", 5.0))
        if not isinstance(addrs, list) or not addrs or not all(isinstance(a, str) for a in addrs):
            raise CommandError("join needs at least one host:port")
        self._joined_at = time.time()
        self._apply(self.membership.join(addrs, self.now()))
        deadline = self.now() + timeout
        while True:
            reached = {m.addr for m in self.membership.members() if m.status == MemberStatus.ALIVE}
            missing = [a for a in addrs if a not in reached]
            if not missing:
                return {"joined": addrs, "members": len(self.membership.members())}
            if self.now() >= deadline:
                raise CommandError(f"no answer from {', '.join(missing)} within {timeout:g} s (still trying in the background)")
            await asyncio.sleep(0.02)

    async def _cmd_leave(self, req: dict[str, Any]) -> dict[str, Any]:
        assert self.membership is not None
        self._apply(self.membership.leave(self.now()))
        spread = float(req.get("spread", 1.0))

        async def stop_later() -> None:
            # keep ticking for a moment so the queued "left" gossip goes out and is retransmitted
            await asyncio.sleep(spread)
            self.request_stop(0)

        asyncio.get_running_loop().create_task(stop_later())
        return {"left": True, "name": self.name, "stopping_in": spread}

    async def _cmd_force_leave(self, req: dict[str, Any]) -> dict[str, Any]:
        assert self.membership is not None
        name = req.get("name")
        if not isinstance(name, str):
            raise CommandError("force-leave needs a member name")
        try:
            self._apply(self.membership.force_leave(name, self.now()))
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        return {"name": name, "status": "left"}


def install_signal_handlers(node: Node) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, node.request_stop, 0)
