"""NanoNets: the tiny torch forecaster of "intelligent" blocks (the seeds' NanoNeuralNet).

Pure in the DESIGN sense: no I/O, no clock, no global randomness; a tick is one ``update``.
torch is imported lazily, on the first ``NanoNets``: importing this module costs nothing,
works without torch installed, and a process that never builds one never pays torch's
~300 MB (the node runs this in a child process, ``corec_node.shell.trainer``).

The model, per block: a residual on naive last value. From the last ``window`` changes of
the block's mean (divided by the block's scale: its mean |change| over its memory, so the
net works in MASE units and every block looks alike to it) and the season's phase of the
next tick (sin and cos of two harmonics of ``season``; zeros without one), a one-hidden-
layer tanh MLP plus a linear skip predicts the next change::

    forecast = last + scale * (w2 . tanh(W1 x + b1) + b2 + lin . x)

Why this shape: the output and skip weights start at zero, so an untrained block forecasts
exactly its last value (never worse than naive while it knows nothing); the skip learns
the linear part (AR on changes: seasonal differences when ``window`` >= the season)
in a few dozen steps and the hidden layer the rest. A residual on the statistical
forecast was the alternative (not built, so not measured): the child would have to run
the block's forecaster and genome too, and with the default genome (no season) the net
would still have to learn the season. Scores are in bench/nanonet.py.

Rules:

1. Batched. All blocks share one set of parameter tensors with a leading block axis
   (``W1[block, in, hidden]``): one tick's training is a handful of ``bmm`` calls for
   every block at once, not a Python loop of 1,000 tiny modules (each of which would pay
   torch's per-call overhead of tens of microseconds per layer). Blocks never mix: the
   loss is the sum of per-block losses and Adam is elementwise, written out here with a
   per-block step count, so a block trains exactly as it would alone.
2. Online training. Each ``update`` appends the observations to each block's memory (the
   last ``memory`` ticks) and takes ``steps`` Adam steps on ``batch`` windows per block:
   the newest window always, the others drawn from the memory. The draws come from a
   counter hash of (the block's seed, tick, step), not a shared generator, so a block's
   trajectory does not depend on which other blocks share the tensors, nor on the host's
   seed once moved (a handed-off block continues exactly as it would have at home).
3. Deterministic under ``seed``: a block's own seed is a hash of (seed, block id); its
   initial weights and draws come from it, and it travels with the block's state. torch
   runs on CPU with the caller's thread count (the trainer sets 1).
4. Missing observations (NaN) are filled with the block's own forecast so the history
   stays continuous, and are never training targets. A block's history starts at its first
   finite observation; NaN ticks before it are ignored. The season's phase counts ticks
   from that first observation (``ticks``).
5. Portable state: ``export(block)`` gives bytes (``torch.save`` of a dict: the net's
   ``state_dict`` under "params", Adam's moments, memory and observed flags packed in one
   float64 tensor "rest", and plain values: tick count, season), ``restore`` reads them with
   ``torch.load(weights_only=True)`` (no pickle code runs on a stored or received blob).
   A restored block forecasts and trains on exactly as if it had never moved.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from importlib.util import find_spec
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

STATE_FORMAT = 1  # export's "v"
HARMONICS = 2  # season phase features: sin, cos of 1..HARMONICS times the season's angle
CLIP = 8.0  # normalized changes are clipped to +-CLIP scales: a spike cannot blow a step up
SCALE_FLOOR = 1e-6  # a block's scale is at least this share of |last| + 1 (a constant series)
_PARAMS = ("W1", "b1", "w2", "b2", "lin")


def available() -> bool:
    """True when torch can be imported (without importing it)."""
    return find_spec("torch") is not None


@dataclass(frozen=True, slots=True)
class NanoConfig:
    """Shape and training of one set of NanoNets. Defaults: the cheapest of the best of 12
    settings, by geometric-mean MASE on 12 of statsmodels' series (bench/nanonet.py names
    them; the best scored 0.58, these 0.59)."""

    window: int = 12  # changes the net sees: a monthly season's; longer seasons come in by phase
    hidden: int = 8  # hidden units: 16 scored the same for twice the CPU; 161 weights per block
    memory: int = 192  # ticks of history kept per block for training (16 monthly seasons)
    batch: int = 8  # windows per block per step (the newest always among them); 16: same score
    steps: int = 1  # Adam steps per tick: 2 scored 2 % better for twice the CPU
    lr: float = 0.005  # Adam step size: 0.01 learnt faster but overfitted the short noisy series
    seed: int = 0

    def __post_init__(self) -> None:
        for k in ("window", "hidden", "memory", "batch", "steps"):
            if int(getattr(self, k)) < 1:
                raise ValueError(f"NanoConfig.{k} must be >= 1, got {getattr(self, k)!r}")
        if self.memory < 3:
            raise ValueError("NanoConfig.memory must be >= 3")
        if not self.lr > 0:
            raise ValueError(f"NanoConfig.lr must be > 0, got {self.lr!r}")

    @property
    def inputs(self) -> int:
        return self.window + 2 * HARMONICS


def _torch() -> Any:
    import torch

    return torch


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer, vectorized: a counter -> a well-spread uint64 (rule 2)."""
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


