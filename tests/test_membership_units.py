"""Membership's parts on their own: precedence, suspicion, awareness, retransmit queue,
sequence tracking, config; and a hypothesis state machine showing that replicas receiving
the same updates in any order converge (rule 2 is a max over a total order)."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from corec_node.mesh.awareness import Awareness
from corec_node.mesh.broadcast import BroadcastQueue, retransmit_limit
from corec_node.mesh.effects import MemberChanged, Send
from corec_node.mesh.member import (
    Member,
    MemberTable,
    SharedMembers,
    SharedRecords,
    random_alive,
    sorted_states,
)
from corec_node.mesh.membership import Membership, MembershipConfig, supersedes
from corec_node.mesh.probing import probe_spread
from corec_node.mesh.suspicion import Suspicion, expected_confirmations, suspicion_timeouts
from corec_node.wire.messages import (
    Ack,
    Gossip,
    MemberState,
    MemberStatus,
    Ping,
    StatePush,
    StateReply,
)

ALIVE, SUSPECT, DEAD, LEFT = (
    MemberStatus.ALIVE,
    MemberStatus.SUSPECT,
    MemberStatus.DEAD,
    MemberStatus.LEFT,
)


def ms(name: str, inc: int, status: MemberStatus) -> MemberState:
    return MemberState(name, f"{name}:7400", f"{name}:7401", inc, status)


def node(name: str = "me", now: float = 0.0) -> Membership:
    return Membership(
        name, f"{name}:7400", f"{name}:7401", MembershipConfig.test(), random.Random(1), now
    )


# -- precedence (rule 2) -----------------------------------------------------------------

PRECEDENCE = [
    # (held inc, held status), (update inc, update status), update wins?
    ((1, ALIVE), (1, ALIVE), False),
    ((1, ALIVE), (1, SUSPECT), True),
    ((1, ALIVE), (1, DEAD), True),
    ((1, ALIVE), (1, LEFT), True),
    ((1, ALIVE), (2, ALIVE), True),
    ((1, ALIVE), (0, DEAD), False),  # older incarnation: stale whatever it says
    ((1, SUSPECT), (1, ALIVE), False),  # same inc: only the member's refutation (inc + 1) clears it
    ((1, SUSPECT), (2, ALIVE), True),
    ((1, SUSPECT), (1, SUSPECT), False),
    ((1, SUSPECT), (1, DEAD), True),
    ((1, DEAD), (1, SUSPECT), False),
    ((1, DEAD), (1, ALIVE), False),
    ((1, DEAD), (2, ALIVE), True),
    ((1, DEAD), (1, LEFT), True),  # force-leave of a dead member keeps its incarnation
    ((1, LEFT), (1, DEAD), False),  # left is final for its incarnation
    ((1, LEFT), (1, ALIVE), False),
    ((1, LEFT), (2, ALIVE), True),  # a rejoin after leave
    ((1, LEFT), (2, DEAD), True),  # it rejoined, then died
    ((2, LEFT), (1, LEFT), False),
]


@pytest.mark.parametrize(("held", "update", "wins"), PRECEDENCE)
def test_supersedes_table(held, update, wins):
    assert supersedes(update[0], update[1], held[0], held[1]) is wins


def move_to(me: Membership, name: str, inc: int, status: MemberStatus) -> None:
    """Bring ``name`` to (inc, status) by gossip; a dead verdict needs our suspicion first."""
    me.handle("y", Gossip((ms(name, 0, ALIVE),)), 0.0)
    if status == DEAD:
        me.handle("y", Gossip((ms(name, inc, SUSPECT),)), 0.0)
    me.handle("y", Gossip((ms(name, inc, status),)), 0.0)


@pytest.mark.parametrize(("held", "update", "wins"), PRECEDENCE)
def test_gossip_applies_the_precedence_table(held, update, wins):
    me = node()
    move_to(me, "x", *held)
    assert (me.member("x").inc, me.member("x").status) == held
    out = me.handle("z", Gossip((ms("x", *update),)), 0.0)
    expected = update if wins else held
    confirmed = held[1] == SUSPECT and held[0] == update[0]
    if wins and update[1] == DEAD and held[1] in (ALIVE, SUSPECT) and not confirmed:
        expected = (update[0], SUSPECT)  # rule 8: a verdict we did not suspect is a suspicion
    assert (me.member("x").inc, me.member("x").status) == expected
    changed = [e for e in out if isinstance(e, MemberChanged)]
    assert len(changed) == (1 if expected[1] != held[1] else 0)


def test_a_gossiped_dead_verdict_is_final_only_after_our_own_suspicion():
    me = node()
    me.handle("y", Gossip((ms("x", 3, ALIVE),)), 0.0)
    out = me.handle("z", Gossip((ms("x", 3, DEAD),)), 0.0)
    assert me.member("x").status == SUSPECT
    assert [(e.new, e.reason) for e in out] == [(SUSPECT, "suspected by z")]
    out = me.handle("z", Gossip((ms("x", 3, DEAD),)), 0.1)  # a retransmit: now we suspect it
    assert me.member("x").status == DEAD
    assert [(e.old, e.new) for e in out] == [(SUSPECT, DEAD)]


def test_strangers_come_in_only_alive_or_suspect():
    me = node()
    me.handle("y", Gossip((ms("d", 3, DEAD), ms("l", 1, LEFT))), 0.0)
    assert me.member("d") is None and me.member("l") is None
    me.handle("y", Gossip((ms("s", 2, SUSPECT), ms("a", 0, ALIVE))), 0.0)
    assert me.member("s").status == SUSPECT and me.member("a").status == ALIVE


def test_a_live_member_keeps_its_address():
    me = node()
    me.handle("y", Gossip((ms("x", 0, ALIVE),)), 0.0)
    impostor = MemberState("x", "evil:1", "evil:2", 9, ALIVE)
    assert me.handle("y", Gossip((impostor,)), 0.0) == []
    assert me.member("x").addr == "x:7400" and me.member("x").inc == 0
    # once dead, a newer incarnation may move it (a restart on another port)
    me.handle("y", Gossip((ms("x", 0, SUSPECT),)), 0.0)
    me.handle("y", Gossip((ms("x", 0, DEAD),)), 0.0)
    out = me.handle("x", Gossip((MemberState("x", "x:9000", "x:9001", 1, ALIVE),)), 1.0)
    assert me.member("x").addr == "x:9000" and me.member("x").status == ALIVE
    assert [(e.old, e.new, e.reason) for e in out] == [(DEAD, ALIVE, "refuted")]
    # a new PUB address at the same direct address is taken and reported
    out = me.handle("x", Gossip((MemberState("x", "x:9000", "x:9002", 2, ALIVE),)), 2.0)
    assert me.member("x").pub == "x:9002"
    assert [(e.old, e.new, e.reason) for e in out] == [(ALIVE, ALIVE, "address changed")]


def test_push_pull_verdicts_are_forwarded_to_the_accused_not_adopted():
    me = node()
    me.handle("y", Gossip((ms("x", 2, ALIVE),)), 0.0)
    out = me.handle("y", StatePush(join=False, reply_to="y:7400", members=(ms("x", 2, DEAD),)), 0.0)
    assert me.member("x").status == ALIVE
    forwarded = [e for e in out if e.to == "x:7400"]
    assert len(forwarded) == 1 and forwarded[0].msg.members == (ms("x", 2, DEAD),)
    # a suspect stranger over push-pull: a member again (alive), and told
    out = me.handle("y", StateReply((ms("s", 4, SUSPECT),)), 0.0)
    assert me.member("s").status == ALIVE and me.member("s").inc == 4
    assert [e.to for e in out if hasattr(e, "to")] == ["s:7400"]


def test_over_the_overlay_a_push_pulled_death_is_a_suspicion_of_our_own_that_we_do_not_spread():
    """Rule 10 over the overlay: a node cut off from the tree missed the verdicts; a dead
    report makes the member suspect for it alone, on its own timer, and a refutation (which
    the forward asks for) ends it. Without the overlay the same report changes nothing."""
    me = node()
    me.within_overlay(frozenset())
    me.handle("y", Gossip((ms("x", 2, ALIVE), ms("z", 1, ALIVE))), 0.0)
    out = me.handle("y", StatePush(join=False, reply_to="y:7400", members=(ms("x", 2, DEAD), ms("z", 1, DEAD))), 0.0)
    assert me.member("x").status == SUSPECT and me.member("x").inc == 2
    assert [e.to for e in out if type(e) is Send] == ["x:7400", "z:7400", "y:7400"]  # the forwards, the answer
    assert me.broadcasts_pending() == 0  # nobody else hears of it from us
    me.handle("z", Gossip((ms("z", 2, ALIVE),)), 0.01)  # z lives: its refutation
    assert me.member("z").status == ALIVE and me.member("z").inc == 2
    for step in range(1, 300):  # 30 s of ticks (one jump would count as our own stall, rule 16)
        me.tick(step / 10)
    assert me.member("x").status == DEAD

    full = node("full")
    full.handle("y", Gossip((ms("x", 2, ALIVE),)), 0.0)
    full.handle("y", StatePush(join=False, reply_to="y:7400", members=(ms("x", 2, DEAD),)), 0.0)
    assert full.member("x").status == ALIVE


# -- suspicion (rule 8) ------------------------------------------------------------------


def test_suspicion_timeouts_scale_with_cluster_size():
    assert suspicion_timeouts(4, 2, 1, 0.2) == pytest.approx((0.8, 1.6))
    assert suspicion_timeouts(4, 2, 10, 0.2) == pytest.approx(
        (0.8, 1.6)
    )  # floor of 1 up to 10 nodes
    assert suspicion_timeouts(4, 2, 100, 0.2) == pytest.approx((1.6, 3.2))
    assert expected_confirmations(3, 2) == 0
    assert expected_confirmations(3, 3) == 1
    assert expected_confirmations(3, 10) == 3


def test_confirmations_shrink_the_timeout_towards_min():
    s = Suspicion(inc=1, start=10.0, k=3, min_timeout=0.8, max_timeout=1.6, accuser="a")
    assert s.timeout() == pytest.approx(1.6)
    assert not s.confirm("a")  # the first accuser does not confirm itself
    assert s.confirm("b") and not s.confirm("b")
    assert s.timeout() == pytest.approx(1.6 - 0.8 * math.log(2) / math.log(4))
    assert s.confirm("c") and s.confirm("d")
    assert s.timeout() == pytest.approx(0.8)
    assert not s.confirm("e")  # k reached
    assert s.deadline() == pytest.approx(10.8)
    assert s.deadline(scale=3) == pytest.approx(12.4)
    lone = Suspicion(inc=1, start=0.0, k=0, min_timeout=0.8, max_timeout=1.6, accuser=None)
    assert lone.timeout() == pytest.approx(0.8)
    lone.shorten(0.3)  # read before: the timeout it kept gives way
    assert lone.timeout() == pytest.approx(0.3) and lone.deadline() == pytest.approx(0.3)


def test_cores_that_hear_the_same_state_hold_the_same_object():
    """Rule 2 unchanged; what changes is memory: in one process (the simulator) every core
    holds a member's state as one shared object, and a no-op merge finds it by identity."""
    a, b = node("a"), node("b")
    news = Gossip((ms("x", 3, ALIVE),))
    a.handle("y", news, 0.0)
    b.handle("y", news, 0.0)
    assert a._members["x"].state() is news.updates[0] is b._members["x"].state()
    assert not a.handle("z", Gossip((ms("x", 3, ALIVE),)), 0.1)  # equal, not identical: still a no-op
    refuted = ms("x", 4, ALIVE)
    a.handle("z", Gossip((refuted,)), 0.2)
    assert a._members["x"].state() is refuted and a.member("x").inc == 4


