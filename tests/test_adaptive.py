"""The adaptive layer of one node (engine/adaptive.py): which genome a block starts with,
rows that carry forecasts and genomes, holders that follow their owner, trials only on
owned blocks, and what survives a restart."""

from __future__ import annotations

import json

import numpy as np
import pytest

from corec_node.engine.adaptive import (
    DEFAULT,
    GENOME_REFRESH,
    SPEC_KEY,
    AdaptiveBlocks,
    genome_text,
)
from corec_node.engine.evolution import Challenge
from corec_node.engine.genome import make

SEASONAL = make({"season": 4, "alpha": 0.3, "gamma": 0.3}, generation=3, parents=("a" * 16,))


def series(t: int, blocks: int) -> np.ndarray:
    return 10 + 3 * np.sin(2 * np.pi * (t + np.arange(blocks)) / 4)


def run(layer: AdaptiveBlocks, blocks: np.ndarray, ticks: range) -> list:
    records = []
    for t in ticks:
        records += layer.step(blocks, series(t, len(blocks)), t)
    return records


def rows_for(blocks: np.ndarray) -> list[dict]:
    return [{"block": int(b), "channel": int(b >> 32), "mean": 1.0} for b in blocks]


def test_rows_carry_forecasts_and_the_genome_spec_when_it_changed_or_in_turn():
    layer = AdaptiveBlocks()
    blocks = np.array([1 << 32, (1 << 32) + 1], np.int64)
    run(layer, blocks, range(60))
    turn = {int(b): -int(b) % GENOME_REFRESH for b in blocks}  # the tick (mod the refresh) of each block's turn
    quiet = next(t for t in range(60, 200) if all((t + b) % GENOME_REFRESH for b in turn))
    rows = rows_for(blocks)
    layer.annotate(rows, quiet)
    for r in rows:
        assert isinstance(r["forecast"], float) and r["generation"] == 0 and r["genome"] == DEFAULT.id
        assert r["forecast_error"] is not None  # 48 scored ticks: the default window
        assert SPEC_KEY not in r  # the default genome needs no spec, and it is not this block's turn
    assert layer.spec_of(rows[0]) is DEFAULT  # every node knows the default
    b = int(blocks[0])
    rows = rows_for(blocks)
    layer.annotate(rows, GENOME_REFRESH * 10 + turn[b])
    assert [SPEC_KEY in r for r in rows] == [True, False]  # block b's turn only
    assert json.loads(rows[0][SPEC_KEY])["id"] == DEFAULT.id
    layer.observe_row({"block": b + 1, SPEC_KEY: genome_text(SEASONAL)}, ours=False)  # its owner's genome
    rows = rows_for(blocks)
    layer.annotate(rows, quiet)
    assert SPEC_KEY not in rows[0] and json.loads(rows[1][SPEC_KEY])["id"] == SEASONAL.id  # not the one it sent
    rows = rows_for(blocks)
    layer.annotate(rows, quiet + 1)
    assert all(SPEC_KEY not in r for r in rows)  # sent once
    rows = [{"block": 99}]
    layer.annotate(rows, 62)
    assert rows == [{"block": 99}]  # a block we do not hold: nothing said about it


def test_a_block_starts_with_the_genome_the_cluster_published_then_a_saved_one_then_the_default():
    layer = AdaptiveBlocks()
    a, b, c = (1 << 32) + 1, (1 << 32) + 2, (1 << 32) + 3
    layer.observe_row({"block": a, SPEC_KEY: genome_text(SEASONAL)}, ours=False)
    other = make({"alpha": 0.5}, generation=1)
    layer.restore_saved([(b, genome_text(other), None), (c, "not json", None)])
    run(layer, np.array([a, b, c], np.int64), range(3))
    assert layer.genomes[a] == SEASONAL and layer.genomes[b] == other and layer.genomes[c] == DEFAULT
    assert layer.forecasts.genome_params(a)["season"] == 4


