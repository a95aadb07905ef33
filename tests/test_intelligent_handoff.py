"""Weights move with their blocks (shell/intelligence.py rule 6, NANO_WEIGHTS, SPEC 9.8): the
message packed and checked (shell/nano_handoff.py), the receiver's and the sender's rules on
an ``Intelligence`` with a stand-in trainer, and on real nodes: a node that joins gets the
trained models of the blocks the map gives it, and its forecasts go on from them."""

from __future__ import annotations

from importlib.util import find_spec
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from meshutil import WaveStream, eventually
from records import entities

from corec_node.engine.host import EngineHost
from corec_node.shell import nano_handoff
from corec_node.shell.intelligence import Intelligence, _Block
from corec_node.shell.nano_handoff import MAX_BLOB, Refused, pack, unpack
from corec_node.wire import decode_message, encode_message
from corec_node.wire.messages import MemberState, MemberStatus, NanoWeights

pytestmark = pytest.mark.timeout(120)

SMART = 1
ENV = {"COREC_ENGINE_TICK_INTERVAL": "0.2", "COREC_ENGINE_INTELLIGENT": str(SMART),
       "COREC_ENGINE_INTELLIGENT_SAVE_EVERY": "10", "COREC_ENGINE_AUDIT": "false",
       "COREC_ENGINE_EVOLVE_EVERY": "0"}
needs_torch = pytest.mark.skipif(find_spec("torch") is None,
                                 reason="torch is not installed (the optional 'ml' extra; CI installs it)")


def block(n: int, channel: int = SMART) -> int:
    return (channel << 32) | n


# -- the message -------------------------------------------------------------------------------


def test_weights_cross_the_wire_in_chunks_and_come_back_whole():
    items = [(block(n), 10 * n, bytes([n]) * (300_000 + n)) for n in range(8)]  # 2.4 MB in all
    messages = pack(items)
    assert len(messages) == 3 and all(len(p) <= nano_handoff.CHUNK_BYTES for _, p in messages)
    got = []
    for msg, payload in messages:
        frames = encode_message(msg, sender="a", seq=1, payload=payload)
        assert frames[0] == b"dir"
        _, env, body = decode_message(frames)
        assert env.minor >= nano_handoff.NANO_MINOR
        got += unpack(env.msg, body)
    assert got == items


@pytest.mark.parametrize(("rows", "payload", "reason"), [
    (({"block": 1, "ticks": 2},), b"x", "malformed"),  # no size
    (({"block": -1, "ticks": 2, "size": 1},), b"x", "malformed"),
    (({"block": 1, "ticks": 2.5, "size": 1},), b"x", "malformed"),
    (({"block": 1, "ticks": True, "size": 1},), b"x", "malformed"),
    (({"block": 1, "ticks": 2, "size": 2},), b"x", "malformed"),  # longer than the payload
    (({"block": 1, "ticks": 2, "size": 1},), b"xy", "malformed"),  # bytes left over
    (({"block": 1, "ticks": 2, "size": 0},), b"", "malformed"),
    (({"block": 1, "ticks": 2, "size": 1}, {"block": 1, "ticks": 3, "size": 1}), b"xy", "malformed"),  # twice
    (({"block": 1, "ticks": 2, "size": MAX_BLOB + 1},), b"x", "too_large"),
    (("row",), b"x", "malformed"),
])
def test_a_bad_message_is_refused_whole_with_its_reason(rows, payload, reason):
    with pytest.raises(Refused) as info:
        unpack(NanoWeights(rows=rows), payload)
    assert info.value.reason == reason and info.value.blocks == len(rows)


# -- the receiver and the sender, with a stand-in trainer ----------------------------------------


class FakeTrainer:
    def __init__(self) -> None:
        self.saved: dict[int, bytes] = {}
        self.loaded: list[tuple[int, bytes]] = []
        self.snapshots: list[list[int]] = []

    def weights(self, b: int) -> bytes | None:
        return self.saved.get(b)

    def load(self, b: int, blob: bytes) -> None:
        self.saved[b] = blob
        self.loaded.append((b, blob))

    def snapshot(self, blocks: list[int]) -> None:
        self.snapshots.append(list(blocks))

    def forget(self, b: int) -> None:
        self.saved.pop(b, None)

    def stats(self) -> SimpleNamespace:
        return SimpleNamespace(submitted=0, dropped=0, answered=0, restarts=0, load_errors=0, child_pid=None,
                               child_ready=False, child_rss=0, child_cpu=0.0)


