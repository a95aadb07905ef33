"""Which of an owner's rows of one tick go on the wire, and in what messages.

Every other node takes in each row an owner publishes (2-4 us a row to decode and keep),
so rows sent to the whole cluster cost the cluster N times what they cost the owner. A
row that says what the owner's previous row of that block already said is not worth it:
the owner's hooks, store and audit get every row of every tick as before, but the wire
gets the rows that changed (any value but ``tick``) and, so that a node that missed one
(a lost frame, a subscription made late) is right again soon, each unchanged row every
``ROWS_REFRESH`` ticks, blocks taking turns (``(tick + block) % ROWS_REFRESH``). A new
placement epoch changes every row (its ``epoch``), so a map change, a joiner's included,
still sends them all at once.

So a row shown for another owner's block carries the tick of its last change or refresh,
at most ``ROWS_REFRESH`` ticks behind; a static cluster costs its receivers a fifth of a
row a block a tick, and one whose every block changes each tick (entities streaming in
everywhere) costs the same as before.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

ROWS_REFRESH = 5  # ticks between two sends of an unchanged row (its tick in others' answers)
ROWS_PER_MESSAGE = 2_000  # aggregate rows per AGGREGATES message: ~300 KB, under the envelope limit
_ANY_TICK = "tick"


def rows_for_the_wire(rows: list[dict[str, Any]], previous: Mapping[int, dict[str, Any]], tick: int,
                      refresh: int = ROWS_REFRESH) -> list[dict[str, Any]]:
    """The rows of ``rows`` (this tick's, of our blocks) to publish: each whose block's row in
    ``previous`` (the last row we made of it, or heard from its owner before us) is missing
    or says something else, and each whose block's turn to be refreshed this tick is."""
    out = []
    for row in rows:
        block = row["block"]
        if (tick + block) % refresh == 0 or not _same(previous.get(block), row):
            out.append(row)
    return out


def _same(old: dict[str, Any] | None, new: dict[str, Any]) -> bool:
    if old is None or len(old) != len(new):
        return False
    for key, value in new.items():
        if key != _ANY_TICK and (key not in old or old[key] != value):
            return False
    return True


def chunks(rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Rows split into messages of at most ``ROWS_PER_MESSAGE`` (one empty list for none)."""
    return [rows[i:i + ROWS_PER_MESSAGE] for i in range(0, len(rows), ROWS_PER_MESSAGE)] or [[]]