class NanoNets:
    """Many blocks' tiny nets in batched tensors (module rules). Not thread-safe: one owner.
    Importing torch happens here, once per process."""

    def __init__(self, config: NanoConfig | None = None) -> None:
        self.cfg = cfg = config or NanoConfig()
        self.torch = _torch()
        self._n = 0
        self._cap = 0
        self._row: dict[int, int] = {}
        self._np: dict[str, np.ndarray] = {}
        self._p: dict[str, torch.Tensor] = {}
        self._m: dict[str, torch.Tensor] = {}
        self._v: dict[str, torch.Tensor] = {}
        self._shapes = {"W1": (cfg.inputs, cfg.hidden), "b1": (cfg.hidden,),
                        "w2": (cfg.hidden,), "b2": (), "lin": (cfg.inputs,)}
        self._grow(16)

    # -- blocks ------------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._n

    def __contains__(self, block: object) -> bool:
        return block in self._row

    def ids(self) -> np.ndarray:
        return self._np["ids"][: self._n].copy()

    def add(self, block: int, season: int = 0) -> None:
        """Start ``block`` from nothing (replaces any state): weights from (seed, block),
        phase features for ``season`` ticks (0: none)."""
        if season < 0:
            raise ValueError(f"season must be >= 0, got {season}")
        if block in self._row:
            self.remove(block)
        r = self._add(int(block), int(season))
        torch = self.torch
        key = np.array([self.cfg.seed, block], np.int64).view(np.uint64)
        bseed = _mix(_mix(key[:1]) ^ key[1:])[0]
        self._np["bseed"][r] = bseed
        g = torch.Generator().manual_seed(int(bseed >> np.uint64(1)))
        bound = 1.0 / math.sqrt(self.cfg.inputs)
        with torch.no_grad():
            self._p["W1"][r] = (torch.rand(self._shapes["W1"], generator=g) * 2 - 1) * bound
            self._p["b1"][r] = (torch.rand(self._shapes["b1"], generator=g) * 2 - 1) * bound

    def add_many(self, blocks: Iterable[int], season: int = 0) -> None:
        for b in blocks:
            self.add(b, season)

    def set_season(self, block: int, season: int) -> None:
        """Phase features for another ``season`` from the next tick on; the weights stay."""
        if season < 0:
            raise ValueError(f"season must be >= 0, got {season}")
        self._np["season"][self._row[int(block)]] = int(season)

    def season(self, block: int) -> int:
        return int(self._np["season"][self._row[int(block)]])

    def remove(self, block: int) -> None:
        """Forget ``block`` (KeyError if unknown). Export first to keep it."""
        r = self._row.pop(int(block))
        last = self._n - 1
        if r != last:
            for d in (self._np, self._p, self._m, self._v):
                for a in d.values():
                    a[r] = a[last]
            self._row[int(self._np["ids"][r])] = r
        self._n -= 1

    # -- the tick ----------------------------------------------------------------------------

    def update(self, block_ids: Sequence[int] | np.ndarray, means: Any) -> np.ndarray:
        """One tick: each block of ``block_ids`` observed ``means[i]`` (NaN: nothing, rule 4);
        train (rule 2); return each block's forecast of its next tick (NaN before its first
        observation). Unknown ids raise KeyError; blocks not given do not tick."""
        y = np.asarray(means, np.float64).ravel()
        rows = self._rows(block_ids)
        if len(rows) != len(y):
            raise ValueError(f"{len(y)} values for {len(rows)} block ids")
        if len(rows) == 0:
            return np.zeros(0)
        c = self._np
        n = c["n"][rows]
        fin = np.isfinite(y)
        tick = (n > 0) | fin  # rule 4: nothing before the first finite observation
        rows, y, fin = rows[tick], y[tick], fin[tick]
        if len(rows) == 0:
            return self.predict(block_ids)
        fill = np.where(fin, y, c["fc"][rows])
        fill = np.where(np.isfinite(fill), fill, c["hist"][rows, -1])
        hist, obs = c["hist"], c["obs"]
        hist[rows, :-1] = hist[rows, 1:]
        hist[rows, -1] = fill
        obs[rows, :-1] = obs[rows, 1:]
        obs[rows, -1] = fin
        c["n"][rows] += 1
        hist = hist[rows]
        first = self._first(rows)
        scale = self._scale(hist, first)  # once a tick: the same yardstick for every step
        for s in range(self.cfg.steps):
            self._train(rows, s, hist, first, scale)
        c["fc"][rows] = self._forecast_rows(rows, hist, first, scale)
        return c["fc"][self._rows(block_ids)].copy()

    def predict(self, block_ids: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """Each block's forecast of its next tick, as the last ``update`` left it."""
        rows = np.arange(self._n) if block_ids is None else self._rows(block_ids)
        return self._np["fc"][rows].copy()

    def forecast(self, block: int, history: Sequence[float], phase: int | None = None) -> float:
        """``block``'s net on an explicit ``history`` (oldest first; NaN entries are carried
        forward): the next value's forecast. ``phase``: the next tick's index in the block's
        tick count (default: the history from its first finite value is the block's whole).
        Changes nothing."""
        r = self._row[int(block)]
        h = np.array(history, np.float64).ravel()  # a copy: the caller's history is not touched
        fin = np.isfinite(h)
        if not fin.any():
            return math.nan
        h = h[np.argmax(fin):]  # rule 4: the history starts at its first finite value
        fin = np.isfinite(h)
        h = h[np.maximum.accumulate(np.where(fin, np.arange(len(h)), 0))]  # carry forward
        nxt = len(h) if phase is None else int(phase)
        mem = self.cfg.memory
        h = h[-mem:]
        vals = np.full(mem, h[0])
        vals[mem - len(h):] = h
        first = np.array([mem - len(h)])
        scale = self._scale(vals[None], first)
        x, base = self._windows(vals[None], first, np.array([[mem]]), np.array([[nxt]]),
                                self._np["season"][[r]], scale)
        return float(self._net(np.array([r]), x)[0, 0] * scale[0] + base[0, 0])

    # -- portable state (rule 5) -------------------------------------------------------------

    def export(self, block: int) -> bytes:
        """``block``'s whole state as ``torch.save`` bytes (rule 5)."""
        torch = self.torch
        r = self._row[int(block)]
        c = self._np
        flat = [d[k][r].reshape(-1) for d in (self._m, self._v) for k in _PARAMS]
        # one float64 record for everything but the weights: each record costs ~40 us to save
        rest = torch.cat([torch.cat(flat).to(torch.float64), torch.from_numpy(c["hist"][r]),
                          torch.from_numpy(c["obs"][r].astype(np.float64))])
        st = {"v": STATE_FORMAT, "config": {k: v for k, v in asdict(self.cfg).items() if k != "seed"},
              "season": int(c["season"][r]), "n": int(c["n"][r]), "adam_t": int(c["adam_t"][r]),
              "fc": float(c["fc"][r]), "memory": self.cfg.memory, "seed": int(c["bseed"][r]),
              "params": {k: self._p[k][r].clone() for k in _PARAMS},  # the net's state_dict
              "rest": rest}  # Adam's first and second moments, then hist, then obs
        buf = io.BytesIO()
        torch.save(st, buf)
        return buf.getvalue()

    def restore(self, block: int, blob: bytes) -> None:
        """Take ``block`` from ``export`` bytes; ValueError if they are not a state this
        config can hold (another window or hidden size, or not a NanoNets state)."""
        torch = self.torch
        try:
            st = torch.load(io.BytesIO(blob), weights_only=True)
            if st.get("v") != STATE_FORMAT:
                raise ValueError(f"nanonet state format {st.get('v')!r} is not {STATE_FORMAT}")
            cf = st["config"]
            if (cf["window"], cf["hidden"]) != (self.cfg.window, self.cfg.hidden):
                raise ValueError(f"nanonet state for window {cf['window']}, hidden {cf['hidden']}; "
                                 f"this one has {self.cfg.window}, {self.cfg.hidden}")
            params = {k: st["params"][k].to(torch.float32) for k in _PARAMS}
            for k in _PARAMS:
                if tuple(params[k].shape) != self._shapes[k]:
                    raise ValueError(f"nanonet state: {k} has shape {tuple(params[k].shape)}")
            sizes = [math.prod(self._shapes[k]) for k in _PARAMS]
            npar, mem_old = sum(sizes), int(st["memory"])
            rest = st["rest"].to(torch.float64)
            if tuple(rest.shape) != (2 * npar + 2 * mem_old,):
                raise ValueError(f"nanonet state: rest has shape {tuple(rest.shape)}")
            moments = rest[: 2 * npar].to(torch.float32).split(sizes + sizes)
            am = {k: moments[i].reshape(self._shapes[k]) for i, k in enumerate(_PARAMS)}
            av = {k: moments[len(_PARAMS) + i].reshape(self._shapes[k]) for i, k in enumerate(_PARAMS)}
            hist = rest[2 * npar: 2 * npar + mem_old].numpy().copy()
            obs = rest[2 * npar + mem_old:].numpy() > 0.5
            season, n, adam_t, fc = int(st["season"]), int(st["n"]), int(st["adam_t"]), float(st["fc"])
            bseed = np.uint64(int(st["seed"]))
        except ValueError:
            raise
        except Exception as e:  # torch's unpickler raises many kinds on foreign bytes
            raise ValueError(f"malformed nanonet state: {e!r}") from None
        if block in self._row:
            self.remove(block)
        r = self._add(int(block), season)
        mem = self.cfg.memory
        k = min(mem, len(hist))
        c = self._np
        c["hist"][r] = hist[len(hist) - k] if k else np.nan  # a smaller memory pads with its oldest
        c["hist"][r, mem - k:] = hist[len(hist) - k:]
        c["obs"][r] = False
        c["obs"][r, mem - k:] = obs[len(obs) - k:]
        c["n"][r], c["adam_t"][r], c["fc"][r], c["bseed"][r] = n, adam_t, fc, bseed
        with torch.no_grad():
            for name in _PARAMS:
                self._p[name][r] = params[name]
                self._m[name][r] = am[name]
                self._v[name][r] = av[name]

    # -- internals ---------------------------------------------------------------------------

    def _grow(self, cap: int) -> None:
        torch, cfg, n = self.torch, self.cfg, self._n
        new_np = {"ids": np.zeros(cap, np.int64), "bseed": np.zeros(cap, np.uint64),
                  "season": np.zeros(cap, np.int64),
                  "n": np.zeros(cap, np.int64), "adam_t": np.zeros(cap, np.int64),
                  "fc": np.full(cap, np.nan), "hist": np.full((cap, cfg.memory), np.nan),
                  "obs": np.zeros((cap, cfg.memory), bool)}
        for k, a in self._np.items():
            new_np[k][:n] = a[:n]
        self._np = new_np
        for d in (self._p, self._m, self._v):
            for k, shape in self._shapes.items():
                t = torch.zeros((cap, *shape), dtype=torch.float32)
                if k in d:
                    t[:n] = d[k][:n]
                d[k] = t
        self._cap = cap

    def _add(self, block: int, season: int) -> int:
        if self._n == self._cap:
            self._grow(2 * self._cap)
        r = self._n
        self._n += 1
        c = self._np
        c["ids"][r], c["season"][r], c["n"][r], c["adam_t"][r] = block, season, 0, 0
        c["fc"][r] = np.nan
        c["hist"][r] = np.nan
        c["obs"][r] = False
        with self.torch.no_grad():
            for d in (self._p, self._m, self._v):
                for t in d.values():
                    t[r] = 0.0
        self._row[block] = r
        return r

    def _rows(self, block_ids: Any) -> np.ndarray:
        q = np.asarray(block_ids, np.int64).ravel()
        try:
            return np.fromiter((self._row[int(b)] for b in q), np.int64, len(q))
        except KeyError as e:
            raise KeyError(f"unknown block {e.args[0]}") from None

    @staticmethod
    def _scale(hist: np.ndarray, first: np.ndarray) -> np.ndarray:
        """Each row's mean |change| over its history (the MASE yardstick), floored."""
        mem = hist.shape[1]
        inside = (np.arange(mem - 1)[None, :] >= first[:, None])  # both ends of a change inside
        d = np.where(inside, np.abs(np.diff(hist, axis=1)), 0.0)
        cnt = inside.sum(1)
        scale = np.where(cnt > 0, d.sum(1) / np.maximum(cnt, 1), 0.0)
        last = np.nan_to_num(hist[:, -1])
        return np.maximum(np.nan_to_num(scale), SCALE_FLOOR * (np.abs(last) + 1.0))

    def _windows(self, hist: np.ndarray, first: np.ndarray, pos: np.ndarray, tick: np.ndarray,
                 season: np.ndarray, scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Net inputs for targets at memory positions ``pos`` [rows, k] of ``hist`` [rows,
        memory] whose valid part starts at ``first`` [rows]; ``tick`` [rows, k]: the
        targets' tick indices (phase). Returns (x [rows, k, inputs], base [rows, k]: the
        value before each target)."""
        cfg = self.cfg
        mem = hist.shape[1]
        rr = np.arange(len(hist))[:, None, None]
        idx = pos[:, :, None] - cfg.window - 1 + np.arange(cfg.window + 1)
        idx = np.clip(idx, first[:, None, None], mem - 1)
        vals = hist[rr, idx]
        x = np.zeros((*pos.shape, cfg.inputs), np.float32)
        x[..., : cfg.window] = np.clip(np.diff(vals, axis=2) / scale[:, None, None], -CLIP, CLIP)
        m = np.maximum(season, 1)[:, None]
        ang = np.where(season[:, None] > 0, (2 * math.pi / m) * (tick % m), 0.0)
        on = (season > 0)[:, None].astype(np.float32)
        for h in range(HARMONICS):
            x[..., cfg.window + 2 * h] = np.sin((h + 1) * ang) * on
            x[..., cfg.window + 2 * h + 1] = np.cos((h + 1) * ang) * on
        return x, vals[:, :, -1]

    def _net(self, rows: np.ndarray, x: np.ndarray) -> np.ndarray:
        torch = self.torch
        sel = self._sel(rows)
        with torch.no_grad():
            out = self._apply({k: self._p[k][sel] for k in _PARAMS}, torch.from_numpy(x))
        return out.numpy().astype(np.float64)

    def _sel(self, rows: np.ndarray) -> Any:
        """An index for ``rows`` into the tensors: a slice (a view, no gather or scatter)
        when they are the first len(rows) rows in order, the common tick of every block."""
        k = len(rows)
        if k and rows[0] == 0 and rows[-1] == k - 1 and (k < 3 or bool((np.diff(rows) == 1).all())):
            return slice(0, k)
        return self.torch.from_numpy(rows)

    def _apply(self, p: dict[str, Any], x: torch.Tensor) -> torch.Tensor:
        torch = self.torch
        h = torch.tanh(torch.bmm(x, p["W1"]) + p["b1"][:, None, :])
        return ((h * p["w2"][:, None, :]).sum(-1) + p["b2"][:, None]
                + (x * p["lin"][:, None, :]).sum(-1))

    def _first(self, rows: np.ndarray) -> np.ndarray:
        """Memory position where each row's history starts."""
        return self.cfg.memory - np.minimum(self._np["n"][rows], self.cfg.memory)

    def _forecast_rows(self, rows: np.ndarray, hist: np.ndarray, first: np.ndarray,
                       scale: np.ndarray) -> np.ndarray:
        c, mem = self._np, self.cfg.memory
        x, base = self._windows(hist, first, np.full((len(rows), 1), mem), c["n"][rows][:, None],
                                c["season"][rows], scale)
        return self._net(rows, x)[:, 0] * scale + base[:, 0]

    def _train(self, rows: np.ndarray, step: int, hist: np.ndarray, first: np.ndarray,
               scale: np.ndarray) -> None:
        """One Adam step for ``rows`` with at least one observed target (rules 1, 2);
        ``hist``, ``first`` and ``scale`` are theirs, row for row."""
        cfg, c, torch = self.cfg, self._np, self.torch
        mem, k = cfg.memory, cfg.batch
        span = mem - 1 - first  # targets available: positions first+1 .. mem-1
        ok = span >= 1
        if not ok.all():
            rows, first, span, hist, scale = rows[ok], first[ok], span[ok], hist[ok], scale[ok]
        if len(rows) == 0:
            return
        bseed = c["bseed"][rows]
        n = c["n"][rows].astype(np.uint64)
        with np.errstate(over="ignore"):
            ctr = (bseed[:, None] * np.uint64(0x9E3779B97F4A7C15)
                   + n[:, None] * np.uint64(0xBF58476D1CE4E5B9)
                   + np.uint64(step) * np.uint64(0x94D049BB133111EB)
                   + np.arange(k, dtype=np.uint64)[None, :])
        draw = (_mix(ctr) % span[:, None].astype(np.uint64)).astype(np.int64)
        pos = first[:, None] + 1 + draw
        pos[:, 0] = mem - 1  # the newest target always
        w = c["obs"][rows[:, None], pos].astype(np.float32)
        tick = c["n"][rows][:, None] - mem + pos
        x, base = self._windows(hist, first, pos, tick, c["season"][rows], scale)
        tgt = np.clip((hist[np.arange(len(rows))[:, None], pos] - base) / scale[:, None], -CLIP, CLIP)
        keep = w.sum(1) > 0
        if not keep.all():
            rows, x, tgt, w = rows[keep], x[keep], tgt[keep], w[keep]
            if len(rows) == 0:
                return
        tr = self._sel(rows)
        p = {name: self._p[name][tr].clone().requires_grad_(True) for name in _PARAMS}
        out = self._apply(p, torch.from_numpy(x))
        wt = torch.from_numpy(w)
        err = (out - torch.from_numpy(tgt.astype(np.float32))) ** 2
        loss = ((err * wt).sum(1) / wt.sum(1)).sum()  # rule 1: per-block losses, summed
        loss.backward()
        c["adam_t"][rows] += 1
        t = torch.from_numpy(c["adam_t"][rows].astype(np.float32))
        b1, b2, eps = 0.9, 0.999, 1e-8  # torch.optim.Adam's defaults, per block (rule 1)
        bc1, bc2 = 1 - b1 ** t, (1 - b2 ** t).sqrt_()
        with torch.no_grad():
            for name in _PARAMS:
                g = p[name].grad
                shape = (-1,) + (1,) * (g.dim() - 1)
                m, v, w = self._m[name][tr], self._v[name][tr], self._p[name][tr]  # views on a slice
                m.mul_(b1).add_(g, alpha=1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                denom = v.sqrt().div_(bc2.reshape(shape)).add_(eps)
                w.addcdiv_(m / bc1.reshape(shape), denom, value=-cfg.lr)
                if not isinstance(tr, slice):  # a gather made copies: put them back
                    self._m[name][tr], self._v[name][tr], self._p[name][tr] = m, v, w
