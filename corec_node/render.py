"""What the CLI prints for a node's answers: plain text tables and lines, one function per
command (``--json`` prints the answer itself). Pure: an answer in, text out."""

from __future__ import annotations

from typing import Any


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def render_members(members: list[dict[str, Any]]) -> str:
    rows = [["NAME", "ADDR", "STATUS", "INC"]]
    rows += [[m["name"] + (" *" if m.get("self") else ""), m["addr"], m["status"], str(m["incarnation"])] for m in members]
    return table(rows)


def render_members_detailed(members: list[dict[str, Any]]) -> str:
    rows = [["NAME", "ADDR", "STATUS", "INC", "ROLE", "VERSION", "PROTOCOL", "FEATURES", "TAGS"]]
    rows += [[m["name"] + (" *" if m.get("self") else ""), m["addr"], m["status"], str(m["incarnation"]),
              "voter" if m.get("voter") else "member", m.get("version") or "?", m.get("protocol") or "?",
              ",".join(m.get("features") or []) or "-",
              ",".join(f"{k}={v}" for k, v in sorted((m.get("tags") or {}).items())) or "-"] for m in members]
    return table(rows)


def render_status(s: dict[str, Any]) -> str:
    counts = ", ".join(f"{k} {v}" for k, v in s["members"].items() if v) or "none"
    lines = [
        f"name:     {s['name']}",
        f"address:  {s['addr']} (pub {s['pub']}, cluster {s['cluster']})",
        f"uptime:   {s['uptime']:.1f} s",
        f"members:  {counts}",
        f"leader:   {s['leader'] or '(none)'} (term {s['term']})",
        f"messages: {s['messages_in']} in, {s['messages_out']} out, {sum(s['rejected'].values())} rejected",
    ]
    for extra in ("entities", "blocks"):
        if extra in s:
            lines.append(f"{extra + ':':<9} {s[extra]}")
    if "ingested" in s:
        flow = s.get("flow", {})
        lines.append(f"ingest:   {s['ingested']:,} records, {s.get('ingest_queue_bytes', 0) / 2**20:.1f} MiB queued, "
                     f"{s.get('ingest_dropped', 0)} batches dropped; pauses asked {flow.get('requests', 0)}, "
                     f"producer batches held {flow.get('holds', 0)}")
    lines += _accounting_lines(s)
    if s.get("storage"):
        lines.append(f"storage:  {render_storage(s['storage'])}")
    if s.get("engine_stalled"):
        lines.append("STALLED:  the data plane stopped beating: this node stands for nothing and does not lead")
    if s.get("disk_error"):
        lines.append(f"DISK:     {s['disk_error']} (not voting until it can be written)")
    for c in s.get("name_conflicts", []):
        lines.append(f"CONFLICT: node at {c['addr']} also uses the name {c['name']!r}")
    return "\n".join(lines)


def render_storage(st: dict[str, Any]) -> str:
    """Where block state is kept and how far behind the PostgreSQL copy is."""
    text = f"sqlite {st.get('sqlite') or '-'}"
    if st.get("postgres"):
        text += (f"; postgres {st['postgres']}{'' if st.get('connected', True) else ' (not connected)'}: "
                 f"outbox {st.get('outbox', 0):,} rows, sync lag {st.get('sync_lag', 0.0):.1f} s")
        if st.get("last_error"):
            text += f", last error: {st['last_error']}"
    else:
        text += "; postgres off"
    errors = st.get("errors", 0)
    return text + (f"; {errors:,} write errors" if errors else "")


def _counts(counts: dict[str, int]) -> str:
    """``{"busy": 10000}`` as " (busy 10,000)", nothing when empty."""
    return f" ({', '.join(f'{k} {v:,}' for k, v in sorted(counts.items()))})" if counts else ""


def _batches(n: int) -> str:
    return f"{n:,} batch" if n == 1 else f"{n:,} batches"


