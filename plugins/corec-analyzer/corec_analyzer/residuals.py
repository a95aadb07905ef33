"""The analyzer's judge, over the node's own forecasts: no model of its own, no torch.

Every block's row from ``corec_block_aggregates`` carries ``forecast``, the node's forecast
of the block's next mean (the adaptive layer: a genome per block, evolved by the cluster;
README "Adaptive blocks"). The analyzer used to train a second forecaster to the same end;
now it judges the layer's: a block's residual at tick t is its mean at t minus the forecast
its row made at t - 1.

Per tick (``Analyzer.step``), for each channel, in this order:

1. Judge: a block whose row of the previous tick gave a forecast gets ``predicted`` (that
   forecast, plus the second opinion's correction when there is one) and
   ``z = (actual - predicted) / sigma``, where ``sigma`` is the channel's running RMS of
   those residuals (an exponential average of the blocks that did not depart: one wild
   block must not widen the band for the others). After ``warmup`` judged ticks,
   ``|z| > z_limit`` is a departure.
2. Remember: the layer's own residual goes into the block's history (``window + 1`` kept),
   and this row's forecast is next tick's prediction.
3. Second opinion (optional: ``Opinion``, the torch model in ``model.py``): it learns the
   layer's residuals from their own recent past and predicts each block's next one, which
   corrects the next prediction. It can only help where the layer errs in a pattern (a
   bias, a season the genome has not found yet).

A block that misses a tick (``engine.tick_rows`` rotates rows) is not judged against a
forecast made for another tick. Pure: numpy only.
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

EWMA = 0.05  # weight of a new tick in the residual RMS: ~20 ticks of memory
FORGET_AFTER = 50  # ticks without a row before a block's history is dropped (handed off, gone)
ID_BITS = 24  # emitted scores: entity id = source channel << 24 | block index (blocks of 2**24 per channel)


@dataclass(frozen=True, slots=True)
class Prediction:
    tick: int  # the tick the prediction was for
    block: int
    channel: int
    predicted: float
    actual: float
    z: float | None  # None during warmup


@dataclass(frozen=True, slots=True)
class Departure:
    tick: int
    block: int
    channel: int
    field: str
    predicted: float
    actual: float
    sigma: float
    z: float
    source: str = "forecast"  # "forecast": the node's alone; "forecast+model": with the second opinion

    def alert(self) -> dict[str, Any]:
        return {
            "kind": "prediction_departure",
            "severity": "warning",
            "text": (f"block {self.channel}:{self.block & 0xFFFFFFFF} {self.field} {self.actual:.4g}, "
                     f"predicted {self.predicted:.4g} +/- {self.sigma:.2g} (z {self.z:+.1f}, tick {self.tick})"),
            "block": self.block,
            "channel": self.channel,
            "tick": self.tick,
            "field": self.field,
            "predicted": self.predicted,
            "actual": self.actual,
            "z": self.z,
            "source": self.source,
        }


def score_id(block: int) -> int:
    """The entity id a block's score is emitted under: its channel << 24 | its index."""
    return ((block >> 32) & 0xFF) << ID_BITS | (block & ((1 << ID_BITS) - 1))


class Opinion(Protocol):
    """A second opinion over one channel's residuals (``model.ResidualNet``)."""

    def step(self, learn: np.ndarray, ask: np.ndarray) -> np.ndarray:
        """Learn from ``learn`` (rows of ``window + 1`` residuals: inputs, then the target),
        then return the next residual for each row of ``ask`` (``window`` residuals)."""
        ...


