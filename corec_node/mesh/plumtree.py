"""Plumtree broadcast (Leitao, Pereira, Rodrigues, "Epidemic Broadcast Trees", SRDS 2007)
as a pure state machine.

A broadcast travels a spanning tree grown from the gossip overlay: each node pushes the
full message to its *eager* peers and only announces its id (``IHave``) to its *lazy*
peers. A duplicate prunes the link it came over to lazy, so after the first broadcasts
the eager links form a tree and a broadcast costs about N - 1 full messages. When a tree
link breaks, the lazy announcements reveal the gap and a ``Graft`` pulls the message and
makes that link eager again: the tree repairs itself without a global view.

Sans-I/O like the other mesh cores: every input carries ``now``; ``next_deadline`` says
when ``on_timer`` has work; effects (``TreeSend``, ``Deliver``) are returned in order. The
neighbours are the overlay's (``hyparview.py``): the caller forwards its ``NeighborUp``
and ``NeighborDown`` to ``neighbor_up`` and ``neighbor_down``. Views are insertion-ordered
dicts so the same inputs give the same effects in every process.

Rules (the code refers to them):

Rule 1. Neighbours start eager (a new link carries the next broadcast in full); a
    neighbour that goes down leaves both sets and its pending announcements.

Rule 2. A new message (by id, ``(origin, seq)``) is delivered once, cached for grafts,
    and forwarded with ``hops + 1`` in full to eager peers and by ``IHave`` to lazy peers,
    never back to its sender, and not at all past ``max_hops``; its sender becomes eager.
    A duplicate moves its sender to lazy and answers ``Prune``, which does the same on the
    other side.

Rule 3. Ids are remembered in a bounded seen set (``RecentIds``: until ``seen_ttl / 2`` s
    or ``seen_size / 2`` later ids have passed, whichever comes first): a copy older than
    that (impossible within the hop bound) could be delivered twice. A node numbers its
    broadcasts from ``first_seq``, a value no earlier life at its address reached (the
    caller's: the simulator shifts the life's number high, a shell would take its start's
    wall clock in microseconds), so that a node restarted at the same address is not taken
    for its former self, whose ids the others still hold, and its news dropped as seen.

Rule 4. ``IHave`` for an unknown id starts a timer of ``missing_timeout``; if the message
    has not come when it fires, the first announcer is moved to eager and sent ``Graft``,
    and the next announcer is tried ``graft_timeout`` later, until one delivers.

Rule 5. ``Graft`` makes the sender eager and is answered with the cached messages it
    names. Lazy announcements are batched per peer and flushed 0.5-1.5 ``ihave_interval``
    after the first (each node its own delay); an id the peer announced or sent to us
    meanwhile is left out (it holds it), so a lazy link mostly carries one announcement of
    a broadcast, from the end that flushes first.

Rule 6. Messages from a peer that is not a neighbour (a race with its ``NeighborDown``)
    are still delivered and answered, but never make it eager.

Rule 7. A payload the caller calls periodic (``periodic``: its next copy says more, as a
    block's rows sent again within a few ticks) goes in full to eager peers as any other,
    but is not announced to lazy ones, nor cached for grafts: a lost copy is made good by
    the next, and the announcements of the other broadcasts keep the tree repaired. Lazy links otherwise
    carry one IHAVE a broadcast, which for a cluster's rows is most of what they carry.
"""

from __future__ import annotations

import heapq
import math
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from corec_node.wire.overlay_messages import Graft, IHave, MessageId, Prune
from corec_node.wire.overlay_messages import TreeGossip as Gossip  # the tree's own name for it

__all__ = [
    "Deliver",
    "Gossip",
    "Graft",
    "IHave",
    "MessageId",
    "Plumtree",
    "PlumtreeConfig",
    "PlumtreeEffect",
    "PlumtreeMessage",
    "Prune",
    "RecentIds",
    "TreeSend",
]



