"""A leader cut off by its link on a real network: how soon it steps down, how soon the
others agree on a new one, and whether the two leaderships ever overlap.

Runs real ``corec-node run`` processes on the namespace test bed
(``corec_node.testing.netns``: one network namespace per node, veth pairs, bridges) with
the product's timers (``--profile lan`` unless told). Each round: all ``--size`` nodes are
committed voters with one agreed leader; the leader's link is cut (its veth detached from
the bridge, or set down: ``--cut``); then, from the nodes' own ``leader_changed`` log lines
(one clock: the same host), measured from the moment the cut was issued:

- (a) step-down: the old leader's own line naming no leader (its lease ran out);
- (b) replaced: the last of the others to name the new leader, the one they all agreed on;
- overlap: the new leader's own election line before the old leader's step-down line
  means two leaders at once (a safety bug, printed with the log lines); the gap between
  them is the time with no leader.

Then the link is healed and the round ends once all nodes name one leader (timed, and any
election the heal itself caused is counted). A flapping variant follows (``--flap-seconds``,
0 to skip): the leader's link, then a follower's, cut and restored every ``--flap-period`` s;
counted: elections, step-downs and dead verdicts meanwhile. Single outages of the leader's
link (``--blips``, a few lengths) show how short one may be before it costs the leadership.

The two ways of cutting differ once the link is back. Detached and re-attached, the node's
traffic resumes at once (then TCP's retransmission timers, 200 ms and doubling, decide).
Set down, the node's interface loses its carrier and with it its ARP entries, so after
the link is up again its packets wait for the next ARP retry: with Linux's default 1 s
``retrans_time``, traffic resumes only on the next whole second after the cut, whatever
the outage's length (a cable pulled and plugged back in behaves the same way).

Finally the lab's safety checker reads every leader history.

Prints a table and one JSON line (``--json``: the JSON line only). Never passes or fails;
exits 0 saying why when network namespaces cannot be made (root and iproute2 needed).
Usage:
    python bench/partition.py [--rounds 10] [--size 5] [--cut both|isolate|down] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from corec_node.log import parse_line
from corec_node.mesh.core import CLOCK_DRIFT
from corec_node.mesh.election import ElectionConfig
from corec_node.testing.cluster import eventually, voters_agree
from corec_node.testing.netns import NetLab, available, leader_events

TARGET_S = 2.0  # a leader cut off by a link is replaced within 2 s
SETTLE = 60.0  # s: boot, verdicts, promotions, elections
SLACK = 0.002  # log stamps are truncated to the millisecond


def log(*parts: Any) -> None:
    print(*parts, file=sys.stderr, flush=True)


def agreed(nodes, not_: str | None = None):
    """(leader, term) if every node names the same leader, one of ``nodes``; else None."""
    views = {(r["leader"], r["term"]) for r in (n.ctl("leader") for n in nodes)}
    if len(views) != 1:
        return None
    leader, term = views.pop()
    return (leader, term) if leader in {n.name for n in nodes} and leader != not_ else None


def all_alive(nodes) -> bool:
    names = [n.name for n in nodes]
    return all(all(m.get(x) == "alive" for x in names) for m in (n.members() for n in nodes))


def settled(nodes):
    """Every node alive to every other, all committed voters, one agreed leader."""
    eventually(lambda: all_alive(nodes), SETTLE, message="all alive everywhere")
    eventually(lambda: voters_agree(nodes, [n.name for n in nodes]), SETTLE, message="all committed voters")
    return eventually(lambda: agreed(nodes), SETTLE, message="one agreed leader")


def lines(node, since: float, event: str) -> list[tuple[float, dict[str, str]]]:
    """(wall time, fields) of ``node``'s log lines of ``event`` stamped at or after ``since``."""
    out = []
    for line in node.log_path.read_text(errors="replace").splitlines():
        if line.startswith("ts=") and f"event={event}" in line:
            e = parse_line(line)
            if e.get("event") == event:
                t = _wall(e["ts"])
                if t >= since - SLACK:
                    out.append((t, e))
    return out


def _wall(ts: str) -> float:
    return datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


def changes(node, since: float) -> list[tuple[float, str | None, int]]:
    """(wall time, leader, term) of ``node``'s leader_changed lines since ``since``."""
    return [(t, leader, term) for t, _, leader, term in leader_events(node.log_path) if t >= since - SLACK]


