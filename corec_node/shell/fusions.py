"""Fusion by the nucleus, on the data plane: the nucleus plans, fenced by its term, which
weak blocks fuse into a strong one of their channel (``EngineHost.plan``); every node
applies a plan only from the leader of its own term, and hands the fused blocks to their
new holders. A mixin of ``DataPlane``, like ``learning.ReplicaSide``."""

from __future__ import annotations

import logging

from corec_node import log
from corec_node.engine import Fusion
from corec_node.wire.messages import FusionPlan


class FusionSide:
    """The nucleus's fusion plans, made and applied (see the module)."""

    def _plan_fusions(self) -> None:
        """As nucleus: fuse weak blocks into strong ones of their channel, fenced by our term."""
        plan = self.engine.plan(self.config.min_fitness)
        if not plan:
            return
        term = self.view.term
        self.outbox.publish(FusionPlan(term=term, fusions=tuple(
            {"weak": f.weak_block, "strong": f.strong_block, "channel": f.channel, "reason": f.reason} for f in plan)))
        self._apply_fusions(plan, term)

    def fusion_plan(self, sender: str, msg: FusionPlan) -> None:
        """A plan from the nucleus: applied only if it comes from the leader of our term."""
        if sender != self.view.leader or msg.term != self.view.term:
            log.event("fusion_plan_refused", logging.WARNING, sender=sender, term=msg.term,
                      leader=self.view.leader, our_term=self.view.term)
            return
        try:
            plan = [Fusion(int(f["weak"]), int(f["strong"]), int(f["channel"]), str(f.get("reason", "")))
                    for f in msg.fusions]
        except (KeyError, TypeError, ValueError):
            self.traffic.rejected["fusion_plan"] += 1
            return
        self._apply_fusions(plan, msg.term)

    def _apply_fusions(self, plan: list[Fusion], term: int) -> None:
        if plan:
            self._store_queued()  # the copies fusions send are cut from the store
        try:
            records, handoffs = self.engine.apply_fusions(plan)
        except ValueError as exc:  # e.g. a plan across channels: the nucleus's bug, not ours
            log.event("fusion_failed", logging.WARNING, error=str(exc))
            return
        for record in records:
            log.event("fusion", block=record.block, into=record.target, channel=record.channel,
                      entities=record.entities, reason=record.reason, term=term)
            self.recorder.audit("fusion", f"block {record.channel}:{record.block & 0xFFFFFFFF}", record.reason,
                                term=term, into=record.target, entities=record.entities)
        self._hand_off(handoffs)