@dataclass(frozen=True, slots=True)
class PlumtreeConfig:
    """Hop bound, timers and memory bounds, each with its reason."""

    # A tree path over 10,000 nodes at 8 links is ~8-12 hops; 32 leaves room for grafted
    # detours after failures while bounding how far any copy can wander.
    max_hops: int = 32
    # Lazy announcements leave in batches every 100 ms: one IHave frame per lazy peer per
    # batch, however many broadcasts were made meanwhile.
    ihave_interval: float = 0.1
    # After the first IHave, wait this long for the eager copy before grafting: far above
    # a LAN tree's delivery time (tens of ms), so a healthy tree is not grafted needlessly.
    missing_timeout: float = 0.5
    # Next announcer if the grafted one did not deliver.
    graft_timeout: float = 0.25
    # Seen ids: 64 Ki ids over 2 minutes; at 1 broadcast/s per origin that covers hundreds
    # of origins, and a copy can outlive neither bound within max_hops.
    seen_size: int = 65_536
    seen_ttl: float = 120.0
    # Payloads kept to answer grafts: a graft comes within a second or two of a broadcast;
    # at least cache_size / 2 of the latest are held (RecentIds).
    cache_size: int = 8_192
    cache_ttl: float = 30.0
    max_ihave_ids: int = 256  # ids in one IHave frame (frame size bound)

    def __post_init__(self) -> None:
        if self.max_hops < 1:
            raise ValueError("PlumtreeConfig.max_hops must be >= 1")
        timers = ("ihave_interval", "missing_timeout", "graft_timeout", "seen_ttl", "cache_ttl")
        for name in timers:
            if getattr(self, name) <= 0:
                raise ValueError(f"PlumtreeConfig.{name} must be > 0")
        if min(self.seen_size, self.cache_size, self.max_ihave_ids) < 1:
            raise ValueError("PlumtreeConfig: seen_size, cache_size, max_ihave_ids must be >= 1")


PlumtreeMessage = Gossip | IHave | Graft | Prune  # peer to peer: wire/overlay_messages.py


# -- effects (core to shell) -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TreeSend:
    to: str
    msg: PlumtreeMessage


@dataclass(frozen=True, slots=True)
class Deliver:
    """A broadcast reached this node, once per id (rule 2)."""

    msg_id: MessageId
    payload: Any
    hops: int


PlumtreeEffect = TreeSend | Deliver


