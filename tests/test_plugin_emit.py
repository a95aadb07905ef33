"""Plugins that act: ``node.emit`` puts entities into the mesh as a producer's batch.

Units first (the checks a plugin's arguments go through, the feedback rule, the hand-over
from a worker thread), then real ``corec-node run`` processes: a plugin in a local folder
(COREC_PLUGINS_PATHS) emits one derived entity per block it owns every tick, and every
node's ``blocks`` shows the derived channel; a plugin emitting garbage is faulted and
switched off while the node and the other plugin go on.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

from corec_node.config import Config
from corec_node.hookspecs import hookimpl
from corec_node.plugins import PluginManager
from corec_node.plugins.emit import EmitLoopError, emit_records
from corec_node.plugins.facade import NoEmit
from corec_node.shell.emitter import Emitter, NodeStopped
from corec_node.testing.cluster import Cluster, NodeProc, eventually
from corec_node.wire import decode_batch
from corec_node.wire.messages import BatchReply

pytestmark = pytest.mark.timeout(180)

# -- the checks -------------------------------------------------------------------------------


def test_emit_records_builds_one_channel_of_records():
    r = emit_records(9, np.arange(3, dtype=np.uint32), [1.5, 2.5, 3.5])
    assert r["channel"].tolist() == [9, 9, 9] and r["id"].tolist() == [0, 1, 2]
    assert r["value"].tolist() == [1.5, 2.5, 3.5] and r["active"].tolist() == [1, 1, 1]
    r = emit_records(np.uint8(4), [7, 8], 2.0, active=[True, False])  # scalar value broadcast
    assert r["value"].tolist() == [2.0, 2.0] and r["active"].tolist() == [1, 0]
    assert len(emit_records(1, [], [])) == 0


@pytest.mark.parametrize("args, error, text", [
    ((300, [1], [1.0]), ValueError, "channel must be 0..255"),
    ((-1, [1], [1.0]), ValueError, "channel must be 0..255"),
    ((True, [1], [1.0]), TypeError, "channel must be an int"),
    (("7", [1], [1.0]), TypeError, "channel must be an int"),
    ((5, [1, 2], [1.0]), ValueError, "2 ids but values of shape (1,)"),
    ((5, [1], [1.0, 2.0]), ValueError, "1 ids but values"),
    ((5, [-1], [1.0]), ValueError, "ids must be 0..4294967295"),
    ((5, [2**32], [1.0]), ValueError, "ids must be 0..4294967295"),
    ((5, [1.5], [1.0]), TypeError, "ids must be integers"),
    ((5, [[1]], [1.0]), ValueError, "ids must be a 1-D sequence"),
    ((5, [1], ["x"]), TypeError, "values must be numbers"),
    ((5, [1], [float("nan")]), ValueError, "finite"),
    ((5, [1], [1e300]), ValueError, "float32"),
    ((5, [1], [1.0], [2]), ValueError, "active must be bool or 0/1"),
])
def test_bad_arguments_raise_and_name_the_argument(args, error, text):
    with pytest.raises(error) as err:
        emit_records(*args)
    assert text in str(err.value)


class _Taker:
    """A node double with the node's emit entry point: records what it was handed, and where."""

    name = "a"
    data_dir = "/nonexistent"

    def __init__(self) -> None:
        self.config = Config()
        self.taken: list[tuple[str, np.ndarray, int]] = []

    def emit_entities(self, plugin: str, records: np.ndarray) -> int:
        self.taken.append((plugin, records, threading.get_ident()))
        return len(records)


class _Echo:
    """Subscribes to channel 3; from corec_entities emits onto ``target``; from
    corec_block_aggregates onto channel 3 (its own: allowed there)."""

    def __init__(self, target: int) -> None:
        self.target = target

    @hookimpl
    def corec_channels(self):
        return [3]

    @hookimpl
    def corec_entities(self, node, channel, records):
        node.emit(self.target, records["id"], records["value"])

    @hookimpl
    async def corec_block_aggregates(self, node, tick):
        node.emit(3, [tick], [1.0])


