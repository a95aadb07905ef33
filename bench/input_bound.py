"""What a stranger's big message costs a node: RSS before, at its peak and after.

    python bench/input_bound.py [--frames 100] [--frame-mb 15] [--connections 20]

A stranger (``corec_node/testing/stranger.py``: raw ZMTP over TCP, so its bytes really go
on the wire) sends one multipart message of --frames frames of --frame-mb MiB (1.5 GB by
default: under the per-frame limit, mesh.max_message_bytes, every frame of it) to a real
node process on loopback, three times over:

  open     no CURVE, no allowlist: libzmq takes the whole message before the node sees it
  curve    CURVE on: the stranger speaks plain ZMTP (refused at the greeting), starts a
           CURVE handshake with the message where its HELLO belongs (refused at the first
           frame), or is libzmq with a key the node does not know (refused by ZAP)
  allow    CURVE off, security.allow = a network the stranger is not in: refused by ZAP

and, against the curve node, what a stranger can still make it hold: --connections
connections that each start a CURVE handshake with one frame of --frame-mb MiB and wait.

RSS is the node's (and its children's) VmRSS from /proc/PID/status; the peak is VmHWM,
reset to the current RSS before each row (clear_refs), so "peak" is that row's. "after" is
a second after the stranger gave up: memory libzmq freed may stay with the allocator. The
stranger retries a refused connection (--tries). Figures only: nothing here passes or
fails. Prints a table, then one JSON line ``{"bench": "input_bound", ...}``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # works without installing

import zmq  # noqa: E402

from bench._machine import cpu_model  # noqa: E402
from corec_node.shell.curve import CurveConfig, configure_client, keygen  # noqa: E402
from corec_node.testing.cluster import Cluster, NodeProc, eventually  # noqa: E402
from corec_node.testing.stranger import Attempt, frame_header, greeting, reset_peak, rss_kib, send_message  # noqa: E402

MB = 1 << 20


def _mb(kib: int) -> float:
    return kib / 1024


class Row:
    """One stranger against one node, and the node's memory around it."""

    def __init__(self, node_kind: str, stranger: str, node: NodeProc) -> None:
        self.node_kind, self.stranger, self.node = node_kind, stranger, node
        self.before = self.peak = self.after = 0
        self.attempt: Attempt | None = None
        self.note = ""

    def measure(self, action) -> Row:
        print(f"{self.node_kind}: {self.stranger} ...", file=sys.stderr, flush=True)
        pid = self.node.proc.pid
        reset_peak(pid)
        self.before = rss_kib(pid)[0]
        result = action()
        if isinstance(result, Attempt):
            self.attempt = result
        elif isinstance(result, str):
            self.note = result
        self.peak = rss_kib(pid)[1]
        time.sleep(1.0)
        self.after = rss_kib(pid)[0]
        return self

    def cells(self) -> list[str]:
        a = self.attempt
        took = (f"{a.written / MB:,.0f} of {a.offered / MB:,.0f} MiB, {a.refused}/{a.connections} refused"
                if a else self.note)
        return [self.node_kind, self.stranger, took, f"{_mb(self.before):,.0f}", f"{_mb(self.peak):,.0f}",
                f"{_mb(self.after):,.0f}"]

    def json(self) -> dict[str, Any]:
        a = self.attempt
        return {"node": self.node_kind, "stranger": self.stranger, "rss_before_mb": round(_mb(self.before), 1),
                "rss_peak_mb": round(_mb(self.peak), 1), "rss_after_mb": round(_mb(self.after), 1),
                **({"written_mb": round(a.written / MB, 1), "offered_mb": round(a.offered / MB, 1),
                    "connections": a.connections, "refused": a.refused, "delivered": a.delivered} if a else
                   {"note": self.note})}


def libzmq_stranger(node: NodeProc, curve: CurveConfig, frames: int, frame_bytes: int) -> str:
    """libzmq with an unauthorized key: its message waits in its own process; the node's ZAP refuses it."""
    ctx = zmq.Context()
    try:
        sock = ctx.socket(zmq.DEALER)
        sock.linger = 0
        configure_client(sock, curve)
        sock.connect(f"tcp://127.0.0.1:{node.port}")
        chunk = zmq.Frame(b"\xa5" * frame_bytes)
        sock.send_multipart([chunk] * frames, copy=False)
        eventually(lambda: node.ctl("status")["rejected"].get("curve_denied", 0) >= 1, 30,
                   message="the node refused the key")
        time.sleep(1.0)  # and the retries that follow
        return f"refused by ZAP {node.ctl('status')['rejected']['curve_denied']} times"
    finally:
        ctx.destroy(linger=0)


