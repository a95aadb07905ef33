"""Adaptive blocks on the data plane (``engine/adaptive.py``): trial verdicts into the audit
log, genomes and forecaster states saved now and then and at stop, and evolution by the
nucleus: every ``engine.evolve_every`` ticks it plans challengers from the cluster's rows,
fenced by its term, and each owner runs the ones of its blocks in shadow; and the owner's
alerts on forecast anomalies (``engine/anomaly.py``). A mixin of
``DataPlane``, like ``fusions.FusionSide``."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from corec_node import log
from corec_node.engine.adaptive import genome_text, parse_genome
from corec_node.engine.evolution import Challenge, plan_challengers
from corec_node.wire.messages import EvolutionPlan

GENOME_SAVE_EVERY = 30  # ticks between two saves of what blocks learned (and once at stop)
CHALLENGES_PER_MESSAGE = 1_000  # a plan goes out in messages of ~250 KB at most (a genome is ~250 bytes)


class EvolutionSide:
    """Trial records, saved genomes and the nucleus's evolution plans (see the module)."""

    def _adaptive_tick(self, tick_no: int) -> None:
        """After each engine tick: its verdicts logged and audited, a save when due, and
        as nucleus a plan when due."""
        for rec in self.engine.adaptive_records:
            log.event("genome_trial", kind=rec.kind, subject=rec.subject, reason=rec.reason, tick=rec.tick)
            self.recorder.audit(rec.kind, rec.subject, rec.reason, tick=rec.tick, **rec.details)
        if self.engine.adaptive.anomalies.opened:
            self._forecast_alerts()
        if tick_no % GENOME_SAVE_EVERY == 0:
            self.save_genomes()
        every = self.config.evolve_every
        if every and tick_no % every == 0 and self.view.leader == self.name and self._evolution_on():
            self._plan_evolution(tick_no)

    def _forecast_alerts(self) -> None:
        """The forecast anomalies that opened an episode this tick (engine/anomaly.py), alerted
        by the blocks' owner only: every holder flags, one node alerts."""
        opened = self.engine.adaptive.anomalies.opened
        mine = self.engine.owned_mask(np.fromiter((a.block for a in opened), np.int64, len(opened)))
        for anomaly, owned in zip(opened, mine.tolist()):
            if not owned:
                continue
            rec = anomaly.record()
            log.event("forecast_anomaly", subject=rec.subject, reason=rec.reason, tick=rec.tick)
            self.recorder.audit(rec.kind, rec.subject, rec.reason, tick=rec.tick, **rec.details)
            alert = anomaly.alert()
            self.raise_alert(alert.pop("kind"), alert.pop("text"), **alert)

    def _evolution_on(self) -> bool:
        """Plans go out only when every live member takes them (older ones would count the
        message as unknown)."""
        return all(name in self.view.evolving for name in self.view.live)

    def save_genomes(self) -> None:
        """What the blocks held now have learned, to SQLite (in the background), and the
        genomes of the blocks we own on to PostgreSQL (the owner's is the block's genome)."""
        store = self.recorder.store
        items = self.engine.adaptive.export()
        if store is not None and items:
            blocks = np.fromiter((b for b, _, _ in items), np.int64, len(items))
            owned = blocks[self.engine.owned_mask(blocks)].tolist()
            self.recorder.spawn("genomes", store.save_genomes(items, owned))

    def restore_genomes(self, items: list[tuple[int, str, Any]], saved_at: Mapping[int, float] | None = None) -> None:
        """What blocks learned before a restart; ``saved_at``: when each block's was saved,
        so the ticks missed since pass its forecaster by (its season's phase stays true)."""
        now = time.time()
        gaps = {b: max(0, round((now - t) / self.config.tick_interval)) for b, t in (saved_at or {}).items()}
        n = self.engine.adaptive.restore_saved(items, gaps=gaps)
        if n:
            log.event("genomes_restored", blocks=n, ticks_missed=min(gaps.values(), default=0))

    def _plan_evolution(self, tick_no: int) -> None:
        """As nucleus: challengers for a share of each channel's blocks, fenced by our term."""
        term = self.view.term
        standings = self.engine.adaptive.standings(self.engine.cluster_rows())
        if not standings:
            return
        rng = np.random.default_rng([term, tick_no])
        plan = plan_challengers(standings, rng)
        if not plan:
            return
        rows = [{"block": c.block, "challenger": genome_text(c.challenger), "current": c.current.id} for c in plan]
        for at in range(0, len(rows), CHALLENGES_PER_MESSAGE):
            self.outbox.publish(EvolutionPlan(term=term, challenges=tuple(rows[at:at + CHALLENGES_PER_MESSAGE])))
        log.event("evolution_planned", term=term, tick=tick_no, challengers=len(plan))
        self._start_trials(plan)

    def evolution_plan(self, sender: str, msg: EvolutionPlan) -> None:
        """A plan from the nucleus: taken only from the leader of our term."""
        if sender != self.view.leader or msg.term != self.view.term:
            log.event("evolution_plan_refused", logging.WARNING, sender=sender, term=msg.term,
                      leader=self.view.leader, our_term=self.view.term)
            return
        plan = []
        adaptive = self.engine.adaptive
        for row in msg.challenges:
            block = row.get("block")
            current = adaptive.genomes.get(block) if type(block) is int else None
            if current is None or current.id != row.get("current"):
                continue  # not a block we hold, or our genome changed since the nucleus looked
            challenger = parse_genome(row.get("challenger"))
            if challenger is None:
                self.traffic.rejected["evolution_plan"] += 1
                continue
            plan.append(Challenge(block, challenger, current))
        self._start_trials(plan)

    def _start_trials(self, plan: list[Challenge]) -> None:
        started = self.engine.adaptive.start_trials(plan, self.engine.owns)
        if started:
            log.event("genome_trials_started", blocks=started)
