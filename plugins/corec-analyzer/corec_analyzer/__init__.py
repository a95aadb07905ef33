"""corec-analyzer: flags blocks whose mean departs from the node's own forecast by more than
z sigma, and can emit its scores as entities on a channel of their own.

The node forecasts every block (rows of ``corec_block_aggregates`` carry ``forecast``); the
analyzer judges those forecasts, with no forecaster of its own. torch is optional: with
it, and ``model = true`` (the default), a tiny net per channel learns the forecasts'
residuals as a second opinion (imported at node startup, in a worker thread: importing
torch takes seconds). Without it the plugin loads all the same, logs
"analyzer: torch not installed: its model (the second opinion) is disabled", and judges
the node's forecasts alone.
"""

from __future__ import annotations

import logging

from corec_analyzer.plugin import NAME, TORCH_MISSING, AnalyzerPlugin, torch_available
from corec_node import log

__version__ = "0.2.0"
__all__ = ["NAME", "TORCH_MISSING", "AnalyzerPlugin", "plugin", "torch_available"]

if not torch_available():
    log.event("analyzer_model_disabled", logging.WARNING, plugin=NAME, reason="torch not installed",
              detail=TORCH_MISSING)

plugin: object = AnalyzerPlugin()