def test_a_holder_follows_the_genome_its_owner_publishes_but_an_owner_keeps_its_own():
    layer = AdaptiveBlocks()
    blocks = np.array([7, 8], np.int64)
    run(layer, blocks, range(10))
    layer.observe_row({"block": 7, SPEC_KEY: genome_text(SEASONAL)}, ours=False)
    layer.observe_row({"block": 8, SPEC_KEY: genome_text(SEASONAL)}, ours=True)
    layer.observe_row({"block": 8, SPEC_KEY: "{broken"}, ours=False)  # a peer's bad bytes: ignored
    assert layer.genomes[7] == SEASONAL and layer.genomes[8] == DEFAULT
    assert layer.known[8] == SEASONAL  # learnt for when it becomes ours


def test_a_spec_seen_before_is_not_parsed_again_and_bad_bytes_are_never_remembered():
    layer = AdaptiveBlocks()
    text = genome_text(SEASONAL)
    first = layer._intern(text)
    assert first == SEASONAL and layer._intern(text) is first  # each owner resends specs in turn
    assert layer._intern("{broken") is None and layer._intern("{broken") is None
    assert layer._intern(42) is None  # not text: a peer's row is checked only for form
    assert "{broken" not in layer._by_text


def test_trials_run_only_on_owned_blocks_and_a_winning_challenger_replaces_the_genome():
    layer = AdaptiveBlocks()
    blocks = np.array([1, 2, 3], np.int64)
    run(layer, blocks, range(20))
    plan = [Challenge(b, SEASONAL, DEFAULT) for b in (1, 2)] + [Challenge(3, SEASONAL, SEASONAL)]
    assert layer.start_trials(plan, owned=lambda b: b != 2) == 1  # 2 not ours; 3's genome moved on
    records = run(layer, blocks, range(20, 200))
    assert [(r.kind, r.subject) for r in records] == [("genome_replaced", "block 0:1")]
    assert records[0].details["challenger"] == SEASONAL.id and records[0].details["current"] == DEFAULT.id
    assert layer.genomes[1] == SEASONAL and layer.genomes[2] == DEFAULT
    assert layer.replaced == 1
    error = layer.forecasts.scaled_error(np.array([1, 2]))
    assert error[0] < 0.5 * error[1]  # the seasonal genome forecasts a seasonal series far better


def test_what_a_block_learned_survives_a_restart():
    before = AdaptiveBlocks()
    blocks = np.array([5, 6], np.int64)
    run(before, blocks, range(80))
    saved = [(b, text, json.loads(json.dumps(state))) for b, text, state in before.export()]  # as SQLite keeps it
    after = AdaptiveBlocks()
    assert after.restore_saved(saved) == 2
    run(before, blocks, range(80, 81))
    run(after, blocks, range(80, 81))
    np.testing.assert_array_equal(before.forecasts.predict(blocks), after.forecasts.predict(blocks))
    assert np.isfinite(after.forecasts.scaled_error(blocks)).all()


def test_blocks_no_longer_held_are_dropped_and_their_trials_cancelled():
    layer = AdaptiveBlocks()
    run(layer, np.array([1, 2], np.int64), range(5))
    layer.start_trials([Challenge(2, SEASONAL, DEFAULT)], owned=lambda b: True)
    run(layer, np.array([1], np.int64), range(5, 6))
    assert set(layer.genomes) == {1} and 2 not in layer.forecasts and not layer.trials.on_trial()


