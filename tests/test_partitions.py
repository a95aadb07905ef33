"""Network faults on a real network: each node in a network namespace of its own.

Real ``corec-node run`` processes (test timer profile) on veth pairs and bridges
(``corec_node.testing.netns``); links are cut by moving a veth to another bridge,
detaching it, or setting it down. After every scenario a checker reads every node's
``leader_changed`` lines and fails on two leaders in one term, or on a leader elected
(or kept) on a minority side of the partition in force at the time.

Needs root and iproute2. Elsewhere the module is skipped with the reason; under CI
(``CI=true``) a failure to make namespaces fails the run instead.
"""

from __future__ import annotations

import os
import time

import pytest

from corec_node.testing.cluster import eventually, voters_agree
from corec_node.testing.netns import NetLab, available

_OK, _WHY = available()
_CI = os.environ.get("CI") == "true"

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(not _OK and not _CI, reason=f"network namespaces unavailable: {_WHY}"),
]

NAMES = [f"n{i}" for i in range(1, 6)]
SETTLE = 30  # s: membership verdicts, elections
CONVERGE = 60  # s: after a heal


@pytest.fixture
def lab(tmp_path):
    if not _OK:
        pytest.fail(f"CI=true but network namespaces cannot be made: {_WHY}")
    lab = NetLab(tmp_path)
    lab.voters = list(NAMES)
    try:
        yield lab
    finally:
        try:
            violations = lab.check(lab.voters)
            print("checker:", "clean" if not violations else "\n  " + "\n  ".join(violations))
            print(views(lab))
        finally:
            lab.close()


def views(lab) -> str:
    """Each running node's leader view, its members' statuses and its leader_changed history."""
    lines = []
    for name, node in lab.nodes.items():
        try:
            now = f"{node.ctl('leader')} members={node.members()}"
        except Exception as exc:  # noqa: BLE001 - a dump for a failure report
            now = f"(no answer: {exc})"
        history = [(e.get("leader"), e.get("term")) for e in node.log_events() if e.get("event") == "leader_changed"]
        lines.append(f"{name}: {now}\n    leader history: {history}")
    return "\n".join(lines)


# -- helpers ----------------------------------------------------------------------------


def agreed(nodes, not_: str | None = None):
    """(leader, term) if every node names the same leader, one of ``nodes``; else None."""
    views = {(r["leader"], r["term"]) for r in (n.ctl("leader") for n in nodes)}
    if len(views) != 1:
        return None
    leader, term = next(iter(views))
    return (leader, term) if leader in {n.name for n in nodes} and leader != not_ else None


def sees(node, names, status: str) -> bool:
    members = node.members()
    return all(members.get(n) == status for n in names)


def all_alive(nodes) -> bool:
    return all(sees(n, [m.name for m in nodes], "alive") for n in nodes)


def boot(lab):
    """Five nodes joined through the first, all alive everywhere and all voters of the
    committed configuration, one agreed leader."""
    first = lab.start(NAMES[0])
    nodes = [first] + [lab.start(n, join=[first.addr]) for n in NAMES[1:]]
    for n in nodes:
        n.wait_ready(30)
    eventually(lambda: all_alive(nodes), SETTLE, message="all five alive everywhere")
    eventually(lambda: voters_agree(nodes, NAMES), SETTLE, message="all five voters")
    leader, term = eventually(lambda: agreed(nodes), SETTLE, message="one agreed leader")
    return {n.name: n for n in nodes}, leader, term


def split_3_2(lab, by, leader):
    """Partition 3|2 with ``leader`` in the majority; returns (majority, minority) names,
    once each side has declared the other dead (proof the cut is in force)."""
    others = [n for n in NAMES if n != leader]
    major, minor = [leader, *others[:2]], others[2:]
    lab.partition([major, minor])
    eventually(lambda: all(sees(by[m], minor, "dead") for m in major)
               and all(sees(by[m], major, "dead") for m in minor), SETTLE,
               message=f"{major} and {minor} see each other dead")
    return major, minor


def traffic(nodes):
    return [n.ctl("status")["messages_in"] for n in nodes]


def observe(nodes, seconds: float, messages: int) -> None:
    """A bounded window proving a negative: ``seconds`` long AND at least ``messages``
    more received by each node (a slow machine lengthens it, never empties it)."""
    start, deadline = traffic(nodes), time.monotonic() + seconds
    eventually(lambda: time.monotonic() >= deadline
               and all(now >= first + messages for now, first in zip(traffic(nodes), start)),
               seconds + 60, interval=0.2, message=f"{seconds} s and {messages} messages on each of {[n.name for n in nodes]}")


