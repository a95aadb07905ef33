"""The producer client against real ROUTER sockets standing in for nodes: what it puts on
the wire, where (the placement map and its owners, SPEC 9.5, or the 1.4 path), and how it
counts the answers (BatchReply, SPEC 9.4)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import zmq
from records import entities

from corec_node.client import OLD_CLUSTER, Client
from corec_node.engine.blocks import FusionTable, block_ids_of
from corec_node.engine.placement import PlacementMap, partition
from corec_node.testing.cluster import eventually
from corec_node.wire import (
    BatchReply,
    Owner,
    Placement,
    PlacementRequest,
    decode_batch,
    decode_message,
    encode_message,
)

pytestmark = pytest.mark.timeout(60)


def _answer(router: Router, identity: bytes, seq: int, accepted: int, rejected: dict | None = None,
            epoch: int = 0) -> None:
    reply = BatchReply(seq=seq, accepted=accepted, rejected=rejected or {}, epoch=epoch)
    router.send_multipart([identity, *encode_message(reply, sender="node", seq=0, cluster="corec")])


def _received(router: Router, count: int) -> list[tuple[int, np.ndarray]]:
    """Batches until ``count`` records came, each answered as accepted, as a node does."""
    out = []
    while sum(len(r) for _, r in out) < count:
        assert router.poll(5000), "the client's batches did not arrive"
        identity, *frames = router.recv_multipart()
        _, env, payload = decode_message(frames, cluster="corec")
        out.append((env.msg.channel, decode_batch(env.msg, payload).copy()))
        _answer(router, identity, env.seq, env.msg.count)
    return out


def _batches(router: Router, *, answer: bool = True, epoch: int = 0, idle_ms: int = 300) -> list:
    """Every batch that comes until ``idle_ms`` pass without one: ``(env, records)``."""
    out = []
    while router.poll(idle_ms):
        identity, *frames = router.recv_multipart()
        _, env, payload = decode_message(frames, cluster="corec")
        out.append((env, decode_batch(env.msg, payload).copy()))
        if answer:
            _answer(router, identity, env.seq, env.msg.count, epoch=epoch)
    return out


class Router:
    """A ROUTER on a random loopback port, where a node (or its data socket) would be."""

    def __init__(self) -> None:
        self.sock = zmq.Context.instance().socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.addr = f"127.0.0.1:{self.port}"

    def __getattr__(self, name: str):
        return getattr(self.sock, name)


class MapNode:
    """A node's direct address, served from a thread: it answers PLACEMENT_REQUEST with
    ``placement`` (None: it ignores the request, as a 1.4 node does) and accepts batches;
    it keeps both."""

    def __init__(self, placement: Placement | None) -> None:
        self.placement = placement
        self.requests: list[PlacementRequest] = []
        self.batches: list[tuple] = []  # (envelope, records)
        self.router = Router()
        self.addr = self.router.addr
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            if not self.router.poll(20):
                continue
            identity, *frames = self.router.recv_multipart()
            _, env, payload = decode_message(frames, cluster="corec")
            if isinstance(env.msg, PlacementRequest):
                self.requests.append(env.msg)
                if self.placement is not None:
                    self.router.send_multipart([identity, *encode_message(self.placement, sender="n0", seq=0,
                                                                          cluster="corec")])
            else:
                self.batches.append((env, decode_batch(env.msg, payload).copy()))
                _answer(self.router, identity, env.seq, env.msg.count)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.router.sock.close(0)


@pytest.fixture
def router():
    r = Router()
    yield r
    r.sock.close(0)


@pytest.fixture
def owners():
    """Three owners' data sockets."""
    rs = {name: Router() for name in ("a", "b", "c")}
    yield rs
    for r in rs.values():
        r.sock.close(0)


def _placement(owners: dict[str, Router], epoch: int = 5, fusions: tuple = (), block_size: int = 100,
               replicas: int = 0) -> Placement:
    return Placement(epoch=epoch, digest="", block_size=block_size,
                     owners=tuple(Owner(name, r.addr) for name, r in owners.items()), fusions=fusions, rule="ring",
                     replicas=replicas)


@pytest.fixture
def map_node():
    nodes = []

    def make(placement: Placement | None) -> MapNode:
        nodes.append(MapNode(placement))
        return nodes[-1]

    yield make
    for node in nodes:
        node.close()


