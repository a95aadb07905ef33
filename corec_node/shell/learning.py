"""Replicas and learners, the data plane's side (SPEC 9.7): an owner's writes and copies
taken as a holder, the answers holders give, and the learner protocol (COPY_DONE from
every member, READY to the nucleus, the nucleus's LEARNERS), the copies a map change
sends to new holders, and the strays a settled map drops. A mixin of ``DataPlane``:
the state it reads and writes is the plane's, set up in its ``__init__``."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from corec_node import log
from corec_node.engine.wire_rows import ROWS_REFRESH
from corec_node.shell.routing import Answer
from corec_node.wire import make_batch
from corec_node.wire.messages import BatchReply, CopyDone, Learners, Ready, SequenceHandoff
from corec_node.wire.topics import TOPIC_DIRECT

REPLICA_WRITE, REPLICA_COPY = 1, 2  # EntityBatch.replica (SPEC 9.7)
ACKS_ALL = 2  # EntityBatch.acks: every holder queued the records
HANDOFF_CHUNK = 100_000  # records per handoff or copy message (1 MB frames)
SEQUENCE_ROWS = 2_000  # producer sequences per SEQUENCE_HANDOFF message (under the rows limit)
LEARNERS_SETTLE = 5  # engine ticks after a change of the learners during which they go out every tick
LEARNERS_REFRESH = 10  # and after that, every this many ticks (none: a 1-second tick says so every 10 s)
SETTLED = 10.0  # seconds a confirmed map stays unchanged before blocks it does not give us are dropped


class ReplicaSide:
    """What a node does as a holder of others' blocks and as a learner (see the module)."""

    _rows_heard_at: int | None = None  # the engine tick this node first held rows (``_rows_shown``)

    def replica_batch(self, env: Any, payload: Any, answer: Answer) -> None:
        """An owner's records for us as a holder (``replica`` 1), or a block's copy (2):
        queued in its order; a write sent with acks all is answered once queued."""
        msg = env.msg
        if env.sender == self.name:  # our own name from another process: nobody's writes for us
            self.traffic.rejected["replica_stranger"] += 1
            return
        records = self._decode_batch(msg, payload, "data")
        if records is None:
            if msg.acks >= ACKS_ALL:
                answer(BatchReply(seq=env.seq, accepted=0, rejected={"malformed": msg.count}))
            return
        if msg.replica == REPLICA_COPY:
            self.queue().add((env, payload, "copy", records))
            return
        kept, refused, _ = self._admit_sequences(msg, records, None)
        if len(kept):
            self.queue().add((env, payload, "replica", kept))
        if msg.acks >= ACKS_ALL:
            answer(BatchReply(seq=env.seq, accepted=len(kept), rejected=refused))

    def holder_answered(self, sender: str, reply: BatchReply) -> None:
        """An answer on the data socket: to a part we forwarded, or to a write we replicated."""
        if not self.forwarder.answered(sender, reply) and not self.replicator.answered(sender, reply):
            self.traffic.rejected["stray_reply"] += 1

    def copy_done(self, env: Any) -> None:
        """A member sent us every copy it owes us: counted once the copies before it are applied."""
        self.queue().add((env, None, "copy_done", None))

    def _check_ready(self) -> None:
        """As a learner: once every replicating member of our map sent its CopyDone for it,
        tell the nucleus we have caught up (again every tick, until it makes us a member).
        Fresh from a start with nothing held, and named a member: ask to learn first
        (READY with no digest)."""
        alone = len(self.engine.placement.members) <= 1
        if self._rows_heard_at is None and self.engine.rows:
            self._rows_heard_at = self.engine.tick_no
        if self.fresh and (self.engine.is_learner() or (alone and self.engine.store.count())):
            # learning now, or holding what was sent to us alone; not the writes our peers
            # replicate to us after a restart: those are not the blocks we lost
            self.fresh = False
        if self.fresh and self.view.leader == self.name:
            self._learn_as_nucleus(alone)
            return
        if self.fresh and self.view.leader is not None and self.name in self.engine.placement.members \
                and len(self.engine.placement.members) > 1:
            addr = self.view.data.get(self.view.leader)
            if addr is not None:
                self.data_send(addr, Ready(digest=""), None)
            return
        if not self.engine.is_learner():
            return
        leader = self.view.leader
        if leader is None or self.awaited_copies():
            return
        digest = self.engine.placement_digest()
        addr = self.view.data.get(leader)
        if addr is not None:
            self.data_send(addr, Ready(digest=digest), None)

    def _learn_as_nucleus(self, alone: bool) -> None:
        """Restarted with nothing and elected: we learn too, from the members that hold our
        blocks' copies, before we own (a learner nucleus says READY to itself), once the
        cluster's rows show what we lack (with no rows, nothing is lacking yet)."""
        if alone:
            self.fresh = False
        elif self._rows_shown():
            self.fresh = False
            if self.engine.holds_shown_blocks(self.name):
                self._ready.discard(self.name)
                self._relearn.add(self.name)
                log.event("member_learns_again", member=self.name, detail="elected with nothing held: it learns first")
                self._act_on_view()

    def _rows_shown(self) -> bool:
        """Whether our rows are the cluster's: unchanged rows come every ROWS_REFRESH ticks
        (engine/wire_rows.py), so the first rows a node hears may be a few of them, and what
        a member lacks is judged only on rows heard for that long."""
        return self._rows_heard_at is not None and self.engine.tick_no - self._rows_heard_at >= ROWS_REFRESH

    def awaited_copies(self) -> list[str]:
        """As a learner: the members whose copies under our map we still wait for."""
        if not self.engine.is_learner():
            return []
        done = self._copy_done.get(self.engine.placement_digest(), set())
        return sorted(m for m in self.engine.placement.members if m in self.view.replicating and m not in done)

    def ready(self, sender: str, msg: Ready) -> None:
        """A learner caught up: as nucleus, trust it with ownership if it caught up under
        the map we act on now."""
        if self.view.leader != self.name:
            return
        if not msg.digest:  # a member that restarted with nothing: it learns before it owns again
            if self.engine.rows and not self._rows_shown():
                return  # judged once our rows are the cluster's: it asks again every tick
            if sender != self.name and sender in self._ready and self.engine.holds_shown_blocks(sender):
                self._ready.discard(sender)
                self._relearn.add(sender)  # even while our map still names it a member
                log.event("member_learns_again", member=sender, detail="it restarted with nothing held")
                self._act_on_view()
            return
        if sender not in self._learners:
            return
        if msg.digest != self.engine.placement_digest():
            return  # the map moved since: it catches up under the new one and says so again
        self._ready.add(sender)
        self._relearn.discard(sender)
        log.event("learner_ready", member=sender, map=msg.digest)
        self._act_on_view()

    def learners(self, sender: str, msg: Learners) -> None:
        """The nucleus names its learners: our view leaves them out of ownership."""
        if sender != self.view.leader or msg.term != self.view.term:
            return
        names = frozenset(msg.names)
        if names != self._learners:
            self._learners = names
            self._act_on_view()

    def _publish_learners(self, *, tick: bool = False) -> None:
        """The nucleus's learners, published when they change and again on engine ticks
        (``tick``): every tick while there are learners or the set changed in the last
        ``LEARNERS_SETTLE`` ticks, else every ``LEARNERS_REFRESH`` ticks. A member that
        missed a change learns it again; an idle cluster is not told "none" every tick."""
        key = (self.view.term, self._learners)
        if key != self._learners_published:
            self._learners_published, self._learners_quiet = key, 0
        elif not tick:
            return
        else:
            self._learners_quiet += 1
            if not (self._learners or self._learners_quiet <= LEARNERS_SETTLE
                    or self._learners_quiet % LEARNERS_REFRESH == 0):
                return
        self.outbox.publish(Learners(term=self.view.term, names=tuple(sorted(self._learners))))

    def _mark_copies(self) -> None:
        """After the copies of a new map, and every tick while it has learners: tell each
        learner we sent all we owe it (a marker lost or early is simply sent again)."""
        placement = self.engine.placement
        if not placement.learners or self.engine.is_learner():
            return
        digest = placement.digest()
        for learner in placement.learners:
            if learner in self.view.data and (digest, learner) not in self._copies_failed:  # behind the copies
                self.lanes.send(learner, CopyDone(digest=digest, epoch=self.engine.epoch),
                                unless=lambda d=digest, h=learner: (d, h) in self._copies_failed)
        self._kick_lanes()

    # -- copies to new holders (SPEC 9.7) ------------------------------------------------

    def _hand_off(self, handoffs: dict[str, np.ndarray]) -> None:
        """Send block copies to their new holders (engine rule 3), then tell the map's
        learners we sent them all. Called on every map we adopt: acks all stops waiting for
        holders the map dropped."""
        self.replicator.holders_left(set(self.engine.placement.everyone),
                                     enough=self.engine.in_sync() >= self.min_insync)
        for owner, records in handoffs.items():
            if owner in self.view.data and owner in self.view.replicating:
                self._copy_to(owner, records)
                continue
            if owner in self.engine.placement.learners:  # its data socket is not known yet: copied again later
                self._copies_failed.add((self.engine.placement_digest(), owner))
                continue
            addr = self.view.members.get(owner)
            if addr is None:  # taken out of our store with nowhere to go
                self.dropped_records["handoff"] += len(records)
                log.event("handoff_lost", logging.WARNING, to=owner, records=len(records), detail="owner has no address")
                continue
            if owner in self.view.data:  # 1.5 and later: a 1.4 owner would drop the message as unknown
                self._hand_off_sequences(addr, records)
            for start in range(0, len(records), HANDOFF_CHUNK):
                chunk = records[start:start + HANDOFF_CHUNK]
                for channel in np.unique(chunk["channel"]).tolist():
                    part = chunk[chunk["channel"] == channel]
                    header, payload = make_batch(part, channel)
                    if not self.outbox.transport.send(addr, self.outbox.frames(header, TOPIC_DIRECT, payload)):
                        self.dropped_records["handoff"] += len(part)
            version = self.engine.placement.version
            log.event("blocks_handed_off", to=owner, records=len(records), map_version=version)
            self.recorder.audit("placement", owner, "membership changed: blocks handed to their new owner",
                                records=len(records), map_version=version)
        self._mark_copies()

    def _hand_off_sequences(self, addr: str, records: np.ndarray) -> None:
        """The producer sequences of the blocks handed over go first (same socket, so in
        order): the new owner refuses what we had already applied (SPEC 9.6)."""
        rows = self.seqs.take(np.unique(self.engine.blocks_of(records)).tolist())
        for start in range(0, len(rows), SEQUENCE_ROWS):
            chunk = tuple({"producer": p, "block": b, "pseq": s} for p, b, s in rows[start:start + SEQUENCE_ROWS])
            if not self.outbox.transport.send(addr, self.outbox.frames(SequenceHandoff(rows=chunk), TOPIC_DIRECT)):
                self.dropped_records["sequence_handoff"] += len(chunk)

    def _copy_sent(self, holder: str, records: int) -> Callable[[int | None], None]:
        """A copy that could not leave: counted, and the holder, if it learns, is told no
        COPY_DONE under this map (it would own blocks it lacks); the next map copies again."""
        digest = self.engine.placement_digest()

        def sent(seq: int | None) -> None:
            if seq is None:
                self.dropped_records["handoff"] += records
                self._copies_failed.add((digest, holder))
                log.event("copy_failed", logging.WARNING, to=holder, records=records, map=digest)
        return sent

    def _copy_again(self) -> None:
        """Copies that did not leave under the current map go again, whole, once the holder's
        data socket is known and its lane has drained: then its COPY_DONE may follow."""
        digest = self.engine.placement_digest()
        self._copies_failed = {(d, h) for d, h in self._copies_failed if d == digest}
        for _, holder in sorted(self._copies_failed):
            if holder in self.view.data and not self.lanes.waiting_for(holder):
                self._copies_failed.discard((digest, holder))
                records = self.engine.owned_copy_for(holder)
                if len(records):
                    self._copy_to(holder, records)

    def _copy_to(self, holder: str, records: np.ndarray) -> None:
        """Blocks' copies for a new holder, on its data socket: the sequences first, then the
        records, so the owner's later writes on the same socket come after them (SPEC 9.7)."""
        blocks = np.unique(self.engine.blocks_of(records)).tolist()
        rows = self.seqs.take(blocks, keep=True)
        for start in range(0, len(rows), SEQUENCE_ROWS):
            chunk = tuple({"producer": p, "block": b, "pseq": s} for p, b, s in rows[start:start + SEQUENCE_ROWS])
            self.lanes.send(holder, SequenceHandoff(rows=chunk), sent=self._count_unsent("sequence_handoff", len(chunk)))
        for start in range(0, len(records), HANDOFF_CHUNK):
            chunk = records[start:start + HANDOFF_CHUNK]
            for channel in np.unique(chunk["channel"]).tolist():
                part = chunk[chunk["channel"] == channel]
                header, payload = make_batch(part, channel)
                self.lanes.send(holder, dataclasses.replace(header, acks=0, replica=REPLICA_COPY), payload,
                                copy_bytes=len(payload), sent=self._copy_sent(holder, len(part)))
        self._kick_lanes()
        self.intelligence.moved(holder, blocks)  # their torch models follow (intelligence.py rule 6)
        log.event("blocks_copied", to=holder, records=len(records), map_version=self.engine.placement.version)
        self.recorder.audit("placement", holder, "map changed: blocks copied to a new holder",
                            records=len(records), map_version=self.engine.placement.version)

    def lane_send(self, holder: str, msg: Any, payload: Any, sent: Callable[[int | None], None] | None = None) -> None:
        """A message to a holder's data socket, in order behind what its lane holds (the
        copies of the blocks it is sent about): the intelligent channels' weights."""
        self.lanes.send(holder, msg, payload, sent=sent)
        self._kick_lanes()

    def sequence_handoff(self, sender: str, msg: SequenceHandoff) -> None:
        """Sequences a block's previous owner applied: merged before its records arrive."""
        if sender not in self.view.members:
            self.traffic.rejected["sequence_handoff"] += 1
            return
        try:
            rows = [(int(r["producer"]), int(r["block"]), int(r["pseq"])) for r in msg.rows]
        except (KeyError, TypeError, ValueError):
            self.traffic.rejected["sequence_handoff"] += 1
            return
        self.seqs.merge(rows)

    def _drop_strays(self) -> None:
        """Blocks held without our map saying so (a copy or write sent under a map we never
        adopted) are dropped once the map has settled: confirmed, with no learner, our view
        the same, and unchanged for SETTLED seconds (a copy for a newer map comes within
        that time)."""
        placement = self.engine.placement
        if placement.version != self._settled_version:
            self._settled_version, self._settled_since = placement.version, self._now()
            return
        if placement.learners or self._now() - self._settled_since < SETTLED or not self.placement_confirmed():
            return
        dropped = self.engine.drop_unheld()
        if dropped:
            log.event("strays_dropped", entities=dropped, map_version=placement.version)
