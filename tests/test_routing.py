"""Owner-routed ingest from the producer's side (SPEC 9.5), against real node processes:
the client splits by the map it fetched and each record goes straight to its owner; a
stale map is forwarded by the nodes and answered exactly; a producer's retry or an older
batch is refused, never applied; acks 0; the 1.4 path; ``corec-node send``.

Values are checked, not only counts: each owner's per-block row (count, mean, min, max
over the block's active entities, engine/aggregate.py) against the same computed with
numpy from what was sent.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from collections.abc import Iterator

import numpy as np
import pytest
import zmq
from records import entities

from corec_node.client import Client
from corec_node.engine.blocks import block_ids_of
from corec_node.engine.placement import PlacementMap
from corec_node.testing.cluster import Cluster, NodeProc, eventually
from corec_node.wire import (
    BatchReply,
    Placement,
    PlacementRequest,
    decode_message,
    encode_message,
    make_batch,
)

pytestmark = pytest.mark.timeout(120)

BLOCK_SIZE = 1000  # the node's default


def _start(cluster: Cluster, names: list[str], join: str | None = None) -> list[NodeProc]:
    first = join is None
    nodes = []
    for name in names:
        if join is None:
            nodes.append(cluster.start(name))
            join = nodes[0].addr
        else:
            nodes.append(cluster.start(name, join=[join]))
    for node in nodes:
        node.wait_ready(30)
    if first:
        _settled(nodes)
    return nodes


def _settled(nodes: list[NodeProc]) -> None:
    """Every node sees every other alive, routes, and acts on the same member set."""
    names = sorted(n.name for n in nodes)

    def agreed() -> bool:
        status = [n.ctl("status") for n in nodes]
        return all(s["members"].get("alive") == len(nodes) and s["routed"]
                   and sorted(s["placement_members"]) == names for s in status)

    eventually(agreed, 60, message=f"{names} alive, routed, with one map")


@pytest.fixture(scope="module")
def trio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[NodeProc]]:
    """Three nodes shared by the tests below; each test uses channels of its own and counts
    node counters as differences."""
    cluster = Cluster(tmp_path_factory.mktemp("routing"))
    try:
        yield _start(cluster, ["n0", "n1", "n2"])
    finally:
        cluster.close()


def _producers(nodes: list[NodeProc]) -> dict[str, dict]:
    return {n.name: n.ctl("status")["producers"] for n in nodes}


def _new_records(channel: int, first: int, count: int, seed: int) -> np.ndarray:
    values = (20 + np.random.default_rng(seed).normal(0, 2, count)).astype(np.float32)
    return entities(np.arange(first, first + count), channel, values)


def _expected(recs: np.ndarray) -> dict[int, tuple[int, float, float, float]]:
    """Per block number: (count, mean, min, max) of the last value each entity was sent."""
    last = {}
    for rid, value in zip(recs["id"].tolist(), recs["value"].tolist(), strict=True):
        last[rid] = value
    ids = np.fromiter(last.keys(), np.int64, len(last))
    values = np.fromiter(last.values(), np.float64, len(last))
    blocks = ids // BLOCK_SIZE
    out = {}
    for b in np.unique(blocks).tolist():
        v = values[blocks == b]
        out[b] = (len(v), float(v.mean()), float(v.min()), float(v.max()))
    return out


def _rows(nodes: list[NodeProc], channel: int) -> dict[int, tuple[int, float, float, float]]:
    """Each block's row as its owner made it (every node's own rows), by block number."""
    out = {}
    for node in nodes:
        for row in node.ctl("blocks", channel=channel):
            if row["owner"] == node.name and row["mean"] is not None:
                out[row["block"] & 0xFFFFFFFF] = (row["count"], row["mean"], row["min"], row["max"])
    return out


def _values_match(nodes: list[NodeProc], channel: int, recs: np.ndarray) -> bool:
    want, got = _expected(recs), _rows(nodes, channel)
    if set(got) != set(want):
        return False
    for block, (count, mean, lo, hi) in want.items():
        g = got[block]
        if g[0] != count or g[2] != lo or g[3] != hi or abs(g[1] - mean) > 1e-9 * max(1.0, abs(mean)):
            return False
    return True


def _check_values(nodes: list[NodeProc], channel: int, recs: np.ndarray) -> None:
    eventually(lambda: _values_match(nodes, channel, recs), 20,
               message=f"channel {channel}: every block's row (count, mean, min, max) is what was sent")


def _delta(after: dict[str, dict], before: dict[str, dict], key: str) -> dict[str, int]:
    return {name: after[name][key] - before[name][key] for name in after}


def _entities(nodes: list[NodeProc]) -> int:
    return sum(n.ctl("status")["entities"] for n in nodes)


def _ask_map(addr: str) -> Placement:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"tcp://{addr}")
    try:
        sock.send_multipart(encode_message(PlacementRequest(epoch=0), sender="test-producer", seq=1, cluster="corec"))
        assert sock.poll(5000), f"{addr} did not answer the map request"
        _, env, _ = decode_message(sock.recv_multipart(), cluster="corec")
        assert isinstance(env.msg, Placement)
        return env.msg
    finally:
        sock.close(0)


# -- 1. straight to the owners -------------------------------------------------------------


def test_each_record_goes_straight_to_its_owner(trio):
    before, stored = _producers(trio), _entities(trio)
    recs = _new_records(1, 0, 300_000, seed=1)
    with Client(trio[0].addr) as client:
        client.send(recs)
    assert client.routed and client.why_unrouted == "" and client.map_epoch > 0
    assert (client.accepted, dict(client.rejected), client.unconfirmed) == (300_000, {}, 0)
    assert client.owners_used == {"n0", "n1", "n2"}
    after = _producers(trio)
    assert _delta(after, before, "forwarded") == {"n0": 0, "n1": 0, "n2": 0}  # nothing took a second hop
    accepted = _delta(after, before, "accepted")
    assert sum(accepted.values()) == 300_000 and all(accepted.values())  # each owner took its own part
    assert accepted == dict(client.sent_by_owner)
    eventually(lambda: _entities(trio) - stored == 300_000, 20, message="300,000 entities, each stored once")
    _check_values(trio, 1, recs)


# -- 3. idempotent producers -----------------------------------------------------------------


class _Producer:
    """A producer built by hand: a DEALER to one node's data socket."""

    def __init__(self, addr: str) -> None:
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(f"tcp://{addr}")
        self.seq = 0

    def frames(self, recs: np.ndarray, channel: int, producer: int, pseq: int) -> list[bytes]:
        header, payload = make_batch(recs, channel)
        header = dataclasses.replace(header, producer=producer, pseq=pseq, acks=1)
        self.seq += 1
        return encode_message(header, sender="test-producer", seq=self.seq, cluster="corec", payload=payload)

    def ask(self, frames: list[bytes]) -> BatchReply:
        self.sock.send_multipart(frames)
        assert self.sock.poll(15_000), "no answer"
        _, env, _ = decode_message(self.sock.recv_multipart(), cluster="corec")
        assert isinstance(env.msg, BatchReply)
        return env.msg

    def close(self) -> None:
        self.sock.close(0)


