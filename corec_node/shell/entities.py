"""The node's entity path: producer and stream batches into the store, flow control, handoffs,
engine ticks, fusions and the nucleus's confirmation of the placement map.

A part of the I/O shell (a mixin of :class:`corec_node.shell.node.Node`, which owns the state
it uses: transport, engine, membership, plugins, counters); the decisions are made by the
pure cores it calls (``enginehost.py``, ``engine/``, ``mesh/flow.py``).

Care: everything here runs on the node's event loop; nothing may block it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import Any

import numpy as np

from corec_node import log
from corec_node.engine import Fusion
from corec_node.shell.ingestqueue import IngestQueue, payload_bytes
from corec_node.mesh.flow import MAX_WAIT
from corec_node.wire import WireError, decode_batch, encode_message, make_batch, topic_for
from corec_node.wire.messages import Aggregates, EntityBatch, Flow, FusionPlan, Heartbeat, MemberStatus
from corec_node.wire.topics import TOPIC_AGGREGATES, TOPIC_DIRECT, TOPIC_FLOW, TOPIC_NUCLEUS

# The ingest queue's bounds, as shares of engine.ingest_queue_mb (ingestqueue.py, mesh/flow.py); past
# the whole of it, stream batches are dropped:
INGEST_WAIT_SHARE = 1 / 4  # a producer's batch waits while this much is direct batches
FLOW_HIGH_SHARE = 1 / 16  # a stream backlog this deep asks the stream's sources to pause (SPEC 9.3)
FLOW_LOW_SHARE = 1 / 64  # ... and this shallow ends the pause
REPUBLISH_BURST = 1 << 20  # producer bytes republished between two looks at the members' FLOW messages
COALESCE_RECORDS = 200_000  # queued batches the worker ingests in one store call: new keys merge once, not per batch
HANDOFF_CHUNK = 100_000  # records per handoff message (1 MB frames)
FUSION_EVERY = 10  # the nucleus plans fusions every 10 engine ticks: rows from every owner are in


class EntityPath:
    """Node methods for entities (see the module docstring)."""

    def _queue_batch(self, env: Any, payload: Any, where: str) -> Awaitable[None] | None:
        """Queue a batch for the ingest worker (bounds and waits: ingestqueue.py).

        A producer's batch (direct socket, sender not a member) is republished on the PUB
        stream as it arrives, unless a member asked for a pause (SPEC 9.3): then it waits at
        the door, and the producer behind it. A stream batch that finds the queue over its
        limit is dropped and counted; this node asks for pauses long before that."""
        queue = self._ingest_queue()
        item = (env, payload, where)
        if where == "direct":
            if not self._is_handoff(env):
                if self.flow.may_hold(self.now()):
                    return self._admit(item)
                self._republish(env, payload)
                self._burst += payload_bytes(item)
                if self._burst >= REPUBLISH_BURST:
                    self._burst = 0  # let a member's FLOW in before republishing more
                    return asyncio.sleep(0) if queue.put_now(item) else queue.put(item)
            return None if queue.put_now(item) else queue.put(item)
        if not queue.offer(item):  # we cannot keep up: shed stream data, never the control plane
            self.ingest_dropped += 1
            self.rejected["ingest_overflow"] += 1
            return None
        self._ask_flow(self.flow.stream_queued(payload_bytes(item), self.now()))
        return None

    def _ingest_queue(self) -> IngestQueue:
        if self._batches is None:
            self._batches = IngestQueue(limit_bytes=self.ingest_limit, wait_bytes=int(self.ingest_limit * INGEST_WAIT_SHARE))
        return self._batches

    async def _admit(self, item: tuple[Any, Any, str]) -> None:
        """A producer's batch during a member's pause: wait until the pause ends (MAX_WAIT
        at most, so that member messages on the same socket are not held long), then go on."""
        start = self.now()
        while (until := self.flow.held_until(now := self.now())) is not None and now - start < MAX_WAIT:
            await asyncio.sleep(min(until - now, start + MAX_WAIT - now, 0.002))  # a release ends it early
        held = self.now() - start
        env, payload, _ = item
        self._republish(env, payload)
        await self._ingest_queue().put(item)
        self.flow.held(held, self.now())  # the gap starts when the socket is read again

    def _ask_flow(self, hold_ms: int | None) -> None:
        if hold_ms is not None:
            frames = self._frames(Flow(hold_ms=hold_ms), TOPIC_FLOW)
            self.transport.publish(frames)
            self._count_out(TOPIC_FLOW, frames)

    async def _ingest_worker(self) -> None:
        """Ingest queued batches in arrival order. A backlog is taken in one go (up to
        COALESCE_RECORDS records): one store call merges all its new keys at once."""
        queue = self._ingest_queue()
        while True:
            items = await queue.take(COALESCE_RECORDS)
            try:
                self._ingest_items(items)
            except Exception:  # a bug on one batch must not stop ingest
                logging.getLogger(log.LOGGER_NAME).exception("ingest_failed")
            stream = sum(payload_bytes(item) for item in items if item[2] == "broadcast")
            self._ask_flow(self.flow.stream_taken(stream, self.now()))  # publish never raises
            await asyncio.sleep(0)  # timers and control messages go between two takes

    def _ingest_items(self, items: list[tuple[Any, Any, str]]) -> None:
        """A sweep of known entities is stored at once (``ingest_sweep``); other batches are
        stored together, in one call, with every batch after them; a handoff is applied in its
        place in the order (what came before it is stored first)."""
        pending: list[np.ndarray] = []
        for env, payload, where in items:
            if where == "direct" and self._is_handoff(env):
                self._store(pending)
                self._handoff(env, payload)
                continue
            records = self._decode_batch(env.msg, payload, where)
            if records is not None:
                if pending or self.engine.ingest_sweep(records, env.msg.channel) is None:  # in order, after pending
                    pending.append(records)
                if self.plugins.wants(env.msg.channel):
                    self.plugins.spawn(self.plugins.entities(self, env.msg.channel, records))
        self._store(pending)

    def _is_handoff(self, env: Any) -> bool:
        assert self.membership is not None
        return env.sender != self.name and self.membership.member(env.sender) is not None

    def _handoff(self, env: Any, payload: Any) -> None:
        """Block state handed over by a member."""
        records = self._decode_batch(env.msg, payload, "direct")
        if records is not None:
            self.engine.receive_handoff(records)

    def _republish(self, env: Any, payload: Any) -> None:
        """A producer's batch: publish it for every owner and subscriber of its channel."""
        topic = topic_for(env.msg)
        try:
            frames = encode_message(env.msg, sender=self.name, seq=self.counters.next(topic),
                                    cluster=self.cluster, payload=payload)
        except ValueError as exc:  # accepted here but not sendable (over the wire's payload limit)
            self._reject("republish", WireError("too_large", str(exc)))
            return
        self.transport.publish(frames)
        self._count_out(topic, frames)

    def _decode_batch(self, header: EntityBatch, payload: Any, where: str) -> np.ndarray | None:
        try:
            records = decode_batch(header, payload)
        except WireError as exc:
            self._reject(where, exc)
            return None
        return records

    def _store(self, pending: list[np.ndarray]) -> None:
        """Ingest decoded batches in one store call (and empty the list). They are not
        sweeps (``_ingest_items`` tried), so the general path is taken at once."""
        if pending:
            self.engine.ingest(pending[0] if len(pending) == 1 else np.concatenate(pending), sweep=False)
            pending.clear()

    def _engine_tick(self) -> None:
        rows, repairs = self.engine.tick()
        self.plugins.spawn(self.plugins.block_aggregates(self, self.engine.tick_no, rows))
        if rows and not self._auditing:  # one audit at a time, in a worker thread
            self._auditing = True
            self._spawn("audit", self._audit_tick(rows, self.engine.tick_no))
        if rows and self.local is not None:
            self._spawn("block state", self.local.record_tick(rows, time.time()))
        for chunk in self.engine.chunks(rows):
            if chunk:
                msg = Aggregates(tick=self.engine.tick_no, rows=tuple(chunk))
                frames = self._frames(msg, TOPIC_AGGREGATES)
                self.transport.publish(frames)
                self._count_out(TOPIC_AGGREGATES, frames)
        if self.leader == self.name and self.engine.tick_no % FUSION_EVERY == 0:
            self._plan_fusions()
        for record in repairs:
            log.event("repair", kind=record.kind, block=record.block, channel=record.channel,
                      entities=record.entities, reason=record.reason)
            self.audit(record.kind, f"block {record.channel}:{record.block & 0xFFFFFFFF}", record.reason,
                       block=record.block, entities=record.entities)

    def _plan_fusions(self) -> None:
        """As nucleus: fuse weak blocks into strong ones of their channel, fenced by our term."""
        plan = self.engine.plan(self.config.engine.min_fitness)
        if not plan:
            return
        msg = FusionPlan(term=self.term, fusions=tuple(
            {"weak": f.weak_block, "strong": f.strong_block, "channel": f.channel, "reason": f.reason} for f in plan))
        frames = self._frames(msg, TOPIC_NUCLEUS)
        self.transport.publish(frames)
        self._count_out(TOPIC_NUCLEUS, frames)
        self._apply_fusions(plan, self.term)

    def _fusion_plan(self, sender: str, msg: FusionPlan) -> None:
        """A plan from the nucleus: applied only if it comes from the leader of our term."""
        if sender != self.leader or msg.term != self.term:
            log.event("fusion_plan_refused", logging.WARNING, sender=sender, term=msg.term,
                      leader=self.leader, our_term=self.term)
            return
        try:
            plan = [Fusion(int(f["weak"]), int(f["strong"]), int(f["channel"]), str(f.get("reason", "")))
                    for f in msg.fusions]
        except (KeyError, TypeError, ValueError):
            self.rejected["fusion_plan"] += 1
            return
        self._apply_fusions(plan, msg.term)

    def _apply_fusions(self, plan: list[Fusion], term: int) -> None:
        try:
            records, handoffs = self.engine.apply_fusions(plan)
        except ValueError as exc:  # e.g. a plan across channels: the nucleus's bug, not ours
            log.event("fusion_failed", logging.WARNING, error=str(exc))
            return
        for record in records:
            log.event("fusion", block=record.block, into=record.target, channel=record.channel,
                      entities=record.entities, reason=record.reason, term=term)
            if self.local is not None:
                self._spawn("audit fusion", self.local.add_audit(
                    "fusion", f"block {record.channel}:{record.block & 0xFFFFFFFF}", record.reason, term=term,
                    details={"into": record.target, "entities": record.entities}))
        self._hand_off(handoffs)

    def _placement_changed(self) -> None:
        """Our live view changed (or the leader did): act on it now if we are the nucleus or
        nobody confirms maps, else wait for the leader's digest (SPEC 9.1)."""
        assert self.membership is not None
        self.engine.observe_view(m.name for m in self.membership.members()
                                 if m.status in (MemberStatus.ALIVE, MemberStatus.SUSPECT))
        if self._acts_on_own_view():
            self._hand_off(self.engine.adopt_view())
        elif self._leader_placement is not None:
            self._confirm_placement()

    def _acts_on_own_view(self) -> bool:
        """True when we are the nucleus, know none, or ours does not confirm maps (1.0)."""
        return self.leader is None or self.leader == self.name or self._leader_placement == ""

    def _placement_confirmed(self) -> bool:
        """Whether the map we act on is the one the nucleus confirmed (our own view when
        nobody else confirms)."""
        confirmed = self.engine.view_digest() if self._acts_on_own_view() else self._leader_placement
        return self.engine.placement_digest() == confirmed

    def _placement_heartbeat(self, sender: str, msg: Heartbeat) -> None:
        """A heartbeat, after the election core saw it: from our leader, its digest."""
        if sender != self.leader or msg.term != self.term or sender == self.name:
            return
        if msg.placement != self._leader_placement:
            self._leader_placement = msg.placement
            if msg.placement:
                self._confirm_placement()
            else:  # a leader that does not confirm maps: act on our own view
                self._hand_off(self.engine.adopt_view())

    def _confirm_placement(self) -> None:
        handoffs = self.engine.confirm(self._leader_placement or "")
        if handoffs is not None:
            self._hand_off(handoffs)

    def _hand_off(self, handoffs: dict[str, np.ndarray]) -> None:
        assert self.membership is not None
        for owner, records in handoffs.items():
            member = self.membership.member(owner)
            if member is None:
                continue
            for start in range(0, len(records), HANDOFF_CHUNK):
                chunk = records[start:start + HANDOFF_CHUNK]
                channels = np.unique(chunk["channel"])
                for channel in channels.tolist():
                    header, payload = make_batch(chunk[chunk["channel"] == channel], channel)
                    frames = encode_message(header, sender=self.name, seq=self.counters.next(TOPIC_DIRECT),
                                            cluster=self.cluster, payload=payload)
                    self.transport.send(member.addr, frames)
            log.event("blocks_handed_off", to=owner, records=len(records), map_version=self.engine.placement.version)
            self.audit("placement", owner, "membership changed: blocks handed to their new owner",
                       records=len(records), map_version=self.engine.placement.version)