# -- the 1.4 path: everything to the given address -----------------------------------------


def test_send_splits_by_channel_keeps_order_and_copies(router):
    rng = np.random.default_rng(3)
    channels = rng.integers(0, 3, 2_500)  # interleaved
    recs = entities(np.arange(2_500), channels, rng.normal(0, 1, 2_500))
    with Client(router.addr, batch=400, route=False) as client:
        assert client.send(recs) == 2_500
        recs["value"] = 99.0  # the caller reuses its array at once: what was sent stays
        got = _received(router, 2_500)
    assert all(len(r) <= 400 and (r["channel"] == ch).all() for ch, r in got)
    for ch in range(3):
        sent = np.concatenate([r for c, r in got if c == ch])
        want = recs[recs["channel"] == ch]
        assert np.array_equal(sent["id"], want["id"])  # in the caller's order
        assert not np.any(sent["value"] == 99.0)
    assert (client.sent_records, client.accepted, client.unconfirmed, dict(client.rejected)) == (2_500, 2_500, 0, {})
    assert not client.routed and client.owners_used == set() and "route=False" in client.why_unrouted


def test_a_node_that_ignores_the_map_request_gets_everything(map_node):
    node = map_node(None)  # a 1.4 node: an unknown type is dropped, nothing answers
    with Client(node.addr, batch=100, map_timeout=0.2) as client:
        client.send(entities(np.arange(250)))
    got = node.batches
    assert [r.epoch for r in node.requests] == [0]
    assert not client.routed and client.map_epoch == 0 and "did not answer the map request" in client.why_unrouted
    assert sum(len(r) for _, r in got) == 250 and client.accepted == 250
    producers = {env.msg.producer for env, _ in got}
    assert len(producers) == 1 and 0 < producers.pop() < 2**63  # idempotent even on the 1.4 path
    assert [env.msg.pseq for env, _ in got] == [1, 2, 3]
    assert {(env.msg.epoch, env.msg.acks, env.msg.hops) for env, _ in got} == {(0, 1, 0)}  # not split by a map


def test_a_map_without_owners_means_the_1_4_path(map_node, owners):
    node = map_node(Placement(epoch=3, digest="", block_size=100, owners=()))  # some member is older than 1.5
    with Client(node.addr, batch=100) as client:
        client.send(entities(np.arange(250)))
    got = node.batches
    assert (client.routed, client.map_epoch, client.why_unrouted) == (False, 3, OLD_CLUSTER)
    assert sum(len(r) for _, r in got) == 250 and client.accepted == 250
    assert all(not r.poll(0) for r in owners.values())


def test_the_window_holds_the_producer_until_the_node_answers(router):
    client = Client(router.addr, batch=10, window=4, route=False)
    sending = threading.Thread(target=client.send, args=(entities(np.arange(100)),))
    sending.start()
    first = []
    while len(first) < 4:  # the window: four batches come, then nothing until one is answered
        assert router.poll(5000)
        first.append(router.recv_multipart())
    assert not router.poll(300)  # (a pass proves nothing is lost by waiting longer)
    seen = 4
    for identity, *frames in first:
        _, env, _ = decode_message(frames, cluster="corec")
        _answer(router, identity, env.seq, env.msg.count)
    while seen < 10:
        assert router.poll(5000)
        identity, *frames = router.recv_multipart()
        _, env, _ = decode_message(frames, cluster="corec")
        _answer(router, identity, env.seq, env.msg.count)
        seen += 1
    sending.join(10)
    assert client.flush(10) and client.accepted == 100
    client.close()


