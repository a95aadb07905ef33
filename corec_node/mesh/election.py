"""Nucleus election: Raft's leader election without the log. Pure, no I/O, no clock.

The shell feeds it ``(event, now)`` and carries out the returned effects in order. The
term is the fencing token: whatever the leader writes to shared storage carries it.

Rules (everything that changes this state machine lives in this file):

 1. Terms only grow. Any message carrying a higher term makes this node adopt it as a
    follower with no vote, except a pre-vote request (which never changes state) and a
    vote request refused under the leader lease (rule 8).
 2. One vote per term. The vote is granted to the first candidate that asks (and is a
    known voter); a ``PersistVote(term, voted_for)`` is emitted whenever (term,
    voted_for) changes and always BEFORE the ``Send`` of a granted vote or of a
    candidate's vote requests, so a restarted node cannot vote twice in one term.
 3. Election timeouts are drawn from ``rng`` in [election_timeout_min,
    election_timeout_max) on every reset; a follower resets its timer on a valid
    heartbeat and on granting a vote.
 4. A node never stands before its first election timeout after start. This gives a
    restarting or joining node the time to learn its cluster (and to hear the leader)
    before it could disturb anyone; ``corec-node run`` alone leads after one timeout.
 5. Pre-vote (Raft thesis 9.6): on timeout a node first asks every live voter
    ``VoteRequest(term + 1, pre=True)``; only with a pre-vote majority (itself included)
    does it increment its term, vote for itself and ask for real votes. A node that
    cannot see a majority of live voters (rule 10) sends nothing and waits another timeout.
 6. A candidate with a majority of real votes of its voter set (itself included) leads.
    The voter set is what ``set_voters`` last gave: the node's latest stored voter
    configuration (``mesh/voters.py``). Votes from non-voters are not counted.
 7. The leader broadcasts ``Heartbeat(term, leader)`` on becoming leader and then every
    heartbeat_interval. A node hearing a heartbeat whose term is >= its own, from a voter
    that is the heartbeat's leader, adopts the term and leader and resets its timer;
    a heartbeat of an older term is answered, not obeyed: the node sends the stale leader
    ``Vote(own term, granted=False)``, which makes it adopt the newer term and step down
    (etcd answers stale heartbeats the same way). Without it, nodes that raised their term
    in a failed election while the leader was cut off could never rejoin it: they ignore
    its heartbeats, and its followers' lease refuses their pre-votes. A leader that hears
    another leader in its own term (two clusters merged) steps down; the cluster converges
    on one leader.
 8. Leader lease (stickiness): a node that is the leader, or heard its leader's heartbeat
    less than election_timeout_min ago, refuses pre-votes AND real votes for any
    challenger, and does not adopt the challenger's term. A flapping or healed node
    therefore cannot depose a healthy leader: it fails its pre-vote and never raises the
    term.
 9. A single voter (the voter set is only this node) elects itself at once, with no
    messages, as soon as rule 4 allows.
10. Check-quorum through membership: the shell reports SWIM's verdicts with
    ``member_dead`` / ``member_alive``. A leader steps down as soon as fewer than a
    majority of its voters (itself included) are not dead, or when it is no longer a
    voter itself. Dead is SWIM's confirmed verdict (probe, indirect probes, suspicion
    timeout unrefuted), so a leader cut off in a minority loses leadership within the
    membership's detection time for the other side; suspects still count as live, so
    packet loss does not make a healthy leader flap. There is no per-follower
    acknowledgement in the protocol, and none is needed: the verdicts are gossiped.
    Isolation: SWIM alone is slow to condemn half the cluster from a node cut off by
    itself (one prober, Lifeguard stretching its timers), so the shell also reports the
    sender of every inbound message with ``heard_from``; a leader that has heard nothing
    from any other node for election_timeout_max steps down. In a healthy cluster the
    leader's own probes are answered several times a second. This check is active once
    the shell has called ``heard_from`` at least once (a shell that never reports
    contacts relies on the membership verdicts alone).
11. Fast path: when membership declares the current leader dead, a follower drops the
    lease at once and stands after a random delay in [0, timeout spread) instead of a
    full timeout (still pre-vote first, so a false verdict cannot disrupt anything).
12. ``LeaderChanged(leader, term)`` is emitted whenever the (leader, term) pair this node
    sees changes, including to ``leader=None`` when it steps down or loses its leader.
13. Voter configurations (``mesh/voters.py``): the voter set comes with the id
    ``(term, index)`` of its configuration, and every VoteRequest carries the candidate's.
    A node refuses (pre-)votes to a candidate whose configuration is older than its own
    (Raft's up-to-date check, with configuration entries as the only log); for a newer
    one it may grant even if it does not know the candidate as a voter yet.
14. A refused reconnect to the leader's port (``leader_unreachable``) drops its lease at
    once, like rule 11's DEAD verdict. A dropped connection alone never does: it may be a
    cut link, and a follower that gave up a live leader's lease could help elect a second.
15. Abstain until led (``abstain=True``): a node whose vote and store may both have been
    rolled back (restored from a backup) may have voted in a term it no longer remembers.
    It grants no vote, nor pre-vote, until it accepts a leader's heartbeat; then it records
    that leader as its vote in the leader's term, so it never helps elect another in it.
    The node does not set it for a restored directory today: in a cluster of two voters
    the survivor needs the restored voter's vote to elect anyone, and so to re-add it.
16. A node that is not a voter waits ``member_patience`` (when longer than its election
    timeout) after its leader's last heartbeat before it drops the leader: a leader may
    send it only one heartbeat in ten (``mesh/core.py`` rule 15). It stands for nothing
    either way; what it loses by waiting is only how soon it shows a silent leader gone
    (a dead verdict or a refused port still drops the leader at once, rules 11 and 14).
Safety. Raft's argument needs any two majorities to intersect: the voter sets are committed
configurations, changed one member at a time by the leader (``mesh/voters.py``), so two
nodes' sets differ by at most one member whatever the partitions, and the up-to-date check
(rule 13) keeps a candidate with an old configuration from winning.

What its driver must do (``mesh/core.py`` does it, for the node and the simulator alike):
carry out effects in order (``PersistVote`` durably before the next effect); call
``set_voters(voters, now, config_id)`` whenever the voter configuration changes; call
``member_dead`` / ``member_alive`` on membership's DEAD verdicts and their reversal; call
``heard_from(sender, now)`` for every inbound message (any type); feed every VoteRequest,
Vote and Heartbeat to ``handle``; call ``tick`` at least every few tens of milliseconds or
at ``next_deadline`` (drain inbound messages before ticking, so a loop stall is not
mistaken for a dead leader).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass

from corec_node.mesh.effects import Broadcast, Effect, LeaderChanged, PersistVote, Send
from corec_node.wire.messages import Heartbeat, Vote, VoteRequest

FOLLOWER = "follower"
CANDIDATE = "candidate"
LEADER = "leader"
NEVER = float("-inf")


@dataclass(frozen=True, slots=True)
class ElectionConfig:
    """Election timers, in seconds. Profiles: ``lan`` (default), ``edge``, ``test``."""

    heartbeat_interval: float = 0.1  # etcd's default; 6 per minimum timeout: 5 lost in a row before anyone asks
    election_timeout_min: float = 0.8  # also the lease: a 0.6 s stop of the leader (SIGSTOP, a long GC) + a lost beat elects nobody
    election_timeout_max: float = 1.4  # a 0.6 s spread >> LAN RTT: one candidate is usually alone. A crash fails over
    # faster than any timeout: its closed port drops the lease at once (rule 14, the socket monitor's hint)

    def __post_init__(self) -> None:
        if not 0 < self.heartbeat_interval < self.election_timeout_min < self.election_timeout_max:
            raise ValueError(
                "ElectionConfig needs 0 < heartbeat_interval < election_timeout_min < "
                f"election_timeout_max, got {self.heartbeat_interval}, "
                f"{self.election_timeout_min}, {self.election_timeout_max}"
            )

    @classmethod
    def lan(cls) -> ElectionConfig:
        """Servers on one LAN: a crashed leader replaced in about 0.1-0.6 s (its closed port),
        a silent one (a cut link, a stopped process) in about 1-1.6 s."""
        return cls()

    @classmethod
    def edge(cls) -> ElectionConfig:
        return cls(
            heartbeat_interval=1.0,  # Wi-Fi and cellular links: one heartbeat a second is cheap
            election_timeout_min=5.0,  # a Pi on an SD card stalls for seconds; 5 beats a timeout
            election_timeout_max=10.0,  # RTTs of hundreds of ms need a wide spread: no split votes
        )

    @classmethod
    def test(cls) -> ElectionConfig:
        return cls(
            heartbeat_interval=0.1,  # loopback tests: fast failover
            election_timeout_min=0.5,  # a loaded 2-core CI box stalls 100+ ms; 5 beats a timeout
            election_timeout_max=1.0,
        )


class Election:
    """One node's view of the nucleus election. Every method returns effects, in order."""

    __slots__ = (
        "_abstain",
        "_contact_at",
        "_contact_fed",
        "_deadline",
        "_down",
        "_down_voters",
        "_grants",
        "_leader",
        "_leader_heard_at",
        "_majority",
        "_persisted",
        "_prevoting",
        "_ready_at",
        "_reported",
        "_rng",
        "_role",
        "_term",
        "_voted_for",
        "_voters",
        "_config_id",
        "_cluster",
        "addr",
        "config",
        "member_patience",
        "name",
    )

    def __init__(
        self,
        name: str,
        addr: str,
        config: ElectionConfig,
        rng: random.Random,
        now: float,
        term: int = 0,
        voted_for: str | None = None,
        abstain: bool = False,
    ) -> None:
        if term < 0:
            raise ValueError(f"term must be >= 0, got {term}")
        self.name = name
        self.addr = addr
        self.config = config
        self._rng = rng
        self._term = term
        self._voted_for = voted_for
        self._abstain = abstain  # rule 15
        self._leader: str | None = None
        self.member_patience = 0.0  # rule 16
        self._role = FOLLOWER
        self._prevoting = False
        self._voters: dict[str, str] = {}
        self._config_id = (0, 0)  # (term, index) of the voter configuration (mesh/voters.py)
        self._cluster = ""  # its cluster id
        self._majority = 1
        self._down: set[str] = set()  # names membership declared dead (not necessarily voters)
        self._down_voters = 0  # len(self._down & self._voters), kept incrementally
        self._grants: set[str] = set()  # pre-votes or votes received in the current round
        self._leader_heard_at = NEVER
        self._deadline = now + self._timeout()
        self._ready_at = self._deadline  # rule 4
        self._persisted = (term, voted_for)
        self._reported: tuple[str | None, int] = (None, term)
        self._contact_at = now  # last message from any other node (rule 10, isolation)
        self._contact_fed = False  # the shell reports contacts: the isolation check is on

    # -- views ----------------------------------------------------------------------

    @property
    def leader(self) -> str | None:
        return self._leader

    @property
    def term(self) -> int:
        return self._term

    @property
    def role(self) -> str:
        """``follower``, ``candidate`` (pre-vote or real round in flight) or ``leader``."""
        return self._role

    @property
    def voted_for(self) -> str | None:
        return self._voted_for

    @property
    def prevoting(self) -> bool:
        """True while a candidate is in its pre-vote round (its term not yet raised)."""
        return self._prevoting

    @property
    def next_deadline(self) -> float:
        """The latest time at which ``tick`` must be called for timers to be exact."""
        return self._deadline

    def voters(self) -> dict[str, str]:
        return dict(self._voters)

    def live_voters(self) -> int:
        """Voters not declared dead by membership, this node included if it is a voter."""
        return len(self._voters) - self._down_voters

    # -- inputs ---------------------------------------------------------------------

    @property
    def config_id(self) -> tuple[int, int]:
        return self._config_id

    def set_voters(
        self, voters: Mapping[str, str], now: float, config_id: tuple[int, int] = (0, 0),
        cluster: str = "",
    ) -> list[Effect]:
        """Replace the voter set (name -> direct address) and the id ``(term, index)`` and
        cluster of the configuration it comes from (rule 13)."""
        effects: list[Effect] = []
        self._voters = dict(voters)
        self._config_id = config_id
        self._cluster = cluster
        self._majority = len(self._voters) // 2 + 1
        self._down = {n for n in self._down if n in self._voters}
        self._down_voters = len(self._down)
        self._grants = {
            g for g in self._grants if g in self._voters
        }  # only voters' grants count (rule 6)
        if self._role == LEADER:
            self._check_quorum(now)
        elif self._role == CANDIDATE:
            if self.name not in self._voters:
                self._become_follower(now)
            elif (
                len(self._grants) >= self._majority
            ):  # the set shrank: what we hold may be a majority now
                if self._prevoting:
                    self._start_election(now, effects)
                else:
                    self._become_leader(now, effects)
        if (
            self._leader is not None
            and self._leader != self.name
            and self._leader not in self._voters
        ):
            self._lose_leader(now)  # it left or was removed
        if self._sole_voter() and self._role != LEADER and now >= self._ready_at:
            self._campaign(now, effects)  # rule 9
        self._sync(effects)
        return effects

    def member_dead(self, name: str, now: float) -> list[Effect]:
        """Membership's DEAD verdict on ``name`` (rules 10 and 11)."""
        if name == self.name or name in self._down:
            return []
        self._down.add(name)
        if name in self._voters:
            self._down_voters += 1
        effects: list[Effect] = []
        if self._role == LEADER:
            self._check_quorum(now)
        elif name == self._leader:
            self._lose_leader(now)
        self._sync(effects)
        return effects

    def member_alive(self, name: str, now: float) -> list[Effect]:
        """``name`` is back from DEAD (alive or suspect again)."""
        if name in self._down:
            self._down.discard(name)
            if name in self._voters:
                self._down_voters -= 1
        return []

    def leader_unreachable(self, name: str, now: float) -> list[Effect]:
        """Rule 14: our reconnect to ``name``'s port was refused (a closed port on a live
        host: its process is gone). If it is our leader, drop its lease and stand soon, as
        for a DEAD verdict (rule 11); pre-votes still decide."""
        effects: list[Effect] = []
        if name == self._leader and name != self.name and self._role != LEADER:
            self._lose_leader(now)
        self._sync(effects)
        return effects

    def step_down(self, now: float) -> list[Effect]:
        """The driver's verdict that this leader lost its lease (no majority acknowledged a
        heartbeat in time): follow, and let the others elect."""
        effects: list[Effect] = []
        if self._role == LEADER:
            self._become_follower(now)
        self._sync(effects)
        return effects

    def restore(self, term: int, voted_for: str | None, now: float) -> list[Effect]:
        """The vote on disk is ``(term, voted_for)``: a later one could not be written.
        Go back to it as a follower with no known leader (nothing after it was sent)."""
        effects: list[Effect] = []
        self._term, self._voted_for = term, voted_for
        self._persisted = (term, voted_for)
        self._role = FOLLOWER
        self._prevoting = False
        self._leader = None
        self._leader_heard_at = NEVER
        self._grants = set()
        self._deadline = now + self._timeout()
        self._sync(effects)
        return effects

    def heard_from(self, name: str, now: float) -> None:
        """The shell received a message (any type) from ``name``: proof that this node is
        not cut off from everyone (rule 10, isolation). O(1); call it for every message."""
        self._contact_fed = True
        if name != self.name and now > self._contact_at:
            self._contact_at = now

    def tick(self, now: float) -> list[Effect]:
        effects: list[Effect] = []
        if self._role == LEADER:
            self._check_quorum(now)
        if self._role == LEADER:
            if now >= self._deadline:
                self._deadline = now + self.config.heartbeat_interval
                effects.append(Broadcast(Heartbeat(self._term, self.name)))
        elif now >= self._deadline:
            self._campaign(now, effects)
        self._sync(effects)
        return effects

    def handle(self, sender: str, msg: VoteRequest | Vote | Heartbeat, now: float) -> list[Effect]:
        effects: list[Effect] = []
        if sender != self.name and now > self._contact_at:
            self._contact_at = now
        if isinstance(msg, Heartbeat):
            self._on_heartbeat(sender, msg, now, effects)
        elif isinstance(msg, VoteRequest):
            self._on_vote_request(sender, msg, now, effects)
        elif isinstance(msg, Vote):
            self._on_vote(sender, msg, now, effects)
        else:
            raise TypeError(
                f"Election.handle got {type(msg).__name__}; only VoteRequest, Vote, Heartbeat"
            )
        self._sync(effects)
        return effects

    # -- message handlers -----------------------------------------------------------

    def _on_heartbeat(self, sender: str, msg: Heartbeat, now: float, effects: list[Effect]) -> None:
        leader = msg.leader
        if sender != leader or leader == self.name or leader not in self._voters:
            return
        if msg.term < self._term:
            effects.append(
                Send(self._voters[leader], Vote(self._term, False, False))
            )  # rule 7: you are stale
            return
        if msg.term == self._term and self._role == LEADER:
            self._become_follower(now)  # two leaders in one term: clusters merged (rule 7)
            return
        if msg.term > self._term:
            self._term = msg.term
            self._voted_for = None
        if self._abstain:  # rule 15: led at last; our vote in this term is its leader's
            self._abstain = False
            self._voted_for = leader
        self._role = FOLLOWER
        self._prevoting = False
        self._leader = leader
        self._leader_heard_at = now
        timeout = self._timeout()
        self._deadline = now + (timeout if self.name in self._voters else max(timeout, self.member_patience))

    def _on_vote_request(
        self, sender: str, msg: VoteRequest, now: float, effects: list[Effect]
    ) -> None:
        theirs = (msg.cfg_term, msg.cfg_index)
        eligible = sender != self.name and theirs >= self._config_id and (
            theirs > self._config_id or (sender in self._voters and self.name in self._voters)
        )  # rule 13
        if msg.pre:
            granted = eligible and msg.term > self._term and not self._lease(now) and not self._abstain
            effects.append(
                Send(msg.reply_to, Vote(msg.term if granted else self._term, granted, True))
            )
            return
        if msg.term < self._term or (self._lease(now) and sender != self._leader):
            effects.append(Send(msg.reply_to, Vote(self._term, False, False)))
            return
        if msg.term > self._term:
            self._adopt(msg.term, now)
        granted = eligible and self._voted_for in (None, sender) and not self._abstain
        if granted:
            self._voted_for = sender
            self._deadline = now + self._timeout()
        self._sync(effects)  # the vote is persisted before it is sent (rule 2)
        effects.append(Send(msg.reply_to, Vote(self._term, granted, False)))

    def _on_vote(self, sender: str, msg: Vote, now: float, effects: list[Effect]) -> None:
        if not msg.granted:
            if msg.term > self._term:
                self._adopt(msg.term, now)
            return
        if self._role != CANDIDATE or sender not in self._voters:
            return
        if msg.pre:
            if self._prevoting and msg.term == self._term + 1:
                self._grants.add(sender)
                if len(self._grants) >= self._majority:
                    self._start_election(now, effects)
        elif not self._prevoting and msg.term == self._term:
            self._grants.add(sender)
            if len(self._grants) >= self._majority:
                self._become_leader(now, effects)

    # -- transitions ----------------------------------------------------------------

    def _campaign(self, now: float, effects: list[Effect]) -> None:
        """Election timer fired (or a fast path): start a pre-vote round if it can win."""
        self._deadline = now + self._timeout()
        self._leader = None
        self._leader_heard_at = NEVER
        if self.name not in self._voters or self.live_voters() < self._majority:
            self._role = FOLLOWER  # not a voter, or cannot see a majority: ask nobody
            self._prevoting = False
            return
        self._role = CANDIDATE
        self._prevoting = True
        self._grants = {self.name}
        if len(self._grants) >= self._majority:
            self._start_election(now, effects)
            return
        request = VoteRequest(self._term + 1, True, self.addr, *self._config_id, self._cluster)
        down = self._down
        effects.extend(
            Send(addr, request)
            for n, addr in self._voters.items()
            if n != self.name and n not in down
        )

    def _start_election(self, now: float, effects: list[Effect]) -> None:
        self._term += 1
        self._voted_for = self.name
        self._role = CANDIDATE
        self._prevoting = False
        self._leader = None
        self._grants = {self.name}
        self._deadline = now + self._timeout()
        self._persist(effects)  # PersistVote(term, self) before any request goes out (rule 2)
        if len(self._grants) >= self._majority:
            self._become_leader(now, effects)
            return
        request = VoteRequest(self._term, False, self.addr, *self._config_id, self._cluster)
        down = self._down
        effects.extend(
            Send(addr, request)
            for n, addr in self._voters.items()
            if n != self.name and n not in down
        )

    def _become_leader(self, now: float, effects: list[Effect]) -> None:
        self._role = LEADER
        self._prevoting = False
        self._leader = self.name
        self._leader_heard_at = now
        self._deadline = now + self.config.heartbeat_interval
        self._sync(effects)
        effects.append(Broadcast(Heartbeat(self._term, self.name)))

    def _become_follower(self, now: float) -> None:
        if self._role == LEADER or self._leader == self.name:
            self._leader = None
            self._leader_heard_at = NEVER
        self._role = FOLLOWER
        self._prevoting = False
        self._deadline = now + self._timeout()

    def _adopt(self, term: int, now: float) -> None:
        """A higher term seen: follow it, with no vote and no known leader yet (rule 1)."""
        was_follower = self._role == FOLLOWER
        self._term = term
        self._voted_for = None
        self._leader = None
        self._leader_heard_at = NEVER
        self._role = FOLLOWER
        self._prevoting = False
        if not was_follower:
            self._deadline = now + self._timeout()

    def _check_quorum(self, now: float) -> None:
        if (
            self.name not in self._voters
            or self.live_voters() < self._majority
            or (
                self._contact_fed
                and self._majority > 1
                and now - self._contact_at >= self.config.election_timeout_max
            )
        ):
            self._become_follower(now)

    def _lose_leader(self, now: float) -> None:
        """Rule 11: the leader is gone; stand soon, but at a random moment."""
        self._leader = None
        self._leader_heard_at = NEVER
        spread = self.config.election_timeout_max - self.config.election_timeout_min
        self._deadline = max(self._ready_at, min(self._deadline, now + self._rng.random() * spread))

    # -- helpers --------------------------------------------------------------------

    def _timeout(self) -> float:
        c = self.config
        return c.election_timeout_min + self._rng.random() * (
            c.election_timeout_max - c.election_timeout_min
        )

    def _lease(self, now: float) -> bool:
        return self._role == LEADER or (
            self._leader is not None
            and now - self._leader_heard_at < self.config.election_timeout_min
        )

    def _sole_voter(self) -> bool:
        return len(self._voters) == 1 and self.name in self._voters

    def _persist(self, effects: list[Effect]) -> None:
        if (self._term, self._voted_for) != self._persisted:
            self._persisted = (self._term, self._voted_for)
            effects.append(PersistVote(self._term, self._voted_for))

    def _sync(self, effects: list[Effect]) -> None:
        """Emit PersistVote and LeaderChanged for whatever changed since the last sync."""
        self._persist(effects)
        if (self._leader, self._term) != self._reported:
            self._reported = (self._leader, self._term)
            effects.append(LeaderChanged(self._leader, self._term))