# -- awareness, queue, sequence, config --------------------------------------------------


def test_awareness_is_clamped():
    a = Awareness(8)
    assert a.apply(-1) == 0
    assert a.apply(3) == 3 and a.scale(0.1) == pytest.approx(0.4)
    assert a.apply(100) == 7
    with pytest.raises(ValueError):
        Awareness(0)


def test_broadcast_queue_counts_the_flushes_since_an_update_went_for_the_last_time():
    """``quiet`` is what the next Gossip carries (membership rule 9)."""
    q = BroadcastQueue()
    assert q.quiet == 0
    q.queue(ms("a", 0, SUSPECT))
    q.take(limit=3, max_items=10)
    q.take(limit=3, max_items=10)
    assert q.quiet == 2  # a sent twice of three times
    q.queue(ms("b", 0, ALIVE))
    q.take(limit=3, max_items=10)
    assert q.quiet == 0 and q.pending("a") is None  # a's last copy went in this flush
    q.take(limit=3, max_items=10)
    assert q.quiet == 1
    q.queue(ms("b", 1, ALIVE))  # replaces b's update: the old one never has a last copy
    q.take(limit=3, max_items=10)
    assert q.quiet == 2
    q.take(limit=3, max_items=10)
    q.take(limit=3, max_items=10)
    assert q.quiet == 0 and len(q) == 0
    assert q.take(limit=3, max_items=10) == [] and q.quiet == 0  # no flush, no count


