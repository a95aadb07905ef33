"""Where the cluster's alerts go besides the nodes: a webhook (the alert as JSON, POSTed) and
Alertmanager (its v2 API). The nucleus sends them, one per episode (``alerts.Episodes``):
every node keeps every alert, the leader alone sends, so a sink hears each episode once
from a healthy cluster (an alert raised while no leader is known reaches the nodes, not
the sinks). Delivery is in the background with a bounded queue and retries with backoff;
a sink that stays down costs a warning per alert given up, never the node's loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.error
import urllib.request
from typing import Any

from corec_node import log

QUEUE = 1000  # alerts waiting for a sink at most; past it the oldest wait is dropped (and counted)
TRIES = 5  # deliveries of one alert to one sink, backoff doubling from BACKOFF
BACKOFF = 0.5  # seconds before the second try


def webhook_body(alert: dict[str, Any], cluster: str) -> dict[str, Any]:
    """The webhook's JSON: the alert as ``corec_alert`` sees it, plus the cluster and when."""
    return {"cluster": cluster, "ts": time.time(), **{k: v for k, v in alert.items() if v is not None}}


def alertmanager_body(alert: dict[str, Any], cluster: str) -> list[dict[str, Any]]:
    """Alertmanager's v2 ``POST /api/v2/alerts`` body: one alert, labels to group and route
    on, the text as the summary."""
    labels = {"alertname": alert["kind"], "severity": alert.get("severity", "warning"), "cluster": cluster,
              "node": alert.get("node") or ""}
    block = alert.get("block")
    if type(block) is int and 0 <= block < 1 << 40:
        labels["block"] = f"{block >> 32}:{block & 0xFFFFFFFF}"
    if alert.get("plugin"):
        labels["plugin"] = str(alert["plugin"])
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return [{"labels": labels, "annotations": {"summary": alert["text"], "uid": alert.get("uid", "")},
             "startsAt": started}]


class AlertSinks:
    """The node's sinks (``[alerts]`` config): ``send`` queues, a task delivers."""

    def __init__(self, webhook: str, alertmanager: str, *, cluster: str, node: str, timeout: float) -> None:
        self.targets: list[tuple[str, str]] = []
        if webhook:
            self.targets.append(("webhook", webhook))
        if alertmanager:
            self.targets.append(("alertmanager", alertmanager.rstrip("/") + "/api/v2/alerts"))
        self.cluster, self.node, self.timeout = cluster, node, timeout
        self.sent = {name: 0 for name, _ in self.targets}
        self.failed = {name: 0 for name, _ in self.targets}  # alerts given up after TRIES
        self.dropped = 0
        self._queue: asyncio.Queue[dict[str, Any]] | None = None
        self._task: asyncio.Task[None] | None = None

    def send(self, alert: dict[str, Any]) -> None:
        """Queue an alert this node raised (on the loop)."""
        if not self.targets:
            return
        if self._queue is None:
            self._queue = asyncio.Queue(QUEUE)
            self._task = asyncio.get_running_loop().create_task(self._deliver())
        if self._queue.full():
            self._queue.get_nowait()
            self._queue.task_done()
            self.dropped += 1
        self._queue.put_nowait({**alert, "node": alert.get("node") or self.node})

    async def close(self, wait: float = 2.0) -> None:
        """Give queued alerts ``wait`` seconds, then stop."""
        if self._task is None or self._queue is None:
            return
        try:
            await asyncio.wait_for(self._queue.join(), wait)
        except TimeoutError:
            pass
        self._task.cancel()

    async def _deliver(self) -> None:
        assert self._queue is not None
        while True:
            alert = await self._queue.get()
            try:
                for name, url in self.targets:
                    try:
                        body = alertmanager_body(alert, self.cluster) if name == "alertmanager" \
                            else webhook_body(alert, self.cluster)
                        await self._post(name, url, body, alert)
                    except Exception as exc:  # a plugin's odd field: this alert fails, the sink goes on
                        self.failed[name] += 1
                        log.event("alert_sink_failed", logging.WARNING, sink=name, kind=alert.get("kind"),
                                  error=f"{type(exc).__name__}: {exc}")
            finally:
                self._queue.task_done()

    async def _post(self, name: str, url: str, body: Any, alert: dict[str, Any]) -> None:
        data = json.dumps(body, default=str).encode()  # a plugin's field JSON does not know: as text
        delay = BACKOFF
        for attempt in range(1, TRIES + 1):
            error = await asyncio.to_thread(self._post_once, url, data)
            if error is None:
                self.sent[name] += 1
                return
            if attempt < TRIES:
                await asyncio.sleep(delay)
                delay *= 2
        self.failed[name] += 1
        log.event("alert_sink_failed", logging.WARNING, sink=name, url=url, kind=alert["kind"], tries=TRIES,
                  error=error)

    def _post_once(self, url: str, data: bytes) -> str | None:
        """In a worker thread: None when the sink took it (2xx), else why not, in one line."""
        request = urllib.request.Request(url, data=data, method="POST",
                                         headers={"Content-Type": "application/json", "User-Agent": "corec-node"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as answer:
                answer.read()
            return None
        except urllib.error.HTTPError as exc:
            return f"HTTP {exc.code} {exc.reason}"
        except (urllib.error.URLError, OSError, ValueError) as exc:
            return str(getattr(exc, "reason", exc))