def first(node, since: float, pred, what: str, timeout: float = 5.0) -> tuple[float, str | None, int]:
    """The first leader_changed line of ``node`` since ``since`` that ``pred`` accepts (the
    control socket may answer a moment before the line is flushed: wait for it)."""
    found = eventually(lambda: next((c for c in changes(node, since) if pred(c)), None), timeout,
                       message=f"{node.name}: {what}")
    return found


def cut(lab: NetLab, name: str, how: str) -> tuple[float, float]:
    t0 = time.time()
    if how == "isolate":
        lab.isolate(name)
    else:
        lab.link_down(name)
    return t0, time.time()


def restore(lab: NetLab, name: str, how: str) -> None:
    if how == "down":
        lab.link_up(name)
    else:
        lab.place(name, "a")


def round_once(lab: NetLab, nodes, how: str, quiet: float) -> dict[str, Any]:
    """One cut of the leader's link, measured, then healed."""
    by = {n.name: n for n in nodes}
    old, term = settled(nodes)
    time.sleep(quiet)  # the leases of a steady cluster, not of the last promotion
    old, term = eventually(lambda: agreed(nodes), SETTLE, message="one agreed leader before the cut")
    rest = [n for n in nodes if n.name != old]
    t0, t_issued = cut(lab, old, how)
    new, new_term = eventually(lambda: agreed(rest, not_=old), SETTLE, message="the rest agree on a new leader")
    eventually(lambda: by[old].ctl("leader")["leader"] != old, SETTLE, message=f"{old} steps down")
    down_t, _, _ = first(by[old], t0, lambda c: c[1] != old, "step-down line")
    elected_t, _, _ = first(by[new], t0, lambda c: c[1] == new and c[2] == new_term, "self-election line")
    seen = {n.name: first(n, t0, lambda c: c[1] == new and c[2] == new_term, f"names {new}")[0] for n in rest}
    agree_t = max(seen.values())
    # every leader any other node named meanwhile (a second claimant would show here)
    claims = sorted({(leader, tm) for n in rest for t, leader, tm in changes(n, t0)
                     if leader is not None and t <= agree_t + SLACK})
    terms = sorted({tm for n in nodes for t, _, tm in changes(n, t0) if tm > term and t <= agree_t + SLACK})
    r: dict[str, Any] = {
        "cut": how, "old": old, "new": new, "term": term, "new_term": new_term,
        "issue_s": t_issued - t0,
        "stepdown_s": down_t - t0,
        "elected_s": elected_t - t0,
        "replaced_s": agree_t - t0,
        "gap_s": elected_t - down_t,  # < 0: two leaders at once
        "elections": len(terms),
        "claims": [list(c) for c in claims],
    }
    if elected_t < down_t:
        r["overlap_lines"] = overlap_lines(lab, t0, agree_t)
    t_heal = time.time()
    lab.heal()
    final, final_term = settled(nodes)
    r["heal_s"] = time.time() - t_heal
    r["heal_elections"] = final_term - new_term
    r["heal_leader"] = final
    return r


def overlap_lines(lab: NetLab, since: float, until: float) -> list[str]:
    """Every node's leader_changed lines in the window, for a report of two leaders at once."""
    out = []
    for node in lab.nodes.values():
        for line in node.log_path.read_text(errors="replace").splitlines():
            if "event=leader_changed" in line and line.startswith("ts="):
                t = _wall(parse_line(line)["ts"])
                if since - SLACK <= t <= until + SLACK:
                    out.append(line)
    return sorted(out)


