"""The overlay: the mesh core's broadcasts over HyParView's partial views and Plumtree's
tree, so membership news and heartbeats reach every node over a bounded set of links.

``OverlayMesh`` wraps one ``MeshCore`` (``core.py``) and is driven exactly as it is: the
same inputs, the same effects, except that no ``Broadcast`` comes out. Its place is
between the core and the transport: the core's rules stay as they are (a Gossip still
reaches every member, once, from its originator, so Lifeguard's accuser is still the
sender), only the path changes. Sans-I/O like the cores it composes.

Rules (the code refers to them):

Rule 1. Broadcasts ride the tree. Each ``Broadcast`` of the core goes to
    ``Plumtree.broadcast`` as ``(our name, message)``; each ``Deliver`` is handed to the
    core as that message from that member, with no sequence gap: the tree repairs its own
    losses (lazy ``IHave``, ``Graft``), and push-pull anti-entropy stays the last resort;
    so membership sends each update in one Gossip, not in several (a retransmit would be
    one more broadcast to every node).
    Overlay messages come out as ``ViewSend`` and ``TreeSend`` effects: a direct message
    to the peer's address, as ``Send`` is. A broadcast made while we have no neighbour (a
    node just started, or rejoining) is held, and sent over the first link that comes up
    (not a heartbeat: the next one says more):
    else it would be lost for good, since membership sends each update once. The first is
    a node's own record, with its build, announced at start: push-pulls alone spread it
    to a few, and a leader missing one member's build takes it for an old one and publishes
    every heartbeat (core rule 15). It is announced once more a shuffle interval later: a
    tree still forming (a whole cluster started at once) misses nodes that join it after a
    broadcast, and Plumtree repairs only what some link announced.

Rule 2. Peers are direct addresses (what a join names before any member is known).
    ``NeighborUp`` and ``NeighborDown`` go to Plumtree and out to the shell (open or close
    the link), in that order.

Rule 3. Probing within the overlay: the core's membership probes, and asks relays, only
    among the neighbours whose member name it knows (membership rule 7 with a scope). Each
    member is watched by the few nodes linked to it; their suspicions reach everyone by
    the tree, and each node's own suspicion timer runs as before (membership rule 8).

Rule 4. Verdicts repair the views: a member turning DEAD or LEFT is ``peer_failed``
    (dropped from both views, a passive peer asked in its place). Every member the core
    learns of is a passive candidate (``HyParView.learn``), so a node whose contact is gone
    still finds the overlay. A peer that took a member for dead dropped it without a word,
    so links can be left one-sided (hyparview rule 10): a member found alive after all is
    told (``HyParView.revived``), and a node whose death the core refuted rejoins
    (``HyParView.rejoin``).

Rule 5. Joining: through the first join address that is not our own; with none, through
    a member of the restored snapshot drawn at random (a restart); with neither, a founder
    waits to be joined.

Rule 6. Leaving: the core's leave first (its "left" gossip takes the tree while the links
    are up), then HyParView's goodbye to every neighbour.

Rule 7. Election traffic does not ride the tree. Votes and most heartbeats are direct
    ``Send`` already (core rule 15); a heartbeat the core publishes also goes straight to
    each other voter of the configuration, before the tree takes it to everyone: a voter
    must not wait for a tree repair (half a second and more under loss) and stand for
    election meanwhile. A voter hears it twice; the second copy changes nothing.
    Over the tree every other published heartbeat (``seq`` a multiple of
    HEARTBEAT_ANNOUNCED_EVERY) is announced to lazy peers, and any that carries news (one
    published off the leader's rhythm, core rule 15): each heartbeat says all the one
    before it said, so a lost copy is made good by the next, and an announcement every
    second published interval still finds a broken eager link within the five a member
    waits before it takes the leader as gone. On an idle cluster those announcements
    were most of what a member sent and took.

Rule 8. Islands. Views can close into cliques that hold only each other (a small cap, a
    healed partition); HyParView's rule 9 opens them by chance, within minutes. A node that
    has heard no leader for ISLAND_AFTER rewires at once, and again every ISLAND_AFTER
    while it hears none: where a leader exists, the nodes cut off from its tree (members
    that are not voters hear it only over the tree) are exactly those.

Rule 9. The data plane's broadcasts ride the tree too (SPEC 7.1, since 1.16): the shell
    hands them to ``share``, and a delivered one is not the core's input but the shell's,
    in ``delivered``. Periodic ones (a row is sent again within five ticks, learners every
    tick, a flow hold on the next pause) are neither held for a first link nor announced
    to lazy peers (plumtree rule 7); an alert or a plan is both.

Rule 10. One code path, old members included (SPEC 7.1). While some live member
    whose build we heard announces no ``overlay`` (a node of an older release during a
    rolling upgrade, or one run with ``mesh.overlay = false``), the core runs by the full
    mesh's rules: its broadcasts go out as ``Broadcast`` too (the shell publishes them on
    the PUB stream every member follows then), every member is probed, and updates are
    retransmitted; the views and the tree keep running among the members that speak
    them, and the broadcasts still take the tree as well, so a node that has not yet
    heard of the old member, or has already seen it go, hears every other; the overlay
    takes over alone again once the last such member goes. Nothing of the overlay is
    sent to such a member (it would reject it), and an overlay message from its address
    makes us look at its build again (upgraded in place) and is dropped while it still
    says old. A member whose build we have not heard is no candidate for the views
    until it arrives (a restart's snapshot holds no builds), and a join's view join waits
    for the first push-pull, which names the contact's build: with an old contact it
    goes to a member that speaks the overlay instead. The look runs at most once every
    BUILD_CHECK, after a push-pull, and after an old member's change. A cluster smaller
    than the active view's cap is a full mesh of links either way: no switch happens at
    some size.

The node shell drives it (``shell/control_plane.py``) unless ``mesh.overlay`` is false; the
simulator always, every node of this build (a cluster started formed, on shared records,
skips rule 10's look). Left for the next step (issue 18): voters are not pinned as
neighbours (their heartbeats and votes go direct anyway, rule 7).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from corec_node.mesh.core import MEMBER_ACK_EVERY, MeshCore
from corec_node.mesh.effects import Broadcast, Effect, MemberChanged, MemberReaped, Send
from corec_node.mesh.hyparview import (
    Disconnect,
    ForwardJoin,
    HyParView,
    HyParViewConfig,
    Join,
    JoinReply,
    Neighbor,
    NeighborDown,
    NeighborReply,
    NeighborUp,
    Shuffle,
    ShuffleReply,
    ViewSend,
)
from corec_node.mesh.plumtree import (
    Deliver,
    Gossip,
    Graft,
    IHave,
    MessageId,
    Plumtree,
    PlumtreeConfig,
    Prune,
    TreeSend,
)
from corec_node.mesh.voters import Configuration
from corec_node.wire.messages import (
    AggregateColumns,
    Flow,
    Heartbeat,
    Learners,
    MemberState,
    MemberStatus,
    StatePush,
    StateReply,
)
from corec_node.wire.messages import Gossip as MemberGossip

__all__ = ["OVERLAY_FEATURE", "OVERLAY_TYPES", "OverlayConfig", "OverlayMesh"]

_VIEW_TYPES = frozenset({Join, JoinReply, ForwardJoin, Neighbor, NeighborReply, Disconnect, Shuffle,
                         ShuffleReply})
_TREE_TYPES = frozenset({Gossip, IHave, Graft, Prune})
OVERLAY_TYPES = _VIEW_TYPES | _TREE_TYPES  # the messages the overlay takes; the rest go to the core
_GONE = frozenset({MemberStatus.DEAD, MemberStatus.LEFT})
_LIVE = frozenset({MemberStatus.ALIVE, MemberStatus.SUSPECT})
HELD_MAX = 64  # broadcasts held for the first link (rule 1): a node alone says little
ISLAND_AFTER = 10.0  # s without a leader before a node rewires (rule 8): twice a member's patience
_CORE_CARRIED = frozenset({MemberGossip, Heartbeat})  # what the core broadcasts and takes (rule 1)
_NOT_HELD = frozenset({Heartbeat, AggregateColumns, Flow, Learners})  # sent again soon anyway (rules 1, 9)
_PERIODIC = frozenset({AggregateColumns, Flow, Learners})  # rule 9: not announced (heartbeats: rule 7)
OVERLAY_FEATURE = "overlay"  # what a node that speaks the overlay announces in its build (rule 10)
BUILD_CHECK = 1.0  # s between two looks for members that speak no overlay (rule 10)
_PUSH_PULL = (StatePush, StateReply)  # where a joiner's build arrives first (rule 10)
HEARTBEAT_ANNOUNCED_EVERY = 2 * MEMBER_ACK_EVERY  # rule 7: every other heartbeat the leader publishes in rhythm


def _periodic(payload: tuple[str, object]) -> bool:
    msg = payload[1]
    if type(msg) is Heartbeat:  # rule 7: news (off the rhythm) is always announced
        seq = msg.seq  # type: ignore[attr-defined]
        return seq % MEMBER_ACK_EVERY == 0 and seq % HEARTBEAT_ANNOUNCED_EVERY != 0
    return type(msg) in _PERIODIC


@dataclass(frozen=True, slots=True)
class OverlayConfig:
    """The two cores' settings (their defaults fit 10,000 nodes: see each config)."""

    views: HyParViewConfig = field(default_factory=HyParViewConfig)
    tree: PlumtreeConfig = field(default_factory=PlumtreeConfig)


