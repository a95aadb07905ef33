"""CoreC: a brokerless node mesh for streaming and aggregating tiny entities."""

__version__ = "0.1.0"
