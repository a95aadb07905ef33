"""Replica spread (SPEC 9.1 rule 5 beside rules 1 and 4): with how many other nodes does a
node share blocks, and how even are the owners' shares, for the token ring beside
rendezvous hashing, measured on the same blocks in the same run.

    python bench/spread.py [--sizes 10,40,400,4000] [--copies 2] [--blocks-per-node 200]

For each cluster size N, N members named node-0 .. node-(N-1) and N x --blocks-per-node
blocks of one channel: ``peers`` is the largest number of other members any member
shares at least one block with (the links a node keeps for copies and catch-up),
``share`` the largest and smallest owner share as a multiple of 1/N, and ``place`` the
time to compute every block's holders once (numpy, this process). Pure computation: no
node runs.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from corec_node.engine.placement import RENDEZVOUS, RING, PlacementMap


def measure(size: int, rule: str, copies: int, per_node: int) -> dict[str, float]:
    names = [f"node-{i}" for i in range(size)]
    m = PlacementMap(1, names, rule=rule)
    blocks = np.arange(size * per_node, dtype=np.int64) | (1 << 32)
    t0 = time.perf_counter()
    held = m.holder_mask(blocks, copies)
    placed = time.perf_counter() - t0
    peers = np.zeros((size, size), bool)
    for row in held:
        cols = np.flatnonzero(row)
        peers[np.ix_(cols, cols)] = True
    np.fill_diagonal(peers, False)
    share = np.bincount(m.owners(blocks), minlength=size) / len(blocks) * size
    return {"peers": int(peers.sum(axis=1).max()), "share_max": float(share.max()),
            "share_min": float(share.min()), "place_s": placed}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10,40,400,4000")
    ap.add_argument("--copies", type=int, default=2)
    ap.add_argument("--blocks-per-node", type=int, default=200)
    args = ap.parse_args()
    print(f"copies {args.copies}, {args.blocks_per_node} blocks a node")
    print(f"{'nodes':>6} {'rule':>10} {'peers':>6} {'share max':>9} {'share min':>9} {'place s':>8}")
    for size in [int(s) for s in args.sizes.split(",")]:
        for rule in (RENDEZVOUS, RING):
            if rule == RENDEZVOUS and size > 1000:  # O(blocks x members) scores: minutes
                print(f"{size:>6} {rule:>10} {'(skipped: O(N^2) scoring)':>36}")
                continue
            r = measure(size, rule, args.copies, args.blocks_per_node)
            print(f"{size:>6} {rule:>10} {r['peers']:>6} {r['share_max']:>9.2f} {r['share_min']:>9.2f} {r['place_s']:>8.3f}")


if __name__ == "__main__":
    main()
