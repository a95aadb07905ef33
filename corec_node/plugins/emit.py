"""What a plugin may emit into the mesh (``NodeFacade.emit``), checked before it leaves the
plugin's own thread.

Pure: numpy only, no node, no loop. A plugin's bad channel, ids or values raise here, in the
plugin's call, as a :class:`ValueError` (or :class:`TypeError`) that names the argument: the
dispatch counts it as the plugin's fault, and nothing of it reaches the node. What passes is
a 1-D ``ENTITY_DTYPE`` array of one channel, which the node takes as a producer's batch.

Feedback rule: inside ``corec_entities`` a plugin may not emit onto a channel it subscribes
to, nor onto the batch's own channel (:class:`EmitLoopError`): its own records would come
back to that hook, and each batch would beget another. The dispatch marks the calls of that
hook in a context variable (:data:`HANDLING`), so the rule holds in worker threads and tasks
alike and does not hold for the same plugin's other hooks or its own threads.
"""

from __future__ import annotations

import contextvars
from collections.abc import Collection
from typing import Any

import numpy as np

from corec_node.wire import ENTITY_DTYPE

EMIT_CHUNK = 50_000  # records per batch the node takes from one emit (500 KB): far under the wire's 16 MiB
UINT32_MAX = 0xFFFFFFFF

# ("corec_entities", channel) while a corec_entities call of this context runs; None elsewhere
HANDLING: contextvars.ContextVar[tuple[str, int] | None] = contextvars.ContextVar("corec_handling", default=None)


class EmitLoopError(ValueError):
    """A plugin emitted, from ``corec_entities``, onto a channel whose batches it receives."""


def entities_context(channel: int) -> contextvars.Context:
    """A copy of the current context marked as handling a ``corec_entities`` batch of ``channel``."""
    ctx = contextvars.copy_context()
    ctx.run(HANDLING.set, ("corec_entities", channel))
    return ctx


def check_loop(channel: int, subscribed: Collection[int]) -> None:
    """Raise :class:`EmitLoopError` when the caller is inside ``corec_entities`` and
    ``channel`` would come back to it (the batch's channel, or one it subscribes to)."""
    handling = HANDLING.get()
    if handling is None:
        return
    if channel == handling[1] or channel in subscribed:
        raise EmitLoopError(
            f"emit onto channel {channel} from corec_entities of channel {handling[1]}: this plugin receives "
            f"channel {channel}'s batches, so each batch would beget another (emit from corec_block_aggregates, "
            "or onto a channel this plugin does not subscribe to)")


def emit_records(channel: Any, ids: Any, values: Any, active: Any = None) -> np.ndarray:
    """The records of one ``emit`` call: ``ids`` (uint32) and ``values`` (finite numbers) of
    equal length, ``active`` None (all 1), a bool/0-1 scalar, or one per id. ``values`` and
    ``active`` may be scalars, broadcast to every id. Raises ValueError/TypeError naming what
    is wrong; returns a new array the caller may not share."""
    if isinstance(channel, bool) or not isinstance(channel, (int, np.integer)):
        raise TypeError(f"emit: channel must be an int 0..255, got {type(channel).__name__} {channel!r}")
    if not 0 <= int(channel) <= 255:
        raise ValueError(f"emit: channel must be 0..255, got {channel}")
    id_arr = np.asarray(ids)
    if id_arr.ndim != 1:
        raise ValueError(f"emit: ids must be a 1-D sequence, got shape {id_arr.shape}")
    n = len(id_arr)
    if n == 0:
        return np.zeros(0, ENTITY_DTYPE)
    if id_arr.dtype.kind not in "iu":
        raise TypeError(f"emit: ids must be integers, got {id_arr.dtype}")
    if int(id_arr.min()) < 0 or int(id_arr.max()) > UINT32_MAX:
        raise ValueError(f"emit: ids must be 0..{UINT32_MAX} (uint32)")
    val = _column("values", values, n, "iuf")
    if not np.isfinite(val).all():
        raise ValueError("emit: values must be finite (no NaN or inf)")
    with np.errstate(over="raise"):
        try:
            val32 = val.astype(np.float32)
        except FloatingPointError:
            raise ValueError("emit: values must fit a float32") from None
    out = np.empty(n, ENTITY_DTYPE)
    out["id"] = id_arr
    out["channel"] = int(channel)
    out["value"] = val32
    if active is None:
        out["active"] = 1
    else:
        act = _column("active", active, n, "iub")
        if act.dtype.kind != "b" and ((act < 0) | (act > 1)).any():
            raise ValueError("emit: active must be bool or 0/1")
        out["active"] = act
    return out


def _column(name: str, col: Any, n: int, kinds: str) -> np.ndarray:
    arr = np.asarray(col)
    if arr.dtype.kind not in kinds:
        raise TypeError(f"emit: {name} must be {'numbers' if 'f' in kinds else 'bool or 0/1'}, got {arr.dtype}")
    if arr.ndim == 0:
        return np.broadcast_to(arr, (n,))
    if arr.ndim != 1 or len(arr) != n:
        raise ValueError(f"emit: {n} ids but {name} of shape {arr.shape} (one per id, or a scalar)")
    return arr
