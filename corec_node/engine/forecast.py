"""Forecasts: each block's next-tick mean, damped-trend additive Holt-Winters, vectorized.

Pure: numpy only, no I/O, no clock (a tick is one ``update`` call), no randomness. One
:class:`Forecasts` holds the state of many blocks in struct-of-arrays columns; one
``update`` advances every block given with a fixed number of numpy operations per season
group (blocks are grouped by their ``season`` gene), never a Python loop per block.

The model (statsmodels' ``ExponentialSmoothing(trend="add", damped_trend=True,
seasonal="add")`` in component form; genes ``alpha``, ``beta``, ``gamma``, ``damping`` =
phi, ``season`` = m)::

    forecast  f_t = l + phi * b + s[t mod m]           (made at tick t-1, for tick t)
    level     l'  = alpha * (y_t - s[t mod m]) + (1 - alpha) * (l + phi * b)
    trend     b'  = beta * (l' - l) + (1 - beta) * phi * b
    season    s[t mod m] = gamma * (y_t - l - phi * b) + (1 - gamma) * s[t mod m]

Rules:

1. A missing observation (NaN: a block with no active entity this tick) is replaced by the
   forecast itself: the error is 0, so level and trend move on along the damped trend, the
   season slot is unchanged, and nothing turns NaN. The tick still counts (the season's
   phase follows ticks, not observations), and it is not scored.
2. Warm start. A block's first finite observation sets the level (trend 0). A seasonal block
   runs without season for its first 2m ticks while it keeps them, then initialises from
   them (classical decomposition): trend = (mean of season 2 - mean of season 1) / m, each
   slot's seasonal = mean over both seasons of the detrended value minus its season's
   mean, level = the second season's mean carried to its end. NaNs in those ticks are
   skipped; a season with no finite value leaves the trend as Holt found it.
3. Scaled error (``scaled_error``, MASE-style): sum |y - f| / sum |y - naive| over the same
   scored ticks, where naive = the last finite observation before y. A tick is scored when
   y, f and naive are all finite. Both sums forget with factor 1 - 1/window per scored
   tick (a window of ``window`` ticks in effective length, O(1) state per block), so the
   two errors always weigh the same ticks alike. NaN until ``window`` ticks are scored.
   The naive sum is floored at NAIVE_FLOOR x the series' magnitude, so a constant series
   (naive perfect) scores ~0 when the forecast is perfect too, and a large finite number,
   never inf or NaN, when it is not: rounding in the warm start cannot blow it up.
4. Surprise (``surprise``): the last tick's |y - f| in robust sigmas, sigma estimated as
   MAE_TO_SIGMA x the forgetting mean of |y - f| over *earlier* ticks, so an anomaly
   never inflates the yardstick that judges it. ``flags`` compares it with the block's
   ``sensitivity`` gene once ``window`` ticks are scored (a yardstick of a dozen errors
   is too noisy to judge 4-sigma events; ``engine/anomaly.py`` turns flags into episodes
   and alerts). NaN until MIN_SURPRISE ticks are scored; sigma is floored at SIGMA_FLOOR x the series'
   magnitude, so float rounding on a constant series never flags, and any real move does.
5. Portable state. ``export(block)`` gives plain values (msgpack-friendly: floats, ints,
   lists); ``restore(block, state, genome)`` continues exactly as if the block had never
   moved (same float64 values). The genome travels separately (it is block state too); a
   state whose season differs from the genome's keeps level, trend and errors and warms
   its season up again (rule 2).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from corec_node.engine.genome import Genome

MAE_TO_SIGMA = math.sqrt(math.pi / 2)  # mean |e| of a normal error times this is its sigma
MIN_SURPRISE = 8  # scored ticks before a surprise is reported: a yardstick of fewer is noise
STATE_FORMAT = 1  # export's "v"
NAIVE_FLOOR = 1e-9  # rule 3: naive error sums below this share of |last| + 1 per tick are rounding
SIGMA_FLOOR = 1e-9  # rule 4: a yardstick below this share of |last| + 1 is rounding (a constant series)

_F64 = ("alpha", "beta", "gamma", "phi", "decay", "sens", "level", "trend", "last", "fc",
        "ef", "en", "w", "z")
_I64 = ("t", "scored", "window", "grp", "grow")


class _Season:
    """One season group: the ring of seasonal slots and the warm-up buffer (rule 2) of the
    blocks whose ``season`` gene is ``m`` (> 0)."""

    __slots__ = ("back", "buf", "m", "n", "seas")

    def __init__(self, m: int) -> None:
        self.m = m
        self.seas = np.zeros((4, m))
        self.buf = np.full((4, 2 * m), np.nan)
        self.back = np.zeros(4, np.int64)  # group row -> global row
        self.n = 0

    def add(self, row: int) -> int:
        if self.n == len(self.back):
            cap = 2 * len(self.back)
            self.seas = np.concatenate([self.seas, np.zeros_like(self.seas)])[:cap]
            self.buf = np.concatenate([self.buf, np.full_like(self.buf, np.nan)])[:cap]
            self.back = np.concatenate([self.back, np.zeros_like(self.back)])[:cap]
        g = self.n
        self.seas[g] = 0.0
        self.buf[g] = np.nan
        self.back[g] = row
        self.n += 1
        return g

    def remove(self, g: int) -> int | None:
        """Drop group row g (swap with the last); return the global row that moved to g."""
        last = self.n - 1
        moved = None
        if g != last:
            self.seas[g] = self.seas[last]
            self.buf[g] = self.buf[last]
            self.back[g] = self.back[last]
            moved = int(self.back[g])
        self.n -= 1
        return moved


class Forecasts:
    """Holt-Winters state of many blocks (module rules). Not thread-safe: one owner."""

    def __init__(self) -> None:
        self._n = 0
        self._cap = 0
        self._cols: dict[str, np.ndarray] = {}
        self._grow(16)
        self._row: dict[int, int] = {}
        self._groups: dict[int, _Season] = {}
        self._glist: list[_Season | None] = [None]  # grp index -> group (0: no season)
        self._gindex: dict[int, int] = {0: 0}
        self._sorted: tuple[np.ndarray, np.ndarray] | None = None

    # -- blocks ----------------------------------------------------------------------

    def __len__(self) -> int:
        return self._n

    def __contains__(self, block: object) -> bool:
        return block in self._row

    def ids(self) -> np.ndarray:
        """Block ids in row order (the order ``update(None, means)`` expects)."""
        return self._cols["ids"][: self._n].copy()

    def add(self, block: int, genome: Genome) -> None:
        """Start forecasting ``block`` from nothing under ``genome`` (replaces any state)."""
        if block in self._row:
            self.remove(block)
        self._add(int(block), genome)

    def add_many(self, blocks: Iterable[int], genome: Genome) -> None:
        """``add`` each block with the same genome."""
        for b in blocks:
            self.add(b, genome)

    def remove(self, block: int) -> None:
        """Forget ``block`` (KeyError if unknown). Export first to keep its state."""
        r = self._row.pop(int(block))
        c = self._cols
        gi, gr = int(c["grp"][r]), int(c["grow"][r])
        if gi:
            moved = self._glist[gi].remove(gr)
            if moved is not None:
                c["grow"][moved] = gr
        last = self._n - 1
        if r != last:
            for a in c.values():
                a[r] = a[last]
            self._row[int(c["ids"][r])] = r
            if c["grp"][r]:
                self._glist[int(c["grp"][r])].back[c["grow"][r]] = r
        self._n -= 1
        self._sorted = None

    def set_genome(self, block: int, genome: Genome) -> None:
        """New genes for a block already here. Same season: the state goes on under the new
        smoothing. Another season: level, trend and errors stay, the season warms up anew."""
        state = self.export(block)
        self.restore(block, state, genome)

    def genome_params(self, block: int) -> dict[str, float]:
        """The forecaster genes in use for ``block`` (for checks and display)."""
        r, c = self._row[int(block)], self._cols
        return {"alpha": float(c["alpha"][r]), "beta": float(c["beta"][r]),
                "gamma": float(c["gamma"][r]), "damping": float(c["phi"][r]),
                "season": self._season_of(r), "window": int(c["window"][r]),
                "sensitivity": float(c["sens"][r])}

    # -- the tick --------------------------------------------------------------------------

    def update(self, block_ids: Sequence[int] | np.ndarray | None, means: Any) -> None:
        """One tick: each block of ``block_ids`` observed ``means[i]`` (NaN: nothing
        observed, rule 1). ``block_ids`` None: every block, in ``ids()`` order. Blocks not
        given do not tick. Each block at most once; unknown ids raise KeyError."""
        y = np.asarray(means, np.float64).ravel()
        rows = self._rows(block_ids, len(y))
        if len(rows) == 0:
            return
        c = self._cols
        a, be, ga, phi = (c[k][rows] for k in ("alpha", "beta", "gamma", "phi"))
        l0, b0, last, t = c["level"][rows], c["trend"][rows], c["last"][rows], c["t"][rows]
        grp = c["grp"][rows]
        s = np.zeros(len(rows))
        sel = self._group_selections(grp)
        for gi, mask in sel:
            g = self._glist[gi]
            gr = c["grow"][rows[mask]]
            s[mask] = g.seas[gr, t[mask] % g.m]
        pb = phi * b0
        lp = l0 + pb
        f = lp + s
        fin = np.isfinite(y)
        started = np.isfinite(l0)

        # rule 3, 4: scoring on finite y, f, naive
        scored = fin & started & np.isfinite(last)
        ae = np.abs(y - f)
        an = np.abs(y - last)
        dec = c["decay"][rows]
        ef, en, w, nsc = c["ef"][rows], c["en"][rows], c["w"][rows], c["scored"][rows]
        with np.errstate(invalid="ignore", divide="ignore"):
            sigma = np.maximum(MAE_TO_SIGMA * ef / w, SIGMA_FLOOR * (np.abs(last) + 1.0))
            z = np.where(scored & (nsc >= MIN_SURPRISE), ae / sigma, np.nan)
        c["z"][rows] = z
        c["ef"][rows] = np.where(scored, dec * ef + ae, ef)
        c["en"][rows] = np.where(scored, dec * en + an, en)
        c["w"][rows] = np.where(scored, dec * w + 1.0, w)
        c["scored"][rows] = nsc + scored

        # rule 1: a missing y is its own forecast; the not-yet-started stay NaN
        ye = np.where(fin, y, f)
        l1 = a * (ye - s) + (1.0 - a) * lp
        b1 = be * (l1 - l0) + (1.0 - be) * pb
        s1 = ga * (ye - lp) + (1.0 - ga) * s
        first = fin & ~started
        l1 = np.where(started, l1, np.where(first, y, np.nan))
        b1 = np.where(started, b1, 0.0)
        t1 = t + 1
        fnext = np.zeros(len(rows))
        for gi, mask in sel:
            g = self._glist[gi]
            m = g.m
            gr = c["grow"][rows[mask]]
            tg = t[mask]
            warm = tg < 2 * m
            if warm.any():  # rule 2: keep the first 2m ticks, then decompose them
                wr = gr[warm]
                g.buf[wr, tg[warm]] = y[mask][warm]
                done = tg[warm] == 2 * m - 1
                if done.any():
                    lv, tr, sv = _decompose(g.buf[wr[done]], m)
                    idx = np.flatnonzero(mask)[np.flatnonzero(warm)[done]]
                    ok = np.isfinite(tr)
                    b1[idx] = np.where(ok, tr, b1[idx])
                    l1[idx] = np.where(np.isfinite(lv), lv, l1[idx])
                    g.seas[wr[done]] = sv
            live = ~warm
            if live.any():
                g.seas[gr[live], tg[live] % m] = np.where(started[mask][live], s1[mask][live], 0.0)
            fnext[mask] = g.seas[gr, t1[mask] % m]
        c["level"][rows] = l1
        c["trend"][rows] = b1
        c["t"][rows] = t1
        c["last"][rows] = np.where(fin, y, last)
        c["fc"][rows] = l1 + phi * b1 + fnext

    # -- reading ---------------------------------------------------------------------------

    def predict(self, block_ids: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """Each block's forecast of its next tick's mean (NaN before its first observation)."""
        return self._col("fc", block_ids)

    def scaled_error(self, block_ids: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """MASE-style scaled error per block over its ``window`` (rule 3); < 1 beats naive."""
        rows = self._rows(block_ids)
        c = self._cols
        ef, en, w = c["ef"][rows], c["en"][rows], c["w"][rows]
        floor = NAIVE_FLOOR * w * (np.abs(c["last"][rows]) + 1.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            out = ef / np.maximum(en, floor)
        return np.where(c["scored"][rows] >= c["window"][rows], out, np.nan)

    def surprise(self, block_ids: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """Last tick's |forecast error| in robust sigmas (rule 4); NaN when not judged."""
        return self._col("z", block_ids)

    def flags(self, block_ids: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """True where the last tick's surprise exceeds the block's ``sensitivity`` gene (rule 4)."""
        return self.judged(block_ids)[1]

    def judged(self, block_ids: Sequence[int] | np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(surprise, flags)`` of the last tick in one lookup (the tick path's call)."""
        rows = self._rows(block_ids)
        c = self._cols
        z = c["z"][rows]
        with np.errstate(invalid="ignore"):
            return z, (z > c["sens"][rows]) & (c["scored"][rows] > c["window"][rows])

    def last_observed(self, block_ids: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """Each block's last finite observation: the naive forecast of its next tick."""
        return self._col("last", block_ids)

    # -- portable state (rule 5) ------------------------------------------------------------

    def export(self, block: int) -> dict[str, Any]:
        """``block``'s forecaster state as plain values (no genome: it travels apart)."""
        r = self._row[int(block)]
        c = self._cols
        m = self._season_of(r)
        st: dict[str, Any] = {"v": STATE_FORMAT, "season": m}
        for k in ("level", "trend", "last", "fc", "ef", "en", "w", "z"):
            st[k] = float(c[k][r])
        st["t"] = int(c["t"][r])
        st["scored"] = int(c["scored"][r])
        if m:
            g = self._glist[int(c["grp"][r])]
            gr = int(c["grow"][r])
            st["seasonal"] = g.seas[gr].tolist()
            st["warm"] = g.buf[gr, : min(st["t"], 2 * m)].tolist() if st["t"] < 2 * m else []
        return st

    def restore(self, block: int, state: Mapping[str, Any], genome: Genome) -> None:
        """Take ``block`` with an exported state (rule 5); ValueError if it is malformed."""
        try:
            if state.get("v") != STATE_FORMAT:
                raise ValueError(f"forecast state format {state.get('v')!r} is not {STATE_FORMAT}")
            m_old = int(state["season"])
            vals = {k: float(state[k]) for k in ("level", "trend", "last", "fc", "ef", "en", "w", "z")}
            t, scored = int(state["t"]), int(state["scored"])
            seasonal = [float(x) for x in state.get("seasonal", ())]
            warm = [float(x) for x in state.get("warm", ())]
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"malformed forecast state: {e!r}") from None
        if m_old and (len(seasonal) != m_old or (t < 2 * m_old and len(warm) != t)):
            raise ValueError("malformed forecast state: seasonal ring or warm-up of wrong length")
        if block in self._row:
            self.remove(block)
        r = self._add(int(block), genome)
        c = self._cols
        for k, v in vals.items():
            c[k][r] = v
        c["scored"][r] = scored
        m = int(genome["season"])
        if m != m_old:  # another season: warm up again from here (rule 5)
            c["t"][r] = 0
            if m_old:  # the seasonal part leaves the forecast with the old ring
                c["fc"][r] = c["level"][r] + c["phi"][r] * c["trend"][r]
            return
        c["t"][r] = t
        if m:
            g = self._glist[int(c["grp"][r])]
            gr = int(c["grow"][r])
            g.seas[gr] = seasonal
            if warm:
                g.buf[gr, : len(warm)] = warm

    def skip(self, block: int, ticks: int) -> None:
        """``ticks`` ticks passed without ``block``'s forecaster (its node was down, or did
        not hold it): rule 1 for each, in closed form. Level and trend move on along the
        damped trend (level + b (phi + ... + phi^k), trend phi^k b), the seasonal ring stays,
        and the phase moves on by ``ticks``, so a season restored after a restart lines up
        with the ticks again. A warm-up (rule 2) the gap cuts short starts again."""
        if ticks <= 0:
            return
        r = self._row[int(block)]
        c = self._cols
        phi, b = float(c["phi"][r]), float(c["trend"][r])
        t, m = int(c["t"][r]), self._season_of(r)
        if np.isfinite(c["level"][r]) and b:
            # undamped, a long gap would carry the line anywhere: at most a window's worth
            ahead = min(ticks, max(2 * m, int(c["window"][r]))) if phi == 1.0 else ticks
            c["level"][r] += b * (ahead if phi == 1.0 else phi * (1.0 - phi**ahead) / (1.0 - phi))
            c["trend"][r] = b * phi**ahead
        g = self._glist[int(c["grp"][r])] if m else None
        gr = int(c["grow"][r])
        if g is not None and t < 2 * m:
            if t + ticks < 2 * m:
                g.buf[gr, t:t + ticks] = np.nan
                t += ticks
            else:
                g.buf[gr] = np.nan
                t = 0
        else:
            t += ticks
        c["t"][r] = t
        season = g.seas[gr, t % m] if g is not None else 0.0
        c["fc"][r] = c["level"][r] + c["phi"][r] * c["trend"][r] + season

    # -- internals ---------------------------------------------------------------------------

    def _grow(self, cap: int) -> None:
        old, n = self._cols, self._n
        cols = {"ids": np.zeros(cap, np.int64)}
        cols.update({k: np.zeros(cap) for k in _F64})
        cols.update({k: np.zeros(cap, np.int64) for k in _I64})
        for k, a in old.items():
            cols[k][:n] = a[:n]
        self._cols, self._cap = cols, cap

    def _add(self, block: int, genome: Genome) -> int:
        if self._n == self._cap:
            self._grow(2 * self._cap)
        r = self._n
        self._n += 1
        c = self._cols
        c["ids"][r] = block
        c["alpha"][r] = genome["alpha"]
        c["beta"][r] = genome["beta"]
        c["gamma"][r] = genome["gamma"]
        c["phi"][r] = genome["damping"]
        c["window"][r] = genome["window"]
        c["decay"][r] = 1.0 - 1.0 / genome["window"]
        c["sens"][r] = genome["sensitivity"]
        for k in ("level", "last", "fc", "z"):
            c[k][r] = np.nan
        for k in ("trend", "ef", "en", "w"):
            c[k][r] = 0.0
        c["t"][r] = c["scored"][r] = 0
        m = int(genome["season"])
        if m:
            gi = self._gindex.get(m)
            if gi is None:
                gi = self._gindex[m] = len(self._glist)
                self._glist.append(_Season(m))
            c["grp"][r] = gi
            c["grow"][r] = self._glist[gi].add(r)
        else:
            c["grp"][r] = c["grow"][r] = 0
        self._row[block] = r
        self._sorted = None
        return r

    def _season_of(self, r: int) -> int:
        gi = int(self._cols["grp"][r])
        return self._glist[gi].m if gi else 0

    def _rows(self, block_ids: Any, n: int | None = None) -> np.ndarray:
        if block_ids is None:
            if n is not None and n != self._n:
                raise ValueError(f"{n} values for {self._n} blocks")
            return np.arange(self._n)
        q = np.asarray(block_ids, np.int64).ravel()
        if n is not None and len(q) != n:
            raise ValueError(f"{n} values for {len(q)} block ids")
        if self._sorted is None:
            ids = self._cols["ids"][: self._n]
            order = np.argsort(ids, kind="stable")
            self._sorted = (ids[order], order)
        keys, order = self._sorted
        pos = np.searchsorted(keys, q)
        pos[pos >= len(keys)] = 0
        hit = keys[pos] == q if len(keys) else np.zeros(len(q), bool)
        if not hit.all():
            raise KeyError(f"unknown blocks {q[~hit][:5].tolist()}")
        return order[pos]

    def _col(self, name: str, block_ids: Any) -> np.ndarray:
        return self._cols[name][self._rows(block_ids)].copy()

    def _group_selections(self, grp: np.ndarray) -> list[tuple[int, np.ndarray]]:
        if len(self._glist) == 1:
            return []
        present = np.unique(grp)
        return [(int(gi), grp == gi) for gi in present if gi]


def _decompose(buf: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rule 2 on rows of 2m kept ticks: (level at the end, trend, seasonal ring of m)."""
    x1, x2 = buf[:, :m], buf[:, m:]
    with np.errstate(invalid="ignore", divide="ignore"):
        n1, n2 = np.isfinite(x1).sum(1), np.isfinite(x2).sum(1)
        m1 = np.where(n1 > 0, np.nansum(x1, 1) / np.maximum(n1, 1), np.nan)
        m2 = np.where(n2 > 0, np.nansum(x2, 1) / np.maximum(n2, 1), np.nan)
        trend = (m2 - m1) / m
        tr0 = np.where(np.isfinite(trend), trend, 0.0)
        pos = np.arange(m) - (m - 1) / 2.0  # each slot's distance from its season's centre
        d = np.stack([x1 - m1[:, None], x2 - m2[:, None]]) - tr0[:, None] * pos
        nd = np.isfinite(d).sum(0)
        seas = np.where(nd > 0, np.nansum(d, 0) / np.maximum(nd, 1), 0.0)
        seas -= seas.mean(1, keepdims=True)
        level = m2 + tr0 * (m - 1) / 2.0
    return level, trend, seas
