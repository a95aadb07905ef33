"""The composition root: one node process, built from collaborators that each own one part.

Rules of the shell:
1. Only here is there a clock: every core call gets ``now`` from the loop's monotonic time.
2. Effects returned by a core are carried out in order, at once (a vote is persisted
   before it is sent).
3. Nothing a peer sends can raise out of a handler: bad frames are dropped and counted by
   reason, and a core's refusal is logged, never fatal.

The parts, each built here with what it needs: the mesh process (``mesh_process.py``: the
sockets and the control plane, in a child process the data plane cannot stall), reached
through ``MeshHandle``; ``DataPlane`` (ingest, engine, ticks, fusions: ``data_plane.py``);
``ControlCommands`` (the CLI's commands); ``Recorder`` (background writes to SQLite); an
``MeshOutbox`` that sends through the mesh process, and ``Traffic`` counters. The node routes
each data message the mesh process forwards to the data plane, carries out what the control
plane reports (``NodeEvents``), and exposes the API plugin hooks receive as ``node``
(hookspecs.py).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import zmq

from corec_node import __version__, log
from corec_node.config import Config, ConfigError, console_addr, genome_genes, join_addr
from corec_node.engine.audit import Auditor
from corec_node.engine.host import EngineHost
from corec_node.plugins import PluginManager
from corec_node.shell.alert_sinks import AlertSinks
from corec_node.shell.alerts import Episodes, facts_of, new_uid, remote_alert
from corec_node.shell.commands import ControlCommands, Identity
from corec_node.shell.console import ConsoleServer
from corec_node.shell.console_feed import ConsoleFeed
from corec_node.shell.control import ControlServer
from corec_node.shell.control_plane import ClusterView
from corec_node.shell.curve import CurveConfig, reload_keys
from corec_node.shell.data_plane import DataPlane
from corec_node.shell.datacheck import open_store, start_check
from corec_node.shell.datadir import lock_data_dir
from corec_node.shell.drift import settings_of
from corec_node.shell.emitter import Emitter
from corec_node.shell.memory import MemoryGauge, release_free_memory
from corec_node.shell.mesh_process import IDLE_LINK_CHECK, MeshHandle, MeshOutbox
from corec_node.shell.metrics import Metrics, MetricsServer, TickHistogram
from corec_node.shell.recorder import Recorder
from corec_node.shell.settings_watch import SettingsWatch
from corec_node.shell.systemd import Notifier
from corec_node.shell.traffic import Outbox, Traffic
from corec_node.shell.transport import Transport
from corec_node.storage import LocalStore, SchemaTooNewError
from corec_node.wire import WireError, decode_message, encode_message, topic_for
from corec_node.wire.messages import Alert, MemberState, MsgType
from corec_node.wire.topics import TOPIC_DIRECT

TICK_PERIOD = 0.1  # the node process's timers (memory guard, watchdog, the data plane's beat) while data flows
IDLE_TICK_PERIOD = 0.5  # and while none does: a wake costs ~0.3 ms, 10 a second were most of an idle node process's
# CPU; engine ticks keep their own time (the loop wakes for each), a first batch waits at most this for the memory guard
TICK_SLACK = 0.5  # after an engine tick that overran its interval, the loop is free this share of its length
MIN_TICK_GAP = 0.01  # never sooner: a tick that failed before the engine's next tick moved on must not spin the loop
STATUS_PERIOD = 5.0  # seconds between two STATUS= lines to systemd
BEAT_PERIOD = 1.0  # the data plane's beat to the mesh process: 8 a stall bound (ENGINE_STALL_BOUND), and
# each one wakes both processes (at 10 a second it was a tenth of an idle mesh process's CPU)
IDLE_DATA_LINK_AFTER = 60.0  # over the overlay: a data link nothing was sent on for this long is closed
PRUNE_PERIOD = 60.0  # local history older than storage.history_retention goes once a minute
TRIM_PERIOD = 5.0  # after ingest, freed heap goes back to the system at most this often
STOP_SIGNAL_GRACE = 2.0  # a mesh process that left in order: wait this long for the node's own stop
PG_CONNECT_WAIT = 5.0  # at start, wait this long for PostgreSQL; after that the outbox waits for it
ALERT_TEXT_MAX = 4096  # bytes of alert text published; longer texts are cut


def next_engine_tick(due: float, interval: float, started: float, took: float) -> float:
    """When the next engine tick is due, after one due at ``due`` that started at ``started``
    and ran ``took`` s: an interval after ``due`` while ticks keep time; after one that ran
    late or long, once the loop has been free ``TICK_SLACK`` of its length, so commands,
    replies and ingest get their turn however far behind the ticks are."""
    return max(due + interval, started + took * (1 + TICK_SLACK))


class PortUnusable(Exception):
    """A port of the config cannot be bound (taken, or not an address of this host): one
    line naming the key and the cause, exit 2."""


class Node:
    """One CoreC node process. ``await Node(config).run()`` returns the exit code.

    Plugin hooks receive it as ``node``: ``name``, ``config``, ``data_dir``,
    ``raise_alert``, ``emit_entities`` and ``plugin_store`` are its API (hookspecs.py)."""

    def __init__(self, config: Config) -> None:
        self.settings_watch = SettingsWatch(config, alert=self.raise_alert)
        self.config = config = self.settings_watch.at_start()  # the cluster's committed settings in place
        self.name = config.name
        self.data_dir = config.data_dir
        cluster = config.node.cluster
        self.identity = Identity(config.name, config.advertise, config.pub_advertise, cluster, time.time())
        sec = config.security
        # SecurityError (names the key file) here, before the mesh process starts: exit 2
        curve = CurveConfig.load(sec.secret_key_file, sec.public_keys_dir) if sec.enabled else None
        self.mesh = MeshHandle(config, self.identity, NodeEvents(self))
        self.memory = MemoryGauge(config.engine.memory_limit_mb,
                                  lambda: [os.getpid(), *([self.mesh.pid] if self.mesh.pid else [])])
        # the data socket: producers' batches and the parts members forward (SPEC 9.6), apart
        # from the mesh process's probes, votes and heartbeats
        self.datasock = Transport(max_message_bytes=config.mesh.max_message_bytes,
                                  security=curve, allow=sec.allow)
        self.traffic = Traffic()  # what the data plane sends; the mesh process counts the wire
        self.outbox = MeshOutbox(self.mesh, self.traffic, name=self.name, cluster=cluster)
        self.recorder = Recorder()
        self.notifier = Notifier.from_env(unset=True)
        self.loop_time = TickHistogram()  # one pass of _tick_loop
        self.engine_tick_time = TickHistogram()  # one DataPlane.tick, inside that pass
        self.alerts: collections.Counter[str] = collections.Counter()  # raised by this node, by kind
        self.alert_episodes = Episodes()  # as nucleus: which alerts open an episode (shell/alerts.py)
        self.alert_sinks = AlertSinks(config.alerts.webhook, config.alerts.alertmanager, cluster=cluster,
                                      node=self.name, timeout=config.alerts.timeout)
        self.exit_code = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._stop = asyncio.Event()
        self._status_at = float("-inf")
        self._beat_at = float("-inf")
        self._mesh_hung = False
        self._next_trim = 0.0
        self._trimmed_at = 0  # engine.ingested at the last trim
        self._next_engine_tick = 0.0
        self._next_prune = 0.0
        self._next_idle_links = 0.0  # over the overlay: when the data socket's idle links are looked for next
        self._plugin_stores: dict[str, asyncio.Future[Any]] = {}
        self._preload: asyncio.Future[None] | None = None  # the audit's library, loading
        self.syncer: Any = None  # storage.Syncer when a PostgreSQL DSN is set (loaded on demand)
        self.metrics_server: MetricsServer | None = None
        self.control_server: ControlServer | None = None
        self.console_server: ConsoleServer | None = None
        # loads, validates and configures every plugin now: a PluginError is a ConfigError (exit 2)
        self.plugins = PluginManager(config, on_alert=self._publish_alert).load()
        self.mesh.settings = settings_of(config, self.plugins.info())  # announced for corec-node drift
        self.data = DataPlane(
            name=self.name, engine_config=config.engine, outbox=self.outbox, traffic=self.traffic,
            recorder=self.recorder, plugins=self.plugins, host=self, raise_alert=self.raise_alert,
            publish_digest=self._publish_digest)
        self.data.data_send = self._data_send
        self.data.intelligence.send = self.data.lane_send  # intelligent channels' weights to new holders
        # plugins' emitted entities, taken as a producer's batches (NodeFacade.emit)
        self.emitter = Emitter(name=self.name, cluster=cluster, take=self.data.batch, records=self.plugins.records.get)
        try:  # plugins' kernels, and the genes each channel's first genomes carry
            self.data.engine.use_kernels(self.plugins.kernels(), genome_genes(config.engine.genomes))
        except ValueError as exc:
            raise ConfigError(config.source, "engine.genomes", f"kernels this node has ({exc})",
                              list(config.engine.genomes)) from None
        self.data_outbox = Outbox(self.datasock, self.traffic, name=self.name, cluster=cluster)
        self.commands = ControlCommands(
            identity=self.identity, mesh=self.mesh, data=self.data, traffic=self.traffic,
            plugins=self.plugins, storage_status=self.storage_status, configs=lambda: (self.settings_watch.file, self.config))

    @property
    def engine(self) -> EngineHost:
        return self.data.engine

    def _publish_digest(self, digest: str) -> None:
        self.mesh.operation("digest", digest)

    # -- life -----------------------------------------------------------------------

    def now(self) -> float:
        assert self.loop is not None
        return self.loop.time()

    def request_stop(self, code: int = 0) -> None:
        self.exit_code = self.exit_code or code
        self._stop.set()

    async def run(self) -> int:
        self.loop = asyncio.get_running_loop()
        self.loop.set_exception_handler(log.loop_exception)  # one line each, never a raw traceback
        self._loop_thread = threading.get_ident()
        self.data.bind(self.now)
        self.emitter.bind(self.loop)
        lock_fd = lock_data_dir(self.data_dir)
        try:
            return await self._run()
        finally:
            os.close(lock_fd)

    async def _open_storage(self) -> LocalStore | None:
        """SQLite always; PostgreSQL sync when a DSN is set. None: refuse to start."""
        cfg = self.config
        try:
            local = await open_store(cfg)  # DataDirDamaged: cli exits 65
        except SchemaTooNewError as exc:
            log.event("storage_refused", logging.ERROR, error=str(exc))
            return None
        self.data.engine.tick_no = await local.last_tick(self.name) or 0  # ticks keep rising across restarts
        if cfg.storage.postgres_dsn:
            from corec_node.storage import Syncer

            self.syncer = Syncer.from_config(local, cfg, on_epoch=self.data.engine.raise_epoch)
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
        self.data.save_genomes()
        await self.data.intelligence.close()  # the torch forecasters' weights saved, their child reaped
        await self.recorder.drain()
        if self.syncer is not None:
            await self.syncer.stop(flush=True, timeout=2.0)
        if self.recorder.store is not None:
            await self.recorder.store.close()

    async def _run(self) -> int:
        cfg = self.config
        term, voted_for = await asyncio.to_thread(start_check, cfg)  # DataDirDamaged: cli exits 65
        local = await self._open_storage()
        if local is None:
            return 1
        snapshot = await local.load_members()
        self.data.fresh = bool(snapshot)  # a member of a cluster before: what it held is gone (learning.py)
        self.data.restore_genomes(await local.load_genomes(), await local.genome_save_times())  # what blocks learned survives a restart
        await self.data.intelligence.restore()  # and the torch forecasters' weights, if any channel is intelligent
        # a restored directory does not abstain (election rule 15): in a cluster of two voters
        # the survivor needs its vote to elect anyone, and so to re-add it
        if not await self.mesh.start(snapshot, term, voted_for, self._on_direct, self._on_broadcast):
            log.event("mesh_start_failed", logging.ERROR, error=self.mesh.failure)
            await self._close_storage()
            if self.mesh.unbindable:
                raise PortUnusable(self.mesh.failure or "cannot bind the mesh ports")
            return 1
        data_listen = join_addr(*cfg.data_listen)
        try:
            self.datasock.bind_router(data_listen)
        except zmq.ZMQError as exc:
            log.event("bind_failed", logging.ERROR, listen=data_listen, error=str(exc), socket="data")
            await self.mesh.stop()
            await self.datasock.close()
            await self._close_storage()
            raise PortUnusable(f"cannot bind {data_listen} (mesh.data_listen): {exc.strerror}") from None
        self.datasock.start(self._on_data, None)
        if cfg.engine.audit:  # the audit's library, loaded now off the loop: RSS is flat from here on
            self._preload = asyncio.get_running_loop().run_in_executor(None, Auditor.preload)
        self._publish_digest(self.data.engine.placement_digest())
        self._next_engine_tick = self.now() + cfg.engine.tick_interval
        if cfg.metrics.listen:
            metrics = Metrics(self.metrics_snapshot, name=self.name, cluster=self.identity.cluster, version=__version__)
            try:
                self.metrics_server = await metrics.start_http(cfg.metrics.listen)
            except OSError as exc:
                log.event("metrics_bind_failed", logging.ERROR, listen=cfg.metrics.listen, error=str(exc))
                await self.mesh.stop()
                await self._close_storage()
                raise PortUnusable(f"cannot bind {cfg.metrics.listen} (metrics.listen): {exc.strerror}") from None
        if cfg.console.listen:
            await self._start_console(cfg.console.listen)
        self.control_server = ControlServer(cfg.control_path, self.commands.table())
        await self.control_server.start()
        await self.plugins.startup(self)
        self.settings_watch.said_at_start()
        if not cfg.security.enabled:
            log.event("security_off", logging.WARNING, detail="CurveZMQ is off: anyone who reaches these ports can join and read")
        log.event("ready", listen=cfg.node.listen, pub=self.identity.pub, advertise=self.identity.addr,
                  cluster=self.identity.cluster, version=__version__, data_dir=str(self.data_dir),
                  rejoin=len(snapshot), join=",".join(cfg.mesh.join), mesh_pid=self.mesh.pid)
        self.notifier.ready(self.status_line())
        tasks = [asyncio.create_task(self._tick_loop()), asyncio.create_task(self.data.worker())]
        try:
            await self._stop.wait()
        finally:
            await self._shutdown(tasks)
        return self.exit_code

    async def _start_console(self, listen: str) -> None:
        """The web console (console.py), answered by the CLI's own command handlers."""
        host, port = console_addr(listen)
        feed = ConsoleFeed(self.commands.table(), lambda: self.recorder.store,
                           extra=lambda: self.console_server.stats() if self.console_server else {})
        self.console_server = ConsoleServer(feed, host, port)
        try:
            await self.console_server.start()
        except OSError as exc:
            self.console_server = None
            log.event("console_bind_failed", logging.ERROR, listen=listen, error=str(exc))
            await self.mesh.stop()
            await self.datasock.close()
            if self.metrics_server is not None:
                await self.metrics_server.close()
            await self._close_storage()
            # asyncio's strerror repeats the address; a name that does not resolve has a negative errno
            cause = os.strerror(exc.errno) if exc.errno and exc.errno > 0 else exc.strerror or str(exc)
            raise PortUnusable(f"cannot bind {join_addr(host, port)} (console.listen): {cause}") from None

    async def _shutdown(self, tasks: list[asyncio.Task[None]]) -> None:
        self.notifier.stopping()
        if self.console_server is not None:  # first: its viewers ask the mesh process
            await self.console_server.close()
        for task in tasks:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        await self.mesh.stop()  # it sends its member snapshot on the way out
        await self.datasock.close()
        await self.plugins.shutdown(self)
        await self.alert_sinks.close()
        for opening in self._plugin_stores.values():
            try:
                await (await opening).close()
            except Exception as exc:
                log.event("plugin_store_close_failed", logging.WARNING, error=str(exc))
        if self.control_server is not None:
            await self.control_server.close()
        if self.metrics_server is not None:
            await self.metrics_server.close()
        await self._close_storage()
        self.notifier.close()
        log.event("stopped", code=self.exit_code)

    async def _stopping_with_mesh(self) -> bool:
        """Whether a mesh process that left in order (exit 0) left because the node stops
        too: ``systemctl stop`` sends SIGTERM to both processes at once, and the mesh
        process may be gone before the node process's own signal is handled."""
        if self.mesh.exit_code != 0:
            return False
        try:
            await asyncio.wait_for(self._stop.wait(), STOP_SIGNAL_GRACE)
        except TimeoutError:
            return False
        return True

    async def _tick_loop(self) -> None:
        """The node process's timers: every TICK_PERIOD while data flows, else every
        IDLE_TICK_PERIOD, and at each engine tick's time."""
        expected = self.now() + TICK_PERIOD
        ingested = -1
        while True:
            await asyncio.sleep(max(0.0, expected - self.now()))
            now = self.now()
            flowing = self.data.engine.ingested != ingested or self.data.queue().qsize() > 0
            ingested = self.data.engine.ingested
            step = TICK_PERIOD if flowing else IDLE_TICK_PERIOD
            watchdog = self.notifier.watchdog_interval()
            if watchdog is not None:  # a short WatchdogSec: ping on time all the same
                step = max(TICK_PERIOD, min(step, watchdog / 2))
            if not self.mesh.alive:
                if await self._stopping_with_mesh():
                    return
                log.event("mesh_process_exited", logging.ERROR, code=self.mesh.exit_code,
                          detail="the node's sockets and control plane are gone: stopping")
                self.request_stop(1)
                return
            if now - self._beat_at >= BEAT_PERIOD:
                self._beat_at = now
                self.mesh.operation("beat")  # the data plane is alive (mesh core rule 14)
            hung = self.mesh.hung()
            if (hung is not None) != self._mesh_hung:
                self._mesh_hung = hung is not None
                if hung is not None:
                    log.event("mesh_process_stalled", logging.ERROR, detail=hung + ": watchdog pings stop")
                else:
                    log.event("mesh_process_resumed", logging.WARNING)
            started = time.perf_counter()
            try:
                self._tick(now)
            except Exception:  # a bug in a core must not silently stop the timers
                logging.getLogger(log.LOGGER_NAME).exception("tick_failed")
            self.loop_time.observe(time.perf_counter() - started)
            if not self._mesh_hung:  # from the loop itself: a hung loop, or mesh process, stops the pings
                self.notifier.watchdog_due()
            if now - self._status_at >= STATUS_PERIOD:
                self._status_at = now
                self.notifier.status(self.status_line())
            expected = max(min(expected + step, self._next_engine_tick), now + MIN_TICK_GAP)

    def _trim(self, now: float) -> None:
        """Once ingest has gone quiet, give the heap that receive buffers and batches freed
        back to the system (glibc keeps it otherwise: RSS would stay at a burst's peak)."""
        if now < self._next_trim:
            return
        self._next_trim = now + TRIM_PERIOD
        ingested = self.data.engine.ingested
        queue = self.data.queue()
        if ingested == self._trimmed_at or queue.qsize():
            return
        self._trimmed_at = ingested
        release_free_memory()

    def _tick(self, now: float) -> None:
        self._trim(now)
        self.data.memory_full(self.memory.full(), self.memory)
        if now >= self._next_engine_tick:
            started = time.perf_counter()
            try:
                self.data.tick()
            finally:  # a tick that raised is not run again at once either
                took = time.perf_counter() - started
                self.engine_tick_time.observe(took)
                self._next_engine_tick = next_engine_tick(self._next_engine_tick, self.config.engine.tick_interval,
                                                          now, took)
        if self.config.mesh.overlay and now >= self._next_idle_links:
            self._next_idle_links = now + IDLE_LINK_CHECK
            self._close_idle_data_links()
        retention = self.config.storage.history_retention
        if now >= self._next_prune and retention > 0:
            self._next_prune = now + PRUNE_PERIOD
            self.recorder.prune(time.time() - retention)

    def _close_idle_data_links(self) -> None:
        """Over the overlay, close the data socket's links to members nothing was sent to for
        IDLE_DATA_LINK_AFTER s (longer than the mesh's: a handoff's last chunks may still be
        queued on a slow link): a join has every member tell the learner its copies are done, and
        each of those links would otherwise stay open for good, so a node's connections
        would grow with the cluster. The next message dials again."""
        closed = self.datasock.close_idle(IDLE_DATA_LINK_AFTER, ())
        if closed:
            log.event("idle_data_links_closed", logging.DEBUG, closed=closed, open=len(self.datasock.dealers))

    # -- inbound: data messages the mesh process forwards -------------------------------------

    def _decode(self, where: str, frames: list[Any]) -> Any:
        try:
            return decode_message(frames, cluster=self.identity.cluster, max_payload=self.config.mesh.max_message_bytes)
        except WireError as exc:
            self.traffic.reject(where, exc)
            return None

    def _on_direct(self, frames: list[Any]) -> Awaitable[None] | None:
        """``[producer identity, *message frames]``: counted and checked by the mesh process."""
        decoded = self._decode("direct", frames[1:])
        if decoded is None:
            return None
        _topic, env, payload = decoded
        identity = bytes(frames[0])
        if env.type == MsgType.ENTITY_BATCH:
            self.data.batch(env, payload, "direct", lambda msg: self._answer(self.outbox, identity, msg))
        elif env.type == MsgType.PLACEMENT_REQUEST:
            self.data.placement_request(lambda msg: self._answer(self.outbox, identity, msg))
        elif env.type == MsgType.SEQUENCE_HANDOFF:
            self.data.sequence_handoff(env.sender, env.msg)
        return None

    def _on_data(self, frames: list[Any], identity: bytes) -> None:
        """The data socket: producers' batches and map requests, members' forwarded parts
        and their answers to ours (SPEC 9.6)."""
        decoded = self._decode("data", frames)
        if decoded is None:
            return
        topic, env, payload = decoded
        self.traffic.count_in(env.type.name.lower(), topic, frames)
        match env.type:
            case MsgType.ENTITY_BATCH:
                if env.msg.replica:  # an owner's writes or copies for us as a holder (SPEC 9.7)
                    self.data.replica_batch(env, payload, self._holder_answer(env.sender))
                    return
                member = self.data.view.data.get(env.sender) if env.msg.hops > 0 else None
                if member is not None:  # a part a member forwarded: answered to its data socket
                    self.data.batch(env, payload, "direct", lambda msg: self._data_send(member, msg, None))
                else:
                    self.data.batch(env, payload, "direct", lambda msg: self._answer(self.data_outbox, identity, msg))
            case MsgType.BATCH_REPLY:
                self.data.holder_answered(env.sender, env.msg)
            case MsgType.SEQUENCE_HANDOFF:
                self.data.sequence_handoff(env.sender, env.msg)
            case MsgType.COPY_DONE:
                self.data.copy_done(env)
            case MsgType.READY:
                self.data.ready(env.sender, env.msg)
            case MsgType.NANO_WEIGHTS:
                self.data.intelligence.received(env.sender, env.msg, payload, self.data.view.members)
            case MsgType.PLACEMENT_REQUEST:
                self.data.placement_request(lambda msg: self._answer(self.data_outbox, identity, msg))
            case _:
                self.traffic.reject("data", WireError("type", f"{env.type.name} on the data socket"))

    def _holder_answer(self, owner: str) -> Callable[[Any], None]:
        """How we answer an owner's write: on its data socket. Its records are kept even when
        our view does not know that socket yet (a copy must not be lost to a view that lags
        the owner's); the answer is then not sent, and the owner counts it not replicated."""
        def answer(msg: Any) -> None:
            addr = self.data.view.data.get(owner)
            if addr is None:
                self.traffic.rejected["replica_unanswered"] += 1
            else:
                self._data_send(addr, msg, None)
        return answer

    @staticmethod
    def _answer(outbox: Outbox, identity: bytes, msg: Any) -> None:
        try:
            outbox.reply(identity, msg)  # a lost answer: the producer counts the batch unconfirmed
        except ValueError as exc:  # not encodable: a bug, never the producer's fault
            log.event("answer_failed", logging.WARNING, error=str(exc))

    def _data_send(self, addr: str, msg: Any, payload: Any) -> int | None:
        """A message to a member's data socket; the seq it went out under, None if dropped."""
        topic = topic_for(msg)
        seq = self.data_outbox.counters.next(TOPIC_DIRECT)  # one counter: answers are matched by (owner, seq)
        try:
            frames = encode_message(msg, sender=self.name, seq=seq, cluster=self.identity.cluster, payload=payload)
        except ValueError as exc:
            log.event("data_send_failed", logging.WARNING, error=str(exc))
            return None
        if not self.datasock.send(addr, frames):
            return None
        self.traffic.count_out(topic, frames)
        return seq

    def _on_broadcast(self, frames: list[Any]) -> None:
        decoded = self._decode("broadcast", frames)
        if decoded is None:
            return
        _topic, env, payload = decoded
        match env.type:
            case MsgType.ENTITY_BATCH:
                self.data.batch(env, payload, "broadcast")
            case MsgType.AGGREGATES:
                self.data.engine.observe_rows(env.sender, env.msg.rows)
            case MsgType.AGGREGATE_COLUMNS:
                self.data.engine.observe_columns(env.sender, env.msg.columns)
            case MsgType.ALERT:
                self._peer_alert(env.sender, env.msg)
            case MsgType.FUSION_PLAN:
                self.data.fusion_plan(env.sender, env.msg)
            case MsgType.EVOLUTION_PLAN:
                self.data.evolution_plan(env.sender, env.msg)
            case MsgType.LEARNERS:
                self.data.learners(env.sender, env.msg)
            case MsgType.FLOW:
                self.data.peer_flow(env.sender, env.msg.hold_ms)

    # -- operations: reload, metrics and systemd status ----------------------------------

    def reload(self) -> None:
        """SIGHUP (systemd's ExecReload): re-read the authorized node keys, here for the
        data socket and, passed on, in the mesh process for its sockets. Nothing else in
        the config changes at run time: other keys take a restart."""
        reload_keys(self.datasock.auth, "data")
        if self.mesh.pid:
            try:
                os.kill(self.mesh.pid, signal.SIGHUP)
            except ProcessLookupError:
                pass  # the mesh process is gone: its supervision reports that

    def status_line(self) -> str:
        stats = self.mesh.stats
        alive = stats.get("members", {}).get("alive", 0)
        return f"members {alive} alive, leader {stats.get('leader') or '(none)'} (term {stats.get('term', 0)})"

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
        """Read at scrape time on the loop (metrics.py's contract): the mesh process's
        counters as it last reported them (at most 0.5 s old), the data plane's live."""
        mesh = self.mesh.stats
        rejected = collections.Counter(mesh.get("rejected", {}))
        rejected.update(self.traffic.rejected)
        topic_out = collections.Counter(mesh.get("topic_out", {}))
        topic_out.update(self.traffic.topic_out)
        bytes_out = collections.Counter(mesh.get("bytes_out", {}))
        bytes_out.update(self.traffic.bytes_out)
        queue = self.data.queue() if self.loop is not None else None
        dropped = collections.Counter(mesh.get("dropped", {}))  # the mesh process's transport and its link end
        if self.mesh.link is not None:
            dropped.update(self.mesh.link.dropped)  # our link end: what we could not hand the mesh process
        sync = self.syncer.status() if self.syncer is not None else None
        return {
            "members": mesh.get("members", {}),
            "term": mesh.get("term", 0),
            "elections": mesh.get("elections", 0),
            "messages": {"in": mesh.get("topic_in", {}), "out": topic_out},
            "message_bytes": {"in": mesh.get("bytes_in", {}), "out": bytes_out},
            "rejected": rejected,
            "loop": self.loop_time,
            "engine_tick": self.engine_tick_time,
            "audit": self.data.audit_time,
            "ingested": self.data.engine.ingested,
            "stream_batches_dropped": self.data.ingest_dropped,
            "repairs": self.data.engine.repairs,
            "fusions": self.data.engine.fusions,
            "alerts": self.alerts,
            "plugin_faults": self.plugins.fault_counts(),  # every plugin loaded, at 0 until it faults
            "plugin_memory": self.plugins.memory_counts(),
            "entities": self.data.engine.store.count(),
            "blocks": len(self.data.engine.store.block_ids()),
            "ingest_queue_bytes": queue.bytes if queue is not None else 0,
            "flow_requests": self.data.flow.requests,
            "flow_holds": self.data.flow.holds,
            # the door's length is what status shows as waiting (DataPlane has no accessor for it)
            "producers": self.data.producers.status(len(self.data._door)),
            "dropped_records": self.data.dropped_records,
            "stream_gaps": self.data.stream_gaps,
            "rows_ignored": self.data.engine.rows_ignored,
            "dropped": dropped,
            **({"engine_stalled": mesh["stalled"]} if "stalled" in mesh else {}),
            # in the stats once the mesh process reports them (its status has them today)
            **{key: mesh[key] for key in ("heartbeat_gap_max", "heartbeat_gaps_late") if key in mesh},
            **({"sync_lag": sync["lag_seconds"], "outbox_rows": sync["outbox"]} if sync is not None else {}),
        }

    # -- plugins: the API hooks may call on ``node`` ----------------------------------------

    def raise_alert(self, kind: str, text: str, *, severity: str = "warning", **fields: Any) -> None:
        """Record, log and publish an alert. Safe from any thread (sync hooks run in workers)."""
        alert = {"kind": kind, "text": text, "severity": severity, "plugin": fields.pop("plugin", None), **fields}
        if self.loop is not None and threading.get_ident() != self._loop_thread:
            self.loop.call_soon_threadsafe(self._publish_alert, alert)
        else:
            self._publish_alert(alert)

    def emit_entities(self, plugin: str, records: Any) -> int:
        """Records a plugin emits (``NodeFacade.emit``, checked there): a producer's batch to
        this node (``shell/emitter.py``). Safe from any thread."""
        return self.emitter.emit(plugin, records)

    def _publish_alert(self, alert: dict[str, Any]) -> None:
        """On the loop: the PluginManager's on_alert, and raise_alert's end."""
        log.event("alert", logging.WARNING, **alert)
        self.alerts[alert["kind"]] += 1
        text = alert["text"] if len(alert["text"].encode()) <= ALERT_TEXT_MAX else alert["text"][:1000] + "..."
        uid = new_uid()  # the same on every node that keeps it (shell/alerts.py)
        try:  # published for every node and subscriber (topic alr)
            self.outbox.publish(Alert(kind=alert["kind"], text=text, facts=facts_of(alert, uid)))
        except (ValueError, TypeError):  # a kind that is not a valid name on the wire
            pass
        details = {k: v for k, v in alert.items() if k not in ("kind", "text", "severity", "block")}
        self.recorder.alert(alert["kind"], alert["text"], severity=alert["severity"],
                            block=alert.get("block"), details=details, uid=uid)
        self._to_sinks({**alert, "text": text, "uid": uid, "node": self.name})
        self.plugins.spawn(self.plugins.alert(self, alert))

    def _peer_alert(self, sender: str, msg: Alert) -> None:
        """A peer's alert: logged, kept beside ours under its raiser's name and uid, and
        passed to the corec_alert hooks marked remote."""
        alert = remote_alert(sender, msg)
        log.event("peer_alert", logging.INFO, sender=sender, kind=alert["kind"], text=alert["text"],
                  severity=alert["severity"])
        details = {k: v for k, v in alert.items() if k not in ("kind", "text", "severity", "block", "uid", "node")}
        self.recorder.alert(alert["kind"], alert["text"], severity=alert["severity"], block=alert["block"],
                            details=details, uid=alert["uid"], node=sender)
        self.plugins.spawn(self.plugins.alert(self, alert))
        self._to_sinks(alert)

    def _to_sinks(self, alert: dict[str, Any]) -> None:
        """The nucleus sends the cluster's alerts to the sinks, one per episode (every node
        keeps every alert; only the leader sends, so a sink hears each episode once)."""
        if self.data.view.leader == self.name and self.alert_episodes.first(alert, time.monotonic()):
            self.alert_sinks.send(alert)

    async def plugin_store(self, name: str) -> Any:
        """The plugin's own store (opened and migrated once, with its corec_storage_migrations)."""
        opening = self._plugin_stores.get(name)
        if opening is None:
            from corec_node.storage import PluginStore

            opening = self._plugin_stores[name] = asyncio.ensure_future(PluginStore.for_config(
                name, self.config, sqlite_migrations=self.plugins.migrations().get(name, ())))
        return await opening