def test_broadcast_queue_replaces_limits_and_orders():
    q = BroadcastQueue()
    q.queue(ms("a", 0, SUSPECT))
    q.queue(ms("b", 0, ALIVE))
    q.queue(ms("a", 1, ALIVE))  # replaces a's older update
    assert len(q) == 2 and q.pending("a") == ms("a", 1, ALIVE)
    assert q.take(limit=2, max_items=1) == [ms("a", 1, ALIVE)]  # newest first among the unsent
    assert q.take(limit=2, max_items=10) == [
        ms("b", 0, ALIVE),
        ms("a", 1, ALIVE),
    ]  # fewest sent first
    assert len(q) == 1 and q.take(2, 10) == [ms("b", 0, ALIVE)] and len(q) == 0
    assert (
        retransmit_limit(4, 1) == 4
        and retransmit_limit(4, 10) == 8
        and retransmit_limit(4, 100) == 12
    )


def test_profiles_and_validation():
    lan = MembershipConfig.lan()
    assert lan == MembershipConfig() == MembershipConfig.profile("lan")
    assert (lan.probe_interval, lan.probe_timeout, lan.indirect_checks) == (0.2, 0.1, 3)
    edge = MembershipConfig.edge()
    assert edge.probe_interval > lan.probe_interval and edge.reap_after >= lan.reap_after
    assert MembershipConfig.test().push_pull_interval < lan.push_pull_interval
    with pytest.raises(ValueError, match="unknown membership profile 'wan'"):
        MembershipConfig.profile("wan")
    with pytest.raises(ValueError, match="probe_timeout"):
        MembershipConfig(probe_interval=0.1, probe_timeout=0.1)
    with pytest.raises(ValueError, match="reconnect_for"):
        MembershipConfig(reap_after=10.0, reconnect_for=20.0)
    with pytest.raises(ValueError, match="gossip_interval"):
        MembershipConfig(gossip_interval=0)
    with pytest.raises(ValueError, match="name"):
        Membership("", "a:1", "a:2", lan, random.Random(1), 0.0)