def _accounting_lines(s: dict[str, Any]) -> list[str]:
    """Where records went (SPEC 9.4), stream gaps, heartbeat gaps and dropped messages."""
    lines = []
    if "producers" in s:
        p = s["producers"]
        rejected = p.get("rejected", {})
        lines.append(f"records:  {p['records']:,} from producers ({_batches(p['batches'])}): {p['accepted']:,} accepted, "
                     f"{sum(rejected.values()):,} rejected{_counts(rejected)}, {_batches(p.get('waiting', 0))} waiting")
    if "dropped_records" in s:
        lost = s["dropped_records"]
        lines.append(f"lost:     {sum(lost.values()):,} records after they arrived{_counts(lost)}")
    if "stream_gaps" in s:
        lines.append(f"stream:   {s['stream_gaps']:,} batches missed (sequence gaps)")
    if s.get("rows_ignored"):
        lines.append(f"rows:     {s['rows_ignored']:,} aggregate rows of other owners ignored (keys or types not SPEC 9.2's)")
    if "heartbeat_gap_max" in s:
        lines.append(f"beats:    largest gap {s['heartbeat_gap_max']:.3f} s between the leader's heartbeats, "
                     f"{s.get('heartbeat_gaps_late', 0):,} late")
    if s.get("dropped"):
        lines.append(f"dropped:  {sum(s['dropped'].values()):,} messages{_counts(s['dropped'])}")
    if s.get("link_dropped"):  # between the node's own two processes
        lines.append(f"link:     {sum(s['link_dropped'].values()):,} messages dropped{_counts(s['link_dropped'])}")
    return lines


def render_blocks(rows: list[dict[str, Any]]) -> str:
    def f(v: Any) -> str:
        return "-" if v is None else f"{v:.3f}"

    nano = any("nano_forecast" in r or "nano_error" in r for r in rows)  # intelligent channels: two more columns
    cells = [["BLOCK", "CHANNEL", "OWNER", "REPLICAS", "COUNT", "ACTIVE", "MEAN", "MIN", "MAX", "STD", "ERRORS",
              "FITNESS", "FORECAST", "F.ERR", *(["NANO", "N.ERR"] if nano else []), "GEN", "TICK"]]
    for r in rows:
        cells.append([f"{r['channel']}:{r['block'] & 0xFFFFFFFF}", str(r["channel"]), r["owner"],
                      ",".join(r.get("replicas") or ()) or "-", str(r["count"]),
                      str(r["active"]), f(r["mean"]), f(r["min"]), f(r["max"]), f(r["std"]), f(r.get("error_rate")),
                      f(r["fitness"]), f(r.get("forecast")), f(r.get("forecast_error")),
                      *([f(r.get("nano_forecast")), f(r.get("nano_error"))] if nano else []),
                      str(r.get("generation", "-")), str(r["tick"])])
    total = sum(r["count"] for r in rows)
    footer = f"\n{len(rows)} blocks, {total} entities"
    if rows and "epoch" in rows[0]:  # what the answer is made of: compare it between nodes
        owners = ", ".join(sorted({r["owner"] for r in rows}))
        footer += f"; map epoch {rows[0]['epoch']}, rows from {owners}, latest tick {max(r['tick'] for r in rows)}"
    return table(cells) + footer


def render_alerts(rows: list[dict[str, Any]]) -> str:
    """``alerts``: one line each, oldest first, with the node that raised it."""
    import time

    if not rows:
        return "no alerts"
    cells = [["TIME", "NODE", "SEVERITY", "KIND", "BLOCK", "TEXT"]]
    cells += [[time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["ts"])), r["node"], r["severity"], r["kind"],
               r["name"] or "-", r["text"]] for r in rows]
    return table(cells)


def render_drift(r: dict[str, Any]) -> str:
    """``drift``: one line per differing key and member, or that they agree."""
    unknown = f"; not compared (older than protocol 1.10): {', '.join(r['unknown'])}" if r["unknown"] else ""
    if not r["differences"]:
        return f"no drift: {len(r['members'])} members agree on {r['keys']} settings{unknown}"
    cells = [["KEY", "MEMBER", "VALUE"]]
    for d in r["differences"]:
        cells += [[d["key"], name, "(none)" if value is None else value] for name, value in d["values"].items()]
    return (f"drift: {len(r['differences'])} of {r['keys']} settings differ between {len(r['members'])} members"
            f"{unknown}\n" + table(cells))


