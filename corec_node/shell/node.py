"""The composition root: one node process, built from collaborators that each own one part.

Rules of the shell:
1. Only here is there a clock: every core call gets ``now`` from the loop's monotonic time.
2. Effects returned by a core are carried out in order, at once (a vote is persisted
   before it is sent).
3. Nothing a peer sends can raise out of a handler: bad frames are dropped and counted by
   reason, and a core's refusal is logged, never fatal.

The parts, each built here with what it needs: ``ControlPlane`` (membership and election,
``control_plane.py``), ``DataPlane`` (ingest, engine, ticks, fusions: ``data_plane.py``),
``ControlCommands`` (the CLI's commands), ``Recorder`` (background writes to SQLite), the
``Transport`` with its ``Outbox`` and ``Traffic`` counters. The node routes each decoded
message to its plane and exposes the API plugin hooks receive as ``node`` (hookspecs.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from collections.abc import Awaitable
from typing import Any

import zmq

from corec_node import __version__, log
from corec_node.config import Config
from corec_node.engine.host import EngineHost
from corec_node.plugins import PluginManager
from corec_node.shell.commands import ControlCommands, Identity
from corec_node.shell.control import ControlServer
from corec_node.shell.control_plane import CONTROL_TYPES, ControlPlane
from corec_node.shell.curve import CurveConfig
from corec_node.shell.data_plane import DataPlane
from corec_node.shell.datadir import load_vote, lock_data_dir
from corec_node.shell.discovery import Discovery
from corec_node.shell.metrics import Metrics, MetricsServer, TickHistogram
from corec_node.shell.recorder import Recorder
from corec_node.shell.systemd import Notifier
from corec_node.shell.traffic import Outbox, Traffic
from corec_node.shell.transport import Transport
from corec_node.storage import LocalStore, SchemaTooNewError
from corec_node.wire import SeqEvent, SequenceTracker, WireError, decode_message
from corec_node.wire.messages import Alert, MsgType
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
STATUS_PERIOD = 5.0  # seconds between two STATUS= lines to systemd
PRUNE_PERIOD = 60.0  # local history older than storage.history_retention goes once a minute
PG_CONNECT_WAIT = 5.0  # at start, wait this long for PostgreSQL; after that the outbox waits for it
ALERT_TEXT_MAX = 4096  # bytes of alert text published; longer texts are cut


class Node:
    """One CoreC node process. ``await Node(config).run()`` returns the exit code.

    Plugin hooks receive it as ``node``: ``name``, ``config``, ``data_dir``,
    ``raise_alert`` and ``plugin_store`` are its API (hookspecs.py)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.name = config.name
        self.data_dir = config.data_dir
        cluster = config.node.cluster
        self.identity = Identity(config.name, config.advertise, config.pub_advertise, cluster, time.time())
        sec = config.security
        # SecurityError (names the key file) propagates: cmd_run turns it into exit 2
        curve = CurveConfig.load(sec.secret_key_file, sec.public_keys_dir) if sec.enabled else None
        self.transport = Transport(max_message_bytes=config.mesh.max_message_bytes, security=curve)
        self.traffic = Traffic()
        self.outbox = Outbox(self.transport, self.traffic, name=self.name, cluster=cluster)
        self.recorder = Recorder()
        self.notifier = Notifier.from_env(unset=True)
        self.tick_time = TickHistogram()
        self.sequences = SequenceTracker()
        self.exit_code = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._stop = asyncio.Event()
        self._status_at = float("-inf")
        self._next_engine_tick = 0.0
        self._next_prune = 0.0
        self._plugin_stores: dict[str, asyncio.Future[Any]] = {}
        self.syncer: Any = None  # storage.Syncer when a PostgreSQL DSN is set (loaded on demand)
        self.metrics_server: MetricsServer | None = None
        self.discovery: Discovery | None = None
        self.control_server: ControlServer | None = None
        # loads, validates and configures every plugin now: a PluginError is a ConfigError (exit 2)
        self.plugins = PluginManager(config, on_alert=self._publish_alert).load()
        self.control = ControlPlane(
            name=self.name, addr=config.advertise, pub=config.pub_advertise, profile=config.mesh.profile,
            max_voters=config.mesh.max_voters, data_dir=self.data_dir, transport=self.transport, outbox=self.outbox, recorder=self.recorder,
            plugins=self.plugins, host=self, stop=self.request_stop, clock=self.now)
        self.data = DataPlane(
            name=self.name, engine_config=config.engine, outbox=self.outbox, traffic=self.traffic,
            recorder=self.recorder, plugins=self.plugins, host=self, raise_alert=self.raise_alert,
            publish_digest=self._publish_digest)
        self.control.listener = self.data
        self.control.placement_digest = self.data.engine.placement_digest()
        self.commands = ControlCommands(
            identity=self.identity, control=self.control, data=self.data, traffic=self.traffic,
            transport=self.transport, plugins=self.plugins, storage_status=self.storage_status,
            now=self.now, stop=self.request_stop)

    @property
    def engine(self) -> EngineHost:
        return self.data.engine

    def _publish_digest(self, digest: str) -> None:
        self.control.placement_digest = digest

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
        self.data.bind(self.now)
        lock_fd = lock_data_dir(self.data_dir)
        try:
            return await self._run()
        finally:
            os.close(lock_fd)

    async def _open_storage(self) -> LocalStore | None:
        """SQLite always; PostgreSQL sync when a DSN is set. None: refuse to start."""
        cfg = self.config
        try:
            local = await LocalStore.for_config(cfg)
        except SchemaTooNewError as exc:
            log.event("storage_refused", logging.ERROR, error=str(exc))
            return None
        self.data.engine.tick_no = await local.last_tick(self.name) or 0  # ticks keep rising across restarts
        if cfg.storage.postgres_dsn:
            from corec_node.storage import Syncer

            self.syncer = Syncer.from_config(local, cfg)
            try:
                await asyncio.wait_for(self.syncer.connect(), PG_CONNECT_WAIT)
            except SchemaTooNewError as exc:
                log.event("storage_refused", logging.ERROR, error=str(exc))
                await local.close()
                return None
            except Exception as exc:  # unreachable now: the outbox keeps everything until it answers
                log.event("postgres_unreachable", logging.WARNING, error=str(exc) or type(exc).__name__,
                          detail="keeping block state in the SQLite outbox until PostgreSQL answers")
            self.syncer.start()
        self.recorder.store = local
        return local

    async def _close_storage(self) -> None:
        await self.recorder.drain()
        if self.syncer is not None:
            await self.syncer.stop(flush=True, timeout=2.0)
        if self.recorder.store is not None:
            await self.recorder.store.close()

    async def _run(self) -> int:
        cfg = self.config
        term, voted_for = load_vote(self.data_dir)
        local = await self._open_storage()
        if local is None:
            return 1
        try:
            self.transport.bind(cfg.node.listen, f"{cfg.pub_listen[0]}:{cfg.pub_listen[1]}")
        except zmq.ZMQError as exc:
            log.event("bind_failed", logging.ERROR, listen=cfg.node.listen, error=str(exc))
            await self.transport.close()
            await self._close_storage()
            return 1
        self.transport.subscribe([TOPIC_MEMBERSHIP, TOPIC_NUCLEUS, TOPIC_AGGREGATES, TOPIC_ALERTS,
                                  TOPIC_ENTITIES_ALL, TOPIC_FLOW])
        self._next_engine_tick = self.now() + cfg.engine.tick_interval
        if cfg.metrics.listen:
            metrics = Metrics(self.metrics_snapshot, name=self.name, cluster=self.identity.cluster, version=__version__)
            try:
                self.metrics_server = await metrics.start_http(cfg.metrics.listen)
            except OSError as exc:
                log.event("metrics_bind_failed", logging.ERROR, listen=cfg.metrics.listen, error=str(exc))
                await self.transport.close()
                await self._close_storage()
                return 1
        self.control_server = ControlServer(cfg.control_path, self.commands.table())
        await self.control_server.start()
        snapshot = await local.load_members()
        self.transport.watch_peers(self.control.peer_hint)
        self.control.start(snapshot, cfg.mesh.join, term=term, voted_for=voted_for, now=self.now())
        self.transport.start(self._on_direct, self._on_broadcast)
        await self.plugins.startup(self)
        if not cfg.security.enabled:
            log.event("security_off", logging.WARNING, detail="CurveZMQ is off: anyone who reaches these ports can join and read")
        if cfg.mesh.discovery:
            self.discovery = Discovery(cluster=self.identity.cluster, name=self.name, addr=self.identity.addr,
                                       target=(cfg.mesh.discovery_addr, cfg.mesh.discovery_port),
                                       on_peer=lambda name, addr: self.control.discovered(name, addr, self.now()))
            try:
                await self.discovery.start()
            except OSError as exc:
                log.event("discovery_failed", logging.WARNING, port=cfg.mesh.discovery_port, error=str(exc))
                self.discovery = None
        log.event("ready", listen=cfg.node.listen, pub=self.identity.pub, advertise=self.identity.addr,
                  cluster=self.identity.cluster, version=__version__, data_dir=str(self.data_dir),
                  rejoin=len(snapshot), join=",".join(cfg.mesh.join))
        self.notifier.ready(self.status_line())
        tasks = [asyncio.create_task(self._tick_loop()), asyncio.create_task(self.data.worker())]
        try:
            await self._stop.wait()
        finally:
            await self._shutdown(tasks)
        return self.exit_code

    async def _shutdown(self, tasks: list[asyncio.Task[None]]) -> None:
        self.notifier.stopping()
        for task in tasks:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        self.control.save_snapshot(self.now())
        await self.plugins.shutdown(self)
        for opening in self._plugin_stores.values():
            try:
                await (await opening).close()
            except Exception as exc:
                log.event("plugin_store_close_failed", logging.WARNING, error=str(exc))
        if self.discovery is not None:
            await self.discovery.close()
        if self.control_server is not None:
            await self.control_server.close()
        if self.metrics_server is not None:
            await self.metrics_server.close()
        await self.transport.close()
        await self._close_storage()
        self.notifier.close()
        log.event("stopped", code=self.exit_code)

    async def _tick_loop(self) -> None:
        expected = self.now() + TICK_PERIOD
        while True:
            await asyncio.sleep(max(0.0, expected - self.now()))
            now = self.now()
            lag = now - expected
            if lag > STALL_REPORT:
                self.control.note_stall(lag, now)
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
        self.control.tick(now)
        if now >= self._next_engine_tick:
            self._next_engine_tick = max(self._next_engine_tick + self.config.engine.tick_interval, now)
            self.data.tick()
        retention = self.config.storage.history_retention
        if now >= self._next_prune and retention > 0:
            self._next_prune = now + PRUNE_PERIOD
            self.recorder.prune(time.time() - retention)

    # -- inbound: decode, count, route to a plane -------------------------------------------

    def _decode(self, where: str, frames: list[bytes]) -> Any:
        try:
            return decode_message(frames, cluster=self.identity.cluster, max_payload=self.config.mesh.max_message_bytes)
        except WireError as exc:
            self.traffic.reject(where, exc)
            return None

    def _on_direct(self, frames: list[bytes]) -> Awaitable[None] | None:
        decoded = self._decode("direct", frames)
        if decoded is None:
            return None
        topic, env, payload = decoded
        self.traffic.count_in(env.type.name.lower(), topic, frames)
        if env.type == MsgType.ENTITY_BATCH:
            return self.data.batch(env, payload, "direct")
        if topic != TOPIC_DIRECT:
            self.traffic.reject("direct", WireError("topic", f"{topic!r} on the direct socket"))
        elif env.type in CONTROL_TYPES:
            self.control.handle(env.sender, env.msg, self.now())
        return None

    def _on_broadcast(self, frames: list[bytes]) -> None:
        decoded = self._decode("broadcast", frames)
        if decoded is None:
            return
        topic, env, payload = decoded
        if env.sender == self.name:
            return
        self.traffic.count_in(env.type.name.lower(), topic, frames)
        verdict = self.sequences.observe(env.sender, topic, env.seq)
        if verdict is SeqEvent.DUPLICATE:
            return
        match env.type:
            case MsgType.ENTITY_BATCH:
                self.data.batch(env, payload, "broadcast")
            case MsgType.AGGREGATES:
                self.data.engine.observe_rows(env.sender, env.msg.rows)
            case MsgType.ALERT:
                log.event("peer_alert", logging.INFO, sender=env.sender, kind=env.msg.kind, text=env.msg.text)
            case MsgType.FUSION_PLAN:
                self.data.fusion_plan(env.sender, env.msg)
            case MsgType.FLOW:
                self.data.peer_flow(env.sender, env.msg.hold_ms)
            case _ if env.type in CONTROL_TYPES:
                gap = verdict is SeqEvent.GAP and topic == TOPIC_MEMBERSHIP
                self.control.handle(env.sender, env.msg, self.now(), gap)

    # -- operations: metrics and systemd status ----------------------------------------

    def status_line(self) -> str:
        core = self.control.core
        alive = core.membership.counts().get("alive", 0) if core is not None else 0
        return f"members {alive} alive, leader {self.control.leader or '(none)'} (term {self.control.term})"

    def storage_status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"sqlite": str(self.config.sqlite_path), "postgres": None,
                               "outbox": 0, "sync_lag": 0.0, "errors": self.recorder.errors}
        if self.syncer is not None:
            st = self.syncer.status()
            out.update(postgres=st["state"], connected=st["connected"], outbox=st["outbox"],
                       sync_lag=round(st["lag_seconds"], 3), last_error=st["last_error"],
                       drained=st["drained_total"], dropped=st["dropped_total"])
        return out

    def metrics_snapshot(self) -> dict[str, Any]:
        """Read at scrape time on the loop (metrics.py's contract); live Counters, no copies."""
        rejected = dict(self.traffic.rejected)
        if self.transport.auth is not None:
            rejected["curve_denied"] = self.transport.auth.denied
        core = self.control.core
        queue = self.data.queue() if self.loop is not None else None
        return {
            "members": core.membership.counts() if core is not None else {},
            "term": self.control.term,
            "elections": self.control.elections_started,
            "messages": {"in": self.traffic.topic_in, "out": self.traffic.topic_out},
            "message_bytes": {"in": self.traffic.bytes_in, "out": self.traffic.bytes_out},
            "rejected": rejected,
            "tick": self.tick_time,
            "entities": self.data.engine.store.count(),
            "blocks": len(self.data.engine.store.block_ids()),
            "ingest_queue_bytes": queue.bytes if queue is not None else 0,
            "flow_requests": self.data.flow.requests,
            "flow_holds": self.data.flow.holds,
            **({"sync_lag": self.syncer.status()["lag_seconds"], "outbox_rows": self.syncer.status()["outbox"]}
               if self.syncer is not None else {}),
        }

    # -- plugins: the API hooks may call on ``node`` ----------------------------------------

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
        text = alert["text"] if len(alert["text"].encode()) <= ALERT_TEXT_MAX else alert["text"][:1000] + "..."
        try:  # published for every node and subscriber (topic alr)
            self.outbox.publish(Alert(kind=alert["kind"], text=text))
        except (ValueError, TypeError):  # a kind that is not a valid name on the wire
            pass
        details = {k: v for k, v in alert.items() if k not in ("kind", "text", "severity", "block")}
        self.recorder.alert(alert["kind"], alert["text"], severity=alert["severity"],
                            block=alert.get("block"), details=details)
        self.plugins.spawn(self.plugins.alert(self, alert))

    async def plugin_store(self, name: str) -> Any:
        """The plugin's own store (opened and migrated once, with its corec_storage_migrations)."""
        opening = self._plugin_stores.get(name)
        if opening is None:
            from corec_node.storage import PluginStore

            opening = self._plugin_stores[name] = asyncio.ensure_future(PluginStore.for_config(
                name, self.config, sqlite_migrations=self.plugins.migrations().get(name, ())))
        return await opening


def install_signal_handlers(node: Node) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, node.request_stop, 0)
