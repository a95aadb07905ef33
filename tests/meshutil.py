"""Test helpers: the package's local cluster tools under the names the tests use, and a
producer thread that streams waves."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence

import numpy as np
from records import entities

from corec_node.client import Client
from corec_node.testing.cluster import Cluster, NodeProc, eventually, free_port

__all__ = ["Cluster", "NodeProc", "WaveStream", "eventually", "free_port", "until"]


async def until(check: Callable[[], object], timeout: float = 10.0) -> None:
    """In a running loop: wait (polling every 5 ms) until ``check()`` is true."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not check():
        assert loop.time() < end, "timed out"
        await asyncio.sleep(0.005)


class WaveStream:
    """A producer thread: for each ``(channel, count)`` of ``parts``, ``count`` entities whose
    values follow a wave of ``period`` sends plus noise, one step per send every ``every``
    seconds (about a tick), until stopped (``with WaveStream(node, ...):``)."""

    def __init__(self, node: NodeProc, parts: Sequence[tuple[int, int]], *, period: int,
                 every: float, seed: int = 3) -> None:
        self.node, self.parts, self.period, self.every, self.seed = node, parts, period, every, seed
        self.stop, self.t = threading.Event(), 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        rng = np.random.default_rng(self.seed)
        with Client(self.node.addr) as client:
            while not self.stop.is_set():
                wave = 10 + 3 * np.sin(2 * np.pi * self.t / self.period)
                for channel, count in self.parts:
                    client.send(entities(np.arange(count), channel, wave + rng.normal(0, 0.1, count)))
                client.flush(5)
                self.t += 1
                self.stop.wait(self.every)

    def __enter__(self) -> WaveStream:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(20)
