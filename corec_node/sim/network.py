"""Virtual network for the simulator: latency, loss, duplication, reordering, partitions.

Pure decisions, no clock and no queue of its own: for one message from ``src`` to ``dst``
the network answers "deliver these copies after these delays" (zero copies: lost). The
cluster puts the copies on its event queue and asks ``reachable`` again at delivery, so a
partition that starts while a message is in flight cuts it.

Real ZeroMQ over TCP never duplicates or reorders within one connection; the simulator can,
on purpose: the cores must not depend on it.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["Network", "NetworkConfig"]


@dataclass(frozen=True, slots=True)
class NetworkConfig:
    loss: float = 0.0  # probability that one copy of a message is dropped
    delay_min: float = 0.0005  # one-way latency, uniform in [delay_min, delay_max): a LAN
    delay_max: float = 0.005
    duplicate: float = 0.0  # probability that a message is delivered twice (own delays)
    reorder: float = 0.0  # probability that a copy is held back by up to reorder_delay extra
    reorder_delay: float = 0.05

    def __post_init__(self) -> None:
        for name in ("loss", "duplicate", "reorder"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"NetworkConfig.{name} must be a probability, got {value}")
        if not 0.0 <= self.delay_min <= self.delay_max:
            raise ValueError(
                f"NetworkConfig needs 0 <= delay_min <= delay_max, got {self.delay_min}, {self.delay_max}"
            )


class Network:
    """Link decisions from one seeded rng; partitions as groups, plus one-way cuts."""

    __slots__ = ("_cut", "_group", "_rng", "config", "lost", "sent")

    def __init__(self, config: NetworkConfig, rng: random.Random) -> None:
        self.config = config
        self._rng = rng
        self._group: dict[str, int] = {}  # name -> partition group; absent means group 0
        self._cut: set[tuple[str, str]] = set()  # (src, dst) links that drop everything
        self.sent = 0
        self.lost = 0

    # -- faults ---------------------------------------------------------------------

    def partition(self, *groups: Iterable[str]) -> None:
        """Split the named nodes into groups that cannot reach each other. Nodes named in
        no group stay in group 0 with whoever else is unnamed."""
        self._group = {}
        for i, group in enumerate(groups, start=1):
            for name in group:
                self._group[name] = i

    def isolate(self, name: str) -> None:
        self._group[name] = max(self._group.values(), default=0) + 1

    def heal(self) -> None:
        self._group = {}
        self._cut = set()

    def cut(self, src: str, dst: str, both: bool = True) -> None:
        self._cut.add((src, dst))
        if both:
            self._cut.add((dst, src))

    def restore_link(self, src: str, dst: str) -> None:
        self._cut.discard((src, dst))
        self._cut.discard((dst, src))

    @property
    def partitioned(self) -> bool:
        return bool(self._group) or bool(self._cut)

    def groups(self) -> dict[str, int]:
        return dict(self._group)

    # -- decisions ------------------------------------------------------------------

    def reachable(self, src: str, dst: str) -> bool:
        group = self._group
        if group and group.get(src, 0) != group.get(dst, 0):
            return False
        return not self._cut or (src, dst) not in self._cut

    def delays(self, src: str, dst: str) -> list[float]:
        """Delays of the copies of one message to deliver (empty: lost or unreachable)."""
        self.sent += 1
        if not self.reachable(src, dst):
            self.lost += 1
            return []
        c = self.config
        rnd = self._rng.random
        copies = 2 if c.duplicate and rnd() < c.duplicate else 1
        out = []
        for _ in range(copies):
            if c.loss and rnd() < c.loss:
                continue
            d = c.delay_min + rnd() * (c.delay_max - c.delay_min)
            if c.reorder and rnd() < c.reorder:
                d += rnd() * c.reorder_delay
            out.append(d)
        if not out:
            self.lost += 1
        return out
