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

1. Batched. All blocks' parameters are one float32 tensor with a leading block axis
   (``[block, 161]`` by default: W1, b1, w2, b2, lin flattened, so [W1; b1] is the first
   layer's matrix against [x, 1] and [w2, b2, lin] the output's against [h, 1, x]), and
   Adam's two moments two more. One tick's training is a handful of batched matrix
   products and elementwise passes for every block at once, not a Python loop of 1,000
   tiny modules. The tick's math runs in numpy on the tensors' own memory (``Tensor.numpy``
   shares it): for 161 weights a block, numpy's stacked ``matmul`` took a third of torch's
   ``bmm`` and its ``tanh`` a sixth, and torch's autograd and per-op dispatch were most of
   the rest; the gradients are written out (two products and a few passes). Blocks never
   mix: the loss is the sum of per-block losses and Adam is elementwise with a per-block
   step count, so a block trains exactly as it would alone (each block's products are
   computed alone, in its own order, whatever the batch).
2. Online training. Each ``update`` appends the observations to each block's memory (the
   last ``memory`` ticks) and, on every ``train_every``-th tick of the block's own count,
   takes ``steps`` Adam steps on ``batch`` windows per block: the newest window always,
   the others drawn from the memory; it forecasts on every tick. The draws come from a
   counter hash of (the block's seed, tick, step), not a shared generator, so a block's
   trajectory does not depend on which other blocks share the tensors, nor on the host's
   seed once moved (a handed-off block continues exactly as it would have at home).
   The memory's changes are kept beside it (shifted with it), so the scale and the
   windows are read off them instead of being differenced again each step.
3. Deterministic under ``seed``: a block's own seed is a hash of (seed, block id); its
   initial weights and draws come from it, and it travels with the block's state. Only the
   initial weights use torch (its generator, as before); the rest is single-threaded numpy.
4. Missing observations (NaN) are filled with the block's own forecast so the history
   stays continuous, and are never training targets. A block's history starts at its first
   finite observation; NaN ticks before it are ignored. The season's phase counts ticks
   from that first observation (``ticks``).
5. Portable state: ``export(block)`` gives bytes, format 2: a fixed little-endian header
   (magic ``NANO``, version, window, hidden, memory, season, tick count, Adam's step count,
   forecast, the block's seed), then the weights, Adam's first and second moments (float32,
   in rule 1's order), the memory (float64) and its observed flags (one byte each): about
   12 us and 3.7 KB a block, where format 1's ``torch.save`` took ~250 us (1,000 blocks
   saved every 60 ticks cost 4 ms a tick). ``restore`` reads format 2 with ``frombuffer``
   and format 1 (``torch.save`` of a dict: the ``state_dict`` under "params", Adam's
   moments, memory and observed flags in one float64 tensor "rest", plain values) with
   ``torch.load(weights_only=True)``, as stored in users' SQLite files before; no pickle
   code runs on a stored or received blob. Code from before format 2 cannot read format 2.
   A restored block forecasts and trains on exactly as if it had never moved.
"""

from __future__ import annotations

import io
import math
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib.util import find_spec
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.lib.stride_tricks import as_strided

if TYPE_CHECKING:
    import torch

STATE_FORMAT = 2  # export's version; restore reads 1 too (rule 5)
_MAGIC = b"NANO"  # format 2's first bytes (format 1, a torch.save zip, starts with b"PK")
# format 2's header: magic, version, window, hidden, memory, season, n, adam_t, fc, seed
_HEAD = "<4sHIIIqqqdQ"
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
    them; the best scored 0.58, these 0.59), then ``train_every`` 2 with ``lr`` 0.0075 for
    under half the CPU: on all 16 series 0.639 in geometric mean, against 0.625 training every
    tick at 0.005 (2 at 0.005: 0.646; 2 with batch 16: 0.644; 3: 0.672; 4: 0.690)."""

    window: int = 12  # changes the net sees: a monthly season's; longer seasons come in by phase
    hidden: int = 8  # hidden units: 16 scored the same for twice the CPU; 161 weights per block
    memory: int = 192  # ticks of history kept per block for training (16 monthly seasons)
    batch: int = 8  # windows per block per step (the newest always among them); 16: same score
    steps: int = 1  # Adam steps per tick: 2 scored 2 % better for twice the CPU
    train_every: int = 2  # a block trains on every this-many-th of its own ticks (forecasts on all)
    lr: float = 0.0075  # Adam step size; training every tick, 0.005 was best (0.01 overfitted
    # the short noisy series); every 2nd, 0.0075 (0.01: 0.640)
    seed: int = 0

    def __post_init__(self) -> None:
        for k in ("window", "hidden", "memory", "batch", "steps", "train_every"):
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
        self._t: dict[str, torch.Tensor] = {}  # "p", "m", "v": [cap, npar] float32 (rule 1)
        self._a: dict[str, np.ndarray] = {}  # the same memory as numpy arrays (the tick's math)
        i, h = cfg.inputs, cfg.hidden
        self._shapes = {"W1": (i, h), "b1": (h,), "w2": (h,), "b2": (), "lin": (i,)}
        self._sizes = [math.prod(self._shapes[k]) for k in _PARAMS]
        self._npar = sum(self._sizes)
        self._l1 = (i + 1) * h  # [W1; b1]: the first layer as one [inputs + 1, hidden] matrix
        self._head = struct.Struct(_HEAD)
        self._ptab = np.zeros((1, 2 * HARMONICS), np.float32)  # _phase_table's
        self._phase_at = np.zeros(1, np.int64)
        self._phase_seen: set[int] = set()
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
        nw, nb = self._sizes[0], self._sizes[1]
        # the same draws, in the same order, as format 1's code made
        self._a["p"][r, :nw] = ((torch.rand(self._shapes["W1"], generator=g) * 2 - 1) * bound).reshape(-1).numpy()
        self._a["p"][r, nw:nw + nb] = ((torch.rand(self._shapes["b1"], generator=g) * 2 - 1) * bound).numpy()

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
            for a in self._np.values():
                a[r] = a[last]
            for a in self._a.values():
                a[r] = a[last]
            self._row[int(self._np["ids"][r])] = r
        self._n -= 1

    # -- the tick ----------------------------------------------------------------------------

    def update(self, block_ids: Sequence[int] | np.ndarray, means: Any) -> np.ndarray:
        """One tick: each block of ``block_ids`` observed ``means[i]`` (NaN: nothing, rule 4);
        train (rule 2); return each block's forecast of its next tick (NaN before its first
        observation). Unknown ids raise KeyError; blocks not given do not tick."""
        y = np.asarray(means, np.float64).ravel()
        asked = self._rows(block_ids)
        if len(asked) != len(y):
            raise ValueError(f"{len(y)} values for {len(asked)} block ids")
        if len(asked) == 0:
            return np.zeros(0)
        cfg, c = self.cfg, self._np
        n0 = c["n"][asked]
        fin = np.isfinite(y)
        tick = (n0 > 0) | fin  # rule 4: nothing before the first finite observation
        rows = asked
        if not tick.all():
            rows, y, fin, n0 = rows[tick], y[tick], fin[tick], n0[tick]
            if len(rows) == 0:
                return c["fc"][asked].copy()
        sel = _slice(rows)  # all blocks in row order (the usual tick): views, no gathers
        hist, obs, dh = c["hist"], c["obs"], c["dh"]
        last = hist[sel, -1].copy()
        fill = np.where(fin, y, c["fc"][sel])
        fill = np.where(np.isfinite(fill), fill, last)
        hist[sel, :-1] = hist[sel, 1:]
        hist[sel, -1] = fill
        obs[sel, :-1] = obs[sel, 1:]
        obs[sel, -1] = fin
        w = cfg.window
        dh[sel, w:-1] = dh[sel, w + 1:]
        with np.errstate(invalid="ignore"):
            dh[sel, -1] = np.where(n0 > 0, fill - last, 0.0)  # a change inside the history only
        n = n0 + 1
        c["n"][sel] = n
        scale = self._scale(dh[sel, w:], n, fill)  # once a tick: the same yardstick for every step
        due = (n % cfg.train_every) == 0 if cfg.train_every > 1 else None
        if due is None or due.all():
            for s in range(cfg.steps):
                self._train(rows, s, scale)
        elif due.any():
            for s in range(cfg.steps):
                self._train(rows[due], s, scale[due])
        c["fc"][sel] = self._forecast_rows(rows, scale)
        return c["fc"][asked].copy()

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
        dh = self._changes(vals[None], np.array([len(h)]))
        scale = self._scale(dh[:, self.cfg.window:], np.array([len(h)]), vals[-1:])
        f = self._inputs(dh, np.array([0]), np.array([[mem]]), np.array([[nxt]]),
                         self._np["season"][[r]], scale)
        out = self._net(self._a["p"][[r]], f)
        return float(out[0, 0] * scale[0] + vals[-1])

    # -- portable state (rule 5) -------------------------------------------------------------

    def export(self, block: int) -> bytes:
        """``block``'s whole state as bytes (rule 5, format 2)."""
        r = self._row[int(block)]
        c, cfg = self._np, self.cfg
        head = self._head.pack(_MAGIC, STATE_FORMAT, cfg.window, cfg.hidden, cfg.memory,
                               int(c["season"][r]), int(c["n"][r]), int(c["adam_t"][r]),
                               float(c["fc"][r]), int(c["bseed"][r]))
        a = self._a
        return b"".join((head, a["p"][r].astype("<f4").tobytes(), a["m"][r].astype("<f4").tobytes(),
                         a["v"][r].astype("<f4").tobytes(), c["hist"][r].astype("<f8").tobytes(),
                         c["obs"][r].tobytes()))

    def restore(self, block: int, blob: bytes) -> None:
        """Take ``block`` from ``export`` bytes, of this format or format 1 (rule 5);
        ValueError if they are not a state this config can hold (another window or hidden
        size, or not a NanoNets state)."""
        blob = bytes(blob)
        if blob[:4] == _MAGIC:
            state = self._read_v2(blob)
        else:
            state = self._read_v1(blob)
        p, am, av, hist, obs, season, n, adam_t, fc, bseed = state
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
        c["dh"][r] = self._changes(c["hist"][r][None], np.array([n]))[0]
        self._a["p"][r], self._a["m"][r], self._a["v"][r] = p, am, av

    def _read_v2(self, blob: bytes) -> tuple[Any, ...]:
        cfg, hs = self.cfg, self._head.size
        if len(blob) < hs:
            raise ValueError("malformed nanonet state: too short")
        _, v, window, hidden, mem, season, n, adam_t, fc, bseed = self._head.unpack_from(blob)
        if v != STATE_FORMAT:
            raise ValueError(f"nanonet state format {v!r} is not {STATE_FORMAT}")
        if (window, hidden) != (cfg.window, cfg.hidden):
            raise ValueError(f"nanonet state for window {window}, hidden {hidden}; "
                             f"this one has {cfg.window}, {cfg.hidden}")
        npar = self._npar
        if len(blob) != hs + 12 * npar + 9 * mem or season < 0 or n < 0 or adam_t < 0:
            raise ValueError(f"malformed nanonet state: {len(blob)} bytes for memory {mem}")
        f32 = np.frombuffer(blob, "<f4", 3 * npar, hs).astype(np.float32)
        hist = np.frombuffer(blob, "<f8", mem, hs + 12 * npar).astype(np.float64)
        obs = np.frombuffer(blob, np.uint8, mem, hs + 12 * npar + 8 * mem) > 0
        return (f32[:npar], f32[npar:2 * npar], f32[2 * npar:], hist, obs, int(season), int(n),
                int(adam_t), float(fc), np.uint64(bseed))

    def _read_v1(self, blob: bytes) -> tuple[Any, ...]:
        """Format 1: ``torch.save`` of a dict (the net's ``state_dict`` under "params", Adam's
        moments, memory and observed flags packed in one float64 tensor "rest"), read with
        ``torch.load(weights_only=True)``: no pickle code runs on a stored blob."""
        torch = self.torch
        try:
            st = torch.load(io.BytesIO(blob), weights_only=True)
            if st.get("v") != 1:
                raise ValueError(f"nanonet state format {st.get('v')!r} is not 1 or {STATE_FORMAT}")
            cf = st["config"]
            if (cf["window"], cf["hidden"]) != (self.cfg.window, self.cfg.hidden):
                raise ValueError(f"nanonet state for window {cf['window']}, hidden {cf['hidden']}; "
                                 f"this one has {self.cfg.window}, {self.cfg.hidden}")
            params = {k: st["params"][k].to(torch.float32) for k in _PARAMS}
            for k in _PARAMS:
                if tuple(params[k].shape) != self._shapes[k]:
                    raise ValueError(f"nanonet state: {k} has shape {tuple(params[k].shape)}")
            npar, mem_old = self._npar, int(st["memory"])
            rest = st["rest"].to(torch.float64)
            if tuple(rest.shape) != (2 * npar + 2 * mem_old,):
                raise ValueError(f"nanonet state: rest has shape {tuple(rest.shape)}")
            p = torch.cat([params[k].reshape(-1) for k in _PARAMS]).numpy().copy()
            moments = rest[: 2 * npar].to(torch.float32).numpy().copy()
            hist = rest[2 * npar: 2 * npar + mem_old].numpy().copy()
            obs = rest[2 * npar + mem_old:].numpy() > 0.5
            return (p, moments[:npar], moments[npar:], hist, obs, int(st["season"]), int(st["n"]),
                    int(st["adam_t"]), float(st["fc"]), np.uint64(int(st["seed"])))
        except ValueError:
            raise
        except Exception as e:  # torch's unpickler raises many kinds on foreign bytes
            raise ValueError(f"malformed nanonet state: {e!r}") from None

    # -- internals ---------------------------------------------------------------------------

    def _grow(self, cap: int) -> None:
        torch, cfg, n = self.torch, self.cfg, self._n
        new_np = {"ids": np.zeros(cap, np.int64), "bseed": np.zeros(cap, np.uint64),
                  "season": np.zeros(cap, np.int64),
                  "n": np.zeros(cap, np.int64), "adam_t": np.zeros(cap, np.int64),
                  "fc": np.full(cap, np.nan), "hist": np.full((cap, cfg.memory), np.nan),
                  "obs": np.zeros((cap, cfg.memory), bool),
                  # the history's changes, 0 where one end is outside it, after ``window`` zeros
                  "dh": np.zeros((cap, cfg.window + cfg.memory - 1))}
        for k, a in self._np.items():
            new_np[k][:n] = a[:n]
        self._np = new_np
        for k in ("p", "m", "v"):
            t = torch.zeros((cap, self._npar), dtype=torch.float32)
            if k in self._t:
                t[:n] = self._t[k][:n]
            self._t[k] = t
            self._a[k] = t.numpy()  # shares t's memory
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
        c["dh"][r] = 0.0
        for a in self._a.values():
            a[r] = 0.0
        self._row[block] = r
        return r

    def _rows(self, block_ids: Any) -> np.ndarray:
        q = np.asarray(block_ids, np.int64).ravel()
        try:
            return np.fromiter(map(self._row.__getitem__, q.tolist()), np.int64, len(q))
        except KeyError as e:
            raise KeyError(f"unknown block {e.args[0]}") from None

    def _changes(self, hist: np.ndarray, n: np.ndarray) -> np.ndarray:
        """The "dh" rows of histories ``hist`` [rows, memory] of ``n`` ticks each."""
        w, mem = self.cfg.window, hist.shape[1]
        first = mem - np.minimum(n, mem)
        inside = np.arange(mem - 1)[None, :] >= first[:, None]  # both ends of a change inside
        out = np.zeros((len(hist), w + mem - 1))
        with np.errstate(invalid="ignore"):
            out[:, w:] = np.where(inside, np.diff(hist, axis=1), 0.0)
        return out

    def _scale(self, changes: np.ndarray, n: np.ndarray, last: np.ndarray) -> np.ndarray:
        """Each row's mean |change| over its history (the MASE yardstick), floored; ``changes``
        [rows, memory - 1]: its "dh" without the leading zeros; ``last``: its newest value."""
        cnt = np.minimum(n, self.cfg.memory) - 1
        tot = np.abs(changes).sum(1)
        scale = np.where(cnt > 0, tot / np.maximum(cnt, 1), 0.0)
        return np.maximum(scale, SCALE_FLOOR * (np.abs(last) + 1.0))

    def _inputs(self, dh: np.ndarray, rr: np.ndarray, pos: np.ndarray, tick: np.ndarray,
                season: np.ndarray, scale: np.ndarray) -> np.ndarray:
        """The nets' inputs for targets at memory positions ``pos`` [rows, k] of rows ``rr``
        of ``dh``, the targets' tick indices ``tick`` [rows, k] (phase): F [rows, k, hidden +
        inputs + 2] float32, laid out [hidden units | 1 | x | 1] so that F[..., hidden + 1:]
        is the first layer's input ([x, 1] against [W1; b1]) and F[..., :-1] the second's
        ([h, 1, x] against [w2, b2, lin]). The hidden part is left for ``_hidden``."""
        cfg = self.cfg
        w, hd = cfg.window, cfg.hidden
        f = np.empty((*pos.shape, hd + cfg.inputs + 2), np.float32)
        f[..., hd] = 1.0
        f[..., -1] = 1.0
        # windows as rows of one strided view: window (r, s) starts at dh's flat offset
        # r * width + s, so one integer index per window (half the time of two)
        width = dh.shape[1]
        flat = as_strided(dh, (dh.size - w + 1, w), (dh.itemsize, dh.itemsize), writeable=False)
        win = flat[rr[:, None] * width + pos - 1]  # [rows, k, window], a copy
        np.divide(win, scale[:, None, None], out=win)
        np.clip(win, -CLIP, CLIP, out=f[..., hd + 1: hd + 1 + w])
        m = np.maximum(season, 1)[:, None]
        f[..., hd + 1 + w: -1] = self._phase_table(season)[self._phase_at[season][:, None] + tick % m]
        return f

    def _phase_table(self, season: np.ndarray) -> np.ndarray:
        """The phase features of every season in ``season`` (and of those seen before), one
        table: rows ``_phase_at[m]`` .. + m - 1 hold phases 0 .. m - 1 of season m (row 0:
        zeros, for no season). The same values as computing them, without a sin a window."""
        new = [int(m) for m in np.unique(season) if m > 0 and int(m) not in self._phase_seen]
        if new:
            parts = [self._ptab]
            at = self._phase_at
            for m in new:
                if m >= len(at):
                    at = np.concatenate([at, np.zeros(max(m + 1, 2 * len(at)) - len(at), np.int64)])
                at[m] = sum(len(p) for p in parts)
                ang = (2 * math.pi / m) * np.arange(m)
                part = np.empty((m, 2 * HARMONICS), np.float32)
                for h in range(HARMONICS):
                    part[:, 2 * h] = np.sin((h + 1) * ang)
                    part[:, 2 * h + 1] = np.cos((h + 1) * ang)
                parts.append(part)
                self._phase_seen.add(m)
            self._ptab, self._phase_at = np.concatenate(parts), at
        return self._ptab

    def _hidden(self, pw: np.ndarray, f: np.ndarray) -> np.ndarray:
        """Fill F's hidden part for parameters ``pw`` [rows, npar]: tanh([x, 1] @ [W1; b1])."""
        cfg = self.cfg
        a = pw[:, : self._l1].reshape(len(pw), cfg.inputs + 1, cfg.hidden)
        h = f[..., : cfg.hidden]
        np.tanh(np.matmul(f[..., cfg.hidden + 1:], a), out=h)
        return h

    def _out(self, pw: np.ndarray, f: np.ndarray) -> np.ndarray:
        """The net's output [rows, k]: [h, 1, x] @ [w2, b2, lin]."""
        return np.matmul(f[..., :-1], pw[:, self._l1:, None])[..., 0]

    def _net(self, pw: np.ndarray, f: np.ndarray) -> np.ndarray:
        self._hidden(pw, f)
        return self._out(pw, f).astype(np.float64)

    def _forecast_rows(self, rows: np.ndarray, scale: np.ndarray) -> np.ndarray:
        c, mem = self._np, self.cfg.memory
        f = self._inputs(c["dh"], rows, np.full((len(rows), 1), mem), c["n"][rows][:, None],
                         c["season"][rows], scale)
        sel = _slice(rows)
        return self._net(self._a["p"][sel], f)[:, 0] * scale + c["hist"][sel, -1]

    def _train(self, rows: np.ndarray, step: int, scale: np.ndarray) -> None:
        """One Adam step for ``rows`` with at least one observed target (rules 1, 2);
        ``scale`` is theirs, row for row. Gradients by hand: the loss is each block's
        weighted mean squared error, summed (rule 1), so block b's gradient is its own."""
        cfg, c = self.cfg, self._np
        mem, k, w, hd = cfg.memory, cfg.batch, cfg.window, cfg.hidden
        n = c["n"][rows]
        first = mem - np.minimum(n, mem)
        span = mem - 1 - first  # targets available: positions first+1 .. mem-1
        ok = span >= 1
        if not ok.all():
            rows, first, span, scale, n = rows[ok], first[ok], span[ok], scale[ok], n[ok]
        if len(rows) == 0:
            return
        bseed = c["bseed"][rows]
        with np.errstate(over="ignore"):
            ctr = (bseed[:, None] * np.uint64(0x9E3779B97F4A7C15)
                   + n.astype(np.uint64)[:, None] * np.uint64(0xBF58476D1CE4E5B9)
                   + np.uint64(step) * np.uint64(0x94D049BB133111EB)
                   + np.arange(k, dtype=np.uint64)[None, :])
        draw = (_mix(ctr) % span[:, None].astype(np.uint64)).astype(np.int64)
        pos = first[:, None] + 1 + draw
        pos[:, 0] = mem - 1  # the newest target always
        wt = c["obs"][rows[:, None], pos].astype(np.float32)
        wsum = wt.sum(1)
        keep = wsum > 0
        if not keep.all():
            rows, pos, wt, wsum, scale, n = rows[keep], pos[keep], wt[keep], wsum[keep], scale[keep], n[keep]
            if len(rows) == 0:
                return
        f = self._inputs(c["dh"], rows, pos, n[:, None] - mem + pos, c["season"][rows], scale)
        tgt = c["dh"][rows[:, None], w + pos - 1] / scale[:, None]
        np.clip(tgt, -CLIP, CLIP, out=tgt)
        wt *= (2.0 / wsum)[:, None]  # d(weighted mean of squares)/d(error), per block
        c["adam_t"][rows] += 1
        t = c["adam_t"][rows].astype(np.float64)
        b1, b2, eps = 0.9, 0.999, 1e-8  # torch.optim.Adam's defaults, per block (rule 1)
        lr_t = (cfg.lr / (1 - b1 ** t)).astype(np.float32)[:, None]
        bc2 = np.sqrt(1 - b2 ** t).astype(np.float32)[:, None]
        sel = _slice(rows)
        P, M, V = self._a["p"], self._a["m"], self._a["v"]
        pw, m, v = P[sel], M[sel], V[sel]  # views on a slice, copies on a gather
        h = self._hidden(pw, f)
        out = self._out(pw, f)
        out -= tgt.astype(np.float32)
        out *= wt  # d loss / d out [rows, k]
        g = np.empty_like(pw)
        g[:, self._l1:] = np.matmul(out[:, None, :], f[..., :-1])[:, 0]  # [w2, b2, lin]
        dz = out[:, :, None] * pw[:, None, self._l1: self._l1 + hd]
        dz *= 1 - h * h
        g[:, : self._l1] = np.matmul(f[..., hd + 1:].transpose(0, 2, 1), dz).reshape(len(pw), -1)  # [W1; b1]
        m *= b1
        m += (1 - b1) * g
        g *= g
        v *= b2
        v += (1 - b2) * g
        den = np.sqrt(v)
        den /= bc2
        den += eps
        upd = m * lr_t
        upd /= den
        pw -= upd
        if not isinstance(sel, slice):  # a gather made copies: put them back
            P[sel], M[sel], V[sel] = pw, m, v


def _slice(rows: np.ndarray) -> Any:
    """``rows`` as a slice when they are 0 .. len - 1 in order (the usual tick), else as is."""
    k = len(rows)
    if k and rows[0] == 0 and rows[-1] == k - 1 and (k < 3 or bool((np.diff(rows) == 1).all())):
        return slice(0, k)
    return rows
