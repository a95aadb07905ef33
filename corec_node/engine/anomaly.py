"""Forecast anomalies: the blocks whose mean left their own forecast this tick, and which of
them open an episode worth one alert.

Pure: numpy and ``audit.AlertGate``; no I/O, no clock (ticks are the only time).
``AdaptiveBlocks.step`` feeds it every tick with what the forecaster judged (``forecast.py``
rule 4: |mean - forecast| in robust sigmas of the errors *before* this tick, against the
block's ``sensitivity`` gene), so the cost per tick is a few numpy operations over the held
blocks plus a little Python per flagged block, never per held block.

Rules:

1. A block is flagged on a tick when its surprise exceeds its ``sensitivity`` gene. Every
   holder flags (replicas forecast too), so a promoted replica knows which episodes are
   open; only the owner alerts (the shell's business).
2. Episodes (``AlertGate`` with persist 1, ``calm`` ticks): a block's first flag opens an
   episode and is the one alert (a spike is one tick, so one flag is enough); further flags
   belong to it, and it ends after CALM_TICKS ticks without a flag. A level shift flags for
   a few ticks while the forecaster catches up: still one episode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from corec_node.engine.audit import AlertGate, AuditRecord

CALM_TICKS = 10  # rule 2: ticks without a flag that end an episode (a block near its threshold flickers)
KIND = "forecast_anomaly"  # the alert's and the audit row's kind (shell/metrics.py ALERT_KINDS)
MAX_SIGMAS = 1e6  # reported sigmas are capped here: a block that never moved before has a yardstick of ~0


def _finite(x: float) -> float:
    return x if math.isfinite(x) else math.copysign(MAX_SIGMAS, x) if x == x else 0.0


@dataclass(frozen=True, slots=True)
class ForecastAnomaly:
    """One block flagged on one tick: its mean, the forecast made for it, how many robust
    sigmas apart. ``score`` is what ``AlertGate`` reads (the sigmas)."""

    block: int
    value: float
    forecast: float
    sigmas: float
    tick: int

    @property
    def channel(self) -> int:
        return self.block >> 32

    @property
    def score(self) -> float:
        return self.sigmas

    @property
    def subject(self) -> str:
        return f"block {self.channel}:{self.block & 0xFFFFFFFF}"

    def reason(self) -> str:
        return (f"mean {self.value:.6g} is {min(self.sigmas, MAX_SIGMAS):.1f} robust sigmas from "
                f"its forecast {self.forecast:.6g}")

    def facts(self) -> dict[str, Any]:
        return {"block": self.block, "channel": self.channel, "value": _finite(self.value),
                "forecast": _finite(self.forecast), "sigmas": round(min(self.sigmas, MAX_SIGMAS), 3),
                "tick": self.tick}

    def record(self) -> AuditRecord:
        """The audit row of an alerted episode (the other flags are not written)."""
        facts = self.facts()
        return AuditRecord(kind=KIND, subject=self.subject, reason=self.reason(), tick=self.tick,
                           details={k: facts[k] for k in ("block", "channel", "value", "forecast", "sigmas")})

    def alert(self) -> dict[str, Any]:
        """The episode as an alert dict (``node.raise_alert``'s fields)."""
        return {"kind": "forecast_anomaly", "text": f"{self.subject}: {self.reason()}", "severity": "warning", **self.facts()}


class AnomalyWatch:
    """This tick's flags (``now``) and the episodes they open (``opened``) (module rules)."""

    def __init__(self, calm: int = CALM_TICKS) -> None:
        self.gate = AlertGate(persist=1, min_score=0.0, calm=calm)
        self.now: dict[int, ForecastAnomaly] = {}  # block -> its flag this tick
        self.opened: list[ForecastAnomaly] = []  # flags of this tick that opened an episode
        self.flagged = 0  # flags since start (every tick, every holder)
        self.episodes = 0  # episodes opened since start

    def step(self, blocks: np.ndarray, means: np.ndarray, forecasts: np.ndarray,
             sigmas: np.ndarray, flags: np.ndarray, tick: int) -> list[ForecastAnomaly]:
        """One tick: ``flags`` (a mask over ``blocks``) with the means, the forecasts made
        for this tick and the sigmas; returns the flags that open an episode."""
        idx = np.flatnonzero(flags)
        found = [ForecastAnomaly(b, v, f, z, tick) for b, v, f, z in zip(
            blocks[idx].tolist(), means[idx].tolist(), forecasts[idx].tolist(), sigmas[idx].tolist())]
        self.now = {a.block: a for a in found}
        self.opened = self.gate.step(found)
        self.flagged += len(found)
        self.episodes += len(self.opened)
        return self.opened
