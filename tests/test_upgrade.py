"""A rolling upgrade from the previous release loses nothing acknowledged (README, "Releases
and upgrades"): three nodes of the previous tag, built from its commit into a wheel and
installed in a virtualenv of their own, are stopped and started again on this tree one at
a time, the leader among them, while a producer sends rounds with ``acks=all``. The
cluster runs with an old leader and new members, then a new leader and an old member.
Every node's aggregates must then be those of every round acknowledged.

The same campaign from this tree onto itself is a rolling restart. ``bench/upgrade.py``
runs both many times.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from corec_node import __version__
from corec_node.testing.releases import PREVIOUS
from corec_node.testing.upgrade import previous_python, rolling_upgrade

pytestmark = pytest.mark.timeout(900)


def _nothing_lost(result: dict) -> None:
    assert result["rounds"] >= 9, result  # three rounds before, between and after the upgrades
    assert result["lost_rounds"] == {}, result
    assert sum(result["blocks_wrong"].values()) == 0, result
    assert result["owned_entities"] == result["records"], result


def test_a_rolling_upgrade_from_the_previous_release_keeps_every_acknowledged_round(tmp_path: Path):
    python = previous_python(tmp_path / "release")
    _nothing_lost(rolling_upgrade(python, tmp_path / "cluster", PREVIOUS))


def test_a_rolling_restart_keeps_every_acknowledged_round(tmp_path: Path):
    _nothing_lost(rolling_upgrade(Path(sys.executable), tmp_path, __version__))