def flap(lab: NetLab, nodes, target: str, seconds: float, period: float, quiet: float,
         how: str = "down") -> dict[str, Any]:
    """``target``'s link (the leader's or a follower's) cut and restored every ``period`` s
    for ``seconds``; what it cost: elections, step-downs, dead verdicts."""
    settled(nodes)
    time.sleep(quiet)
    leader, term = eventually(lambda: agreed(nodes), SETTLE, message="one agreed leader before flapping")
    victim = leader if target == "leader" else next(n.name for n in nodes if n.name != leader)
    t0 = time.time()
    end = time.monotonic() + seconds
    flips = 0
    while time.monotonic() < end:
        cut(lab, victim, how)
        time.sleep(period)
        restore(lab, victim, how)
        time.sleep(period)
        flips += 1
    t_up = time.time()
    final, final_term = settled(nodes)
    converge_s = time.time() - t_up
    time.sleep(quiet)  # late verdicts land in the count too
    deaths = [(n.name, e.get("name")) for n in nodes for _, e in lines(n, t0, "member_changed") if e.get("new") == "dead"]
    suspects = [(n.name, e.get("name")) for n in nodes for _, e in lines(n, t0, "member_changed")
                if e.get("new") == "suspect"]
    terms = sorted({tm for n in nodes for _, _, tm in changes(n, t0) if tm > term})
    stepdowns, prev = [], leader
    for t, lead, _ in changes(lab.nodes[leader], t0):
        if prev == leader and lead != leader:
            stepdowns.append(t - t0)
        prev = lead
    return {
        "target": target, "cut": how, "node": victim, "leader": leader, "outages": flips, "period_s": period,
        "seconds": seconds, "elections": len(terms), "leader_after": final, "term_after": final_term,
        "leader_stepdowns": len(stepdowns), "first_stepdown_s": stepdowns[0] if stepdowns else None,
        "dead_verdicts": len(deaths), "dead_nodes": sorted({name for _, name in deaths}),
        "dead_of_it": sum(1 for _, name in deaths if name == victim),
        "dead_by_it": sum(1 for obs, _ in deaths if obs == victim),
        "dead_of_others": sum(1 for obs, name in deaths if victim not in (obs, name)),
        "suspect_verdicts": len(suspects), "converge_s": converge_s,
    }


def blip(lab: NetLab, nodes, seconds: float, how: str, quiet: float) -> dict[str, Any]:
    """One outage of the leader's link, ``seconds`` long: did it cost the leadership?"""
    settled(nodes)
    time.sleep(quiet)
    leader, term = eventually(lambda: agreed(nodes), SETTLE, message="one agreed leader before the outage")
    t0, _ = cut(lab, leader, how)
    time.sleep(max(0.0, t0 + seconds - time.time()))
    restore(lab, leader, how)
    t_up = time.time()
    time.sleep(3.0)  # the lease, TCP's backed-off retransmissions and a full election timeout
    final, final_term = settled(nodes)
    own = changes(lab.nodes[leader], t0)
    down = next((t - t0 for t, lead, _ in own if lead != leader), None)
    deaths = [e.get("name") for n in nodes for _, e in lines(n, t0, "member_changed") if e.get("new") == "dead"]
    return {"outage_s": round(t_up - t0, 4), "leader": leader, "stepdown_s": down, "elections": final_term - term,
            "leader_after": final, "dead_verdicts": len(deaths)}


