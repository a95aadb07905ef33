"""Entity records for tests: the one place that builds arrays of ``ENTITY_DTYPE``.

``entities`` lays out given columns; ``random_entities`` draws a reproducible mixed batch;
``aggregate_row`` is one block's AGGREGATES row with every key SPEC 9.2 requires.
Test files import them (``from records import entities``) instead of keeping their own copy.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from corec_node.wire import ENTITY_DTYPE

__all__ = ["aggregate_row", "entities", "random_entities"]


def entities(ids: Any, channel: Any = 0, value: Any = 0.0, active: Any = 1) -> np.ndarray:
    """One record per id. ``channel``, ``value`` and ``active`` are scalars (the same for every
    record) or sequences as long as ``ids``; values are stored as float32, as on the wire."""
    ids = np.asarray(ids)
    out = np.zeros(len(ids), ENTITY_DTYPE)
    out["id"] = ids
    out["channel"] = channel
    out["value"] = value
    out["active"] = active
    return out


def random_entities(n: int, seed: int = 1) -> np.ndarray:
    """``n`` records drawn from ``default_rng(seed)``: channels 0..3, ids below 300,000
    (duplicates on purpose: the last value wins), values ~ N(50, 10) rounded to 2 decimals,
    about 90 % active. The same (n, seed) always gives the same array."""
    rng = np.random.default_rng(seed)
    channel = rng.integers(0, 4, n)  # drawn in this order: the arrays stay what they always were
    ids = rng.integers(0, 300_000, n)
    value = np.round(rng.normal(50, 10, n), 2).astype(np.float32)
    active = rng.random(n) < 0.9
    return entities(ids, channel, value, active)


def aggregate_row(block: int, /, **values: Any) -> dict[str, Any]:
    """A row another owner could publish for ``block`` (its channel from the id), with
    ``values`` over the defaults: what a node keeps of the rows it hears (SPEC 9.2)."""
    row = {"block": block, "channel": block >> 32, "count": 1, "active": 1, "mean": 0.0, "min": 0.0, "max": 0.0,
           "std": 0.0, "error_rate": 0.0, "fitness": 1.0, "tick": 1}
    row.update(values)
    return row