@pytest.mark.parametrize("target, loops", [(3, True), (4, False)])
async def test_emitting_from_corec_entities_onto_its_own_channel_is_a_fault(target, loops):
    pm = PluginManager(Config(), env={})
    pm.register(_Echo(target), "echo", source="builtin")
    node = _Taker()
    await pm.startup(node)
    batch = emit_records(3, [1, 2], [1.0, 2.0])
    await pm.entities(node, 3, batch)
    await pm.block_aggregates(node, 1, [])
    info = pm.info()[0]
    if loops:
        assert info["faults"] == 1 and "EmitLoopError" in info["last_error"] and "corec_entities" in info["last_error"]
        assert [(p, r["channel"].tolist()) for p, r, _ in node.taken] == [("echo", [3])]  # the tick's emit only
    else:
        assert info["faults"] == 0
        assert sorted(r["channel"][0] for _, r, _ in node.taken) == [3, 4]
    assert all(p == "echo" for p, _, _ in node.taken)
    await pm.shutdown(node)


def test_emit_loop_error_is_a_value_error():
    assert issubclass(EmitLoopError, ValueError)


async def test_a_node_without_emit_says_so():
    class Bare:
        name, data_dir, config = "a", "/nonexistent", Config()

    pm = PluginManager(Config(), env={})
    pm.register(_Echo(4), "echo", source="builtin")
    with pytest.raises(NoEmit):
        pm.facade("echo", Bare()).emit(1, [1], [1.0])


async def test_emitter_hands_over_from_a_worker_thread_on_the_loop():
    """A sync hook's thread returns at once; the batch reaches the data plane on the loop,
    as a producer's (direct, acks 1, from this node), and its answer is counted."""
    from corec_node.plugins.records import PluginRecord

    rec = PluginRecord("p", "builtin")
    seen: list[tuple] = []

    def take(env, payload, where, answer):
        seen.append((env, decode_batch(env.msg, payload), where, threading.get_ident()))
        answer(BatchReply(seq=env.seq, accepted=len(seen[-1][1]) - 1, rejected={"busy": 1}, epoch=0))

    emitter = Emitter(name="a", cluster="corec", take=take, records={"p": rec}.get)
    with pytest.raises(NodeStopped):
        emitter.emit("p", emit_records(1, [1], [1.0]))
    emitter.bind(asyncio.get_running_loop())
    records = emit_records(2, np.arange(5), np.arange(5.0))
    assert await asyncio.to_thread(emitter.emit, "p", records) == 5
    await asyncio.sleep(0.01)
    [(env, got, where, thread)] = seen
    assert where == "direct" and env.sender == "a" and env.msg.acks == 1 and env.msg.channel == 2
    assert thread == threading.get_ident() and got.tolist() == records.tolist()
    assert (rec.emitted, rec.emit_accepted, rec.emit_refused) == (5, 4, {"busy": 1})
    assert rec.info()["emitted"] == 5


# -- real nodes -------------------------------------------------------------------------------

SOURCE, DERIVED, BLOCK_SIZE = 1, 9, 1000

DERIVE = '''
    """Every tick: one entity on channel 9 per channel-1 block this node owns, in block 9:k
    for block 1:k (id k * 1000), valued the block's count. A sync hook (a worker thread)."""
    from corec_node.hookspecs import hookimpl

    @hookimpl
    def corec_block_aggregates(node, tick, aggregates):
        rows = [r for r in aggregates if r["channel"] == 1]
        if rows:
            node.emit(9, [(r["block"] & 0xFFFFFFFF) * 1000 for r in rows], [float(r["count"]) for r in rows])
'''

GARBAGE = '''
    """Emits garbage from an async hook: a channel out of range, then mismatched lengths."""
    from corec_node.hookspecs import hookimpl

    CALLS = [0]

    @hookimpl
    async def corec_block_aggregates(node, tick):
        CALLS[0] += 1
        if CALLS[0] % 2:
            node.emit(300, [1], [1.0])
        else:
            node.emit(5, [1, 2], [1.0])
'''


def _folder(tmp_path, **plugins: str):
    folder = tmp_path / "organs"
    folder.mkdir(exist_ok=True)
    for name, text in plugins.items():
        (folder / f"{name}.py").write_text(textwrap.dedent(text))
    return {"COREC_PLUGINS_PATHS": str(folder), "COREC_ENGINE_TICK_INTERVAL": "0.2"}


def _settled(nodes: list[NodeProc]) -> None:
    names = sorted(n.name for n in nodes)

    def agreed() -> bool:
        status = [n.ctl("status") for n in nodes]
        return all(s["members"].get("alive") == len(nodes) and s["routed"]
                   and sorted(s["placement_members"]) == names for s in status)

    eventually(agreed, 60, message=f"{names} alive, routed, with one map")