def test_refusals_are_counted_and_busy_batches_offered_again_under_their_pseq(router):
    seen = []  # (first id, seq, pseq) of each batch as it came

    def node():  # batch 0..9 busy once, 10..19 malformed, the rest accepted
        while len(seen) < 4 and router.poll(5000):
            identity, *frames = router.recv_multipart()
            _, env, payload = decode_message(frames, cluster="corec")
            first_id = int(decode_batch(env.msg, payload)["id"][0])
            seen.append((first_id, env.seq, env.msg.pseq))
            if first_id == 0 and len(seen) == 1:
                _answer(router, identity, env.seq, 0, {"busy": 10})
            elif first_id == 10:
                _answer(router, identity, env.seq, 0, {"malformed": 10})
            else:
                _answer(router, identity, env.seq, 10)

    serving = threading.Thread(target=node)
    serving.start()
    with Client(router.addr, batch=10, retry_busy=30, route=False) as client:
        client.send(entities(np.arange(30)))
    serving.join(10)
    offers = [(seq, pseq) for first_id, seq, pseq in seen if first_id == 0]
    assert len(offers) == 2 and offers[0][0] != offers[1][0]  # offered again, under a new envelope seq
    assert offers[0][1] == offers[1][1] == 1  # and its first producer sequence: a retry never applies twice
    assert (client.accepted, dict(client.rejected), client.retries, client.unconfirmed) == (20, {"malformed": 10}, 1, 0)


def test_a_node_that_never_answers_leaves_records_unconfirmed(router):
    # an older node (protocol < 1.4) takes batches and answers nothing
    with Client(router.addr, batch=10, window=2, reply_timeout=0.3, route=False) as client:
        client.send(entities(np.arange(100)))
        assert client.silent  # it stopped waiting after the first reply_timeout
    assert (client.accepted, client.unconfirmed) == (0, 100)
    got = 0
    while got < 10 and router.poll(5000):  # the batches still went out
        router.recv_multipart()
        got += 1
    assert got == 10


def test_a_send_nobody_takes_times_out_when_asked_to():
    import socket as pysocket

    with pysocket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # 2000 one-record batches: past the 1000-batch queue
    recs = entities(np.arange(2_000), active=0)
    with Client(f"127.0.0.1:{port}", batch=1, timeout=0.2, map_timeout=0.1) as client:
        with pytest.raises(TimeoutError, match="did not take a batch within 0.2 s"):
            client.send(recs)
        assert "did not answer the map request" in client.why_unrouted
        for link in client._links.values():
            link.sock.setsockopt(zmq.LINGER, 0)  # nothing to wait for at close


def test_a_late_answer_moves_a_batch_from_unconfirmed_to_what_the_node_said(router):
    client = Client(router.addr, batch=10, window=1, reply_timeout=0.3, route=False)
    client.send(entities(np.arange(30)))  # the first waits out its timeout: no answer yet
    assert client.silent and client.unconfirmed == 30
    for _ in range(3):  # the node answers them all, late
        assert router.poll(5000)
        identity, *frames = router.recv_multipart()
        _, env, _ = decode_message(frames, cluster="corec")
        _answer(router, identity, env.seq, env.msg.count)
    eventually(lambda: client.flush() and client.unconfirmed == 0, 10)
    assert client.accepted == 30 and client.answered and not client.silent
    client.close()


@pytest.mark.parametrize("placement", [None, Placement(epoch=3, digest="", block_size=100, owners=())],
                         ids=["node-older-than-1.5", "member-older-than-1.5"])
