"""Test helpers: the package's local cluster tools under the names the tests use."""

from corec_node.testing.cluster import Cluster, NodeProc, eventually, free_port

__all__ = ["Cluster", "NodeProc", "eventually", "free_port"]
