"""``corec-node explain BLOCK|ALERT``: a plain-language account of what happened to a block or
around an alert, built by rules from the rows a node keeps (its audit and alerts tables, its
block history, the nucleus's placement, the block's genome and current row). Pure: rows
in, a dict out; the node reads the rows (``shell/explain_facts.py``) and may have an
OpenAI-compatible endpoint reword the account (``shell/explain_llm.py``).

Rules of the account:

1. Facts first: every sentence of ``summary`` comes from a row, and every row used is in
   ``facts`` (the timeline, oldest first) with its time, its kind (``what``) and, for a
   nucleus decision, its ``term``. Nothing is guessed; what this node cannot know (a peer's
   history, repairs and trials stay on the nodes that held the block) is said so.
2. The ``digest`` covers the subject and the timeline, not the live aggregates (which move
   every tick): the same facts give the same digest, so a reworded account is cached by it.
3. Times are UTC, written the same way everywhere, so an account reads the same on every
   host and in tests.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

MAX_FACTS = 200  # the newest timeline entries an account carries (the counts cover them all)
ALERT_WINDOW = 900.0  # seconds around an alert in which its block's audit rows are "around it"

REPAIRS = ("regenerate", "block_repair")
TRIALS = ("genome_replaced", "genome_kept")


def block_name(block: int) -> str:
    return f"{block >> 32}:{block & 0xFFFFFFFF}"


def when(ts: float) -> str:
    """A time as every account writes it (rule 3)."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)) + " UTC"


def _num(v: Any, spec: str = ".3f") -> str:
    return "-" if v is None else format(v, spec)


_PLURALS = {"entity": "entities", "stretch": "stretches"}


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word if n == 1 else _PLURALS.get(word, word + 's')}"


def _sentence(text: str) -> str:
    text = str(text).strip()
    return text if text.endswith((".", "!", "?")) else text + "."


def _fact(ts: float, what: str, text: str, source: str, term: Any = None, **extra: Any) -> dict[str, Any]:
    return {"ts": float(ts), "what": what, "text": text, "term": term, "source": source, **extra}


# -- timeline entries from each kind of row -----------------------------------------------


def audit_fact(row: Mapping[str, Any], block: int | None = None) -> dict[str, Any]:
    """One audit row as a timeline entry, in words (engine/repair.py, engine/audit.py,
    engine/evolution.py and the shell write these kinds)."""
    kind, reason, d = row["kind"], row["reason"], row.get("details") or {}
    into = d.get("into")
    if kind == "fusion" and block is not None and into == block and d.get("block") != block:
        text = f"absorbed {row['subject']} ({_plural(int(d.get('entities') or 0), 'entity')}): {reason}"
        what = "fusion"
    elif kind == "fusion":
        target = f"block {block_name(into)}" if type(into) is int else "a stronger block"
        text = f"fused into {target} by the nucleus ({_plural(int(d.get('entities') or 0), 'entity')}): {reason}"
        what = "fusion"
    elif kind == "release":
        text, what = f"its fusion was released: {reason}", "fusion"
    elif kind in REPAIRS:  # the engine's reason says how many and why (engine/repair.py)
        text, what = f"{'entities regenerated' if kind == 'regenerate' else 'block repaired'}: {reason}", "repair"
    elif kind == "audit_flag":
        text = f"flagged by the audit (IsolationForest score {_num(d.get('score'))}): {reason}"
        what = "audit_flag"
    elif kind in TRIALS:
        verdict = "replaced by" if kind == "genome_replaced" else "kept against"
        text = (f"genome {d.get('current', '?')} {verdict} challenger {d.get('challenger', '?')} (generation "
                f"{d.get('generation', '?')}; forecast error {_num(d.get('current_mase'))} against "
                f"{_num(d.get('challenger_mase'))} over {d.get('judged', '?')} ticks): {reason}")
        what = "genome"
    else:
        text, what = f"{kind} ({row['subject']}): {reason}", kind
    return _fact(row["ts"], what, text, "audit", row.get("term"), kind=kind, uid=row.get("uid"))


def alert_fact(row: Mapping[str, Any]) -> dict[str, Any]:
    return _fact(row["ts"], "alert", f"{row['severity']} alert {row['kind']} raised by {row['node']}: "
                 f"{row['message']}", "alerts", node=row["node"], uid=row["uid"])


