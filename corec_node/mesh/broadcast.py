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
"""

from __future__ import annotations

import math

from corec_node.wire.messages import MemberState

__all__ = ["BroadcastQueue", "retransmit_limit"]


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