class OverlayMesh:
    """One node's mesh core behind the overlay. Reads (``membership``, ``election``,
    ``leader``...) pass through to the core."""

    def __init__(self, core: MeshCore, addr: str, config: OverlayConfig, rng: random.Random,
                 now: float, first_seq: int = 0, known: Mapping[str, str] | None = None) -> None:
        """``first_seq``: where this life numbers its broadcasts (plumtree rule 3), a value
        no earlier life at this address reached: the shell gives its start's wall clock in
        microseconds. ``known``: address -> name of the members held from the start (the
        simulator's running cluster shares one map, as its member records)."""
        self.core = core
        self.addr = addr
        self.views = HyParView(addr, rng, config.views, now=now)
        self.tree = Plumtree(addr, config.tree, first_seq=first_seq, periodic=_periodic)
        self._rng = rng
        self._names: dict[str, str] = {}  # peer address -> member name (rule 3), until reaped
        self._known: Mapping[str, str] = known or {}  # the same, from the start
        self._passive_size = config.views.passive_size
        self._scope: frozenset[str] | None = frozenset()
        self._refuted = 0  # our deaths the core refuted, as last seen (rule 4)
        self._held: list[tuple[MessageId, object, float]] = []  # broadcast with no neighbour (rule 1)
        self._hold_for = config.tree.cache_ttl
        self._announce_at: float | None = now + config.views.shuffle_interval  # rule 1: once more
        self._leaderless_since: float | None = None  # rule 8
        self.delivered: list[tuple[str, object]] = []  # (origin, message) the last handle() delivered
        self.legacy: dict[str, str] = {}  # rule 10: live members that speak no overlay, address -> name
        self._builds_at = float("-inf")  # rule 10: the last look
        self._builds_dirty = False  # rule 10: an old member changed; look before the next return
        self._unheard: dict[str, str] = {}  # rule 10: members whose build has not arrived, address -> name
        self._view_contact: str | None = None  # rule 10: the view join waits for a push-pull
        core.membership.within_overlay(self._scope)  # rule 3: no neighbour yet, nobody to probe

    def __getattr__(self, name: str) -> object:
        return getattr(self.core, name)

    @property
    def neighbors(self) -> tuple[str, ...]:
        return self.views.neighbors()

    @property
    def placement(self) -> str:
        return self.core.placement

    @placement.setter
    def placement(self, digest: str) -> None:  # the shell sets it (core rule 15)
        self.core.placement = digest

    # -- inputs (as MeshCore's) -------------------------------------------------------

    def start(self, snapshot: Sequence[MemberState], join: Sequence[str], now: float) -> list[object]:
        """A core holding the shared records of a running cluster (the simulator's) has
        nothing to announce (rule 1), only views to make (rule 5)."""
        started = self.core.start(snapshot, join, now)  # first: a restart raises our incarnation
        if self.core.membership.shared:
            self._announce_at = None
            peers = [a for a in self._known if a != self.addr]  # rule 4, as if each had been learned:
            for addr in self._rng.sample(peers, min(len(peers), self._passive_size)):  # a passive
                self.views.learn(now, addr)  # view is a sample of them
        else:
            self.core.membership.announce()  # rule 1: our build reaches everyone, not only some
            self._follow_builds(now)  # rule 10: the snapshot's old members count from the start
        out = self._route(started, now)
        contacts = [a for a in join if a != self.addr]
        if not contacts:  # rule 5: a restart joins through a member it remembers
            contacts = sorted(s.addr for s in snapshot
                              if s.status not in _GONE and s.addr != self.addr and s.addr not in self.legacy)
            contacts = [self._rng.choice(contacts)] if contacts else []
        if contacts:
            out += self._join_views(contacts[0], now)
        return out

    def handle(self, sender: str, msg: object, now: float, missed: int = 0) -> list[object]:
        """As ``MeshCore.handle``; what a tree message delivered is in ``delivered`` until the
        next call (the shell reads the heartbeats there)."""
        self.delivered = []
        t = type(msg)
        if t in _VIEW_TYPES or t in _TREE_TYPES:
            out: list[object] = []
            if self.legacy and msg.sender in self.legacy:  # type: ignore[attr-defined]  # rule 10
                out = self._follow_builds(now)
                if msg.sender in self.legacy:  # type: ignore[attr-defined]  # still old, as far as we heard
                    return out
            if t in _VIEW_TYPES:
                return out + self._view(self.views.handle(now, msg), now)  # type: ignore[arg-type]
            return out + self._tree(self.tree.handle(now, msg), now)  # type: ignore[arg-type]
        out = self._route(self.core.handle(sender, msg, now, missed), now)  # type: ignore[arg-type]
        if t in _PUSH_PULL and not self.core.membership.shared:
            out += self._follow_builds(now)
            if self._view_contact is not None:
                out += self._join_views(self._view_contact, now)
        return out

    def tick(self, now: float) -> list[object]:
        if self._announce_at is not None and now >= self._announce_at:
            self._announce_at = None
            self.core.membership.announce()
        out = self._route(self.core.tick(now), now)
        if now - self._builds_at >= BUILD_CHECK and not self.core.membership.shared:
            out += self._follow_builds(now)
        if self.core.election.leader is None and not self.core.membership.left and not self.legacy:  # rule 8
            if self._leaderless_since is None:
                self._leaderless_since = now
            elif now - self._leaderless_since >= ISLAND_AFTER:
                self._leaderless_since = now
                out += self._view(self.views.rewire(now), now)
        else:
            self._leaderless_since = None
        due = self.views.next_deadline()
        if due is not None and due <= now:
            out += self._view(self.views.on_timer(now), now)
        due = self.tree.next_deadline()
        if due is not None and due <= now:
            out += self._tree(self.tree.on_timer(now), now)
        return out

    def next_deadline(self, now: float) -> float:
        due = self.core.next_deadline(now)
        builds = None if self.core.membership.shared else self._builds_at + BUILD_CHECK
        for other in (self.views.next_deadline(), self.tree.next_deadline(), self._announce_at, builds):
            if other is not None:
                due = min(due, other)
        return max(now, due)

    def join(self, addrs: Iterable[str], now: float) -> list[object]:
        addrs = list(addrs)
        out = self._route(self.core.join(addrs, now), now)
        contacts = [a for a in addrs if a != self.addr]
        if contacts and not self.views.active:
            out += self._join_views(contacts[0], now)
        return out

    def leave(self, now: float) -> list[object]:
        out = self._route(self.core.leave(now), now)  # rule 6
        return out + self._view(self.views.leave(now), now)

    def force_leave(self, name: str, now: float, *, prune: bool = False) -> list[object]:
        return self._route(self.core.force_leave(name, now, prune=prune), now)

    def engine_stalled(self, stalled: bool, now: float) -> list[object]:
        return self._route(self.core.engine_stalled(stalled, now), now)

    def hint(self, name: str, refused: bool, now: float) -> list[object]:
        return self._route(self.core.hint(name, refused, now), now)

    def settle(self, settings: Mapping[str, str], now: float) -> list[object]:
        return self._route(self.core.settle(settings, now), now)

    def recover(self, voters: Iterable[str], now: float) -> list[object]:
        return self._route(self.core.recover(voters, now), now)

    def write_failed(self, vote: tuple[int, str | None], config: Configuration, now: float) -> list[object]:
        return self._route(self.core.write_failed(vote, config, now), now)

    def share(self, msg: object, now: float) -> list[object]:
        """Rule 9: a broadcast of the data plane (``wire.DATA_CARRIED_TYPES``), over the tree."""
        return self._spread(msg, now)

    # -- routing --------------------------------------------------------------------

    def _spread(self, msg: object, now: float) -> list[object]:
        """Rules 1 and 9: one broadcast of ours onto the tree, held while we have no link."""
        payload = (self.core.name, msg)
        msg_id, sends = self.tree.broadcast(now, payload)
        if type(msg) not in _NOT_HELD and not self.views.neighbors():  # held for the first link
            self._held = [h for h in self._held if now - h[2] < self._hold_for][-HELD_MAX + 1:]
            self._held.append((msg_id, payload, now))
        return sends

    def _route(self, effects: list[Effect], now: float) -> list[object]:
        """Rules 1, 3 and 4 on what the core returned."""
        out: list[object] = []
        for eff in effects:
            t = type(eff)
            if t is Broadcast:
                msg = eff.msg  # type: ignore[union-attr]
                if type(msg) is Heartbeat:  # rule 7: the voters hear it straight from us
                    core = self.core
                    out += [Send(addr, msg) for name, addr in core.voters.current.voters if name != core.name]
                out += self._spread(msg, now)
                if self.legacy:  # rule 10: on the PUB streams too
                    out.append(eff)
                continue
            out.append(eff)
            if t is MemberChanged:
                self._member_changed(eff, now, out)  # type: ignore[arg-type]
            elif t is MemberReaped:
                self._reaped(eff.name)  # type: ignore[union-attr]
        refuted = self.core.membership.deaths_refuted
        if refuted != self._refuted:  # rule 4: whoever took us for dead dropped us silently
            self._refuted = refuted
            out += self._view(self.views.rejoin(now), now)
        if self._builds_dirty:  # rule 10: once for all the changes of one input
            out += self._follow_builds(now)
        return out

    def _reaped(self, name: str) -> None:
        """A reaped member's address is no longer its (a scan: reaps are rare, and a map
        back would be one more entry per member per node)."""
        for addr in [a for a, n in self._names.items() if n == name]:
            del self._names[addr]

    def _member_changed(self, ch: MemberChanged, now: float, out: list[object]) -> None:
        if ch.name == self.core.name:
            return
        known = self._names.get(ch.addr)
        self._names[ch.addr] = ch.name
        if ch.new in _GONE:
            if ch.addr in self.legacy:  # rule 10: the overlay again, if it was the last
                self._builds_dirty = True
            out += self._view(self.views.peer_failed(now, ch.addr), now)
        elif ch.addr in self.legacy or (speaks := self.core.membership.announces(ch.name, OVERLAY_FEATURE)) is False:
            self._builds_dirty = True  # rule 10: no candidate, and the full mesh's rules
        elif ch.old in _GONE:
            out += self._view(self.views.revived(now, ch.addr), now)
        elif ch.old is None:
            if speaks is None and not self.core.membership.shared:  # rule 10: a candidate once heard
                self._unheard[ch.addr] = ch.name
            else:
                self.views.learn(now, ch.addr)
        if known != ch.name and ch.addr in self.views.neighbors():
            self._rescope()

    def _join_views(self, contact: str, now: float) -> list[object]:
        """Rule 10: join the views through ``contact`` once its build says it speaks the
        overlay; through another member that does if it does not; else wait for the next
        push-pull (a cluster of older members only: they will not answer)."""
        membership = self.core.membership
        name = self._names.get(contact) or self._known.get(contact)
        if not membership.shared and (name is None or membership.announces(name, OVERLAY_FEATURE) is not True):
            if self.views.active:
                self._view_contact = None
                return []
            self._view_contact = contact
            if name is None or membership.announces(name, OVERLAY_FEATURE) is None:
                return []  # not heard yet: the push-pull's answer will say
            speakers = sorted(a for a, n in self._names.items() if a != self.addr and a not in self.legacy
                              and membership.status_of(n) in _LIVE and membership.announces(n, OVERLAY_FEATURE))
            if not speakers:
                return []
            contact = self._rng.choice(speakers)
        self._view_contact = None
        return self._view(self.views.join(now, contact), now)

    def _follow_builds(self, now: float) -> list[object]:
        """Rule 10: the full mesh's rules while a live member speaks no overlay; members
        whose build arrived become the views' candidates."""
        self._builds_at = now
        self._builds_dirty = False
        membership = self.core.membership
        for addr, name in list(self._unheard.items()):
            speaks = membership.announces(name, OVERLAY_FEATURE)
            if speaks is None and membership.status_of(name) in _LIVE:
                continue
            del self._unheard[addr]
            if speaks and membership.status_of(name) in _LIVE:
                self.views.learn(now, addr)
        legacy = {m.addr: m.name for m in membership.lacking(OVERLAY_FEATURE)}
        if legacy == self.legacy:
            return []
        before, self.legacy = self.legacy, legacy
        out: list[object] = []
        for addr in legacy.keys() - before.keys():  # a view holds it only if it was heard of first
            out += self._view(self.views.peer_failed(now, addr), now)
        for addr in before.keys() - legacy.keys():  # upgraded in place, or gone (the core said which)
            if self.core.membership.status_of(before[addr]) in _LIVE:
                self.views.learn(now, addr)
        if not legacy:
            self._scope = None  # so that _rescope sets it again
            self._rescope()
        elif not before:
            self.core.membership.within_overlay(None)
        return out

    def _view(self, effects: list, now: float) -> list[object]:
        """Rule 2: neighbour changes reach the tree, then the shell."""
        out: list[object] = []
        changed = False
        legacy = self.legacy
        for eff in effects:
            t = type(eff)
            if legacy and t is ViewSend and eff.to in legacy:  # rule 10: it would reject it
                continue
            if t is NeighborUp:
                self.tree.neighbor_up(now, eff.peer)
                changed = True
                out.append(eff)
                for msg_id, payload, at in self._held:  # rule 1: what we said with nobody to hear
                    if now - at < self._hold_for:
                        out.append(TreeSend(eff.peer, Gossip(self.addr, msg_id, payload, 1)))
                self._held = []
                continue
            elif t is NeighborDown:
                self.tree.neighbor_down(now, eff.peer)
                changed = True
            out.append(eff)
        if changed:
            self._rescope()
        return out

    def _tree(self, effects: list, now: float) -> list[object]:
        """Rules 1 and 9: a delivered broadcast of the core is its input from its originator."""
        out: list[object] = []
        legacy = self.legacy
        for eff in effects:
            if legacy and type(eff) is TreeSend and eff.to in legacy:  # rule 10: it would reject it
                continue
            if type(eff) is Deliver:
                origin, msg = eff.payload
                if origin != self.core.name:
                    self.delivered.append((origin, msg))
                    if type(msg) in _CORE_CARRIED:
                        out += self._route(self.core.handle(origin, msg, now, 0), now)
            else:
                out.append(eff)
        return out

    def _rescope(self) -> None:
        names, known = self._names, self._known
        scope = frozenset(n for p in self.views.neighbors() if (n := names.get(p) or known.get(p)) is not None)
        if scope != self._scope:
            self._scope = scope
            if not self.legacy:  # rule 10: every member is probed meanwhile
                self.core.membership.within_overlay(scope)
