"""Sorted runs of keys, the shape producers' batches come in: new keys merged into the
store's sorted columns in place (``EntityStore._insert`` picks the way by how scattered they
are), and the stable order of a batch made of a few sorted runs."""

from __future__ import annotations

import numpy as np


def merge_runs(
    src: np.ndarray, dst: np.ndarray, n: int, new_vals: np.ndarray, ins: np.ndarray, runs: list[tuple[int, int]]
) -> None:
    """``merge_segments`` a run at a time: ``runs`` are ``(a, b)`` slices of ``new_vals``
    sharing one insertion point, so a batch of new ids in order costs a few slice moves,
    not a scatter over the whole column."""
    end = n
    for a, b in reversed(runs):
        s = int(ins[a])
        if end > s:  # the old entries after the point move right past the run (numpy copes with the overlap)
            dst[s + b : end + b] = src[s:end]
        dst[s + a : s + b] = new_vals[a:b]
        end = s
    if dst is not src and end > 0:
        dst[:end] = src[:end]


def merge_segments(
    src: np.ndarray, dst: np.ndarray, n: int, new_vals: np.ndarray, ins: np.ndarray
) -> None:
    """Merge ``new_vals`` into ``src[:n]`` at insertion points ``ins`` (sorted), writing
    ``dst`` (which may be ``src``: runs are moved from the back, so nothing is overwritten
    before it is read)."""
    end = n
    k = len(ins)
    for j in range(k - 1, -1, -1):
        s = int(ins[j])
        if end > s:
            dst[s + j + 1 : end + j + 1] = src[s:end]
        dst[s + j] = new_vals[j]
        end = s
    if dst is not src and end > 0:
        dst[:end] = src[:end]


def order_of_runs(keys: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    """Stable order of keys made of sorted runs starting at 0 and ``cuts``."""
    starts = np.concatenate(([0], cuts))
    ends = np.append(cuts, len(keys))
    runs = np.argsort(keys[starts], kind="stable")
    s, e = starts[runs], ends[runs]
    if np.all(keys[e[:-1] - 1] < keys[s[1:]]):  # disjoint: concatenate the runs in key order
        return np.concatenate([np.arange(a, b) for a, b in zip(s.tolist(), e.tolist(), strict=True)])
    return np.argsort(keys, kind="stable")


def stable_order(keys: np.ndarray, key_bits: int) -> np.ndarray:
    """``np.argsort(keys, kind="stable")``, faster for the batches a node sees.

    A backlog stored in one call is a few sorted runs (producers send their ids in order):
    runs that do not overlap are put in order whole, and overlapping ones go to the stable
    argsort (a merge sort that finds the runs). Otherwise keys use ``key_bits`` bits, so the record
    index fits in the low bits of a uint64 and one plain sort of unique composites gives
    the stable order (a stable argsort again above 2**24 records)."""
    m = len(keys)
    cuts = np.flatnonzero(keys[1:] < keys[:-1]) + 1
    if len(cuts) < m // 64:
        return order_of_runs(keys, cuts)
    bits = max(1, (m - 1).bit_length())
    if bits > 64 - key_bits:
        return np.argsort(keys, kind="stable")
    comp = keys << np.uint64(bits)
    comp |= np.arange(m, dtype=np.uint64)
    comp.sort()
    comp &= np.uint64((1 << bits) - 1)
    return comp.view(np.int64)