def tenure_fact(t: Mapping[str, Any], ongoing: bool) -> dict[str, Any]:
    """A stretch of ticks this node computed the block's aggregates, as its ``owner``
    column names (rule 2: an ongoing one says nothing of its growing end)."""
    if ongoing:
        text = f"{t['owner']} started computing its aggregates (still does)"
    else:
        text = (f"{t['owner']} computed its aggregates until {when(t['until'])} "
                f"({_plural(int(t['ticks']), 'tick')}, ticks {t['first_tick']}..{t['last_tick']})")
    return _fact(t["since"], "owner", text, "history", owner=t["owner"])


def _timeline(facts: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    facts.sort(key=lambda f: (f["ts"], f["what"], f["text"]))
    return facts[-MAX_FACTS:], max(0, len(facts) - MAX_FACTS)


def digest(subject: str, facts: Sequence[Mapping[str, Any]]) -> str:
    """Rule 2: what a reworded account is cached under."""
    body = json.dumps({"subject": subject, "facts": facts}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(body.encode()).hexdigest()[:16]


# -- a block --------------------------------------------------------------------------------


def block_account(
    block: int,
    *,
    now: float,
    node: str,
    row: Mapping[str, Any] | None = None,
    state: Mapping[str, Any] | None = None,
    held_here: bool = False,
    tenures: Sequence[Mapping[str, Any]] = (),
    history_gap: float = 30.0,
    audit: Sequence[Mapping[str, Any]] = (),
    alerts: Sequence[Mapping[str, Any]] = (),
    genome: Mapping[str, Any] | None = None,
    placement: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The account of ``block`` as ``node`` knows it.

    ``row``: its current row in the cluster's rows (owner's aggregates), if any; ``state``:
    its latest row in this node's store; ``tenures``: stretches of this node's history rows
    ``{owner, since, until, ticks, first_tick, last_tick}``, oldest first (one ending within
    ``history_gap`` seconds of ``now`` is ongoing); ``audit`` and ``alerts``: their rows
    about the block; ``genome``: ``engine.genome.to_dict``; ``placement``: the nucleus's
    confirmed ``{owner, term, updated_at}``."""
    name = block_name(block)
    facts = [audit_fact(r, block) for r in audit] + [alert_fact(r) for r in alerts]
    for i, t in enumerate(tenures):
        facts.append(tenure_fact(t, i == len(tenures) - 1 and now - t["until"] <= history_gap))
    if placement is not None:
        facts.append(_fact(placement["updated_at"], "placement", f"the nucleus confirmed {placement['owner']} as its "
                           f"owner", "placement", placement["term"], owner=placement["owner"]))
    facts, omitted = _timeline(facts)
    kinds = Counter(r["kind"] for r in audit)
    owner = (row or {}).get("owner")

    lines = [f"Block {name} is block {block & 0xFFFFFFFF} of channel {block >> 32} (id {block})."]
    if row is not None:
        lines.append(f"Its owner now is {owner}: {_plural(int(row.get('count') or 0), 'entity')} "
                     f"({int(row.get('active') or 0):,} active), mean {_num(row.get('mean'))}, error rate "
                     f"{_num(row.get('error_rate'))}, fitness {_num(row.get('fitness'))} at tick {row.get('tick')}.")
    elif state is not None:
        lines.append(f"The cluster's rows do not list it now; this node last stored its row at "
                     f"{when(state['ts'])} (owner {state['owner']}, tick {state['tick']}, "
                     f"{_plural(int(state.get('count') or 0), 'entity')}).")
    else:
        lines.append("The cluster's rows do not list it now.")
    if held_here:
        lines.append(f"{node} holds it{' as its owner' if owner == node else ' as a replica' if owner else ''}.")
    else:
        lines.append(f"{node} does not hold it: its history, repairs and genome trials are kept by the nodes "
                     f"that held it; what {node} has is its alerts and the rows the cluster shares.")
    if tenures:
        owners = sorted({t["owner"] for t in tenures})
        ticks = sum(int(t["ticks"]) for t in tenures)
        lines.append(f"{node}'s history has {_plural(ticks, 'tick')} of it from {when(tenures[0]['since'])} to "
                     f"{when(tenures[-1]['until'])}, in {_plural(len(tenures), 'stretch')} "
                     f"(owner{'s' if len(owners) > 1 else ''} {', '.join(owners)}).")
    events = []
    if kinds["regenerate"] or kinds["block_repair"]:
        n = sum(int((r.get("details") or {}).get("entities") or 0) for r in audit if r["kind"] in REPAIRS)
        events.append(f"repaired {_plural(kinds['regenerate'] + kinds['block_repair'], 'time')} "
                      f"({_plural(n, 'entity')} regenerated)")
    fused = [r for r in audit if r["kind"] == "fusion"]
    if fused:
        out = [r for r in fused if (r.get("details") or {}).get("into") != block]
        parts = []
        if out:
            last = out[-1]
            into = (last.get("details") or {}).get("into")
            parts.append(f"fused into {block_name(into) if type(into) is int else 'another block'} "
                         f"(term {last.get('term')})")
        if len(fused) > len(out):
            parts.append(f"absorbed {_plural(len(fused) - len(out), 'weaker block')}")
        events.append(" and ".join(parts))
    if kinds["release"]:
        events.append(f"had its fusion released {_plural(kinds['release'], 'time')}")
    if kinds["audit_flag"]:
        events.append(f"flagged by the audit {_plural(kinds['audit_flag'], 'time')}")
    if kinds["genome_replaced"] or kinds["genome_kept"]:
        events.append(f"ran {_plural(kinds['genome_replaced'] + kinds['genome_kept'], 'genome trial')} "
                      f"({kinds['genome_replaced']:,} replaced its genome)")
    if events:
        lines.append(f"Here it was {_join(events)}.")
    if alerts:
        last = alerts[-1]
        lines.append(f"{_plural(len(alerts), 'alert')} about it {'is' if len(alerts) == 1 else 'are'} kept here; "
                     f"the latest, {last['kind']} ({last['severity']}) from {last['node']} at {when(last['ts'])}: "
                     f"{_sentence(last['message'])}")
    if not events and not alerts:
        lines.append("No repair, fusion, audit flag, genome trial or alert about it is recorded here.")
    if genome is not None:
        parents = ", ".join(genome.get("parents") or ()) or "none, a first genome"
        lines.append(f"Its genome is {genome.get('id')} (generation {genome.get('generation')}; parents: {parents}).")
    if placement is not None:
        lines.append(f"The nucleus of term {placement['term']} confirmed {placement['owner']} as its owner.")
    subject = f"block {name}"
    return {"subject": subject, "kind": "block", "block": block, "name": name, "node": node,
            "summary": " ".join(lines), "facts": facts, "omitted": omitted, "digest": digest(subject, facts),
            "now": {k: (row or {}).get(k) for k in ("owner", "tick", "count", "active", "mean", "error_rate",
                                                    "fitness")},
            "genome": dict(genome) if genome is not None else None, "source": "rules"}


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


# -- an alert -------------------------------------------------------------------------------


def alert_account(
    alert: Mapping[str, Any],
    *,
    now: float,
    node: str,
    audit: Sequence[Mapping[str, Any]] = (),
    alerts: Sequence[Mapping[str, Any]] = (),
    row: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The account of one alert row: who raised it, when, about what; the other alerts of
    its kind about its block (``alerts``, the alert itself among them or not) and its
    block's audit rows within ``ALERT_WINDOW`` of it (``audit``: rows of that block; those
    further away are left out); ``row``: its block's current row."""
    uid, block = alert["uid"], alert.get("block")
    near = [r for r in audit if abs(r["ts"] - alert["ts"]) <= ALERT_WINDOW]
    same = [r for r in alerts if r["uid"] != uid and r["kind"] == alert["kind"]]
    facts, omitted = _timeline([alert_fact(alert)] + [audit_fact(r, block) for r in near]
                               + [alert_fact(r) for r in same])
    about = f"block {block_name(block)}" if type(block) is int else "no block"
    raiser = alert["node"]
    lines = [f"Alert {uid} ({alert['kind']}, {alert['severity']}) was raised by "
             f"{raiser}{' (this node)' if raiser == node else ''} at {when(alert['ts'])} "
             f"({_ago(now - alert['ts'])}), about {about}: {_sentence(alert['message'])}"]
    details = {k: v for k, v in (alert.get("details") or {}).items() if v is not None}
    if details:
        lines.append("It carried " + ", ".join(f"{k} {v}" for k, v in sorted(details.items())) + ".")
    before = [r for r in near if r["ts"] <= alert["ts"]]
    after = [r for r in near if r["ts"] > alert["ts"]]
    flags = [r for r in before if r["kind"] == "audit_flag"]
    if flags:
        lines.append(f"In the {ALERT_WINDOW / 60:g} minutes before it the audit flagged the block "
                     f"{_plural(len(flags), 'time')} (the last: {flags[-1]['reason']}).")
    others = [r for r in before if r["kind"] != "audit_flag"]
    if others:
        lines.append(f"Before it, here: {_join([audit_fact(r, block)['text'] for r in others[-3:]])}.")
    if after:
        lines.append(f"After it, here: {_join([audit_fact(r, block)['text'] for r in after[:3]])}"
                     f"{f' and {len(after) - 3} more' if len(after) > 3 else ''}.")
    if type(block) is int and not near:
        lines.append(f"No audit row about {about} within {ALERT_WINDOW / 60:g} minutes of it is kept here "
                     f"(the block's holders keep theirs).")
    if same:
        lines.append(f"This node keeps {_plural(len(same), 'other alert')} of kind {alert['kind']} about {about}, "
                     f"the latest at {when(same[-1]['ts'])}.")
    if row is not None:
        lines.append(f"The block's owner now is {row.get('owner')} (mean {_num(row.get('mean'))}, error rate "
                     f"{_num(row.get('error_rate'))}, fitness {_num(row.get('fitness'))}).")
    subject = f"alert {uid}"
    return {"subject": subject, "kind": "alert", "uid": uid, "block": block,
            "name": block_name(block) if type(block) is int else None, "node": node,
            "summary": " ".join(lines), "facts": facts, "omitted": omitted, "digest": digest(subject, facts),
            "source": "rules"}


def _ago(seconds: float) -> str:
    s = max(0.0, seconds)
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if s >= size:
            return f"{_plural(int(s // size), unit)} ago"
    return f"{_plural(int(s), 'second')} ago"


# -- for an endpoint, and for people -----------------------------------------------------------

INSTRUCTIONS = (
    "You explain to an operator what happened to a data block (or around an alert) in a CoreC node mesh: "
    "nodes own blocks of sensor entities, compute their aggregates every tick, repair them, fuse weak ones into "
    "strong ones, audit them with an IsolationForest, evolve their forecasting genomes, and raise alerts. "
    "Use only the facts given; do not invent causes, numbers or times. Write a short plain-language paragraph "
    "(at most 6 sentences), oldest events first, then what it means for the operator now."
)


def prompt(account: Mapping[str, Any]) -> list[dict[str, str]]:
    """The chat messages an OpenAI-compatible endpoint is sent for ``account``."""
    body = {k: account.get(k) for k in ("subject", "summary", "facts", "omitted", "now")}
    body["facts"] = [{k: v for k, v in f.items() if k not in ("uid", "source")} | {"time": when(f["ts"])}
                     for f in account["facts"]]
    return [{"role": "system", "content": INSTRUCTIONS},
            {"role": "user", "content": json.dumps(body, sort_keys=True, default=str)}]


def render(account: Mapping[str, Any]) -> str:
    """``explain``'s text: the account (reworded when it was), then the timeline."""
    out = []
    if account.get("refined"):
        out += [account["text"], "", f"(reworded by {account.get('model') or 'the endpoint'}; the account by rules:)",
                account["summary"]]
    else:
        out.append(account["summary"])
        if account.get("fallback"):
            out.append(f"(by rules: {account['fallback']})")
    out.append("")
    if account["facts"]:
        if account.get("omitted"):
            out.append(f"timeline (the newest {len(account['facts'])}; {account['omitted']:,} older not shown):")
        else:
            out.append("timeline:")
        for f in account["facts"]:
            term = f" [term {f['term']}]" if f.get("term") is not None else ""
            out.append(f"  {when(f['ts'])}  {f['what']:<10} {f['text']}{term}")
    else:
        out.append("timeline: nothing recorded here")
    return "\n".join(out)
