"""The cluster's block rows as one node holds them (``engine/host.py`` rules 4 and 6): every
owner's rows taken in as they are heard, and each block shown once, by its current owner.

A mixin of ``EngineHost``, whose state it reads: the rows heard (``rows``), the placement
map, the store's fusions, the copies, the epoch. Pure like it."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from corec_node.engine.adaptive import SPEC_KEY
from corec_node.engine.wire_rows import checked_columns, heard, heard_columns, rows_of

if TYPE_CHECKING:
    from corec_node.engine.adaptive import AdaptiveBlocks
    from corec_node.engine.placement import PlacementMap
    from corec_node.engine.store import EntityStore

EPOCH_KEY = "epoch"  # the placement epoch in a row (rule 6); storage/rows.py reads the same key


class ClusterRows:
    name: str
    copies: int
    epoch: int
    rows: dict[int, dict[str, Any]]
    rows_ignored: int
    lost: list[tuple[tuple[str, ...], int, int]]
    placement: PlacementMap
    store: EntityStore
    adaptive: AdaptiveBlocks
    _rows_version: int
    _cluster: tuple[tuple[Any, ...], list[dict[str, Any]]] | None
    _owned_blocks: Callable[[list[int]], list[bool]]  # which of these blocks we own (EngineHost)

    def observe_rows(self, owner: str, rows: Iterable[dict[str, Any]]) -> None:
        """An owner's rows of one tick (ours too); their epochs raise ours (rule 6)."""
        rows = rows if isinstance(rows, list) else list(rows)
        if owner != self.name:  # what its rows must hold (SPEC 9.2)
            rows, ignored = heard(rows)
            self.rows_ignored += ignored
        self._take_rows(owner, rows)

    def observe_columns(self, owner: str, columns: dict[str, Any]) -> None:
        """``observe_rows`` for another owner's rows sent as columns (AGGREGATE_COLUMNS):
        when every row is one to keep, taken in a column at a time."""
        by = checked_columns(columns)
        if by is None:  # a row to ignore: row by row, as row maps
            rows, ignored = heard_columns(columns)
            self.rows_ignored += ignored
            self._take_rows(owner, rows)
        elif by:
            self._take_columns(owner, by)

    def _take_columns(self, owner: str, by: dict[str, list[Any]]) -> None:
        """``_take_rows`` of the rows of checked columns, with the same outcome."""
        by["owner"] = [owner] * len(by["block"])
        rows = rows_of(by)
        if owner != self.name and SPEC_KEY in by:
            self._learn_genomes(rows)
        blocks = by["block"]
        self.rows.update(zip(blocks, rows))
        if 0 in by["count"]:  # blocks emptied (deletes, a TTL): shown no more
            for block in blocks:
                if self.rows.get(block, {}).get("count") == 0:
                    del self.rows[block]
        if EPOCH_KEY in by:
            self.epoch = max(self.epoch, max(by[EPOCH_KEY]))
        self._rows_version += 1

    def _take_rows(self, owner: str, rows: list[dict[str, Any]]) -> None:
        top = self.epoch
        if owner != self.name:
            self._learn_genomes([r for r in rows if SPEC_KEY in r])
        for row in rows:
            row["owner"] = owner
            if row.get("count") == 0:  # the block was emptied (deletes, a TTL): shown no more
                self.rows.pop(int(row["block"]), None)
            else:
                self.rows[int(row["block"])] = row
            e = row.get(EPOCH_KEY)
            if type(e) is int and e > top:
                top = e
        self.epoch = top
        self._rows_version += 1

    def _learn_genomes(self, specs: list[dict[str, Any]]) -> None:
        """Another owner's rows that carry a genome teach it (ours are kept: host.py rule 8)."""
        for row, ours in zip(specs, self._owned_blocks([r["block"] for r in specs]), strict=True):
            self.adaptive.observe_row(row, ours=ours)

    def holds_shown_blocks(self, member: str) -> bool:
        """Whether our map makes ``member`` a holder of a block the cluster shows rows for
        (a member that restarted empty then lacks state: it must learn; at a cluster's
        first start there is nothing it could lack)."""
        if member not in self.placement.everyone or not self.rows:
            return False
        blocks = self.store.fusions.resolve(np.fromiter(self.rows, np.int64, len(self.rows)))
        return bool(self.placement.holder_mask(blocks, self.copies)[:, self.placement.everyone.index(member)].any())

    def _forget_departed(self, old: PlacementMap) -> None:
        """Rows from members the new map no longer has are dropped: a replica that takes a
        block publishes its own, and a member that comes back (empty, or after missed
        writes) must not bring its old rows back to life. Blocks that no member of the new
        map held under the old one are lost: counted in ``lost`` for the shell to report."""
        gone = set(old.everyone) - set(self.placement.everyone)
        if not gone:
            return
        blocks = np.array([b for b, r in self.rows.items() if r["owner"] in gone], np.int64)
        if not len(blocks):
            return
        kept = [i for i, m in enumerate(old.everyone) if m in self.placement.everyone]
        survived = old.holder_mask(blocks, self.copies)[:, kept].any(axis=1)
        lost = blocks[~survived].tolist()
        if lost:
            self.lost.append((tuple(sorted(gone)), len(lost), sum(int(self.rows[b].get("count", 0)) for b in lost)))
        for block in blocks.tolist():
            del self.rows[block]
        self._rows_version += 1

    def forget_owner(self, owner: str) -> None:
        for block in [b for b, r in self.rows.items() if r["owner"] == owner]:
            del self.rows[block]
        self._rows_version += 1

    def cluster_rows(self, channel: int | None = None) -> list[dict[str, Any]]:
        """Each block once, with the row of its current owner, sorted by block. Computed once
        per change of the rows, the map or the fusions (status and the CLI ask often)."""
        key = (self._rows_version, self.placement.version, self.placement.members, self.store.fusions.version)
        if self._cluster is None or self._cluster[0] != key:
            self._cluster = (key, self._current_rows())
        rows = self._cluster[1]
        return list(rows) if channel is None else [r for r in rows if r["channel"] == channel]

    def _current_rows(self) -> list[dict[str, Any]]:
        """Each placed block's row from its owner or, until the owner's first row comes (it
        took the block a moment ago), from another holder of the block: never from a node
        that no longer holds it."""
        blocks = np.fromiter(sorted(self.rows), dtype=np.int64)
        if len(blocks) == 0:
            return []
        roots = self.store.fusions.resolve(blocks)
        placed = roots == blocks
        blocks = blocks[placed]
        owners = self.placement.owner_names(blocks)
        column = {name: i for i, name in enumerate(self.placement.everyone)}
        held = self.placement.holder_mask(blocks, self.copies) if self.copies > 1 else None
        out = []
        for i, (block, owner) in enumerate(zip(blocks.tolist(), owners, strict=True)):
            row = self.rows[block]
            by = row["owner"]
            if by == owner or (held is not None and by in column and held[i, column[by]]):
                out.append(row)
        return out

    def rows_with_holders(self, channel: int | None = None) -> list[dict[str, Any]]:
        """``cluster_rows`` with each block's ``replicas``: its other holders under our map
        (a learner copying it included), best ranked first."""
        rows = self.cluster_rows(channel)
        holders = self.placement.holders_of(np.array([r["block"] for r in rows], np.int64), self.copies)
        return [{**row, "replicas": held[1:]} for row, held in zip(rows, holders, strict=True)]