def test_a_retry_is_a_duplicate_and_an_older_batch_is_out_of_order(trio):
    channel, producer = 3, 0x5EED_0000_0001
    placement = _ask_map(trio[0].addr)
    assert placement.owners and placement.block_size == BLOCK_SIZE
    data = {o.name: o.data for o in placement.owners}
    owner = PlacementMap(0, data).owner(int(block_ids_of(np.array([channel]), np.array([0]), BLOCK_SIZE)[0]))
    other = next(name for name in sorted(data) if name != owner)
    ids = np.arange(BLOCK_SIZE)  # block 0 of channel 3, one owner
    direct, via = _Producer(data[owner]), _Producer(data[other])
    try:
        first = direct.frames(entities(ids, channel, 1.0), channel, producer, pseq=10)
        assert direct.ask(first).accepted == BLOCK_SIZE
        again = direct.ask(first)  # the same bytes: a retry of what was applied
        assert (again.accepted, dict(again.rejected)) == (0, {"duplicate": BLOCK_SIZE})
        newest = direct.frames(entities(ids, channel, 3.0), channel, producer, pseq=12)
        assert direct.ask(newest).accepted == BLOCK_SIZE
        older = direct.ask(direct.frames(entities(ids, channel, 2.0), channel, producer, pseq=11))
        assert (older.accepted, dict(older.rejected)) == (0, {"out_of_order": BLOCK_SIZE})
        # the same, forwarded by a node that does not own the block: refused by the owner, answered by it
        before = _producers(trio)[other]["forwarded"]
        forwarded = via.ask(via.frames(entities(ids, channel, 2.5), channel, producer, pseq=11))
        assert (forwarded.accepted, dict(forwarded.rejected)) == (0, {"out_of_order": BLOCK_SIZE})
        assert _producers(trio)[other]["forwarded"] - before == BLOCK_SIZE
        # another producer is not held by this one's sequence
        fresh = direct.ask(direct.frames(entities(ids[:10], channel, 3.0), channel, producer + 1, pseq=1))
        assert fresh.accepted == 10
    finally:
        direct.close()
        via.close()
    _check_values(trio, channel, entities(ids, channel, 3.0))  # the newest batch's values, and only them


# -- 4. acks 0 ---------------------------------------------------------------------------------


def test_acks_0_sends_without_answers_and_counts_them_unacknowledged(trio):
    before = _producers(trio)
    recs = _new_records(4, 0, 100_000, seed=4)
    client = Client(trio[0].addr, acks=0)
    client.send(recs)
    assert client.routed and client.outstanding == 0
    assert (client.sent_unacknowledged, client.accepted, client.unconfirmed, dict(client.rejected)) == (100_000, 0, 0, {})
    eventually(lambda: sum(_delta(_producers(trio), before, "accepted").values()) == 100_000, 20,
               message="the owners took every record")
    assert all(not link.sock.poll(300) for link in client._links.values())  # and answered none of them
    client.close()
    assert client.accepted == 0 and client.sent_unacknowledged == 100_000  # never counted as accepted
    _check_values(trio, 4, recs)


