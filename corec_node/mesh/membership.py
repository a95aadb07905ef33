"""Membership: SWIM failure detection with Lifeguard's refinements, as a pure state machine.

The shell feeds it ``(input, now)`` and carries out the returned effects in order: ``Send``
goes over ROUTER/DEALER to one member's direct address, ``Broadcast`` goes on this node's PUB
stream (topic ``mbr``), which every member subscribes to, so one broadcast reaches every
live member in one hop. No sockets, no asyncio, no clock, no files, no global random: the
same rng seed and the same inputs give the same effects (the simulator relies on it).

Shape follows hashicorp/memberlist: this file is its state.go (merging, refutation, the
timers' order, leave, reap); membership_config.py is config.go, probing.py the probe loop
(rule 7), pushpull.py push-pull and join (rules 10-12, 15), member.py the record and
precedence (rule 2), suspicion.py, awareness.py, broadcast.py suspicion.go, awareness.go,
queue.go. Without the overlay every node subscribes to every member's PUB and probes all
members; with it (``mesh/overlay.py``) broadcasts ride a tree and probes stay among a
node's neighbours (rule 7's scope).

Rules (numbered as h11 does; the code refers to them):

Rule 1. Pure and deterministic. Every input carries ``now`` (seconds, monotonic). The rng is
    the one passed in. Effects are returned in the order the shell must carry them out.

Rule 2. Precedence. Updates about one member are ordered by ``(inc, rank)`` with rank
    alive < suspect < dead < left; an update applies only if strictly greater than what we
    hold (``supersedes``). So at equal incarnation suspect beats alive, dead beats both,
    and left beats everything; left at inc i is final for i, and only the member itself
    can get past it, with a higher incarnation: alive at inc > i after left is a rejoin (a
    node restarted after ``leave``, or force-left while it was in fact alive, comes back,
    as in Serf). Merging is a max over a total order, so replicas converge whatever the
    delivery order (the hypothesis test checks it).

Rule 3. Refutation. Only a member raises its own incarnation. Hearing itself suspect, dead
    or left at ``inc >= own`` (not after its own leave), or alive at a higher inc than its
    own, a node sets ``inc = that + 1`` and broadcasts alive. Refuting a suspect or dead
    verdict also raises awareness by one (Lifeguard: we were probably the slow one).

Rule 4. Strangers. An update about an unknown member adds it only when alive or suspect;
    dead or left updates about strangers are dropped, so tombstones that other nodes still
    gossip cannot resurrect a member we already reaped.

Rule 5. Addresses. An update naming a live (alive/suspect) member at another direct address
    is ignored: a second node claims that name, and we keep the one we know. Once the
    member is dead or left, a winning update may move it (a restart at a new port). A new
    PUB address at the same direct address is taken. An address change is reported as
    ``MemberChanged`` with ``old == new`` and reason "address changed".

Rule 6. Name conflict. Our name listed alive at another address (Gossip, StatePush,
    StateReply), or a direct message sent under our name with another reply address, gives
    one ``NameConflict`` per conflicting address. We never refute it: two nodes refuting
    each other would raise incarnations forever.

Rule 7. Probing. One probe per period ``probe_interval * (awareness + 1)``, started further
    apart in large clusters (``probing.probe_spread``). Targets: members others suspect
    first (our verdict next), then round-robin over a shuffled list of the other live
    members, reshuffled each round (a new one at a random place).
    ``Ping(probe, target, reply_to)``; no Ack after ``probe_timeout * (awareness + 1)``:
    ``PingReq`` to ``indirect_checks`` random other alive members, which ping the target
    under their own probe number, relay its Ack, or send ``Nack`` after half a base probe
    timeout (to reach us before our period ends), and one more Ping straight to the target
    (memberlist's fallback ping: one lost Ping or Ack is no suspicion). An Ack (direct or
    relayed) before the period ends: success, awareness -1. None: the target becomes
    suspect (at the incarnation it had when the probe started), and awareness +1 if some
    asked relay sent no Nack (they could not even answer us: we are the suspect one).

Rule 8. Suspicion (suspicion.py). Each node runs its own timer per suspect: min =
    suspicion_mult * max(1, log10(n)) * probe_interval, max = suspicion_max_mult * min,
    shrinking from max towards min as independent members confirm (k = min(indirect_checks,
    n - 2)); the deadline is scaled by awareness + 1. A confirmation is a suspect update for
    the same incarnation broadcast by another member (the Gossip sender; see rule 9), or our
    own failed probe. Timeout: dead, broadcast (over the overlay only by a node that suspected
    the member itself: every other node heard the suspicion and times out on its own). A dead verdict heard by Gossip is final
    only for a node that already suspects that member at that incarnation (in a real failure
    everyone has heard the accuser's suspicion first); a node that holds it alive takes the
    verdict as a suspicion with its own timer instead. So a node that declared everyone dead
    while it was cut off cannot, once healed, kill healthy members (and a leader) everywhere
    with its retransmits: the accused hears the verdict too and refutes it.

Rule 9. Dissemination (broadcast.py). What this node originates goes into the retransmit
    queue and out in one ``Gossip`` per ``gossip_interval`` (rate-limited, so an update
    queued after a quiet spell leaves at the next tick), each update in up to
    ``retransmit_mult * ceil(log10(n + 1))`` flushes. Originated means: our refutations and
    leave, our suspicions (our failed probes), our dead verdicts, force-leave, and alive or
    left news learned over a direct push-pull (a joiner, the other half of a healed
    partition: others may not have heard it). Updates learned from
    Gossip are not relayed: the originator's PUB already reached every subscriber, and
    relaying would cost n times the traffic and, for suspicions, fake Lifeguard's
    independent confirmations (MemberState carries no "from", so the Gossip sender is the
    accuser).
    Each Gossip carries ``quiet``: how many flushes before it sent no update for the last
    time. A receiver that sees a gap in the sender's ``mbr`` numbers push-pulls with it
    (``on_gap``) only when more were missed than that: within the count, every update the
    missed flushes carried is sent again (or was replaced by a newer one, sent instead).
    So under loss a gap costs a push-pull only when an update's last copy was lost, about
    one flush in ``retransmit_mult * ceil(log10(n + 1))``, not on every lost flush, and
    at most one a probe interval per node (pushpull.on_gap).

Rule 10. Push-pull. ``StatePush(join, reply_to, members)`` is merged and answered with
    ``StateReply(full state)`` to ``reply_to`` (after the merge, so a refutation it caused
    is in the answer); the requester merges the reply, and if that made it refute, it
    pushes again to the replier at once. A push-pull reports another node's opinions, not
    evidence, and may be stale (the other half of a healed partition): a suspect or dead
    report about a member we hold alive or suspect is not taken. Instead we forward that
    record to the accused (a one-record StatePush), which refutes at once if it lives, and
    its refutation reaches everyone holding the stale verdict; if it is really dead, our own
    probes find it within a round. Over the overlay, where a node whose neighbours all crashed
    missed the verdicts and probes one member outside its scope a round, a dead report about
    a member we hold alive makes it suspect for us alone, on our own timer (memberlist takes
    it as a suspicion too); the refutation the forward asks for ends it. A suspect report
    about a stranger, or about a member we hold dead/left at a lower incarnation, makes it a
    member again as alive at that incarnation, forwarded the same way. Everything else
    merges by rule 2.

Rule 11. Join. ``join`` pushes to each address and keeps it pending, retried with backoff
    (join_retry doubling to 8x) until answered: a StateReply from that address (or, for an
    alias such as localhost, the only unanswered push to an unknown address), a StatePush
    from it, or, once any reply came, that address alive in our list. The first reply also
    schedules two more push-pulls with the member that answered, 1 and 5 probe intervals
    later (ZeroMQ's Clone pattern: a snapshot after our SUB sockets are up catches what was
    gossiped before we subscribed, e.g. nodes joining through the same seed at once).
    Pushes are counted per address and each reply settles one: a member pushed twice in
    one period (anti-entropy and a resync) answers twice, and its second answer is not
    taken for an alias's (it used to settle an unreachable seed's join).

Rule 12. Anti-entropy and reconnect. Every push_pull_interval (scaled up above 32 members as
    memberlist), a push-pull with one random alive member. Every reconnect_interval, one
    with a random dead member whose death is younger than reconnect_for: if it answers, it
    refutes (rule 3), so two halves of a healed partition merge. A node that holds no
    other member alive or suspect pushes again, as a join does (rule 11, retried until
    answered), to its join addresses and to the last 64 members it reaped dead: after a
    cut longer than reap_after both sides forgot each other, and only the node left alone
    knows where to knock (a founder has no join address, so the reaped ones count).

Rule 13. Reap. Dead and left members are forgotten ``reap_after`` seconds after their status
    changed (``MemberReaped``); never self. Until then dead members stay voters: a long
    reap_after is what stops a minority partition from shrinking its voter set into a
    majority.

Rule 14. Leave. ``leave`` raises our incarnation, marks us left, broadcasts it at once and
    also pushes it directly to a few members (a reliable path besides PUB); from then on
    the node only flushes retransmits (``broadcasts_pending``) and ignores input.
    ``force_leave`` turns a dead member into left at the same incarnation (which beats dead,
    rule 2) and gossips it; alive or suspect members are refused (they would refute).
    With ``prune`` (Serf's ``force-leave -prune``) a dead or left member is also forgotten
    at once instead of after ``reap_after``: the left state goes out marked ``pruned``,
    and every node that takes it (at an incarnation not below its own record) reaps the
    member on the spot. A member alive at a higher incarnation came back and stays.

Rule 15. Restore. Members from the on-disk snapshot are learned (suspect as alive, left
    skipped) so the voter set survives a restart, and pushed to (a few at once, the rest
    later) until the first reply. Our own record in a snapshot raises our incarnation past
    it, so our alive beats whatever the cluster last heard of us.

Rule 16. Local stalls. Timers run on a "live" clock that advances with ``now`` but, between
    two calls, by at most ``stall_gap`` or up to the last ``next_deadline`` we gave,
    whichever is later. After our own loop stalled, messages that arrived meanwhile (the
    Ack we wait for) are still unread; they must be handled before any of our deadlines
    passes, or we accuse healthy peers for our own slowness. Time spent stalled therefore
    does not count against others. The shell may sleep until ``next_deadline`` (nothing
    is due before it); past it, time counts as stalled (a wake a few ms late costs the
    live clock those ms, never a peer a verdict); ``stall_gap=None`` turns this off.

Rule 17. Transport hints. A crashed process closes its TCP connections at once, and the
    shell's socket monitor reports it (``hint_down``): that member is probed at once,
    ahead of the round. A hint is never a verdict: only the failed direct and indirect
    probes make it suspect, and only the suspicion timeout makes it dead. Silent losses (a
    host that vanished, a cut link, a stopped process) give no hint and keep the timers.
    A *refused* reconnect (the member's port is closed on a host that answers: its process
    is gone; a stopped process or a cut link never refuses) shortens that member's
    suspicion, once the probes have made it, to ``REFUSED_SUSPICION`` probe periods: there
    is nobody left to refute, so waiting out the Lifeguard timeout buys nothing.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from dataclasses import replace

from corec_node.mesh.awareness import Awareness
from corec_node.mesh.broadcast import Dissemination
from corec_node.mesh.effects import (
    Effect,
    MemberChanged,
    MemberReaped,
    NameConflict,
    Send,
)
from corec_node.mesh.liveclock import LiveClock
from corec_node.mesh.member import (
    ALIVE,
    DEAD,
    DOWN,
    LEFT,
    LIVE,
    NO_BUILD,
    SUSPECT,
    Member,
    MemberTable,
    SharedMembers,
    SharedRecords,
    change_reason,
    due_to_reap,
    n_live,
    random_alive,
    sorted_states,
    status_counts,
    supersedes,
    voter_addrs,
)
from corec_node.mesh.membership_config import PROFILES, MembershipConfig
from corec_node.mesh.probing import Probe, Prober
from corec_node.mesh.pushpull import PushPull, forward
from corec_node.mesh.suspicion import Suspicions
from corec_node.wire.messages import (
    Ack,
    Gossip,
    MemberState,
    MemberStatus,
    Message,
    Nack,
    Ping,
    PingReq,
    StatePush,
    StateReply,
)

__all__ = ["PROFILES", "Member", "Membership", "MembershipConfig", "supersedes"]

REFUSED_SUSPICION = 2  # rule 17: probe periods a member whose port refused us has to refute (0.4 s on lan)
REFUSED_FRESH = 10  # probe periods a refused reconnect stays evidence for a suspicion to come


class Membership:
    """One node's membership state machine. See the rules at the top of this module.

    ``alive()`` lists members that are ALIVE or SUSPECT (a suspect is still a member until
    its suspicion times out), this node included unless it has left.
    """

    def __init__(
        self,
        name: str,
        addr: str,
        pub: str,
        config: MembershipConfig,
        rng: random.Random,
        now: float,
        build: tuple[object, ...] = NO_BUILD,
        shared: SharedRecords | None = None,
    ) -> None:
        """``build``: this node's version, protocol, features, data socket and tags,
        announced with its own record (shown by ``members --detailed``; feature gates read
        them); a shorter tuple (an older caller) leaves the rest empty. ``shared``: the
        records of a running cluster that this node holds from the start, shared with the
        other nodes of the process (the simulator's, ``SharedMembers``)."""
        if not name:
            raise ValueError("membership: the node name must not be empty")
        if not addr:
            raise ValueError("membership: the node's direct address must not be empty")
        self._cfg = config
        self._rng = rng
        build = (*build, *NO_BUILD[len(build):])
        self._self = Member(name, addr, pub, 0, ALIVE, now, build)
        self._members = MemberTable() if shared is None else SharedMembers(shared)
        self._members.put(self._self)
        self._awareness = Awareness(config.awareness_max)
        self._gossip = Dissemination(config.gossip_interval, config.retransmit_mult)
        self._suspicions = Suspicions(config, REFUSED_SUSPICION, REFUSED_FRESH)  # rule 17: refusals
        self._conflicts: set[str] = set()
        self._left = False
        self.deaths_refuted = 0  # verdicts of our death or leave we outbid (rule 3)
        self._live = LiveClock(now, config.stall_gap)  # rule 16
        # first timers at random phases, so nodes started together do not beat in step
        next_probe = now + rng.random() * config.probe_interval
        next_push_pull = now + rng.random() * config.push_pull_interval
        next_reconnect = now + rng.random() * config.reconnect_interval
        self._prober = Prober(name, addr, config, rng, self._awareness, next_probe=next_probe)
        self._sync = PushPull(
            name, addr, config, rng, next_push_pull=next_push_pull, next_reconnect=next_reconnect
        )
        self._next_reap = math.inf  # the earliest a dead or left member is due to be forgotten

    # -- properties -------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._self.name

    @property
    def addr(self) -> str:
        return self._self.addr

    @property
    def pub(self) -> str:
        return self._self.pub

    @property
    def incarnation(self) -> int:
        return self._self.inc

    @property
    def awareness(self) -> int:
        return self._awareness.score

    @property
    def left(self) -> bool:
        return self._left

    @property
    def shared(self) -> bool:
        """Our records start as those of a running cluster, shared in this process."""
        return self._members.shared

    @property
    def config(self) -> MembershipConfig:
        return self._cfg

    # -- views ------------------------------------------------------------------------

    def members(self) -> list[Member]:
        """Every member we know, this node included, sorted by name (copies)."""
        return [replace(self._members[n]) for n in sorted(self._members)]

    def records(self) -> list[Member]:
        """As ``members()``, the records themselves: for a reader that keeps none (a leader's every tick)."""
        return [self._members[n] for n in sorted(self._members)]

    def member(self, name: str) -> Member | None:
        m = self._members.get(name)
        return replace(m) if m is not None else None

    def status_of(self, name: str) -> MemberStatus | None:
        """A member's status as we hold it (no copy: a simulator asks it of thousands)."""
        m = self._members.get(name)
        return m.status if m is not None else None

    @property
    def live_count(self) -> int:
        """Members alive or suspect, this node included unless it left."""
        return self._members.live

    def addr_of(self, name: str) -> str | None:
        """A member's direct address (no copy: asked once per message received)."""
        m = self._members.get(name)
        return m.addr if m is not None else None

    def alive(self) -> list[str]:
        """Names of ALIVE or SUSPECT members, this node included unless it left, sorted."""
        return sorted(n for n, m in self._members.items() if m.status in LIVE)

    def announced(self, feature: str) -> bool:
        """Every live member, this node included, announced ``feature`` (core rule 15)."""
        return all(feature in m.build[2] for m in self._members.values() if m.status in LIVE)

    def voters(self) -> dict[str, str]:
        """name -> direct addr of members that joined and have not left or been forced out:
        alive, suspect and dead (until reaped), this node included unless it left."""
        return voter_addrs(self._members)

    def snapshot(self) -> list[MemberState]:
        """What the shell writes to disk (and what a push-pull carries), sorted by name."""
        return sorted_states(self._members)

    def counts(self) -> dict[str, int]:
        return status_counts(self._members)

    def pending_joins(self) -> list[str]:
        """Addresses pushed to by join/restore that have not answered yet (rule 11)."""
        return self._sync.pending_joins()

    def broadcasts_pending(self) -> int:
        """Updates still to be retransmitted; after ``leave`` the shell may stop at 0."""
        return len(self._gossip)

    # -- inputs -----------------------------------------------------------------------

    def announce(self) -> None:
        """Queue our own record, build included, for one Gossip (a node new to the overlay)."""
        self._gossip.queue.queue(self._self.state())

    def within_overlay(self, neighbours: frozenset[str] | None) -> None:
        """Rules 7 and 9 over the overlay: probe and ask relays only among ``neighbours``;
        an update leaves in one Gossip (the tree repairs its losses). None: the full mesh's
        rules again (every member probed, each update retransmitted)."""
        self._prober.set_scope(neighbours)
        self._gossip.once = neighbours is not None

    def announces(self, name: str, feature: str) -> bool | None:
        """Whether member ``name`` announced ``feature``; None: unknown, or its build not heard."""
        m = self._members.get(name)
        return feature in m.build[2] if m is not None and m.build[1] else None

    def lacking(self, feature: str) -> list[Member]:
        """Live members but us whose heard build lacks ``feature`` (unheard: not old). O(members)."""
        return [m for m in self._members.values() if m.status in LIVE and m.build[1]
                and feature not in m.build[2] and m.name != self.name]

    def join(self, addrs: Iterable[str], now: float) -> list[Effect]:
        """Push our state (``StatePush(join=True)``) to each "host:port"; retried until answered."""
        live = self._clock(now)
        if self._left:
            return []
        return self._sync.join(addrs, self._members, live)

    def handle(self, sender: str, msg: Message, now: float) -> list[Effect]:
        """Any membership message; ``sender`` is the envelope's sender name. Other message
        types are ignored (an empty list)."""
        live = self._clock(now)
        if self._left:
            return []
        out: list[Effect] = []
        if isinstance(msg, (Ping, PingReq, StatePush)) and sender == self.name:
            if msg.reply_to != self.addr:
                self._conflict(msg.reply_to, out)  # rule 6: a direct message under our name
        if isinstance(msg, Ping):
            self._prober.on_ping(msg, out)
        elif isinstance(msg, Ack):
            self._prober.on_ack(msg, out)
        elif isinstance(msg, PingReq):
            self._prober.on_ping_req(msg, live, out)
        elif isinstance(msg, Nack):
            self._prober.on_nack(msg)
        elif isinstance(msg, Gossip):
            self._merge(msg.updates, sender, now, live, out, gossip=True)
        elif isinstance(msg, StatePush):
            self._merge(msg.members, sender, now, live, out, gossip=False)
            self._sync.on_state_push(sender, msg, self._members, out)  # rule 10: answer it
        elif isinstance(msg, StateReply):
            inc_before = self._self.inc
            self._merge(msg.members, sender, now, live, out, gossip=False)
            refuted = self._self.inc != inc_before
            self._sync.on_state_reply(sender, msg, self._members, live, out, refuted=refuted)
        return out

    def hint_down(self, name: str, now: float, refused: bool = False) -> list[Effect]:
        """Rule 17: the transport saw our connection to ``name`` close (``refused``: and
        its port refused the reconnect). Probe it at once; the probe and the indirect
        probes decide, never the hint."""
        live = self._clock(now)
        m = self._members.get(name)
        if self._left or m is None or m.status not in LIVE or name == self.name:
            return []
        if refused:
            self._suspicions.refused(name, m.inc, live)
        self._prober.probe_now(name, live)
        return self.tick(now)

    def tick(self, now: float) -> list[Effect]:
        """Run due timers. Call every ~20-50 ms and after each input (rule 16)."""
        live = self._clock(now)
        out: list[Effect] = []
        if self._left:
            self._flush(live, out)
            return out
        self._reap(now, out)
        self._tick_probe(now, live, out)
        self._prober.tick_relays(live, out)
        self._tick_suspicions(now, live, out)
        self._sync.tick(self._members, now, live, out)
        self._flush(live, out)
        return out

    def next_deadline(self, now: float) -> float:
        """The earliest ``now`` at which ``tick`` has work (rule 16): probes and relays,
        suspicions, the gossip flush, push-pull and joins, the reaper. Timers run on the
        live clock, which never runs ahead of ``now``: a deadline read as ``now`` plus
        what is left of it is never late (after a stall it is early, and ``tick`` is a no-op).
        At or before ``now`` means due now."""
        if self._left:
            return now if len(self._gossip) else math.inf
        due = min(self._prober.next_deadline(), self._sync.next_deadline())
        if len(self._suspicions):
            due = min(due, self._suspicions.next_verdict(self._awareness.score + 1))
        due = min(due, self._gossip.next_flush())
        return self._live.plan(due, now, self._next_reap)

    @property
    def gaps_covered(self) -> int:
        """Sequence gaps the sender's later Gossip covered: no push-pull (rule 9)."""
        return self._gossip.gaps_covered

    @property
    def gap_resyncs(self) -> int:
        """Push-pulls started by sequence gaps (at most one per sender per period: pushpull.on_gap)."""
        return self._sync.gap_resyncs

    def on_gap(self, sender: str, now: float, missed: int = 1, quiet: int | None = None) -> list[Effect]:
        """The shell saw ``missed`` numbers skipped in ``sender``'s mbr sequence, and the
        Gossip after them says ``quiet`` flushes before it sent nothing for the last time
        (rule 9): if the missed ones are among those, what they carried comes again and
        the gap is covered; otherwise push-pull with the sender (at most once per
        pushpull.GAP_RESYNC_PERIODS probe intervals per sender)."""
        live = self._clock(now)
        if self._left or sender == self.name:
            return []
        if self._gossip.covered(missed, quiet):
            return []
        return self._sync.on_gap(sender, self._members, live)

    def leave(self, now: float) -> list[Effect]:
        """Rule 14: mark ourselves left (inc + 1) and spread it. Keep calling ``tick`` for a
        moment (until ``broadcasts_pending() == 0`` or ~1 s) so retransmits go out."""
        live = self._clock(now)
        if self._left:
            return []
        self._left = True
        me = self._self
        old = me.status
        me.inc += 1
        self._members.set_status(me, LEFT)
        me.since = now
        out: list[Effect] = [MemberChanged(me.name, me.addr, old, LEFT, me.inc, "left")]
        self._prober.stop()
        self._sync.stop()
        self._gossip.queue.queue(me.state())
        fanout = self._cfg.indirect_checks
        for m in random_alive(self._members, self._rng, fanout, exclude={me.name}):
            out.append(Send(m.addr, StatePush(join=False, reply_to=me.addr, members=(me.state(),))))
        self._gossip.flush_now()
        self._flush(live, out)
        return out

    def force_leave(self, name: str, now: float, *, prune: bool = False) -> list[Effect]:
        """Rule 14: a dead member becomes left (same incarnation) and is gossiped, so every
        node drops it from the voters and reaps it; with ``prune`` every node forgets it at
        once, and a member that already left may be pruned too. Raises ValueError (local
        misuse) for ourselves, unknown names, and members not dead (they would refute)."""
        live = self._clock(now)
        if name == self.name:
            raise ValueError(f"force-leave: {name!r} is this node; use leave")
        m = self._members.get(name)
        if m is None:
            raise ValueError(f"force-leave: no member named {name!r}")
        if m.status == LEFT and not prune:
            return []
        if m.status not in (DEAD, LEFT):
            raise ValueError(
                f"force-leave: {name!r} is {m.status.label}, not dead; only a dead member can be "
                "forced out (a live one would refute and stay)"
            )
        out: list[Effect] = []
        if prune:
            self._prune(m, now, "pruned", out)
        else:
            m = self._set(m, m.inc, LEFT, now, "force-left", out)
            self._gossip.queue.queue(m.state())
        self._flush(live, out)
        return out

    def _prune(self, m: Member, now: float, reason: str, out: list[Effect]) -> None:
        """Rule 14's prune: left now, forgotten now, and the news marked so others forget it."""
        if m.status != LEFT:
            m = self._set(m, m.inc, LEFT, now, reason, out)
        self._forget(m.name, out)
        self._gossip.queue.queue(replace(m.state(), status=LEFT, pruned=True))

    def note_stall(self, lag: float, now: float) -> None:
        """The shell measured its own loop lag (seconds). Lifeguard local health: a lag of
        half a probe timeout or more raises awareness by ceil(lag / probe_timeout), which
        stretches our probe timeouts, probe period and suspicion timeouts."""
        self._clock(now)
        timeout = self._cfg.probe_timeout
        if lag >= timeout / 2:
            self._awareness.apply(math.ceil(lag / timeout))

    def restore(self, states: Iterable[MemberState], now: float) -> list[Effect]:
        """Rule 15: learn the members of the on-disk snapshot and push-pull to them."""
        live = self._clock(now)
        if self._left:
            return []
        out: list[Effect] = []
        targets: dict[str, None] = {}  # a dict, not a list: a snapshot of thousands
        for st in states:
            if st.name == self.name:
                self._self.inc = max(self._self.inc, st.inc + 1)
                continue
            if st.status == LEFT:
                continue
            status = ALIVE if st.status == SUSPECT else st.status
            m = self._members.get(st.name)
            if m is None:
                m = Member(st.name, st.addr, st.pub, st.inc, status, now)
                m.learn_build(st)  # a snapshot that holds builds (the simulator's) says whose are old
                m.adopt(st)  # the snapshot's record itself when it says what we hold
                self._members.add(m)
                if status in DOWN:
                    self._next_reap = min(self._next_reap, now + self._cfg.reap_after)
                out.append(MemberChanged(m.name, m.addr, None, status, m.inc, "restored"))
                if status in LIVE:
                    self._prober.insert(m.name)
            elif supersedes(st.inc, status, m.inc, m.status) and (
                st.addr == m.addr or m.status not in LIVE
            ):
                m = self._set(m, st.inc, status, now, "restored", out, addr=st.addr, pub=st.pub)
            if m.status in LIVE:
                targets[m.addr] = None
        self._sync.restore(list(targets), self._members, live, out)
        return out

    # -- clock (rule 16) --------------------------------------------------------------

    def _clock(self, now: float) -> float:
        return self._live.advance(now)

    # -- merging (rules 2-6, 10) --------------------------------------------------------

    def _merge(
        self, states: Iterable[MemberState], sender: str, now: float, live: float, out: list[Effect], *, gossip: bool
    ) -> None:
        members = self._members
        if not gossip and members.shared:  # a push-pull of thousands of records we share: what differs
            states = members.news(states)  # type: ignore[union-attr]
        for st in states:
            if st.name == self.name:
                self._merge_self(st, out)
                continue
            m = members.get(st.name)
            if m is not None and not (gossip and st.status == SUSPECT) and ((held := m.state()) is st or held == st):
                continue  # what we hold already: a no-op (a push-pull is mostly these), bar a suspicion's confirmation
            self._merge_other(st, sender, now, live, out, gossip=gossip)
            if (m := members.get(st.name)) is not None:
                m.adopt(st)

    def _merge_self(self, st: MemberState, out: list[Effect]) -> None:
        if self._left:
            return
        me = self._self
        if st.addr != me.addr:
            if st.status == ALIVE:
                self._conflict(st.addr, out)  # rule 6
            elif st.inc >= me.inc:
                self._refute(st.inc, st.status, ours=False)  # our old address, most likely: outbid it
            return
        if st.status == ALIVE:
            if st.inc > me.inc or (st.inc == me.inc and st.pub != me.pub):
                self._refute(st.inc, st.status)
        elif st.inc >= me.inc:
            self._refute(st.inc, st.status)

    def _refute(self, inc: int, status: MemberStatus, ours: bool = True) -> None:
        me = self._self
        me.inc = max(me.inc, inc) + 1
        self.deaths_refuted += ours and status in DOWN  # the overlay rejoins: peers that took us for dead dropped us
        self._gossip.queue.queue(me.state())
        if status in (SUSPECT, DEAD):
            self._awareness.apply(1)

    def _conflict(self, addr: str, out: list[Effect]) -> None:
        if addr not in self._conflicts:
            self._conflicts.add(addr)
            out.append(NameConflict(self.name, addr))

    def _merge_other(
        self, st: MemberState, sender: str, now: float, live: float, out: list[Effect], *, gossip: bool
    ) -> None:
        m = self._members.get(st.name)
        if m is not None and st.addr != m.addr and m.status in LIVE:
            return  # rule 5
        if m is not None:
            if st.pruned and st.status == LEFT and st.inc >= m.inc:
                self._prune(m, now, f"pruned by {sender}", out)  # rule 14
                return
            if m.would_learn(st):
                m = self._members.mutable(st.name)  # a copy only when something changes
                m.learn_build(st)
        if not gossip and st.status in (SUSPECT, DEAD):
            if m is not None and m.status in LIVE:
                if supersedes(st.inc, st.status, m.inc, m.status):
                    out.append(forward(m.addr, self.addr, st))  # rule 10: not ours to adopt
                    if self._gossip.once and st.status == DEAD and m.status == ALIVE:  # but, cut off, to suspect
                        self._start_suspicion(self._set(m, st.inc, SUSPECT, now, f"reported dead by {sender}", out),
                                              sender, live)
                return
            if st.status == SUSPECT and (m is None or st.inc > m.inc):
                out.append(forward(st.addr, self.addr, st))
                st = replace(st, status=ALIVE)  # a member again; its own refutation will follow
        if m is None:
            if st.status not in LIVE:
                return  # rule 4
            m = Member(st.name, st.addr, st.pub, st.inc, st.status, now)
            m.learn_build(st)
            self._members.add(m)
            out.append(MemberChanged(m.name, m.addr, None, m.status, m.inc, "joined"))
            self._prober.insert(m.name)
            if m.status == SUSPECT:
                self._start_suspicion(m, sender, live)
            elif not gossip:
                self._gossip.queue.queue(m.state())  # rule 9: news from a direct push-pull
            return
        if not supersedes(st.inc, st.status, m.inc, m.status):
            if gossip and st.status == SUSPECT and m.status == SUSPECT and st.inc == m.inc:
                self._suspicions.confirm(m.name, sender)  # rule 8: an independent accuser
            return
        unconfirmed = not (m.status == SUSPECT and m.inc == st.inc)
        if gossip and st.status == DEAD and m.status in LIVE and unconfirmed:
            # rule 8: a verdict we did not suspect ourselves is a suspicion for us
            m = self._set(m, st.inc, SUSPECT, now, f"suspected by {sender}", out)
            self._start_suspicion(m, sender, live)
            return
        m = self._set(
            m,
            st.inc,
            st.status,
            now,
            change_reason(m, st.status, sender, gossip),
            out,
            addr=st.addr,
            pub=st.pub,
        )
        if st.status == SUSPECT:
            self._start_suspicion(m, sender, live)
        elif not gossip and st.status != DEAD:
            self._gossip.queue.queue(m.state())  # rule 9: news from a direct push-pull

    def _set(
        self, m: Member, inc: int, status: MemberStatus, now: float, reason: str, out: list[Effect], *,
        addr: str | None = None, pub: str | None = None,
    ) -> Member:
        """Change ``m`` (through ``mutable``: the record changed is returned, a copy where the
        table shared it)."""
        m = self._members.mutable(m.name)
        old = m.status
        moved = (addr is not None and addr != m.addr) or (pub is not None and pub != m.pub)
        m.inc = inc
        if addr is not None:
            m.addr = addr
        if pub is not None:
            m.pub = pub
        if status != old:
            self._members.set_status(m, status)
            m.since = now
            if status in DOWN:
                self._next_reap = min(self._next_reap, now + self._cfg.reap_after)
        if status != SUSPECT:
            self._suspicions.pop(m.name)
        queued = self._gossip.queue.pending(m.name)
        if queued is not None and supersedes(m.inc, m.status, queued.inc, queued.status):
            self._gossip.queue.drop(m.name)  # what we were spreading is outdated
        if status != old:
            out.append(MemberChanged(m.name, m.addr, old, status, inc, reason))
        elif moved:
            out.append(MemberChanged(m.name, m.addr, old, status, inc, "address changed"))
        if status in LIVE and old not in LIVE:
            self._prober.insert(m.name)
        return m

    def _start_suspicion(self, m: Member, accuser: str, live: float) -> None:
        self._suspicions.start(m.name, m.inc, live, n_live(self._members), accuser)
        if accuser != self.name:
            self._prober.probe_soon(m.name)  # rule 7: our own verdict, soon

    # -- timers -----------------------------------------------------------------------

    def _tick_probe(self, now: float, live: float, out: list[Effect]) -> None:
        failed = self._prober.expire_probe(self._members, live, out)
        if failed is not None:
            self._probe_failed(failed, now, live, out)
        self._prober.start_probe(self._members, live, out)

    def _probe_failed(self, p: Probe, now: float, live: float, out: list[Effect]) -> None:
        """Rule 7: no Ack for ``p`` within its period; the target becomes suspect."""
        m = self._members.get(p.target)
        if m is None or m.inc != p.inc:
            return  # reaped, or refuted meanwhile
        if m.status == ALIVE:
            m = self._set(m, m.inc, SUSPECT, now, "probe timeout", out)
            self._start_suspicion(m, self.name, live)
            self._gossip.queue.queue(m.state())
        elif m.status == SUSPECT:
            if self._suspicions.confirm(m.name, self.name):
                self._gossip.queue.queue(m.state())  # our independent accusation counts for others

    def _tick_suspicions(self, now: float, live: float, out: list[Effect]) -> None:
        for name, s in self._suspicions.due(live, self._awareness.score + 1):  # no scan of them all
            m = self._members.get(name)
            if m is not None and m.status == SUSPECT and m.inc == s.inc:
                m = self._set(m, m.inc, DEAD, now, "suspicion timeout", out)
                if not self._gossip.once or s.accused_by(self.name):  # rule 8 over the tree:
                    self._gossip.queue.queue(m.state())  # the accusers tell, the rest know

    def _reap(self, now: float, out: list[Effect]) -> None:
        """Forget members dead or left for ``reap_after``: a scan only when one is due (by
        ``_next_reap``, lowered whenever a member goes down), not every tick."""
        if now < self._next_reap:
            return
        due, self._next_reap = due_to_reap(self._members, self.name, now, self._cfg.reap_after)
        for name in due:
            self._gossip.queue.drop(name)
            self._forget(name, out)

    def _forget(self, name: str, out: list[Effect]) -> None:
        m = self._members.pop(name)
        self._suspicions.pop(name)
        self._sync.forget(name, m.addr if m.status == DEAD else None)
        self._prober.forget(name)
        out.append(MemberReaped(name))

    def _flush(self, live: float, out: list[Effect]) -> None:
        if len(self._gossip):  # n is a scan of every member: only when there is news to send
            self._gossip.flush(live, n_live(self._members), out)
