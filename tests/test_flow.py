"""Ingest flow control (mesh/flow.py, SPEC 9.3): when to ask for a pause, how long one holds."""

from __future__ import annotations

import pytest

from corec_node.mesh.flow import HOLD_MS, MAX_HOLD_MS, REFRESH, FlowControl


def test_a_deep_backlog_asks_refreshes_and_releases_once():
    flow = FlowControl(high=800, low=400)
    asked = [flow.stream_queued(100, 0.0) for _ in range(7)]
    assert asked == [None] * 7 and not flow.asking
    assert flow.stream_queued(100, 0.001) == HOLD_MS and flow.asking  # 800 bytes queued
    assert flow.stream_queued(100, 0.002) is None  # asked a moment ago
    assert flow.stream_queued(100, 0.002 + REFRESH) == HOLD_MS  # still deep: asked again
    assert flow.stream_taken(200, 0.03) is None  # 800 left: not yet down to low
    assert flow.stream_taken(400, 0.031) == 0  # 400 left: the pause is over, said once
    assert flow.stream_taken(100, 0.032) is None and not flow.asking
    assert flow.requests == 2


def test_a_pause_holds_until_its_end_or_its_release():
    flow = FlowControl(high=8, low=4)
    assert flow.held_until(0.0) is None
    flow.peer_flow("b", 100, 1.0)
    flow.peer_flow("c", 40, 1.0)
    assert flow.held_until(1.01) == pytest.approx(1.1)  # the longest pause in force
    flow.peer_flow("b", 0, 1.02)  # b is done
    assert flow.held_until(1.03) == pytest.approx(1.04)
    assert flow.held_until(1.05) is None  # c's pause ran out: nothing is held by a silent member
    flow.peer_flow("d", 10**9, 2.0)  # an absurd request is capped
    assert flow.held_until(2.0) == pytest.approx(2.0 + MAX_HOLD_MS / 1000)


def test_taking_more_than_queued_never_goes_negative():
    flow = FlowControl(high=8, low=4)
    flow.stream_queued(3, 0.0)
    assert flow.stream_taken(5, 0.0) is None
    assert flow.backlog == 0
    with pytest.raises(ValueError):
        FlowControl(high=4, low=4)


def test_held_batches_are_counted_with_their_wait():
    flow = FlowControl(high=8, low=4)
    flow.peer_flow("b", 1000, 0.0)
    flow.held(0.25, 0.25)
    flow.held(0.5, 0.75)
    assert flow.holds == 2 and flow.held_seconds == pytest.approx(0.75)
    assert flow.status() == {"backlog": 0, "asking": False, "requests": 0, "holds": 2, "held_seconds": 0.75,
                             "paused_by": 1}


def test_the_pause_is_renewed_until_the_backlog_is_down_to_low():
    flow = FlowControl(high=800, low=400)
    assert flow.stream_queued(800, 0.0) == HOLD_MS
    assert flow.stream_taken(300, 0.5 * REFRESH) is None  # 500: between low and high
    assert flow.stream_taken(0, 2 * REFRESH) == HOLD_MS  # still above low: renewed
    assert flow.stream_taken(100, 3 * REFRESH) == 0  # down to low: released
    assert flow.stream_queued(300, 4 * REFRESH) is None  # 700: under high, not asking again