def test_views():
    me = node("m")
    me.handle("y", Gossip((ms("b", 0, ALIVE), ms("a", 0, ALIVE), ms("c", 0, ALIVE))), 0.0)
    me.handle("y", Gossip((ms("b", 0, SUSPECT), ms("c", 0, SUSPECT))), 0.0)
    me.handle("y", Gossip((ms("c", 0, DEAD),)), 0.0)
    assert [m.name for m in me.members()] == ["a", "b", "c", "m"]
    assert me.alive() == ["a", "b", "m"]  # suspect is still a member
    assert me.voters() == {"a": "a:7400", "b": "b:7400", "c": "c:7400", "m": "m:7400"}
    assert me.counts() == {"alive": 2, "suspect": 1, "dead": 1, "left": 0}
    assert [s.name for s in me.snapshot()] == ["a", "b", "c", "m"]
    copy = me.member("a")
    copy.status = DEAD  # views are copies
    assert me.member("a").status == ALIVE
    assert me.name == "m" and me.incarnation == 0 and me.awareness == 0 and not me.left


# -- convergence under any delivery order (rule 2) --------------------------------------

MEMBERS = ["m0", "m1", "m2"]
REPLICAS = ["r0", "r1", "r2"]
UPDATES = st.builds(
    ms, st.sampled_from(MEMBERS), st.integers(0, 3), st.sampled_from(list(MemberStatus))
)


