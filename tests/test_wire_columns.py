"""AGGREGATE_COLUMNS (SPEC 9.2, since 1.14): an owner's rows as columns. What a receiver
keeps of them is exactly what it keeps of the same rows as AGGREGATES row maps, and the
rows come back as they went, whatever their keys."""

from __future__ import annotations

import copy

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from records import aggregate_row

from corec_node.engine.adaptive import genome_text
from corec_node.engine.genome import default_genome, mutate
from corec_node.engine.host import EngineHost
from corec_node.engine.wire_rows import ROWS_PER_MESSAGE, heard, heard_columns, wire_messages
from corec_node.wire import (
    AggregateColumns,
    Aggregates,
    WireError,
    decode_message,
    encode_message,
    limits,
)

_KEYS = ["block", "channel", "count", "active", "mean", "min", "max", "std", "error_rate", "fitness", "tick",
         "epoch", "forecast", "forecast_error", "generation", "genome", "anomaly", "nano_error", "other"]
_GOOD = {"block": st.integers(1 << 32, (1 << 32) + 50), "count": st.integers(1, 9),
         "mean": st.floats(-5, 5), "fitness": st.floats(0, 1), "epoch": st.integers(0, 1 << 40)}
_ANY = st.one_of(st.none(), st.booleans(), st.integers(-3, 1 << 41), st.integers(0, (1 << 64) - 1),
                 st.floats(allow_nan=True), st.text(max_size=6))


@st.composite
def rows_of_one_key_set(draw: st.DrawFn) -> list[dict]:
    """Rows that share their keys, as an owner's one message does: mostly valid (a row a
    peer sends is), each key of a few spoiled by any value the wire lets through."""
    keys = draw(st.lists(st.sampled_from(_KEYS), unique=True, max_size=len(_KEYS)))
    extra = [k for k in keys if k not in aggregate_row(0)]
    n = draw(st.integers(1, 6))
    rows = []
    for i in range(n):
        row = aggregate_row((1 << 32) | i, count=2, active=1, mean=float(i))
        for key in extra:
            row[key] = {"epoch": 7, "generation": 1, "genome": "g", "anomaly": False}.get(key, 0.5)
        for key in draw(st.lists(st.sampled_from(list(row)), unique=True, max_size=3)):
            row[key] = draw(st.one_of(_ANY, _GOOD.get(key, _ANY)))
        rows.append(row)
    dropped = draw(st.lists(st.sampled_from(list(rows[0])), unique=True, max_size=2))
    for row in rows:
        for key in dropped:
            del row[key]
    return rows


def _columns(rows: list[dict]) -> dict:
    return {key: tuple(row[key] for row in rows) for key in rows[0]}


@settings(max_examples=400, deadline=None)
@given(rows_of_one_key_set())
def test_columns_keep_exactly_the_rows_row_maps_keep(rows):
    expected = heard(copy.deepcopy(rows))
    got = heard_columns(_columns(rows))
    assert repr(got) == repr(expected)  # repr: a NaN kept where it may be is equal to itself there


def test_a_nan_statistic_is_nil_and_one_bad_row_is_ignored_alone():
    rows = [aggregate_row((1 << 32) | i, count=3, mean=float("nan") if i == 1 else 1.0) for i in range(4)]
    rows[2]["fitness"] = 1.5
    kept, ignored = heard_columns(_columns(rows))
    assert ignored == 1 and [r["block"] & 0xFF for r in kept] == [0, 1, 3] and kept[1]["mean"] is None


def test_an_owners_rows_go_out_as_row_maps_and_as_columns_one_message_per_key_set():
    rows = [aggregate_row((1 << 32) | i, count=i + 1, owner="b") for i in range(ROWS_PER_MESSAGE + 5)]
    for row in rows[::100]:
        row["genome"] = "{}"  # now and then a row carries its genome: more keys
    msgs = wire_messages(9, rows)
    maps = [m for m in msgs if type(m) is Aggregates]
    columns = [m for m in msgs if type(m) is AggregateColumns]
    assert [len(m.rows) for m in maps] == [ROWS_PER_MESSAGE, 5]
    assert sorted(len(next(iter(m.columns.values()))) for m in columns) == [21, len(rows) - 21]
    assert all(m.tick == 9 for m in msgs)
    back = []
    for m in columns:
        _, env, _ = decode_message(encode_message(m, sender="b", seq=1))
        back.extend(dict(zip(env.msg.columns, values, strict=True)) for values in zip(*env.msg.columns.values()))
    assert sorted(back, key=lambda r: r["block"]) == rows
    assert wire_messages(9, []) == []


