"""Helpers for tests and plugin authors: real node processes on loopback (``cluster.py``),
and the ``plugin_node`` pytest fixture that runs one plugin in a real node
(``pytest_plugin.py``, imported on first use: only that part needs pytest)."""

from typing import Any

from corec_node.testing.cluster import Cluster, NodeProc, eventually, free_port, voters_agree

__all__ = ["Cluster", "NodeProc", "PluginNode", "PluginNodeError", "PluginNodes", "eventually", "free_port",
           "plugin_node", "voters_agree"]

_FIXTURE_NAMES = ("plugin_node", "PluginNode", "PluginNodeError", "PluginNodes")


def __getattr__(name: str) -> Any:
    if name in _FIXTURE_NAMES:
        from corec_node.testing import pytest_plugin

        return getattr(pytest_plugin, name)
    raise AttributeError(f"module 'corec_node.testing' has no attribute {name!r}")
