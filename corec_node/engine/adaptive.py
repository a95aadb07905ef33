"""The adaptive layer of one node: each held block's genome, forecaster and shadow trial.

Pure: numpy and the cores of ``genome``, ``forecast`` and ``evolution``; no I/O, no clock
(ticks are the only time). The engine host drives it once per tick; the shell carries what
it says (rows, audit records, saved state).

Rules:

1. Every block this node holds (owned or replicated) is forecast from the mean its own
   store aggregates each tick, so a replica that is promoted already has the forecaster's
   state: nothing moves on failover.
2. Which genome a block starts with, when this node first holds it: the one the cluster
   last published for it (rows carry genomes, rule 4), else the one this node saved before
   a restart, else its channel's first genome (the default, with the genes that
   ``engine.genomes`` gives the channel). A saved forecaster state is restored with its
   genome when the genome is the same, so learned state survives a restart; the ticks
   since it was saved pass it by as ticks with nothing observed (``Forecasts.skip``), so
   its season's phase lines up with the ticks again.
3. Only a block's owner runs trials (``start_trials``: the nucleus's challengers); a
   holder that is not the owner takes the genome the owner publishes (``observe_row``).
   A verdict that promotes a challenger restores the challenger's forecaster state.
4. Rows say what a block's forecaster says: ``forecast`` (the next tick's mean),
   ``forecast_error`` (scaled error against the naive last value; None until enough
   ticks), ``generation`` and ``genome`` (the genome's id); ``genome_spec``, the genome as
   compact JSON, rides a block's row when its genome is not the one it last sent (the
   default needs no spec: every node knows it), and every GENOME_REFRESH ticks in turns
   (block ids spread the turns), so every node learns every block's genome at a cost of a
   few bytes per row and no burst.
5. Forecast anomalies (``engine/anomaly.py``): each tick, a held block whose mean is more
   than its ``sensitivity`` gene in robust sigmas from the forecast made for it (sigma from
   the errors before this tick) is flagged; its row then carries ``anomaly: true``, and
   ``anomalies.opened`` lists the flags that open an episode (one alert each, raised by the
   block's owner only).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from corec_node.engine.anomaly import AnomalyWatch
from corec_node.engine.audit import AuditRecord
from corec_node.engine.evolution import Challenge, ShadowTrials, Standing, fitness
from corec_node.engine.forecast import Forecasts
from corec_node.engine.genome import Genome, default_genome, from_dict, to_dict

GENOME_REFRESH = 60  # rule 4: ticks between two rows of a block that carry its whole genome
SPEC_KEY = "genome_spec"  # the row key of a genome as compact JSON (rule 4)
ANOMALY_KEY = "anomaly"  # the row key of a forecast anomaly (rule 5)


def genome_text(g: Genome) -> str:
    """A genome as the compact JSON a row carries (and SQLite keeps)."""
    return json.dumps(to_dict(g), separators=(",", ":"), sort_keys=True)


def parse_genome(text: Any) -> Genome | None:
    """A genome from ``genome_text``; None for anything else (a peer's bad bytes are not fatal)."""
    if not isinstance(text, str):
        return None
    try:
        return from_dict(json.loads(text))
    except Exception:  # noqa: BLE001 - a peer's bytes (deep nesting: RecursionError) are never fatal
        return None


DEFAULT = default_genome()  # one object for every block that never evolved
MAX_DISTINCT = 4096  # distinct genomes shared by id; past it the table starts again (only sharing is lost)
MAX_SPECS_PER_TICK = 200  # genome specs one tick's rows carry (~500 B each): the rest wait a tick


def _number(x: Any) -> float:
    """A row's value as a float, NaN when it is not a number (a peer's row is checked only for form)."""
    return float(x) if type(x) in (int, float) else np.nan


class AdaptiveBlocks:
    """Genomes, forecasts and trials of the blocks one node holds (module rules)."""

    def __init__(self) -> None:
        self.forecasts = Forecasts()
        self.trials = ShadowTrials()
        self.anomalies = AnomalyWatch()  # this tick's forecast anomalies and the episodes they open (rule 5)
        self.genomes: dict[int, Genome] = {}  # held blocks: the genome in force
        self.known: dict[int, Genome] = {}  # every block the cluster published a genome for
        self.saved: dict[int, tuple[Genome, Mapping[str, Any] | None]] = {}  # restored from disk (rule 2)
        self.saved_gap = 0  # ticks between the save and this start: a restored season's phase moves on
        self._saved_gaps: dict[int, int] = {}  # the same per block, where its state was saved apart
        self._restored: set[int] = set()  # blocks whose state _start_genome took from disk, this tick
        self._tick = 0  # the tick being stepped
        self._first_tick: int | None = None  # the first tick this process stepped
        self._sent: dict[int, tuple[str, int]] = {}  # block -> (genome id, tick) of its last spec row
        self._by_id: dict[str, Genome] = {DEFAULT.id: DEFAULT}  # one object per distinct genome
        self._by_text: dict[str, Genome] = {}  # specs already parsed: each owner resends them in turn
        self.first: dict[int, Genome] = {}  # channel -> the genome its blocks start with (engine.genomes)
        self.replaced = 0  # genomes replaced by a winning challenger (as owner)
        self.kept = 0  # trials the current genome won

    # -- the tick -------------------------------------------------------------------------

    def step(self, blocks: np.ndarray, means: np.ndarray, tick: int) -> list[AuditRecord]:
        """One tick over the blocks held now (``blocks`` ascending, ``means`` their
        aggregated means): new ones tracked (rule 2), gone ones dropped, trials judged,
        forecasts advanced. Returns the trial verdicts' audit records."""
        self._tick = tick
        if self._first_tick is None:
            self._first_tick = tick
        blocks = np.asarray(blocks, np.int64)
        means = np.asarray(means, np.float64)
        if len(blocks) > 1 and (np.diff(blocks) <= 0).any():
            order = np.argsort(blocks, kind="stable")
            blocks, means = blocks[order], means[order]
        tracked = self.forecasts.ids()
        if len(tracked) != len(blocks) or not np.array_equal(np.sort(tracked), blocks):
            self._track(blocks, tracked)
        records: list[AuditRecord] = []
        before = self.forecasts.predict(blocks)  # the forecasts made for this tick (rule 5)
        if len(self.trials):
            for verdict in self.trials.observe(blocks, means, before, tick):
                current = self.genomes.get(verdict.block)
                if current is None or current.id != verdict.current.id:
                    continue  # the genome changed under the trial (its owner's, on a holder): no verdict here
                if verdict.promoted and verdict.state is not None:
                    self.forecasts.restore(verdict.block, verdict.state, verdict.challenger)
                    self.genomes[verdict.block] = verdict.challenger
                    self.known[verdict.block] = verdict.challenger
                    self.replaced += 1
                else:
                    self.kept += 1
                records.append(verdict.record())
        if len(blocks):
            self.forecasts.update(blocks, means)
            sigmas, flags = self.forecasts.judged(blocks)
            self.anomalies.step(blocks, means, before, sigmas, flags, tick)
        else:
            self.anomalies.step(blocks, means, before, before, np.zeros(0, bool), tick)
        return records

    def _track(self, blocks: np.ndarray, tracked: np.ndarray) -> None:
        self._restored.clear()
        for b in np.setdiff1d(tracked, blocks, assume_unique=True).tolist():
            self.forecasts.remove(b)
            self.genomes.pop(b, None)
            self._sent.pop(b, None)
            if b in self.trials:
                self.trials.cancel(b)
        for b in np.setdiff1d(blocks, tracked, assume_unique=True).tolist():
            genome, state = self._start_genome(b)
            self.genomes[b] = genome
            if state is not None:
                try:
                    self.forecasts.restore(b, state, genome)
                    if b in self._restored:  # saved before our restart: the ticks since have passed it by
                        first = self._tick if self._first_tick is None else self._first_tick
                        self.forecasts.skip(b, self._saved_gaps.get(b, self.saved_gap) + self._tick - first)
                    continue
                except ValueError:
                    pass  # a damaged saved state: start afresh
            self.forecasts.add(b, genome)

    def _start_genome(self, block: int) -> tuple[Genome, Mapping[str, Any] | None]:
        """Rule 2."""
        saved = self.saved.pop(block, None)
        self._restored.discard(block)
        if saved is not None and saved[1] is not None:
            self._restored.add(block)
        known = self.known.get(block)
        if known is not None:
            same = saved is not None and saved[0].id == known.id
            return known, saved[1] if same else None
        if saved is not None:
            return saved
        return self.first.get(block >> 32, DEFAULT), None

    # -- rows ---------------------------------------------------------------------------------

    def annotate(self, rows: list[dict[str, Any]], tick: int) -> None:
        """Rule 4: forecast, forecast_error, generation and genome on this tick's rows of
        our blocks (and the genome's spec where due)."""
        if not rows:
            return
        ids = np.fromiter((r["block"] for r in rows), np.int64, len(rows))
        held = np.fromiter((int(b) in self.genomes for b in ids.tolist()), bool, len(rows))
        forecast = np.full(len(rows), np.nan)
        error = np.full(len(rows), np.nan)
        if held.any():
            forecast[held] = self.forecasts.predict(ids[held])
            error[held] = self.forecasts.scaled_error(ids[held])
        specs = 0
        flagged = self.anomalies.now
        for row, b, f, e, h in zip(rows, ids.tolist(), forecast.tolist(), error.tolist(), held.tolist()):
            if not h:
                continue
            g = self.genomes[b]
            row["forecast"] = None if f != f else f
            row["forecast_error"] = None if e != e else e
            row["generation"] = g.generation
            row["genome"] = g.id
            sent = self._sent.get(b)
            due = (sent[0] != g.id if sent is not None else g is not DEFAULT) or (tick + b) % GENOME_REFRESH == 0 \
                or (sent is not None and tick - sent[1] >= 2 * GENOME_REFRESH)  # its turn's row was not made
            if due and specs < MAX_SPECS_PER_TICK:
                specs += 1
                row[SPEC_KEY] = genome_text(g)  # changed, or this block's turn: blocks take turns
                self._sent[b] = (g.id, tick)
                self.known[b] = g
            if b in flagged:
                row[ANOMALY_KEY] = True  # rule 5: written only when true

    def observe_row(self, row: Mapping[str, Any], ours: bool) -> None:
        """A row another owner published (``ours``: we own the block, so we keep our own).
        Learns its genome; a holder that is not the owner takes it (rule 3)."""
        text = row.get(SPEC_KEY)
        if text is None:
            return
        g = self._intern(text)
        if g is None:
            return
        b = int(row["block"])
        self.known[b] = g
        if not ours and b in self.genomes and self.genomes[b].id != g.id:
            self.genomes[b] = g
            self.forecasts.set_genome(b, g)

    def _intern(self, text: Any) -> Genome | None:
        known = self._by_text.get(text) if type(text) is str else None
        if known is not None:
            return known
        g = parse_genome(text)
        if g is None:
            return None
        if len(self._by_id) >= MAX_DISTINCT or len(self._by_text) >= MAX_DISTINCT:
            self._by_id, self._by_text = {DEFAULT.id: DEFAULT}, {}
        g = self._by_text[text] = self._by_id.setdefault(g.id, g)
        return g

    def spec_of(self, row: Mapping[str, Any]) -> Genome | None:
        """The genome a row names (by id), if this node knows it (the default it always does)."""
        if row.get("genome") == DEFAULT.id:
            return DEFAULT
        g = self.known.get(int(row["block"]))
        return g if g is not None and g.id == row.get("genome") else None

    # -- evolution -----------------------------------------------------------------------------

    def standings(self, rows: Iterable[Mapping[str, Any]]) -> list[Standing]:
        """What the nucleus's planner needs from the cluster's rows: each block whose genome
        is known, its fitness with the forecasting part (evolution.fitness)."""
        out = []
        for r in rows:
            g = self.spec_of(r)
            if g is None:
                continue
            health, err = _number(r.get("fitness")), _number(r.get("forecast_error"))
            score = float(fitness(health, err))
            out.append(Standing(int(r["block"]), g, score))
        return out

    def start_trials(self, challenges: Iterable[Challenge], owned: Any) -> int:
        """Rule 3: run the challengers of blocks we own and hold, not on trial already,
        whose current genome is still the one the plan saw. Returns how many started."""
        started = 0
        for c in challenges:
            b = c.block
            g = self.genomes.get(b)
            if g is None or g.id != c.current.id or b in self.trials or not owned(b):
                continue
            self.trials.start(c, self.forecasts.export(b))
            started += 1
        return started

    # -- what survives a restart ------------------------------------------------------------

    def export(self) -> list[tuple[int, str, dict[str, Any]]]:
        """Every held block's genome (JSON) and forecaster state, to save."""
        return [(b, genome_text(g), self.forecasts.export(b)) for b, g in self.genomes.items()]

    def restore_saved(self, items: Iterable[tuple[int, str, Mapping[str, Any] | None]], gap: int = 0,
                      gaps: Mapping[int, int] | None = None) -> int:
        """Genomes and states saved before a restart (rule 2); unreadable ones are skipped.
        ``gap``: ticks between the save and this start (the node was down), ``gaps`` the same
        per block where it differs; a state restored later skips them, with the ticks since
        the start (``Forecasts.skip``). Returns how many were taken."""
        self.saved_gap = max(int(gap), 0)
        self._saved_gaps = {int(b): max(int(g), 0) for b, g in (gaps or {}).items()}
        n = 0
        for block, text, state in items:
            g = self._intern(text)
            if g is not None:
                self.saved[int(block)] = (g, state)
                n += 1
        return n
