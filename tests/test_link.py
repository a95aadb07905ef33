"""The link between a node's two processes (shell/link.py), on real ZeroMQ sockets: the
control lane never drops and keeps its order while the data lane is full, the data lane is
bounded in bytes and gets its credit back as the reader reads."""

from __future__ import annotations

import asyncio
import os
import shutil

import pytest

from corec_node.shell import link as link_mod
from corec_node.shell.link import BROADCAST, EVENT, LinkEnd, endpoint_for
from corec_node.shell.mesh_process import MeshOutbox
from corec_node.shell.traffic import Traffic
from corec_node.wire.messages import Alert, FusionPlan


async def _pair() -> tuple[str, LinkEnd, LinkEnd]:
    endpoint = endpoint_for(os.getpid())
    node = LinkEnd(endpoint, bind=True)
    mesh = LinkEnd(endpoint, bind=False)
    mesh.start(lambda kind, frames: None)  # it reads the credit the node end returns
    await asyncio.sleep(0.05)  # the connects complete
    return endpoint, node, mesh


async def _close(endpoint: str, *ends: LinkEnd) -> None:
    for end in ends:
        await end.close()
    shutil.rmtree(os.path.dirname(endpoint.removeprefix("ipc://")), ignore_errors=True)


async def _until(cond, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def test_control_lane_is_lossless_and_ordered_while_the_data_lane_is_full(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(link_mod, "LINK_BYTES", 1 << 20)

    async def scenario() -> None:
        endpoint, node, mesh = await _pair()
        try:
            chunk = b"x" * 10_000
            sent = 0
            while mesh.put([BROADCAST, chunk]):  # the node end reads nothing yet
                sent += 1
            assert mesh.dropped["link_full"] == 1
            assert 0 < mesh.in_flight <= link_mod.LINK_BYTES
            for i in range(5_000):
                assert mesh.put_object(EVENT, ("n", i))
            got: list[tuple[bytes, object]] = []

            def handler(kind: bytes, frames: list) -> None:
                import pickle

                got.append((kind, pickle.loads(frames[0]) if kind == EVENT else len(frames[0])))

            node.start(handler)
            await _until(lambda: len(got) == sent + 5_000)
            events = [value for kind, value in got if kind == EVENT]
            assert events == [("n", i) for i in range(5_000)]  # every one, in order
            assert sum(1 for kind, _ in got if kind == BROADCAST) == sent
            # the reader's credit comes back: the data lane takes more again
            step = link_mod.LINK_BYTES // link_mod.CREDIT_SHARE
            await _until(lambda: mesh.in_flight < step + len(chunk) + 1)
            assert mesh.put([BROADCAST, chunk])
        finally:
            await _close(endpoint, node, mesh)

    asyncio.run(scenario())


def test_credit_counts_the_same_bytes_on_both_ends() -> None:
    async def scenario() -> None:
        endpoint, node, mesh = await _pair()
        try:
            seen = []
            node.start(lambda kind, frames: seen.append(kind))
            big = memoryview(bytearray(100_000))  # a zero-copy frame on both sides
            for _ in range(200):
                assert mesh.put([BROADCAST, b"topic", big])
            await _until(lambda: len(seen) == 200)
            assert node.read_bytes == mesh.sent_bytes == 200 * (1 + 5 + 100_000)
            step = link_mod.LINK_BYTES // link_mod.CREDIT_SHARE
            await _until(lambda: mesh.credited_bytes >= mesh.sent_bytes - step)
        finally:
            await _close(endpoint, node, mesh)

    asyncio.run(scenario())


class _RecordingMesh:
    """Stands in for MeshHandle's two outgoing paths (no sockets involved)."""

    def __init__(self) -> None:
        self.operations: list[tuple] = []
        self.published: list[list] = []

    def operation(self, name: str, *args) -> None:
        self.operations.append((name, *args))

    def publish(self, frames) -> None:
        self.published.append(list(frames))


def test_nucleus_topic_messages_are_numbered_by_the_mesh_process() -> None:
    mesh = _RecordingMesh()
    outbox = MeshOutbox(mesh, Traffic(), name="a", cluster="corec")  # type: ignore[arg-type]
    plan = FusionPlan(term=3, fusions=())
    outbox.publish(plan)
    outbox.publish(Alert(kind="disk", text="full"))
    assert mesh.operations == [("publish", plan, None)]  # the heartbeats' counter numbers it
    assert len(mesh.published) == 1  # an alert's topic is the node process's own
