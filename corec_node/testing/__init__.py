"""Helpers for tests and plugin authors: real node processes on loopback (``cluster.py``)."""

from corec_node.testing.cluster import Cluster, NodeProc, eventually, free_port, voters_agree

__all__ = ["Cluster", "NodeProc", "eventually", "free_port", "voters_agree"]