class Convergence(RuleBasedStateMachine):
    """Updates are created, then delivered to replicas in any order, each by Gossip; after
    everything is delivered twice (retransmits), every replica holds the same view."""

    @initialize()
    def start(self) -> None:
        self.replicas = {r: node(r) for r in REPLICAS}
        self.updates: list[MemberState] = []
        self.seen = {r: set() for r in REPLICAS}
        bootstrap = Gossip(tuple(ms(m, 0, ALIVE) for m in MEMBERS))
        for rep in self.replicas.values():
            rep.handle("seed", bootstrap, 0.0)

    @rule(update=UPDATES)
    def create(self, update: MemberState) -> None:
        self.updates.append(update)

    @precondition(lambda self: self.updates)
    @rule(replica=st.sampled_from(REPLICAS), data=st.data())
    def deliver(self, replica: str, data) -> None:
        i = data.draw(st.integers(0, len(self.updates) - 1))
        sender = data.draw(st.sampled_from(["s0", "s1"]))
        self.replicas[replica].handle(sender, Gossip((self.updates[i],)), 0.0)
        self.seen[replica].add(i)

    @invariant()
    def each_replica_holds_the_max_of_what_it_saw(self) -> None:
        for r, rep in self.replicas.items():
            for m in MEMBERS:
                best = (0, ALIVE)
                for i in self.seen[r]:
                    u = self.updates[i]
                    if u.name == m and supersedes(u.inc, u.status, *best):
                        best = (u.inc, u.status)
                held = rep.member(m)
                # rule 8: a dead verdict we had not suspected is held as a suspicion for now
                assert (held.inc, held.status) == best or (
                    best[1] == DEAD and (held.inc, held.status) == (best[0], SUSPECT)
                )

    def teardown(self) -> None:
        if not hasattr(self, "replicas"):
            return
        for rep in self.replicas.values():
            for _ in range(2):  # retransmits: the second pass confirms what the first suspected
                for u in self.updates:
                    rep.handle("s0", Gossip((u,)), 0.0)
        views = [
            [(m.name, m.inc, m.status) for m in rep.members() if m.name in MEMBERS]
            for rep in self.replicas.values()
        ]
        assert views[0] == views[1] == views[2]


TestConvergence = Convergence.TestCase
TestConvergence.settings = settings(max_examples=80, stateful_step_count=30, deadline=None)


# -- probe spread (rule 7) ----------------------------------------------------------------


def _pings_in(m: Membership, seconds: float, step: float = 0.01) -> int:
    """Pings ``m`` starts in ``seconds`` of virtual time, each acked at once (none fails)."""
    pings, now = 0, 0.0
    while now < seconds:
        now += step
        for e in m.tick(now):
            if isinstance(e, Send) and isinstance(e.msg, Ping):
                pings += 1
                m.handle(e.msg.target, Ack(e.msg.probe, e.msg.target), now)
    return pings


@pytest.mark.parametrize("n, period", [(2, 0.2), (10, 0.2), (20, 0.4), (40, 0.8), (400, 0.8)])
def test_probes_spread_out_above_ten_members_up_to_four_periods(n, period):
    m = node()
    m.handle("p0", StatePush(False, "p0:7400", tuple(ms(f"p{i}", 1, ALIVE) for i in range(n - 1))), 0.0)
    assert len(m.alive()) == n
    pings = _pings_in(m, 20.0)
    assert pings == pytest.approx(20.0 / period, rel=0.06)


def test_probe_spread_leaves_a_probes_own_wait_alone():
    cfg = MembershipConfig.test()
    assert [probe_spread(cfg, n) for n in (1, 10, 15, 40, 10_000)] == [1.0, 1.0, 1.5, 4.0, 4.0]
    assert probe_spread(MembershipConfig.edge(), 10_000) == 1.0  # already 1 s a probe
    m = node()
    m.handle("p0", StatePush(False, "p0:7400", tuple(ms(f"p{i}", 1, ALIVE) for i in range(39))), 0.0)
    now, target = 0.0, None
    while target is None:  # the first probe: nobody answers it
        now += 0.01
        target = next((e.msg.target for e in m.tick(now) if isinstance(e, Send) and isinstance(e.msg, Ping)), None)
    started = now
    while m.member(target).status == ALIVE:
        now += 0.01
        m.tick(now)
    assert now - started == pytest.approx(cfg.probe_interval, abs=0.02)  # suspected after one period, not four
    with pytest.raises(ValueError, match="probe_spread"):
        MembershipConfig(probe_spread_max=0.5)


def test_a_sleep_until_the_next_deadline_is_no_stall_and_a_stall_past_it_is():
    """Rule 16: a shell that sleeps until ``next_deadline`` (0.8 s between probes at 40
    members, longer than stall_gap) loses no probe; a wake far past it counts as stalled,
    so a probe in flight is not failed for our own slowness."""
    m = node()
    m.handle("p0", StatePush(False, "p0:7400", tuple(ms(f"p{i}", 1, ALIVE) for i in range(39))), 0.0)
    now, pings = 0.0, 0
    while now < 20.0:
        now = m.next_deadline(now) + 0.003  # a wake a few ms late
        for e in m.tick(now):
            if isinstance(e, Send) and isinstance(e.msg, Ping):
                pings += 1
                m.handle(e.msg.target, Ack(e.msg.probe, e.msg.target), now)
    assert pings == pytest.approx(20.0 / 0.8, abs=2)  # every probe, on time
    ping = None
    while ping is None:
        now = m.next_deadline(now) + 0.003
        ping = next((e.msg for e in m.tick(now) if isinstance(e, Send) and isinstance(e.msg, Ping)), None)
    now = m.next_deadline(now) + 1.0  # the loop stalls a second past the direct wait
    m.tick(now)
    m.handle(ping.target, Ack(ping.probe, ping.target), now)  # the Ack that waited meanwhile
    for _ in range(5):
        now = m.next_deadline(now) + 0.003
        m.tick(now)
    assert m.member(ping.target).status == ALIVE