# -- 5. the 1.4 path ------------------------------------------------------------------------


def test_a_producer_on_the_1_4_path_sends_everything_to_one_node_which_forwards(trio):
    before = _producers(trio)
    recs = _new_records(5, 0, 100_000, seed=5)
    with Client(trio[0].addr, route=False) as client:
        client.send(recs)
    assert not client.routed and client.owners_used == set() and client.map_epoch == 0
    assert (client.accepted, dict(client.rejected), client.unconfirmed) == (100_000, {}, 0)
    after = _producers(trio)
    members = sorted(n.name for n in trio)
    owner = np.asarray(members)[PlacementMap(0, members).owners(block_ids_of(recs["channel"], recs["id"], BLOCK_SIZE))]
    not_mine = int((owner != "n0").sum())
    assert 0 < not_mine < 100_000
    assert _delta(after, before, "forwarded") == {"n0": not_mine, "n1": 0, "n2": 0}
    assert _delta(after, before, "records")["n0"] == 100_000
    _check_values(trio, 5, recs)


# -- 6. corec-node send ----------------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "corec_node", *args], capture_output=True, text=True, timeout=60,
                          check=False)


def test_send_says_what_was_accepted_and_where_it_went(trio):
    addr = trio[0].addr
    summary = r"^sent 50,000 records to {addr} in [\d.]+ s \([\d,]+ records/s\): {rest}$"
    out = _cli("send", "--to", addr, "--channel", "6", "--count", "50000")
    assert out.returncode == 0, out.stdout + out.stderr
    assert re.fullmatch(summary.format(addr=re.escape(addr), rest="50,000 accepted, 0 rejected, 0 unconfirmed; "
                                                                  "routed to 3 owners"), out.stdout.strip()), out.stdout

    out = _cli("send", "--to", addr, "--channel", "7", "--count", "50000", "--acks", "0")
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert re.fullmatch(summary.format(addr=re.escape(addr), rest="0 accepted, 0 rejected, 0 unconfirmed, 50,000 sent "
                                                                  "without acknowledgement; routed to 3 owners"),
                        lines[0]), out.stdout
    assert lines[1].startswith("acks 0: nothing was acknowledged") and len(lines) == 2

    out = _cli("send", "--to", addr, "--channel", "8", "--count", "1000", "--acks", "all")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1,000 accepted, 0 rejected, 0 unconfirmed; routed to" in out.stdout
    assert len(out.stdout.splitlines()) == 1  # a 1.6 cluster: every holder acknowledged (one copy each here)

    generated = _new_records(7, 0, 50_000, seed=0)  # what --seed 0 generates (cli.py)
    _check_values(trio, 7, generated)  # the fire-and-forget records arrived, with their values
    _check_values(trio, 6, entities(generated["id"], 6, generated["value"]))


# -- 2. a stale map ------------------------------------------------------------------------


def test_a_stale_map_is_forwarded_answered_exactly_and_refreshed(cluster):
    nodes = _start(cluster, ["m0", "m1", "m2"])
    channel = 2
    first = _new_records(channel, 0, 30_000, seed=21)
    with Client(nodes[0].addr) as primer:
        primer.send(first)
    # the placement epoch is a Lamport count (engine/host.py rule 6) that nodes raise from the
    # rows they hear: once data flows it is one everywhere, and no answer calls a fresh map old
    eventually(lambda: len({n.ctl("status")["placement_epoch"] for n in nodes}) == 1, 20)
    pre = _new_records(channel, 30_000, 30_000, seed=22)
    client = Client(nodes[0].addr)
    client.send(pre)
    assert client.flush(30) and client.accepted == 30_000
    assert client.routed and client.owners_used == {"m0", "m1", "m2"}
    old_epoch = client.map_epoch
    nodes += _start(cluster, ["m3"], join=nodes[0].addr)  # the cluster changes: the map's epoch rises
    _settled(nodes)
    before = _producers(nodes)
    stale = _new_records(channel, 60_000, 100_000, seed=23)
    client.send(stale[:30_000])  # one slab (a batch per owner) by the old map: m3's records go to old owners
    assert client.flush(30)
    assert client.map_epoch == old_epoch and client.owners_used == {"m0", "m1", "m2"}
    forwarded = sum(_delta(_producers(nodes), before, "forwarded").values())
    assert forwarded > 0  # the nodes forwarded m3's records ...
    assert (client.accepted, dict(client.rejected), client.unconfirmed) == (60_000, {}, 0)  # ... and answered exactly
    client.send(stale[30_000:])  # an answer named a newer epoch: the map is fetched before the next slab
    client.close()
    assert client.map_epoch > old_epoch and client.map_fetches >= 2
    assert "m3" in client.owners_used and client.sent_by_owner["m3"] > 0
    assert (client.accepted, dict(client.rejected), client.unconfirmed) == (130_000, {}, 0)
    records = np.concatenate([first, pre, stale])
    eventually(lambda: _entities(nodes) == 160_000, 30, message="every entity stored once")
    _check_values(nodes, channel, records)