def stats(xs: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(xs), 4), "worst": round(max(xs), 4), "best": round(min(xs), 4)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--size", type=int, default=5, help="voters (all nodes are voters)")
    parser.add_argument("--cut", choices=("both", "isolate", "down"), default="both",
                        help="detach the leader's veth from the bridge, set it down, or alternate")
    parser.add_argument("--profile", choices=("lan", "edge", "test"), default="lan", help="node timer profile")
    parser.add_argument("--quiet", type=float, default=1.0, help="s of steady cluster before each cut")
    parser.add_argument("--flap-seconds", type=float, default=10.0, help="0: no flapping variant")
    parser.add_argument("--flap-period", type=float, default=0.5, help="s down, then s up")
    parser.add_argument("--flap-cut", choices=("both", "down", "isolate"), default="both",
                        help="flap by setting the veth down and up, by detaching and re-attaching it, or each")
    parser.add_argument("--blip-cut", choices=("isolate", "down"), default="isolate",
                        help="single outages by detaching the veth (a clean outage) or setting it down "
                             "(the node's ARP entries go with the carrier: traffic waits for an ARP retry)")
    parser.add_argument("--blips", default="0.1,0.2,0.3,0.5",
                        help="single outages of the leader's link, s, comma-separated ('' for none)")
    parser.add_argument("--blip-reps", type=int, default=3, help="outages of each length")
    parser.add_argument("--json", action="store_true", help="print the JSON line only")
    args = parser.parse_args()

    ok, why = available()
    if not ok:
        print(f"partition bench skipped: network namespaces cannot be made here: {why}")
        print(json.dumps({"bench": "partition", "skipped": why}))
        return 0

    ecfg = getattr(ElectionConfig, args.profile)()
    lease = ecfg.election_timeout_min * (1 - CLOCK_DRIFT)
    names = [f"n{i}" for i in range(1, args.size + 1)]
    env = {"COREC_MESH_PROFILE": args.profile}
    rounds: list[dict[str, Any]] = []
    flaps: list[dict[str, Any]] = []
    blips: list[dict[str, Any]] = []
    lab = NetLab(Path(tempfile.mkdtemp(prefix="corec-bench-partition-")))
    try:
        first_node = lab.start(names[0], env=env)
        nodes = [first_node] + [lab.start(n, join=[first_node.addr], env=env) for n in names[1:]]
        for n in nodes:
            n.wait_ready(30)
        log(f"{args.size} nodes up in namespaces ({lab.root}); waiting for {args.size} committed voters")
        settled(nodes)
        for i in range(args.rounds):
            how = args.cut if args.cut != "both" else ("isolate", "down")[i % 2]
            r = round_once(lab, nodes, how, args.quiet)
            rounds.append(r)
            log(f"round {i + 1}: {how:<7} {r['old']} -> {r['new']} (term {r['term']} -> {r['new_term']}, "
                f"{r['elections']} election(s)): step-down {r['stepdown_s']:.3f} s, elected {r['elected_s']:.3f} s, "
                f"all agree {r['replaced_s']:.3f} s, gap {r['gap_s'] * 1000:+.0f} ms; heal {r['heal_s']:.2f} s"
                + (f", heal re-elected ({r['heal_elections']} term(s))" if r["heal_elections"] else ""))
            if r["claims"] != [[r["new"], r["new_term"]]]:
                log(f"  leaders named by the others meanwhile: {r['claims']}")
            if r["gap_s"] < 0:
                log("  TWO LEADERS AT ONCE:\n    " + "\n    ".join(r["overlap_lines"]))
        flap_cuts = ("down", "isolate") if args.flap_cut == "both" else (args.flap_cut,)
        for how in flap_cuts if args.flap_seconds > 0 else ():
            for target in ("leader", "follower"):
                f = flap(lab, nodes, target, args.flap_seconds, args.flap_period, args.quiet, how)
                flaps.append(f)
                log(f"flapping {target} {f['node']} ({how}): {f['outages']} outages of {args.flap_period:g} s, "
                    f"{f['elections']} election(s), {f['leader_stepdowns']} step-down(s) of the leader, "
                    f"{f['dead_verdicts']} dead verdict(s), {f['suspect_verdicts']} suspect(s)")
        for d in [float(x) for x in args.blips.split(",") if x.strip()]:
            for _ in range(args.blip_reps):
                b = blip(lab, nodes, d, args.blip_cut, args.quiet)
                b["requested_s"] = d
                blips.append(b)
                log(f"outage of {d:g} s ({args.blip_cut}) of leader {b['leader']}: "
                    + (f"stepped down {b['stepdown_s']:.3f} s after the cut" if b["stepdown_s"] is not None
                       else "kept its leadership")
                    + f", {b['elections']} election(s), {b['dead_verdicts']} dead verdict(s)")
        violations = lab.check(names)
    finally:
        lab.close()

    out = report(args, rounds, flaps, blips, violations, lease, ecfg)
    if not args.json:
        print_table(args, rounds, flaps, blips, violations, lease, ecfg)
    print(json.dumps(out))
    return 0


def report(args, rounds, flaps, blips, violations, lease, ecfg) -> dict[str, Any]:
    out: dict[str, Any] = {
        "bench": "partition", "profile": args.profile, "size": args.size, "rounds": len(rounds),
        "target_s": TARGET_S, "lease_s": round(lease, 4),
        "election_timeout_s": [ecfg.election_timeout_min, ecfg.election_timeout_max],
    }
    if rounds:
        gaps = [r["gap_s"] for r in rounds]
        out.update({
            "stepdown_s": stats([r["stepdown_s"] for r in rounds]),
            "elected_s": stats([r["elected_s"] for r in rounds]),
            "replaced_s": stats([r["replaced_s"] for r in rounds]),
            "no_leader_gap_s": stats(gaps),
            "overlap_rounds": sum(1 for g in gaps if g < 0),
            "max_overlap_s": round(max(0.0, -min(gaps)), 4),
            "within_target": sum(1 for r in rounds if r["replaced_s"] <= TARGET_S),
            "extra_elections": sum(r["elections"] - 1 for r in rounds),
            "heal_s": stats([r["heal_s"] for r in rounds]),
            "heal_elections": sum(1 for r in rounds if r["heal_elections"]),
            "runs": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in rounds],
        })
    if flaps:
        out["flap"] = [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in f.items()} for f in flaps]
    if blips:
        out["blip_cut"] = args.blip_cut
        out["blips"] = [summary_of_blips(d, [b for b in blips if b["requested_s"] == d])
                        for d in sorted({b["requested_s"] for b in blips})]
    out["violations"] = violations
    return out