def render_genome(r: dict[str, Any]) -> str:
    """``genome BLOCK``: the genome, where it came from, and the trials run on it here."""
    def f(v: Any) -> str:
        return "-" if v is None else f"{v:.3f}"

    g = r["genome"]
    lines = [f"block {r['name']} (owner {r['owner'] or '-'}; {'held here' if r['held_here'] else 'not held here'})"]
    if g is None:
        lines.append("genome: not heard yet")
    else:
        parents = ", ".join(g["parents"]) or "none (a first genome)"
        lines.append(f"genome {g['id']}, generation {g['generation']}, parents: {parents}")
        meaning = {row["gene"]: row for row in r.get("genes", ())}
        lines.append(table([["GENE", "VALUE", "RANGE", "EVOLVES"]] + [
            [k, str(v), str(meaning.get(k, {}).get("range", "")), "yes" if meaning.get(k, {}).get("evolves") else "no"]
            for k, v in g["params"].items()]))
    lines.append(f"mean {f(r['mean'])}, forecast {f(r['forecast'])}, forecast error {f(r['forecast_error'])} "
                 f"(against naive; below 1 is better), fitness {f(r['fitness'])}, tick {r['tick'] if r['tick'] is not None else '-'}")
    if r["trials"]:
        lines.append(table([["KIND", "CURRENT", "CHALLENGER", "CURRENT ERR", "CHALLENGER ERR", "TICKS"]] + [
            [t["kind"], t.get("current", "-"), t.get("challenger", "-"), f(t.get("current_mase")),
             f(t.get("challenger_mase")), str(t.get("judged", "-"))] for t in r["trials"]]))
    else:
        lines.append("no shadow trials run here (the block's owner runs them)")
    return "\n".join(lines)


def render_plugins(rows: list[dict[str, Any]], view: str = "node", note: str = "") -> str:
    """One table for both views of ``plugins``; the installed view says it is one, and
    ``note`` why no node was asked."""
    head = f"{note or 'not asking a node'}: the plugins a node with this config would load\n" if view == "installed" else ""
    if not rows:
        return head + ("no plugins loaded" if view == "node"
                       else "(no plugins installed: pip install a corec-* plugin, or set plugins.paths)")
    watched = any(r.get("memory_bytes") is not None for r in rows)  # plugins.memory_watch is on
    cells = [["NAME", "VERSION", "SOURCE", "STATE", "FAULTS", *(["MEMORY"] if watched else []), "HOOKS", "REASON"]]
    cells += [[r["name"], str(r.get("version") or "-"), r["source"], r["state"], str(r["faults"]),
               *([_plugin_memory(r)] if watched else []),
               ",".join(h.removeprefix("corec_") for h in r["hooks"]) or "-", r.get("reason") or ""]
              for r in rows]
    return head + table(cells)


def _plugin_memory(r: dict[str, Any]) -> str:
    """Traced MiB, of its limit when it has one: ``12.0/256 MiB``."""
    held, limit = r.get("memory_bytes"), r.get("memory_limit_bytes")
    if held is None:
        return "-"
    return f"{held / 2**20:.1f}/{limit / 2**20:g} MiB" if limit else f"{held / 2**20:.1f} MiB"


def render_leader(r: dict[str, Any]) -> str:
    return f"{r['leader'] or '(none)'} (term {r['term']})"


def render_voters(r: dict[str, Any]) -> str:
    state = "committed" if r["committed"] else "not yet known committed"
    rows = [["NAME", "ADDR", "ROLE"]]
    rows += [[v["name"], v["addr"], "leader" if v["name"] == r["leader"] else "voter"] for v in r["voters"]]
    head = f"configuration {r['index']} (made in term {r['config_term']}, {state}); leader {r['leader'] or '(none)'} (term {r['term']})"
    return head + ("\n" + table(rows) if r["voters"] else "\nno voters: this node has not been added to a cluster yet")


def render_settings(r: dict[str, Any]) -> str:
    """``corec-node settings``: the committed values; where this node's file differs."""
    if not r["committed"]:
        return ("no settings committed yet (the leader writes them with its next configuration; until then each node "
                "runs with its own file)")
    lines = []
    if r.get("changed"):
        lines.append("committed: " + ", ".join(f"{k}={v}" for k, v in sorted(r["changed"].items()))
                     + f" (configuration {r['index']}; every node restarts in place to run with them)")
    width = max(len(k) for k in r["committed"])
    for key, value in sorted(r["committed"].items()):
        diff = r["differences"].get(key)
        note = f"   this node's file says {diff['file']}: running with {value}" if diff else ""
        lines.append(f"{key:<{width}}  {value}{note}")
    return "\n".join(lines)
