"""Prometheus exposition of a node, read from the node's own counters at scrape time.

The hot path never touches prometheus_client: the node counts with plain ints and
``collections.Counter`` (and :class:`TickHistogram` for durations), and a scrape calls the
node's ``snapshot()`` and turns the dict into metric families. A node that nobody scrapes
pays nothing; a scrape costs one snapshot and one text rendering.

The snapshot (every key optional; a missing key leaves its metric without a sample
rather than reporting a made-up zero)::

    {
        "members": {"alive": 3, "suspect": 0, "dead": 1, "left": 0},   # by status
        "term": 7,                                 # current leader term
        "elections": 2,                            # elections this node started (candidacies)
        "entities": 1_000_000,                     # entities held by this node
        "blocks": 1000,
        "ingest_queue_bytes": 0,                   # entity batch bytes waiting to be stored
        "flow_requests": 0,                        # pauses this node asked of its peers (FLOW)
        "flow_holds": 0,                           # producer batches held for a peer's pause
        "messages": {"in": {"mbr": 10, "dir": 40}, "out": {...}},       # by direction, topic
        "message_bytes": {"in": {"mbr": 1200}, "out": {...}},           # same keys, bytes
        "rejected": {"cluster": 2, "decode": 1},   # rejected frames by reason
        "loop": TickHistogram(...),                # one pass of the node process's timer loop
        "engine_tick": TickHistogram(...),         # one engine tick (DataPlane.tick), on the loop
        "audit": TickHistogram(...),               # one audit of a tick's rows, in its worker thread
        "ingested": 390_000,                       # records the engine took in as their blocks' owner
        "stream_batches_dropped": 0,               # stream batches shed, the ingest queue full
        "repairs": 0,                              # block repairs the engine made
        "fusions": 0,                              # weak blocks fused into strong ones here
        "alerts": {"memory_full": 1},              # alerts this node raised, by kind
        "sync_lag": 0.25,                          # seconds the storage sync is behind
        "outbox_rows": 12,                         # rows waiting for PostgreSQL
        "plugin_faults": {"anomaly": 1},           # hook failures by plugin
        "plugin_memory": {"anomaly": 12_582_912},  # traced bytes by plugin (plugins.memory_watch)
        # what producers sent this node and its answers (DataPlane.status()["producers"]):
        # records and batches received, records accepted, refused records and batches by
        # reason, batches still waiting at the door for an answer
        "producers": {"batches": 40, "records": 400_000, "accepted": 390_000,
                      "rejected": {"busy": 10_000}, "rejected_batches": {"busy": 1}, "waiting": 0},
        "dropped_records": {"stream_overflow": 5000},  # records lost after they reached this node, by reason
        "stream_gaps": 3,                          # stream batches missed on the way (sequence gaps)
        "rows_ignored": 0,                         # other owners' aggregate rows ignored (SPEC 9.2)
        "dropped": {"pub_queue_full": 2, "link_full": 1},  # messages the transport and the link dropped
        "engine_stalled": False,                   # the mesh process finds the data plane silent (rule 14)
        "heartbeat_gap_max": 0.13,                 # largest gap between two of our leader's heartbeats
        "heartbeat_gaps_late": 0,                  # gaps over the interval plus a tenth of the election timeout
    }

A labelled counter whose key is in the snapshot has a sample for every label value the
code can count (``*_REASONS``, ``ALERT_KINDS``), 0 until its first increment: ``rate()``
and alert rules see the series from the first scrape, not from the first incident.

Record accounting (SPEC 9.4) is one family, ``corec_records_total{outcome, reason}``:
``accepted`` (reason empty) and ``rejected`` are records producers sent this node and what
it answered; ``dropped`` are records this node lost after they reached it, counted only
for blocks it would keep (a producer's batch accepted by another node may be dropped here).
So ``accepted`` plus ``rejected`` is what producers sent this node, less what still waits
for an answer, and ``dropped`` is not a third share of the same records.

Topics may be ``bytes`` (as on the wire) or ``str``. The HTTP server is an asyncio server
on the node's own loop: ``snapshot()`` then runs on the loop that owns the counters, so it
needs no lock and never sees a dict being resized.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)

from corec_node import log
from corec_node.config import split_addr
from corec_node.engine.producers import DUPLICATE, OUT_OF_ORDER
from corec_node.shell.replication import NO_LEADER, NOT_ENOUGH_REPLICAS
from corec_node.shell.routing import NOT_OWNER

# Tick time from 0.1 ms (an idle 20 ms tick) to 1 s (a tick that made the node miss probes).
TICK_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
# An audit scores a tick's rows in milliseconds and now and then fits its model: seconds.
AUDIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
MEMBER_STATUSES = ("alive", "suspect", "dead", "left")  # always exported, 0 when absent: dashboards stack them
# The label values the code counts under (a value not listed is exported once counted; a
# test reads the sources so that these lists keep up with them).
# records and batches refused to a producer (DataPlane._refuse_records, _admit)
PRODUCER_REJECT_REASONS = ("busy", "malformed", "too_large", NOT_OWNER, NO_LEADER, "memory_full",
                           NOT_ENOUGH_REPLICAS, DUPLICATE, OUT_OF_ORDER)
# records lost after they reached this node (DataPlane.dropped_records)
RECORD_DROP_REASONS = ("stream_overflow", "ingest_error", DUPLICATE, OUT_OF_ORDER, "moved_away", "handoff",
                       "sequence_handoff")
# messages the transport (transport.py) and the link between the two processes (link.py) dropped
MESSAGE_DROP_REASONS = ("pub_queue_full", "pub_error", "direct_queue_full", "direct_error", "recv_error",
                        "handler_error", "link_full", "link_error", "link_recv_error", "link_handler_error")
# the node's own alerts; plugins may raise kinds of their own
ALERT_KINDS = ("audit_anomaly", "blocks_lost", "forecast_anomaly", "memory_full", "plugin_disabled")
DIRECTIONS = ("in", "out")
MAX_REQUEST_BYTES = 8192  # a scrape request is one line and a few headers; more is not Prometheus
REQUEST_TIMEOUT = 5.0  # seconds a client may take to send its request before we hang up
ERROR_LOG_PERIOD = 10.0  # seconds between two "metrics_snapshot_failed" lines

Snapshot = Mapping[str, Any]


class TickHistogram:
    """A fixed-bucket histogram for the hot path: one bisect and three adds per observation.

    Not thread-safe; observe and read it on the node's loop. ``counts[i]`` holds
    observations in ``(bounds[i-1], bounds[i]]``; the last slot is above every bound (+Inf).
    """

    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds: Iterable[float] = TICK_BUCKETS) -> None:
        self.bounds = tuple(sorted(bounds))
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds
        self.count += 1

    def cumulative(self) -> list[tuple[str, float]]:
        """Prometheus buckets: (``le``, observations at or below it), ending with ``+Inf``."""
        out: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts):
            running += n
            out.append(("+Inf" if bound == float("inf") else repr(bound), float(running)))
        return out


def _label(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, (bytes, bytearray)) else str(value)


def _by_label(counts: Mapping[Any, float], known: tuple[str, ...]) -> list[tuple[str, float]]:
    """Every known label value (0 when not counted yet), then the others counted, sorted."""
    counted = {_label(k): float(v) for k, v in counts.items()}
    return [(k, counted.get(k, 0.0)) for k in known] + sorted((k, v) for k, v in counted.items() if k not in known)


class SnapshotCollector:
    """A prometheus_client collector that reads ``snapshot()`` on every scrape."""

    def __init__(self, snapshot: Callable[[], Snapshot], *, name: str, cluster: str, version: str) -> None:
        self.snapshot = snapshot
        self.info = {"version": version, "name": name, "cluster": cluster}
        self.scrape_errors = 0
        self._last_error_log = float("-inf")

    def describe(self) -> list[Metric]:
        """The families without samples: lets the registry check names without a snapshot."""
        return list(self._families({}))

    def collect(self) -> Iterator[Metric]:
        try:
            snap = self.snapshot()
            families = list(self._families(snap))
        except Exception as exc:  # a broken snapshot must not turn the scrape into a 500
            self.scrape_errors += 1
            now = time.monotonic()
            if now - self._last_error_log >= ERROR_LOG_PERIOD:
                self._last_error_log = now
                log.event("metrics_snapshot_failed", logging.WARNING, error=repr(exc)[:200], total=self.scrape_errors)
            families = list(self._families({}))
        yield from families
        errors = CounterMetricFamily("corec_metrics_scrape_errors", "Scrapes whose node snapshot failed.")
        errors.add_metric([], self.scrape_errors)
        yield errors

    def _families(self, s: Snapshot) -> Iterator[Metric]:
        info = InfoMetricFamily("corec_node", "This node: version, name and cluster label.")
        info.add_metric([], self.info)
        yield info

        members = GaugeMetricFamily("corec_members", "Cluster members as this node sees them, by status.", labels=["status"])
        if "members" in s:
            for status, n in _by_label(s["members"], MEMBER_STATUSES):
                members.add_metric([status], n)
        yield members

        yield _scalar(GaugeMetricFamily, "corec_leader_term", "Current nucleus leader term.", s.get("term"))
        yield _scalar(CounterMetricFamily, "corec_elections", "Elections this node started as a candidate.", s.get("elections"))
        yield _scalar(GaugeMetricFamily, "corec_entities", "Entities held by this node.", s.get("entities"))
        yield _scalar(GaugeMetricFamily, "corec_blocks", "Entity blocks held by this node.", s.get("blocks"))
        yield _scalar(GaugeMetricFamily, "corec_ingest_queue_bytes", "Entity batch bytes waiting to be stored.",
                      s.get("ingest_queue_bytes"))
        yield _scalar(CounterMetricFamily, "corec_flow_requests", "Pauses of the stream this node asked of its peers.",
                      s.get("flow_requests"))
        yield _scalar(CounterMetricFamily, "corec_flow_holds", "Producer batches held for a peer's pause.",
                      s.get("flow_holds"))

        for key, name, doc in (("messages", "corec_messages", "Mesh messages, by direction and topic."),
                               ("message_bytes", "corec_message_bytes", "Mesh message bytes on the wire, by direction and topic.")):
            family = CounterMetricFamily(name, doc, labels=["direction", "topic"])
            by_direction = s.get(key) or {}
            for direction in DIRECTIONS:
                for topic, n in sorted((by_direction.get(direction) or {}).items(), key=lambda kv: _label(kv[0])):
                    family.add_metric([direction, _label(topic)], float(n))
            yield family

        rejected = CounterMetricFamily("corec_rejected_frames", "Frames dropped before the protocol, by reason.", labels=["reason"])
        for reason, n in sorted((s.get("rejected") or {}).items()):
            rejected.add_metric([_label(reason)], float(n))
        yield rejected

        yield _histogram("corec_loop_iteration_seconds", "Time one pass of the node process's timer loop takes "
                         "(every 0.1 s: memory check, an engine tick when one is due, history pruning).", s.get("loop"))
        yield _histogram("corec_engine_tick_seconds", "Time one engine tick takes on the node's loop (aggregates, "
                         "repairs, TTLs, copies, fusion plans; the audit is apart).", s.get("engine_tick"))
        yield _histogram("corec_audit_seconds", "Time one audit of a tick's block rows takes in its worker thread "
                         "(model fits included).", s.get("audit"))

        yield _scalar(CounterMetricFamily, "corec_ingested_records", "Records this node took in as the owner of "
                      "their blocks (status: ingested).", s.get("ingested"))
        yield _scalar(CounterMetricFamily, "corec_stream_batches_dropped", "Stream batches shed because the ingest "
                      "queue was full (their records are corec_records_total{outcome=\"dropped\"}).",
                      s.get("stream_batches_dropped"))
        yield _scalar(CounterMetricFamily, "corec_repairs", "Repairs the engine made, one a block and kind of "
                      "repair (status: repairs).", s.get("repairs"))
        yield _scalar(CounterMetricFamily, "corec_fusions", "Weak blocks fused into strong ones on this node.",
                      s.get("fusions"))
        alerts = CounterMetricFamily("corec_alerts", "Alerts this node raised, by kind.", labels=["kind"])
        if "alerts" in s:
            for kind, n in _by_label(s["alerts"], ALERT_KINDS):
                alerts.add_metric([kind], n)
        yield alerts

        yield _scalar(GaugeMetricFamily, "corec_sync_lag_seconds", "How far the storage sync is behind, in seconds.", s.get("sync_lag"))
        yield _scalar(GaugeMetricFamily, "corec_outbox_rows", "Rows in the outbox waiting for PostgreSQL.", s.get("outbox_rows"))

        faults = CounterMetricFamily("corec_plugin_faults", "Plugin hook calls that raised or timed out, by plugin.", labels=["plugin"])
        for plugin, n in sorted((s.get("plugin_faults") or {}).items()):
            faults.add_metric([_label(plugin)], float(n))
        yield faults
        memory = GaugeMetricFamily("corec_plugin_memory_bytes", "Memory traced to each plugin's code by the plugin "
                                   "memory watch (plugins.memory_watch; tracemalloc: not RSS).", labels=["plugin"])
        for plugin, n in sorted((s.get("plugin_memory") or {}).items()):
            memory.add_metric([_label(plugin)], float(n))
        yield memory

        yield from _accounting(s)


def _accounting(s: Snapshot) -> Iterator[Metric]:
    """Where records went (SPEC 9.4) and what the node and its link dropped: the counters
    ``status`` shows under producers, dropped_records, stream_gaps and dropped."""
    producers = s.get("producers")
    records = CounterMetricFamily(
        "corec_records", "Records producers sent this node, accepted or rejected (by reason), and records this "
        "node dropped after they reached it (by reason).", labels=["outcome", "reason"])
    batches = CounterMetricFamily("corec_producer_batches", "Producer batches answered: accepted, or rejected by reason.",
                                  labels=["outcome", "reason"])
    if producers is not None:
        records.add_metric(["accepted", ""], float(producers.get("accepted", 0)))
        rejected_batches = producers.get("rejected_batches") or {}
        # a batch is accepted whole or rejected whole (SPEC 9.4); the rest still wait at the door
        accepted = producers.get("batches", 0) - sum(rejected_batches.values()) - producers.get("waiting", 0)
        batches.add_metric(["accepted", ""], float(max(0, accepted)))
        for reason, n in _by_label(producers.get("rejected") or {}, PRODUCER_REJECT_REASONS):
            records.add_metric(["rejected", reason], n)
        for reason, n in _by_label(rejected_batches, PRODUCER_REJECT_REASONS):
            batches.add_metric(["rejected", reason], n)
    if "dropped_records" in s:
        for reason, n in _by_label(s["dropped_records"], RECORD_DROP_REASONS):
            records.add_metric(["dropped", reason], n)
    yield records
    yield batches
    yield _scalar(GaugeMetricFamily, "corec_producer_batches_waiting", "Producer batches waiting at the door for an answer.",
                  producers.get("waiting") if producers is not None else None)
    yield _scalar(CounterMetricFamily, "corec_stream_gaps", "Stream batches missed on the way (sequence gaps).",
                  s.get("stream_gaps"))
    yield _scalar(CounterMetricFamily, "corec_rows_ignored", "Aggregate rows heard from other owners that lack a "
                  "key or hold a wrong type (SPEC 9.2), ignored.", s.get("rows_ignored"))

    dropped = CounterMetricFamily("corec_dropped_messages", "Messages the transport or the link between the node's "
                                  "two processes dropped, by reason.", labels=["reason"])
    if "dropped" in s:
        for reason, n in _by_label(s["dropped"], MESSAGE_DROP_REASONS):
            dropped.add_metric([reason], n)
    yield dropped

    yield _scalar(GaugeMetricFamily, "corec_engine_stalled", "1 while the data plane has stopped beating (the node "
                  "stands for nothing and steps down).", s.get("engine_stalled"))
    yield _scalar(GaugeMetricFamily, "corec_heartbeat_gap_max_seconds", "Largest gap between two heartbeats of our "
                  "leader, in seconds.", s.get("heartbeat_gap_max"))
    yield _scalar(CounterMetricFamily, "corec_heartbeat_gaps_late", "Gaps between two leader heartbeats over the "
                  "interval plus a tenth of the election timeout.", s.get("heartbeat_gaps_late"))


def _histogram(name: str, doc: str, hist: TickHistogram | None) -> Metric:
    family = HistogramMetricFamily(name, doc)
    if hist is not None:
        family.add_metric([], hist.cumulative(), hist.sum)
    return family


def _scalar(cls: type, name: str, doc: str, value: Any) -> Metric:
    family = cls(name, doc, labels=[])
    if value is not None:
        family.add_metric([], float(value))
    return family


class Metrics:
    """The node's metrics on a registry of its own (never prometheus_client's global one)."""

    def __init__(self, snapshot: Callable[[], Snapshot], *, name: str, cluster: str, version: str) -> None:
        """``snapshot`` runs on every scrape, on the loop that serves HTTP; it must not block."""
        self.registry = CollectorRegistry(auto_describe=False)
        self.collector = SnapshotCollector(snapshot, name=name, cluster=cluster, version=version)
        self.registry.register(self.collector)

    def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """(body, content type) as Prometheus would get them for this ``Accept`` header."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type

    def text(self) -> str:
        """The classic text format (0.0.4), for tests and ``status`` tooling."""
        return generate_latest(self.registry).decode()

    async def start_http(self, addr: str) -> MetricsServer:
        """Serve ``GET /metrics`` on ``host:port`` (port 0: any free port, see ``.port``)."""
        host, port = split_addr(addr) if not addr.endswith(":0") else (addr.rpartition(":")[0].strip("[]"), 0)
        server = MetricsServer(self)
        await server.start(host, port)
        return server


