"""Exact accounting (SPEC 9.4): every record a producer sends is stored by its owner,
counted in a named drop counter, or answered to the producer as not accepted.

Real node processes. The flood and the books are bench/flood.py's (which runs the same at
full size, 20 M ids, ten times).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import zmq

from corec_node.client import Client
from corec_node.testing.cluster import eventually, free_port
from corec_node.wire import PROTOCOL_MINOR

pytestmark = pytest.mark.timeout(600)

_spec = importlib.util.spec_from_file_location("flood", Path(__file__).resolve().parents[1] / "bench" / "flood.py")
assert _spec is not None and _spec.loader is not None
flood = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(flood)

RECORDS = 2_000_000  # per run: new ids, 20,000 blocks of 100
# A small ingest queue (wait 2 MiB, the door 1 MiB, pauses asked from 512 KiB): the producer
# is held, refused as busy and offered again, members ask for pauses and may shed stream
# batches; the books must balance whatever path each record took.
ENV = {"COREC_ENGINE_BLOCK_SIZE": "100", "COREC_ENGINE_INGEST_QUEUE_MB": "8"}


def test_every_record_is_stored_dropped_by_name_or_refused(cluster):
    nodes = flood.start_cluster(cluster, 3, ENV)
    totals = {"sent": 0, "stored": 0, "dropped": 0, "refused": 0, "unconfirmed": 0}
    for run in range(2):  # two runs: the second floods a cluster that already holds the first
        recs = flood.records(run * RECORDS, RECORDS, seed=run)
        client, _ = flood.flood(nodes[0], recs, batch=10_000, window=32)
        assert client.sent_records == RECORDS
        assert client.unconfirmed == 0, "every batch answered"
        status = flood.settled(nodes, 240)  # ~5 s unloaded; a loaded machine stretches it
        books = flood.account(client, status)
        totals["sent"] += books["sent"]
        totals["refused"] += sum(books["rejected"].values())
        totals["stored"] = books["stored"]  # the stores hold both runs' ids
        totals["dropped"] = sum(books["dropped"].values())  # node counters are cumulative
        assert all(n.proc.poll() is None for n in nodes), "no node died"
        assert totals["sent"] == totals["stored"] + totals["dropped"] + totals["refused"], (run, books)
        # what the node answered is what the producer counted
        answered = [s["producers"] for s in status]
        assert sum(p["accepted"] for p in answered) >= client.accepted
        assert sum(p["records"] for p in answered) >= RECORDS
    assert flood.member_changes(nodes) == 0  # (a false death would move blocks: not this test's subject)


STALLED_ROUTER = textwrap.dedent('''
    import asyncio, sys, time
    from corec_node.shell.transport import Transport

    async def main():
        t = Transport(max_message_bytes=16 << 20)
        t.bind(sys.argv[1], sys.argv[2])
        print("bound", flush=True)
        time.sleep(float(sys.argv[3]))  # the reader stalls: nothing reads the ROUTER
        got = []
        t.start(lambda frames, identity: got.append(int(frames[1][:8])), lambda frames: None)
        idle = 0
        while idle < 20:
            n = len(got)
            await asyncio.sleep(0.1)
            idle = idle + 1 if len(got) == n else 0
        print("received", len(got), len(set(got)), max(got) if got else -1, flush=True)
        await t.close()

    asyncio.run(main())
''')


@pytest.mark.parametrize("hang_up", [False, True], ids=["producer-stays", "producer-hangs-up"])
def test_a_stalled_router_neither_drops_nor_aborts(hang_up, tmp_path):
    """libzmq 4.3.5 with ZMTP heartbeats on a ROUTER whose receive pipe is full: the engine
    stops reading, misses the peer's PONGs and drops the connection after
    HEARTBEAT_TIMEOUT with what was in flight (the producer reconnects and goes on: a run
    of its batches is gone, nothing counted), and if the peer hangs up meanwhile the next
    heartbeat aborts the process (assertion !_io_error, stream_engine_base.cpp:310). A
    node's ROUTER must live through a reader that stalls for seconds."""
    port, pub = free_port(), free_port()
    proc = subprocess.Popen([sys.executable, "-c", STALLED_ROUTER, f"127.0.0.1:{port}", f"127.0.0.1:{pub}", "6"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    sock = zmq.Context.instance().socket(zmq.DEALER)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "bound"
        sock.setsockopt(zmq.LINGER, 0 if hang_up else 10_000)
        sock.connect(f"tcp://127.0.0.1:{port}")
        pad = bytes(100_000)
        sent = 0
        deadline = time.monotonic() + (1.0 if hang_up else 7.0)  # through the whole stall, or hang up in it
        while time.monotonic() < deadline:
            try:
                sock.send_multipart([b"dir", b"%08d" % sent, pad], zmq.NOBLOCK)
                sent += 1
            except zmq.Again:
                time.sleep(0.005)
        sock.close(0 if hang_up else 10_000)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err[-500:]
        received = out.split()
        assert received[0] == "received", out
        count, distinct, highest = map(int, received[1:])
        assert count == distinct == highest + 1 > 1000, out  # a prefix, no gap, more than the pipe holds
        if not hang_up:
            assert count == sent, (out, sent)
    finally:
        sock.close(0)
        if proc.poll() is None:
            proc.kill()


def test_an_older_producer_gets_no_answers_and_loses_nothing_silently(cluster):
    """A 1.3 producer never reads answers: the node sends none (they would pile up in its
    socket) and counts its batches as any other."""
    from corec_node.wire import encode_message, make_batch

    node = cluster.start("solo").wait_ready()
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 1000)
    sock.connect(f"tcp://{node.addr}")
    recs = flood.records(0, 1000)
    header, payload = make_batch(recs, 0)
    frames = encode_message(header, sender="old-producer", seq=1, cluster="corec", payload=payload)
    old = bytearray(frames[1])
    assert old[5:7] == bytes([ord("m"), PROTOCOL_MINOR])  # the envelope's minor: made 3
    old[6] = 3
    sock.send_multipart([frames[0], bytes(old), payload])
    eventually(lambda: node.ctl("status")["entities"] == 1000, 20)
    assert not sock.poll(500)  # no answer
    status = node.ctl("status")
    assert status["producers"]["accepted"] == 1000 and status["producers"]["batches"] == 1
    sock.close(0)
    with Client(node.addr) as client:  # a 1.4 producer on the same node is answered
        client.send(flood.records(1000, 10))
    assert client.accepted == 10 and client.answered
