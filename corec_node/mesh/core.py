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
    broadcast sequence makes a push-pull with that member, after the message is handled.

Rule 3. SWIM's verdicts reach the election: a member turning DEAD -> ``member_dead``; a
    member back from DEAD to ALIVE or SUSPECT -> ``member_alive``. DEAD -> LEFT (an
    operator's force-leave of a dead member) is not a return from the dead: the member
    stays down until the voter set drops it, in the same input (rule 4). Verdicts about
    this node itself are not fed.

Rule 4. The voter set (``Membership.voters()``: members that joined and have not left,
    dead ones included) changes only when a member is added, moves address, leaves or
    rejoins after leaving, or is reaped, or when this node leaves; only then is
    ``set_voters`` called. Status moves among alive, suspect and dead do not change it.

Rule 5. Voter gate. A fresh node (no remembered peer) started with join addresses gives
    the election no voter set until one of the addresses it asked to join has answered
    (``Membership.pending_joins``). Another member being alive is not enough: a node
    that joined *us* before our own seeds answered would form a cluster of two with us,
    elect, and on merging become a second leader of one term (the simulator's sweeps
    found this). Addresses asked later (``join``: the CLI, LAN discovery) count too.

Rule 6. Start: ``set_voters`` with ourselves alone (unless gated), then restore the
    member snapshot (membership rule 15: our own record raises our incarnation), then
    join the configured addresses. The election's first timeout (election rule 4) gives
    the snapshot's members time to answer before this node may stand.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence

from corec_node.mesh.effects import Effect, MemberChanged, MemberReaped
from corec_node.mesh.election import Election, ElectionConfig
from corec_node.mesh.membership import Membership, MembershipConfig
from corec_node.wire.messages import Heartbeat, MemberState, MemberStatus, Message, Vote, VoteRequest

__all__ = ["ELECTION_MESSAGES", "MeshCore"]

DEAD, LEFT = MemberStatus.DEAD, MemberStatus.LEFT
ELECTION_MESSAGES = (VoteRequest, Vote, Heartbeat)
_ELECTION_TYPES = frozenset(ELECTION_MESSAGES)


class MeshCore:
    """Membership and election of one node, composed by the rules above.

    ``membership`` and ``election`` are exposed for reading (views, counts, roles); every
    input goes through this object."""

    __slots__ = ("_asked", "_gated", "election", "membership", "name")

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
    ) -> None:
        self.name = name
        self.membership = Membership(name, addr, pub, membership, rng, now)
        self.election = Election(name, addr, election, rng, now, term=term, voted_for=voted_for)
        self._gated = False
        self._asked: dict[str, None] = {}  # addresses we asked to join: one answer opens the gate

    # -- views ----------------------------------------------------------------------

    @property
    def gated(self) -> bool:
        """True while the election waits for a join address to answer (rule 5)."""
        return self._gated

    @property
    def leader(self) -> str | None:
        return self.election.leader

    @property
    def term(self) -> int:
        return self.election.term

    # -- inputs ---------------------------------------------------------------------

    def start(self, snapshot: Sequence[MemberState], join: Sequence[str], now: float) -> list[Effect]:
        """Rule 6: the start sequence, from the member snapshot on disk and ``mesh.join``."""
        self._gated = any(a != self.membership.addr for a in join) and not any(
            s.name != self.name for s in snapshot
        )
        out: list[Effect] = []
        if not self._gated:
            out += self.election.set_voters(self.membership.voters(), now)
        if snapshot:
            out += self._settle(self.membership.restore(snapshot, now), now)
        if join:
            out += self.join(join, now)
        return out

    def handle(self, sender: str, msg: Message, now: float, gap: bool = False) -> list[Effect]:
        """A decoded control message from ``sender`` (rule 2); ``gap``: its ``mbr``
        sequence skipped numbers. Other message types are ignored."""
        self.election.heard_from(sender, now)
        if type(msg) in _ELECTION_TYPES:
            out = self.election.handle(sender, msg, now)  # type: ignore[arg-type]
        else:
            out = self._settle(self.membership.handle(sender, msg, now), now)
        if gap:
            out += self._settle(self.membership.on_gap(sender, now), now)
        return out

    def tick(self, now: float) -> list[Effect]:
        """Both cores' timers: membership first, so the election ticks with the latest
        verdicts and voters. Call every few tens of milliseconds."""
        out = self._settle(self.membership.tick(now), now)
        return out + self.election.tick(now) if out else self.election.tick(now)

    def join(self, addrs: Iterable[str], now: float) -> list[Effect]:
        addrs = list(addrs)
        for addr in addrs:
            if addr != self.membership.addr:
                self._asked[addr] = None
        return self._settle(self.membership.join(addrs, now), now)

    def leave(self, now: float) -> list[Effect]:
        return self._settle(self.membership.leave(now), now)

    def force_leave(self, name: str, now: float) -> list[Effect]:
        """ValueError for a member that is not dead (it would refute)."""
        return self._settle(self.membership.force_leave(name, now), now)

    def note_stall(self, lag: float, now: float) -> None:
        self.membership.note_stall(lag, now)

    # -- the glue ---------------------------------------------------------------------

    def _settle(self, effects: list[Effect], now: float) -> list[Effect]:
        """Rules 1, 3 and 4: membership's effects followed by the election's reactions."""
        if not effects and not self._gated:
            return effects
        election = self.election
        out: list[Effect] = []
        voters_changed = False
        for eff in effects:
            out.append(eff)
            t = type(eff)
            if t is MemberChanged:
                name, old, new = eff.name, eff.old, eff.new  # type: ignore[union-attr]
                if name == self.name:
                    voters_changed |= new == LEFT
                    continue
                if old is None or new == LEFT or old == LEFT or old == new:
                    voters_changed = True  # joined, left, rejoined or moved
                if new == DEAD:
                    out += election.member_dead(name, now)
                elif old == DEAD and new != LEFT:
                    out += election.member_alive(name, now)
            elif t is MemberReaped:
                voters_changed = True
        if self._gated:
            if not self._answered():
                return out
            self._gated = False
            voters_changed = True
        if voters_changed:
            out += election.set_voters(self.membership.voters(), now)
        return out

    def _answered(self) -> bool:
        pending = self.membership.pending_joins()
        return any(addr not in pending for addr in self._asked)
