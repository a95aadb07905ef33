"""Membership: SWIM failure detection with Lifeguard's refinements, as a pure state machine.

The shell feeds it ``(input, now)`` and carries out the returned effects in order: ``Send``
goes over ROUTER/DEALER to one member's direct address, ``Broadcast`` goes on this node's PUB
stream (topic ``mbr``), which every member subscribes to, so one broadcast reaches every
live member in one hop. No sockets, no asyncio, no clock, no files, no global random: the
same rng seed and the same inputs give the same effects (the simulator relies on it).

Shape follows hashicorp/memberlist (state.go; suspicion.py, awareness.py and broadcast.py
beside this file are its suspicion.go, awareness.go and queue.go).

Future work: every node here subscribes to every member's PUB and probes round-robin over
all members. That is right up to a few hundred nodes; beyond, a node should keep a partial
view (SUB to a random subset, relayed gossip with a hop count) and the simulator must show
convergence. Not needed yet.

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

Rule 7. Probing. One probe per probe period ``probe_interval * (awareness + 1)``. Targets:
    members we heard suspected by someone else first (our verdict confirms or not within
    one period), then round-robin over a shuffled list of the other alive/suspect members,
    reshuffled each round; new members are inserted at a random place in the rest of the
    round. ``Ping(probe, target, reply_to)``; no Ack after ``probe_timeout * (awareness +
    1)``: ``PingReq`` to ``indirect_checks`` random other alive members, which ping the
    target under their own probe number, relay its Ack, or send ``Nack`` after half a base
    probe timeout (early enough to reach us before our period ends). An Ack (direct or
    relayed) before the period ends: success, awareness -1. None: the target becomes
    suspect (at the incarnation it had when the probe started), and awareness +1 if some
    asked relay sent no Nack (they could not even answer us: we are the suspect one).

Rule 8. Suspicion (suspicion.py). Each node runs its own timer per suspect: min =
    suspicion_mult * max(1, log10(n)) * probe_interval, max = suspicion_max_mult * min,
    shrinking from max towards min as independent members confirm (k = min(indirect_checks,
    n - 2)); the deadline is scaled by awareness + 1. A confirmation is a suspect update for
    the same incarnation broadcast by another member (the Gossip sender; see rule 9), or our
    own failed probe. Timeout: dead, broadcast. A dead verdict heard by Gossip is final
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

Rule 10. Push-pull. ``StatePush(join, reply_to, members)`` is merged and answered with
    ``StateReply(full state)`` to ``reply_to`` (after the merge, so a refutation it caused
    is in the answer); the requester merges the reply, and if that made it refute, it
    pushes again to the replier at once. A push-pull reports another node's opinions, not
    evidence, and may be stale (the other half of a healed partition): a suspect or dead
    report about a member we hold alive or suspect is not taken. Instead we forward that
    record to the accused (a one-record StatePush), which refutes at once if it lives, and
    its refutation reaches everyone holding the stale verdict; if it is really dead, our own
    probes find it within a round. A suspect report about a stranger, or about a member we
    hold dead/left at a lower incarnation, makes it a member again as alive at that
    incarnation, forwarded the same way. Everything else merges by rule 2.

Rule 11. Join. ``join`` pushes to each address and keeps it pending, retried with backoff
    (join_retry doubling to 8x) until answered: a StateReply from that address (or, for an
    alias such as localhost, the only unanswered push to an unknown address), a StatePush
    from it, or, once any reply came, that address alive in our list. The first reply also
    schedules two more push-pulls with the member that answered, 1 and 5 probe intervals
    later (ZeroMQ's Clone pattern: a snapshot after our SUB sockets are up catches what was
    gossiped before we subscribed, e.g. nodes joining through the same seed at once).

Rule 12. Anti-entropy and reconnect. Every push_pull_interval (scaled up above 32 members as
    memberlist), a push-pull with one random alive member. Every reconnect_interval, one
    with a random dead member whose death is younger than reconnect_for: if it answers, it
    refutes (rule 3), so two halves of a healed partition merge.

Rule 13. Reap. Dead and left members are forgotten ``reap_after`` seconds after their status
    changed (``MemberReaped``); never self. Until then dead members stay voters: a long
    reap_after is what stops a minority partition from shrinking its voter set into a
    majority.

Rule 14. Leave. ``leave`` raises our incarnation, marks us left, broadcasts it at once and
    also pushes it directly to a few members (a reliable path besides PUB); from then on
    the node only flushes retransmits (``broadcasts_pending``) and ignores input.
    ``force_leave`` turns a dead member into left at the same incarnation (which beats dead,
    rule 2) and gossips it; alive or suspect members are refused (they would refute).

Rule 15. Restore. Members from the on-disk snapshot are learned (suspect as alive, left
    skipped) so the voter set survives a restart, and pushed to (a few at once, the rest
    later) until the first reply. Our own record in a snapshot raises our incarnation past
    it, so our alive beats whatever the cluster last heard of us.

Rule 16. Local stalls. Timers run on a "live" clock that advances with ``now`` but by at
    most ``stall_gap`` between two calls. After our own loop stalled, messages that arrived
    meanwhile (the Ack we wait for) are still unread; they must be handled before any of
    our deadlines passes, or we accuse healthy peers for our own slowness. Time spent
    stalled therefore does not count against others. The shell must call in at least every
    stall_gap / 2 (it ticks every 20-50 ms); ``stall_gap=None`` turns this off.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from dataclasses import dataclass, replace

from corec_node.mesh.awareness import Awareness
from corec_node.mesh.broadcast import BroadcastQueue, retransmit_limit
from corec_node.mesh.effects import (
    Broadcast,
    Effect,
    MemberChanged,
    MemberReaped,
    NameConflict,
    Send,
)
from corec_node.mesh.suspicion import Suspicion, expected_confirmations, suspicion_timeouts
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

ALIVE, SUSPECT, DEAD, LEFT = (
    MemberStatus.ALIVE,
    MemberStatus.SUSPECT,
    MemberStatus.DEAD,
    MemberStatus.LEFT,
)
_LIVE = frozenset({ALIVE, SUSPECT})  # still members: probed, counted in n, listed by alive()
_RANK = {ALIVE: 0, SUSPECT: 1, DEAD: 2, LEFT: 3}  # rule 2, at equal incarnation

MAX_GOSSIP_UPDATES = 64  # updates per Gossip (~4 KB): frames stay small; the rest go next flush
MAX_RELAYS = 256  # PingReq relays in flight: a PingReq flood cannot grow our memory
NACK_FRACTION = 0.5  # a relay nacks after this share of the base probe timeout (rule 7)
JOIN_RETRY_MAX_FACTOR = 8  # join retries back off up to 8 x join_retry
RESTORE_FANOUT = 8  # restore pushes to this many remembered members at once, the rest later
GAP_RESYNC_PERIODS = 5  # at most one gap-triggered push-pull per sender per 5 probe intervals
_NEVER = -math.inf


def supersedes(
    new_inc: int, new_status: MemberStatus, old_inc: int, old_status: MemberStatus
) -> bool:
    """Rule 2: does an update ``(new_inc, new_status)`` replace ``(old_inc, old_status)``?"""
    if new_inc != old_inc:
        return new_inc > old_inc
    return _RANK[new_status] > _RANK[old_status]


@dataclass(frozen=True, slots=True)
class MembershipConfig:
    """Timers and fan-outs. Named profiles: ``lan()`` (the defaults), ``edge()``, ``test()``.

    Failure detection arithmetic for the lan defaults, n = 3..10 on loopback:
      detection ~= t1 (until some survivor's round-robin reaches the dead node: the minimum
                       of n-1 uniform phases over (n-1) * 0.2 s, ~0.15 s on average)
                  + 0.2 (one probe period: direct 0.1 s, then indirect, then suspect)
                  + 0.8 (suspicion min: the other survivors probe a member they heard
                         suspected first, so k confirmations arrive within ~0.4 s and the
                         timeout falls from 1.6 s to 0.8 s)
                  + <= 0.05 (the dead verdict waits for the next gossip flush)
                ~= 1.2 s typical, ~1.5 s when t1 is unlucky (P(t1 > 0.6 s) < 5 %): < 2 s.
    No false suspicion from loop stalls of tens of ms: a target has the whole 0.2 s period
    to answer, a stalled prober does not count its stall (rule 16), and a node stopped for
    0.6 s is first suspected >= 0.2 s after it stopped and declared dead no earlier than
    0.8 s after that, so it wakes and refutes in time.
    """

    # One probe per 200 ms per node (~5 small messages/s each); sets detection speed.
    probe_interval: float = 0.2
    # Direct Ack wait: loopback/LAN RTT is ~1 ms, so 100 ms absorbs a stall of tens of ms
    # and leaves the other 100 ms of the period for the indirect round.
    probe_timeout: float = 0.1
    # k relays (memberlist's IndirectChecks): routes around one bad link with margin.
    indirect_checks: int = 3
    # min = 4 x 0.2 = 0.8 s up to 10 nodes: longer than a 0.6 s stop plus its refutation,
    # short enough for detection under 2 s.
    suspicion_mult: int = 4
    # max = 1.6 s when nobody confirms: a lone (perhaps slow) accuser gives the accused
    # twice the time to refute, still inside the 2 s budget. memberlist uses 6 at 1 s probes.
    suspicion_max_mult: int = 2
    # Lifeguard: an unhealthy node stretches its timeouts up to 8x (memberlist's default).
    awareness_max: int = 8
    # Each update rides 4 * ceil(log10(n + 1)) flushes (memberlist's RetransmitMult):
    # 8 flushes, 400 ms, for 10 nodes; covers a subscriber that connected a moment late.
    retransmit_mult: int = 4
    # Flush queued updates at most every 50 ms: a verdict leaves at the next tick after a
    # quiet spell, retransmits batch into one frame.
    gossip_interval: float = 0.05
    # Anti-entropy: one full sync per node every 5 s (scaled up above 32 nodes); the PUB
    # sequence-gap resync repairs most losses long before.
    push_pull_interval: float = 5.0
    # Forget dead/left members after 24 h (Serf's reconnect/tombstone timeout). Dead members
    # stay voters until then, so a partition cannot shrink its quorum into a majority.
    reap_after: float = 86400.0
    # Keep knocking on dead members as long as we remember them: a partition heals whenever
    # the network does.
    reconnect_for: float = 86400.0
    # One dead member per 3 s per node: a healed partition merges within seconds, and a
    # really dead node costs one small message per node every 3 s.
    reconnect_interval: float = 3.0
    # An unanswered join is retried after 2 s, doubling up to 16 s, until answered.
    join_retry: float = 2.0
    # Rule 16: a silence longer than this between calls means our own loop stalled (the
    # shell ticks every 20 ms). None turns the guard off (a simulator with coarse ticks).
    stall_gap: float | None = 0.1

    def __post_init__(self) -> None:
        for key in (
            "probe_interval",
            "probe_timeout",
            "gossip_interval",
            "push_pull_interval",
            "reap_after",
            "reconnect_interval",
            "join_retry",
        ):
            if not getattr(self, key) > 0:
                raise ValueError(
                    f"membership config: {key} must be > 0, got {getattr(self, key)!r}"
                )
        if self.probe_timeout >= self.probe_interval:
            raise ValueError(
                f"membership config: probe_timeout ({self.probe_timeout}) must be shorter than "
                f"probe_interval ({self.probe_interval}) to leave time for indirect probes"
            )
        for key in ("suspicion_mult", "suspicion_max_mult", "awareness_max", "retransmit_mult"):
            if getattr(self, key) < 1:
                raise ValueError(
                    f"membership config: {key} must be >= 1, got {getattr(self, key)!r}"
                )
        if self.indirect_checks < 0:
            raise ValueError(
                f"membership config: indirect_checks must be >= 0, got {self.indirect_checks!r}"
            )
        if self.reconnect_for < 0 or self.reconnect_for > self.reap_after:
            raise ValueError(
                f"membership config: reconnect_for ({self.reconnect_for}) must be between 0 and "
                f"reap_after ({self.reap_after}): a reaped member cannot be reconnected"
            )
        if self.stall_gap is not None and not self.stall_gap > 0:
            raise ValueError(
                f"membership config: stall_gap must be > 0 or None, got {self.stall_gap!r}"
            )

    @classmethod
    def lan(cls) -> MembershipConfig:
        """The defaults: a LAN or one host; death seen in ~1-2 s."""
        return cls()

    @classmethod
    def edge(cls) -> MembershipConfig:
        """Lossy Wi-Fi and small CPUs (a Raspberry Pi): slower, surer verdicts (~6-10 s)."""
        return cls(
            # radio links lose and delay packets in bursts: memberlist's LAN pace
            probe_interval=1.0,
            # Wi-Fi RTT spikes to hundreds of ms, and a Pi's loop stalls longer
            probe_timeout=0.5,
            suspicion_mult=4,  # min 4 s
            # max 24 s for a lone accuser (memberlist's default): flaky links accuse wrongly
            suspicion_max_mult=6,
            gossip_interval=0.2,  # fewer, bigger frames on a slow link
            push_pull_interval=30.0,  # memberlist's LAN value: full syncs cost airtime
            # 72 h: edge devices go offline for long stretches and must come back as voters
            reap_after=259200.0,
            reconnect_for=259200.0,
            reconnect_interval=10.0,  # knocking costs airtime too
            join_retry=5.0,
            stall_gap=0.5,  # a Pi's loop may legitimately pause longer between ticks
        )

    @classmethod
    def test(cls) -> MembershipConfig:
        """The lan failure detector with fast background work, so tests and the simulator
        see anti-entropy, reconnect and reaping within seconds."""
        return cls(
            push_pull_interval=1.0,  # anti-entropy visible within a test's patience
            reap_after=30.0,  # long enough that a test reads "dead" before it is reaped
            reconnect_for=30.0,
            reconnect_interval=0.5,  # a healed partition merges in about a second
            join_retry=0.5,
        )

    @classmethod
    def profile(cls, name: str) -> MembershipConfig:
        try:
            return PROFILES[name]()
        except KeyError:
            raise ValueError(
                f"unknown membership profile {name!r}; expected one of {', '.join(PROFILES)}"
            ) from None


PROFILES = {
    "lan": MembershipConfig.lan,
    "edge": MembershipConfig.edge,
    "test": MembershipConfig.test,
}


@dataclass(slots=True)
class Member:
    """This node's view of one member. Views hand out copies."""

    name: str
    addr: str
    pub: str
    inc: int
    status: MemberStatus
    since: float  # the ``now`` of the last status change

    def state(self) -> MemberState:
        return MemberState(self.name, self.addr, self.pub, self.inc, self.status)


