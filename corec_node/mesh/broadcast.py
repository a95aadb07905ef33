"""Retransmit queue for member updates (memberlist's TransmitLimitedQueue, reduced).

Each queued update is sent in up to ``limit`` gossip flushes, where the caller computes
``limit = retransmit_mult * ceil(log10(n + 1))`` from the current cluster size. Our PUB
reaches every subscriber in one hop, so retransmission is not epidemic spread: it covers
what PUB/SUB drops (a subscriber that connected a moment late, a high-water mark).

A newer update about a member replaces the queued one (and starts its count again): an
outdated update is never worth the bytes. Fewest-sent first, then newest first, so a fresh
update is never starved by old ones when a flush is capped.

``quiet`` counts the flushes since the last one that sent some update for the last time:
a receiver that missed only flushes within that count hears everything they carried again
(an update replaced by a newer one is outdated, the newer one goes out in its stead), so
the gap costs it no push-pull (membership rule 9).

``Dissemination`` is rule 9 around the queue: one ``Gossip`` per ``gossip_interval`` at
most, each carrying ``quiet``, and the receiving side's test of whether a gap is covered.
With ``once`` (the overlay, ``mesh/overlay.py``) each update leaves in one flush: the tree
repairs its own losses, and every retransmit would be one more broadcast to every node.
"""

from __future__ import annotations

import math

from corec_node.mesh.effects import Broadcast, Effect
from corec_node.wire.messages import Gossip, MemberState

__all__ = ["MAX_GOSSIP_UPDATES", "BroadcastQueue", "Dissemination", "retransmit_limit"]

MAX_GOSSIP_UPDATES = 64  # updates per Gossip (~4 KB): frames stay small; the rest go next flush
_NEVER = -math.inf


def retransmit_limit(retransmit_mult: int, n: int) -> int:
    """How many flushes carry one update in a cluster of ``n`` members (at least one)."""
    return max(1, retransmit_mult * math.ceil(math.log10(max(n, 1) + 1)))


class BroadcastQueue:
    __slots__ = ("_items", "_order", "quiet")

    def __init__(self) -> None:
        self._items: dict[str, tuple[MemberState, int, int]] = {}  # name -> (state, sent, order)
        self._order = 0
        self.quiet = 0  # flushes since the last that sent an update for the last time

    def __len__(self) -> int:
        return len(self._items)

    def queue(self, state: MemberState) -> None:
        """Queue ``state``, replacing any update about the same member."""
        self._order += 1
        self._items[state.name] = (state, 0, self._order)

    def drop(self, name: str) -> None:
        self._items.pop(name, None)

    def pending(self, name: str) -> MemberState | None:
        item = self._items.get(name)
        return item[0] if item is not None else None

    def take(self, limit: int, max_items: int) -> list[MemberState]:
        """The updates for one flush (at most ``max_items``); each counts as sent once more,
        and one sent ``limit`` times leaves the queue. Read ``quiet`` first: it is what
        this flush's Gossip carries."""
        ranked = sorted(self._items.values(), key=lambda item: (item[1], -item[2]))[:max_items]
        out: list[MemberState] = []
        final = False
        for state, sent, order in ranked:
            out.append(state)
            if sent + 1 >= limit:
                del self._items[state.name]
                final = True
            else:
                self._items[state.name] = (state, sent + 1, order)
        if out:
            self.quiet = 0 if final else self.quiet + 1
        return out


class Dissemination:
    """Membership rule 9: what this node originates leaves in rate-limited Gossip flushes;
    what others' flushes say about their own gaps decides whether ours need a push-pull."""

    __slots__ = ("_interval", "_last_flush", "_mult", "gaps_covered", "once", "queue")

    def __init__(self, gossip_interval: float, retransmit_mult: int) -> None:
        self._interval = gossip_interval
        self._mult = retransmit_mult
        self._last_flush = _NEVER
        self.queue = BroadcastQueue()
        self.gaps_covered = 0  # mbr gaps whose missed Gossip carried nothing for the last time: no push-pull
        self.once = False  # each update in one flush (the overlay)

    def __len__(self) -> int:
        return len(self.queue)

    def next_flush(self) -> float:
        """When (on the live clock) the next flush may go: never while nothing is queued."""
        return self._last_flush + self._interval if len(self.queue) else math.inf

    def flush_now(self) -> None:
        """Let the next flush go at once (a leave: the news must not wait out the interval)."""
        self._last_flush = _NEVER

    def flush(self, live: float, n: int, out: list[Effect]) -> None:
        """One Gossip with the queued updates, if one is due; ``n``: the cluster's size."""
        if not len(self.queue) or live < self._last_flush + self._interval:
            return
        quiet = self.queue.quiet
        limit = 1 if self.once else retransmit_limit(self._mult, n)
        updates = self.queue.take(limit, MAX_GOSSIP_UPDATES)
        if updates:
            self._last_flush = live
            out.append(Broadcast(Gossip(tuple(updates), quiet)))

    def covered(self, missed: int, quiet: int | None) -> bool:
        """Did the sender's later flushes repeat all that its ``missed`` ones carried? Only
        when the Gossip after the gap says it sent nothing for the last time since then."""
        if quiet is not None and missed <= quiet:
            self.gaps_covered += 1
            return True
        return False
