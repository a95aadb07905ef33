"""A real Prometheus server (Debian's ``prometheus``) scrapes a real node and answers
queries over its HTTP API: the names, types and labels metrics.py exports are ones a
Prometheus stores, the engine tick is timed under its own name, and the counters move with
what the node did."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from meshutil import eventually, free_port
from records import entities

from corec_node.client import Client
from corec_node.shell.metrics import ALERT_KINDS, PRODUCER_REJECT_REASONS, RECORD_DROP_REASONS

pytestmark = pytest.mark.timeout(120)

IN_CI = os.environ.get("CI", "").lower() == "true"
RECORDS = 5_000
JOB = "corec"


@pytest.fixture
def prometheus_bin() -> str:
    path = shutil.which("prometheus")
    if path is None:
        why = "the prometheus binary is not installed (Debian: apt-get install -y prometheus)"
        if IN_CI:
            pytest.fail(f"CI=true: {why}", pytrace=False)
        pytest.skip(why)
    return path


@contextlib.contextmanager
def running_prometheus(binary: str, target: str, root: Path) -> Iterator[str]:
    """A Prometheus child process scraping ``target`` every second; yields its base URL."""
    root.mkdir()
    config = root / "prometheus.yml"
    config.write_text("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
                      f"scrape_configs:\n  - job_name: {JOB}\n    static_configs:\n      - targets: ['{target}']\n")
    base = f"http://127.0.0.1:{free_port()}"
    log_path = root / "prometheus.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([binary, f"--config.file={config}", f"--storage.tsdb.path={root / 'tsdb'}",
                                 f"--web.listen-address={base.removeprefix('http://')}"],
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            def ready() -> bool:
                if proc.poll() is not None:
                    raise AssertionError(f"prometheus exited {proc.returncode}:\n{log_path.read_text()[-3000:]}")
                with urllib.request.urlopen(base + "/-/ready", timeout=5) as resp:
                    return resp.status == 200

            eventually(ready, 30, interval=0.2, message="prometheus ready")
            yield base
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def query(base: str, promql: str) -> dict[tuple[tuple[str, str], ...], float]:
    """An instant query: {labels other than job, instance and __name__: value}."""
    url = f"{base}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    with urllib.request.urlopen(url, timeout=10) as resp:
        body = json.load(resp)
    assert body["status"] == "success", body
    return {tuple(sorted((k, v) for k, v in r["metric"].items() if k not in ("job", "instance", "__name__"))):
            float(r["value"][1]) for r in body["data"]["result"]}


def scalar(base: str, promql: str) -> float | None:
    """The one value a query returns; None when it returns no series."""
    result = query(base, promql)
    assert len(result) <= 1, result
    return next(iter(result.values()), None)


def test_prometheus_scrapes_a_node(cluster, tmp_path, prometheus_bin):
    metrics_port = free_port()
    node = cluster.start("a", args=["--profile", "test"],
                         extra_env={"COREC_METRICS_LISTEN": f"127.0.0.1:{metrics_port}"}).wait_ready()
    with running_prometheus(prometheus_bin, f"127.0.0.1:{metrics_port}", tmp_path / "prometheus") as prom:
        sel = f'job="{JOB}"'
        eventually(lambda: scalar(prom, f"up{{{sel}}}") == 1, 30, interval=0.5, message="prometheus scraped the node")

        # labelled counters have their series from the first scrape, at 0
        assert query(prom, f"corec_alerts_total{{{sel}}}") == {(("kind", k),): 0.0 for k in ALERT_KINDS}
        assert query(prom, f'corec_records_total{{{sel},outcome="dropped"}}') == {
            (("outcome", "dropped"), ("reason", r)): 0.0 for r in RECORD_DROP_REASONS}
        assert query(prom, f'corec_records_total{{{sel},outcome="rejected"}}') == {
            (("outcome", "rejected"), ("reason", r)): 0.0 for r in PRODUCER_REJECT_REASONS}
        assert scalar(prom, f"corec_ingested_records_total{{{sel}}}") == 0

        # the engine tick is timed under its own name; the loop under its new one, the old name is gone
        eventually(lambda: (scalar(prom, f"corec_engine_tick_seconds_count{{{sel}}}") or 0) >= 2, 30, interval=0.5,
                   message="prometheus has the engine tick histogram counting ticks")
        ticks = scalar(prom, f"corec_engine_tick_seconds_count{{{sel}}}")
        assert scalar(prom, f'corec_engine_tick_seconds_bucket{{{sel},le="+Inf"}}') >= ticks
        assert scalar(prom, f"corec_loop_iteration_seconds_count{{{sel}}}") > ticks  # a pass every 0.1 s, an engine tick a second
        assert query(prom, "corec_tick_duration_seconds_count") == {}

        with Client(node.addr) as client:
            client.send(entities(np.arange(RECORDS), channel=1, value=np.arange(RECORDS, dtype=np.float32)))
            assert client.flush(30)
            assert client.accepted == RECORDS, (client.accepted, client.rejected)
        status = node.ctl("status")
        assert status["producers"]["accepted"] == RECORDS

        eventually(lambda: scalar(prom, f"corec_ingested_records_total{{{sel}}}") == RECORDS, 30, interval=0.5,
                   message=f"prometheus has corec_ingested_records_total at {RECORDS}")
        assert scalar(prom, f'corec_records_total{{{sel},outcome="accepted"}}') == RECORDS
        assert scalar(prom, f"increase(corec_ingested_records_total{{{sel}}}[1m])") > 0
        assert node.ctl("status")["ingested"] == RECORDS
        assert scalar(prom, f"corec_engine_tick_seconds_count{{{sel}}}") > ticks  # ticks go on