class MetricsServer:
    """A minimal HTTP/1.1 server for scrapes: one request per connection, then close."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.server: asyncio.AbstractServer | None = None
        self.host = ""
        self.port = 0
        self.requests = 0

    async def start(self, host: str, port: int) -> None:
        self.server = await asyncio.start_server(self._handle, host, port, limit=MAX_REQUEST_BYTES)
        self.host, self.port = self.server.sockets[0].getsockname()[:2]
        log.event("metrics_listening", addr=f"{self.host}:{self.port}")

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT)
            except (asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                return
            lines = head.decode("latin-1").split("\r\n")
            parts = lines[0].split()
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
            if len(parts) != 3 or not parts[2].startswith("HTTP/"):
                await self._reply(writer, "400 Bad Request", b"bad request\n", "text/plain")
                return
            method, target = parts[0], parts[1].split("?", 1)[0]
            if method not in ("GET", "HEAD"):
                await self._reply(writer, "405 Method Not Allowed", b"GET only\n", "text/plain", extra="Allow: GET, HEAD\r\n")
                return
            if target not in ("/metrics", "/"):
                await self._reply(writer, "404 Not Found", b"try /metrics\n", "text/plain")
                return
            self.requests += 1
            body, content_type = self.metrics.exposition(headers.get("accept", ""))
            await self._reply(writer, "200 OK", body, content_type, head_only=method == "HEAD")
        except Exception:  # one bad scrape must not take the server down
            logging.getLogger(log.LOGGER_NAME).exception("metrics_request_failed")
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass

    @staticmethod
    async def _reply(writer: asyncio.StreamWriter, status: str, body: bytes, content_type: str, *,
                     head_only: bool = False, extra: str = "") -> None:
        head = (f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
                f"Connection: close\r\n{extra}\r\n").encode("latin-1")
        writer.write(head if head_only else head + body)
        try:
            await writer.drain()
        except (ConnectionError, OSError):
            pass


__all__ = ["ALERT_KINDS", "AUDIT_BUCKETS", "MESSAGE_DROP_REASONS", "PRODUCER_REJECT_REASONS", "RECORD_DROP_REASONS",
           "TICK_BUCKETS", "Metrics", "MetricsServer", "SnapshotCollector", "TickHistogram"]