def _send(node: NodeProc, channel: int, count: int) -> None:
    sent = subprocess.run([sys.executable, "-m", "corec_node", "send", "--to", node.addr, "--channel", str(channel),
                           "--count", str(count)], capture_output=True, text=True, timeout=60)
    assert sent.returncode == 0, sent.stderr


def _derived(node: NodeProc) -> list[dict]:
    return [r for r in node.ctl("blocks") if r["channel"] == DERIVED]


def test_a_plugin_emits_derived_entities_that_every_node_sees(tmp_path):
    env = _folder(tmp_path, derive=DERIVE)
    cluster = Cluster(tmp_path / "nodes")
    try:
        a = cluster.start("a", extra_env=env).wait_ready(30)
        nodes = [a, *(cluster.start(n, join=[a.addr], extra_env=env).wait_ready(30) for n in ("b", "c"))]
        _settled(nodes)
        _send(a, SOURCE, 6 * BLOCK_SIZE)  # blocks 1:0 .. 1:5, spread over the three owners

        def derived_everywhere() -> bool:
            for node in nodes:
                rows = _derived(node)
                if sum(r["count"] for r in rows) != 6 or any(r["mean"] != BLOCK_SIZE for r in rows):
                    return False
            return True

        eventually(derived_everywhere, 60, message="channel 9: one entity per channel-1 block, on every node")
        for node in nodes:
            rows = _derived(node)
            assert all(r["min"] == r["max"] == BLOCK_SIZE and r["active"] == r["count"] for r in rows), rows
        # each derived entity sits in its block 9:k, owned where placement says: some were forwarded
        owners = {r["owner"] for r in _derived(a)}
        emitters = {n.name: next(p for p in n.ctl("plugins") if p["name"] == "derive") for n in nodes}
        assert all(p["faults"] == 0 for p in emitters.values()), emitters
        assert sum(p["emitted"] for p in emitters.values()) >= 6
        eventually(lambda: sum(next(p for p in n.ctl("plugins") if p["name"] == "derive")["emit_accepted"]
                               for n in nodes) >= 6, 20, message="emissions answered as accepted")
        counted = sum(n.ctl("status")["producers"]["records"] for n in nodes)
        assert counted >= 6 * BLOCK_SIZE + 6  # counted as producers' records, where they came in
        if len(owners) > 1:
            assert sum(n.ctl("status")["producers"]["forwarded"] for n in nodes) > 0
        # every tick emits again: the same ids are updated, not added
        tick = max(r["tick"] for r in _derived(a))
        eventually(lambda: min(r["tick"] for r in _derived(a)) > tick + 3, 20, message="derived blocks tick on")
        assert sum(r["count"] for r in _derived(a)) == 6
    finally:
        cluster.close()


def test_a_plugin_emitting_garbage_is_faulted_and_the_node_goes_on(tmp_path):
    env = _folder(tmp_path, derive=DERIVE, garbage=GARBAGE)
    cluster = Cluster(tmp_path / "nodes")
    try:
        a = cluster.start("a", extra_env=env).wait_ready(30)
        b = cluster.start("b", join=[a.addr], extra_env=env).wait_ready(30)
        _settled([a, b])
        _send(a, SOURCE, 3 * BLOCK_SIZE)

        def garbage(node: NodeProc) -> dict:
            return next(p for p in node.ctl("plugins") if p["name"] == "garbage")

        for node in (a, b):
            eventually(lambda node=node: garbage(node)["state"] == "disabled", 30, message=f"{node.name}: garbage off")
            row = garbage(node)
            assert row["faults"] >= 3 and row["emitted"] == 0, row
            faults = [e for e in node.log_events() if e.get("event") == "plugin_fault" and e.get("plugin") == "garbage"]
            errors = " | ".join(e["error"] for e in faults)
            assert "channel must be 0..255, got 300" in errors and "2 ids but values of shape (1,)" in errors, errors
        # the nodes live on, nothing of the garbage went in, and the other plugin still emits
        eventually(lambda: sum(r["count"] for r in _derived(a)) == 3, 30, message="derive still works")
        for node in (a, b):
            assert node.proc.poll() is None and node.ctl("status")["name"] == node.name
            channels = {r["channel"] for r in node.ctl("blocks")}
            assert channels == {SOURCE, DERIVED}, channels
    finally:
        cluster.close()
