"""corec-analyzer: per channel, a tiny torch model predicts each block's next aggregate
and flags blocks whose actual value departs from the prediction by more than z sigma.

torch is optional. Without it the entry point's ``plugin`` is an object with no hooks and
``DISABLED_REASON`` set: the node lists the plugin as disabled, logs
"analyzer disabled: torch not installed", and starts as usual. With it, torch itself is
imported only at node startup, in a worker thread (importing it takes seconds).
"""

from __future__ import annotations

import importlib.util
import logging

from corec_node import log

__version__ = "0.1.0"
NAME = "analyzer"
TORCH_MISSING = "analyzer disabled: torch not installed"


class Unavailable:
    """Stands in for the plugin when torch is missing: no hooks, a reason."""

    DISABLED_REASON = TORCH_MISSING


def torch_available() -> bool:
    return importlib.util.find_spec("torch") is not None


if torch_available():
    from corec_analyzer.plugin import AnalyzerPlugin

    plugin: object = AnalyzerPlugin()
else:
    log.event("analyzer_disabled", logging.WARNING, plugin=NAME, reason="torch not installed", detail=TORCH_MISSING)
    plugin = Unavailable()
