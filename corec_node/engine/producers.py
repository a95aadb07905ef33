"""Idempotent producers (SPEC 9.6): the last sequence each producer wrote to each block.

Records are absolute values: a retried batch, or one that overtook a newer one on another
path (a forward after a map change), must never overwrite what a newer batch wrote. A
producer numbers its batches with one rising sequence (``pseq``) across all the owners it
sends to; the owner of a block keeps, per producer, the highest sequence applied to the
block, and applies a batch's records only in blocks where the batch is newer. Equal is a
duplicate (a retry of what was applied), lower is out of order; both are refused and
counted, never applied. The table moves with its blocks (``take``/``merge``): a new owner
refuses what the old one had already applied.

Pure: numpy arrays in, masks out. Producer 0 is anonymous: never checked.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

DUPLICATE = "duplicate"
OUT_OF_ORDER = "out_of_order"


class ProducerSeqs:
    """``(producer, block) -> last applied pseq``; a few bytes per block a producer wrote."""

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last: dict[tuple[int, int], int] = {}

    def __len__(self) -> int:
        return len(self._last)

    def admit(self, producer: int, pseq: int, blocks: np.ndarray) -> tuple[np.ndarray, dict[str, int]]:
        """Which records (their ``blocks``) to apply, and the refused counts by reason.
        Records the mask keeps raise their block's sequence to ``pseq``."""
        keep = np.ones(len(blocks), dtype=bool)
        if producer == 0 or not len(blocks):
            return keep, {}
        refused: dict[str, int] = {}
        last = self._last
        cuts = np.flatnonzero(blocks[1:] != blocks[:-1]) + 1
        if len(cuts) <= len(blocks) // 16:  # a few runs of one block each (ids in order): a check per run
            starts = [0, *cuts.tolist()]
            stops = [*cuts.tolist(), len(blocks)]
            runs = [(block, slice(a, b)) for block, a, b in zip(blocks[starts].tolist(), starts, stops, strict=True)]
        else:
            uniq, inverse = np.unique(blocks, return_inverse=True)
            runs = [(block, inverse == i) for i, block in enumerate(uniq.tolist())]
        decided: dict[int, str | None] = {}  # a block seen in two runs of one batch is judged once
        for block, rows in runs:
            if block not in decided:
                key = (producer, block)
                seen = last.get(key)
                if seen is None or pseq > seen:
                    last[key] = pseq
                    decided[block] = None
                else:
                    decided[block] = DUPLICATE if pseq == seen else OUT_OF_ORDER
            reason = decided[block]
            if reason is not None:
                keep[rows] = False
                count = rows.stop - rows.start if isinstance(rows, slice) else int(np.count_nonzero(rows))
                refused[reason] = refused.get(reason, 0) + count
        return keep, refused

    def take(self, blocks: Iterable[int], *, keep: bool = False) -> list[tuple[int, int, int]]:
        """Remove and return ``(producer, block, pseq)`` for ``blocks`` (handed to a new owner);
        ``keep``: return them and keep them (copied to a new holder of blocks we hold still)."""
        wanted = set(blocks)
        out = [(p, b, s) for (p, b), s in self._last.items() if b in wanted]
        if not keep:
            for p, b, _ in out:
                del self._last[(p, b)]
        return out

    def merge(self, rows: Iterable[tuple[int, int, int]]) -> None:
        """Sequences handed over with blocks: keep the higher of theirs and ours."""
        last = self._last
        for p, b, s in rows:
            if s > last.get((p, b), -1):
                last[(p, b)] = s