def test_a_node_takes_columns_as_it_takes_row_maps():
    by_maps, by_columns = EngineHost("a", block_size=100), EngineHost("a", block_size=100)
    for host in (by_maps, by_columns):
        host.set_members(["a", "b"])
    theirs = [b for b in ((1 << 32) | n for n in range(60)) if by_maps.placement.owner(b) == "b"]
    rows = [aggregate_row(b, count=5, mean=float(b & 15), epoch=1 << 33) for b in theirs]
    rows[3]["count"] = "many"
    by_maps.observe_rows("b", copy.deepcopy(rows))
    for msg in wire_messages(4, rows):
        if type(msg) is AggregateColumns:
            _, env, _ = decode_message(encode_message(msg, sender="b", seq=1))
            by_columns.observe_columns("b", env.msg.columns)
    assert by_columns.cluster_rows() == by_maps.cluster_rows() and len(by_maps.cluster_rows()) == len(theirs) - 1
    assert by_columns.rows_ignored == by_maps.rows_ignored == 1
    assert by_columns.epoch == by_maps.epoch == 1 << 33


def test_columns_that_empty_blocks_and_carry_genomes_leave_what_row_maps_leave():
    # the fast path takes checked columns a column at a time: the outcome must be the same
    genome = mutate(default_genome(), np.random.default_rng(3))
    by_maps, by_columns = EngineHost("a", block_size=100), EngineHost("a", block_size=100)
    for host in (by_maps, by_columns):
        host.set_members(["a", "b"])
    theirs = [b for b in ((1 << 32) | n for n in range(60)) if by_maps.placement.owner(b) == "b"]
    first = [aggregate_row(b, count=5, epoch=1 << 33) for b in theirs]
    emptied = {"count": 0, "active": 0, "mean": None, "min": None, "max": None, "std": None, "fitness": 0.0}
    later = [aggregate_row(b, **(emptied if i % 3 == 0 else {"count": 6}), epoch=(1 << 33) + 1, tick=2,
                           genome=genome.id, genome_spec=genome_text(genome)) for i, b in enumerate(theirs)]
    for rows in (first, later):
        by_maps.observe_rows("b", copy.deepcopy(rows))
        for msg in wire_messages(2, rows):
            if type(msg) is AggregateColumns:
                _, env, _ = decode_message(encode_message(msg, sender="b", seq=1))
                by_columns.observe_columns("b", env.msg.columns)
    assert by_columns.cluster_rows() == by_maps.cluster_rows()
    assert len(by_maps.cluster_rows()) == len([b for i, b in enumerate(theirs) if i % 3])
    assert by_columns.epoch == by_maps.epoch == (1 << 33) + 1
    assert {b: by_columns.adaptive.spec_of(r) for b, r in by_columns.rows.items()} \
        == {b: by_maps.adaptive.spec_of(r) for b, r in by_maps.rows.items()}
    assert all(by_maps.adaptive.spec_of(r) == genome for r in by_maps.rows.values())


def test_the_wire_refuses_columns_of_two_lengths_or_not_arrays_or_too_long():
    for columns in ({"a": (1, 2), "b": (1,)}, {"a": 5}, {"a": ((1,),)}, {"a": (1,) * (limits.MAX_ROWS_PER_MESSAGE + 1)},
                    {"": (1,)}):
        with pytest.raises(ValueError):
            encode_message(AggregateColumns(tick=1, columns=columns), sender="b", seq=1)
    good = encode_message(AggregateColumns(tick=1, columns={"a": (1,)}), sender="b", seq=1)
    env = msgpack.unpackb(good[1])
    env["b"]["columns"] = {"a": [1, 2], "b": [3]}
    with pytest.raises(WireError) as info:
        decode_message([good[0], msgpack.packb(env)])
    assert info.value.reason == "field"


def test_numpy_columns_are_written_as_plain_values():
    msg = AggregateColumns(tick=1, columns={"mean": np.array([1.5, 2.0]), "count": [np.int64(3), 4]})
    _, env, _ = decode_message(encode_message(msg, sender="b", seq=1))
    assert env.msg.columns == {"mean": (1.5, 2.0), "count": (3, 4)}
    assert all(type(v) in (int, float) for column in env.msg.columns.values() for v in column)
