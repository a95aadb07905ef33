"""HyParView partial views (Leitao, Pereira, Rodrigues, DSN 2007) as a pure state machine.

Each node keeps a small symmetric *active view* (the peers it holds a link to, over which
broadcast and failure detection run) and a larger *passive view* (addresses it knows, to
repair the active view). A node's open links stay bounded by ``active_size`` plus its
pinned peers whatever the cluster's size, and since the active view is filled up to
``active_size`` whenever candidates exist, it is ``min(N - 1, active_size)``: a small
cluster is a full mesh by the same rules, with no switch at some size.

Sans-I/O like the other mesh cores: every input carries ``now``; randomness is the
``random.Random`` passed in; the methods return effects (``ViewSend``, ``NeighborUp``,
``NeighborDown``) in the order the shell must carry them out. Peers are opaque strings
(the shell's direct address or member name); views are insertion-ordered dicts, never
sets, so the same seed gives the same choices in every process.

Rules (the code refers to them):

Rule 1. Join. ``join(contact)`` sends ``Join`` (retried every ``join_retry`` until some
    peer is active). The contact adds the joiner to its active view, answers ``JoinReply``
    with a passive sample (seeding the joiner's passive view), plus its whole active view
    if that was not full (the cluster is smaller than the cap: link to all of it), and
    sends ``ForwardJoin(ttl=active_walk)`` to each other active peer.

Rule 2. ForwardJoin. A node ends the walk, adding the joiner to its active view and
    sending it ``Neighbor(high)``, when ttl is 0 or it has at most one active peer (or no
    peer to forward to). Otherwise it adds the joiner to its passive view at
    ttl == passive_walk and forwards the walk with ttl - 1 to a random active peer other
    than the sender and the joiner. The joiner meanwhile asks the peers named in
    ``JoinReply`` (rule 5's fill): in a cluster smaller than the cap nobody is full, all
    accept, and the new node is linked to everyone at once (the full mesh).

Rule 3. Adding to a full active view evicts a random active peer: it gets ``Disconnect``
    and moves to our passive view; it moves us to its passive view. Views stay symmetric.

Rule 4. Neighbor. A ``Neighbor`` request with high priority is always accepted (rule 3
    makes room); with low priority only if the active view is not full. The answer is
    ``NeighborReply(accepted)``; a refused requester stays a passive candidate. An
    accepted answer to a request no longer pending (it timed out, or we took or dropped
    the peer meanwhile) or one that finds our view full (a race) is undone with
    ``Disconnect``: whoever accepted must not keep a one-sided link.

Rule 5. Repair and fill. ``peer_failed`` drops the peer from both views (a failed peer is
    no candidate) and at once asks passive peers, one per missing slot, with high priority
    if the active view is empty, else low (a node left with no active peer by a
    ``Disconnect`` or a refusal asks at once too). A request unanswered after
    ``neighbor_timeout`` means the candidate is gone: it leaves the passive view and
    another is asked. While
    the active view has free slots, one more round of requests goes out every
    ``fill_interval``, doubling after each refusal up to ``fill_backoff_max`` times, so a
    node whose candidates are all full costs two messages a long while, not a storm. Once
    refusals have taken the backoff to its longest, it asks with high priority (the one it asks makes room, rule 3):
    a clique whose views are full of each other, such as one side of a healed partition,
    must let the other side's under-full nodes in, or the broadcast tree stays cut in two.

Rule 6. Shuffle. Every ``shuffle_interval`` (first one at a random phase) a node sends
    ``Shuffle`` with itself, ``shuffle_active`` active and ``shuffle_passive`` passive
    peers on a random walk of ``active_walk`` hops; the node where it ends answers the
    origin directly with as many of its known peers (passive first in the paper; we draw
    from passive and active, so that in a small cluster, where passive views are nearly
    empty, a node still learns the peers it could link to), and both merge what they got
    into their passive views, evicting first what they sent.

Rule 7. Pinned peers (the election voters: their traffic must not ride the overlay). A
    pinned peer is a neighbour outside ``active_size`` whatever the views say: the views
    ignore pinning (a pinned peer may also hold an active slot, be evicted from it, sit in
    the passive view), and ``NeighborUp``/``NeighborDown`` report the union, so leaving
    the active view does not close a pinned link. Keeping the views blind to pinning
    matters: an earlier version kept pinned peers out of the views, and every voter then
    grew its own community of joiners, joined to the others only by the pinned links.
    ``peer_failed`` on a pinned peer reports it down but keeps it pinned; the next message
    from it brings it back up. Pinning must be symmetric (every voter pins every other),
    as the voter set is; ``Disconnect(leaving=True)`` unpins.

Rule 8. Leave. ``leave`` sends ``Disconnect(leaving=True)`` to every neighbour (which drop
    us from both views) and the core ignores input from then on.

Rule 9. Rewire (our addition). Rules 1-5 can close an island: a clique of
    ``active_size + 1`` nodes whose views are all full of each other never accepts or asks
    anyone again (seen with concurrent joins at small caps). So at each shuffle a node
    whose active view is full, with probability ``rewire_chance``, asks a random passive
    peer with high priority and, if accepted, evicts a random active peer for it (rule 3).
    An island then opens within a few shuffle periods; elsewhere it is a slow trickle of
    link changes (one per node per shuffle_interval / rewire_chance) the tree repairs.

Rule 10. One-sided links (our addition). A peer that takes us for dead drops us from its
    views without a word (rule 5: nobody is there to tell), so a node that was cut off, or
    falsely declared dead, can be left holding links its peers no longer hold: nothing
    reaches it over them, and with its active view full it never asks anyone. Both ends
    mend it. The dropping end remembers whom ``peer_failed`` took out of its active view,
    and when that peer is found alive after all (``revived``) sends it ``Disconnect``. The
    dropped end, when it refuted its own death (``rejoin``, the caller's), sends
    ``Disconnect`` on each active link, keeps those peers as passive candidates, and fills
    again with high priority, as a node left alone does (rule 5), from the other
    candidates first: a ``Disconnect`` and a new request to the same peer could cross on a
    network that reorders. A member brought back by others' news, not by its own
    refutation, hears the first of the two.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from corec_node.wire.overlay_messages import (
    Disconnect,
    ForwardJoin,
    Join,
    JoinReply,
    Neighbor,
    NeighborReply,
    Shuffle,
    ShuffleReply,
    ViewMessage,
)

__all__ = [
    "Disconnect",
    "ForwardJoin",
    "HyParView",
    "HyParViewConfig",
    "HyParViewEffect",
    "HyParViewMessage",
    "Join",
    "JoinReply",
    "Neighbor",
    "NeighborDown",
    "NeighborReply",
    "NeighborUp",
    "ViewSend",
    "Shuffle",
    "ShuffleReply",
]


@dataclass(frozen=True, slots=True)
class HyParViewConfig:
    """View sizes, walk lengths and timers, each with its reason."""

    # Active links a node keeps. The paper's log10(N) + 1 = 5 keeps 10,000 nodes connected;
    # 8 (about log2(N) / 2 + 1 there) gives Plumtree enough lazy links to repair a tree
    # with half the nodes gone, and keeps sockets far below issue 18's 64 a node.
    active_size: int = 8
    # Candidates for repair: 6x the active view, the paper's ratio (30 for 5).
    passive_size: int = 48
    # ARWL and PRWL, the paper's 6 and 3: a walk of 6 hops lands far from the contact.
    active_walk: int = 6
    passive_walk: int = 3
    # One shuffle per node every 10 s: passive views stay fresh at < 1 message/node/s.
    shuffle_interval: float = 10.0
    shuffle_active: int = 3  # ka: active peers in a shuffle sample
    shuffle_passive: int = 4  # kp: passive peers in a shuffle sample
    # A Neighbor request unanswered this long: the candidate is gone (LAN RTT is ~1 ms;
    # a stalled but live peer is merely skipped, it stays reachable through shuffles).
    neighbor_timeout: float = 1.0
    # A node below its cap asks a passive peer every 2 s, backing off to 8x on refusals.
    fill_interval: float = 2.0
    fill_backoff_max: int = 8
    join_retry: float = 2.0  # re-send Join while no peer is active yet
    # Rule 9: one rewire per node per ~200 s: opens an island within minutes at a cost of
    # ~0.005 link changes per node a second.
    rewire_chance: float = 0.05

    def __post_init__(self) -> None:
        if self.active_size < 1 or self.passive_size < 1:
            raise ValueError("HyParViewConfig: active_size and passive_size must be >= 1")
        if not 0 <= self.passive_walk <= self.active_walk:
            raise ValueError("HyParViewConfig needs 0 <= passive_walk <= active_walk")
        for name in ("shuffle_interval", "neighbor_timeout", "fill_interval", "join_retry"):
            if getattr(self, name) <= 0:
                raise ValueError(f"HyParViewConfig.{name} must be > 0")
        if not 0.0 <= self.rewire_chance <= 1.0:
            raise ValueError("HyParViewConfig.rewire_chance must be a probability")


HyParViewMessage = ViewMessage  # the messages, peer to peer: wire/overlay_messages.py


# -- effects (core to shell) -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ViewSend:
    """ViewSend ``msg`` to ``to`` (over its link if it is a neighbour, else a short-lived one)."""

    to: str
    msg: HyParViewMessage


@dataclass(frozen=True, slots=True)
class NeighborUp:
    """``peer`` became a neighbour: keep a link open to it, tell the broadcast layer."""

    peer: str


@dataclass(frozen=True, slots=True)
class NeighborDown:
    """``peer`` is no neighbour any more (or failed): close the link, tell the broadcast
    layer. A pinned peer that failed stays pinned: keep reconnecting."""

    peer: str


HyParViewEffect = ViewSend | NeighborUp | NeighborDown


class HyParView:
    """One node's views. Drive it with ``join``, ``handle``, ``peer_failed``, ``pin`` and
    ``on_timer`` at ``next_deadline()``; carry out the returned effects in order."""

    __slots__ = (
        "_active",
        "_cfg",
        "_fill_at",
        "_fill_backoff",
        "_join_at",
        "_join_contact",
        "_me",
        "_passive",
        "_pending",
        "_pinned",
        "_rewiring",
        "_rng",
        "_shuffle_at",
        "_shuffle_sent",
        "_stopped",
        "_dropped",
    )

    def __init__(
        self,
        me: str,
        rng: random.Random,
        config: HyParViewConfig | None = None,
        *,
        now: float = 0.0,
    ) -> None:
        self._me = me
        self._rng = rng
        self._cfg = config or HyParViewConfig()
        self._active: dict[str, None] = {}
        self._passive: dict[str, None] = {}
        self._pinned: dict[str, bool] = {}  # peer -> link up
        self._pending: dict[str, float] = {}  # Neighbor requests in flight -> deadline
        self._shuffle_at = now + rng.random() * self._cfg.shuffle_interval  # rule 6
        self._shuffle_sent: tuple[str, ...] = ()
        self._fill_at: float | None = None
        self._fill_backoff = 1
        self._join_contact: str | None = None
        self._join_at: float | None = None
        self._rewiring: str | None = None
        self._stopped = False
        self._dropped: dict[str, None] = {}  # active peers peer_failed dropped (rule 10), newest last

    # -- reading ------------------------------------------------------------------------

    @property
    def me(self) -> str:
        return self._me

    @property
    def config(self) -> HyParViewConfig:
        return self._cfg

    @property
    def active(self) -> tuple[str, ...]:
        return tuple(self._active)

    @property
    def passive(self) -> tuple[str, ...]:
        return tuple(self._passive)

    @property
    def pinned(self) -> tuple[str, ...]:
        return tuple(self._pinned)

    def neighbors(self) -> tuple[str, ...]:
        """Active peers and pinned peers whose link is up: where broadcasts go."""
        extra = tuple(p for p, up in self._pinned.items() if up and p not in self._active)
        return tuple(self._active) + extra

    def _linked(self, peer: str) -> bool:
        return peer in self._active or self._pinned.get(peer, False)

    # -- commands -----------------------------------------------------------------------

    def join(self, now: float, contact: str) -> list[HyParViewEffect]:
        """Join the overlay through ``contact`` (rule 1)."""
        if self._stopped or contact == self._me:
            return []
        self._join_contact = contact
        self._join_at = now + self._cfg.join_retry
        return [ViewSend(contact, Join(self._me))]

    def leave(self, now: float) -> list[HyParViewEffect]:
        """Say goodbye to every neighbour and stop (rule 8)."""
        if self._stopped:
            return []
        out: list[HyParViewEffect] = []
        for peer in dict.fromkeys([*self._active, *self._pinned]):
            out.append(ViewSend(peer, Disconnect(self._me, leaving=True)))
            if self._linked(peer):
                out.append(NeighborDown(peer))
        self._active.clear()
        self._pinned.clear()
        self._passive.clear()
        self._pending.clear()
        self._stopped = True
        return out

    def pin(self, now: float, peer: str) -> list[HyParViewEffect]:
        """Keep a direct link to ``peer`` outside the cap (rule 7)."""
        if self._stopped or peer == self._me or peer in self._pinned:
            return []
        linked = self._linked(peer)
        self._pinned[peer] = True
        return [] if linked else [NeighborUp(peer)]

    def unpin(self, now: float, peer: str) -> list[HyParViewEffect]:
        """``peer`` is no longer pinned: its link stays only if it holds an active slot."""
        up = self._pinned.pop(peer, None)
        if not up or peer in self._active:
            return []
        self._add_passive(peer)
        return [NeighborDown(peer)]

    def learn(self, now: float, peer: str) -> None:
        """A peer heard of outside the overlay (the member list): a passive candidate, so a
        node whose contact is gone still finds the overlay (rule 5's fill asks it)."""
        if not self._stopped and peer not in self._pinned:
            self._add_passive(peer)
            self._keep_filling(now)

    def peer_failed(self, now: float, peer: str) -> list[HyParViewEffect]:
        """The link to ``peer`` broke or failure detection declared it dead (rule 5)."""
        if self._stopped:
            return []
        out: list[HyParViewEffect] = []
        if self._linked(peer):
            out.append(NeighborDown(peer))
        if peer in self._pinned:
            self._pinned[peer] = False
        self._passive.pop(peer, None)
        self._pending.pop(peer, None)
        if peer in self._active:
            del self._active[peer]
            self._dropped[peer] = None
            if len(self._dropped) > self._cfg.passive_size:
                del self._dropped[next(iter(self._dropped))]
            self._fill_backoff = 1
            self._fill(now, out)
        return out

    def revived(self, now: float, peer: str) -> list[HyParViewEffect]:
        """``peer``, taken for dead, lives (rule 10): if we dropped it from our active view,
        say so, since it may still hold us; either way it is a passive candidate again."""
        out: list[HyParViewEffect] = []
        if self._dropped.pop(peer, 0) is None and not self._stopped and not self._linked(peer):
            out.append(ViewSend(peer, Disconnect(self._me)))
        self.learn(now, peer)
        return out

    def rejoin(self, now: float) -> list[HyParViewEffect]:
        """Our peers may have dropped us without a word: rule 10."""
        if self._stopped:
            return []
        out: list[HyParViewEffect] = []
        old = tuple(self._active)
        self._active.clear()
        for peer in old:
            out.append(ViewSend(peer, Disconnect(self._me)))
            if not self._linked(peer):
                out.append(NeighborDown(peer))
            self._add_passive(peer)
        self._pending.clear()
        self._rewiring = None
        self._fill_backoff = 1
        self._fill(now, out, avoid=old)
        return out

    # -- messages -----------------------------------------------------------------------

    def handle(self, now: float, msg: HyParViewMessage) -> list[HyParViewEffect]:
        if self._stopped:
            return []
        out: list[HyParViewEffect] = []
        sender = msg.sender
        if sender == self._me:
            return out
        if self._pinned.get(sender) is False:  # rule 7: a pinned peer is back
            self._pinned[sender] = True
            if sender not in self._active:
                out.append(NeighborUp(sender))
        match msg:
            case Join():
                self._on_join(now, msg, out)
            case JoinReply():
                self._on_join_reply(now, msg, out)
            case ForwardJoin():
                self._on_forward_join(now, msg, out)
            case Neighbor():
                self._on_neighbor(now, msg, out)
            case NeighborReply():
                self._on_neighbor_reply(now, msg, out)
            case Disconnect():
                self._on_disconnect(now, msg, out)
            case Shuffle():
                self._on_shuffle(now, msg, out)
            case ShuffleReply():
                self._merge_passive(msg.peers, self._shuffle_sent)
        self._keep_filling(now)
        return out

    def _on_join(self, now: float, msg: Join, out: list[HyParViewEffect]) -> None:
        joiner = msg.sender
        others = [p for p in self._active if p != joiner]
        passive = [p for p in self._passive if p != joiner]
        sample = self._sample(passive, self._cfg.shuffle_passive)
        if len(self._active) < self._cfg.active_size:
            sample = others + sample  # not full: the cluster is small, link to all of it
        self._add_active(now, joiner, out)
        out.append(ViewSend(joiner, JoinReply(self._me, tuple(sample))))
        for peer in others:
            out.append(ViewSend(peer, ForwardJoin(self._me, joiner, self._cfg.active_walk)))

    def _on_join_reply(self, now: float, msg: JoinReply, out: list[HyParViewEffect]) -> None:
        self._add_active(now, msg.sender, out)
        self._merge_passive(msg.peers, ())
        self._fill_backoff = 1
        self._fill(now, out)

    def _on_forward_join(self, now: float, msg: ForwardJoin, out: list[HyParViewEffect]) -> None:
        joiner = msg.joiner
        if joiner == self._me or joiner in self._active:
            return
        cfg = self._cfg
        if msg.ttl <= 0 or len(self._active) <= 1:
            self._accept_joiner(now, joiner, out)
            return
        if msg.ttl == cfg.passive_walk:
            self._add_passive(joiner)
        nxt = self._random_active(exclude=(msg.sender, joiner))
        if nxt is None:
            self._accept_joiner(now, joiner, out)
        else:
            out.append(ViewSend(nxt, ForwardJoin(self._me, joiner, msg.ttl - 1)))

    def _accept_joiner(self, now: float, joiner: str, out: list[HyParViewEffect]) -> None:
        self._add_active(now, joiner, out)
        out.append(ViewSend(joiner, Neighbor(self._me, high=True)))

    def _on_neighbor(self, now: float, msg: Neighbor, out: list[HyParViewEffect]) -> None:
        peer = msg.sender
        self._pending.pop(peer, None)  # crossed requests: this one settles ours
        if peer in self._active:
            out.append(ViewSend(peer, NeighborReply(self._me, accepted=True)))
            return
        if msg.high or len(self._active) < self._cfg.active_size:
            self._add_active(now, peer, out)
            out.append(ViewSend(peer, NeighborReply(self._me, accepted=True)))
        else:
            self._add_passive(peer)
            out.append(ViewSend(peer, NeighborReply(self._me, accepted=False)))

    def _on_neighbor_reply(
        self, now: float, msg: NeighborReply, out: list[HyParViewEffect]
    ) -> None:
        peer = msg.sender
        asked = self._pending.pop(peer, None) is not None
        rewire = peer == self._rewiring
        if rewire:
            self._rewiring = None
        if not msg.accepted:
            if not asked:
                return
            if not self._active:  # isolated: ask again at once, with high priority
                self._fill(now, out)
                return
            self._fill_backoff = min(self._fill_backoff * 2, self._cfg.fill_backoff_max)
            self._schedule_fill(now)
            return
        if peer in self._active:
            return
        if asked and (rewire or len(self._active) < self._cfg.active_size):
            self._add_active(now, peer, out)  # a rewire evicts (rule 9)
            self._fill_backoff = 1
        else:  # rule 4: filled meanwhile, or a stale answer (we timed out, or dropped it)
            self._add_passive(peer)
            out.append(ViewSend(peer, Disconnect(self._me)))

    def _on_disconnect(self, now: float, msg: Disconnect, out: list[HyParViewEffect]) -> None:
        peer = msg.sender
        linked = self._linked(peer)
        if msg.leaving:
            self._pinned.pop(peer, None)
        self._pending.pop(peer, None)
        was_active = self._active.pop(peer, 0) is None
        if msg.leaving:
            self._passive.pop(peer, None)
        else:
            self._add_passive(peer)
        if linked and not self._linked(peer):
            out.append(NeighborDown(peer))
        if was_active:
            self._fill_backoff = 1
            if self._active:
                self._schedule_fill(now)
            else:  # isolated: ask at once, with high priority (rule 5)
                self._fill(now, out)

    def _on_shuffle(self, now: float, msg: Shuffle, out: list[HyParViewEffect]) -> None:
        if msg.origin == self._me:
            return
        if msg.ttl > 1 and len(self._active) > 1:
            nxt = self._random_active(exclude=(msg.sender, msg.origin))
            if nxt is not None:
                out.append(ViewSend(nxt, Shuffle(self._me, msg.origin, msg.peers, msg.ttl - 1)))
                return
        known = [p for p in (*self._passive, *self._active) if p != msg.origin]
        reply = tuple(self._sample(known, len(msg.peers)))
        out.append(ViewSend(msg.origin, ShuffleReply(self._me, reply)))
        self._merge_passive(msg.peers, reply)

    # -- timers -------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """The earliest time ``on_timer`` has work to do (None: only input wakes us)."""
        if self._stopped:
            return None
        times = list(self._pending.values())
        if self._active:
            times.append(self._shuffle_at)
        if self._fill_at is not None:
            times.append(self._fill_at)
        if self._join_at is not None:
            times.append(self._join_at)
        return min(times) if times else None

    def on_timer(self, now: float) -> list[HyParViewEffect]:
        if self._stopped:
            return []
        out: list[HyParViewEffect] = []
        cfg = self._cfg
        expired = [p for p, t in self._pending.items() if t <= now]
        for peer in expired:  # rule 5: an unanswered candidate is gone
            del self._pending[peer]
            self._passive.pop(peer, None)
            if peer == self._rewiring:
                self._rewiring = None
        if expired:
            self._fill(now, out)
        if self._join_at is not None and now >= self._join_at:
            if self._active or self._join_contact is None:
                self._join_at = None
            else:
                self._join_at = now + cfg.join_retry
                out.append(ViewSend(self._join_contact, Join(self._me)))
        if self._fill_at is not None and now >= self._fill_at:
            self._fill_at = None
            self._fill(now, out)
        if now >= self._shuffle_at:
            self._shuffle_at = now + cfg.shuffle_interval
            self._start_shuffle(out)
            self._maybe_rewire(now, out)
        self._keep_filling(now)
        return out

    def rewire(self, now: float) -> list[HyParViewEffect]:
        """Rule 9 at once, whatever the chance: the caller has reason to think the overlay
        is cut (its broadcasts stopped coming)."""
        out: list[HyParViewEffect] = []
        if not self._stopped and self._rewiring is None:
            self._rewire(now, out)
        return out

    def _maybe_rewire(self, now: float, out: list[HyParViewEffect]) -> None:
        """Rule 9."""
        cfg = self._cfg
        if len(self._active) < cfg.active_size or self._rng.random() >= cfg.rewire_chance:
            return
        self._rewire(now, out)

    def _rewire(self, now: float, out: list[HyParViewEffect]) -> None:
        cfg = self._cfg
        candidates = [p for p in self._passive if p not in self._pending]
        if not candidates:
            return
        peer = self._rng.choice(candidates)
        self._rewiring = peer
        self._pending[peer] = now + cfg.neighbor_timeout
        out.append(ViewSend(peer, Neighbor(self._me, high=True)))

    def _start_shuffle(self, out: list[HyParViewEffect]) -> None:
        cfg = self._cfg
        target = self._random_active(exclude=())
        if target is None:
            return
        sample = (
            [self._me]
            + self._sample([p for p in self._active if p != target], cfg.shuffle_active)
            + self._sample(list(self._passive), cfg.shuffle_passive)
        )
        self._shuffle_sent = tuple(sample)
        out.append(ViewSend(target, Shuffle(self._me, self._me, self._shuffle_sent, cfg.active_walk)))

    # -- views --------------------------------------------------------------------------

    def _fill(self, now: float, out: list[HyParViewEffect], avoid: tuple[str, ...] = ()) -> None:
        """Ask one passive candidate per free active slot (rule 5), ``avoid`` last."""
        cfg = self._cfg
        free = cfg.active_size - len(self._active) - len(self._pending)
        if free > 0:
            chosen = self._sample([p for p in self._passive if p not in self._pending and p not in avoid], free)
            if len(chosen) < free:
                chosen += self._sample([p for p in avoid if p in self._passive and p not in self._pending],
                                       free - len(chosen))
            high = not self._active or self._fill_backoff >= cfg.fill_backoff_max  # rule 5's last resort
            for peer in chosen:
                self._pending[peer] = now + cfg.neighbor_timeout
                out.append(ViewSend(peer, Neighbor(self._me, high)))
        self._schedule_fill(now)

    def _keep_filling(self, now: float) -> None:
        """Rule 5: while a slot is free and a candidate known, a fill is always scheduled."""
        if self._fill_at is None and self._passive:
            self._schedule_fill(now)

    def _schedule_fill(self, now: float) -> None:
        if len(self._active) >= self._cfg.active_size:
            self._fill_at = None
            return
        at = now + self._cfg.fill_interval * self._fill_backoff
        if self._fill_at is None or at < self._fill_at:
            self._fill_at = at

    def _add_active(self, now: float, peer: str, out: list[HyParViewEffect]) -> None:
        if peer == self._me or peer in self._active:
            return
        if len(self._active) >= self._cfg.active_size:  # rule 3
            victim = self._rng.choice(list(self._active))
            del self._active[victim]
            out.append(ViewSend(victim, Disconnect(self._me)))
            if not self._linked(victim):
                out.append(NeighborDown(victim))
            self._add_passive(victim)
        linked = self._linked(peer)
        self._passive.pop(peer, None)
        self._pending.pop(peer, None)
        self._active[peer] = None
        if not linked:
            out.append(NeighborUp(peer))
        self._join_at = None
        if len(self._active) >= self._cfg.active_size:
            self._fill_at = None

    def _add_passive(self, peer: str, evict_first: tuple[str, ...] = ()) -> None:
        if peer == self._me or peer in self._active or peer in self._passive:
            return
        if len(self._passive) >= self._cfg.passive_size:
            victim = next((p for p in evict_first if p in self._passive), None)
            if victim is None:
                victim = self._rng.choice(list(self._passive))
            del self._passive[victim]
            self._pending.pop(victim, None)
        self._passive[peer] = None

    def _merge_passive(self, peers: tuple[str, ...], evict_first: tuple[str, ...]) -> None:
        for peer in peers:
            self._add_passive(peer, evict_first)

    def _random_active(self, exclude: tuple[str, ...]) -> str | None:
        candidates = [p for p in self._active if p not in exclude]
        return self._rng.choice(candidates) if candidates else None

    def _sample(self, items: list[str], k: int) -> list[str]:
        return self._rng.sample(items, k) if k < len(items) else list(items)
