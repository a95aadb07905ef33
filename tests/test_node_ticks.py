"""The node process's engine tick schedule: ticks keep their interval while they fit in it,
and a tick that overran never has the next one follow at once (the loop stays free a share
of its length for commands, replies and ingest). A real node, not started: its tick driven
by hand, with a data plane tick slowed for the test."""

from __future__ import annotations

import time

import pytest

from corec_node.config import load_config
from corec_node.shell.node import TICK_SLACK, Node, next_engine_tick


def test_on_time_ticks_keep_their_interval():
    assert next_engine_tick(10.0, 1.0, 10.0, 0.05) == 11.0
    assert next_engine_tick(10.0, 1.0, 10.4, 0.05) == 11.0  # a little late: the beat is kept


@pytest.mark.parametrize("took", [1.0, 1.5, 4.0])
def test_an_overrun_tick_leaves_the_loop_free_before_the_next(took):
    started = 10.0
    due = next_engine_tick(10.0, 1.0, started, took)
    assert due - (started + took) >= TICK_SLACK * took - 1e-9  # never back to back
    assert due - (started + took) < took  # and not skipped for long: the slack only


def test_a_node_whose_ticks_run_long_still_gives_the_loop_its_share(tmp_path):
    config = load_config(env={"COREC_ENGINE_TICK_INTERVAL": "0.02"},
                         overrides={"node.name": "a", "node.data_dir": str(tmp_path)})
    node = Node(config)
    runs: list[tuple[float, float]] = []

    def slow_tick() -> None:  # 50 ms: over twice the interval
        begun = time.monotonic()
        time.sleep(0.05)
        runs.append((begun, time.monotonic()))

    node.data.tick = slow_tick
    node._next_engine_tick = time.monotonic()
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:  # the tick loop's calls, as often as it could make them
        node._tick(time.monotonic())
        time.sleep(0.001)
    assert len(runs) >= 5
    free = [b - a_end for (_, a_end), (b, _) in zip(runs, runs[1:], strict=False)]
    assert min(free) >= TICK_SLACK * 0.05 * 0.9, free  # each gap at least half a tick's length


def test_a_tick_that_raises_is_not_run_again_at_once(tmp_path):
    config = load_config(env={"COREC_ENGINE_TICK_INTERVAL": "0.5"},
                         overrides={"node.name": "a", "node.data_dir": str(tmp_path)})
    node = Node(config)
    calls = []

    def failing_tick() -> None:
        calls.append(time.monotonic())
        raise RuntimeError("a bug in a core")

    node.data.tick = failing_tick
    now = time.monotonic()
    node._next_engine_tick = now
    with pytest.raises(RuntimeError):
        node._tick(now)
    node._tick(now + 0.1)  # the loop's next wake: the failed tick is not due again yet
    assert len(calls) == 1
    assert node._next_engine_tick == pytest.approx(now + 0.5)