def intelligence(*members: str) -> tuple[Intelligence, EngineHost]:
    engine = EngineHost("b", block_size=1000)
    if members:
        engine.set_members(members)
    intel = Intelligence((SMART,), 10, engine, recorder=None)
    intel.trainer = FakeTrainer()
    return intel, engine


def held_and_not(engine: EngineHost) -> tuple[int, int]:
    held = [block(n) for n in range(64) if intelligence_holds(engine, block(n))]
    other = [block(n) for n in range(64) if not intelligence_holds(engine, block(n))]
    return held[0], other[0]


def intelligence_holds(engine: EngineHost, b: int) -> bool:
    return Intelligence((SMART,), 10, engine, None)._holds(b)


def message(*items: tuple[int, int, bytes]) -> tuple[NanoWeights, bytes]:
    (msg, payload), = pack(list(items))
    return msg, payload


def test_the_receiver_loads_what_beats_its_own_model_and_counts_the_rest():
    intel, engine = intelligence("a", "b")
    mine, theirs = held_and_not(engine)
    members = {"a": "h:1", "b": "h:2"}
    trainer = intel.trainer
    intel.blocks[mine] = _Block(ticks=5)
    intel.received("a", *message((mine, 3, b"old")), members)  # fewer ticks than ours: kept
    assert intel.weights_kept == 1 and trainer.loaded == []
    intel.received("a", *message((mine, 40, b"trained")), members)
    assert trainer.loaded == [(mine, b"trained")] and intel.blocks[mine].ticks == 40
    assert intel.last_loaded == {"block": mine, "ticks": 40, "from": "a"}
    intel.received("x", *message((mine, 90, b"w")), members)  # not a member
    intel.received("b", *message((mine, 90, b"w")), members)  # our own name
    intel.received("a", *message((block(3, channel=2), 90, b"w")), members)  # not an intelligent channel
    intel.received("a", NanoWeights(rows=({"block": mine, "ticks": 1, "size": 9},)), b"short", members)
    intel.received("a", NanoWeights(rows=({"block": mine},)), None, members)
    intel.received("a", "not a message", object(), members)
    assert intel.weights_dropped == {"stranger": 2, "not_intelligent": 1, "malformed": 3}
    assert intel.weights_loaded == 1 and trainer.loaded == [(mine, b"trained")]
    # a block not held here waits for the map a while, then is dropped
    intel.received("a", *message((theirs, 7, b"early")), members)
    assert intel.status()["weights_parked"] == 1
    intel._parked[theirs] = (*intel._parked[theirs][:3], -1e9)  # its wait is over
    intel._unpark()
    assert intel.weights_dropped["not_held"] == 1 and not intel._parked


def copy_of(engine: EngineHost, b: int) -> None:
    """The block's copy applied (what the ingest worker does with a REPLICA_COPY)."""
    n = b & 0xFFFFFFFF
    engine.receive_handoff(entities(np.arange(n * 1000, n * 1000 + 10), b >> 32, 1.0))


def test_weights_for_a_block_without_a_row_yet_are_loaded_with_its_first_row():
    intel, engine = intelligence()  # alone: holds every block
    intel.received("a", *message((block(4), 12, b"w4")), {"a": "h:1"})
    assert intel._parked and block(4) not in intel._stored  # its copy is not in yet: the bytes wait
    copy_of(engine, block(4))
    intel._unpark()
    assert intel.weights_loaded == 0 and intel._stored[block(4)] == b"w4"
    state = intel._add(intel.trainer, block(4))
    assert intel.trainer.loaded == [(block(4), b"w4")] and state.ticks == 12
    assert intel.weights_loaded == 1 and intel.restored_blocks == 0


def test_a_parked_block_is_taken_once_the_map_gives_it():
    intel, engine = intelligence("a", "b")
    _, theirs = held_and_not(engine)
    intel.received("a", *message((theirs, 9, b"w")), {"a": "h:1"})
    assert theirs in intel._parked
    engine.set_members(["b"])  # a left: b holds everything
    intel._unpark()
    assert theirs in intel._parked  # held now, but its copy is not in yet
    copy_of(engine, theirs)
    intel._unpark()
    assert not intel._parked and intel._stored[theirs] == b"w" and intel._received[theirs] == (9, "a")