def held_handshakes(node: NodeProc, connections: int, frame_bytes: int, hold: float) -> str:
    """``connections`` CURVE handshakes, each with one big frame where HELLO belongs, held open."""
    socks: list[socket.socket] = []
    written = 0

    def one() -> None:
        nonlocal written
        s = socket.create_connection(("127.0.0.1", node.port), timeout=10)
        socks.append(s)
        try:
            s.sendall(greeting(b"CURVE") + frame_header(frame_bytes, more=False, command=True))
            chunk = b"\xa5" * MB
            for _ in range(frame_bytes // MB - 1):  # all but the last MiB: the frame stays unfinished
                s.sendall(chunk)
                written += len(chunk)
        except OSError:
            pass

    threads = [threading.Thread(target=one) for _ in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    time.sleep(hold)
    for s in socks:
        s.close()
    return f"{connections} connections, {written / MB:,.0f} MiB written, held {hold:g} s"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=100)
    ap.add_argument("--frame-mb", type=int, default=15, help="MiB per frame (under mesh.max_message_bytes, 16)")
    ap.add_argument("--connections", type=int, default=20, help="held CURVE handshakes in the last row")
    ap.add_argument("--tries", type=int, default=20, help="connections a refused stranger tries")
    args = ap.parse_args()
    frames, frame_bytes = args.frames, args.frame_mb * MB

    root = Path(tempfile.mkdtemp(prefix="corec-input-bound-"))
    keys, authorized = root / "keys", root / "authorized"
    authorized.mkdir()
    for name in ("cluster", "a", "mallory"):
        keygen(keys, name)
    shutil.copy(keys / "a.key", authorized / "a.key")
    (root / "curve.toml").write_text(f'[security]\nenabled = true\nsecret_key_file = "{keys / "a.key_secret"}"\n'
                                     f'public_keys_dir = "{authorized}"\n')
    (root / "allow.toml").write_text('[security]\nallow = ["192.0.2.0/24"]\n')  # a documentation network
    (root / "mallory-view").mkdir()  # the directory mallory's own node would have: its key in it
    shutil.copy(keys / "mallory.key", root / "mallory-view" / "mallory.key")
    mallory = CurveConfig.load(keys / "mallory.key_secret", root / "mallory-view")
    cluster = Cluster(root)
    rows: list[Row] = []

    def stranger(node: NodeProc, mechanism: bytes, port: int, socket_type: bytes = b"DEALER"):
        return lambda: send_message(("127.0.0.1", port), frames, frame_bytes, mechanism=mechanism,
                                    socket_type=socket_type, tries=args.tries, deadline=120)

    try:
        test = ["--profile", "test"]
        open_node = cluster.start("open", args=test).wait_ready()
        curve_node = cluster.start("curve", args=["--config", str(root / "curve.toml"), *test]).wait_ready()
        allow_node = cluster.start("allow", args=["--config", str(root / "allow.toml"), *test]).wait_ready()
        time.sleep(1.0)  # past the start's own allocations
        rows.append(Row("open", "plain ZMTP -> ROUTER", open_node).measure(
            stranger(open_node, b"NULL", open_node.port)))
        rows.append(Row("curve", "plain ZMTP -> ROUTER", curve_node).measure(
            stranger(curve_node, b"NULL", curve_node.port)))
        rows.append(Row("curve", "CURVE greeting -> ROUTER", curve_node).measure(
            stranger(curve_node, b"CURVE", curve_node.port)))
        rows.append(Row("curve", "CURVE greeting -> PUB", curve_node).measure(
            stranger(curve_node, b"CURVE", curve_node.pub_port, b"SUB")))
        rows.append(Row("curve", "libzmq, unknown key -> ROUTER", curve_node).measure(
            lambda: libzmq_stranger(curve_node, mallory, frames, frame_bytes)))
        rows.append(Row("allow", "plain ZMTP -> ROUTER", allow_node).measure(
            stranger(allow_node, b"NULL", allow_node.port)))
        rows.append(Row("curve", f"{args.connections} held handshakes -> ROUTER", curve_node).measure(
            lambda: held_handshakes(curve_node, args.connections, frame_bytes, hold=2.0)))
        statuses = {n.name: n.ctl("status")["rejected"] for n in (open_node, curve_node, allow_node)}
    finally:
        cluster.close()
        shutil.rmtree(root, ignore_errors=True)

    head = ["node", "stranger", "what the stranger got in", "RSS before MB", "peak MB", "after MB"]
    table = [head] + [r.cells() for r in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(head))]
    print(f"one message of {frames} frames x {args.frame_mb} MiB = {frames * frame_bytes / MB:,.0f} MiB; "
          f"zmq {zmq.zmq_version()}, {cpu_model()}")
    for r in table:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    print("rejected, as status shows it:", json.dumps(statuses, sort_keys=True))
    print(json.dumps({"bench": "input_bound", "frames": frames, "frame_mb": args.frame_mb,
                      "zmq": zmq.zmq_version(), "cpu": cpu_model(), "rows": [r.json() for r in rows]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
