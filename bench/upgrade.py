"""A rolling upgrade from the previous release (README, "Releases and upgrades"), run N
times: three nodes of the release installed in a virtualenv of their own, a producer
streaming with ``acks=all`` the whole time, each node stopped and started again on this
tree's code one at a time, the leader among them. The cluster runs with an old leader and
new members, then with a new leader and an old member. Each run prints the rounds the
producer was told are stored and the blocks whose aggregates are not those of the records
sent, on each node; ``--from this`` restarts nodes of this tree onto this tree (a rolling
restart, no upgrade).

    python bench/upgrade.py --runs 5             # from the previous release (releases.PREVIOUS)
    python bench/upgrade.py --runs 5 --from this

Measured, not asserted: it found five ways to lose acknowledged blocks in a rolling
restart, all fixed (README, "Releases and upgrades"); ``tests/test_upgrade.py`` runs it
once each way in CI.
"""

from __future__ import annotations

import sys
from pathlib import Path

from corec_node import __version__
from corec_node.testing.releases import PREVIOUS
from corec_node.testing.upgrade import RECORDS, previous_python, rolling_upgrade


def main() -> None:
    import argparse
    import json as _json
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--from", dest="origin", default=PREVIOUS, choices=[PREVIOUS, "this"],
                        help=f"the release the nodes start on: {PREVIOUS} (from its commit) or this tree")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="corec-upgrade-"))
    if args.origin == "this":
        python, old = Path(sys.executable), __version__
    else:
        python, old = previous_python(root / "release"), PREVIOUS
    print(f"rolling upgrade {old} -> {__version__}, 3 nodes, 2 copies, acks all rounds of {RECORDS} records")
    lossy = 0
    for run in range(args.runs):
        try:
            result = rolling_upgrade(python, root / f"run{run}", old)
        except AssertionError as exc:
            print(f"run {run}: did not finish: {exc}")
            continue
        lossy += bool(sum(result["blocks_wrong"].values()))
        print(f"run {run}: " + _json.dumps(result))
    print(f"runs with blocks whose aggregates are not the records sent: {lossy} of {args.runs}")


if __name__ == "__main__":
    main()
