"""Probing (membership rule 7): probe rounds over a shuffled round-robin, Ping, PingReq to
relays, Ack and Nack, and relaying other members' PingReqs (memberlist's probe loop).

``Prober`` owns the probe in flight, the round order and the relays; it changes Lifeguard's
awareness for its own probes. With a scope (``set_scope``: the overlay's neighbours,
``mesh/overlay.py``) it probes, and asks relays, only among those members: each member is
then watched by the few nodes linked to it, not by all, and a node's direct links stay
bounded whatever the cluster's size. Each round with a scope also probes one live member
outside it, drawn at random: a member all of whose neighbours crashed with it (half a
cluster at once) is watched by nobody, and would stay alive in every list for good; across
the cluster every member is probed from outside about once a round. What a failed probe
means for the target (suspect, rule 8) is the caller's: ``expire_probe`` hands the failed
probe back.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass

from corec_node.mesh.awareness import Awareness
from corec_node.mesh.effects import Effect, Send
from corec_node.mesh.member import LIVE, SUSPECT, Member, MemberTable, random_alive
from corec_node.mesh.membership_config import MembershipConfig
from corec_node.wire.messages import Ack, Nack, Ping, PingReq

__all__ = ["MAX_RELAYS", "NACK_FRACTION", "Probe", "Prober", "probe_spread"]

MAX_RELAYS = 256  # PingReq relays in flight: a PingReq flood cannot grow our memory
NACK_FRACTION = 0.5  # a relay nacks after this share of the base probe timeout (rule 7)


def probe_spread(cfg: MembershipConfig, n: int) -> float:
    """How many probe intervals apart a node of an ``n``-member cluster starts its probes
    (rule 7): 1 up to ``probe_spread_from`` members, then growing with n up to
    ``probe_spread_max``. Each member is probed about once a period cluster-wide (n probers,
    each over n - 1 targets), so spreading keeps what a node sends and answers flat as the
    cluster grows, at the price of a later first probe of a dead member in a large one."""
    return min(max(1.0, n / cfg.probe_spread_from), cfg.probe_spread_max)


@dataclass(slots=True)
class Probe:
    """Our probe in flight."""

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


class Prober:
    """One node's probing state. Times are the membership's "live" clock (rule 16); the
    member table is passed in, read only."""

    def __init__(
        self,
        name: str,
        addr: str,
        config: MembershipConfig,
        rng: random.Random,
        awareness: Awareness,
        *,
        next_probe: float,
    ) -> None:
        self._name = name
        self._addr = addr
        self._cfg = config
        self._rng = rng
        self._awareness = awareness
        self._probe: Probe | None = None
        self._order: list[str] = []
        self._order_pos = 0
        self._probe_first: list[str] = []
        self._scope: frozenset[str] | None = None  # None: every member
        self._size = 1  # with a scope: the cluster's live members at the last round, us included
        self._seq = 0  # numbers our probes and the pings we send as a relay
        self._relays: dict[int, _Relay] = {}
        self._next_probe = next_probe

    # -- timers -----------------------------------------------------------------------

    def expire_probe(
        self, members: Mapping[str, Member], live: float, out: list[Effect]
    ) -> Probe | None:
        """Advance the probe in flight: once the direct wait is over, PingReq to relays and
        the target pinged again; at the end of its period, return it if no Ack came
        (awareness +1 if some relay sent no Nack: they could not answer us either, we may
        be the slow one)."""
        cfg = self._cfg
        p = self._probe
        if p is None:
            return None
        if not p.acked and not p.indirect and live >= p.direct_deadline:
            p.indirect = True
            relays = random_alive(
                self._within(members), self._rng, cfg.indirect_checks, exclude={self._name, p.target}
            )
            p.expected_nacks = len(relays)
            for r in relays:
                out.append(Send(r.addr, PingReq(p.probe, p.target, p.addr, self._addr)))
            # and a second Ping straight to it (memberlist's fallback ping): one lost
            # message, the Ping or its Ack, must not cost a suspicion when the relays' four
            # hops are lost too; its Ack carries the same probe number
            out.append(Send(p.addr, Ping(p.probe, p.target, self._addr)))
        if live < p.deadline:
            return None
        self._probe = None
        if p.acked:
            return None
        if p.expected_nacks > 0 and p.nacks < p.expected_nacks:
            self._awareness.apply(1)
        return p

    def start_probe(self, members: Mapping[str, Member], live: float, out: list[Effect]) -> None:
        """Ping the next target if no probe is in flight and the probe period is due."""
        if self._probe is not None or live < self._next_probe:
            return
        cfg = self._cfg
        target = self._next_target(members)
        if target is None:
            self._next_probe = live + cfg.probe_interval
            return
        scale = self._awareness.score + 1
        self._seq += 1
        p = Probe(
            self._seq,
            target.name,
            target.addr,
            target.inc,
            direct_deadline=live + cfg.probe_timeout * scale,
            deadline=live + cfg.probe_interval * scale,
        )
        self._probe = p
        size = len(self._order) + 1 if self._scope is None else self._size
        self._next_probe = live + cfg.probe_interval * scale * probe_spread(cfg, size)
        out.append(Send(target.addr, Ping(p.probe, target.name, self._addr)))

    def next_deadline(self) -> float:
        """The earliest live time at which ``expire_probe``, ``start_probe`` or
        ``tick_relays`` has work (the shell sleeps until then)."""
        p = self._probe
        if p is None:
            due = self._next_probe
        elif not p.acked and not p.indirect:
            due = p.direct_deadline
        else:
            due = p.deadline
        for r in self._relays.values():
            due = min(due, r.expire_at if r.acked or r.nacked else r.nack_at)
        return due

    def tick_relays(self, live: float, out: list[Effect]) -> None:
        """Nack the askers whose target has not answered in time; drop expired relays."""
        for seq, r in list(self._relays.items()):
            if not r.acked and not r.nacked and live >= r.nack_at:
                r.nacked = True
                out.append(Send(r.reply_to, Nack(r.probe, r.target)))
            if live >= r.expire_at:
                del self._relays[seq]

    # -- messages ---------------------------------------------------------------------

    def on_ping(self, msg: Ping, out: list[Effect]) -> None:
        if msg.target != self._name:
            return  # meant for whoever had this address before: let its prober time out
        out.append(Send(msg.reply_to, Ack(msg.probe, self._name)))

    def on_ack(self, msg: Ack, out: list[Effect]) -> None:
        p = self._probe
        if p is not None and not p.acked and msg.probe == p.probe and msg.target == p.target:
            p.acked = True
            self._awareness.apply(-1)
            return
        r = self._relays.get(msg.probe)
        if r is not None and not r.acked and msg.target == r.target:
            r.acked = True  # relayed even after a Nack: a late Ack still saves the target
            out.append(Send(r.reply_to, Ack(r.probe, r.target)))

    def on_ping_req(self, msg: PingReq, live: float, out: list[Effect]) -> None:
        if msg.target == self._name:
            out.append(Send(msg.reply_to, Ack(msg.probe, self._name)))
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
        out.append(Send(msg.target_addr, Ping(self._seq, msg.target, self._addr)))

    def on_nack(self, msg: Nack) -> None:
        p = self._probe
        if p is not None and msg.probe == p.probe and msg.target == p.target:
            p.nacks += 1

    # -- the round --------------------------------------------------------------------

    def set_scope(self, names: frozenset[str] | None) -> None:
        """Probe only ``names`` from the next round on (None: every member)."""
        if names != self._scope:
            self._scope = names
            self._order_pos = len(self._order)  # the next target starts a new round

    def _within(self, members: Mapping[str, Member]) -> Mapping[str, Member]:
        scope = self._scope
        if scope is None:
            return members
        return {n: members[n] for n in scope if n in members}

    def insert(self, name: str) -> None:
        """A member became live: put it at a random place in the rest of this round."""
        if self._scope is not None and name not in self._scope:
            return  # first: within the overlay, most members are outside it, and the scan costs O(n)
        if name == self._name or name in self._order[self._order_pos :]:
            return
        self._order.insert(self._rng.randint(self._order_pos, len(self._order)), name)

    def probe_soon(self, name: str) -> None:
        """Someone else suspects ``name``: probe it next, so our verdict follows soon."""
        if name not in self._probe_first:
            self._probe_first.append(name)

    def probe_now(self, name: str, live: float) -> None:
        """A transport hint on ``name``: probe it next, at once if no probe is in flight."""
        self.probe_soon(name)
        if self._probe is None:
            self._next_probe = min(self._next_probe, live)

    def forget(self, name: str) -> None:
        """``name`` was reaped."""
        if name in self._probe_first:
            self._probe_first.remove(name)

    def stop(self) -> None:
        """We left: no probe in flight, no relays."""
        self._probe = None
        self._relays.clear()

    def _next_target(self, members: MemberTable) -> Member | None:
        scope = self._scope
        while self._probe_first:
            m = members.get(self._probe_first.pop(0))
            if m is not None and m.status == SUSPECT and (scope is None or m.name in scope):
                return m
        for _ in range(2):
            while self._order_pos < len(self._order):
                name = self._order[self._order_pos]
                self._order_pos += 1
                m = members.get(name)
                if m is not None and m.status in LIVE and name != self._name:
                    return m
            self._order = sorted(
                n for n, m in self._within(members).items() if m.status in LIVE and n != self._name
            )
            if self._scope is not None:  # spread by the cluster's size all the same: k watchers
                # of a member, each over k targets, probe it as often as n probers over n - 1 do
                me = members.get(self._name)
                others = members.live - (me is not None and me.status in LIVE)
                self._size = 1 + others
                outside = random_alive(members, self._rng, 1, exclude={self._name, *self._scope})
                self._order += [m.name for m in outside]  # watched by nobody else, maybe
            self._rng.shuffle(self._order)
            self._order_pos = 0
            if not self._order:
                return None
        return None