# -- member tables (member.py) ----------------------------------------------------------


def _table(*records: tuple[str, MemberStatus]) -> MemberTable:
    table = MemberTable()
    for name, status in records:
        table.add(Member(name, f"{name}:1", f"{name}:2", 0, status, 0.0))
    return table


def test_a_shared_table_reads_the_shared_records_until_it_changes_one():
    base = _table(("a", MemberStatus.ALIVE), ("b", MemberStatus.ALIVE), ("c", MemberStatus.DEAD),
                  ("shared", MemberStatus.ALIVE))
    mine = SharedMembers(SharedRecords(base))
    assert sorted(mine) == ["a", "b", "c", "shared"] and len(mine) == 4 and mine.live == 3
    assert set(mine.dead) == {"c"}
    assert mine["a"] is base["a"] and mine.get("zz") is None and "c" in mine
    with pytest.raises(ValueError):
        mine.set_status(mine["a"], MemberStatus.SUSPECT)  # a shared record is never changed in place
    a = mine.mutable("a")
    assert a is not base["a"] and a == base["a"] and mine["a"] is a
    mine.set_status(a, MemberStatus.DEAD)
    assert base["a"].status == MemberStatus.ALIVE and base.live == 3  # the others still read it alive
    assert mine.live == 2 and set(mine.dead) == {"a", "c"}
    assert mine.pop("c").name == "c" and "c" not in mine and "c" in base and len(mine) == 3
    mine.add(Member("d", "d:1", "d:2", 0, MemberStatus.ALIVE, 1.0))
    assert sorted(mine) == ["a", "b", "d", "shared"] and len(mine) == 4 and mine.live == 3
    assert dict(mine.items()).keys() == {"a", "b", "d", "shared"} and set(mine.dead) == {"a"}
    with pytest.raises(ValueError):
        mine.add(Member("b", "b:1", "b:2", 0, MemberStatus.ALIVE, 1.0))
    me = Member("b", "b:1", "b:2", 3, MemberStatus.ALIVE, 1.0)
    mine.put(me)  # a node's own record takes the shared one's place
    assert mine["b"] is me and len(mine) == 4 and mine.live == 3
    with pytest.raises(KeyError):
        mine.mutable("c")
    scan = [mine[n].state() for n in sorted(mine)]  # what sorted_states does for a plain table
    assert sorted_states(mine) == scan and [st.name for st in scan] == ["a", "b", "d", "shared"]
    records = mine._records
    pushed = list(records.states)  # another node's push of the shared states, and one news
    news = mine.news(pushed + [Member("e", "e:1", "e:2", 0, MemberStatus.ALIVE, 0.0).state()])
    assert [st.name for st in news] == ["a", "b", "c", "e"]  # ours changed, ours, let go, new; not "shared"
    fresh = SharedMembers(records)
    assert fresh.news(pushed) == [] and sorted_states(fresh) == list(records.states)
    drawn = fresh.random_alive(random.Random(1), 1, exclude=set())
    assert len(drawn) == 1 and drawn[0].name in ("a", "b")  # c is dead
    assert random_alive(fresh, random.Random(1), 5, exclude={"a"})[0].name == "b"  # too few: the scan


def test_a_plain_table_counts_as_its_records_come_change_and_go():
    table = _table(("a", MemberStatus.ALIVE), ("b", MemberStatus.SUSPECT))
    assert table.live == 2 and not table.dead and table.mutable("a") is table["a"]
    table.set_status(table["b"], MemberStatus.DEAD)
    assert table.live == 1 and set(table.dead) == {"b"}
    table.put(Member("b", "b:1", "b:2", 1, MemberStatus.ALIVE, 1.0))
    assert table.live == 2 and not table.dead
    table.pop("a")
    assert table.live == 1 and list(table) == ["b"]
