"""The data plane of the shell: producer and stream batches into the engine, flow control,
handoffs, engine ticks and their audit, fusions, and the placement map the nucleus confirms.

It learns the cluster from the control plane as plain data (``view_changed``,
``leader_placement``: see ``control_plane.py``) and tells it only the digest of the map it
acts on (``publish_digest``). The decisions are made by the pure cores it calls
(``engine/host.py``, ``engine/``, ``mesh/flow.py``).

Accounting (SPEC 9.4): every record a producer sends is stored by its owner, counted in a
drop counter by reason (``dropped_records``, records this node would have kept), or
answered to the producer as refused (``producers``, BatchReply). A producer's batch is
answered once it is queued and republished; it waits for room at the door (``_door``, a
task of its own), never in a receive loop, and is refused as busy past ADMIT_WAIT or when
the door is full.

Care: everything here runs on the node's event loop; nothing may block it. The audit's
model runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from corec_node import log
from corec_node.config import EngineSection, ttl_seconds
from corec_node.engine.audit import AlertGate, Auditor, LoadGate
from corec_node.engine.host import EngineHost
from corec_node.engine.placement import RENDEZVOUS, RING
from corec_node.engine.producers import ProducerSeqs
from corec_node.engine.wire_rows import wire_messages
from corec_node.plugins import PluginManager
from corec_node.shell.control_plane import ClusterView, PluginHost
from corec_node.shell.evolving import EvolutionSide
from corec_node.shell.fusions import FusionSide
from corec_node.shell.ingestqueue import IngestLimits, IngestQueue, Item, payload_bytes
from corec_node.shell.intelligence import Intelligence
from corec_node.shell.lanes import HolderLanes
from corec_node.shell.learning import ACKS_ALL, REPLICA_WRITE, ReplicaSide
from corec_node.shell.metrics import AUDIT_BUCKETS, TickHistogram
from corec_node.shell.recorder import Recorder
from corec_node.shell.replication import NO_LEADER, NOT_ENOUGH_REPLICAS, Replicator
from corec_node.shell.routing import NOT_OWNER, Answer, Forwarder, Relay
from corec_node.shell.traffic import Outbox, Traffic
from corec_node.wire import WireError, decode_batch, make_batch, topic_for
from corec_node.wire.messages import (
    REPLY_MINOR,
    EntityBatch,
    Flow,
    Owner,
    Placement,
)
from corec_node.wire.topics import TOPIC_FLOW

ADMIT_WAIT = 5.0  # seconds a producer's batch may wait for room before it is refused as busy
DOOR_SHARE = 1 / 8  # of the ingest queue: producer bytes waiting at the door; past it, busy at once
HOLD_POLL = 0.002  # a batch waiting out a member's pause looks again this often (a release ends it)
COALESCE_RECORDS = 200_000  # queued batches the worker ingests in one store call: new keys merge once, not per batch
FUSION_EVERY = 10  # the nucleus plans fusions every 10 engine ticks: rows from every owner are in
MEMORY_FULL = "memory_full"  # a producer's records of blocks not held, refused near the memory limit


@dataclass(slots=True)
class _Waiting:
    """A producer's batch (this node's part of it) at the door: decoded, not yet queued
    nor answered."""

    env: Any
    payload: Any
    records: np.ndarray
    relay: Relay  # gathers its answer with those of the parts forwarded to other owners
    blocks: np.ndarray | None  # each record's block (engine.blocks_of), when known
    arrived: float
    size: int
    held: bool = False  # it waited for a member's pause


@dataclass(slots=True)
class ProducerCounts:
    """What producers sent this node, and what it answered, in batches and records."""

    batches: int = 0
    records: int = 0
    accepted: int = 0  # records queued for storing (and republished, when not owner-routed)
    forwarded: int = 0  # records sent on to their owner (owner-routed ingest, SPEC 9.6)
    rejected: collections.Counter[str] = field(default_factory=collections.Counter)  # records, by reason
    rejected_batches: collections.Counter[str] = field(default_factory=collections.Counter)

    def status(self, waiting: int) -> dict[str, Any]:
        return {"batches": self.batches, "records": self.records, "accepted": self.accepted,
                "forwarded": self.forwarded,
                "rejected": dict(self.rejected), "rejected_batches": dict(self.rejected_batches),
                "waiting": waiting}


class DataPlane(ReplicaSide, FusionSide, EvolutionSide):
    """The entity path of one node (see the module docstring)."""

    def __init__(
        self,
        *,
        name: str,
        engine_config: EngineSection,
        outbox: Outbox,
        traffic: Traffic,
        recorder: Recorder,
        plugins: PluginManager,
        host: PluginHost,
        raise_alert: Callable[..., None],
        publish_digest: Callable[[str], None],
    ) -> None:
        self.name = name
        self.config = engine_config
        self.outbox = outbox
        self.traffic = traffic
        self.recorder = recorder
        self.plugins = plugins
        self.host = host
        self.raise_alert = raise_alert
        self.publish_digest = publish_digest
        self.forwarder = Forwarder(self._send_part, lambda: self._now())  # _now is set by bind()
        self.seqs = ProducerSeqs()  # idempotent producers (SPEC 9.6)
        self.replicator = Replicator(lambda: self._now())  # acks all (SPEC 9.7)
        # to each holder in order, copies paced (shell/lanes.py)
        self.lanes = HolderLanes(self._send_part, engine_config.copy_mb_per_s * 2**20, lambda: self._now())
        self._lanes_task: asyncio.Task[None] | None = None
        self.min_insync = engine_config.min_insync or min(2, engine_config.replicas)
        # learners (SPEC 9.7): as nucleus, the members it trusts with ownership (``_ready``);
        # as follower, the learners its nucleus last named; as learner, who sent its copies
        self._ready: set[str] = set()
        self._settled_version, self._settled_since = -1, 0.0  # the map's version, and since when (_drop_strays)
        self._relearn: set[str] = set()  # as nucleus: members that restarted with nothing, learning again
        self._learners: frozenset[str] = frozenset()
        self._learners_published: tuple[int, frozenset[str]] | None = None
        self._learners_quiet = 0  # engine ticks since the learners last changed (learning.py)
        self._copy_done: dict[str, set[str]] = {}
        # we restarted with nothing (the node sets it: it remembered a cluster): until we have
        # learned once (or are alone), we ask the nucleus to make us a learner, even if its map
        # still names us a member (a restart faster than failure detection); elected, we learn
        self.fresh = False
        self._copies_failed: set[tuple[str, str]] = set()  # (map digest, learner): a copy did not leave
        self._memory_full = False  # near the memory limit: no new blocks from producers (shell/memory.py)
        self.data_send: Callable[[str, Any, Any], int | None] = lambda addr, msg, payload: None  # set by the node
        self.engine = EngineHost(name, block_size=engine_config.block_size, max_errors=engine_config.max_errors,
                                 tick_rows=engine_config.tick_rows, copies=engine_config.replicas,
                                 ttl=ttl_seconds(engine_config.ttl))
        self.intelligence = Intelligence(engine_config.intelligent, engine_config.intelligent_save_every, self.engine,
                                         recorder, train_every=engine_config.intelligent_train_every)  # torch, a child
        limits = IngestLimits.from_mb(engine_config.ingest_queue_mb)
        self.flow = limits.flow()  # asks for, and grants, pauses of the stream
        self._limits = limits
        self._queue: IngestQueue | None = None  # made on the loop
        self.ingest_dropped = 0  # stream batches dropped (queue over its limit)
        self.producers = ProducerCounts()
        # records lost after they reached this node, by reason; only those of blocks it
        # would keep (the same batch reaches every member: each counts its own part)
        self.dropped_records: collections.Counter[str] = collections.Counter()
        self.stream_gaps = 0  # stream batches missed on the way (sequence gaps, SPEC 11)
        self._stream_seq: dict[tuple[str, int], int] = {}
        self._door: collections.deque[_Waiting] = collections.deque()
        self._door_bytes = 0
        self._door_limit = int(limits.limit_bytes * DOOR_SHARE)
        self._door_task: asyncio.Task[None] | None = None
        self.view = ClusterView(members={}, live=(name,), leader=None, term=0)
        # the digest in our leader's last heartbeat: None = not heard since it was elected,
        # "" = it does not confirm maps (a 1.0 leader)
        self._leader_placement: str | None = None
        self._unrouted: tuple[str, ...] = ()  # live members with no data socket known, last logged
        # IsolationForest over this node's block rows (engine/audit.py); 0.1 % of healthy rows
        # are flagged on a tick, and only a block flagged 3 audits in a row raises an alert
        self.auditor = Auditor(contamination=0.001)
        self.alert_gate = AlertGate(persist=3)
        self.load_gate = LoadGate()  # no audit while new entities pour in (engine/audit.py)
        self._auditing = False
        self.audit_time = TickHistogram(AUDIT_BUCKETS)  # observed on the loop, timed in the worker thread
        self._now: Callable[[], float] = time.monotonic

    def bind(self, now: Callable[[], float]) -> None:
        """The node's clock (its loop's time), once the loop runs."""
        self._now = now

    def _send_part(self, owner: str, header: EntityBatch, payload: Any) -> int | None:
        addr = self.view.data.get(owner)
        return None if addr is None else self.data_send(addr, header, payload)

    # -- the link from the control plane ------------------------------------------------

    def view_changed(self, view: ClusterView) -> None:
        """Members or leader changed: act on our live view now if we are the nucleus or
        nobody confirms maps, else wait for the leader's digest (SPEC 9.1)."""
        if (view.leader, view.term) != (self.view.leader, self.view.term):
            self._leader_placement = None  # the new leader has confirmed nothing yet
            if view.leader == self.name:  # trusted: the members of the map we act on (a learner elected
                self._ready = set(self.engine.placement.members)  # learns still, and says READY to itself)
        self.view = view
        self._act_on_view()

    def _act_on_view(self) -> None:
        view = self.view
        if view.leader == self.name:
            # a member stays trusted while it is live; one the cluster saw dead or gone learns
            # again when it comes back (it missed writes, or lost its state)
            self._relearn &= set(view.live)
            self._ready = ((self._ready | set(self.engine.placement.members)) & set(view.live)) - self._relearn
            self._learners = frozenset(m for m in view.live if m in view.replicating and m not in self._ready)
        # rule 5 once every live member places by it; rendezvous while one cannot (a 1.6 node)
        self.engine.rule = RENDEZVOUS if view.rendezvous & set(view.live) else RING
        self.engine.observe_view(view.live, self._learners)
        if self._acts_on_own_view():
            if view.leader is not None or self.engine.copies == 1:  # with replicas, only a nucleus moves blocks
                self._store_queued(self.engine.view_digest())
                self._hand_off(self.engine.adopt_view())
        elif self._leader_placement is not None:
            self._confirm_placement()
        self._report_lost()
        self.publish_digest(self.engine.placement_digest())
        if view.leader == self.name:
            self._publish_learners()

    def leader_placement(self, digest: str) -> None:
        self._leader_placement = digest
        if digest:
            self._confirm_placement()
        else:  # a leader that does not confirm maps: act on our own view
            self._store_queued(self.engine.view_digest())
            self._hand_off(self.engine.adopt_view())
        self._report_lost()
        self.publish_digest(self.engine.placement_digest())

    def _report_lost(self) -> None:
        """Blocks whose every holder left the map are gone from every answer: each node logs
        it, and the nucleus raises one alert for the cluster."""
        for gone, blocks, entities in self.engine.lost:
            log.event("blocks_lost", logging.WARNING, members=",".join(gone), blocks=blocks, entities=entities,
                      detail="no member of the new map held a copy (engine.replicas 2 or more keeps one)")
            if self.view.leader == self.name:
                self.raise_alert("blocks_lost", f"{blocks} blocks ({entities:,} entities) lost with "
                                 f"{', '.join(gone)}: no surviving member held a copy", blocks=blocks, entities=entities)
        self.engine.lost.clear()

    def _acts_on_own_view(self) -> bool:
        """True when we are the nucleus, know none, or ours does not confirm maps (1.0)."""
        leader = self.view.leader
        return leader is None or leader == self.name or self._leader_placement == ""

    def placement_confirmed(self) -> bool:
        """Whether the map we act on is the one the nucleus confirmed (our own view when
        nobody else confirms)."""
        confirmed = self.engine.view_digest() if self._acts_on_own_view() else self._leader_placement
        return self.engine.placement_digest() == confirmed

    def _confirm_placement(self) -> None:
        if self._leader_placement == self.engine.view_digest():
            self._store_queued(self._leader_placement)
        handoffs = self.engine.confirm(self._leader_placement or "")
        if handoffs is not None:
            self._hand_off(handoffs)

    # -- ingest -----------------------------------------------------------------------

    def queue(self) -> IngestQueue:
        if self._queue is None:
            self._queue = self._limits.queue()
        return self._queue

    def is_handoff(self, sender: str) -> bool:
        """A direct batch from a member is block state handed over, not a producer's."""
        return sender != self.name and sender in self.view.members

    def batch(self, env: Any, payload: Any, where: str, answer: Answer | None = None) -> None:
        """Take a batch for the ingest worker; never makes the caller wait.

        A producer's batch (direct or data socket, or forwarded by a member: ``hops`` > 0)
        goes through the door and is answered with ``answer`` if the producer reads answers.
        A handoff (direct, from a member) is always queued. A stream batch that finds the
        queue over its limit is dropped and counted; this node asks for pauses long before."""
        if where == "direct":
            if self.is_handoff(env.sender) and env.msg.hops == 0:
                self.queue().add((env, payload, where, None))  # block state: refusing it would lose it
            else:
                self._producer_batch(env, payload, answer)
            return
        self._note_stream_seq(env)
        item = (env, payload, where, None)
        if not self.queue().offer(item):  # we cannot keep up: shed stream data, never the control plane
            self.ingest_dropped += 1
            self.traffic.rejected["ingest_overflow"] += 1
            self._count_lost(env, payload, "stream_overflow")
            return
        self._ask_flow(self.flow.stream_queued(payload_bytes(item), self._now()))

    def peer_flow(self, sender: str, hold_ms: int) -> None:
        self.flow.peer_flow(sender, hold_ms, self._now())

    # -- producers: the door and the answers (SPEC 9.4) ------------------------------------

    def _producer_batch(self, env: Any, payload: Any, answer: Answer | None) -> None:
        msg = env.msg
        if env.minor < REPLY_MINOR or msg.acks == 0:
            answer = None
        self.producers.batches += 1
        self.producers.records += msg.count
        # the answer names our map's epoch only when the producer's map sent us records we do
        # not own: epochs of one member set may differ between nodes until rows carry them
        relay = Relay(env.seq, answer, 0, parts=1)
        try:
            records = decode_batch(msg, payload)  # before it is answered: a bad record is refused, not lost
        except WireError as exc:
            self.traffic.reject("direct", exc)
            self._refuse_records(relay, msg.count, "too_large" if exc.reason == "too_large" else "malformed")
            return
        if relay.answer is not None and (not self._routed(every=self.engine.copies > 1) or self.engine.copies > 1 and (
                self.view.leader is None or not self.placement_confirmed())):
            # a live member whose data socket we do not know (just restarted: only the lossy PUB stream would
            # reach its blocks, and no holder would answer); with replicas, a minority side, no nucleus yet, or
            # a map the nucleus has not confirmed (one just restarted): by it we could own blocks held elsewhere
            self._refuse_records(relay, len(records), NO_LEADER)
            return
        blocks = None
        if self.view.routed:
            blocks = self.engine.blocks_of(records)
            mine, parts = self.engine.route(records, blocks)
            if parts:
                records, blocks = records[mine], blocks[mine]
                relay.epoch = self.engine.epoch  # the producer's map is not the one we act on
                if msg.hops > 0:  # forwarded once already: the sender's map and ours disagree
                    self._refuse_records(relay, sum(len(p) for p in parts.values()), NOT_OWNER, last=False)
                else:
                    relay.parts += len(parts)
                    before = self.forwarder.forwarded
                    self.forwarder.forward(env, parts, relay)
                    self.producers.forwarded += self.forwarder.forwarded - before
            if not len(records):
                relay.part(0)
                return
        if self._memory_full and not msg.delete:
            new = self.engine.new_blocks(records)
            if new.any():  # updates of blocks held still go in: they take no new memory
                self._refuse_records(relay, int(new.sum()), MEMORY_FULL, last=new.all())
                if new.all():
                    return
                records, blocks = records[~new], (blocks[~new] if blocks is not None else None)
        if msg.acks >= ACKS_ALL and self.engine.in_sync() < self.min_insync:
            self._refuse_records(relay, len(records), NOT_ENOUGH_REPLICAS)
            return
        entry = _Waiting(env, payload, records, relay, blocks, self._now(),
                         records.nbytes if self.view.routed else payload_bytes((env, payload)))
        if not self._door and self._admit(entry):
            return
        if self._door_bytes + entry.size > self._door_limit:
            self._refuse_records(relay, len(records), "busy")
            return
        self._door.append(entry)
        self._door_bytes += entry.size
        if self._door_task is None or self._door_task.done():
            self._door_task = asyncio.get_running_loop().create_task(self._run_door())

    def _routed(self, *, every: bool) -> bool:
        """Whether an answered batch surely reaches its owners: ``every`` live member's data
        socket known (with replicas: ``view.routed``), else that of each member whose state
        we have heard (one restored from our snapshot and not heard yet may be a node whose
        subscription to our PUB stream is not back: republished, the batch would be lost).
        One line names the members missing each time that set changes."""
        missing = tuple(m for m in self.view.live if m not in self.view.data and (every or m in self.view.unheard))
        if missing != self._unrouted:
            self._unrouted = missing
            if missing:
                log.event("acks_refused_unrouted", logging.WARNING, members=",".join(missing),
                          detail="no data socket known for them: acknowledged batches refused no_leader until there is")
        return not missing

    def _admit(self, entry: _Waiting) -> bool:
        """Queue, republish and answer ``entry`` if nothing holds it now (a member's pause,
        no room in the queue); False leaves it waiting."""
        now = self._now()
        if self.flow.held_until(now) is not None:
            entry.held = True
            return False
        queue = self.queue()
        if not queue.room():
            return False
        env, payload = entry.env, entry.payload
        records, refused, blocks = self._admit_sequences(env.msg, entry.records, entry.blocks)
        if not self.view.routed:
            self._republish(env, payload)
        queue.add((env, payload, "direct", records))
        if entry.held:
            self.flow.held(now - entry.arrived, now)
        self.producers.accepted += len(records)
        for reason, count in refused.items():
            self.producers.rejected[reason] += count
            self.producers.rejected_batches[reason] += 1
        parts = self.engine.replica_parts(records, blocks) if blocks is not None and self.view.routed else {}
        if env.msg.acks >= ACKS_ALL and entry.relay.answer is not None:
            self._replicate(env.msg, parts, self.replicator.wait(entry.relay, len(records), refused, len(parts)))
        else:
            entry.relay.part(len(records), refused)
            self._replicate(env.msg, parts, None)
        return True

    def _replicate(self, msg: EntityBatch, parts: dict[str, np.ndarray], quorum: Any) -> None:
        """Send what we queued as owner to the other holders of its blocks (SPEC 9.7),
        through their lanes; ``quorum``: the acks-all wait their answers complete."""
        for holder, part in parts.items():
            header, payload = make_batch(part, msg.channel)
            header = dataclasses.replace(header, producer=msg.producer, pseq=msg.pseq, delete=msg.delete,
                                         acks=ACKS_ALL if quorum is not None else 0, replica=REPLICA_WRITE)
            self.lanes.send(holder, header, payload,
                            sent=self.replicator.sent(quorum, holder, len(part)) if quorum is not None else None)
        if parts:
            self._kick_lanes()

    def _expire(self) -> None:
        """TTLs: what expired in our own blocks is removed here and at their other holders."""
        expired = self.engine.expire(int(self._now()))
        if not len(expired):
            return
        log.event("entities_expired", entities=len(expired))
        for channel in np.unique(expired["channel"]).tolist():
            part = expired[expired["channel"] == channel]
            parts = self.engine.replica_parts(part, self.engine.blocks_of(part))
            self._replicate(EntityBatch(channel=channel, count=len(part), compressed=False, delete=True), parts, None)

    def _kick_lanes(self) -> None:
        """Make sure what waits in a holder's lane is sent as its budget allows."""
        if not self.lanes.waiting() or (self._lanes_task is not None and not self._lanes_task.done()):
            return
        try:
            self._lanes_task = asyncio.get_running_loop().create_task(self._run_lanes())
        except RuntimeError:  # no loop (a test driving the plane by hand): the next tick pumps
            pass

    async def _run_lanes(self) -> None:
        while (wait := self.lanes.pump()) is not None:
            await asyncio.sleep(min(wait, 0.05))

    def _admit_sequences(self, msg: EntityBatch, records: np.ndarray,
                         blocks: np.ndarray | None) -> tuple[np.ndarray, dict[str, int], np.ndarray | None]:
        """Idempotent producers: drop the records of blocks a batch as new or newer from
        the same producer has already written (``engine/producers.py``). ``blocks``: each
        record's placed block; returned with the records kept."""
        if msg.producer == 0 or not len(records):
            return records, {}, blocks
        if blocks is None:
            blocks = self.engine.blocks_of(records)
        keep, refused = self.seqs.admit(msg.producer, msg.pseq, blocks)
        return (records[keep], refused, blocks[keep]) if refused else (records, {}, blocks)

    async def _run_door(self) -> None:
        """Admit the batches at the door in arrival order; refuse those that waited ADMIT_WAIT."""
        queue = self.queue()
        while self._door:
            entry = self._door[0]
            if not self._admit(entry):
                left = entry.arrived + ADMIT_WAIT - self._now()
                if left > 0:
                    if entry.held:
                        await asyncio.sleep(min(HOLD_POLL, left))
                    else:
                        await queue.wait_room(left)
                    continue
                self._refuse_records(entry.relay, len(entry.records), "busy")
            self._door.popleft()
            self._door_bytes -= entry.size

    def _refuse_records(self, relay: Relay, count: int, reason: str, *, last: bool = True) -> None:
        """Refuse ``count`` records of a producer's batch; ``last``: this closes our part."""
        self.producers.rejected[reason] += count
        self.producers.rejected_batches[reason] += 1
        if reason == "busy":  # the wire's reasons were counted by traffic.reject already
            self.traffic.rejected["busy"] += 1
        if last:
            relay.part(0, {reason: count})
        else:
            relay.rejected[reason] += count

    def placement_request(self, answer: Answer) -> None:
        """A producer asks for the map: the one this node acts on, with every owner's data
        socket; no owners when some live member has none (a 1.4 node): send everything here."""
        epoch, digest, members, fusions = self.engine.map_message()
        data = self.view.data
        owners = tuple(Owner(m, data[m]) for m in members) if self.view.routed and all(m in data for m in members) else ()
        answer(Placement(epoch=epoch, digest=digest, block_size=self.engine.block_size, owners=owners,
                         fusions=tuple(fusions), replicas=self.engine.copies,
                         rule="" if self.engine.placement.rule == RENDEZVOUS else self.engine.placement.rule))

    # -- the stream's losses ------------------------------------------------------------

    def _note_stream_seq(self, env: Any) -> None:
        """Count stream batches missed on the way (the PUB/SUB path is lossy, SPEC 11)."""
        key = (env.sender, env.msg.channel)
        last = self._stream_seq.get(key)
        self._stream_seq[key] = env.seq
        if last is not None and env.seq > last + 1:
            self.stream_gaps += env.seq - last - 1

    def _count_lost(self, env: Any, payload: Any, reason: str) -> None:
        """A batch this node will not store: count the records of it this node would keep."""
        try:
            records = decode_batch(env.msg, payload)
        except WireError:
            return  # counted as a rejected frame when it arrived, or it would be now: nothing valid lost
        self._count_records(records, reason)

    def _count_records(self, records: np.ndarray, reason: str) -> None:
        if len(records):  # the engine's own test of what this node keeps (its map and the pending view)
            self.dropped_records[reason] += int(np.count_nonzero(self.engine._mine(records)))

    def _ask_flow(self, hold_ms: int | None) -> None:
        if hold_ms is not None:
            self.outbox.publish_frames(TOPIC_FLOW, self.outbox.frames(Flow(hold_ms=hold_ms), TOPIC_FLOW))

    async def worker(self) -> None:
        """Ingest queued batches in arrival order. A backlog is taken in one go (up to
        COALESCE_RECORDS records): one store call merges all its new keys at once."""
        queue = self.queue()
        while True:
            self._ingest_taken(await queue.take(COALESCE_RECORDS))
            await asyncio.sleep(0)  # timers and control messages go between two takes

    def _store_queued(self, digest: str | None = None) -> None:
        """Before the map changes to ``digest`` (None: fusions move blocks): store everything
        queued now. Holders answered for it, so the copies the change cuts from the store
        must carry it (a write stored after its block's copy left would reach no new holder)."""
        if digest == self.engine.placement_digest() or self._queue is None or not self._queue.qsize():
            return
        items, taken = self._queue.take_now(), 0
        while taken < len(items):  # in the worker's portions: one store call each, memory bounded
            end, records = taken, 0
            while end < len(items) and (end == taken or records < COALESCE_RECORDS):
                records += getattr(items[end][0].msg, "count", 0)
                end += 1
            self._ingest_taken(items[taken:end])
            taken = end

    def _ingest_taken(self, items: list[Item]) -> None:
        try:
            self._ingest_items(items)
        except Exception:  # a bug on one batch must not stop ingest
            logging.getLogger(log.LOGGER_NAME).exception("ingest_failed")
            self.dropped_records["ingest_error"] += sum(getattr(item[0].msg, "count", 0) for item in items)  # at most
        stream = sum(payload_bytes(item) for item in items if item[2] == "broadcast")
        self._ask_flow(self.flow.stream_taken(stream, self._now()))  # publish never raises

    def _ingest_items(self, items: list[Item]) -> None:
        """A sweep of known entities is stored at once (``ingest_sweep``); other batches are
        stored together, in one call, with every batch after them; a handoff is applied in its
        place in the order (what came before it is stored first). An owner's writes for us
        as a holder are gathered too and stored in one call (their blocks are not ours to
        write: no order to keep with our own writes), before anything whose order matters."""
        pending: list[np.ndarray] = []
        replicas: list[np.ndarray] = []
        copies_done = False
        for env, payload, where, decoded in items:
            if where == "direct" and decoded is None:  # a handoff
                self._flush(pending, replicas)
                records = self._decode_batch(env.msg, payload, "direct")
                if records is not None:
                    self.engine.receive_handoff(records)
                continue
            if where == "replica" and not env.msg.delete and not env.msg.hops:
                replicas.append(decoded)
                continue
            if where in ("replica", "copy", "copy_done"):  # in the order their owner sent them
                self._flush(pending, replicas)
                if where == "replica" and env.msg.delete:
                    self.engine.delete(decoded)
                elif where == "replica":
                    self.engine.apply_replica(decoded, env.msg.channel, moved=env.msg.hops > 0)
                elif where == "copy":
                    self.engine.receive_handoff(decoded, overwrite=True)
                else:
                    self._copy_done.setdefault(env.msg.digest, set()).add(env.sender)
                    self.engine.raise_epoch(env.msg.epoch)  # once we own, our rows outrank the old owners' rows
                    while len(self._copy_done) > 8:  # maps we learned under long ago
                        del self._copy_done[next(iter(self._copy_done))]
                    copies_done = True
                continue
            records = decoded if decoded is not None else self._decode_batch(env.msg, payload, where)
            if records is not None and where == "broadcast" and env.msg.delete:  # every holder removes them
                self._flush(pending, replicas)
                self.engine.delete(records)
                continue
            if records is not None and where == "broadcast" and (self.engine.copies > 1 or self.engine.placement.learners):
                self._keep_copies(env.msg, records, replicas)  # before the owner's part is taken out below
            if records is not None and where == "broadcast" and env.msg.producer:
                records = records[self.engine._mine(records)]
                records, refused, _ = self._admit_sequences(env.msg, records, self.engine.blocks_of(records))
                for reason, count in refused.items():
                    self.dropped_records[reason] += count
            if records is not None and where == "direct" and self.view.routed:
                records = self._moved_away(env.msg, records)
            if records is not None and env.msg.delete:  # in order with the writes around it
                self._flush(pending, replicas)
                self.engine.delete(records)
                continue
            if records is not None:
                if pending or self.engine.ingest_sweep(records, env.msg.channel) is None:  # in order, after pending
                    pending.append(records)
                if self.plugins.wants(env.msg.channel):
                    self.plugins.spawn(self.plugins.entities(self.host, env.msg.channel, records))
        self._flush(pending, replicas)
        if copies_done:  # once the whole batch is stored: READY may change the map (as nucleus, at once)
            self._check_ready()

    def _keep_copies(self, msg: EntityBatch, records: np.ndarray, replicas: list[np.ndarray]) -> None:
        """The stream of a cluster that is not owner-routed reaches every holder: a replica,
        or a learner, keeps the records of the blocks it holds and does not own (the owner
        sends it nothing in that cluster), their producer sequences checked as an owner's."""
        copies = self.engine._held(records) & ~self.engine._mine(records)
        if copies.any():
            kept, _refused, _ = self._admit_sequences(msg, records[copies], None)
            if len(kept):
                replicas.append(kept)

    def _moved_away(self, msg: EntityBatch, records: np.ndarray) -> np.ndarray:
        """Records we accepted as owner whose blocks the map gave another owner before they
        were stored: sent on to the blocks' holders as their owner's writes (after the
        copies we sent them, on the same socket), never dropped. Returns the ones we keep."""
        mine = self.engine._mine(records)
        if mine.all():
            return records
        moved = records[~mine]
        self.engine.ingested += len(moved)  # taken in here, stored at their holders (counted once)
        for holder, part in self.engine.holder_parts(moved, self.engine.blocks_of(moved)).items():
            header, payload = make_batch(part, msg.channel)
            header = dataclasses.replace(header, producer=msg.producer, pseq=msg.pseq, acks=0, hops=1, delete=msg.delete,
                                         replica=REPLICA_WRITE)  # hops 1: a previous owner's, not the owner's
            self.lanes.send(holder, header, payload, sent=self._count_unsent("moved_away", len(part)))
        self._kick_lanes()
        return records[mine]

    def _count_unsent(self, reason: str, records: int) -> Callable[[int | None], None]:
        def sent(seq: int | None) -> None:
            if seq is None:
                self.dropped_records[reason] += records
        return sent

    def _republish(self, env: Any, payload: Any) -> None:
        """A producer's batch: publish it for every owner and subscriber of its channel."""
        topic = topic_for(env.msg)
        try:
            frames = self.outbox.frames(env.msg, topic, payload)
        except ValueError as exc:  # accepted here but not sendable (over the wire's payload limit)
            self.traffic.reject("republish", WireError("too_large", str(exc)))
            return
        self.outbox.publish_frames(topic, frames)

    def _decode_batch(self, header: EntityBatch, payload: Any, where: str) -> np.ndarray | None:
        try:
            return decode_batch(header, payload)
        except WireError as exc:
            self.traffic.reject(where, exc)
            return None

    def _flush(self, pending: list[np.ndarray], replicas: list[np.ndarray]) -> None:
        """Store what was gathered: our own writes, then an owner's for us as a holder."""
        self._store(pending)
        if replicas:
            self.engine.apply_replica(replicas[0] if len(replicas) == 1 else np.concatenate(replicas))
            replicas.clear()

    def _store(self, pending: list[np.ndarray]) -> None:
        """Ingest decoded batches in one store call (and empty the list). They are not
        sweeps (``_ingest_items`` tried), so the general path is taken at once."""
        if pending:
            self.engine.ingest(pending[0] if len(pending) == 1 else np.concatenate(pending), sweep=False)
            pending.clear()

    # -- ticks, audit, fusions --------------------------------------------------------------

    def tick(self) -> None:
        """One engine tick: aggregates published and stored, audit, repairs, fusions."""
        self.forwarder.expire()
        self.lanes.pump()
        self.replicator.expire()
        self._expire()
        if self.view.leader == self.name:
            self._publish_learners(tick=True)
        self._copy_again()
        self._mark_copies()
        self._check_ready()
        self._drop_strays()
        rows, repairs = self.engine.tick(self.intelligence.tick)  # nano_forecast, nano_error: intelligent channels
        tick_no = self.engine.tick_no
        self.plugins.spawn(self.plugins.block_aggregates(self.host, tick_no, rows))
        # one audit at a time, in a worker thread, and none while new entities pour in
        if rows and self.config.audit and not self._auditing and self.load_gate.settled(self.engine.store.count()):
            self._auditing = True
            self.recorder.spawn("audit", self._audit_tick(rows, tick_no))
        if rows:
            self.recorder.block_state(rows, time.time())
        for msg in wire_messages(tick_no, self.engine.wire_rows):  # the rows worth publishing (engine/wire_rows.py)
            self.outbox.publish(msg)
        if self.view.leader == self.name and tick_no % FUSION_EVERY == 0:
            self._plan_fusions()
        self._adaptive_tick(tick_no)
        for record in repairs:
            log.event("repair", kind=record.kind, block=record.block, channel=record.channel,
                      entities=record.entities, reason=record.reason)
            self.recorder.audit(record.kind, f"block {record.channel}:{record.block & 0xFFFFFFFF}", record.reason,
                                block=record.block, entities=record.entities)

    async def _audit_tick(self, rows: list[dict[str, Any]], tick: int) -> None:
        try:
            (findings, records), seconds = await asyncio.to_thread(self._timed_audit, rows, tick)
        finally:
            self._auditing = False
        self.audit_time.observe(seconds)
        alerted = self.alert_gate.step(findings)  # a flag alone is chance; the same block again is not
        for rec in [r for r in records if r.kind != "audit_flag"] + [f.record() for f in alerted]:
            log.event("audit", kind=rec.kind, subject=rec.subject, reason=rec.reason, tick=rec.tick)
            self.recorder.audit(rec.kind, rec.subject, rec.reason, tick=rec.tick, **rec.details)
        for finding in alerted:
            alert = finding.alert()
            self.raise_alert(alert.pop("kind"), alert.pop("text"), **alert)

    def _timed_audit(self, rows: list[dict[str, Any]], tick: int) -> tuple[Any, float]:
        """In the worker thread: the audit's result and the seconds it took there."""
        started = time.perf_counter()
        return self.auditor.step(rows, tick), time.perf_counter() - started

    def memory_full(self, full: bool, gauge: Any) -> None:
        """The node's memory against its limit, each tick: past 90 % it takes no new blocks
        from producers (refused ``memory_full``, with an alert), copies and updates still."""
        if full == self._memory_full:
            return
        self._memory_full = full
        used, limit = gauge.used(), gauge.limit
        if full:
            log.event("memory_full", logging.WARNING, used_mb=round(used / 2**20, 1), limit_mb=round(limit / 2**20, 1),
                      source=gauge.source, detail="new blocks from producers are refused until memory is freed")
            self.raise_alert("memory_full", f"memory {used / 2**20:.0f} of {limit / 2**20:.0f} MiB: new blocks refused",
                             used_mb=round(used / 2**20, 1), limit_mb=round(limit / 2**20, 1))
        else:
            log.event("memory_ok", used_mb=round(used / 2**20, 1), limit_mb=round(limit / 2**20, 1))

    # -- status -------------------------------------------------------------------------

    def cluster_answer(self) -> dict[str, Any]:
        """What the cluster-wide answer (``blocks``) is made of: its rows, the owners whose
        rows they are, the latest tick among them and the map's epoch. Two nodes that report
        the same epoch, owners and tick give the same rows."""
        rows = self.engine.cluster_rows()
        return {"cluster_blocks": len(rows), "answered_by": sorted({r["owner"] for r in rows}),
                "rows_tick": max((int(r.get("tick") or 0) for r in rows), default=0)}

    def status(self) -> dict[str, Any]:
        queue = self._queue
        return {
            "entities": self.engine.owned_entities(),
            "held_entities": self.engine.store.count(),
            "replicas": self.engine.copies,
            "min_insync": self.min_insync,
            "in_sync": self.engine.in_sync(),
            "learner": self.engine.is_learner(), "learners": sorted(self.engine.placement.learners),
            "restarted_empty": self.fresh,  # not yet taught what it held before its restart
            "awaited_copies": self.awaited_copies(),
            "replicated_in": self.engine.replicated_in,
            "replicas_waiting": self.replicator.waiting(),
            "not_replicated": self.replicator.not_replicated,
            "copies_waiting": self.lanes.waiting(),
            "deleted": self.engine.deleted,
            "expired": self.engine.expired,
            "memory_full": self._memory_full,
            "blocks": len(self.engine.store.block_ids()),
            **self.cluster_answer(),
            "entity_errors": self.engine.entity_errors,
            "ingested": self.engine.ingested,
            "ingest_dropped": self.ingest_dropped,
            "producers": self.producers.status(len(self._door)),
            "routed": self.view.routed,
            "forwards_waiting": self.forwarder.waiting(),
            "placement_epoch": self.engine.epoch,
            "dropped_records": dict(self.dropped_records),
            "stream_gaps": self.stream_gaps,
            "rows_ignored": self.engine.rows_ignored,
            "ingest_queue": queue.qsize() if queue is not None else 0,
            "ingest_queue_bytes": queue.bytes if queue is not None else 0,
            "repairs": self.engine.repairs,
            "fusions": self.engine.fusions,
            "audit_fits": self.auditor.fits,
            "audits_skipped_loading": self.load_gate.skipped,
            "flow": self.flow.status(),
            "intelligent": self.intelligence.status(),
            "placement_version": self.engine.placement.version,
            "placement_members": list(self.engine.placement.members),
            "placement_confirmed": self.placement_confirmed(),
        }
