"""The deterministic simulator: real Membership + Election over a virtual network.

Safety invariants (one leader per term, leaders only with a majority of persisted votes,
one vote per term) are checked by the simulator at every step and raise at once; these
tests add the liveness side (convergence, failover) and the scenarios.

Cost on a 2-core box: the 500-node case is the expensive one (about 40 s, nearly all of it
inside Membership: full-state push-pulls and per-tick scans; see bench/simulate.py);
everything else together takes about 25 s. Set COREC_SIM_SKIP_LARGE=1 to skip it.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from corec_node.mesh.core import IDLE_PERIOD, TICK_PERIOD
from corec_node.mesh.election import ElectionConfig
from corec_node.mesh.hyparview import HyParViewConfig
from corec_node.mesh.membership import MembershipConfig
from corec_node.mesh.overlay import OverlayConfig
from corec_node.mesh.voters import VoterConfig
from corec_node.sim import (
    Cluster,
    FaultPlan,
    Invariants,
    InvariantViolation,
    Network,
    NetworkConfig,
    random_faults,
)
from corec_node.wire.messages import MemberStatus

pytestmark = pytest.mark.timeout(300)

LOSSY = NetworkConfig(loss=0.05)
ECFG = ElectionConfig.lan()
CONVERGE = 30.0  # virtual seconds allowed to converge after the last fault heals
FAILOVER = 10.0  # virtual seconds from a leader's crash to an agreed successor (lan timers)
ALL_VOTE = VoterConfig(max_voters=9)  # up to 9 nodes every node votes: node majorities are voter majorities


def formed(n: int, seed: int, network: NetworkConfig = LOSSY, **kw) -> Cluster:
    kw.setdefault("voters", ALL_VOTE)
    c = Cluster(n, seed=seed, network=network, **kw)
    c.bootstrap()
    c.await_convergence(CONVERGE)
    return c


# -- the network and the checker on their own ----------------------------------------


def test_network_partitions_and_cuts() -> None:
    net = Network(NetworkConfig(), random.Random(1))
    assert net.reachable("a", "b")
    net.partition(["a", "b"], ["c"])
    assert net.reachable("a", "b") and not net.reachable("a", "c") and not net.reachable("c", "b")
    assert net.reachable("d", "e") and not net.reachable("d", "a")  # unnamed nodes share group 0
    net.heal()
    net.cut("a", "b", both=False)
    assert not net.reachable("a", "b") and net.reachable("b", "a")
    assert net.delays("a", "b") == []
    assert len(net.delays("b", "a")) == 1


def test_network_loss_and_duplication_rates() -> None:
    net = Network(NetworkConfig(loss=0.1, duplicate=0.2), random.Random(2))
    copies = [len(net.delays("a", "b")) for _ in range(20000)]
    mean = sum(copies) / len(copies)
    assert 1.0 < mean < 1.2  # 1.2 copies sent per message, 10 % of each lost: ~1.08
    assert copies.count(0) > 0 and copies.count(2) > 0
    with pytest.raises(ValueError):
        NetworkConfig(loss=1.5)


def test_invariant_checker_catches_violations() -> None:
    inv = Invariants()
    voters = {"a": "", "b": "", "c": ""}
    inv.on_persist(0.0, "a", 1, "a")
    inv.on_persist(0.0, "b", 1, "a")
    inv.on_leader(0.0, "a", 1, voters)
    with pytest.raises(InvariantViolation, match="voted twice"):
        inv.on_persist(0.1, "b", 1, "c")
    with pytest.raises(InvariantViolation, match="two leaders in term 1"):
        inv.on_leader(0.2, "c", 1, voters)
    with pytest.raises(InvariantViolation, match="needs 2"):
        inv.on_leader(0.3, "c", 2, voters)
    with pytest.raises(InvariantViolation, match="term 0 after term 1"):
        inv.on_persist(0.4, "a", 0, None)
    lenient = Invariants(strict=False)
    lenient.on_leader(0.0, "a", 1, voters)
    assert len(lenient.violations) == 1


# -- formation under loss ------------------------------------------------------------


@pytest.mark.parametrize("n", [5, 50])
def test_cluster_converges_under_five_percent_loss(n: int) -> None:
    c = formed(n, seed=n)
    leader, term = c.agreed_leader()  # type: ignore[misc]
    c.run(20.0)  # 20 s of 5 % loss: no false death, no disturbance of the leader
    assert c.agreed_leader() == (leader, term)
    assert c.members_converged()
    assert c.stats["false_deaths"] == 0
    assert len(c.leaders()) == 1


def test_cluster_formed_by_joins() -> None:
    c = Cluster(12, seed=3, network=LOSSY)
    c.bootstrap("join", stagger=0.05)
    took = c.await_convergence(CONVERGE)
    assert took < CONVERGE
    assert all(len(n.membership.voters()) == 12 for n in c.live())  # type: ignore[union-attr]


@pytest.mark.skipif(os.environ.get("COREC_SIM_SKIP_LARGE") == "1", reason="COREC_SIM_SKIP_LARGE=1")
def test_500_nodes_under_five_percent_loss() -> None:
    """EXPENSIVE (~40 s): 500 real Membership + Election pairs; ticks every 50 ms (the
    membership's documented minimum call rate) instead of the shell's 20 ms to halve the
    per-tick scans."""
    c = Cluster(500, seed=500, network=LOSSY, tick_interval=0.05)
    c.bootstrap()
    took = c.await_convergence(CONVERGE, every=0.5)
    assert took < CONVERGE
    assert len(c.leaders()) == 1
    assert c.stats["false_deaths"] == 0


# -- partitions ------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_partition_minority_loses_its_leader_majority_elects(seed: int) -> None:
    c = formed(7, seed)
    leader, term = c.agreed_leader()  # type: ignore[misc]
    others = [n for n in c.nodes if n != leader]
    minority, majority = [leader, *others[:2]], others[2:]
    c.partition(minority, majority)

    def settled() -> bool:
        agreed = c.agreed_leader(majority)
        return not c.leaders(minority) and agreed is not None and agreed[1] > term

    took = c.run_until(settled, CONVERGE, every=0.05)
    assert took is not None, c.describe()
    c.run(10.0)  # and it stays that way: the minority cannot elect (pre-vote fails)
    assert settled()
    assert all(c.nodes[n].election.leader is None for n in minority)  # type: ignore[union-attr]
    new = c.agreed_leader(majority)
    c.heal()
    c.await_convergence(CONVERGE)
    assert c.agreed_leader() == new  # the minority follows the majority's leader


def test_partition_leader_in_majority_keeps_it() -> None:
    c = formed(9, seed=4)
    leader, term = c.agreed_leader()  # type: ignore[misc]
    others = [n for n in c.nodes if n != leader]
    c.partition([leader, *others[:4]], others[4:])
    c.run(20.0)
    assert c.agreed_leader([leader, *others[:4]]) == (leader, term)
    assert c.leaders(others[4:]) == []
    c.heal()
    c.await_convergence(CONVERGE)
    assert c.agreed_leader() == (leader, term)  # never deposed: the minority's term never rose


def test_isolated_leader_steps_down_within_a_timeout() -> None:
    c = formed(30, seed=5)
    leader, _term = c.agreed_leader()  # type: ignore[misc]
    c.isolate(leader)
    took = c.run_until(lambda: not c.leaders([leader]), 10.0, every=0.05)
    assert took is not None and took <= ECFG.election_timeout_max + 0.2
    c.heal()
    c.await_convergence(CONVERGE)


# -- crashes -------------------------------------------------------------------------


@pytest.mark.parametrize("n", [5, 50])
def test_leader_crash_fails_over(n: int) -> None:
    c = formed(n, seed=10 + n)
    leader, term = c.agreed_leader()  # type: ignore[misc]
    c.crash(leader)

    def new_leader() -> bool:
        agreed = c.agreed_leader()
        return agreed is not None and agreed[1] > term

    took = c.run_until(new_leader, FAILOVER, every=0.05)
    assert took is not None, c.describe()
    new = c.agreed_leader()
    c.restart(leader)  # the old leader comes back as a follower of the new one
    c.await_convergence(CONVERGE)
    assert c.agreed_leader() == new


def test_leader_leaves_gracefully() -> None:
    c = formed(7, seed=6)
    leader, term = c.agreed_leader()  # type: ignore[misc]
    c.leave(leader)
    c.await_convergence(CONVERGE)
    new, new_term = c.agreed_leader()  # type: ignore[misc]
    assert new != leader and new_term > term
    assert all(leader not in n.membership.voters() for n in c.live())  # type: ignore[union-attr]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("how", ["crash", "partition"])
def test_flapping_node_never_deposes_a_healthy_leader(how: str, seed: int) -> None:
    c = formed(7, seed=20 + seed)
    leader, term = c.agreed_leader()  # type: ignore[misc]
    became = len(c.leaderships)
    rng = random.Random(seed)
    flapper = rng.choice([n for n in c.nodes if n != leader])
    t = c.now
    for _ in range(10):
        if how == "crash":
            c.at(t, lambda: c.crash(flapper))
            t += rng.uniform(0.2, 4.0)
            c.at(t, lambda: c.restart(flapper))
        else:
            c.at(t, lambda: c.isolate(flapper))
            t += rng.uniform(0.2, 6.0)  # long enough for many failed pre-votes
            c.at(t, c.heal)
        t += rng.uniform(0.2, 4.0)
    c.run(t - c.now + 0.1)
    c.await_convergence(CONVERGE)
    assert c.agreed_leader() == (leader, term)
    assert c.leaderships[became:] == []  # nobody else ever became leader meanwhile


# -- determinism ---------------------------------------------------------------------


def _faulty_run(seed: int) -> Cluster:
    c = Cluster(
        9, seed=seed, network=NetworkConfig(loss=0.05, duplicate=0.05, reorder=0.1), trace=True
    )
    c.bootstrap()
    random_faults(c, random.Random(seed), FaultPlan(duration=10.0))
    c.run(20.0)
    return c


def test_same_seed_same_trace() -> None:
    a, b = _faulty_run(42), _faulty_run(42)
    assert a.trace_hash() == b.trace_hash()
    assert a.events == b.events and a.leaderships == b.leaderships
    assert _faulty_run(43).trace_hash() != a.trace_hash()


def test_same_seed_same_trace_across_processes() -> None:
    """Nothing may depend on str hashing (set order), which changes per process."""
    code = textwrap.dedent("""
        import random
        from corec_node.sim import Cluster, FaultPlan, NetworkConfig, random_faults
        c = Cluster(9, seed=42, network=NetworkConfig(loss=0.05, duplicate=0.05, reorder=0.1), trace=True)
        c.bootstrap()
        random_faults(c, random.Random(42), FaultPlan(duration=10.0))
        c.run(20.0)
        print(c.trace_hash())
    """)
    root = str(Path(__file__).resolve().parents[1])
    hashes = set()
    for hash_seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed, PYTHONPATH=root)
        out = subprocess.run(
            [sys.executable, "-c", code],
            check=False,
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
        hashes.add(out.stdout.strip())
    assert hashes == {_faulty_run(42).trace_hash()}


# -- seeded sweep --------------------------------------------------------------------

SWEEP_RUNS = 200
SWEEP_CHUNK = 25
TIMER_RUNS = 50  # seeded runs with timer-driven nodes
OVERLAY_RUNS = 50  # seeded runs over partial views


@pytest.mark.parametrize("first", range(0, SWEEP_RUNS, SWEEP_CHUNK))
def test_random_fault_sweep(first: int) -> None:
    """200 seeded runs of 5-7 nodes: random loss, duplication, reordering, crashes,
    restarts, partitions and isolation for 12 s; then heal, restart all and converge."""
    sweep(first, idle_period=None)


@pytest.mark.parametrize("first", range(0, TIMER_RUNS, SWEEP_CHUNK))
def test_random_fault_sweep_timer_driven(first: int) -> None:
    """The same faults with nodes that tick as the mesh process does: when a timer is due,
    at least every IDLE_PERIOD (seeds of their own, after the sweep's)."""
    sweep(SWEEP_RUNS + first, idle_period=IDLE_PERIOD)


@pytest.mark.parametrize("first", range(0, OVERLAY_RUNS, SWEEP_CHUNK))
def test_random_fault_sweep_over_the_overlay(first: int) -> None:
    """The same faults with broadcasts over the overlay (mesh/overlay.py), its active views
    capped at 3 so that 5-7 nodes make partial views, not a full mesh."""
    small = OverlayConfig(views=HyParViewConfig(active_size=3, passive_size=12))
    sweep(SWEEP_RUNS + TIMER_RUNS + first, idle_period=IDLE_PERIOD, overlay=small)


def test_timer_driven_nodes_tick_a_quarter_as_often_and_lose_nothing() -> None:
    """Nodes ticking only when their core's next deadline is due (shell/mesh_process.py)
    form a cluster, see a crash everywhere and replace a crashed leader like nodes that tick
    every 20 ms, with a fraction of the wakes."""
    c = Cluster(20, seed=4, idle_period=IDLE_PERIOD, tick_interval=TICK_PERIOD, voters=ALL_VOTE)
    c.bootstrap()
    c.await_convergence(CONVERGE)
    before = c.stats["ticks"]
    c.run(10.0)
    per_node_s = (c.stats["ticks"] - before) / 20 / 10.0
    assert per_node_s < 0.5 / TICK_PERIOD, per_node_s  # fixed ticks: 1 / TICK_PERIOD (50 a second)
    leader, term = c.agreed_leader()  # type: ignore[misc]
    victim = next(n for n in c.nodes if n != leader)
    c.crash(victim)
    seen = c.run_until(lambda: all(any(m.name == victim and m.status == MemberStatus.DEAD
                                       for m in n.membership.members()) for n in c.live()), 10.0, every=0.05)
    assert seen is not None, c.describe()
    c.crash(leader)
    took = c.run_until(lambda: (a := c.agreed_leader()) is not None and a[1] > term, FAILOVER, every=0.05)
    assert took is not None, c.describe()
    assert not c.invariants.violations


def sweep(first: int, *, idle_period: float | None, overlay: OverlayConfig | None = None) -> None:
    failures = []
    for seed in range(first, first + SWEEP_CHUNK):
        rng = random.Random(seed)
        net = NetworkConfig(
            loss=rng.choice([0.0, 0.05, 0.1]),
            duplicate=rng.choice([0.0, 0.02]),
            reorder=rng.choice([0.0, 0.05]),
        )
        c = Cluster(rng.randint(5, 7), seed=seed, network=net, strict=False, idle_period=idle_period,
                    overlay=overlay)
        c.bootstrap()
        c.run(rng.uniform(0.0, 4.0))  # faults may start before the first election
        log = random_faults(c, rng, FaultPlan(duration=12.0))
        c.run(12.0)
        try:
            c.await_convergence(60.0)
        except InvariantViolation as exc:
            failures.append(f"seed {seed}: {exc}\n  " + "\n  ".join(log))
        if c.invariants.violations:
            failures.append(f"seed {seed}: {c.invariants.violations}\n  " + "\n  ".join(log))
        if (wrong := miscounted(c)):
            failures.append(f"seed {seed}: member tables miscounted at {wrong}\n  " + "\n  ".join(log))
    assert not failures, "\n".join(failures)


def miscounted(c: Cluster) -> list[str]:
    """Nodes whose member table's kept counts (live, dead) differ from a scan of its records."""
    wrong = []
    for node in c.nodes.values():
        if node.up and node.membership is not None:
            table = node.membership._members
            live = sum(1 for m in table.values() if m.status in (MemberStatus.ALIVE, MemberStatus.SUSPECT))
            dead = {n for n, m in table.items() if m.status == MemberStatus.DEAD}
            if table.live != live or set(table.dead) != dead:
                wrong.append(node.name)
    return wrong


def test_member_tables_count_through_leaves_force_leaves_prunes_and_reaps() -> None:
    c = Cluster(6, seed=12, membership=MembershipConfig.test(), election=ElectionConfig.test())
    c.bootstrap()
    c.await_convergence(CONVERGE)
    names = sorted(c.nodes)
    c.crash(names[1])
    c.crash(names[2])
    c.leave(names[3])
    c.run_until(lambda: all(c.nodes[names[0]].membership.member(n).status == MemberStatus.DEAD
                            for n in names[1:3]), 30.0)
    assert c.nodes[names[0]].membership._members.dead.keys() == {names[1], names[2]}
    assert miscounted(c) == []
    c.nodes[names[0]].core.force_leave(names[1], c.now)
    c.nodes[names[0]].core.force_leave(names[2], c.now, prune=True)
    c.run(60.0)  # past the test profile's reap time
    assert miscounted(c) == []
    table = c.nodes[names[0]].membership._members
    assert table.live == 3 and not table.dead and names[2] not in table


def test_membership_test_profile_is_usable_in_the_simulator() -> None:
    """Other profiles plug in too (the test profile's fast anti-entropy and reaping)."""
    c = Cluster(
        5, seed=8, network=LOSSY, membership=MembershipConfig.test(), election=ElectionConfig.test()
    )
    c.bootstrap()
    c.await_convergence(CONVERGE)
    leader, term = c.agreed_leader()  # type: ignore[misc]
    c.crash(leader)
    c.await_convergence(CONVERGE)
    assert c.agreed_leader()[1] > term  # type: ignore[index]
    assert c.nodes[leader].membership is None
    seen = c.watch(leader, MemberStatus.ALIVE)
    c.restart(leader)
    c.await_convergence(CONVERGE)
    assert set(seen) == set(c.nodes) - {leader}


@pytest.mark.parametrize("cut", ["n0004", "n0000"])
def test_a_node_cut_off_past_the_reap_time_knocks_on_its_join_addresses_and_former_members(cut: str) -> None:
    """Both sides of a cut longer than reap_after forget each other, so rule 12's reconnect
    has no dead member left to knock on. The node left alone pushes again to the addresses
    it joined through (n0004) or, when it has none (the founder, n0000), to the members it
    reaped."""
    mcfg = MembershipConfig.test()
    c = Cluster(5, seed=4, network=LOSSY, membership=mcfg, election=ElectionConfig.test())
    c.bootstrap("join", stagger=0.05)
    c.await_convergence(CONVERGE)
    c.isolate(cut)
    c.run(mcfg.reap_after + 15)
    alone = c.nodes[cut].membership
    assert [m.name for m in alone.members()] == [cut], "the cut node forgot the others"  # type: ignore[union-attr]
    assert all(cut not in {m.name for m in c.nodes[n].membership.members()}  # type: ignore[union-attr]
               for n in c.nodes if n != cut), "the others forgot the cut node"
    c.heal()
    c.await_convergence(CONVERGE)
    assert all(len(n.membership.alive()) == 5 for n in c.live())  # type: ignore[union-attr]
