"""Lifeguard local health: a score that rises when this node looks like the slow one.

When our own event loop stalls, acks sit unread and we would accuse healthy peers. Lifeguard
answers by stretching our own timeouts while we are unhealthy: every probe timeout, probe
interval and suspicion timeout is multiplied by ``score + 1``. The score rises on evidence
against ourselves (a failed probe whose relays did not even send a Nack, having to refute a
suspicion about ourselves, a measured loop stall) and falls by one on each successful probe.
As memberlist's awareness.go, it is capped at ``max_multiplier - 1``.
"""

from __future__ import annotations

__all__ = ["Awareness"]


class Awareness:
    __slots__ = ("_max", "_score")

    def __init__(self, max_multiplier: int) -> None:
        if max_multiplier < 1:
            raise ValueError(f"awareness max multiplier must be >= 1, got {max_multiplier}")
        self._max = max_multiplier
        self._score = 0

    @property
    def score(self) -> int:
        return self._score

    def apply(self, delta: int) -> int:
        """Add ``delta`` (may be negative), clamped to ``[0, max_multiplier - 1]``."""
        self._score = min(self._max - 1, max(0, self._score + delta))
        return self._score

    def scale(self, timeout: float) -> float:
        return timeout * (self._score + 1)
