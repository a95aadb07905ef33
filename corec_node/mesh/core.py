"""The mesh core: membership and election composed, the one glue both users drive.

The node shell (``shell/control_plane.py``) and the simulator (``sim/cluster.py``) each
hold one ``MeshCore`` per node and do nothing but I/O with what it returns: a rule of how
membership feeds the election lives here, once, so the simulator proves the rules the
node runs. Pure like its parts: no sockets, no clock, no files; every input carries ``now``.

Rules (numbered as membership.py and election.py number theirs):

Rule 1. One input, one list of effects, in the order the shell must carry them out
    (``PersistVote`` before the ``Send`` it guards: election rule 2). Each ``MemberChanged``
    is followed at once by the election's reaction to it; the voter set is given to the
    election once, at the end of the input that changed it (rule 4).

Rule 2. Every control message, of either core, is reported to ``Election.heard_from``
    before it is handled (election rule 10, isolation). A gap in a member's ``mbr``
    broadcast sequence makes a push-pull with that member, after the message is handled,
    unless the Gossip that showed it says the missed ones carried nothing for the last
    time (membership rule 9).

Rule 3. SWIM's verdicts reach the election: a member turning DEAD or LEFT ->
    ``member_dead``; a member back from DEAD to ALIVE or SUSPECT -> ``member_alive``.
    DEAD -> LEFT (an operator's force-leave of a dead member) is not a return from the
    dead: the member stays down until the leader removes it from the configuration
    (rule 7). Verdicts about this node itself are not fed.

Rule 4. Voters acknowledge every heartbeat of their leader, once they have stored the
    configuration it carries (voters rule 2); while the configuration has room for more
    voters, a member that is not one acknowledges one heartbeat in MEMBER_ACK_EVERY, which
    tells the leader it follows (only members that follow it, so of its cluster, are
    promoted: rule 7). A full configuration costs the leader no acks from members.

Rule 5. The voters are the committed configuration (``voters.py``), not the gossiped
    member list: the election is given the node's latest stored configuration whenever it
    changes. A heartbeat from the leader of a term not older than ours brings the
    leader's configuration first (adopted, stored, then acknowledged: ``HeartbeatAck``
    with the heartbeat's ``seq``), so a new voter follows its leader at once. A heartbeat
    whose configuration is older than ours, by (term, index), is a late copy (it came over
    another path than a newer one: published and direct, or a tree's repair) and changes
    nothing: adopting it would undo a stored entry a commit may have counted. A new
    leader's heartbeats carry the entry it stored under its own term on winning (rule 7),
    never an older one.

Rule 6. Start: the stored configuration if there is one; else bootstrap (voters rule 6): a
    node with no join address founds a cluster of one, or, when its member snapshot
    remembers peers (a node upgraded from protocol 1.2), of those members; a node started
    with join addresses waits as a non-voter for a leader to add it. Then the member
    snapshot is restored (membership rule 15: our own record raises our incarnation) and
    the configured addresses joined.

Rule 7. As leader (each tick): first commit the configuration under our term (voters
    rule 4), then add or remove one voter at a time (voters rule 7): members alive for
    ``promote_after`` are promoted while there are fewer than ``max_voters``; voters that
    left or were reaped are removed. Heartbeats carry the configuration and a sequence
    number; acknowledgements count towards the commit.

Rule 8. Leave: a leaving leader first takes itself out of the configuration and leads
    until that commits (the others acknowledge a configuration that leaves its leader
    out), then steps down, so two voters of which one leaves never strand the other; a
    leaving follower stands for nothing more. Followers take LEFT like a DEAD verdict
    (rule 3), so they stand soon if their leader left; a leader does not (its quorum check
    would depose it in a cluster of two) but removes the voter that left (rule 7).

Rule 9. A lease that holds. Voters acknowledge every heartbeat of their leader; the
    leader steps down ``election_timeout_min x (1 - CLOCK_DRIFT)`` after the last
    heartbeat that a majority of its configuration acknowledged (counted from when it was
    sent). A follower refuses votes for ``election_timeout_min`` after it received one
    (election rule 8), so a leader cut off from its majority has stepped down before any
    other node can be elected.

Rule 10. Recovery (``recover``, the command ``corec-node recover-voters``): when a majority
    of the voters is gone for good no leader can be elected, by design. An operator names
    the new voters on one survivor, the one whose configuration is newest (``voters`` on
    each): it stores them as the next configuration, newer than every survivor's, so the
    others grant it their votes and take the configuration from its heartbeats.

Rule 11. Durable or not at all. When the shell cannot write a vote or a configuration
    (a full or failing disk), it carries out nothing after it and calls ``write_failed``
    with what is on disk: the node goes back to that vote and configuration, as a
    follower with no leader, so it never grants a vote, adopts a term or acknowledges a
    configuration it could not store; the next attempt, once the disk has room, goes on.

Rule 12. Feature gates. Every node announces its build version, protocol and features
    with its own member record (gossiped like the rest of it). A feature that changes what
    travels on the wire is used only while ``feature_on`` holds: every voter of the
    configuration announced it. Later protocol changes state their gate here.

Rule 13. Transport hints (the shell's socket monitor): a connection to a member that
    closed makes membership probe it at once (membership rule 17); a refused reconnect to
    the leader's port also drops its lease (election rule 14). A hint is never a verdict,
    and closes a node announced (a member that left) are not hints.

Rule 14. A leader whose node cannot work gives up. While the shell reports the node's
    data plane stalled past its bound (``engine_stalled``), a leader steps down at once
    and the node stands for nothing (it still votes and follows); when the data plane
    beats again it stands as any member does. A stalled nucleus would hold leadership
    while planning nothing.

Rule 15. Heartbeats straight to voters, one in ten to everyone. While every live member
    announced ``HEARTBEATS_DIRECT`` (rule 12, over every live member: a member that is not
    a voter reads heartbeats too), a leader sends each heartbeat straight to each other
    voter of its configuration and publishes it only when its ``seq`` is a multiple of
    MEMBER_ACK_EVERY (the heartbeats members ack, rule 4) or it carries news: a new term,
    configuration, commit, settings or placement digest. Voters hear every heartbeat, as
    the lease needs (rule 9); a member that is not one hears about one a second, and waits
    MEMBER_PATIENCE published intervals before it drops its leader (election rule 16).
    What it saves: 9 of every 10 heartbeats a member handles (in a large idle cluster, the
    largest share of a member's messages). The shell stamps nothing: the placement digest
    it confirms is set on ``placement``, so a new one goes out published at once.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Mapping, Sequence

from corec_node.mesh.effects import Broadcast, Effect, LeaderChanged, MemberChanged, Send
from corec_node.mesh.election import FOLLOWER, Election, ElectionConfig
from corec_node.mesh.member import SharedRecords
from corec_node.mesh.membership import Membership, MembershipConfig
from corec_node.mesh.voters import Configuration, VoterConfig, Voters
from corec_node.wire.messages import (
    Gossip,
    Heartbeat,
    HeartbeatAck,
    MemberState,
    MemberStatus,
    Message,
    Vote,
    Voter,
    VoteRequest,
)

TICK_PERIOD = 0.02  # the shell ticks the core at most this often: timers resolve to 20 ms, well under the 100 ms probe timeout
IDLE_PERIOD = 0.5  # and at least this often, due or not (the shell's own checks ride on it): between the two it
# sleeps until ``next_deadline`` or an input (membership rule 16: a planned sleep is no stall). A wake costs
# ~0.25 ms of CPU on a small VM: waking 50 times a second for nothing was half of an idle mesh process's
# CPU, and 10 times a second a fifth of it at 40 nodes (whose probes are 0.8 s apart)

__all__ = ["ELECTION_MESSAGES", "HEARTBEATS_DIRECT", "MeshCore"]

ALIVE, DEAD, LEFT = MemberStatus.ALIVE, MemberStatus.DEAD, MemberStatus.LEFT
ELECTION_MESSAGES = (VoteRequest, Vote, Heartbeat, HeartbeatAck)
CLOCK_DRIFT = 0.05  # how much faster one node's monotonic clock may run than another's (rule 9)
SENT_KEPT = 64  # heartbeat send times kept for matching acks: 6 s of heartbeats on lan
MEMBER_ACK_EVERY = 10  # a member that is not a voter acks one heartbeat in 10: it follows us
MEMBER_PATIENCE = 5  # published heartbeat intervals a member that is not a voter waits for its leader (rule 15)
HEARTBEATS_DIRECT = "hb_direct"  # the feature of rule 15
_VOTE_TYPES = frozenset({VoteRequest, Vote})


class MeshCore:
    """Membership, election and the voter configuration of one node, composed by the rules
    above. ``membership``, ``election`` and ``voters`` are exposed for reading; every input
    goes through this object."""

    __slots__ = ("_acked_at", "_followers", "_hb_seq", "_leading", "_published", "_rng", "_sent", "election",
                 "foreign", "membership", "name", "placement", "stalled", "voters")

    def __init__(
        self,
        name: str,
        addr: str,
        pub: str,
        membership: MembershipConfig,
        election: ElectionConfig,
        rng: random.Random,
        now: float,
        *,
        term: int = 0,
        voted_for: str | None = None,
        config: Configuration | None = None,
        voter_config: VoterConfig | None = None,
        build: tuple[str, str, tuple[str, ...], str] = ("", "", (), ""),
        abstain: bool = False,
        settings: tuple[tuple[str, str], ...] = (),
        shared: SharedRecords | None = None,
    ) -> None:
        """``abstain``: the vote and store may both have been rolled back (a restored
        backup): grant no vote until a leader leads us (election rule 15). ``shared``: see
        ``Membership``."""
        self.name = name
        self.membership = Membership(name, addr, pub, membership, rng, now, build, shared)
        self.election = Election(name, addr, election, rng, now, term=term, voted_for=voted_for,
                                 abstain=abstain)
        self.election.member_patience = MEMBER_PATIENCE * MEMBER_ACK_EVERY * election.heartbeat_interval
        self.voters = Voters(name, voter_config or VoterConfig(), config or Configuration(), settings)
        self._rng = rng
        self._hb_seq = 0
        self._leading = False
        self.stalled = False
        self.foreign: dict[str, str] = {}  # node -> the other cluster id it spoke for (voters rule 8)
        self._sent: dict[int, float] = {}  # as leader: heartbeat seq -> when it was sent
        self._acked_at: dict[str, float] = {}  # as leader: voter -> send time of its latest acked heartbeat
        self._followers: set[str] = set()  # as leader: members that acked us: of our cluster
        self._published: tuple[object, ...] = ()  # as leader: what our last published heartbeat said (rule 15)
        self.placement = ""  # the placement digest our heartbeats confirm, set by the shell

    # -- views ----------------------------------------------------------------------

    @property
    def leader(self) -> str | None:
        return self.election.leader

    @property
    def term(self) -> int:
        return self.election.term

    @property
    def config(self) -> Configuration:
        return self.voters.current

    def feature_on(self, feature: str) -> bool:
        """Rule 12: every voter of our configuration announced ``feature``."""
        names = self.voters.current.names()
        if not names:
            return False
        for name in names:
            member = self.membership.member(name)
            if member is None or feature not in member.build[2]:
                return False
        return True

    # -- inputs ---------------------------------------------------------------------

    def start(self, snapshot: Sequence[MemberState], join: Sequence[str], now: float) -> list[Effect]:
        """Rule 6: the start sequence, from the configuration and member snapshot on disk
        and ``mesh.join``. Membership that holds shared records (the simulator's running
        cluster) has them already: the snapshot only names the first voters."""
        out: list[Effect] = []
        addr = self.membership.addr
        if self.voters.current.index == 0 and not any(a != addr for a in join):
            peers = {s.name: s.addr for s in snapshot if s.status != LEFT}
            peers[self.name] = addr
            cap = self.voters.config.max_voters  # the same first names on every upgraded node
            chosen = {n: peers[n] for n in sorted(peers)[:cap]}
            if len(peers) > 1:  # every upgraded node derives the same id from the same names
                cluster = hashlib.blake2b(",".join(sorted(chosen)).encode(), digest_size=8).hexdigest()
            else:
                cluster = f"{self._rng.getrandbits(64):016x}"
            out += self.voters.bootstrap(chosen, cluster)
        out += self._configure(now)
        if snapshot and not self.membership.shared:
            out += self._settle(self.membership.restore(snapshot, now), now)
        if join:
            out += self.join(join, now)
        return self._after(out, now)

    def handle(self, sender: str, msg: Message, now: float, missed: int = 0) -> list[Effect]:
        """A decoded control message from ``sender`` (rules 2 and 5); ``missed``: how many
        numbers of its ``mbr`` sequence it skipped. Other message types are ignored."""
        self.election.heard_from(sender, now)
        t = type(msg)
        if t is Heartbeat:
            out = self._heartbeat(sender, msg, now)  # type: ignore[arg-type]
        elif t is HeartbeatAck:
            out = self._heartbeat_ack(sender, msg, now)  # type: ignore[arg-type]
        elif t is VoteRequest and self._foreign(sender, msg.cfg_cluster):  # type: ignore[union-attr]
            out = []  # voters rule 8: no vote for another cluster's candidate
        elif t in _VOTE_TYPES:
            out = self.election.handle(sender, msg, now)  # type: ignore[arg-type]
        else:
            out = self._settle(self.membership.handle(sender, msg, now), now)
        if missed:
            quiet = msg.quiet if t is Gossip else None  # type: ignore[union-attr]
            out += self._settle(self.membership.on_gap(sender, now, missed, quiet), now)
        return self._after(out, now)

    def tick(self, now: float) -> list[Effect]:
        """Every timer: membership first, so the election ticks with the latest verdicts;
        as leader, the next configuration change (rule 7). Call every few tens of ms."""
        out = self._settle(self.membership.tick(now), now)
        if self._leading and self._lease_lost(now):
            out += self.election.step_down(now)
        if self.stalled and self._leading:  # rule 14
            out += self.election.step_down(now)
        if (not self.membership.left or self._leading) and not self.stalled:  # a node that left
            out += self.election.tick(now)  # stands no more; a stalled one stands for nothing
        out = self._after(out, now)
        if self._leading:
            out += self._plan(now)
        return out

    def next_deadline(self, now: float) -> float:
        """The earliest ``now`` at which ``tick`` has work: membership's timers and a
        follower's election timeout. A leader (heartbeats, its lease, the configuration it
        plans) and a candidate are due at every tick; a stalled node's election timer is not
        ticked (rule 14), so not waited for. At or before ``now``: due now."""
        if self._leading or self.election.role != FOLLOWER:
            return now
        due = self.membership.next_deadline(now)
        if not self.membership.left and not self.stalled:
            due = min(due, self.election.next_deadline)
        return max(now, due)

    def join(self, addrs: Iterable[str], now: float) -> list[Effect]:
        """Join the cluster at ``addrs``; a node that founded a cluster of one gives it up
        (voters rule 8)."""
        out: list[Effect] = []
        cfg = self.voters.current
        if cfg.names() == {self.name} and any(a != self.membership.addr for a in addrs):
            out += self.voters.abandon() + self._configure(now)
        out += self._settle(self.membership.join(list(addrs), now), now)
        return self._after(out, now)

    def leave(self, now: float) -> list[Effect]:
        """Rule 8: leave the cluster. A leader first takes itself out of the configuration
        and leads until that commits; a follower stands for nothing more."""
        out = self._settle(self.membership.leave(now), now)
        if self._leading:
            removal = self.voters.remove(self.name, self.election.term)
            out += removal if removal else self.election.step_down(now)
        else:
            cfg = self.voters.current
            out += self.election.set_voters({}, now, cfg.id, cfg.cluster)
        return self._after(out, now)

    def force_leave(self, name: str, now: float, *, prune: bool = False) -> list[Effect]:
        """ValueError for a member that is not dead (it would refute); ``prune``: forgotten
        by every node at once (membership rule 14)."""
        return self._after(self._settle(self.membership.force_leave(name, now, prune=prune), now), now)

    def note_stall(self, lag: float, now: float) -> None:
        self.membership.note_stall(lag, now)

    def engine_stalled(self, stalled: bool, now: float) -> list[Effect]:
        """Rule 14: the node's data plane stopped beating past its bound (or beats again)."""
        self.stalled = stalled
        out = self.election.step_down(now) if stalled and self._leading else []
        return self._after(out, now)

    def hint(self, name: str, refused: bool, now: float) -> list[Effect]:
        """Rule 13: the transport saw our connection to ``name`` close (``refused``: and a
        reconnect to its port was refused)."""
        out = self._settle(self.membership.hint_down(name, now, refused), now)
        if refused:
            out += self.election.leader_unreachable(name, now)
        return self._after(out, now)

    def write_failed(self, vote: tuple[int, str | None], config: Configuration, now: float) -> list[Effect]:
        """Rule 11: a ``PersistVote`` or ``PersistConfig`` could not be written. ``vote`` and
        ``config`` are what is on disk: act as if nothing after them had happened."""
        self._leading = False
        self.voters.stop_leading()
        out = self.election.restore(vote[0], vote[1], now)
        if self.voters.current != config:
            self.voters.current = config
            out += self._configure(now)
        return self._after(out, now)

    def recover(self, voters: Iterable[str], now: float) -> list[Effect]:
        """Rule 10: an operator's rewrite of the configuration when a majority of the voters
        is gone for good. ValueError names what is wrong."""
        names = sorted(set(voters))
        members = {m.name: m for m in self.membership.members()}
        unknown = [n for n in names if n not in members]
        if unknown:
            raise ValueError(f"not members of this cluster: {', '.join(unknown)}")
        if self.name not in names:
            raise ValueError(f"run it on one of the new voters ({self.name} is not among them)")
        down = [n for n in names if members[n].status not in (ALIVE, MemberStatus.SUSPECT)]
        if down:
            raise ValueError(f"not alive here: {', '.join(down)}")
        if self.election.leader is not None:
            raise ValueError(f"{self.election.leader} leads term {self.election.term}: change voters "
                             "through it (leave, force-leave), not by recovery")
        cfg = self.voters.current
        entry = Configuration(cfg.index + 1, max(cfg.term, self.election.term),
                              tuple((n, members[n].addr) for n in names), cfg.cluster, cfg.settings)
        out = self.voters.recover(entry)
        out += self._configure(now)
        return self._after(out, now)

    def settle(self, settings: Mapping[str, str], now: float) -> list[Effect]:
        """Voters rule 9: as leader, change the cluster's settings. ValueError names why
        not (not the leader, a change in flight); no effects when nothing changes."""
        if not self._leading:
            leader = self.election.leader
            raise ValueError(f"{self.name} is not the leader: run it on {leader}" if leader else
                             "no leader is known: the cluster's settings change only through one")
        out, why = self.voters.settle(self.election.term, settings)
        if why:
            raise ValueError(why)
        return self._after(out, now)

    # -- the glue ---------------------------------------------------------------------

    def _settle(self, effects: list[Effect], now: float) -> list[Effect]:
        """Rules 1 and 3: membership's effects followed by the election's reactions."""
        if not effects:
            return effects
        election = self.election
        out: list[Effect] = []
        for eff in effects:
            out.append(eff)
            if type(eff) is MemberChanged:
                name, old, new = eff.name, eff.old, eff.new  # type: ignore[union-attr]
                if name == self.name:
                    continue
                if new == DEAD or (new == LEFT and not self._leading):  # a leader removes it (rule 8)
                    out += election.member_dead(name, now)
                elif old == DEAD and new != LEFT:
                    out += election.member_alive(name, now)
        return out

    def _configure(self, now: float) -> list[Effect]:
        """Rule 5: the election takes the latest stored configuration."""
        cfg = self.voters.current
        return self.election.set_voters(cfg.as_dict(), now, cfg.id, cfg.cluster)

    def _foreign(self, sender: str, cluster: str) -> bool:
        """Voters rule 8: ``cluster`` is set, ours is set, and they differ."""
        ours = self.voters.current.cluster
        if not cluster or not ours or cluster == ours:
            return False
        self.foreign[sender] = cluster
        return True

    def _heartbeat(self, sender: str, msg: Heartbeat, now: float) -> list[Effect]:
        out: list[Effect] = []
        election = self.election
        if self._foreign(sender, msg.cfg_cluster):
            return out
        if (msg.cfg_index and sender == msg.leader and msg.term >= election.term
                and (msg.cfg_term, msg.cfg_index) >= self.voters.current.id):  # rule 5: never an older one
            theirs = Configuration(msg.cfg_index, msg.cfg_term, tuple((v.name, v.addr) for v in msg.voters),
                                   msg.cfg_cluster, tuple(sorted(kv.partition("=")[::2] for kv in msg.settings)))
            changed = theirs != self.voters.current
            out += self.voters.follow(theirs, msg.commit)
            if changed:
                out += self._configure(now)
        out += election.handle(sender, msg, now)
        cfg = self.voters.current
        seeking = len(cfg.voters) < self.voters.config.max_voters  # the leader may promote us
        if (msg.seq and (self.voters.voter or (seeking and msg.seq % MEMBER_ACK_EVERY == 0))
                and sender == msg.leader and election.term == msg.term and sender != self.name
                and (msg.cfg_term, msg.cfg_index) == cfg.id):  # stored it: ack, even a leader leaving it
            leader = self.membership.member(sender)
            if leader is not None:
                out.append(Send(leader.addr, HeartbeatAck(msg.term, msg.seq, cfg.term, cfg.index)))
        return out

    def _heartbeat_ack(self, sender: str, msg: HeartbeatAck, now: float) -> list[Effect]:
        if not self._leading or msg.term != self.election.term:
            return []
        self._followers.add(sender)
        sent = self._sent.get(msg.seq)
        if sent is not None and sent > self._acked_at.get(sender, sent - 1):
            self._acked_at[sender] = sent
        out = self.voters.acked(sender, msg.cfg_term, msg.cfg_index, msg.term)
        if self.election.config_id != self.voters.current.id:  # our own removal committed
            out += self._configure(now)
        return out

    def _lease_lost(self, now: float) -> bool:
        """Rule 9: no heartbeat sent in the last lease span has been acknowledged by a
        majority of the voters (this node included)."""
        cfg = self.voters.current
        others = [self._acked_at.get(n, 0.0) for n in cfg.names() if n != self.name]
        need = cfg.majority() - (1 if self.name in cfg.names() else 0)
        if need <= 0 or len(others) < need:
            return need > 0
        others.sort(reverse=True)
        span = self.election.config.election_timeout_min * (1 - CLOCK_DRIFT)
        return now - others[need - 1] >= span

    def _after(self, out: list[Effect], now: float) -> list[Effect]:
        """Leadership won or lost in these effects (rule 7), and the configuration stamped
        on every heartbeat they broadcast."""
        if not out:
            return out
        for i, eff in enumerate(out):
            t = type(eff)
            if t is LeaderChanged:
                leading = eff.leader == self.name  # type: ignore[union-attr]
                if leading and not self._leading:
                    self._leading = True
                    self._sent.clear()
                    self._followers.clear()
                    self._acked_at = dict.fromkeys(self.voters.current.names(), now)  # the votes just won
                    out[i + 1:i + 1] = self.voters.lead(self.election.term) + self._configure(now)
                elif not leading and self._leading:
                    self._leading = False
                    self.voters.stop_leading()
                    if self.election.config_id != self.voters.current.id:  # a leaving leader's
                        out[i + 1:i + 1] = self._configure(now)  # own removal, uncommitted
            elif t is Broadcast and type(eff.msg) is Heartbeat:  # type: ignore[union-attr]
                out[i:i + 1] = self._heartbeats(self._stamp(eff.msg, now))  # type: ignore[union-attr]
        return out

    def _heartbeats(self, hb: Heartbeat) -> list[Effect]:
        """Rule 15: one heartbeat, published, or sent straight to the other voters."""
        said = (hb.term, hb.cfg_term, hb.cfg_index, hb.commit, hb.settings, hb.placement)
        if hb.seq % MEMBER_ACK_EVERY == 0 or said != self._published \
                or not self.membership.announced(HEARTBEATS_DIRECT):
            self._published = said
            return [Broadcast(hb)]
        return [Send(addr, hb) for name, addr in self.voters.current.voters if name != self.name]

    def _stamp(self, hb: Heartbeat, now: float) -> Heartbeat:
        self._hb_seq += 1
        self._sent[self._hb_seq] = now
        if len(self._sent) > SENT_KEPT:
            del self._sent[next(iter(self._sent))]
        cfg, commit = self.voters.heartbeat()
        return Heartbeat(hb.term, hb.leader, self.placement, self._hb_seq, cfg.term, cfg.index,
                         tuple(Voter(n, a) for n, a in cfg.voters), commit, cfg.cluster,
                         tuple(f"{k}={v}" for k, v in cfg.settings))

    def _plan(self, now: float) -> list[Effect]:
        """Rule 7: the next one-member change of the configuration, as leader."""
        members = self.membership.records()
        alive = {m.name: (m.addr, m.since) for m in members
                 if m.status == ALIVE and m.name != self.name and m.name in self._followers}
        present = [m.name for m in members if m.status != LEFT]
        before = self.voters.current.names()
        out = self.voters.plan(self.election.term, alive, present, now)
        if out:
            for name in self.voters.current.names() - before:
                self._acked_at[name] = now  # a new voter's lease starts with its promotion
            out += self._configure(now)
            out = self._after(out, now)
        return out
