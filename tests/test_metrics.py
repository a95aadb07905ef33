"""Prometheus exposition from a node snapshot, over a real loopback HTTP port."""

from __future__ import annotations

import asyncio
import collections
import json
import re
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from meshutil import eventually, free_port
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from corec_node.shell.metrics import (
    ALERT_KINDS,
    AUDIT_BUCKETS,
    MESSAGE_DROP_REASONS,
    PRODUCER_REJECT_REASONS,
    RECORD_DROP_REASONS,
    TICK_BUCKETS,
    Metrics,
    TickHistogram,
)

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parent.parent
REQUIRED = [
    "corec_members", "corec_leader_term", "corec_elections_total", "corec_entities", "corec_blocks",
    "corec_messages_total", "corec_message_bytes_total", "corec_rejected_frames_total",
    "corec_loop_iteration_seconds", "corec_engine_tick_seconds", "corec_audit_seconds",
    "corec_ingested_records_total", "corec_stream_batches_dropped_total", "corec_repairs_total",
    "corec_fusions_total", "corec_alerts_total", "corec_sync_lag_seconds", "corec_outbox_rows",
    "corec_plugin_faults_total", "corec_node_info", "corec_ingest_queue_bytes", "corec_flow_requests_total",
    "corec_flow_holds_total", "corec_records_total", "corec_producer_batches_total", "corec_producer_batches_waiting",
    "corec_stream_gaps_total", "corec_rows_ignored_total", "corec_dropped_messages_total", "corec_engine_stalled",
    "corec_heartbeat_gap_max_seconds", "corec_heartbeat_gaps_late_total",
]


def real_snapshot() -> dict:
    """What a busy node's snapshot looks like: the node's own Counters, bytes topics and all."""
    loop = TickHistogram()
    for seconds in (0.00004, 0.0002, 0.0002, 0.0008, 0.003, 0.03, 0.4, 1.7):
        loop.observe(seconds)
    engine_tick = TickHistogram()
    for seconds in (0.002, 0.02):
        engine_tick.observe(seconds)
    audit = TickHistogram(AUDIT_BUCKETS)
    audit.observe(3.0)
    messages_in = collections.Counter({b"mbr": 120, b"dir": 300, b"nuc": 40, b"ent.007": 5})
    messages_out = collections.Counter({b"mbr": 100, b"dir": 310})
    return {
        "members": collections.Counter({"alive": 4, "suspect": 1, "dead": 1}),
        "term": 3,
        "elections": 2,
        "entities": 1_000_000,
        "blocks": 1000,
        "ingest_queue_bytes": 3 << 20,
        "flow_requests": 5,
        "flow_holds": 40,
        "messages": {"in": messages_in, "out": messages_out},
        "message_bytes": {"in": {t: n * 150 for t, n in messages_in.items()}, "out": {t: n * 140 for t, n in messages_out.items()}},
        "rejected": collections.Counter({"cluster": 7, "envelope": 2}),
        "loop": loop,
        "engine_tick": engine_tick,
        "audit": audit,
        "ingested": 365_000,
        "stream_batches_dropped": 2,
        "repairs": 11,
        "fusions": 3,
        "alerts": collections.Counter({"memory_full": 1, "pump_overheat": 2}),  # the second: a plugin's own kind
        "sync_lag": 0.75,
        "outbox_rows": 12,
        "plugin_faults": {"anomaly": 3},
        # 41 batches of 10,000 arrived: 37 accepted, 3 refused (2 busy, 1 too large), 1 at the door
        "producers": {"batches": 41, "records": 410_000, "accepted": 370_000,
                      "rejected": collections.Counter({"busy": 20_000, "too_large": 10_000}),
                      "rejected_batches": collections.Counter({"busy": 2, "too_large": 1}), "waiting": 1},
        "dropped_records": collections.Counter({"stream_overflow": 4_321, "handoff_failed": 17}),
        "stream_gaps": 6,
        "rows_ignored": 2,
        "dropped": collections.Counter({"pub_queue_full": 9, "link_full": 2}),
        "engine_stalled": True,
        "heartbeat_gap_max": 0.1375,
        "heartbeat_gaps_late": 4,
    }


