"""engine/audit.py: IsolationForest over block aggregates flags planted anomalies."""

from __future__ import annotations

import numpy as np
import pytest
from records import entities

from corec_node.engine import EntityStore, aggregate, aggregate_rows
from corec_node.engine.audit import (
    FEATURES,
    AlertGate,
    AuditFinding,
    Auditor,
    AuditRecord,
    features,
)

BLOCKS_PER_CHANNEL = 300
CHANNELS = {1: 20.0, 2: 1000.0}  # two scales: a temperature, a pressure


def normal_rows(tick: int, rng: np.random.Generator) -> list[dict]:
    rows = []
    for ch, level in CHANNELS.items():
        for b in range(BLOCKS_PER_CHANNEL):
            mean = level + rng.normal(0, level * 0.01)
            std = level * 0.05 * (1 + rng.normal(0, 0.05))
            active = int(1000 - rng.integers(0, 20))
            rows.append({"block": (ch << 32) | b, "channel": ch, "owner": "a", "count": 1000, "active": active,
                         "mean": mean, "std": std, "min": mean - 3 * std, "max": mean + 3 * std,
                         "error_rate": float(rng.integers(0, 3)) / 1000, "fitness": 0.9 + rng.normal(0, 0.005),
                         "tick": tick})
    return rows


def plant(rows: list[dict]) -> set[tuple[int, int]]:
    """Four kinds of sick block; returns their (channel, number)."""
    def row(ch: int, b: int) -> dict:
        return rows[(ch - 1) * BLOCKS_PER_CHANNEL + b]

    row(1, 5)["mean"] *= 1.5  # a shifted level
    r = row(2, 7)
    r["active"], r["fitness"] = 100, 0.05  # most entities dead
    r = row(1, 100)
    r["error_rate"], r["fitness"] = 0.4, 0.5  # erroring
    r = row(2, 250)
    r["std"] *= 5
    r["min"], r["max"] = r["mean"] - 15 * r["std"], r["mean"] + 15 * r["std"]  # noisy
    return {(1, 5), (2, 7), (1, 100), (2, 250)}


def found(findings: list[AuditFinding]) -> set[tuple[int, int]]:
    return {(f.channel, f.block & 0xFFFFFFFF) for f in findings}


def test_planted_anomalies_are_flagged_and_normal_blocks_mostly_not():
    rng = np.random.default_rng(3)
    auditor = Auditor(contamination=0.001, refit_every=5, random_state=0)
    false_flags = 0
    for tick in range(1, 26):
        findings, _ = auditor.step(normal_rows(tick, rng), tick)
        if tick > 1:
            false_flags += len(findings)
    normal_total = 24 * len(CHANNELS) * BLOCKS_PER_CHANNEL
    assert false_flags <= 0.005 * normal_total, false_flags

    rows = normal_rows(26, rng)
    planted = plant(rows)
    findings, records = auditor.step(rows, 26)
    assert planted <= found(findings), [(f.channel, f.block & 0xFFFF, f.reason) for f in findings]
    assert len(findings) - len(planted) <= 3
    assert findings == sorted(findings, key=lambda f: -f.score)
    assert all(f.score > 0 and f.tick == 26 for f in findings)
    # each flag is a decision record for the audit log
    flags = [r for r in records if r.kind == "audit_flag"]
    assert len(flags) == len(findings)
    shifted = next(f for f in findings if (f.channel, f.block & 0xFFFF) == (1, 5))
    assert "mean" in shifted.reason and "channel 1" in shifted.reason
    assert shifted.deviations["mean"] > 10
    assert shifted.record().subject == "block 1:5"
    assert shifted.alert()["kind"] == "audit_anomaly"


def test_anomalies_never_train_the_model_that_judges_them():
    rng = np.random.default_rng(4)
    auditor = Auditor(contamination=0.001, refit_every=1, random_state=0, min_rows=100)
    for tick in range(1, 6):
        auditor.step(normal_rows(tick, rng), tick)
    rows = normal_rows(6, rng)
    planted = plant(rows)
    findings, records = auditor.step(rows, 6)  # scored before observed (and refitted)
    assert planted <= found(findings)
    assert records[0].kind == "audit_refit"


def test_refit_schedule_window_and_records():
    rng = np.random.default_rng(5)
    auditor = Auditor(contamination=0.01, refit_every=3, random_state=0, window=4, min_rows=1000)
    kinds = {}
    for tick in range(1, 12):
        kinds[tick] = [r for r in auditor.observe(normal_rows(tick, rng), tick)]
    refits = [t for t, recs in kinds.items() if recs]
    assert refits == [2, 5, 8, 11]  # first when min_rows (600 rows a tick) is reached, then every 3 ticks
    rec = kinds[11][0]
    assert isinstance(rec, AuditRecord) and rec.kind == "audit_refit" and rec.subject == "model"
    assert rec.details["first_tick"] == 8 and rec.details["rows"] == 4 * 600  # the window is 4 ticks
    assert auditor.window_rows == 4 * 600