def test_the_kernel_gene_chooses_how_a_block_regenerates_its_entities():
    from records import entities

    from corec_node.engine.host import EngineHost

    host = EngineHost("a", block_size=100, max_errors=1.0)
    host.use_kernels({"answer": lambda values, state: np.full_like(values, 42.0)},
                     {7: {"kernel": "answer"}, 5: {"season": 12, "alpha": 0.3}})
    with pytest.raises(ValueError, match="no kernel 'nope'"):
        host.use_kernels({}, {8: {"kernel": "nope"}})
    assert (host.adaptive.first[5]["season"], host.adaptive.first[5]["alpha"]) == (12, 0.3)
    host.ingest(entities(np.arange(4), 7, 10.0), sweep=False)  # block 7:0, kernel "answer"
    host.ingest(entities(np.arange(4), 6, 10.0), sweep=False)  # block 6:0, the default: its mean
    host.tick()
    assert host.adaptive.genomes[7 << 32]["kernel"] == "answer"
    assert host.adaptive.genomes[6 << 32]["kernel"] == "mean"
    for _ in range(2):  # two errors in a row: regenerated
        host.ingest(entities([0], 7, np.nan), sweep=False)
        host.ingest(entities([0], 6, np.nan), sweep=False)
    _, records = host.tick()
    assert sorted((r.channel, r.kind) for r in records) == [(6, "regenerate"), (7, "regenerate")]
    st = host.store.state()
    values = {int(c): float(v) for i, c, v in zip(st["id"], st["channel"], st["value"]) if i == 0}
    assert values == {6: 10.0, 7: 42.0}


def test_a_kernel_that_fails_keeps_the_mean_and_a_peers_bad_genome_is_ignored():
    from records import entities

    from corec_node.engine.adaptive import parse_genome
    from corec_node.engine.host import EngineHost

    def broken(values, state):
        raise RuntimeError("a plugin's bug")

    host = EngineHost("a", block_size=100, max_errors=1.0)
    host.use_kernels({"broken": broken, "short": lambda values, state: np.append(values, 0.0)},
                     {7: {"kernel": "broken"}, 6: {"kernel": "short"}})
    host.ingest(entities(np.arange(4), 7, 10.0), sweep=False)
    host.ingest(entities(np.arange(4), 6, 10.0), sweep=False)
    host.tick()
    for _ in range(2):
        host.ingest(entities([0], 7, np.nan), sweep=False)
        host.ingest(entities([0], 6, np.nan), sweep=False)
    _, records = host.tick()  # the tick goes on
    assert sorted(r.channel for r in records) == [6, 7] and host.kernel_faults == 2
    st = host.store.state()
    assert {int(c): float(v) for i, c, v in zip(st["id"], st["channel"], st["value"]) if i == 0} == {6: 10.0, 7: 10.0}
    assert parse_genome("[" * 5000) is None and parse_genome(7) is None  # deep nesting, not text
    layer = AdaptiveBlocks()
    (standing,) = layer.standings([{"block": 5, "genome": DEFAULT.id, "fitness": "high", "forecast_error": None}])
    assert standing.genome is DEFAULT  # a text fitness from a peer is no number, and no crash


def test_a_restored_season_moves_on_by_the_ticks_the_node_was_down():
    before = AdaptiveBlocks()
    before.first[0] = SEASONAL  # season 4
    blocks = np.array([5], np.int64)
    run(before, blocks, range(80))
    saved = [(b, text, json.loads(json.dumps(state))) for b, text, state in before.export()]
    for _ in range(3):  # down for ticks 80-82: what it would have done, with nothing observed
        before.forecasts.update(blocks, [np.nan])
    after, unaware = AdaptiveBlocks(), AdaptiveBlocks()
    assert after.restore_saved(saved, gap=3) == 1 and unaware.restore_saved(saved) == 1
    for layer in (after, unaware):  # back at tick 83, the first tick of the new process
        layer.step(blocks, series(83, 1), 1)
    before.forecasts.update(blocks, series(83, 1))
    np.testing.assert_allclose(after.forecasts.predict(blocks), before.forecasts.predict(blocks))
    want = series(84, 1)[0]
    assert abs(after.forecasts.predict(blocks)[0] - want) < 0.2 * abs(unaware.forecasts.predict(blocks)[0] - want)