class ChannelJudge:
    """One channel: its blocks' pending predictions and residual histories, its sigma."""

    def __init__(self, window: int, opinion: Opinion | None) -> None:
        self.window = window
        self.opinion = opinion
        self.pending: dict[int, tuple[int, float, float]] = {}  # block -> (for tick, forecast, correction)
        self.history: dict[int, collections.deque[float]] = {}
        self.last_seen: dict[int, int] = {}
        self.sigma2: float | None = None
        self.judged = 0  # ticks whose residuals trained sigma

    def step(self, tick: int, channel: int, rows: list[tuple[int, float, float | None]], z_limit: float,
             warmup: int) -> tuple[list[Prediction], list[Departure]]:
        """``rows``: (block, mean, forecast of the next mean or None) of this tick."""
        predictions: list[Prediction] = []
        departures: list[Departure] = []
        judged: list[tuple[int, float, float, float]] = []  # block, predicted, actual, layer's residual
        for b, actual, _ in rows:
            p = self.pending.get(b)
            if p is not None and p[0] == tick:
                judged.append((b, p[1] + p[2], actual, actual - p[1]))
        source = "forecast" if self.opinion is None else "forecast+model"
        if judged:
            sigma = math.sqrt(self.sigma2) if self.sigma2 is not None else None
            ready = sigma is not None and self.judged >= warmup
            scale = max((abs(a) for _, _, a, _ in judged), default=0.0)
            floor = max(1e-9, 1e-6 * scale)
            for b, p, a, _ in judged:
                z = (a - p) / max(sigma, floor) if ready and sigma is not None else None
                predictions.append(Prediction(tick, b, channel, p, a, z))
                if z is not None and abs(z) > z_limit:
                    departures.append(Departure(tick, b, channel, "mean", p, a, max(sigma or 0.0, floor), z, source))
            flagged = {d.block for d in departures}
            keep = np.array([a - p for b, p, a, _ in judged if b not in flagged])
            if len(keep):
                ms = float(np.mean(keep ** 2))
                self.sigma2 = ms if self.sigma2 is None else self.sigma2 + EWMA * (ms - self.sigma2)
                self.judged += 1
        self.pending.clear()
        for b, _, _, r in judged:
            h = self.history.get(b)
            if h is None:
                h = self.history[b] = collections.deque(maxlen=self.window + 1)
            h.append(r)
        for b, _, _ in rows:
            self.last_seen[b] = tick
        for b in [b for b, t in self.last_seen.items() if tick - t > FORGET_AFTER]:
            del self.last_seen[b]
            self.history.pop(b, None)
        corrections = self._second_opinion(tick, [b for b, _, f in rows if f is not None])
        for b, _, f in rows:
            if f is not None and f == f:
                self.pending[b] = (tick + 1, f, corrections.get(b, 0.0))
        return predictions, departures

    def _second_opinion(self, tick: int, blocks: list[int]) -> dict[int, float]:
        if self.opinion is None:
            return {}
        learn = [list(h) for b, h in self.history.items() if len(h) == self.window + 1 and self.last_seen[b] == tick]
        ask = [(b, list(self.history[b])[-self.window:]) for b in blocks
               if b in self.history and len(self.history[b]) >= self.window]
        got = self.opinion.step(np.array(learn, np.float64).reshape(len(learn), self.window + 1),
                                np.array([w for _, w in ask], np.float64).reshape(len(ask), self.window))
        return {b: float(c) for (b, _), c in zip(ask, np.asarray(got).tolist())}


class Analyzer:
    """Every channel's judge. ``step(tick, rows)`` is the whole per-tick work.

    ``opinion(channel)`` makes a channel's second opinion (None: the node's forecast alone);
    ``exclude``: channels never judged (the one the scores are emitted on)."""

    def __init__(self, *, z: float = 4.0, warmup: int = 20, window: int = 8, channels: set[int] | None = None,
                 exclude: set[int] | None = None, opinion: Any = None) -> None:
        self.z, self.warmup, self.window = z, warmup, window
        self.channels = channels or None
        self.exclude = exclude or set()
        self._opinion = opinion
        self.judges: dict[int, ChannelJudge] = {}

    def step(self, tick: int, rows: list[dict[str, Any]]) -> tuple[list[Prediction], list[Departure]]:
        by_channel: dict[int, list[tuple[int, float, float | None]]] = {}
        for row in rows:
            ch, mean = row["channel"], row.get("mean")
            if mean is None or mean != mean or ch in self.exclude or (self.channels is not None and ch not in self.channels):
                continue
            forecast = row.get("forecast")
            by_channel.setdefault(ch, []).append((row["block"], float(mean), None if forecast is None else float(forecast)))
        predictions: list[Prediction] = []
        departures: list[Departure] = []
        for ch in sorted(by_channel):
            judge = self.judges.get(ch)
            if judge is None:
                judge = self.judges[ch] = ChannelJudge(self.window, self._opinion(ch) if self._opinion else None)
            p, d = judge.step(tick, ch, by_channel[ch], self.z, self.warmup)
            predictions += p
            departures += d
        return predictions, departures