def summary_of_blips(d: float, bs: list[dict[str, Any]]) -> dict[str, Any]:
    downs = [b["stepdown_s"] for b in bs if b["stepdown_s"] is not None]
    return {"outage_s": d, "outages": len(bs), "leader_lost": len(downs),
            "stepdown_s": [round(x, 4) for x in downs], "elections": sum(b["elections"] for b in bs),
            "dead_verdicts": sum(b["dead_verdicts"] for b in bs)}


def print_table(args, rounds, flaps, blips, violations, lease, ecfg) -> None:
    print(f"leader cut off by its link: {len(rounds)} rounds, {args.size} voters in network namespaces, "
          f"{args.profile} timers (leader lease {lease:.2f} s, election timeouts "
          f"{ecfg.election_timeout_min:g}-{ecfg.election_timeout_max:g} s), cut: {args.cut}")
    if rounds:
        print(f"{'from the cut (s)':<44}{'median':>8}{'worst':>8}{'target':>8}")

        def row(label: str, key: str, target: str) -> None:
            xs = [r[key] for r in rounds]
            print(f"{label:<44}{statistics.median(xs):>8.3f}{max(xs):>8.3f}{target:>8}")

        row("(a) old leader steps down (its lease)", "stepdown_s", f"<{ecfg.election_timeout_min:g}")
        row("    new leader elected (its own line)", "elected_s", "")
        row(f"(b) the {args.size - 1} others agree on the new leader", "replaced_s", f"<{TARGET_S:g}")
        gaps = [r["gap_s"] for r in rounds]
        print(f"{'no leader: step-down to election, min / median':<44}{min(gaps):>8.3f}{statistics.median(gaps):>8.3f}{'> 0':>8}")
        over = [g for g in gaps if g < 0]
        print(f"two leaders at once: {len(over)} of {len(rounds)} rounds"
              + (f" (worst overlap {-min(over) * 1000:.0f} ms)" if over else ""))
        print(f"replaced within {TARGET_S:g} s: {sum(1 for r in rounds if r['replaced_s'] <= TARGET_S)} of {len(rounds)}; "
              f"elections per cut: {sorted(r['elections'] for r in rounds)}")
        hs = [r["heal_s"] for r in rounds]
        print(f"heal: all {args.size} agree again in {statistics.median(hs):.2f} s median, {max(hs):.2f} s worst; "
              f"heals that caused an election: {sum(1 for r in rounds if r['heal_elections'])}")
        for how in ("isolate", "down"):
            sub = [r for r in rounds if r["cut"] == how]
            if sub and args.cut == "both":
                print(f"  cut by {how:<7}: (a) {statistics.median([r['stepdown_s'] for r in sub]):.3f} / "
                      f"{max(r['stepdown_s'] for r in sub):.3f}, (b) {statistics.median([r['replaced_s'] for r in sub]):.3f} / "
                      f"{max(r['replaced_s'] for r in sub):.3f} (median / worst, {len(sub)} rounds)")
    for f in flaps:
        first_down = f" (the first {f['first_stepdown_s']:.2f} s in)" if f["first_stepdown_s"] is not None else ""
        print(f"flapping {f['target']} link ({f['node']}, {f['cut']} {f['period_s']:g} s / up {f['period_s']:g} s, "
              f"{f['outages']} outages): elections {f['elections']}, step-downs of leader {f['leader']} "
              f"{f['leader_stepdowns']}{first_down}; dead verdicts {f['dead_verdicts']}: {f['dead_of_it']} of "
              f"{f['node']}, {f['dead_by_it']} by it, {f['dead_of_others']} among the others; suspects "
              f"{f['suspect_verdicts']}; one leader again {f['converge_s']:.2f} s after the last outage")
    if blips:
        print(f"single outages of the leader's link ({args.blip_cut}), lease {lease:.2f} s:")
        for d in sorted({b["requested_s"] for b in blips}):
            b = summary_of_blips(d, [x for x in blips if x["requested_s"] == d])
            when = ", ".join(f"{x:.2f}" for x in b["stepdown_s"])
            print(f"  {d:>4g} s: leadership lost {b['leader_lost']} of {b['outages']}"
                  + (f" (step-down {when} s after the cut)" if when else "")
                  + f", elections {b['elections']}, dead verdicts {b['dead_verdicts']}")
    print("safety checker (every leader history): " + ("clean" if not violations else "\n  " + "\n  ".join(violations)))


if __name__ == "__main__":
    sys.exit(main())