class NodeEvents:
    """What the control plane reports (over the link from the mesh process), carried out
    in the node process: the data plane's view, plugin hooks, rows for SQLite, a stop."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def view_changed(self, view: ClusterView) -> None:
        self.node.data.view_changed(view)
        node = self.node
        change = node.settings_watch.on_view(view.settings, node.config)
        if change is True:
            node.request_stop(0)  # the way out, then cli.cmd_run starts the node again in place
        elif change:
            node.config = change  # the tick interval, from the next tick
            node.data.config = change.engine

    def leader_placement(self, digest: str) -> None:
        self.node.data.leader_placement(digest)

    def member_event(self, event: dict[str, Any]) -> None:
        plugins = self.node.plugins
        plugins.spawn(plugins.member_event(self.node, event))

    def leader_changed(self, leader: str | None, term: int) -> None:
        plugins = self.node.plugins
        plugins.spawn(plugins.leader_changed(self.node, leader, term))

    def audit(self, kind: str, subject: str, reason: str, *, term: int | None = None, **details: Any) -> None:
        self.node.recorder.audit(kind, subject, reason, term=term, **details)

    def nucleus(self, term: int, leader: str) -> None:
        self.node.recorder.nucleus(term, leader)

    def members(self, snapshot: list[MemberState]) -> None:
        self.node.recorder.members(snapshot)
        self.node.data.intelligence.peers(snapshot)  # whose protocol takes the weights of moved blocks

    def vote(self, term: int) -> None:
        store = self.node.recorder.store
        if store is not None:
            self.node.recorder.spawn("vote term", store.note_term(term))

    def stop(self, code: int) -> None:
        self.node.request_stop(code)


def install_signal_handlers(node: Node) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, node.request_stop, 0)
    loop.add_signal_handler(signal.SIGHUP, node.reload)