class RecentIds:
    """Ids seen lately, each with a value, as two generations of dicts: an id is held until
    ``ttl / 2`` s or ``size / 2`` later ids have passed, whichever comes first, and at most
    ``size`` are held. Half the memory of a map that times each id, which matters when one
    process holds thousands of nodes (the simulator): a broadcast leaves an entry in every
    node."""

    __slots__ = ("_half", "_new", "_old", "_since", "_span")

    def __init__(self, size: int, ttl: float) -> None:
        self._new: dict[MessageId, object] = {}
        self._old: dict[MessageId, object] = {}
        self._half = max(1, size // 2)
        self._span = ttl / 2
        self._since = -math.inf

    def __len__(self) -> int:
        return len(self._new) + len(self._old)

    def __contains__(self, key: MessageId) -> bool:
        return key in self._new or key in self._old

    def put(self, key: MessageId, now: float, value: object = None) -> None:
        if now - self._since >= self._span or len(self._new) >= self._half:
            self._old, self._new, self._since = self._new, {}, now
        self._new[key] = value

    def get(self, key: MessageId) -> object:
        value = self._new.get(key)
        return self._old.get(key) if value is None else value


class _Missing:
    """An id announced but not received: who announced it, and when to graft next."""

    __slots__ = ("announcers", "deadline")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.announcers: list[tuple[str, int]] = []


class Plumtree:
    """One node's broadcast tree state. ``broadcast`` originates, ``handle`` takes peer
    messages, ``on_timer`` at ``next_deadline()`` grafts and flushes announcements."""

    __slots__ = (
        "_cache",
        "_cfg",
        "_eager",
        "_flush_at",
        "_ihave_delay",
        "_lazy",
        "_lazy_queue",
        "_me",
        "_missing",
        "_periodic",
        "_seen",
        "_seq",
        "_timers",
        "delivered",
        "duplicates",
        "grafts",
    )

    def __init__(self, me: str, config: PlumtreeConfig | None = None, first_seq: int = 0,
                 periodic: Callable[[Any], bool] | None = None) -> None:
        self._me = me
        self._periodic = periodic  # rule 7
        self._cfg = cfg = config or PlumtreeConfig()
        self._eager: dict[str, None] = {}
        self._lazy: dict[str, None] = {}
        self._seen = RecentIds(cfg.seen_size, cfg.seen_ttl)
        self._cache = RecentIds(cfg.cache_size, cfg.cache_ttl)  # id -> (payload, hops)
        self._missing: dict[MessageId, _Missing] = {}
        self._timers: list[tuple[float, MessageId]] = []  # heap; stale entries skipped
        self._lazy_queue: dict[str, list[tuple[MessageId, int]]] = {}
        self._flush_at: float | None = None
        # rule 5: each node its own delay, 0.5-1.5 intervals by its address (no rng here), so
        # one end of a lazy link mostly flushes first and the other hears it before its own
        self._ihave_delay = cfg.ihave_interval * (0.5 + zlib.crc32(me.encode()) % 1024 / 1024)
        self._seq = first_seq  # rule 3
        self.delivered = 0  # counters for tests and benchmarks
        self.duplicates = 0
        self.grafts = 0

    # -- reading ------------------------------------------------------------------------

    @property
    def me(self) -> str:
        return self._me

    @property
    def eager_peers(self) -> tuple[str, ...]:
        return tuple(self._eager)

    @property
    def lazy_peers(self) -> tuple[str, ...]:
        return tuple(self._lazy)

    # -- neighbours (rule 1) ------------------------------------------------------------

    def neighbor_up(self, now: float, peer: str) -> list[PlumtreeEffect]:
        if peer != self._me:
            self._lazy.pop(peer, None)
            self._eager[peer] = None
        return []

    def neighbor_down(self, now: float, peer: str) -> list[PlumtreeEffect]:
        self._eager.pop(peer, None)
        self._lazy.pop(peer, None)
        self._lazy_queue.pop(peer, None)
        for missing in self._missing.values():
            if missing.announcers:
                missing.announcers = [a for a in missing.announcers if a[0] != peer]
        return []

    # -- broadcasting (rule 2) ----------------------------------------------------------

    def broadcast(self, now: float, payload: Any) -> tuple[MessageId, list[PlumtreeEffect]]:
        """Originate a broadcast; it is not delivered back to this node."""
        self._seq += 1
        msg_id = (self._me, self._seq)
        self._seen.put(msg_id, now)
        if not self._is_periodic(payload):  # rule 7: nobody will graft it
            self._cache.put(msg_id, now, (payload, 0))
        out: list[PlumtreeEffect] = []
        self._forward(now, msg_id, payload, 0, None, out)
        return msg_id, out

    def handle(self, now: float, msg: PlumtreeMessage) -> list[PlumtreeEffect]:
        out: list[PlumtreeEffect] = []
        match msg:
            case Gossip():
                self._on_gossip(now, msg, out)
            case IHave():
                self._on_ihave(now, msg)
            case Graft():
                self._on_graft(now, msg, out)
            case Prune():
                self._to_lazy(msg.sender)
        return out

    def _on_gossip(self, now: float, msg: Gossip, out: list[PlumtreeEffect]) -> None:
        sender = msg.sender
        if msg.msg_id in self._seen:
            self.duplicates += 1
            self._to_lazy(sender)
            out.append(TreeSend(sender, Prune(self._me)))
            self._held_by(sender, (msg.msg_id,))
            return
        self._seen.put(msg.msg_id, now)
        if not self._is_periodic(msg.payload):  # rule 7: nobody will graft it
            self._cache.put(msg.msg_id, now, (msg.payload, msg.hops))
        self._missing.pop(msg.msg_id, None)
        self.delivered += 1
        out.append(Deliver(msg.msg_id, msg.payload, msg.hops))
        if sender in self._lazy:
            del self._lazy[sender]
            self._eager[sender] = None
        self._forward(now, msg.msg_id, msg.payload, msg.hops, sender, out)

    def _is_periodic(self, payload: Any) -> bool:
        return self._periodic is not None and self._periodic(payload)

    def _forward(
        self,
        now: float,
        msg_id: MessageId,
        payload: Any,
        hops: int,
        sender: str | None,
        out: list[PlumtreeEffect],
    ) -> None:
        if hops >= self._cfg.max_hops:
            return
        for peer in self._eager:
            if peer != sender:
                out.append(TreeSend(peer, Gossip(self._me, msg_id, payload, hops + 1)))
        if self._is_periodic(payload):  # rule 7
            return
        for peer in self._lazy:
            if peer != sender:
                self._lazy_queue.setdefault(peer, []).append((msg_id, hops))
        if self._lazy_queue and self._flush_at is None:
            self._flush_at = now + self._ihave_delay

    def _on_ihave(self, now: float, msg: IHave) -> None:
        held: list[MessageId] = []
        for msg_id, hops in msg.ids:
            if msg_id in self._seen:
                held.append(msg_id)
                continue
            missing = self._missing.get(msg_id)
            if missing is None:
                missing = self._missing[msg_id] = _Missing(now + self._cfg.missing_timeout)
                heapq.heappush(self._timers, (missing.deadline, msg_id))
            missing.announcers.append((msg.sender, hops))
        if held:
            self._held_by(msg.sender, held)

    def _held_by(self, peer: str, ids: Iterable[MessageId]) -> None:
        """Rule 5: ``peer`` holds these ids (it announced or sent them): our own pending
        announcements of them to it would tell it nothing."""
        queued = self._lazy_queue.get(peer)
        if queued:
            drop = set(ids)
            queued[:] = [q for q in queued if q[0] not in drop]
            if not queued:
                del self._lazy_queue[peer]

    def _on_graft(self, now: float, msg: Graft, out: list[PlumtreeEffect]) -> None:
        sender = msg.sender
        if sender in self._lazy:
            del self._lazy[sender]
            self._eager[sender] = None
        for msg_id in msg.ids:
            cached = self._cache.get(msg_id)
            if cached is None:
                continue
            payload, hops = cached  # type: ignore[misc]
            if hops < self._cfg.max_hops:
                out.append(TreeSend(sender, Gossip(self._me, msg_id, payload, hops + 1)))

    def _to_lazy(self, peer: str) -> None:
        if peer in self._eager:
            del self._eager[peer]
            self._lazy[peer] = None

    # -- timers (rules 4 and 5) ---------------------------------------------------------

    def next_deadline(self) -> float | None:
        timers = self._timers
        while timers:
            deadline, msg_id = timers[0]
            missing = self._missing.get(msg_id)
            if missing is not None and missing.deadline == deadline:
                break
            heapq.heappop(timers)  # stale: delivered, or rescheduled
        times = [timers[0][0]] if timers else []
        if self._flush_at is not None:
            times.append(self._flush_at)
        return min(times) if times else None

    def on_timer(self, now: float) -> list[PlumtreeEffect]:
        out: list[PlumtreeEffect] = []
        cfg = self._cfg
        grafts: dict[str, list[MessageId]] = {}
        timers = self._timers
        while timers and timers[0][0] <= now:
            deadline, msg_id = heapq.heappop(timers)
            missing = self._missing.get(msg_id)
            if missing is None or missing.deadline != deadline:
                continue
            if not missing.announcers:
                del self._missing[msg_id]  # nobody left to ask; a new IHave starts over
                continue
            peer, _hops = missing.announcers.pop(0)
            if peer in self._lazy:
                del self._lazy[peer]
                self._eager[peer] = None
            grafts.setdefault(peer, []).append(msg_id)
            missing.deadline = now + cfg.graft_timeout
            heapq.heappush(timers, (missing.deadline, msg_id))
        for peer, ids in grafts.items():
            self.grafts += 1
            out.append(TreeSend(peer, Graft(self._me, tuple(ids))))
        if self._flush_at is not None and now >= self._flush_at:
            self._flush_at = None
            step = cfg.max_ihave_ids
            for peer, items in self._lazy_queue.items():
                for start in range(0, len(items), step):
                    out.append(TreeSend(peer, IHave(self._me, tuple(items[start : start + step]))))
            self._lazy_queue.clear()
        return out
