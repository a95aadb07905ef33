from __future__ import annotations

pytest_plugins = ["pgutil"]  # PostgreSQL fixtures: pg_dsn, pg_schema, pg

import pytest

from corec_node.testing.cluster import Cluster


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.close()
        for node in c.nodes:
            if node.proc is not None and node.proc.returncode is None:
                node.kill()
