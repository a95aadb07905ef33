"""The optional second opinion: per channel, a tiny MLP over the node's forecast residuals.
Imports torch: load this module from a worker thread (the plugin does, at startup).

The node forecasts every block (``residuals.py``); this net learns, online, one Adam step
per tick, to predict a block's next residual of that forecast from its last ``window``
residuals, and the judge adds its prediction to the node's forecast. Where the node's
forecaster errs in a pattern (a bias, a season its genome has not found yet) the corrected
prediction is closer and departures stand out sooner; where it does not, the net learns
to say about zero. Residuals are scaled by their running RMS per channel. CPU only, one
thread by default (``torch.set_num_threads``): it must not starve the node.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from corec_analyzer.residuals import EWMA


class _Net(nn.Module):
    def __init__(self, window: int, hidden: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(window, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).squeeze(-1)


class ResidualNet:
    """One channel's net (an ``Opinion``, ``residuals.py``)."""

    def __init__(self, window: int, hidden: int, lr: float) -> None:
        self.window = window
        self.net = _Net(window, hidden)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=lr)
        self.scale2: float | None = None  # running mean square of the residuals seen

    def _learn_scale(self, values: np.ndarray) -> float:
        if values.size:
            ms = float(np.mean(values ** 2))
            self.scale2 = ms if self.scale2 is None else self.scale2 + EWMA * (ms - self.scale2)
        return math.sqrt(self.scale2) if self.scale2 else 1.0

    def step(self, learn: np.ndarray, ask: np.ndarray) -> np.ndarray:
        scale = self._learn_scale(learn[:, -1] if len(learn) else np.zeros(0)) or 1.0
        if len(learn):
            arr = torch.from_numpy((learn / scale).astype(np.float32))
            self.opt.zero_grad()
            loss = nn.functional.mse_loss(self.net(arr[:, :-1]), arr[:, -1])
            loss.backward()
            self.opt.step()
        if not len(ask):
            return np.zeros(0)
        with torch.no_grad():
            out = self.net(torch.from_numpy((ask / scale).astype(np.float32))).numpy()
        return out.astype(np.float64) * scale


class Opinions:
    """Makes each channel's ResidualNet, seeded per channel from one generator."""

    def __init__(self, *, window: int = 8, hidden: int = 16, lr: float = 0.01, seed: int = 0, threads: int = 1) -> None:
        self.window, self.hidden, self.lr = window, hidden, lr
        torch.set_num_threads(max(1, threads))
        self._gen = torch.Generator().manual_seed(seed)

    def __call__(self, channel: int) -> ResidualNet:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=self._gen)))
            return ResidualNet(self.window, self.hidden, self.lr)