def parse(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample as {(name, sorted labels): value}."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def sample(samples, metric: str, /, **labels: str) -> float:
    return samples[(metric, tuple(sorted(labels.items())))]


def make_metrics(snapshot=real_snapshot) -> Metrics:
    return Metrics(snapshot, name="node-a", cluster="prod", version="9.9.9")


def test_exposition_has_every_metric_with_its_value():
    text = make_metrics().text()
    for name in REQUIRED:
        assert re.search(rf"^{name}(_bucket)?[{{ ]", text, re.M), f"{name} missing from:\n{text}"
    s = parse(text)
    assert sample(s, "corec_members", status="alive") == 4
    assert sample(s, "corec_members", status="suspect") == 1
    assert sample(s, "corec_members", status="left") == 0  # every status, so stacked panels stay put
    assert sample(s, "corec_leader_term") == 3
    assert sample(s, "corec_elections_total") == 2
    assert sample(s, "corec_entities") == 1_000_000
    assert sample(s, "corec_blocks") == 1000
    assert sample(s, "corec_ingest_queue_bytes") == 3 << 20
    assert sample(s, "corec_flow_requests_total") == 5
    assert sample(s, "corec_flow_holds_total") == 40
    assert sample(s, "corec_messages_total", direction="in", topic="mbr") == 120
    assert sample(s, "corec_messages_total", direction="in", topic="ent.007") == 5
    assert sample(s, "corec_messages_total", direction="out", topic="dir") == 310
    assert sample(s, "corec_message_bytes_total", direction="out", topic="mbr") == 14000
    assert sample(s, "corec_rejected_frames_total", reason="cluster") == 7
    assert sample(s, "corec_sync_lag_seconds") == 0.75
    assert sample(s, "corec_outbox_rows") == 12
    assert sample(s, "corec_plugin_faults_total", plugin="anomaly") == 3
    assert sample(s, "corec_node_info", version="9.9.9", name="node-a", cluster="prod") == 1
    assert sample(s, "corec_metrics_scrape_errors_total") == 0
    assert sample(s, "corec_ingested_records_total") == 365_000
    assert sample(s, "corec_stream_batches_dropped_total") == 2
    assert sample(s, "corec_repairs_total") == 11
    assert sample(s, "corec_fusions_total") == 3
    assert sample(s, "corec_alerts_total", kind="memory_full") == 1
    assert sample(s, "corec_alerts_total", kind="pump_overheat") == 2
    assert sample(s, "corec_alerts_total", kind="audit_anomaly") == 0  # known kinds from the first scrape


def test_record_accounting_and_drops():
    s = parse(make_metrics().text())
    records = lambda outcome, reason="": sample(s, "corec_records_total", outcome=outcome, reason=reason)  # noqa: E731
    assert records("accepted") == 370_000
    assert records("rejected", "busy") == 20_000
    assert records("rejected", "too_large") == 10_000
    assert records("dropped", "stream_overflow") == 4_321
    assert records("dropped", "handoff_failed") == 17
    assert {dict(labels)["outcome"] for name, labels in s if name == "corec_records_total"} == {"accepted", "rejected", "dropped"}
    batches = lambda outcome, reason="": sample(s, "corec_producer_batches_total", outcome=outcome, reason=reason)  # noqa: E731
    assert batches("accepted") == 37  # 41 arrived, 3 refused, 1 still waiting for its answer
    assert batches("rejected", "busy") == 2 and batches("rejected", "too_large") == 1
    assert sample(s, "corec_producer_batches_waiting") == 1
    assert sample(s, "corec_stream_gaps_total") == 6
    assert sample(s, "corec_rows_ignored_total") == 2
    assert sample(s, "corec_dropped_messages_total", reason="pub_queue_full") == 9
    assert sample(s, "corec_dropped_messages_total", reason="link_full") == 2
    assert sample(s, "corec_engine_stalled") == 1
    assert sample(s, "corec_heartbeat_gap_max_seconds") == 0.1375
    assert sample(s, "corec_heartbeat_gaps_late_total") == 4
    # every reason the code counts has its series, at 0 until it is counted
    assert records("rejected", "no_leader") == 0 and batches("rejected", "no_leader") == 0
    assert records("dropped", "ingest_error") == 0
    assert sample(s, "corec_dropped_messages_total", reason="direct_queue_full") == 0


def test_accounting_of_an_idle_node_is_zero_and_absent_keys_stay_absent():
    s = parse(make_metrics(lambda: {"producers": {"batches": 0, "records": 0, "accepted": 0, "rejected": {},
                                                  "rejected_batches": {}, "waiting": 0},
                                    "dropped_records": {}, "stream_gaps": 0, "dropped": {}, "alerts": {},
                                    "engine_stalled": False}).text())
    assert sample(s, "corec_records_total", outcome="accepted", reason="") == 0
    assert sample(s, "corec_producer_batches_total", outcome="accepted", reason="") == 0
    assert sample(s, "corec_stream_gaps_total") == 0
    assert sample(s, "corec_engine_stalled") == 0
    labelled = {(name, labels): v for (name, labels), v in s.items() if labels}
    want = ({("corec_records_total", (("outcome", "rejected"), ("reason", r))) for r in PRODUCER_REJECT_REASONS}
            | {("corec_records_total", (("outcome", "dropped"), ("reason", r))) for r in RECORD_DROP_REASONS}
            | {("corec_producer_batches_total", (("outcome", "rejected"), ("reason", r))) for r in PRODUCER_REJECT_REASONS}
            | {("corec_dropped_messages_total", (("reason", r),)) for r in MESSAGE_DROP_REASONS}
            | {("corec_alerts_total", (("kind", k),)) for k in ALERT_KINDS})
    assert want <= set(labelled), sorted(want - set(labelled))
    assert all(labelled[key] == 0 for key in want)
    names = {name for name, _ in s}
    assert "corec_heartbeat_gap_max_seconds" not in names  # not in this snapshot: not a made-up zero
    s = parse(make_metrics(lambda: {}).text())
    assert not {"corec_records_total", "corec_engine_stalled", "corec_stream_gaps_total", "corec_dropped_messages_total",
                "corec_alerts_total", "corec_ingested_records_total"} & {name for name, _ in s}


def test_known_label_values_cover_the_sources():
    """Each reason and alert kind the code counts under is in metrics.py's lists: a new one
    has its series from the first scrape too."""
    from corec_node.engine import producers
    from corec_node.shell import data_plane

    shell = ROOT / "corec_node" / "shell"
    plane = (shell / "data_plane.py").read_text() + (shell / "learning.py").read_text() + (shell / "fusions.py").read_text()

    def named(line: str) -> set[str]:
        """The reasons a line names: string literals and data_plane's constants."""
        constants = {getattr(data_plane, c, None) for c in re.findall(r"\b([A-Z][A-Z_]+)\b", line)}
        return set(re.findall(r'"(\w+)"', line)) | {c for c in constants if isinstance(c, str)}

    refused = set().union(*(named(line) for line in plane.splitlines()
                            if "_refuse_records(" in line and "def " not in line))
    refused |= {producers.DUPLICATE, producers.OUT_OF_ORDER}  # ProducerSeqs.admit's, in _admit
    assert {"busy", "malformed", "not_owner", "memory_full"} <= refused  # the scan finds what it should
    assert refused <= set(PRODUCER_REJECT_REASONS), refused - set(PRODUCER_REJECT_REASONS)

    dropped = set(re.findall(r'dropped_records\["(\w+)"\]', plane))
    dropped |= set(re.findall(r'_count_(?:unsent|lost)\([^)\n]*?"(\w+)"', plane))
    dropped |= {producers.DUPLICATE, producers.OUT_OF_ORDER}  # a stream batch's, refused by sequence
    assert {"stream_overflow", "handoff", "moved_away"} <= dropped
    assert dropped <= set(RECORD_DROP_REASONS), dropped - set(RECORD_DROP_REASONS)

    transport = (shell / "transport.py").read_text() + (shell / "link.py").read_text()
    messages = set(re.findall(r'\bdropped\["(\w+)"\]', transport))
    assert {"pub_queue_full", "link_full"} <= messages
    assert messages <= set(MESSAGE_DROP_REASONS), messages - set(MESSAGE_DROP_REASONS)

    kinds = set(re.findall(r'raise_alert\("(\w+)"', plane))
    for path in (ROOT / "corec_node" / "engine" / "audit.py", ROOT / "corec_node" / "engine" / "anomaly.py",
                 ROOT / "corec_node" / "plugins" / "dispatch.py"):
        kinds |= set(re.findall(r'"kind": "(\w+)"', path.read_text()))
    assert kinds == set(ALERT_KINDS)


def test_tick_histogram_buckets():
    s = parse(make_metrics().text())
    bucket = lambda le: sample(s, "corec_loop_iteration_seconds_bucket", le=le)  # noqa: E731
    assert bucket("0.0001") == 1  # 40 µs
    assert bucket("0.00025") == 3  # and two at 200 µs
    assert bucket("0.001") == 4
    assert bucket("0.05") == 6
    assert bucket("1.0") == 7
    assert bucket("+Inf") == 8  # 1.7 s: above every bound
    assert sample(s, "corec_loop_iteration_seconds_count") == 8
    assert sample(s, "corec_loop_iteration_seconds_sum") == pytest.approx(2.13424)
    assert TICK_BUCKETS[0] == 0.0001 and TICK_BUCKETS[-1] == 1.0


def test_engine_tick_and_audit_have_histograms_of_their_own():
    s = parse(make_metrics().text())
    assert sample(s, "corec_engine_tick_seconds_count") == 2
    assert sample(s, "corec_engine_tick_seconds_sum") == pytest.approx(0.022)
    assert sample(s, "corec_engine_tick_seconds_bucket", le="0.0025") == 1
    assert sample(s, "corec_engine_tick_seconds_bucket", le="0.025") == 2
    assert sample(s, "corec_audit_seconds_bucket", le="2.5") == 0  # a 3 s audit (a model fit)
    assert sample(s, "corec_audit_seconds_bucket", le="5.0") == 1
    assert "corec_tick_duration_seconds_count" not in {name for name, _ in s}  # the old name is gone


def test_tick_histogram_bounds_are_inclusive():
    h = TickHistogram((0.001, 0.01))
    for v in (0.001, 0.0010001, 0.01, 5.0):
        h.observe(v)
    assert h.counts == [1, 2, 1]
    assert h.cumulative() == [("0.001", 1.0), ("0.01", 3.0), ("+Inf", 4.0)]


def test_missing_keys_are_absent_not_zero():
    s = parse(make_metrics(lambda: {"members": {"alive": 1}}).text())
    assert sample(s, "corec_members", status="alive") == 1
    names = {name for name, _ in s}
    assert "corec_sync_lag_seconds" not in names and "corec_leader_term" not in names
    assert "corec_node_info" in names


def test_broken_snapshot_still_scrapes():
    def broken() -> dict:
        raise RuntimeError("node mid-shutdown")

    m = make_metrics(broken)
    s = parse(m.text())
    assert sample(s, "corec_metrics_scrape_errors_total") == 1
    assert sample(s, "corec_node_info", version="9.9.9", name="node-a", cluster="prod") == 1
    assert sample(parse(m.text()), "corec_metrics_scrape_errors_total") == 2


def test_registry_is_private():
    m = make_metrics()
    assert "corec_members" not in {f.name for f in REGISTRY.collect()}
    make_metrics()  # a second node in one process: no duplicate-registration error
    assert m.registry is not REGISTRY


def test_openmetrics_when_asked():
    body, content_type = make_metrics().exposition("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")
    body, content_type = make_metrics().exposition("")
    assert content_type.startswith("text/plain") and b"corec_members" in body


# -- HTTP on a real loopback port ---------------------------------------------------------


def http_get(url: str, method: str = "GET", accept: str | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, method=method, headers={"Accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


async def test_http_scrape_over_loopback():
    loop_thread = threading.get_ident()
    snapshot_threads: list[int] = []

    def snapshot() -> dict:
        snapshot_threads.append(threading.get_ident())
        return real_snapshot()

    server = await make_metrics(snapshot).start_http("127.0.0.1:0")
    try:
        assert server.port > 0
        base = f"http://127.0.0.1:{server.port}"
        status, headers, body = await asyncio.to_thread(http_get, base + "/metrics")
        assert status == 200
        assert headers["Content-Type"].startswith("text/plain")
        s = parse(body.decode())
        assert sample(s, "corec_members", status="alive") == 4
        assert sample(s, "corec_node_info", version="9.9.9", name="node-a", cluster="prod") == 1
        assert snapshot_threads == [loop_thread]  # read on the node's loop: no lock needed

        status, _, body = await asyncio.to_thread(http_get, base + "/nothing-here")
        assert status == 404
        status, headers, body = await asyncio.to_thread(http_get, base + "/metrics", "HEAD")
        assert status == 200 and body == b"" and int(headers["Content-Length"]) > 0
        status, _, _ = await asyncio.to_thread(http_get, base + "/metrics", "POST")
        assert status == 405
        status, headers, body = await asyncio.to_thread(http_get, base + "/metrics", "GET", "application/openmetrics-text; version=1.0.0")
        assert status == 200 and headers["Content-Type"].startswith("application/openmetrics-text")
        assert server.requests == 3
    finally:
        await server.close()
    with pytest.raises(OSError):
        await asyncio.to_thread(http_get, f"http://127.0.0.1:{server.port}/metrics")


async def test_http_survives_garbage_and_slow_clients():
    server = await make_metrics().start_http("127.0.0.1:0")
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"\x00\xff not http at all\r\n\r\n")
        await writer.drain()
        assert (await reader.read()).startswith(b"HTTP/1.1 400")
        writer.close()
        _, idle = await asyncio.open_connection("127.0.0.1", server.port)  # says nothing; must not block others
        status, _, _ = await asyncio.to_thread(http_get, f"http://127.0.0.1:{server.port}/metrics")
        assert status == 200
        idle.close()
    finally:
        await server.close()


# -- Grafana dashboard --------------------------------------------------------------------


def test_grafana_dashboard_uses_the_metric_names():
    dash = json.loads((ROOT / "configs" / "grafana-dashboard.json").read_text())
    panels = dash["panels"]
    assert dash["title"] and dash["uid"] and isinstance(dash["schemaVersion"], int)
    assert len({p["id"] for p in panels}) == len(panels)
    exprs = [t["expr"] for p in panels for t in p["targets"]]
    used = set(re.findall(r"\bcorec_[a-z_]+", " ".join(exprs)))
    exported = set(parse(make_metrics().text()))
    exported_names = {name for name, _ in exported}
    for name in used:  # every series the dashboard queries exists
        assert name in exported_names, f"dashboard queries {name}, which metrics.py does not export"
    for name in REQUIRED:
        assert any(u == name or u.startswith(name + "_") for u in used), f"dashboard has no panel for {name}"
    titles = " | ".join(p["title"].lower() for p in panels)
    for want in ("members by status", "leader term", "messages/s by topic", "rejected frames/s by reason",
                 "loop iteration p50 / p99", "engine tick p50 / p99", "sync lag", "outbox rows", "plugin faults",
                 "alerts by kind"):
        assert want in titles
    for p in panels:
        assert {"x", "y", "w", "h"} <= set(p["gridPos"]) and p["datasource"]["type"] == "prometheus"


# -- end to end: a real node (passes once node.py serves [metrics] listen) ---------------


def test_metrics_endpoint_after_real_run(cluster, tmp_path):
    port = free_port()
    cfg = tmp_path / "a.toml"
    cfg.write_text(f'[metrics]\nlisten = "127.0.0.1:{port}"\n')
    a = cluster.start("a", args=["--config", str(cfg), "--profile", "test"]).wait_ready()
    b = cluster.start("b", join=[a.addr], args=["--profile", "test"]).wait_ready()
    eventually(lambda: a.members() == {"a": "alive", "b": "alive"}, 20, message="a sees b")
    url = f"http://127.0.0.1:{port}/metrics"

    def scraped():
        status, _, body = http_get(url)
        s = parse(body.decode())
        alive = s.get(("corec_members", (("status", "alive"),)))
        term = s.get(("corec_leader_term", ()))
        ticks = s.get(("corec_engine_tick_seconds_count", ()), 0)  # an engine tick a second (engine.tick_interval)
        return status == 200 and alive == 2 and term is not None and term >= 1 and ticks > 0 and s

    s = eventually(scraped, 20, message=f"{url} reports 2 alive members, a leader term and an engine tick")
    assert sample(s, "corec_node_info", version=__import__("corec_node").__version__, name="a", cluster="corec") == 1
    ins = {labels: v for (name, labels), v in s.items() if name == "corec_messages_total" and ("direction", "in") in labels}
    outs = {labels: v for (name, labels), v in s.items() if name == "corec_messages_total" and ("direction", "out") in labels}
    assert sum(ins.values()) > 0 and sum(outs.values()) > 0
    topics = {dict(labels)["topic"] for labels in ins}
    assert topics and all(t in {"dir", "mbr", "nuc", "agg", "alr"} or t.startswith("ent.") for t in topics), topics
    assert sample(s, "corec_loop_iteration_seconds_count") > 0
    assert sample(s, "corec_loop_iteration_seconds_count") > sample(s, "corec_engine_tick_seconds_count")
    assert sample(s, "corec_alerts_total", kind="memory_full") == 0
    assert sample(s, "corec_members", status="dead") == 0
    assert sample(s, "corec_engine_stalled") == 0
    assert sample(s, "corec_records_total", outcome="accepted", reason="") == 0

    sent = subprocess.run([sys.executable, "-m", "corec_node", "send", "--to", a.addr, "--channel", "3",
                           "--count", "25000"], capture_output=True, text=True, timeout=60)
    assert sent.returncode == 0, sent.stderr
    assert "25,000 accepted, 0 rejected" in sent.stdout

    # owner-routed (SPEC 9.5): each node accepts the records of its own blocks
    shares = {n.name: n.ctl("status")["producers"] for n in (a, b)}
    assert sum(p["accepted"] for p in shares.values()) == 25_000
    assert shares["a"]["accepted"] > 0

    def accounted():
        s = parse(http_get(url)[2].decode())
        return sample(s, "corec_records_total", outcome="accepted", reason="") == shares["a"]["accepted"] and s

    s = eventually(accounted, 20, message="a's accepted records counter reaches what a accepted")
    rejected = sum(shares["a"]["rejected_batches"].values())
    assert sample(s, "corec_producer_batches_total", outcome="accepted", reason="") == shares["a"]["batches"] - rejected
    assert sample(s, "corec_producer_batches_waiting") == 0
    drops = {labels: v for (name, labels), v in s.items() if name == "corec_records_total" and ("outcome", "dropped") in labels}
    assert len(drops) == len(RECORD_DROP_REASONS) and not any(drops.values())

    def ingested():  # a's records in its own blocks, once its worker has stored them
        s = parse(http_get(url)[2].decode())
        return sample(s, "corec_ingested_records_total") == shares["a"]["accepted"]

    eventually(ingested, 20, message="a's ingested records counter reaches what a accepted")
    assert sample(s, "corec_stream_gaps_total") == 0
    assert b.proc.poll() is None