@dataclass(slots=True)
class _Probe:
    probe: int
    target: str
    addr: str
    inc: int  # the target's incarnation when the probe started: a failure suspects that one
    direct_deadline: float
    deadline: float
    acked: bool = False
    indirect: bool = False
    expected_nacks: int = 0
    nacks: int = 0


@dataclass(slots=True)
class _Relay:
    probe: int  # the asker's probe number
    target: str
    reply_to: str
    nack_at: float
    expire_at: float
    acked: bool = False
    nacked: bool = False


@dataclass(slots=True)
class _PendingJoin:
    restore: bool  # from restore(): done once any member answers
    next_at: float
    interval: float


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
    ) -> None:
        if not name:
            raise ValueError("membership: the node name must not be empty")
        if not addr:
            raise ValueError("membership: the node's direct address must not be empty")
        self._cfg = config
        self._rng = rng
        self._self = Member(name, addr, pub, 0, ALIVE, now)
        self._members: dict[str, Member] = {name: self._self}
        self._awareness = Awareness(config.awareness_max)
        self._queue = BroadcastQueue()
        self._suspicions: dict[str, Suspicion] = {}
        self._probe: _Probe | None = None
        self._order: list[str] = []
        self._order_pos = 0
        self._probe_first: list[str] = []
        self._seq = 0
        self._relays: dict[int, _Relay] = {}
        self._pending: dict[str, _PendingJoin] = {}
        self._outstanding: dict[str, float] = {}  # addr -> live time of our last StatePush to it
        self._joined_any = False
        self._resync: list[tuple[float, str]] = []  # (live time, addr): post-join push-pulls
        self._conflicts: set[str] = set()
        self._gap_sync: dict[str, float] = {}
        self._left = False
        self._live = now
        self._last_now = now
        # first timers at random phases, so nodes started together do not beat in step
        self._next_probe = now + rng.random() * config.probe_interval
        self._next_push_pull = now + rng.random() * config.push_pull_interval
        self._next_reconnect = now + rng.random() * config.reconnect_interval
        self._last_flush = _NEVER

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
    def config(self) -> MembershipConfig:
        return self._cfg

    # -- views ------------------------------------------------------------------------

    def members(self) -> list[Member]:
        """Every member we know, this node included, sorted by name (copies)."""
        return [replace(self._members[n]) for n in sorted(self._members)]

    def member(self, name: str) -> Member | None:
        m = self._members.get(name)
        return replace(m) if m is not None else None

    def alive(self) -> list[str]:
        """Names of ALIVE or SUSPECT members, this node included unless it left, sorted."""
        return sorted(n for n, m in self._members.items() if m.status in _LIVE)

    def voters(self) -> dict[str, str]:
        """name -> direct addr of members that joined and have not left or been forced out:
        alive, suspect and dead (until reaped), this node included unless it left."""
        return {
            n: self._members[n].addr
            for n in sorted(self._members)
            if self._members[n].status != LEFT
        }

    def snapshot(self) -> list[MemberState]:
        """What the shell writes to disk (and what a push-pull carries), sorted by name."""
        return [self._members[n].state() for n in sorted(self._members)]

    def counts(self) -> dict[str, int]:
        out = {s.label: 0 for s in MemberStatus}
        for m in self._members.values():
            out[m.status.label] += 1
        return out

    def pending_joins(self) -> list[str]:
        """Addresses pushed to by join/restore that have not answered yet (rule 11)."""
        return list(self._pending)

    def broadcasts_pending(self) -> int:
        """Updates still to be retransmitted; after ``leave`` the shell may stop at 0."""
        return len(self._queue)

    # -- inputs -----------------------------------------------------------------------

    def join(self, addrs: Iterable[str], now: float) -> list[Effect]:
        """Push our state (``StatePush(join=True)``) to each "host:port"; retried until answered."""
        live = self._clock(now)
        if self._left:
            return []
        out: list[Effect] = []
        for addr in dict.fromkeys(addrs):
            if addr == self.addr:
                continue
            self._pending[addr] = _PendingJoin(
                False, live + self._cfg.join_retry, self._cfg.join_retry
            )
            out.append(self._push(addr, live, join=True))
        return out

    def handle(self, sender: str, msg: Message, now: float) -> list[Effect]:
        """Any membership message; ``sender`` is the envelope's sender name. Other message
        types are ignored (an empty list)."""
        live = self._clock(now)
        if self._left:
            return []
        out: list[Effect] = []
        if isinstance(msg, Ping):
            self._on_ping(sender, msg, out)
        elif isinstance(msg, Ack):
            self._on_ack(msg, out)
        elif isinstance(msg, PingReq):
            self._on_ping_req(sender, msg, live, out)
        elif isinstance(msg, Nack):
            p = self._probe
            if p is not None and msg.probe == p.probe and msg.target == p.target:
                p.nacks += 1
        elif isinstance(msg, Gossip):
            self._merge(msg.updates, sender, now, live, out, gossip=True)
        elif isinstance(msg, StatePush):
            self._on_state_push(sender, msg, now, live, out)
        elif isinstance(msg, StateReply):
            self._on_state_reply(sender, msg, now, live, out)
        return out

    def tick(self, now: float) -> list[Effect]:
        """Run due timers. Call every ~20-50 ms and after each input (rule 16)."""
        live = self._clock(now)
        out: list[Effect] = []
        if self._left:
            self._flush(live, out)
            return out
        self._reap(now, out)
        self._tick_probe(now, live, out)
        self._tick_relays(live, out)
        self._tick_suspicions(now, live, out)
        self._tick_joins(live, out)
        self._tick_push_pull(live, out)
        self._tick_reconnect(now, live, out)
        self._flush(live, out)
        return out

    def on_gap(self, sender: str, now: float) -> list[Effect]:
        """The shell saw a sequence gap on ``sender``'s mbr topic: push-pull with it
        (at most once per GAP_RESYNC_PERIODS probe intervals per sender)."""
        live = self._clock(now)
        if self._left or sender == self.name:
            return []
        m = self._members.get(sender)
        if m is None or m.status == LEFT:
            return []
        last = self._gap_sync.get(sender)
        if last is not None and live - last < GAP_RESYNC_PERIODS * self._cfg.probe_interval:
            return []
        self._gap_sync[sender] = live
        return [self._push(m.addr, live, join=False)]

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
        me.status = LEFT
        me.since = now
        out: list[Effect] = [MemberChanged(me.name, me.addr, old, LEFT, me.inc, "left")]
        self._probe = None
        self._relays.clear()
        self._pending.clear()
        self._queue.queue(me.state())
        for m in self._random_alive(self._cfg.indirect_checks, exclude={me.name}):
            out.append(Send(m.addr, StatePush(join=False, reply_to=me.addr, members=(me.state(),))))
        self._last_flush = _NEVER
        self._flush(live, out)
        return out

    def force_leave(self, name: str, now: float) -> list[Effect]:
        """Rule 14: a dead member becomes left (same incarnation) and is gossiped, so every
        node drops it from the voters and reaps it. Raises ValueError (local misuse) for
        ourselves, unknown names, and members not dead (they would refute)."""
        live = self._clock(now)
        if name == self.name:
            raise ValueError(f"force-leave: {name!r} is this node; use leave")
        m = self._members.get(name)
        if m is None:
            raise ValueError(f"force-leave: no member named {name!r}")
        if m.status == LEFT:
            return []
        if m.status != DEAD:
            raise ValueError(
                f"force-leave: {name!r} is {m.status.label}, not dead; only a dead member can be "
                "forced out (a live one would refute and stay)"
            )
        out: list[Effect] = []
        self._set(m, m.inc, LEFT, now, "force-left", out)
        self._queue.queue(m.state())
        self._flush(live, out)
        return out

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
        targets: list[str] = []
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
                self._members[st.name] = m
                out.append(MemberChanged(m.name, m.addr, None, status, m.inc, "restored"))
                if status in _LIVE:
                    self._probe_insert(m.name)
            elif supersedes(st.inc, status, m.inc, m.status) and (
                st.addr == m.addr or m.status not in _LIVE
            ):
                self._set(m, st.inc, status, now, "restored", out, addr=st.addr, pub=st.pub)
            if m.status in _LIVE and m.addr not in targets:
                targets.append(m.addr)
        self._rng.shuffle(targets)
        for i, addr in enumerate(targets):
            if addr in self._pending:
                continue
            batch = i // RESTORE_FANOUT
            first = live + self._cfg.join_retry * batch
            self._pending[addr] = _PendingJoin(
                True, first if batch else live + self._cfg.join_retry, self._cfg.join_retry
            )
            if batch == 0:
                out.append(self._push(addr, live, join=True))
        return out

    # -- clock (rule 16) --------------------------------------------------------------

    def _clock(self, now: float) -> float:
        dt = now - self._last_now
        if dt > 0:
            gap = self._cfg.stall_gap
            self._live += dt if gap is None else min(dt, gap)
            self._last_now = now
        return self._live

    # -- message handlers ---------------------------------------------------------------

    def _on_ping(self, sender: str, msg: Ping, out: list[Effect]) -> None:
        if sender == self.name and msg.reply_to != self.addr:
            self._conflict(msg.reply_to, out)
        if msg.target != self.name:
            return  # meant for whoever had this address before: let its prober time out
        out.append(Send(msg.reply_to, Ack(msg.probe, self.name)))

    def _on_ack(self, msg: Ack, out: list[Effect]) -> None:
        p = self._probe
        if p is not None and not p.acked and msg.probe == p.probe and msg.target == p.target:
            p.acked = True
            self._awareness.apply(-1)
            return
        r = self._relays.get(msg.probe)
        if r is not None and not r.acked and msg.target == r.target:
            r.acked = True  # relayed even after a Nack: a late Ack still saves the target
            out.append(Send(r.reply_to, Ack(r.probe, r.target)))

    def _on_ping_req(self, sender: str, msg: PingReq, live: float, out: list[Effect]) -> None:
        if sender == self.name and msg.reply_to != self.addr:
            self._conflict(msg.reply_to, out)
        if msg.target == self.name:
            out.append(Send(msg.reply_to, Ack(msg.probe, self.name)))
            return
        if len(self._relays) >= MAX_RELAYS:
            return
        self._seq += 1
        cfg = self._cfg
        self._relays[self._seq] = _Relay(
            msg.probe,
            msg.target,
            msg.reply_to,
            nack_at=live + cfg.probe_timeout * NACK_FRACTION,
            expire_at=live + 2 * cfg.probe_interval,
        )
        out.append(Send(msg.target_addr, Ping(self._seq, msg.target, self.addr)))

    def _on_state_push(
        self, sender: str, msg: StatePush, now: float, live: float, out: list[Effect]
    ) -> None:
        if sender == self.name and msg.reply_to != self.addr:
            self._conflict(msg.reply_to, out)
        self._merge(msg.members, sender, now, live, out, gossip=False)
        if sender != self.name:
            m = self._members.get(sender)
            if m is not None:
                self._pending.pop(m.addr, None)  # it reached us: joining it is done
            self._pending.pop(msg.reply_to, None)
        out.append(Send(msg.reply_to, StateReply(tuple(self.snapshot()))))

    def _on_state_reply(
        self, sender: str, msg: StateReply, now: float, live: float, out: list[Effect]
    ) -> None:
        inc_before = self._self.inc
        self._merge(msg.members, sender, now, live, out, gossip=False)
        if sender == self.name:
            addr = next(
                (s.addr for s in msg.members if s.name == sender and s.addr != self.addr), None
            )
        else:
            m = self._members.get(sender)
            addr = m.addr if m is not None else None
        self._answered(addr)
        if not self._joined_any:
            self._joined_any = True
            if addr is not None and sender != self.name:
                period = self._cfg.probe_interval
                self._resync = [(live + period, addr), (live + 5 * period, addr)]
        self._settle_pending()
        if self._self.inc != inc_before and addr is not None and sender != self.name:
            out.append(self._push(addr, live, join=False))  # rule 10: let it see our refutation now

    # -- merging (rules 2-6, 10) --------------------------------------------------------

    def _merge(
        self,
        states: Iterable[MemberState],
        sender: str,
        now: float,
        live: float,
        out: list[Effect],
        *,
        gossip: bool,
    ) -> None:
        for st in states:
            if st.name == self.name:
                self._merge_self(st, out)
            else:
                self._merge_other(st, sender, now, live, out, gossip=gossip)

    def _merge_self(self, st: MemberState, out: list[Effect]) -> None:
        if self._left:
            return
        me = self._self
        if st.addr != me.addr:
            if st.status == ALIVE:
                self._conflict(st.addr, out)  # rule 6
            elif st.inc >= me.inc:
                self._refute(st.inc, st.status)  # our old address, most likely: outbid it
            return
        if st.status == ALIVE:
            if st.inc > me.inc or (st.inc == me.inc and st.pub != me.pub):
                self._refute(st.inc, st.status)
        elif st.inc >= me.inc:
            self._refute(st.inc, st.status)

    def _refute(self, inc: int, status: MemberStatus) -> None:
        me = self._self
        me.inc = max(me.inc, inc) + 1
        self._queue.queue(me.state())
        if status in (SUSPECT, DEAD):
            self._awareness.apply(1)

    def _conflict(self, addr: str, out: list[Effect]) -> None:
        if addr not in self._conflicts:
            self._conflicts.add(addr)
            out.append(NameConflict(self.name, addr))

    def _merge_other(
        self,
        st: MemberState,
        sender: str,
        now: float,
        live: float,
        out: list[Effect],
        *,
        gossip: bool,
    ) -> None:
        m = self._members.get(st.name)
        if m is not None and st.addr != m.addr and m.status in _LIVE:
            return  # rule 5
        if not gossip and st.status in (SUSPECT, DEAD):
            if m is not None and m.status in _LIVE:
                if supersedes(st.inc, st.status, m.inc, m.status):
                    out.append(self._forward(m.addr, st))  # rule 10: not ours to adopt
                return
            if st.status == SUSPECT and (m is None or st.inc > m.inc):
                out.append(self._forward(st.addr, st))
                st = replace(st, status=ALIVE)  # a member again; its own refutation will follow
        if m is None:
            if st.status not in _LIVE:
                return  # rule 4
            m = Member(st.name, st.addr, st.pub, st.inc, st.status, now)
            self._members[st.name] = m
            out.append(MemberChanged(m.name, m.addr, None, m.status, m.inc, "joined"))
            self._probe_insert(m.name)
            if m.status == SUSPECT:
                self._start_suspicion(m, sender, live)
            elif not gossip:
                self._queue.queue(m.state())  # rule 9: news from a direct push-pull
            return
        if not supersedes(st.inc, st.status, m.inc, m.status):
            if gossip and st.status == SUSPECT and m.status == SUSPECT and st.inc == m.inc:
                s = self._suspicions.get(m.name)
                if s is not None:
                    s.confirm(sender)  # rule 8: an independent accuser
            return
        unconfirmed = not (m.status == SUSPECT and m.inc == st.inc)
        if gossip and st.status == DEAD and m.status in _LIVE and unconfirmed:
            # rule 8: a verdict we did not suspect ourselves is a suspicion for us
            self._set(m, st.inc, SUSPECT, now, f"suspected by {sender}", out)
            self._start_suspicion(m, sender, live)
            return
        self._set(
            m,
            st.inc,
            st.status,
            now,
            self._reason(m, st.status, sender, gossip),
            out,
            addr=st.addr,
            pub=st.pub,
        )
        if st.status == SUSPECT:
            self._start_suspicion(m, sender, live)
        elif not gossip and st.status != DEAD:
            self._queue.queue(m.state())  # rule 9: news from a direct push-pull

    @staticmethod
    def _reason(m: Member, status: MemberStatus, sender: str, gossip: bool) -> str:
        if status == LEFT:
            return "left"
        if status == ALIVE and m.status != ALIVE:
            return "rejoined" if m.status == LEFT else "refuted"
        if status == SUSPECT and gossip:
            return f"suspected by {sender}"
        return f"gossip from {sender}" if gossip else "push-pull"

    def _set(
        self,
        m: Member,
        inc: int,
        status: MemberStatus,
        now: float,
        reason: str,
        out: list[Effect],
        *,
        addr: str | None = None,
        pub: str | None = None,
    ) -> None:
        old = m.status
        moved = (addr is not None and addr != m.addr) or (pub is not None and pub != m.pub)
        m.inc = inc
        if addr is not None:
            m.addr = addr
        if pub is not None:
            m.pub = pub
        if status != old:
            m.status = status
            m.since = now
        if status != SUSPECT:
            self._suspicions.pop(m.name, None)
        queued = self._queue.pending(m.name)
        if queued is not None and supersedes(m.inc, m.status, queued.inc, queued.status):
            self._queue.drop(m.name)  # what we were spreading is outdated
        if status != old:
            out.append(MemberChanged(m.name, m.addr, old, status, inc, reason))
        elif moved:
            out.append(MemberChanged(m.name, m.addr, old, status, inc, "address changed"))
        if status in _LIVE and old not in _LIVE:
            self._probe_insert(m.name)

    def _start_suspicion(self, m: Member, accuser: str, live: float) -> None:
        cfg = self._cfg
        n = self._n_live()
        lo, hi = suspicion_timeouts(
            cfg.suspicion_mult, cfg.suspicion_max_mult, n, cfg.probe_interval
        )
        self._suspicions[m.name] = Suspicion(
            inc=m.inc,
            start=live,
            k=expected_confirmations(cfg.indirect_checks, n),
            min_timeout=lo,
            max_timeout=hi,
            accuser=accuser,
        )
        if accuser != self.name and m.name not in self._probe_first:
            self._probe_first.append(m.name)  # rule 7: our own verdict, soon

    # -- timers -----------------------------------------------------------------------

    def _tick_probe(self, now: float, live: float, out: list[Effect]) -> None:
        cfg = self._cfg
        p = self._probe
        if p is not None:
            if not p.acked and not p.indirect and live >= p.direct_deadline:
                p.indirect = True
                relays = self._random_alive(cfg.indirect_checks, exclude={self.name, p.target})
                p.expected_nacks = len(relays)
                for r in relays:
                    out.append(Send(r.addr, PingReq(p.probe, p.target, p.addr, self.addr)))
            if live >= p.deadline:
                self._probe = None
                if not p.acked:
                    self._probe_failed(p, now, live, out)
        if self._probe is None and live >= self._next_probe:
            target = self._next_target()
            if target is None:
                self._next_probe = live + cfg.probe_interval
                return
            scale = self._awareness.score + 1
            self._seq += 1
            p = _Probe(
                self._seq,
                target.name,
                target.addr,
                target.inc,
                direct_deadline=live + cfg.probe_timeout * scale,
                deadline=live + cfg.probe_interval * scale,
            )
            self._probe = p
            self._next_probe = p.deadline
            out.append(Send(target.addr, Ping(p.probe, target.name, self.addr)))

    def _probe_failed(self, p: _Probe, now: float, live: float, out: list[Effect]) -> None:
        if p.expected_nacks > 0 and p.nacks < p.expected_nacks:
            self._awareness.apply(1)  # relays could not answer us either: we may be the slow one
        m = self._members.get(p.target)
        if m is None or m.inc != p.inc:
            return  # reaped, or refuted meanwhile
        if m.status == ALIVE:
            self._set(m, m.inc, SUSPECT, now, "probe timeout", out)
            self._start_suspicion(m, self.name, live)
            self._queue.queue(m.state())
        elif m.status == SUSPECT:
            s = self._suspicions.get(m.name)
            if s is not None and s.confirm(self.name):
                self._queue.queue(m.state())  # our independent accusation counts for others

    def _tick_relays(self, live: float, out: list[Effect]) -> None:
        for seq, r in list(self._relays.items()):
            if not r.acked and not r.nacked and live >= r.nack_at:
                r.nacked = True
                out.append(Send(r.reply_to, Nack(r.probe, r.target)))
            if live >= r.expire_at:
                del self._relays[seq]

    def _tick_suspicions(self, now: float, live: float, out: list[Effect]) -> None:
        scale = self._awareness.score + 1
        for name, s in list(self._suspicions.items()):
            if live < s.deadline(scale):
                continue
            del self._suspicions[name]
            m = self._members.get(name)
            if m is not None and m.status == SUSPECT and m.inc == s.inc:
                self._set(m, m.inc, DEAD, now, "suspicion timeout", out)
                self._queue.queue(m.state())

    def _tick_joins(self, live: float, out: list[Effect]) -> None:
        cfg = self._cfg
        while self._resync and live >= self._resync[0][0]:
            out.append(self._push(self._resync.pop(0)[1], live, join=False))
        for addr, pj in list(self._pending.items()):
            if live >= pj.next_at:
                pj.next_at = live + pj.interval
                pj.interval = min(pj.interval * 2, cfg.join_retry * JOIN_RETRY_MAX_FACTOR)
                out.append(self._push(addr, live, join=True))
        horizon = live - cfg.join_retry * JOIN_RETRY_MAX_FACTOR
        for addr in [a for a, t in self._outstanding.items() if t < horizon]:
            del self._outstanding[addr]

    def _tick_push_pull(self, live: float, out: list[Effect]) -> None:
        if live < self._next_push_pull:
            return
        n = self._n_live()
        interval = self._cfg.push_pull_interval
        if n > 32:  # memberlist's pushPullScale: fewer full syncs per node as the cluster grows
            interval *= math.ceil(math.log2(n) - math.log2(32)) + 1
        self._next_push_pull = live + interval
        for m in self._random_alive(1, exclude={self.name}):
            out.append(self._push(m.addr, live, join=False))

    def _tick_reconnect(self, now: float, live: float, out: list[Effect]) -> None:
        if live < self._next_reconnect:
            return
        self._next_reconnect = live + self._cfg.reconnect_interval
        dead = sorted(
            n
            for n, m in self._members.items()
            if m.status == DEAD and now - m.since < self._cfg.reconnect_for
        )
        if dead:
            out.append(self._push(self._members[self._rng.choice(dead)].addr, live, join=False))

    def _reap(self, now: float, out: list[Effect]) -> None:
        for name, m in list(self._members.items()):
            if (
                name != self.name
                and m.status in (DEAD, LEFT)
                and now - m.since >= self._cfg.reap_after
            ):
                del self._members[name]
                self._suspicions.pop(name, None)
                self._queue.drop(name)
                self._gap_sync.pop(name, None)
                if name in self._probe_first:
                    self._probe_first.remove(name)
                out.append(MemberReaped(name))

    def _flush(self, live: float, out: list[Effect]) -> None:
        if not len(self._queue) or live < self._last_flush + self._cfg.gossip_interval:
            return
        limit = retransmit_limit(self._cfg.retransmit_mult, self._n_live())
        updates = self._queue.take(limit, MAX_GOSSIP_UPDATES)
        if updates:
            self._last_flush = live
            out.append(Broadcast(Gossip(tuple(updates))))

    # -- helpers ----------------------------------------------------------------------

    def _n_live(self) -> int:
        return max(1, sum(1 for m in self._members.values() if m.status in _LIVE))

    def _forward(self, addr: str, st: MemberState) -> Send:
        """Show an accused member the verdict someone holds on it (rule 10)."""
        return Send(addr, StatePush(join=False, reply_to=self.addr, members=(st,)))

    def _push(self, addr: str, live: float, *, join: bool) -> Send:
        self._outstanding[addr] = live
        return Send(addr, StatePush(join=join, reply_to=self.addr, members=tuple(self.snapshot())))

    def _answered(self, addr: str | None) -> None:
        """A StateReply came from the member at ``addr``: settle the push it answers."""
        matched = addr if addr is not None and addr in self._outstanding else None
        if matched is None:
            known = {m.addr for m in self._members.values()}
            aliases = [a for a in self._outstanding if a not in known]
            if len(aliases) == 1:
                matched = aliases[0]  # we pushed to an alias of its address (localhost, a DNS name)
        if matched is not None:
            del self._outstanding[matched]
            self._pending.pop(matched, None)
        if addr is not None:
            self._pending.pop(addr, None)

    def _settle_pending(self) -> None:
        if not self._joined_any or not self._pending:
            return
        live_addrs = {
            m.addr for n, m in self._members.items() if m.status in _LIVE and n != self.name
        }
        for addr, pj in list(self._pending.items()):
            if pj.restore or addr in live_addrs:
                del self._pending[addr]

    def _random_alive(self, k: int, *, exclude: set[str]) -> list[Member]:
        names = sorted(
            n for n, m in self._members.items() if m.status == ALIVE and n not in exclude
        )
        if k <= 0 or not names:
            return []
        return [self._members[n] for n in self._rng.sample(names, min(k, len(names)))]

    def _probe_insert(self, name: str) -> None:
        if name == self.name or name in self._order[self._order_pos :]:
            return
        self._order.insert(self._rng.randint(self._order_pos, len(self._order)), name)

    def _next_target(self) -> Member | None:
        while self._probe_first:
            m = self._members.get(self._probe_first.pop(0))
            if m is not None and m.status == SUSPECT:
                return m
        for _ in range(2):
            while self._order_pos < len(self._order):
                name = self._order[self._order_pos]
                self._order_pos += 1
                m = self._members.get(name)
                if m is not None and m.status in _LIVE and name != self.name:
                    return m
            self._order = sorted(
                n for n, m in self._members.items() if m.status in _LIVE and n != self.name
            )
            self._rng.shuffle(self._order)
            self._order_pos = 0
            if not self._order:
                return None
        return None
