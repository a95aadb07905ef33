"""Regenerate docs/console.png: the web console of a real 3-node cluster with some data.

    python bench/console_screenshot.py [--out docs/console.png] [--keep]

Starts three nodes on loopback (the first serves the console), feeds two channels with
``corec-node send`` (one from a file of records shaped so the heatmap has something to
show, one generated), lets the first-party alerts plugin (plugins/corec-alerts, loaded
from its folder) raise a few alerts, and has headless Chromium (Debian's ``chromium``)
take the screenshot through the DevTools protocol once the page shows all three members.

``Chromium`` below is also what tests/test_console.py drives the live page with: a real
browser over its remote-debugging websocket (websocket-client, the ``test`` extra).
"""

from __future__ import annotations

import argparse
import base64
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class Chromium:
    """One headless Chromium in its own process group and profile directory, driven over
    the DevTools protocol (one page). ``close`` ends the group and removes the profile."""

    def __init__(self, binary: str, *, width: int = 1400, height: int = 1000) -> None:
        import websocket  # websocket-client: the test extra

        self.profile = Path(tempfile.mkdtemp(prefix="corec-chromium-"))
        self.proc = subprocess.Popen(
            [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--mute-audio",
             "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1", "--remote-allow-origins=*",
             f"--user-data-dir={self.profile}", f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self._ids = itertools.count(1)
        try:
            port = self._wait_port(30.0)
            target = self._page_target(port, 30.0)
            self.ws = websocket.create_connection(target, timeout=30, suppress_origin=True)
            self.call("Page.enable")
            self.call("Runtime.enable")
        except BaseException:
            self.close()
            raise

    def _wait_port(self, timeout: float) -> int:
        """Chromium writes the port it bound (port 0 asked) to DevToolsActivePort."""
        marker = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited with {self.proc.returncode} before it listened")
            try:
                first = marker.read_text().splitlines()[0]
                return int(first)
            except (OSError, IndexError, ValueError):
                time.sleep(0.1)
        raise RuntimeError(f"chromium did not open its DevTools port within {timeout:g} s")

    @staticmethod
    def _page_target(port: int, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
                    pages = [t for t in json.load(r) if t.get("type") == "page"]
                if pages:
                    return pages[0]["webSocketDebuggerUrl"]
            except OSError:
                pass
            if time.monotonic() >= deadline:
                raise RuntimeError("chromium has no page target")
            time.sleep(0.1)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """One DevTools command's result (events read meanwhile are dropped)."""
        ident = next(self._ids)
        self.ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == ident:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def navigate(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def evaluate(self, expression: str) -> Any:
        """A JavaScript expression's value in the page (JSON-able values only)."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression!r}: {result['exceptionDetails'].get('text')}")
        return result.get("result", {}).get("value")

    def screenshot(self, path: Path) -> None:
        """The whole page, not only the window: the console is taller than a screen."""
        height = int(self.evaluate("document.documentElement.scrollHeight") or 1000)
        width = int(self.evaluate("document.documentElement.clientWidth") or 1400)
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        ws = getattr(self, "ws", None)
        if ws is not None:
            try:
                ws.close()
            except Exception:
                pass
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)  # the group we started: its renderer and helpers too
                self.proc.wait(10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(10)
        shutil.rmtree(self.profile, ignore_errors=True)


def members_shown(browser: Chromium) -> dict[str, str]:
    """{name: status} as the page's members table shows them."""
    return browser.evaluate(
        "Object.fromEntries([...document.querySelectorAll('#members tbody tr[data-member]')]"
        ".map(tr => [tr.dataset.member, tr.dataset.status]))") or {}


# The first-party alerts plugin (plugins/corec-alerts) from its source folder, without
# installing it into the environment (its entry point would load it into every node there):
# a local plugin file under the plugin's own name, holding the plugin object's hooks.
ALERTS_SHIM = """\
from corec_alerts import plugin as _plugin

SETTINGS = _plugin.SETTINGS
corec_configure = _plugin.corec_configure
corec_block_aggregates = _plugin.corec_block_aggregates
"""


def _records_file(path: Path) -> int:
    """Channel 1's records, shaped for a readable heatmap: means rising across the blocks,
    some entities inactive in a few blocks (lower fitness), two blocks running hot."""
    import numpy as np

    from corec_node.wire import ENTITY_DTYPE

    blocks, size = 48, 1000
    rng = np.random.default_rng(21)
    records = np.zeros(blocks * size, dtype=ENTITY_DTYPE)
    records["id"] = np.arange(len(records), dtype=np.uint32)
    records["channel"] = 1
    index = np.arange(len(records)) // size
    centre = 18 + 6 * np.sin(index / 7.0) + index / 12.0
    centre[(index == 13) | (index == 31)] = 41.0  # above the alerts plugin's band (max 35)
    spread = 0.5 + 2.5 * ((index % 5) == 0)
    records["value"] = (centre + rng.normal(0, 1, len(records)) * spread).astype(np.float32)
    records["active"] = (rng.random(len(records)) > 0.35 * ((index % 9) == 4)).astype(np.uint8)
    path.write_bytes(records.tobytes())
    return len(records)


def _stream(send: list[str], stop: threading.Event) -> None:
    """``corec-node send`` of channel 2, again and again with new values, until stopped."""
    for seed in itertools.count(4):
        if stop.is_set():
            return
        subprocess.run([*send, "--channel", "2", "--count", "30000", "--seed", str(seed)],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def make_screenshot(out: Path, keep: bool = False) -> Path:
    from corec_node.testing.cluster import Cluster, eventually, free_port

    binary = find_chromium()
    if binary is None:
        raise SystemExit("no chromium on PATH: apt-get install chromium")
    root = Path(tempfile.mkdtemp(prefix="corec-console-shot-"))
    (root / "plugins").mkdir()
    (root / "plugins" / "alerts.py").write_text(ALERTS_SHIM)
    config = root / "node.toml"
    config.write_text(
        "[engine]\nreplicas = 2\n"  # an owner and a replica per block: placement shows both
        "[plugins]\n"
        f"paths = [{json.dumps(str(root / 'plugins'))}]\n"
        "[plugin.alerts]\n"
        'thresholds = { "1" = { max = 35.0 } }\n')
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "plugins" / "corec-alerts"),
                                                        os.environ.get("PYTHONPATH")]))}
    cluster = Cluster(root)
    browser: Chromium | None = None
    stop: threading.Event | None = None
    stream: threading.Thread | None = None
    port = free_port()
    try:
        common = ["--config", str(config), "--profile", "test"]
        alpha = cluster.start("alpha", args=[*common, "--console", f"127.0.0.1:{port}"],
                              extra_env={**env, "COREC_NODE_TAGS": "role=gateway,zone=eu-1"})
        alpha.wait_ready()
        others = [cluster.start(n, join=[alpha.addr], args=common,
                                extra_env={**env, "COREC_NODE_TAGS": f"role=worker,zone=eu-{i + 1}"})
                  for i, n in enumerate(("beta", "gamma"))]
        for node in others:
            node.wait_ready()
        nodes = [alpha, *others]
        eventually(lambda: all(set(n.members().values()) == {"alive"} and len(n.members()) == 3 for n in nodes), 30,
                   message="three members alive everywhere")
        records = root / "channel1.bin"
        _records_file(records)
        send = [sys.executable, "-m", "corec_node", "send", "--to", alpha.addr]
        subprocess.run([*send, "--file", str(records)], check=True, stdout=subprocess.DEVNULL)
        subprocess.run([*send, "--channel", "2", "--count", "30000", "--seed", "3"], check=True,
                       stdout=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}/"

        def snapshot() -> dict[str, Any]:
            with urllib.request.urlopen(url + "api/snapshot?channel=1", timeout=5) as r:
                return json.load(r)

        eventually(lambda: snapshot()["blocks_total"] == 48 and snapshot()["alerts"], 30,
                   message="channel 1's blocks and an alert")
        stop = threading.Event()
        stream = threading.Thread(target=_stream, args=(send, stop), daemon=True)
        stream.start()  # channel 2 rewritten over and over: the ingest figures move
        browser = Chromium(binary, width=1400, height=1000)
        browser.navigate(url + "#channel=1&metric=mean")
        eventually(lambda: len(members_shown(browser)) == 3
                   and browser.evaluate("document.querySelectorAll('#heatmap div').length") == 48
                   and browser.evaluate("document.querySelectorAll('#alerts tbody tr[data-kind]').length") > 0, 30,
                   message="the page showing the members, the blocks and the alerts")
        time.sleep(8)  # snapshots for the ingest sparkline
        browser.evaluate("document.querySelector('#heatmap div[data-block=\"1:13\"]')"
                         ".dispatchEvent(new MouseEvent('mouseenter'))")  # one block's aggregates spelled out
        out.parent.mkdir(parents=True, exist_ok=True)
        browser.screenshot(out)
        return out
    finally:
        if stop is not None:
            stop.set()
        if stream is not None:
            stream.join(30)
        if browser is not None:
            browser.close()
        cluster.close()
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "console.png")
    parser.add_argument("--keep", action="store_true", help="keep the nodes' directory and logs")
    args = parser.parse_args()
    print(make_screenshot(args.out, keep=args.keep))
    return 0


if __name__ == "__main__":
    sys.exit(main())
