"""Push-pull state sync (membership rules 10, 11, 12, 15): joining with retries, the
post-join resyncs, periodic anti-entropy, reconnecting to dead members, the gap resync, and
pushing to the members of a restored snapshot (memberlist's pushPull and join).

``PushPull`` owns which pushes are outstanding and which joins are pending; merging what a
push or reply carries is the caller's (rules 2-6, 10), done before handing the message here.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from dataclasses import dataclass

from corec_node.mesh.effects import Effect, Send
from corec_node.mesh.member import (
    LEFT,
    LIVE,
    MemberTable,
    n_live,
    random_alive,
    sorted_states,
)
from corec_node.mesh.membership_config import MembershipConfig
from corec_node.wire.messages import MemberState, StatePush, StateReply

__all__ = [
    "FORMER_KEPT",
    "GAP_RESYNC_NODE_PERIODS",
    "GAP_RESYNC_PERIODS",
    "JOIN_RETRY_MAX_FACTOR",
    "RESTORE_FANOUT",
    "PushPull",
    "forward",
]

JOIN_RETRY_MAX_FACTOR = 8  # join retries back off up to 8 x join_retry
FORMER_KEPT = 64  # reaped members' addresses a node left alone knocks on (rule 12)
RESTORE_FANOUT = 8  # restore pushes to this many remembered members at once, the rest later
GAP_RESYNC_PERIODS = 5  # at most one gap-triggered push-pull per sender per 5 probe intervals
GAP_RESYNC_NODE_PERIODS = 1  # and at most one per node per probe interval, whatever the loss and the cluster's size


def forward(addr: str, reply_to: str, st: MemberState) -> Send:
    """Show an accused member the verdict someone holds on it (rule 10)."""
    return Send(addr, StatePush(join=False, reply_to=reply_to, members=(st,)))


@dataclass(slots=True)
class _PendingJoin:
    restore: bool  # from restore(): done once any member answers
    next_at: float
    interval: float


class PushPull:
    """One node's push-pull bookkeeping. Times are the membership's "live" clock (rule 16)
    except where ``now`` is asked for; the member table is passed in, read only."""

    def __init__(
        self,
        name: str,
        addr: str,
        config: MembershipConfig,
        rng: random.Random,
        *,
        next_push_pull: float,
        next_reconnect: float,
    ) -> None:
        self._name = name
        self._addr = addr
        self._cfg = config
        self._rng = rng
        self._pending: dict[str, _PendingJoin] = {}
        self._pending_due: float | None = None  # their earliest next_at; None: to be found again
        # rule 12, asked again while no other member is live: every address given to join,
        # and the last FORMER_KEPT dead members reaped (a founder has no join address)
        self._seeds: dict[str, None] = {}
        self._former: dict[str, None] = {}
        # addr -> (StatePushes not yet answered, live time of the last): two pushes to one
        # member in one period get two replies, and the second must not pass for an alias's
        self._outstanding: dict[str, tuple[int, float]] = {}
        self._joined_any = False
        self._resync: list[tuple[float, str]] = []  # (live time, addr): post-join push-pulls
        self._gap_sync: dict[str, float] = {}
        self._last_gap_sync = -math.inf  # live time of the last gap push-pull, with anyone
        self.gap_resyncs = 0  # gap push-pulls started (a gap soon after the last with its sender starts none)
        self._next_push_pull = next_push_pull
        self._next_reconnect = next_reconnect

    def pending_joins(self) -> list[str]:
        """Addresses pushed to by join/restore that have not answered yet (rule 11)."""
        return list(self._pending)

    def push(
        self, addr: str, members: MemberTable, live: float, *, join: bool
    ) -> Send:
        """Our full state to ``addr``; its StateReply will settle it."""
        count, _ = self._outstanding.get(addr, (0, live))
        self._outstanding[addr] = (count + 1, live)
        return Send(
            addr, StatePush(join=join, reply_to=self._addr, members=tuple(sorted_states(members)))
        )

    # -- inputs -----------------------------------------------------------------------

    def join(
        self, addrs: Iterable[str], members: MemberTable, live: float
    ) -> list[Effect]:
        """Rule 11: push to each address and keep it pending until answered."""
        addrs = [a for a in dict.fromkeys(addrs) if a != self._addr]
        self._seeds.update(dict.fromkeys(addrs))
        return self._ask(addrs, members, live)

    def _ask(self, addrs: Iterable[str], members: MemberTable, live: float) -> list[Effect]:
        out: list[Effect] = []
        for addr in addrs:
            self._pending[addr] = _PendingJoin(
                False, live + self._cfg.join_retry, self._cfg.join_retry
            )
            self._pending_due = None
            out.append(self.push(addr, members, live, join=True))
        return out

    def restore(
        self, targets: list[str], members: MemberTable, live: float, out: list[Effect]
    ) -> None:
        """Rule 15: push to the restored members' addresses, RESTORE_FANOUT at once, the rest
        one join_retry later per batch; pending until any member answers."""
        self._rng.shuffle(targets)
        for i, addr in enumerate(targets):
            if addr in self._pending:
                continue
            batch = i // RESTORE_FANOUT
            first = live + self._cfg.join_retry * batch
            self._pending[addr] = _PendingJoin(
                True, first if batch else live + self._cfg.join_retry, self._cfg.join_retry
            )
            self._pending_due = None
            if batch == 0:
                out.append(self.push(addr, members, live, join=True))

    def on_gap(self, sender: str, members: MemberTable, live: float) -> list[Effect]:
        """A sequence gap on ``sender``'s stream that may have lost an update's last copy
        (membership rule 9): push-pull with it, at most once per GAP_RESYNC_PERIODS probe
        intervals per sender and once per GAP_RESYNC_NODE_PERIODS with anyone, so loss
        cannot make a node resync without bound. What a skipped gap lost comes with the
        next push-pull (a later gap's, anti-entropy's) or, for a death, with our own probes."""
        m = members.get(sender)
        if m is None or m.status == LEFT:
            return []
        last = self._gap_sync.get(sender)
        period = self._cfg.probe_interval
        if last is not None and live - last < GAP_RESYNC_PERIODS * period:
            return []
        if live - self._last_gap_sync < GAP_RESYNC_NODE_PERIODS * period:
            return []
        self._gap_sync[sender] = live
        self._last_gap_sync = live
        self.gap_resyncs += 1
        return [self.push(m.addr, members, live, join=False)]

    def on_state_push(
        self, sender: str, msg: StatePush, members: MemberTable, out: list[Effect]
    ) -> None:
        """After the merge: the pusher reached us, so joining it is done; answer it."""
        if sender != self._name:
            m = members.get(sender)
            if m is not None:
                self._settled(m.addr)  # it reached us: joining it is done
            self._settled(msg.reply_to)
        out.append(Send(msg.reply_to, StateReply(tuple(sorted_states(members)))))

    def on_state_reply(
        self,
        sender: str,
        msg: StateReply,
        members: MemberTable,
        live: float,
        out: list[Effect],
        *,
        refuted: bool,
    ) -> None:
        """After the merge: settle the push it answers, schedule the post-join resyncs after
        the first reply, and if the merge made us refute (``refuted``), push back at once."""
        if sender == self._name:
            addr = next(
                (s.addr for s in msg.members if s.name == sender and s.addr != self._addr), None
            )
        else:
            m = members.get(sender)
            addr = m.addr if m is not None else None
        self._answered(addr, members)
        if not self._joined_any:
            self._joined_any = True
            if addr is not None and sender != self._name:
                period = self._cfg.probe_interval
                self._resync = [(live + period, addr), (live + 5 * period, addr)]
        self._settle_pending(members)
        if refuted and addr is not None and sender != self._name:
            # rule 10: let it see our refutation now
            out.append(self.push(addr, members, live, join=False))

    def forget(self, name: str, dead_at: str | None = None) -> None:
        """``name`` was reaped (``dead_at``: its address, when it was reaped dead, not left)."""
        self._gap_sync.pop(name, None)
        if dead_at is not None and dead_at != self._addr:
            self._former.pop(dead_at, None)
            self._former[dead_at] = None
            if len(self._former) > FORMER_KEPT:
                del self._former[next(iter(self._former))]

    def stop(self) -> None:
        """We left: no more join retries."""
        self._pending.clear()
        self._pending_due = None

    # -- timers -----------------------------------------------------------------------

    def next_deadline(self) -> float:
        """The earliest live time at which ``tick`` has work: a join retry, a resync, the
        next push-pull or reconnect (forgetting old outstanding pushes waits for those)."""
        due = min(self._next_push_pull, self._next_reconnect)
        if self._resync:
            due = min(due, self._resync[0][0])
        if self._pending:
            if self._pending_due is None:  # found again only after a change: a restore pends on every member
                self._pending_due = min(pj.next_at for pj in self._pending.values())
            due = min(due, self._pending_due)
        return due

    def tick(
        self, members: MemberTable, now: float, live: float, out: list[Effect]
    ) -> None:
        """Join retries and resyncs (rule 11), anti-entropy and reconnect (rule 12)."""
        self._tick_joins(members, live, out)
        self._tick_push_pull(members, live, out)
        self._tick_reconnect(members, now, live, out)

    def _tick_joins(self, members: MemberTable, live: float, out: list[Effect]) -> None:
        cfg = self._cfg
        while self._resync and live >= self._resync[0][0]:
            out.append(self.push(self._resync.pop(0)[1], members, live, join=False))
        for addr, pj in list(self._pending.items()):
            if live >= pj.next_at:
                pj.next_at = live + pj.interval
                pj.interval = min(pj.interval * 2, cfg.join_retry * JOIN_RETRY_MAX_FACTOR)
                out.append(self.push(addr, members, live, join=True))
                self._pending_due = None
        horizon = live - cfg.join_retry * JOIN_RETRY_MAX_FACTOR
        for addr in [a for a, (_, t) in self._outstanding.items() if t < horizon]:
            del self._outstanding[addr]

    def _tick_push_pull(
        self, members: MemberTable, live: float, out: list[Effect]
    ) -> None:
        if live < self._next_push_pull:
            return
        n = n_live(members)
        interval = self._cfg.push_pull_interval
        if n > 32:  # memberlist's pushPullScale: fewer full syncs per node as the cluster grows
            interval *= math.ceil(math.log2(n) - math.log2(32)) + 1
        self._next_push_pull = live + interval
        for m in random_alive(members, self._rng, 1, exclude={self._name}):
            out.append(self.push(m.addr, members, live, join=False))

    def _tick_reconnect(
        self, members: MemberTable, now: float, live: float, out: list[Effect]
    ) -> None:
        if live < self._next_reconnect:
            return
        self._next_reconnect = live + self._cfg.reconnect_interval
        me = members.get(self._name)
        others_live = members.live - (me is not None and me.status in LIVE)
        if (self._seeds or self._former) and not self._pending and not others_live:
            out += self._ask(self._seeds | self._former, members, live)  # alone: knock on them again
        dead = sorted(n for n in members.dead if now - members[n].since < self._cfg.reconnect_for)
        if dead:
            addr = members[self._rng.choice(dead)].addr
            out.append(self.push(addr, members, live, join=False))

    # -- settling ---------------------------------------------------------------------

    def _answered(self, addr: str | None, members: MemberTable) -> None:
        """A StateReply came from the member at ``addr``: settle the push it answers."""
        matched = addr if addr is not None and addr in self._outstanding else None
        if matched is None:
            known = {m.addr for m in members.values()}
            aliases = [a for a in self._outstanding if a not in known]
            if len(aliases) == 1:
                matched = aliases[0]  # we pushed to an alias of its address (localhost, a DNS name)
        if matched is not None:
            count, at = self._outstanding[matched]
            if count > 1:
                self._outstanding[matched] = (count - 1, at)
            else:
                del self._outstanding[matched]
            self._settled(matched)
        if addr is not None:
            self._settled(addr)

    def _settled(self, addr: str) -> None:
        if self._pending.pop(addr, None) is not None:
            self._pending_due = None

    def _settle_pending(self, members: MemberTable) -> None:
        if not self._joined_any or not self._pending:
            return
        live_addrs = {m.addr for n, m in members.items() if m.status in LIVE and n != self._name}
        # a new dict, not deletes: a restore's table stays its full size when emptied
        self._pending = {a: pj for a, pj in self._pending.items() if not (pj.restore or a in live_addrs)}
        self._pending_due = None