def test_no_model_no_findings_and_unknown_channel_not_scored():
    rng = np.random.default_rng(6)
    auditor = Auditor(random_state=0)
    assert auditor.score(normal_rows(1, rng)) == []
    auditor.step(normal_rows(1, rng), 1)
    stranger = [dict(r, channel=9, block=(9 << 32) | i, mean=1e9) for i, r in enumerate(normal_rows(2, rng)[:5])]
    assert auditor.score(stranger, 2) == []


def test_deterministic():
    def run() -> list[tuple]:
        rng = np.random.default_rng(7)
        a = Auditor(contamination=0.01, refit_every=2, random_state=11)
        out = []
        for tick in range(1, 8):
            findings, _ = a.step(normal_rows(tick, rng), tick)
            out += [(f.block, round(f.score, 12)) for f in findings]
        return out

    assert run() == run()


def test_features_from_real_aggregates_dicts_and_array_agree():
    store = EntityStore(block_size=100)
    active = np.arange(1000) % 7 != 0
    active[:100] = False  # block 0 has no active entity: NaN statistics
    r = entities(np.arange(1000, dtype=np.uint32), 3, np.linspace(0, 10, 1000, dtype=np.float32),
                 active)
    store.ingest(r)
    aggs = aggregate(store, 1)
    X1, b1, c1 = features(aggs)
    X2, b2, c2 = features(aggregate_rows(aggs, owner="a", nan_as_none=True))
    np.testing.assert_array_equal(b1, b2)
    np.testing.assert_array_equal(c1, c2)
    np.testing.assert_allclose(X1, X2, equal_nan=True)
    assert X1.shape == (10, len(FEATURES)) and np.isnan(X1[0, 2])
    auditor = Auditor(contamination=0.05, random_state=0, min_rows=5)
    auditor.observe(aggs, 1)
    auditor.score(aggs, 2)  # NaN rows are scored without error


@pytest.mark.parametrize("kw", [{"contamination": 0.0}, {"contamination": 0.9}, {"refit_every": 0}])
def test_bad_parameters(kw):
    with pytest.raises(ValueError):
        Auditor(**kw)


def finding(block: int, tick: int, score: float = 0.5) -> AuditFinding:
    return AuditFinding(block=block, channel=1, score=score, reason="r", tick=tick)


def test_alert_gate_alerts_a_block_flagged_in_a_row_once_per_episode():
    gate = AlertGate(persist=3)
    assert gate.step([finding(1, 1), finding(2, 1)]) == []
    assert gate.step([finding(1, 2)]) == []  # block 2's streak is broken
    alerted = gate.step([finding(1, 3), finding(2, 3)])
    assert [f.block for f in alerted] == [1]  # the third audit in a row
    assert gate.step([finding(1, 4)]) == []  # the same episode: no second alert
    for tick in (5, 6):
        assert gate.step([]) == []
    assert gate.step([finding(1, 7)]) == []  # 2 quiet audits: the episode goes on
    for tick in (8, 9, 10):
        gate.step([])  # 3 quiet audits: it is over
    assert gate.step([finding(1, 11)]) == [] and gate.step([finding(1, 12)]) == []
    assert [f.block for f in gate.step([finding(1, 13)])] == [1]  # a new episode, a new alert
    flicker = [gate.step([finding(4, t)] if t != 22 else []) for t in (20, 21, 22, 23)]
    assert [[f.block for f in a] for a in flicker] == [[], [], [], [4]]  # 3 of the last 4 audits
    weak = [gate.step([finding(3, tick, score=0.05)]) for tick in (14, 15, 16, 17)]
    assert weak == [[]] * 4  # flagged every time, but too weakly to be more than chance
    with pytest.raises(ValueError):
        AlertGate(persist=0)


def test_healthy_blocks_raise_no_alert_and_a_sick_one_raises_one():
    # What a node does with the auditor: 30 audits of healthy rows through the gate raise
    # nothing (the model flags a share of them on each tick, never the same block 3 times
    # in a row), and a block that stays sick raises exactly one alert.
    rng = np.random.default_rng(5)
    auditor = Auditor(contamination=0.001, refit_every=10, random_state=0)
    gate = AlertGate(persist=3)
    flagged = alerts = 0
    for tick in range(1, 31):
        findings, _ = auditor.step(normal_rows(tick, rng), tick)
        flagged += len(findings)
        alerts += len(gate.step(findings))
    assert alerts == 0, (alerts, flagged)
    sick = []
    for tick in range(31, 37):
        rows = normal_rows(tick, rng)
        rows[5]["mean"] *= 1.5  # channel 1, block 5: a shifted level, from now on
        findings, _ = auditor.step(rows, tick)
        sick += gate.step(findings)
    assert [(f.channel, f.block & 0xFFFFFFFF, f.tick) for f in sick] == [(1, 5, 33)]