def test_the_sender_waits_for_fresh_weights_and_only_for_peers_that_know_the_message():
    intel, _ = intelligence()
    sent: list[tuple[str, Any, bytes]] = []
    intel.send = lambda holder, msg, payload, done: (sent.append((holder, msg, payload)), done(1))
    trainer = intel.trainer
    b1, b2 = block(1), block(2)
    for b in (b1, b2):
        intel.blocks[b] = _Block(ticks=30)
        trainer.saved[b] = b"stale"
    intel.peers([MemberState("c", "h:1", "h:2", 1, MemberStatus.ALIVE, protocol="1.12"),
                 MemberState("d", "h:3", "h:4", 1, MemberStatus.ALIVE, protocol="1.11")])
    intel.moved("c", [b1, b2, block(3, channel=2)])  # the plain channel's block has no model
    intel.moved("d", [b1])
    assert trainer.snapshots == [[b1, b2], [b1]]
    intel._send_moved()
    assert sent == [] and intel.weights_unsent == {"old_peer": 1}  # a 1.11 peer would refuse the type
    intel._send_moved()
    assert sent == [] and intel.status()["weights_waiting"] == 2  # the snapshot is not in yet
    trainer.saved[b1] = b"fresh-1"  # the child's snapshot came in for b1, not yet for b2
    intel._send_moved()
    (holder, msg, payload), = sent
    assert holder == "c" and unpack(msg, payload) == [(b1, 30, b"fresh-1")]
    assert intel.status()["weights_waiting"] == 1
    intel._outgoing[("c", b2)].since -= 60  # b2's snapshot never came: what there is goes
    intel._send_moved()
    assert unpack(*sent[1][1:]) == [(b2, 30, b"stale")]
    assert intel.weights_sent == 2 and intel.status()["weights_waiting"] == 0 and intel.weights_unsent == {"old_peer": 1}


# -- real nodes ----------------------------------------------------------------------------------


def smart_rows(node: Any) -> list[dict]:
    return [r for r in node.ctl("blocks", channel=SMART) if r.get("channel") == SMART]


@needs_torch
def test_a_joining_node_gets_the_trained_weights_of_the_blocks_it_is_given(cluster):
    """a trains 8 blocks alone; b joins (a learner first, then a member) and the map gives it
    some: a sends their models after their copies, b loads them (their ticks are a's) and
    forecasts on from them."""
    a = cluster.start("a", extra_env=ENV).wait_ready()
    with WaveStream(a, [(SMART, 8000)], period=6, every=0.2, seed=5):
        trained = eventually(lambda: (s := a.ctl("status")["intelligent"])["blocks"] == 8 and s["answered"] >= 15
                             and s, 60, interval=0.3, message="a trains a model for each of its 8 blocks")
        b = cluster.start("b", extra_env=ENV, join=[a.addr]).wait_ready()
        eventually(lambda: all(n.ctl("status")["placement_members"] == ["a", "b"] for n in (a, b)), 40,
                   message="b is a member")

        def given() -> list[dict] | None:
            rows = [r for r in smart_rows(b) if r.get("owner") == "b"]
            return rows if rows and all(isinstance(r.get("nano_forecast"), float) for r in rows) else None
        rows = eventually(given, 40, interval=0.3, message="b's rows of the blocks it was given carry nano_forecast")
        moved = len(rows)
        assert 0 < moved < 8
        try:
            intel_b = eventually(lambda: (s := b.ctl("status")["intelligent"])["weights_loaded"] >= moved and s, 30,
                                 message="b loaded a's weights of every block it was given")
        except AssertionError as exc:  # say where the weights went: sent, unsent, dropped, kept
            raise AssertionError(f"{exc}; moved {moved}; a: {a.ctl('status')['intelligent']}; "
                                 f"b: {b.ctl('status')['intelligent']}") from None
        intel_a = a.ctl("status")["intelligent"]
        # once per block (more only if a copy had to be sent again under a later map)
        assert intel_a["weights_sent"] >= intel_b["weights_received"] >= intel_b["weights_loaded"] >= moved
        assert intel_a["weights_unsent"] == {} and intel_b["weights_dropped"] == {}
        assert intel_b["load_errors"] == 0 and intel_b["restarts"] == 0
        loaded = intel_b["last_loaded"]
        assert loaded["from"] == "a" and loaded["block"] in {r["block"] for r in rows}
        assert loaded["ticks"] >= trained["answered"]  # a's model had trained all along: b goes on from it
    loaded_blocks = {int(e["block"]) for e in b.log_events() if e.get("event") == "nano_weights_loaded"}
    assert loaded_blocks == {r["block"] for r in rows}  # every block b was given, and only those