def converge(lab, nodes):
    eventually(lambda: all_alive(nodes), CONVERGE, message="all alive everywhere after the heal")
    return eventually(lambda: agreed(nodes), CONVERGE, message="one agreed leader after the heal")


def clean(lab, voters=NAMES):
    violations = lab.check(voters)
    assert not violations, "leader history violations:\n  " + "\n  ".join(violations)


# -- scenarios ------------------------------------------------------------------------


def test_majority_minority_partition_then_heal(lab):
    by, leader, _ = boot(lab)
    major, minor = split_3_2(lab, by, leader)
    eventually(lambda: agreed([by[m] for m in major]), SETTLE, message="the majority has one leader")
    observe([by[m] for m in minor], 3, 30)
    for m in minor:
        assert by[m].ctl("leader")["leader"] not in minor
    assert agreed([by[m] for m in major]), "the majority lost its leader"
    lab.heal()
    converge(lab, list(by.values()))
    clean(lab)


def test_leader_isolated_steps_down_rest_elect(lab):
    by, leader, term = boot(lab)
    rest = [by[n] for n in NAMES if n != leader]
    lab.isolate(leader)
    _, new_term = eventually(lambda: agreed(rest, not_=leader), SETTLE, message="the rest elect a new leader")
    assert new_term > term
    eventually(lambda: by[leader].ctl("leader")["leader"] != leader, SETTLE, message=f"isolated {leader} steps down")
    lab.heal()
    converge(lab, list(by.values()))
    clean(lab)


def test_fresh_nodes_joining_the_minority_elect_nobody(lab):
    by, leader, _ = boot(lab)
    major, minor = split_3_2(lab, by, leader)
    eventually(lambda: agreed([by[m] for m in major]), SETTLE, message="the majority has one leader")
    seeds = [by[m].addr for m in minor]
    fresh = [lab.start(f"f{i}", side="b", join=seeds) for i in range(1, 5)]
    for f in fresh:
        f.wait_ready(30)
    side = [by[m] for m in minor] + fresh
    names = [n.name for n in side]
    # the window means something only once the fresh nodes reached the minority members
    eventually(lambda: all(sees(n, names, "alive") for n in side), SETTLE,
               message=f"fresh nodes and {minor} all alive to each other")
    observe(side, 10, 100)
    claims = {n.name: n.ctl("leader") for n in side}
    clean(lab)
    assert agreed([by[m] for m in major]), "the majority lost its leader"
    assert not any(c["leader"] in names for c in claims.values()), f"minority side claims a leader: {claims}"


def test_flapping_follower_link(lab):
    by, leader, _ = boot(lab)
    flapper = next(n for n in NAMES if n != leader)
    end = time.monotonic() + 10
    while time.monotonic() < end:
        lab.link_down(flapper)
        time.sleep(0.5)
        lab.link_up(flapper)
        time.sleep(0.5)
    converge(lab, list(by.values()))
    clean(lab)


def test_a_cut_longer_than_the_reap_time_heals(lab):
    """Both sides forget each other (the test profile reaps after 30 s). A member that is
    not a voter is known to nobody then, and knows nobody: it joins the address it was
    started with again, and the cluster is whole once the link is."""
    by, _, _ = boot(lab)
    cut = lab.start("m6", join=[by[NAMES[1]].addr])  # a sixth node: not a voter (5 at most)
    cut.wait_ready(30)
    everyone = [*by.values(), cut]
    eventually(lambda: all_alive(everyone), SETTLE, message="six alive everywhere")
    lab.isolate(cut.name)
    eventually(lambda: list(cut.members()) == [cut.name], 90, message="m6 forgot the others")
    eventually(lambda: all(cut.name not in n.members() for n in by.values()), 30, message="the others forgot m6")
    lab.heal()
    converge(lab, everyone)
    clean(lab)


def test_heal_with_minority_restarted(lab):
    by, leader, _ = boot(lab)
    major, minor = split_3_2(lab, by, leader)
    eventually(lambda: agreed([by[m] for m in major]), SETTLE, message="the majority has one leader")
    for m in minor:
        by[m].stop(10)
    for m in minor:
        by[m].start()
    for m in minor:
        by[m].wait_ready(30)
    lab.heal()
    converge(lab, list(by.values()))
    clean(lab)
