"""CoreC: a brokerless node mesh for streaming and aggregating tiny entities."""

__version__ = "0.4.0.dev0"

from corec_node.hookspecs import hookimpl  # noqa: E402  (plugins write @corec_node.hookimpl)

__all__ = ["__version__", "hookimpl"]