def test_send_says_why_it_did_not_route(map_node, placement):
    import subprocess
    import sys

    node = map_node(placement)
    out = subprocess.run([sys.executable, "-m", "corec_node", "send", "--to", node.addr, "--channel", "1",
                          "--count", "2500"], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    why = (f"{node.addr} did not answer the map request within 1 s: older than 1.5, or unreachable"
           if placement is None else OLD_CLUSTER)
    assert out.stdout.rstrip().endswith(f": 2,500 accepted, 0 rejected, 0 unconfirmed; not routed ({why})"), out.stdout
    assert sum(len(r) for _, r in node.batches) == 2_500


def test_acks_must_be_0_1_or_all():
    for bad in (2, "1", True, None):
        with pytest.raises(ValueError, match="acks must be"):
            Client("127.0.0.1:1", acks=bad)


# -- owner-routed (SPEC 9.5) ---------------------------------------------------------------


def test_records_go_straight_to_their_owners_by_the_map_and_its_fusions(map_node, owners):
    fused = {"block": 1 << 32 | 7, "root": 1 << 32 | 2}  # channel 1: block 7 placed under block 2
    placement = _placement(owners, epoch=5, fusions=(fused,))
    node = map_node(placement)
    rng = np.random.default_rng(1)
    recs = entities(rng.permutation(3_000), rng.integers(0, 2, 3_000), rng.normal(0, 1, 3_000))
    with Client(node.addr, batch=250) as client:
        client.send(recs)
        got = {name: _batches(r) for name, r in owners.items()}
    assert client.routed and client.map_epoch == 5 and client.why_unrouted == ""
    assert not node.batches  # nothing but the map request reached the given address
    pmap = PlacementMap(0, owners)
    blocks = FusionTable({fused["block"]: fused["root"]}).resolve(block_ids_of(recs["channel"], recs["id"], 100))
    want = np.asarray(pmap.members)[pmap.owners(blocks)]
    everything = []
    for name, batches in got.items():
        mine = recs[want == name]
        assert len(mine) > 0
        sent = np.concatenate([r for _, r in batches])
        for ch in (0, 1):  # each owner got exactly its records, in the caller's order per channel
            assert np.array_equal(sent[sent["channel"] == ch], mine[mine["channel"] == ch])
        assert all(len(r) <= 250 for _, r in batches)
        everything += [env for env, _ in batches]
        pseqs = [env.msg.pseq for env, _ in batches]
        assert pseqs == sorted(pseqs)  # rising on each socket
    assert (recs["channel"] == 1).any() and (want[blocks == fused["root"]] == want[blocks == fused["root"]][0]).all()
    assert sorted(env.msg.pseq for env in everything) == list(range(1, len(everything) + 1))  # one sequence for all
    assert len({env.msg.producer for env in everything}) == 1 and everything[0].msg.producer == client.producer
    assert {(env.msg.epoch, env.msg.acks) for env in everything} == {(5, 1)}
    assert client.owners_used == {"a", "b", "c"} and sum(client.sent_by_owner.values()) == 3_000
    assert (client.accepted, client.unconfirmed, dict(client.rejected)) == (3_000, 0, {})


def _runs(items: list) -> int:
    return sum(1 for i, x in enumerate(items) if i == 0 or x != items[i - 1])


def test_with_replicas_an_owners_batches_are_cut_by_the_holders_of_their_blocks(map_node, owners):
    """With 2 copies an owner forwards each batch to the other holders of its blocks, one
    message per holder: the client sends an owner's blocks grouped by their holders, so a
    batch goes on to as few of them as the blocks allow; every record still reaches its owner
    and each block's records keep their order."""
    node = map_node(_placement(owners, replicas=2))
    ids = np.arange(6_000)
    recs = entities(np.concatenate([ids, ids[:600]]), 0, np.arange(6_600, dtype=np.float64))
    with Client(node.addr, batch=250) as client:
        client.send(recs)
        got = {name: _batches(r) for name, r in owners.items()}
    pmap = PlacementMap(0, owners, rule="ring")
    blocks = block_ids_of(recs["channel"], recs["id"], 100)
    want = np.asarray(pmap.members)[pmap.owners(blocks)]
    slabs = -(-len(recs) // (250 * 3 * 4))  # the client splits a few batches per owner at a time
    runs = {}
    for name, batches in got.items():
        sent = np.concatenate([r for _, r in sorted(batches, key=lambda b: b[0].msg.pseq)])
        mine = recs[want == name]
        assert sorted(sent["value"].tolist()) == sorted(mine["value"].tolist())
        sent_blocks = block_ids_of(sent["channel"], sent["id"], 100)
        for block in np.unique(sent_blocks):
            assert np.array_equal(sent["value"][sent_blocks == block], mine["value"][blocks[want == name] == block])
        sent_runs = _runs([tuple(pmap.holders(int(b), 2)) for b in sent_blocks])
        given_runs = _runs([tuple(pmap.holders(int(b), 2)) for b in blocks[want == name]])
        assert sent_runs <= 2 * slabs  # an owner's blocks have two holder sets here: each together in a slab
        runs[name] = (sent_runs, given_runs)
    assert sum(s for s, _ in runs.values()) < sum(g for _, g in runs.values()), runs
    assert client.accepted == 6_600


def test_the_window_is_per_owner(map_node, owners):
    node = map_node(_placement(owners, block_size=10))
    pmap = PlacementMap(0, owners)
    block = {name: next(b for b in range(1000) if pmap.owner(b) == name) for name in owners}
    # each slab (batch x owners = 30 records) is one batch of 10 for a, for b and for c
    slab = np.concatenate([block[name] * 10 + np.arange(10) for name in ("a", "b", "c")])
    client = Client(node.addr, batch=10, window=2)
    sending = threading.Thread(target=client.send, args=(entities(np.tile(slab, 5)),))
    sending.start()
    held = {name: [] for name in owners}
    for name, r in owners.items():
        while r.poll(500):
            held[name].append(r.recv_multipart())
    assert {name: len(b) for name, b in held.items()} == {"a": 2, "b": 2, "c": 2}  # 6 in flight: 2 per owner
    got = 6
    for name, r in owners.items():  # answer them, then the rest as it comes
        for identity, *frames in held[name]:
            _, env, _ = decode_message(frames, cluster="corec")
            _answer(r, identity, env.seq, env.msg.count)
    while got < 15:
        for r in owners.values():
            if r.poll(50):
                identity, *frames = r.recv_multipart()
                _, env, _ = decode_message(frames, cluster="corec")
                _answer(r, identity, env.seq, env.msg.count)
                got += 1
    sending.join(10)
    assert not sending.is_alive() and client.flush(5) and client.accepted == 150
    client.close()


def test_a_reply_with_a_newer_epoch_fetches_the_map_again(map_node, owners):
    node = map_node(_placement(owners, epoch=5))
    client = Client(node.addr, batch=100)
    client.send(entities(np.arange(1_000)))
    for r in owners.values():
        _batches(r, epoch=9)  # the nodes act on epoch 9 now
    assert client.flush(5) and client.accepted == 1_000 and client.map_epoch == 5
    node.placement = Placement(epoch=9, digest="", block_size=100, owners=(Owner("b", owners["b"].addr),))
    client.send(entities(np.arange(1_000, 2_000)))
    assert [r.epoch for r in node.requests] == [0, 5]  # asked again, naming the map it held
    assert client.map_epoch == 9 and client.map_fetches == 2
    later = {name: _batches(r) for name, r in owners.items()}
    assert sum(len(recs) for _, recs in later["b"]) == 1_000 and not later["a"] and not later["c"]
    assert {env.msg.epoch for env, _ in later["b"]} == {9}
    client.close()
    assert client.accepted == 2_000


def test_a_map_fetch_that_fails_keeps_the_old_map(map_node, owners):
    node = map_node(_placement(owners, epoch=5))
    client = Client(node.addr, batch=100, map_timeout=0.2)
    client.send(entities(np.arange(1_000)))
    for r in owners.values():
        _batches(r, epoch=9)
    assert client.flush(5)
    node.placement = None  # the node we were given is gone (or slow): the old map stays
    client.send(entities(np.arange(1_000, 2_000)))
    assert len(node.requests) == 2 and client.routed and client.map_epoch == 5
    later = {name: _batches(r) for name, r in owners.items()}
    assert all(later.values()) and {env.msg.epoch for b in later.values() for env, _ in b} == {5}
    client.close()
    assert client.accepted == 2_000


def test_acks_0_awaits_nothing_and_counts_records_unacknowledged(map_node, owners):
    node = map_node(_placement(owners))
    client = Client(node.addr, batch=100, window=1, acks=0)  # a window of 1 would hold a producer that waits
    client.send(entities(np.arange(3_000)))
    assert client.outstanding == 0 and client.flush(0)
    got = {name: _batches(r, answer=False) for name, r in owners.items()}
    assert sum(len(recs) for b in got.values() for _, recs in b) == 3_000
    assert {env.msg.acks for b in got.values() for env, _ in b} == {0}
    assert (client.sent_unacknowledged, client.accepted, client.unconfirmed, client.sent_records) == (3_000, 0, 0, 3_000)
    client.close()


def test_acks_all_is_1_on_the_wire(map_node, owners):
    node = map_node(_placement(owners))
    with Client(node.addr, batch=1_000, acks="all") as client:
        client.send(entities(np.arange(3_000)))
        got = [env for r in owners.values() for env, _ in _batches(r)]
    assert {env.msg.acks for env in got} == {1} and client.accepted == 3_000


def test_a_batch_refused_whole_as_not_owned_goes_to_the_owner_of_a_newer_map(map_node, owners):
    # a's map moved its blocks to b before a stored them: a refused the batch whole, so
    # nothing of it is anywhere; the client splits it by the newer map under the same pseq
    # (a newer batch that reached b meanwhile stands: SPEC 9.6)
    a, b = owners["a"], owners["b"]
    node = map_node(Placement(epoch=5, digest="", block_size=100, owners=(Owner("a", a.addr),), rule="ring"))
    seen: dict[str, list] = {"a": [], "b": []}

    def serve(name: str, router: Router, refuse: bool) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and sum(len(r) for _, r in seen[name]) < 100:
            if not router.poll(50):
                continue
            identity, *frames = router.recv_multipart()
            _, env, payload = decode_message(frames, cluster="corec")
            seen[name].append((env, decode_batch(env.msg, payload).copy()))
            if refuse:
                node.placement = Placement(epoch=6, digest="", block_size=100, owners=(Owner("b", b.addr),), rule="ring")
                _answer(router, identity, env.seq, 0, {"not_owner": env.msg.count}, epoch=6)
                return
            _answer(router, identity, env.seq, env.msg.count, epoch=6)

    threads = [threading.Thread(target=serve, args=("a", a, True)), threading.Thread(target=serve, args=("b", b, False))]
    for t in threads:
        t.start()
    with Client(node.addr, batch=100) as client:
        client.send(entities(np.arange(100)))
        assert client.flush(10)
    for t in threads:
        t.join(10)
    assert [len(r) for _, r in seen["a"]] == [100] and sum(len(r) for _, r in seen["b"]) == 100
    assert seen["b"][0][0].msg.pseq == seen["a"][0][0].msg.pseq
    assert (client.accepted, client.rerouted, dict(client.rejected)) == (100, 100, {})


def test_a_batch_refused_in_part_as_not_owned_is_offered_again_and_counted_once(map_node, owners):
    # a adopted a map that gives b some of the batch's blocks: a stored its own and forwarded
    # the rest to b, whose map still said a owns them (refused not_owner). The client offers
    # the whole batch again under the same pseq, split by the newer map: a answers duplicate
    # for what it stored (not counted twice), b stores the rest.
    a, b = owners["a"], owners["b"]
    newer = Placement(epoch=6, digest="", block_size=100, owners=(Owner("a", a.addr), Owner("b", b.addr)), rule="ring")
    node = map_node(Placement(epoch=5, digest="", block_size=100, owners=(Owner("a", a.addr),), rule="ring"))
    records = entities(np.arange(1_000))
    owned = partition(records, PlacementMap(6, ["a", "b"], rule="ring"), 100)
    assert set(owned) == {"a", "b"}, "the test needs blocks of both owners"
    stored: dict[str, list] = {"a": [], "b": []}
    pseqs: list[int] = []

    def serve(name: str, router: Router, offers: int) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(stored[name]) < offers:
            if not router.poll(50):
                continue
            identity, *frames = router.recv_multipart()
            _, env, payload = decode_message(frames, cluster="corec")
            got = decode_batch(env.msg, payload).copy()
            pseqs.append(env.msg.pseq)
            mine = np.isin(got["id"], owned[name]["id"])
            seen_before = np.concatenate(stored[name])["id"] if stored[name] else np.empty(0, np.uint32)
            again = np.isin(got["id"][mine], seen_before)
            dup = int(again.sum())
            stored[name].append(got[mine][~again])
            rejected = {"duplicate": dup} if dup else {}
            if (~mine).any():
                node.placement = newer
                rejected["not_owner"] = int((~mine).sum())
            _answer(router, identity, env.seq, int(mine.sum()) - dup, rejected, epoch=6)

    threads = [threading.Thread(target=serve, args=args) for args in (("a", a, 2), ("b", b, 1))]
    for t in threads:
        t.start()
    with Client(node.addr, batch=1_000) as client:
        client.send(records)
        assert client.flush(10)
    for t in threads:
        t.join(10)
    assert set(pseqs) == {1} and len(pseqs) == 3  # a's refused offer, then a's part and b's part
    for name in ("a", "b"):
        assert np.array_equal(np.sort(np.concatenate(stored[name])["id"]), np.unique(owned[name]["id"]))
    assert (client.accepted, client.duplicates, client.rerouted, dict(client.rejected)) == (1_000, 0, 1_000, {})
