"""The model: per channel, a 2-layer MLP that predicts a block's next aggregate value from
its last ``window`` values, trained online, one Adam step per tick. Imports torch: load
this module from a worker thread (the plugin does, at startup).

Per tick (``Analyzer.step``), for each channel, in this order:

1. Judge: a block predicted last tick gets its residual ``actual - predicted``, in the
   channel's units, and ``z = residual / sigma``, where ``sigma`` is the channel's running
   RMS of residuals (an exponential average). After ``warmup`` judged ticks, ``|z| > z``
   is a departure. Then sigma learns from this tick's residuals.
2. Learn: one optimizer step on every block with ``window + 1`` values: inputs the first
   ``window``, target the newest.
3. Predict: every block with ``window`` values gets its prediction for the next tick.

Values are normalized per channel (running mean and variance, exponential) and the net
predicts the change from the last value: a constant block costs the net nothing to learn.
CPU only, one thread by default (``torch.set_num_threads``): it must not starve the node.
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

EWMA = 0.05  # weight of a new tick in the running scale and residual RMS: ~20 ticks of memory
FORGET_AFTER = 50  # ticks without a row before a block's history is dropped (handed off, gone)


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
        }


class _Net(nn.Module):
    def __init__(self, window: int, hidden: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(window, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).squeeze(-1)


class ChannelModel:
    """One channel's net, scale and residual RMS, and its blocks' recent values."""

    def __init__(self, window: int, hidden: int, lr: float) -> None:
        self.window = window
        self.net = _Net(window, hidden)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=lr)
        self.history: dict[int, collections.deque[float]] = {}
        self.last_seen: dict[int, int] = {}
        self.pending: dict[int, float] = {}  # block -> predicted value for the next tick
        self.mean: float | None = None
        self.var = 1.0
        self.sigma2: float | None = None
        self.judged = 0  # ticks whose residuals trained sigma

    def _scale(self, values: np.ndarray) -> None:
        m, v = float(values.mean()), float(values.var())
        if self.mean is None:
            self.mean, self.var = m, max(v, 1e-12)
            return
        self.mean += EWMA * (m - self.mean)
        self.var += EWMA * (v + (m - self.mean) ** 2 - self.var)

    @property
    def std(self) -> float:
        return math.sqrt(max(self.var, 1e-12)) or 1.0

    def step(self, tick: int, blocks: np.ndarray, values: np.ndarray, z_limit: float, warmup: int,
             field: str, channel: int) -> tuple[list[Prediction], list[Departure]]:
        predictions: list[Prediction] = []
        departures: list[Departure] = []
        # 1. judge last tick's predictions
        judged = [(b, p, a) for b, a in zip(blocks.tolist(), values.tolist()) if (p := self.pending.get(b)) is not None]
        if judged:
            res = np.array([a - p for _, p, a in judged])
            sigma = math.sqrt(self.sigma2) if self.sigma2 is not None else None
            ready = sigma is not None and self.judged >= warmup
            floor = max(1e-9, 1e-6 * abs(self.mean or 0.0))
            for (b, p, a), r in zip(judged, res.tolist()):
                z = r / max(sigma, floor) if ready and sigma is not None else None
                predictions.append(Prediction(tick, b, channel, p, a, z))
                if z is not None and abs(z) > z_limit:
                    departures.append(Departure(tick, b, channel, field, p, a, max(sigma or 0.0, floor), z))
            # sigma learns from the non-departing residuals only: one wild block must not
            # widen the band for the others
            flagged = {d.block for d in departures}
            keep = np.array([r for (b, _, _), r in zip(judged, res.tolist()) if b not in flagged])
            if len(keep):
                ms = float(np.mean(keep ** 2))
                self.sigma2 = ms if self.sigma2 is None else self.sigma2 + EWMA * (ms - self.sigma2)
                self.judged += 1
        self.pending.clear()
        # history and scale
        self._scale(values)
        for b, v in zip(blocks.tolist(), values.tolist()):
            h = self.history.get(b)
            if h is None:
                h = self.history[b] = collections.deque(maxlen=self.window + 1)
            h.append(v)
            self.last_seen[b] = tick
        for b in [b for b, t in self.last_seen.items() if tick - t > FORGET_AFTER]:
            del self.history[b], self.last_seen[b]
        mean, std = self.mean or 0.0, self.std
        # 2. learn
        full = [h for b, h in self.history.items() if len(h) == self.window + 1 and self.last_seen[b] == tick]
        if full:
            arr = (np.array(full, np.float32) - mean) / std
            x = torch.from_numpy(arr[:, :-1])
            target = torch.from_numpy(arr[:, -1] - arr[:, -2])
            self.opt.zero_grad()
            loss = nn.functional.mse_loss(self.net(x), target)
            loss.backward()
            self.opt.step()
        # 3. predict the next tick
        ready = [(b, list(h)[-self.window:]) for b, h in self.history.items()
                 if len(h) >= self.window and self.last_seen[b] == tick]
        if ready:
            arr = (np.array([w for _, w in ready], np.float32) - mean) / std
            with torch.no_grad():
                delta = self.net(torch.from_numpy(arr)).numpy()
            nxt = (arr[:, -1] + delta) * std + mean
            for (b, _), p in zip(ready, nxt.tolist()):
                self.pending[b] = p
        return predictions, departures


class Analyzer:
    """All channels' models. ``step(tick, rows)`` is the whole per-tick work."""

    def __init__(self, *, window: int = 8, hidden: int = 16, lr: float = 0.01, z: float = 4.0,
                 warmup: int = 20, field: str = "mean", channels: set[int] | None = None,
                 seed: int = 0, threads: int = 1) -> None:
        self.window, self.hidden, self.lr = window, hidden, lr
        self.z, self.warmup, self.field = z, warmup, field
        self.channels = channels or None
        torch.set_num_threads(max(1, threads))
        self._gen = torch.Generator().manual_seed(seed)
        self.models: dict[int, ChannelModel] = {}

    def _model(self, channel: int) -> ChannelModel:
        m = self.models.get(channel)
        if m is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=self._gen)))
                m = self.models[channel] = ChannelModel(self.window, self.hidden, self.lr)
        return m

    def step(self, tick: int, rows: list[dict[str, Any]]) -> tuple[list[Prediction], list[Departure]]:
        by_channel: dict[int, tuple[list[int], list[float]]] = {}
        f = self.field
        for row in rows:
            v = row.get(f)
            ch = row["channel"]
            if v is None or math.isnan(v) or (self.channels is not None and ch not in self.channels):
                continue
            bl, vl = by_channel.setdefault(ch, ([], []))
            bl.append(row["block"])
            vl.append(float(v))
        predictions: list[Prediction] = []
        departures: list[Departure] = []
        for ch in sorted(by_channel):
            bl, vl = by_channel[ch]
            p, d = self._model(ch).step(tick, np.array(bl, np.int64), np.array(vl, np.float64),
                                        self.z, self.warmup, f, ch)
            predictions += p
            departures += d
        return predictions, departures
