"""Evolution judged fairly: shadow trials on a block's own series, and the nucleus's plan.

Pure: numpy only, no I/O, no clock (ticks are arguments), randomness only from the rng
passed in. Two halves, used by two roles:

- the nucleus, every K ticks, calls :func:`plan_challengers` over its view of the cluster's
  blocks and sends each owner its :class:`Challenge` rows (fenced by its term, like fusion);
- each owner runs the challenges it got in a :class:`ShadowTrials` beside its own
  ``Forecasts``, and acts on the :class:`Verdict` rows it returns (each one is an audit row).

Per tick, on the owner (``forecasts`` holds the current genomes' state)::

    verdicts = trials.observe(ids, means, forecasts.predict(ids), tick)   # before update
    forecasts.update(ids, means)
    for v in verdicts:
        if v.promoted:
            forecasts.restore(v.block, v.state, v.challenger)   # the challenger's own state
            genomes[v.block] = v.challenger
        audit(v.record())

Fitness, with its forecasting part (what ``blocks --json`` publishes and the planner ranks
by; see :func:`fitness`)::

    fitness = health * (1 + q) / 2,   q = 1 / (1 + scaled_error)

``health`` is the aggregate's fitness (aggregate.py: active share, error rate, stability).
``scaled_error`` is the block's MASE against naive last value (forecast.py rule 3): q is 1
for a perfect forecast, 1/2 for one as good as naive, towards 0 for a useless one. How hard
a series is to forecast is weak evidence about the block's health, so, like dispersion in
aggregate.py, forecasting can at most halve fitness (as good as naive: x 0.75). Unknown
(NaN: not enough scored ticks) counts as no evidence: x 1. Fitness chooses parents only:
because it mixes the series' difficulty with the genome's quality, it never replaces a
genome; a shadow trial on the block's own series does (rules below).

Rules:

1. Planning (nucleus). Per channel, ``share`` of its blocks (at least one, at most
   ``max_per_channel``) that are not on trial get a challenger, chosen uniformly at random:
   not the weakest first, because a weak block may only have a hard series. The challenger
   is ``breed(parent, own)``: a parent drawn from the channel's ``elite`` fittest blocks
   (not the target itself when another is there) recombined with the target's own genome
   (what already fits this block's series), then mutated. A one-block channel mutates its
   own genome. Blocks are taken in id order, so the same input and seed give the same plan.
2. A trial has two windows. Burn-in: the challenger starts from the current forecaster's
   state (same level, trend and, for the same season, seasonal ring; another season warms
   up from the burn-in's first 2m ticks, forecast.py rule 2) and runs ``burn`` ticks
   (+ 2m for a new season m) unjudged. Judging: the next ticks where the observation, both
   forecasts and the naive forecast are finite are scored for both, on the same ticks,
   until ``judge`` ticks (at least two of the longer season, so no genome is judged on a
   part of a cycle) are scored.
3. Verdict. Over the judged ticks, MASE of each = sum |y - f| / sum |y - naive| (the same
   denominator for both). The challenger replaces the current genome iff
   ``challenger_mase < (1 - margin) * current_mase``: it must win by a margin (default 5 %)
   that noise between two near-equal genomes rarely clears, so genomes do not churn. A tie
   keeps the incumbent. A trial that has not scored enough ticks after ``max_ticks`` ends
   with the incumbent kept ("expired").
4. A block leaving this node (handoff, fusion) drops its trial (``cancel``); trials are not
   handed off: the nucleus plans again.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from corec_node.engine.audit import AuditRecord
from corec_node.engine.blocks import block_channel, block_number
from corec_node.engine.forecast import Forecasts
from corec_node.engine.genome import Genome, breed

MARGIN = 0.05  # rule 3: a challenger must be 5 % better; two equal genomes differ by less on ~50 ticks
BURN = 16  # rule 2: ticks a challenger adapts before it is judged (its smoothing needs ~1/alpha)
JUDGE = 48  # rule 2: scored ticks per verdict (the default window gene)
MAX_TICKS_FACTOR = 4  # rule 3: a trial expires after 4x its planned length


def forecast_quality(scaled_error: Any) -> np.ndarray:
    """q = 1 / (1 + scaled_error) in [0, 1]; NaN where unknown."""
    e = np.asarray(scaled_error, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return 1.0 / (1.0 + np.maximum(e, 0.0))


def fitness(health: Any, scaled_error: Any) -> np.ndarray:
    """Fitness with its forecasting part (module docstring): health * (1 + q) / 2, and
    health itself where the scaled error is unknown (NaN)."""
    h = np.asarray(health, np.float64)
    q = forecast_quality(scaled_error)
    return np.where(np.isnan(q), h, h * (1.0 + q) / 2.0)


def _finite(x: float) -> float | None:
    """A score for the audit log (JSON): None where it is not a number."""
    return float(x) if math.isfinite(x) else None


# -- the nucleus's plan (rule 1) ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Standing:
    """What the planner knows of a block: its genome and fitness (with forecasting part),
    and whether it is on trial now (reported by its owner)."""

    block: int
    genome: Genome
    fitness: float
    on_trial: bool = False


@dataclass(frozen=True, slots=True)
class Challenge:
    """One challenger for one block, for its owner to run in shadow."""

    block: int
    challenger: Genome
    current: Genome


def plan_challengers(
    blocks: Iterable[Standing],
    rng: np.random.Generator,
    *,
    share: float = 0.1,
    max_per_channel: int = 64,
    elite: int = 3,
    rate: float = 0.3,
    scale: float = 0.1,
    kernels: Sequence[str] | None = None,
    choices: Mapping[str, Sequence[Any]] | None = None,
) -> list[Challenge]:
    """Challengers for some blocks of each channel (rule 1), in block id order. ``rate``,
    ``scale``, ``kernels`` and ``choices`` go to ``genome.mutate`` (``choices`` restricts
    choice genes, e.g. the seasons a channel's sampling allows)."""
    by_channel: dict[int, list[Standing]] = {}
    for s in sorted(blocks, key=lambda s: s.block):
        by_channel.setdefault(block_channel(s.block), []).append(s)
    out: list[Challenge] = []
    for ch in sorted(by_channel):
        members = by_channel[ch]
        free = [s for s in members if not s.on_trial]
        if not free:
            continue
        k = min(len(free), max_per_channel, max(1, math.ceil(share * len(members))))
        pick = sorted(rng.choice(len(free), size=k, replace=False).tolist())
        fit = np.nan_to_num(np.array([s.fitness for s in members], np.float64), nan=0.0)
        order = np.argsort(-fit, kind="stable")  # fittest first, ties by block id
        best = [members[i] for i in order[: max(1, elite)]]
        for i in pick:
            target = free[i]
            pool = [s for s in best if s.block != target.block] or [target]
            parent = pool[int(rng.integers(len(pool)))]
            child = breed(parent.genome, target.genome, rng, rate, scale, kernels=kernels,
                          choices=choices)
            out.append(Challenge(target.block, child, target.genome))
    return out


def channel_best(blocks: Iterable[Standing]) -> dict[int, Genome]:
    """Each channel's fittest block's genome (ties: lower block id): what a repaired block
    inherits (``genome.inherit_repaired``)."""
    best: dict[int, Standing] = {}
    for s in sorted(blocks, key=lambda s: s.block):
        ch = block_channel(s.block)
        f = -math.inf if math.isnan(s.fitness) else s.fitness
        if ch not in best or f > (-math.inf if math.isnan(best[ch].fitness) else best[ch].fitness):
            best[ch] = s
    return {ch: s.genome for ch, s in best.items()}


# -- the owner's shadow trials (rules 2-4) -------------------------------------------------


@dataclass(frozen=True, slots=True)
class Verdict:
    """The end of one trial. ``state`` is the challenger's forecaster state (plain values)
    when it won, for ``Forecasts.restore``; None otherwise."""

    block: int
    current: Genome
    challenger: Genome
    promoted: bool
    current_mase: float
    challenger_mase: float
    judged: int  # ticks scored for both
    tick: int
    reason: str
    state: Mapping[str, Any] | None = field(default=None, compare=False)

    def record(self) -> AuditRecord:
        """The audit row: both genomes, the challenger's parents, both scores."""
        kind = "genome_replaced" if self.promoted else "genome_kept"
        return AuditRecord(
            kind,
            f"block {block_channel(self.block)}:{block_number(self.block)}",
            self.reason,
            self.tick,
            {
                "current": self.current.id,
                "challenger": self.challenger.id,
                "parents": list(self.challenger.parents),
                "generation": self.challenger.generation,
                "current_mase": _finite(self.current_mase),  # None: no tick could be scored
                "challenger_mase": _finite(self.challenger_mase),
                "judged": self.judged,
            },
        )


_COLS = ("burn", "judge", "ticks_left", "judged", "err_cur", "err_ch", "err_naive")


class ShadowTrials:
    """Challengers running in shadow beside an owner's ``Forecasts`` (rules 2-4). The
    challengers' forecasters live in a ``Forecasts`` of their own and each trial's counters
    in columns beside the sorted ids on trial, so one ``observe`` per tick advances every
    trial with a few numpy operations. Not thread-safe: one owner."""

    def __init__(self, *, margin: float = MARGIN, burn: int = BURN, judge: int = JUDGE,
                 max_ticks_factor: float = MAX_TICKS_FACTOR) -> None:
        if not 0 <= margin < 1 or burn < 0 or judge < 1:
            raise ValueError(f"bad trial settings: margin={margin}, burn={burn}, judge={judge}")
        self.margin, self.burn, self.judge = margin, burn, judge
        self.max_ticks_factor = max_ticks_factor
        self.shadow = Forecasts()
        self._genomes: dict[int, tuple[Genome, Genome]] = {}  # block -> (current, challenger)
        self._ids = np.empty(0, np.int64)  # sorted ids on trial; _cols are parallel to it
        self._cols = {k: np.empty(0, np.float64) for k in _COLS}

    def __len__(self) -> int:
        return len(self._genomes)

    def __contains__(self, block: object) -> bool:
        return block in self._genomes

    def on_trial(self) -> list[int]:
        return self._ids.tolist()

    def start(self, challenge: Challenge, current_state: Mapping[str, Any]) -> None:
        """Run ``challenge`` from the block's current forecaster state (``forecasts.export``);
        replaces a trial already running for that block."""
        b = int(challenge.block)
        self.cancel(b)
        m_cur = int(current_state.get("season", 0))
        m_ch = int(challenge.challenger["season"])
        burn = self.burn + (2 * m_ch if m_ch != m_cur else 0)
        judge = max(self.judge, 2 * max(m_cur, m_ch))
        self.shadow.restore(b, current_state, challenge.challenger)
        self._genomes[b] = (challenge.current, challenge.challenger)
        at = int(np.searchsorted(self._ids, b))
        self._ids = np.insert(self._ids, at, b)
        new = {"burn": burn, "judge": judge,
               "ticks_left": int(self.max_ticks_factor * (burn + judge)),
               "judged": 0, "err_cur": 0.0, "err_ch": 0.0, "err_naive": 0.0}
        for k in _COLS:
            self._cols[k] = np.insert(self._cols[k], at, new[k])

    def cancel(self, block: int) -> None:
        """Drop ``block``'s trial, if any (rule 4)."""
        if self._genomes.pop(int(block), None) is None:
            return
        self.shadow.remove(int(block))
        keep = self._ids != int(block)
        self._ids = self._ids[keep]
        for k in _COLS:
            self._cols[k] = self._cols[k][keep]

    def observe(self, block_ids: Any, means: Any, current_forecasts: Any,
                tick: int) -> list[Verdict]:
        """One tick: ``means`` observed and ``current_forecasts`` made (before this tick, by
        the current genomes) for ``block_ids``. Call before ``forecasts.update``."""
        if not len(self._ids):
            return []
        ids = np.asarray(block_ids, np.int64).ravel()
        y = np.asarray(means, np.float64).ravel()
        fc = np.asarray(current_forecasts, np.float64).ravel()
        pos = np.searchsorted(self._ids, ids)
        pos[pos >= len(self._ids)] = 0
        sel = np.flatnonzero(self._ids[pos] == ids)
        if len(sel) == 0:
            return []
        tid, ty, tfc, at = ids[sel], y[sel], fc[sel], pos[sel]
        ch = self.shadow.predict(tid)
        naive = self.shadow.last_observed(tid)
        self.shadow.update(tid, ty)
        c = self._cols
        ok = np.isfinite(ty) & np.isfinite(tfc) & np.isfinite(ch) & np.isfinite(naive)
        judging = ok & (c["burn"][at] <= 0)
        c["burn"][at] -= 1
        c["ticks_left"][at] -= 1
        c["judged"][at] += judging
        c["err_cur"][at] += np.where(judging, np.abs(ty - tfc), 0.0)
        c["err_ch"][at] += np.where(judging, np.abs(ty - ch), 0.0)
        c["err_naive"][at] += np.where(judging, np.abs(ty - naive), 0.0)
        end = (c["judged"][at] >= c["judge"][at]) | (c["ticks_left"][at] <= 0)
        out = [self._verdict(int(tid[j]), int(at[j]), tick) for j in np.flatnonzero(end)]
        for v in out:
            self.cancel(v.block)
        return out

    def _verdict(self, b: int, i: int, tick: int) -> Verdict:
        c = self._cols
        judged, judge = int(c["judged"][i]), int(c["judge"][i])
        ec, eh, en = float(c["err_cur"][i]), float(c["err_ch"][i]), float(c["err_naive"][i])
        cur, chl = (ec / en, eh / en) if en > 0 else (math.nan, math.nan)
        if judged < judge:
            won, why = False, f"expired: {judged} of {judge} ticks scored"
        else:
            won = eh < (1.0 - self.margin) * ec
            why = (f"challenger MASE {chl:.4g} vs current {cur:.4g} over {judged} ticks: "
                   + ("won" if won else "did not win") + f" by the {self.margin:.0%} margin")
        current, challenger = self._genomes[b]
        state = self.shadow.export(b) if won else None
        return Verdict(b, current, challenger, won, cur, chl, judged, tick, why, state)
