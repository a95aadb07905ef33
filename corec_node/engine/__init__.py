"""The entity engine, as a pure core: no sockets, no asyncio, no clock, no files.

What the shell does (the node owns one :class:`EntityStore`, ``store``):

- On every entity batch for a block this node owns: ``store.ingest(records)``. Batches
  for blocks owned elsewhere are forwarded to the owner, found with
  ``corec_node.engine.placement`` on ``store.fusions.resolve(block_ids_of(channel, id))``.
- Each tick, in this order:
  1. ``rows = aggregate(store, tick)``; publish ``aggregate_rows(rows, owner=me)``.
  2. ``records = repair(store, rows, max_errors=..., kernels=...)``; log and count them.
  3. On the nucleus only: ``plan_fusions(all_rows_of_the_cluster, min_fitness)``, then
     broadcast the plan. Every node applies each fusion in the plan's order with
     ``apply_fusion(store, fusion)`` (log the record), then re-places: blocks whose root's
     owner changed are handed over (``take_blocks`` here, ``put_records`` there).
- On a membership change: a new ``PlacementMap``; ``moves(old, new, block_ids)`` says
  which blocks to hand over with ``take_blocks`` / ``put_records``.
"""

from corec_node.engine.aggregate import AGGREGATE_DTYPE, ROW_KEYS, aggregate, aggregate_rows
from corec_node.engine.blocks import (
    DEFAULT_BLOCK_SIZE,
    FusionTable,
    block_channel,
    block_id,
    block_ids_of,
    block_number,
)
from corec_node.engine.kernels import (
    BUILTINS,
    Kernel,
    KernelRegistry,
    KernelState,
    SyntheticChannel,
    SyntheticSource,
    bind,
    generate,
    transform,
)
from corec_node.engine.repair import (
    STREAK_LIMIT,
    Fusion,
    RepairRecord,
    apply_fusion,
    plan_from_rows,
    plan_fusions,
    release_fusion,
    repair,
)
from corec_node.engine.store import BLOCK_DTYPE, STATE_DTYPE, EntityStore, IngestResult

__all__ = [
    "AGGREGATE_DTYPE",
    "BLOCK_DTYPE",
    "BUILTINS",
    "DEFAULT_BLOCK_SIZE",
    "ROW_KEYS",
    "STATE_DTYPE",
    "STREAK_LIMIT",
    "EntityStore",
    "Fusion",
    "FusionTable",
    "IngestResult",
    "Kernel",
    "KernelRegistry",
    "KernelState",
    "RepairRecord",
    "SyntheticChannel",
    "SyntheticSource",
    "aggregate",
    "aggregate_rows",
    "apply_fusion",
    "bind",
    "block_channel",
    "block_id",
    "block_ids_of",
    "block_number",
    "generate",
    "plan_from_rows",
    "plan_fusions",
    "release_fusion",
    "repair",
    "transform",
]
