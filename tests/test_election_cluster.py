"""Nucleus election with real `corec-node run` processes: agreement, failover, no coup."""

from __future__ import annotations

import time

import pytest
from meshutil import eventually

from corec_node.testing import voters_agree

pytestmark = pytest.mark.timeout(180)


def agreed(nodes, not_: str | None = None):
    """(leader, term) if every node names the same live leader, else None."""
    views = {(r["leader"], r["term"]) for r in (n.ctl("leader") for n in nodes)}
    if len(views) != 1:
        return None
    leader, term = next(iter(views))
    return (leader, term) if leader and leader != not_ else None


def start(cluster, names):
    nodes = [cluster.start(names[0])]
    nodes += [cluster.start(n, join=[nodes[0].addr]) for n in names[1:]]
    for n in nodes:
        n.wait_ready()
    return nodes


@pytest.mark.parametrize("size", [3, 5])
def test_one_leader_all_agree_then_failover_then_no_coup(cluster, size):
    nodes = start(cluster, [f"n{i}" for i in range(size)])
    leader, term = eventually(lambda: agreed(nodes), 30, message="one agreed leader")
    assert leader in {n.name for n in nodes}
    statuses = [n.ctl("status") for n in nodes]
    assert all(s["leader"] == leader and s["term"] == term for s in statuses)
    # the leader promotes the members that joined, one at a time: wait until all vote
    eventually(lambda: voters_agree(nodes, [n.name for n in nodes]), 30, message="every node a voter")
    leader, term = eventually(lambda: agreed(nodes), 10, message="one agreed leader")

    old = next(n for n in nodes if n.name == leader)
    old.kill()
    survivors = [n for n in nodes if n is not old]
    new_leader, new_term = eventually(lambda: agreed(survivors, not_=leader), 30, message="a new leader")
    assert new_term > term

    old.join = []  # it comes back from its own snapshot
    old.start().wait_ready()
    eventually(lambda: old.ctl("leader")["leader"] == new_leader, 20, message="the old leader follows")
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:  # and never takes over by force
        view = agreed(nodes)
        assert view is None or view == (new_leader, new_term), view
        time.sleep(0.1)
    assert agreed(nodes) == (new_leader, new_term)


def test_single_node_is_its_own_leader(cluster):
    solo = cluster.start("solo").wait_ready()
    assert eventually(lambda: agreed([solo]), 10)[0] == "solo"


def test_recover_voters_after_losing_a_majority_for_good(cluster):
    """Three of five voters SIGKILLed for good: the two survivors cannot elect (by design)
    until an operator names them the voters on one of them."""
    import subprocess
    import sys

    names = [f"r{i}" for i in range(5)]
    nodes = start(cluster, names)
    eventually(lambda: voters_agree(nodes, names), 30, message="every node a voter")
    leader, _term = eventually(lambda: agreed(nodes), 10, message="one agreed leader")
    doomed = [n for n in nodes if n.name != leader][:2] + [n for n in nodes if n.name == leader]
    survivors = [n for n in nodes if n not in doomed]
    for n in doomed:
        n.kill()
    eventually(lambda: all(n.ctl("leader")["leader"] is None for n in survivors), 30, message="no leader left")
    eventually(lambda: all(all(n.members().get(d.name) == "dead" for d in doomed) for n in survivors), 30,
               message="the lost voters dead on the survivors")
    keep = sorted(n.name for n in survivors)
    out = subprocess.run([sys.executable, "-m", "corec_node", "recover-voters", *keep, "--json",
                          "--data-dir", str(survivors[0].data_dir)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "WARNING" in out.stderr
    new_leader, _ = eventually(lambda: agreed(survivors), 30, message="the survivors elect a leader")
    assert new_leader in keep
    eventually(lambda: voters_agree(survivors, keep), 30, message="one configuration of the survivors")
    audit = [e for e in survivors[0].log_events() if e.get("event") == "voters_recovered"]
    assert audit and audit[0]["voters"] == ",".join(keep)


def test_members_detailed_shows_versions_and_roles(cluster):
    import json
    import subprocess
    import sys

    from corec_node import __version__
    from corec_node.wire import PROTOCOL

    nodes = start(cluster, ["v0", "v1", "v2"])
    eventually(lambda: voters_agree(nodes, ["v0", "v1", "v2"]), 30, message="every node a voter")
    for n in nodes:
        rows = eventually(lambda n=n: [m for m in n.ctl("members") if m["version"]] if all(
            m["version"] for m in n.ctl("members")) else None, 20, message="every member's build known")
        assert {m["name"]: (m["version"], m["protocol"], m["voter"]) for m in rows} == {
            name: (__version__, PROTOCOL, True) for name in ("v0", "v1", "v2")}
        assert all("voters" in m["features"] for m in rows)
    out = subprocess.run([sys.executable, "-m", "corec_node", "members", "--detailed", "--data-dir",
                          str(nodes[0].data_dir)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "VERSION" in out.stdout and __version__ in out.stdout and "voter" in out.stdout
    voters = json.loads(subprocess.run([sys.executable, "-m", "corec_node", "voters", "--json", "--data-dir",
                                        str(nodes[1].data_dir)], capture_output=True, text=True,
                                       timeout=30).stdout)
    assert "voters" in voters["features"] and voters["committed"]


def test_a_killed_leader_closes_its_connections_and_the_survivors_see_it(cluster):
    """Core rule 13: the socket monitor reports the closed connections of a SIGKILLed
    process (a hint: the probes still decide) and the survivors elect a new leader."""
    nodes = start(cluster, ["k0", "k1", "k2"])
    eventually(lambda: voters_agree(nodes, ["k0", "k1", "k2"]), 30, message="every node a voter")
    leader, term = eventually(lambda: agreed(nodes), 10, message="one agreed leader")
    victim = next(n for n in nodes if n.name == leader)
    survivors = [n for n in nodes if n is not victim]
    before = [n.ctl("status")["connection_hints"] for n in survivors]
    victim.kill()
    eventually(lambda: all(n.ctl("status")["connection_hints"] > b for n, b in zip(survivors, before)), 20,
               message="both survivors' monitors saw the connection close")
    new, new_term = eventually(lambda: agreed(survivors, not_=leader), 30, message="a new leader")
    assert new_term > term
    eventually(lambda: all(n.members()[leader] == "dead" for n in survivors), 20, message="dead by the probes")
