"""Replicas and learners, the data plane's side (SPEC 9.7): an owner's writes and copies
taken as a holder, the answers holders give, and the learner protocol (COPY_DONE from
every member, READY to the nucleus, the nucleus's LEARNERS). A mixin of ``DataPlane``:
the state it reads and writes is the plane's, set up in its ``__init__``."""

from __future__ import annotations

from typing import Any

from corec_node import log
from corec_node.shell.routing import Answer
from corec_node.wire.messages import BatchReply, CopyDone, Learners, Ready

REPLICA_WRITE, REPLICA_COPY = 1, 2  # EntityBatch.replica (SPEC 9.7)
ACKS_ALL = 2  # EntityBatch.acks: every holder queued the records


class ReplicaSide:
    """What a node does as a holder of others' blocks and as a learner (see the module)."""


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
        if self._fresh and (self.engine.is_learner() or self.view.leader == self.name or self.engine.store.count()):
            self._fresh = False  # learning now, the nucleus itself (nobody to learn from), or holding state
        if self._fresh and self.view.leader is not None and self.name in self.engine.placement.members \
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

    def _publish_learners(self, *, force: bool = False) -> None:
        key = (self.view.term, self._learners)
        if force or key != self._learners_published:
            self._learners_published = key
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