def test_on_a_small_node_a_sick_block_stays_flagged_through_refits():
    # 30 blocks a tick: a chance flag on the same tick as the sick block must not let the
    # sick row into the training window, or the next refit makes it the baseline
    rng = np.random.default_rng(8)
    auditor = Auditor(contamination=0.001, refit_every=3, random_state=0, min_rows=60)
    gate = AlertGate()

    def rows(tick: int, sick: bool) -> list[dict]:
        out = [r for r in normal_rows(tick, rng) if r["channel"] == 1][:30]
        if sick:
            out[5]["mean"] *= 1.5
        return out

    for tick in range(1, 21):
        auditor.step(rows(tick, False), tick)
    flagged, alerts = 0, []
    for tick in range(21, 41):
        findings, _ = auditor.step(rows(tick, True), tick)
        flagged += any(f.block & 0xFFFFFFFF == 5 for f in findings)
        alerts += gate.step(findings)
    assert flagged == 20  # every audit, across 6 refits
    assert [(f.block & 0xFFFFFFFF, f.tick) for f in alerts] == [(5, 23)]


def test_no_audit_while_the_node_loads_new_entities_but_never_for_long():
    from corec_node.engine.audit import LoadGate

    gate = LoadGate(growth=0.01, max_wait=3)
    assert gate.settled(0)  # nothing held, nothing grew
    assert not gate.settled(1_000_000)  # a load
    assert not gate.settled(2_000_000)
    assert gate.settled(2_000_000)  # updates only: settled
    assert gate.settled(2_010_000)  # growth under 1 %
    assert [gate.settled(n) for n in (3e6, 4e6, 5e6, 6e6, 7e6)] == [False, False, False, True, False]
    assert gate.skipped == 6


def test_rows_at_rest_are_judged_again_without_the_forest():
    """Rule 5: the same rows before the same model get the same findings, stamped with the
    new tick, and the forest is not asked again; a row that moves, or a refit, asks it."""
    rng = np.random.default_rng(7)
    auditor = Auditor(contamination=0.01, refit_every=100, random_state=0)
    for tick in range(1, 4):
        auditor.step(normal_rows(tick, rng), tick)
    rows = normal_rows(4, rng)
    plant(rows)
    asked = []
    forest = auditor.model.decision_function
    auditor.model.decision_function = lambda Z: asked.append(len(Z)) or forest(Z)
    first = auditor.score(rows, 10)
    again = auditor.score([dict(r, tick=11) for r in rows], 11)
    assert len(asked) == 1 and first and [f.tick for f in again] == [11] * len(first)
    assert [(f.block, f.score, f.reason) for f in again] == [(f.block, f.score, f.reason) for f in first]
    rows[0]["mean"] += 1.0
    auditor.score(rows, 12)
    assert len(asked) == 2


def test_a_window_at_rest_is_fitted_once():
    """Rule 6: a refit that falls due over a window holding only rows the model was fitted
    on is skipped (the same data would grow the same forest); a tick whose rows differ makes
    the next due refit a real one, and so does the window once that tick has left it."""
    rng = np.random.default_rng(11)
    auditor = Auditor(contamination=0.01, refit_every=3, random_state=0, window=4, min_rows=1000)
    at_rest = normal_rows(1, rng)
    refits = []
    for tick in range(1, 18):
        if auditor.observe([dict(r, tick=tick) for r in at_rest], tick):
            refits.append(tick)
    assert refits == [2], refits  # the first fit when min_rows is reached; the same rows ever since
    model = auditor.model
    assert auditor.fitted_tick == 17 and auditor.fits == 1
    moved = [dict(r, tick=18) for r in at_rest]
    moved[0]["mean"] += 1.0
    assert auditor.observe(moved, 18) == [] and auditor.model is model  # not due yet
    assert [r.kind for r in auditor.observe([dict(r, tick=20) for r in at_rest], 20)] == ["audit_refit"]
    assert auditor.model is not model and auditor.fits == 2
    for tick in (21, 22):
        assert auditor.observe([dict(r, tick=tick) for r in at_rest], tick) == []
    assert [r.kind for r in auditor.observe([dict(r, tick=23) for r in at_rest], 23)] == ["audit_refit"]  # 18 left
    assert auditor.observe([dict(r, tick=26) for r in at_rest], 26) == [] and auditor.fits == 3


def test_a_node_at_rest_with_sick_blocks_stops_refitting():
    """Rule 6 on ``step``: the rows kept out of the window (rule 4) depend on the model, but
    the window is compared by the rows the node had, so a cluster at rest with a few sick
    blocks is fitted until the window holds only its resting rows, then no more, and the
    sick blocks are still flagged every tick."""
    rng = np.random.default_rng(13)
    auditor = Auditor(contamination=0.01, refit_every=3, random_state=0, window=4, min_rows=1000)
    for tick in range(1, 6):
        auditor.step(normal_rows(tick, rng), tick)
    at_rest = normal_rows(6, rng)
    sick = plant(at_rest)
    fits, flagged = [], []
    for tick in range(6, 40):
        if tick % 5 == 0 or tick % 7 == 0:
            continue  # a busy node skips the audit of a tick now and then: fewer ticks in the window
        findings, records = auditor.step([dict(r, tick=tick) for r in at_rest], tick)
        fits += [tick for r in records if r.kind == "audit_refit"]
        flagged.append(found(findings))
    assert fits and max(fits) <= 6 + 4 + 3, fits  # the window is all resting rows from tick 9 on
    assert len(flagged) > 20 and all(sick <= f for f in flagged[-20:]), flagged
