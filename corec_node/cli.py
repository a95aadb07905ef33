"""``corec-node``: run a node, and talk to a running one through its control socket.

Exit codes: 0 success, 1 failure (node unreachable, command refused, node failed),
2 usage or configuration error, 65 a damaged data directory (``check``; ``run`` refuses to
start on one: restarting cannot repair it, ``recover`` can). ``--json`` output is built
from plain dicts whose keys are a public interface: scripts rely on them.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from corec_node import __version__
from corec_node.config import Config, ConfigError, load_config
from corec_node.render import (  # the text of each command's answer
    render_alerts,
    render_blocks,
    render_drift,
    render_genome,
    render_leader,
    render_members,
    render_members_detailed,
    render_plugins,
    render_settings,
    render_status,
    render_voters,
)

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
EXIT_DAMAGED = 65  # EX_DATAERR: the data directory is damaged; the systemd units do not restart on it
EXIT_PIPE = 128 + 13  # SIGPIPE's exit status: what a shell shows for `cat big | head`


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="TOML config file (default: none, built-in defaults)")
    p.add_argument("--data-dir", metavar="DIR", help="node data directory (holds the control socket)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="corec-node",
        description="CoreC: a brokerless node mesh. Run a node, join peers, look at the cluster.",
    )
    parser.add_argument("--version", action="version", version=f"corec-node {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    parser.set_defaults(_commands=sub)  # where plugins add theirs (add_plugin_commands)

    run = sub.add_parser("run", help="run a node in the foreground", description="Run a node in the foreground until SIGINT/SIGTERM.")
    _common(run)
    run.add_argument("--name", help="node name (default: the host name)")
    run.add_argument("--listen", metavar="HOST:PORT", help="direct (ROUTER) address; PUB is the next port")
    run.add_argument("--advertise", metavar="HOST:PORT", help="address peers dial (default: --listen)")
    run.add_argument("--join", metavar="HOST:PORT", nargs="+", help="peers to join at start")
    run.add_argument("--join-required", action="store_true", default=None,
                     help="exit 1 when none of the --join peers answers within mesh.join_timeout (30 s)")
    run.add_argument("--profile", choices=("lan", "edge", "test"), help="timer profile")
    run.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    run.add_argument("--console", metavar="HOST:PORT",
                     help="serve the read-only web console there (console.listen; default off); a port alone "
                          "binds loopback (127.0.0.1): it has no login, so keep it on loopback unless you mean to share it")
    run.set_defaults(func=cmd_run)

    join = sub.add_parser("join", help="ask the local node to join a peer's cluster")
    _common(join)
    join.add_argument("peers", metavar="HOST:PORT", nargs="+")
    join.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the peers (default 5)")
    join.set_defaults(func=cmd_join)

    members = sub.add_parser("members", help="list the cluster's members as this node sees them")
    _common(members)
    members.add_argument("--json", action="store_true", help="print JSON")
    members.add_argument("--detailed", action="store_true", help="also the role, version, protocol and features")
    members.add_argument("--status", nargs="+", choices=("alive", "suspect", "dead", "left"),
                         help="only members with one of these statuses")
    members.add_argument("--name", metavar="PATTERN", help="only members whose name matches this shell pattern (web-*)")
    members.add_argument("--tag", metavar="KEY=VALUE", action="append", default=[],
                         help="only members with this tag (node.tags; repeat: all of them)")
    members.set_defaults(func=cmd_members)

    status = sub.add_parser("status", help="show this node's status")
    _common(status)
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(func=cmd_status)

    leader = sub.add_parser("leader", help="show the nucleus leader known to this node")
    _common(leader)
    leader.add_argument("--json", action="store_true", help="print JSON")
    leader.set_defaults(func=cmd_leader)

    voters = sub.add_parser("voters", help="show the committed voter configuration (who elects the nucleus)")
    _common(voters)
    voters.add_argument("--json", action="store_true", help="print JSON")
    voters.set_defaults(func=cmd_voters)

    recover = sub.add_parser(
        "recover-voters", help="after the loss of a majority of voters: make NAMEs the voters (on one survivor)")
    _common(recover)
    recover.add_argument("names", nargs="+", metavar="NAME", help="the surviving voters, this node among them")
    recover.add_argument("--json", action="store_true", help="print JSON")
    recover.set_defaults(func=cmd_recover_voters)

    leave = sub.add_parser("leave", help="leave the cluster gracefully and stop the node")
    _common(leave)
    leave.set_defaults(func=cmd_leave)

    blocks = sub.add_parser("blocks", help="list cluster-wide block aggregates")
    _common(blocks)
    blocks.add_argument("--channel", type=int, help="only this channel")
    blocks.add_argument("--json", action="store_true", help="print JSON")
    blocks.set_defaults(func=cmd_blocks)

    drift = sub.add_parser("drift", help="settings that differ between members (exit 1 when any do)")
    _common(drift)
    drift.add_argument("--json", action="store_true", help="print JSON")
    drift.set_defaults(func=cmd_drift)

    settings = sub.add_parser("settings", help="the cluster's committed settings; 'set KEY=VALUE...' changes them "
                              "through the leader", description="Show the settings every node runs with (block size, "
                              "tick, replicas, security mode) and where this node's file differs; on the leader, "
                              "'settings set engine.replicas=2' commits new values for the whole cluster.")
    _common(settings)
    settings.add_argument("action", nargs="?", choices=["set"], help="set: commit new values (on the leader)")
    settings.add_argument("assignments", nargs="*", metavar="KEY=VALUE", help="with set: the values to commit")
    settings.add_argument("--json", action="store_true", help="print JSON")
    settings.set_defaults(func=cmd_settings)

    alerts = sub.add_parser("alerts", help="alerts raised anywhere in the cluster, as this node kept them")
    _common(alerts)
    alerts.add_argument("--since", type=float, metavar="SECONDS", help="only those of the last SECONDS")
    alerts.add_argument("--json", action="store_true", help="print JSON")
    alerts.set_defaults(func=cmd_alerts)

    genome = sub.add_parser("genome", help="a block's genome, lineage and shadow trials")
    _common(genome)
    genome.add_argument("block", metavar="BLOCK", help="CHANNEL:INDEX, as blocks shows it (or the integer id)")
    genome.add_argument("--json", action="store_true", help="print JSON")
    genome.set_defaults(func=cmd_genome)

    explain = sub.add_parser(
        "explain", help="what happened to a block, or around an alert, in plain language",
        description="An account of a block (its aggregates, owners over time, repairs, fusions, audit flags, genome "
                    "trials, alerts) or of an alert, built by rules from the node's store; reworded by the endpoint "
                    "of [explain] when one is configured (any failure: the account by rules, saying why).")
    _common(explain)
    explain.add_argument("subject", metavar="BLOCK|ALERT",
                         help="CHANNEL:INDEX or a block id (as blocks shows them), or an alert's uid or its first "
                              "4 or more hex digits (as alerts --json shows it)")
    explain.add_argument("--alert", action="store_true", help="SUBJECT is an alert uid (an all-digit one is tried as a block first, then as an alert)")
    explain.add_argument("--local", action="store_true", help="the account by rules only: do not ask the endpoint")
    explain.add_argument("--json", action="store_true", help="print JSON")
    explain.set_defaults(func=cmd_explain)

    plugins = sub.add_parser("plugins", help="plugins of the running node (source, hooks, state, faults); with "
                                              "no node running, the plugins a node with this config would load")
    add_plugins_arguments(plugins)
    plugins.set_defaults(func=cmd_plugins)

    send = sub.add_parser("send", help="send entity records to a node",
                          description="Send entity records to any node of a cluster (they reach their owners).")
    send.add_argument("--to", metavar="HOST:PORT", required=True, help="a node's direct address")
    source = send.add_mutually_exclusive_group(required=True)
    source.add_argument("--channel", type=int, help="generate records on this channel (with --count)")
    source.add_argument("--file", metavar="PATH", help="raw records in the wire format (10 bytes each, any channels)")
    send.add_argument("--count", type=int, help="how many records to generate (ids 0..count-1)")
    send.add_argument("--seed", type=int, default=0, help="seed of the generated values (default 0)")
    send.add_argument("--cluster", default="corec", help="cluster label (default corec)")
    send.add_argument("--timeout", type=float, default=10.0,
                      help="seconds a batch waits for the node's answer before it counts as unconfirmed (default 10)")
    send.add_argument("--acks", choices=["0", "1", "all"], default="1",
                      help="answers to wait for: 1, each record's owner queued it for its store (default); 0, none "
                           "(fire and forget: nothing is acknowledged); all, every holder of each record's block (owner "
                           "and replicas) queued it")
    send.set_defaults(func=cmd_send)

    delete = sub.add_parser("delete", help="remove entities from the cluster (every holder of their blocks)")
    delete.add_argument("--to", required=True, metavar="HOST:PORT", help="a node's listen address")
    delete.add_argument("--channel", type=int, required=True, help="the entities' channel (0-255)")
    delete.add_argument("--ids", required=True, help="ids and ranges, e.g. 7,10-19 (inclusive)")
    delete.add_argument("--cluster", default="corec", help="cluster label (default corec)")
    delete.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for each answer (default 10)")
    delete.add_argument("--acks", choices=["1", "all"], default="1",
                        help="1: each owner queued the delete (default); all: every holder did")
    delete.set_defaults(func=cmd_delete)

    demo = sub.add_parser("demo", help="start three local nodes, stream entities, kill the leader, watch the failover")
    demo.add_argument("--keep", action="store_true", help="keep the temporary directory with the nodes' logs")
    demo.set_defaults(func=cmd_demo)

    sim = sub.add_parser("simulate", help="run the mesh cores in the deterministic simulator and measure them",
                         description="N simulated nodes (the real membership and election cores, virtual "
                                     "time): a join, K members killed, an optional partition; figures in "
                                     "protocol rounds and virtual seconds.")
    sim.add_argument("--nodes", type=int, required=True, help="cluster size")
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--loss", type=float, default=0.0, help="share of messages lost (0 to below 1)")
    sim.add_argument("--kill", type=int, default=1, help="members killed at once")
    sim.add_argument("--partition", type=float, default=0.0,
                     help="share of the survivors cut off for 10 virtual s, then healed (0: none)")
    layout = sim.add_mutually_exclusive_group()
    layout.add_argument("--overlay", action="store_true",
                        help="broadcasts over HyParView partial views and a Plumtree tree, probes among "
                             "neighbours: the layout for large fleets, and the default")
    layout.add_argument("--full-mesh", action="store_true",
                        help="every node linked to every other, as nodes run with mesh.overlay = false or "
                             "beside an older release (to about 1,000 nodes: its links grow as N x N)")
    sim.add_argument("--json", action="store_true", help="one JSON object")
    sim.set_defaults(func=cmd_simulate)

    from corec_node.scaffold import add_cli as add_plugin_cli

    add_plugin_cli(sub)

    monitor = sub.add_parser("monitor", help="stream the running node's log lines as they come",
                             description="Stream the log lines of the running node (both of its processes) until "
                                         "Ctrl-C. Exit 1 when the node stops answering.")
    _common(monitor)
    monitor.add_argument("--log-level", choices=LEVELS, default="info", help="show lines at this level and above")
    monitor.add_argument("--lines", type=int, default=0, metavar="N",
                         help="first show up to N of the latest lines the node kept (default 0: only new ones)")
    monitor.set_defaults(func=cmd_monitor)

    force = sub.add_parser("force-leave", help="mark a dead member as left so it is reaped")
    _common(force)
    force.add_argument("name", metavar="NAME")
    force.add_argument("--prune", action="store_true",
                       help="also forget it on every node now, instead of after mesh.reap_after "
                            "(a dead or left member; as Serf's force-leave -prune)")
    force.set_defaults(func=cmd_force_leave)

    from corec_node.cli_datadir import add_cli as add_data_dir_cli

    add_data_dir_cli(sub)

    from corec_node.shell.curve import add_cli as add_keygen

    add_keygen(sub)
    return parser


def _config(args: argparse.Namespace, overrides: dict[str, Any] | None = None) -> Config:
    base = {"node.data_dir": getattr(args, "data_dir", None)}
    base.update(overrides or {})
    return load_config(args.config, overrides=base)


def parse_ids(text: str) -> list[int]:
    """``7,10-19``: ids and inclusive ranges (uint32); ValueError naming the bad part."""
    out: list[int] = []
    for part in text.split(","):
        lo, sep, hi = part.strip().partition("-")
        try:
            a, b = int(lo), int(hi) if sep else int(lo)
        except ValueError:
            raise ValueError(f"{part.strip()!r} is not an id or a range A-B") from None
        if not 0 <= a <= b <= 0xFFFFFFFF:
            raise ValueError(f"{part.strip()!r} is not an id or a range A-B of uint32 ids")
        if b - a >= 1 << 27:
            raise ValueError(f"{part.strip()!r} names more than {1 << 27:,} ids")
        out.extend(range(a, b + 1))
    return out


def cmd_delete(args: argparse.Namespace) -> int:
    """Send deletes like records; exit 1 unless every one was acknowledged."""
    from corec_node.client import Client
    from corec_node.config import split_addr

    try:
        split_addr(args.to)
        ids = parse_ids(args.ids)
        if not 0 <= args.channel <= 255:
            raise ValueError("--channel must be 0..255")
    except ValueError as exc:
        print(f"corec-node: {exc}", file=sys.stderr)
        return EXIT_USAGE
    client = Client(args.to, cluster=args.cluster, reply_timeout=args.timeout,
                    acks=args.acks if args.acks == "all" else 1)
    with client:
        client.delete(args.channel, ids)
    reasons = ", ".join(f"{reason} {n:,}" for reason, n in sorted(client.rejected.items()))
    print(f"delete of {len(ids):,} entities of channel {args.channel}: {client.accepted:,} acknowledged, "
          f"{sum(client.rejected.values()):,} refused{f' ({reasons})' if reasons else ''}, "
          f"{client.unconfirmed:,} unconfirmed")
    if client.accepted != len(ids):
        return _fail(f"{len(ids) - client.accepted:,} of {len(ids):,} deletes were not acknowledged")
    return EXIT_OK


LEVELS = ("debug", "info", "warning", "error")
MONITOR_POLL = 0.25  # seconds between two reads of the node's latest lines


def cmd_monitor(args: argparse.Namespace) -> int:
    """Consul's ``monitor``: read the node's recent lines from cursors, again and again."""
    import time

    from corec_node.log import parse_line
    from corec_node.shell.control import ControlError

    shown = LEVELS[LEVELS.index(args.log_level):]
    start = 0 if args.lines > 0 else -1  # every line kept (the last N shown), or from now on
    cursors = {"node": start, "mesh": start}
    first = True
    try:
        while True:
            try:
                answer = _request(args, "logs", **cursors)
            except ControlError as exc:
                return _fail(str(exc))
            lines = answer["lines"]
            if first:
                lines = lines[-args.lines:] if args.lines > 0 else []
            elif answer["missed"]:
                print(f"corec-node: {answer['missed']:,} lines came too fast to be kept and were skipped",
                      file=sys.stderr)
            first = False
            for line in lines:
                if parse_line(line).get("level", "info") in shown:
                    print(line, flush=True)
            cursors = {"node": answer["node"], "mesh": answer["mesh"]}
            time.sleep(MONITOR_POLL)
    except KeyboardInterrupt:
        return EXIT_OK
    except BrokenPipeError:  # `monitor | head`: the reader left
        return 141


def _unreachable(addr: str, timeout: float) -> str:
    """Why nothing at ``addr`` can have taken a record (a TCP connect tells): "" when
    something listens there."""
    import socket

    from corec_node.config import split_addr

    host, port = split_addr(addr)
    try:
        socket.create_connection((host, port), timeout=min(timeout, 2.0)).close()
    except ConnectionRefusedError:
        return f"nothing listens at {addr} (connection refused)"
    except OSError as exc:
        return f"{addr} is unreachable ({exc.strerror or exc})"
    return ""


def _nobody_answered(addr: str, cluster: str, timeout: float, count: int) -> str:
    """Why no node answered a send, in one line."""
    cause = _unreachable(addr, timeout)
    if cause:
        return f"{cause}: none of the {count:,} records was stored"
    return (f"{addr} answered nothing within {timeout:g} s: not a node's direct port, a node of another cluster "
            f"than '{cluster}', or one older than protocol 1.4; none of the {count:,} records is known to be stored")


def _fail(message: str) -> int:
    print(f"corec-node: {message}", file=sys.stderr)
    return EXIT_FAIL


def _request(args: argparse.Namespace, cmd: str, **kw: Any) -> Any:
    from corec_node.shell.control import request

    # the node may wait up to "wait" seconds itself (join); give it that plus a margin
    return request(_config(args).control_path, cmd, timeout=10.0 + float(kw.get("wait", 0)), **kw)


def _client(cmd: str, render: Callable[[Any], str], *, shape: Callable[[Any, argparse.Namespace], Any] | None = None,
            **extra: Callable[[argparse.Namespace], Any]):
    """A command that asks the running node and prints its answer (text or --json), after
    ``shape`` (filters, names) when given."""

    def run(args: argparse.Namespace) -> int:
        from corec_node.shell.control import ControlError

        try:
            result = _request(args, cmd, **{k: f(args) for k, f in extra.items()})
        except ControlError as exc:
            return _fail(str(exc))
        if shape is not None:
            result = shape(result, args)
        if getattr(args, "json", False):
            print(json.dumps(result, indent=2, sort_keys=True))
        else:
            print(render(result))
        return EXIT_OK

    return run


def add_plugins_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``plugins`` and of its alias ``plugin list``."""
    _common(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--installed", action="store_true",
                       help="do not ask a node: list the plugins a node with this config would load")
    which.add_argument("--running", action="store_true", help="only ask the running node: exit 1 if none answers")


def cmd_plugins(args: argparse.Namespace) -> int:
    """The running node's plugins (rows with ``view`` "node"); when no node answers, or
    with ``--installed``, the plugins a node with this config would load (``view``
    "installed", what ``plugin list`` printed). Rows are ``PluginManager.info()`` either way."""
    from corec_node.shell.control import ControlError, request

    rows, view, note = None, "installed", ""
    try:
        config = _config(args)
        if not args.installed:
            try:
                rows, view = request(config.control_path, "plugins", timeout=10.0), "node"
            except ControlError as exc:
                if args.running:
                    return _fail(str(exc))
                note = str(exc)
        if rows is None:
            from corec_node.plugins import PluginManager

            rows = PluginManager(config).load().info()
    except ConfigError as exc:
        print(f"corec-node: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    rows = [{**r, "view": view} for r in rows]
    print(json.dumps(rows, indent=2, sort_keys=True) if args.json else render_plugins(rows, view, note))
    return EXIT_OK


def _members_shape(members: list[dict[str, Any]], args: argparse.Namespace) -> list[dict[str, Any]]:
    return filter_members(members, args.status, args.name, args.tag)


_members_plain = _client("members", render_members, shape=_members_shape)
_members_detailed = _client("members", render_members_detailed, shape=_members_shape)


def cmd_members(args: argparse.Namespace) -> int:
    return (_members_detailed if args.detailed else _members_plain)(args)


def filter_members(members: list[dict[str, Any]], status: list[str] | None, pattern: str | None,
                   tags: list[str] | None = None) -> list[dict[str, Any]]:
    """``members --status/--name/--tag``: Consul's filters (a shell pattern, not a regexp;
    every ``KEY=VALUE`` tag given)."""
    import fnmatch

    wanted = [t.partition("=")[::2] for t in tags or []]
    return [m for m in members if (not status or m["status"] in status)
            and (pattern is None or fnmatch.fnmatchcase(m["name"], pattern))
            and all((m.get("tags") or {}).get(k) == v for k, v in wanted)]
cmd_voters = _client("voters", render_voters)
_recover = _client("recover-voters", render_voters, names=lambda a: a.names)


def cmd_recover_voters(args: argparse.Namespace) -> int:
    print("corec-node: WARNING: rewriting the voter configuration by hand. Use this only when a "
          "majority of the voters is gone for good; voters not named are out of the cluster's "
          "elections, and two survivors given different lists split the cluster.", file=sys.stderr)
    return _recover(args)
cmd_status = _client("status", render_status)
cmd_leader = _client("leader", render_leader)
def name_blocks(rows: list[dict[str, Any]], _args: argparse.Namespace | None = None) -> list[dict[str, Any]]:
    """Each row's block as people write it, ``CHANNEL:INDEX`` (``name``), and its ``index``
    in the channel, beside the integer id (``block``: channel << 32 | index)."""
    return [{**r, "index": r["block"] & 0xFFFFFFFF, "name": f"{r['channel']}:{r['block'] & 0xFFFFFFFF}"}
            for r in rows]


cmd_blocks = _client("blocks", render_blocks, shape=name_blocks, channel=lambda a: a.channel)
def cmd_drift(args: argparse.Namespace) -> int:
    """Exit 1 when members differ: a script can gate a rollout on it."""
    from corec_node.shell.control import ControlError

    try:
        result = _request(args, "drift")
    except ControlError as exc:
        return _fail(str(exc))
    print(json.dumps(result, indent=2, sort_keys=True) if args.json else render_drift(result))
    return EXIT_FAIL if result["differences"] else EXIT_OK


cmd_alerts = _client("alerts", render_alerts, since=lambda a: a.since)


def cmd_settings(args: argparse.Namespace) -> int:
    if args.action is None and args.assignments:
        print("corec-node: settings: KEY=VALUE goes after 'set' (corec-node settings set KEY=VALUE)", file=sys.stderr)
        return EXIT_USAGE
    if args.action == "set" and not args.assignments:
        print("corec-node: settings set needs at least one KEY=VALUE", file=sys.stderr)
        return EXIT_USAGE
    return _client("settings", render_settings, set=lambda a: a.assignments or None)(args)
cmd_genome = _client("genome", render_genome, block=lambda a: int(a.block) if a.block.isdigit() else a.block)


def cmd_explain(args: argparse.Namespace) -> int:
    """A block or an alert, as the node's ``explain`` command tells it: exit 1 naming the
    cause when it knows neither; the wait covers the endpoint's ``explain.timeout``."""
    from corec_node.explain import render as render_explain
    from corec_node.shell.control import ControlError, alert_ref, block_ref, request

    text = args.subject.strip()
    try:
        params: dict[str, Any] = {"block": block_ref(int(text) if text.isdigit() else text)} if not args.alert else {}
    except ValueError:
        params = {}
    try:
        params = params or {"alert": alert_ref(text)}
    except ValueError:
        print(f"corec-node explain: {text!r} is neither a block (CHANNEL:INDEX, or its id) nor an alert uid "
              "(4 to 32 hex digits)", file=sys.stderr)
        return EXIT_USAGE
    config = _config(args)
    ask = functools.partial(request, config.control_path, "explain", timeout=10.0 + config.explain.timeout,
                            **({"refine": False} if args.local else {}))
    try:
        result = ask(**params)
    except ControlError as exc:
        if "block" not in params or not text.isdigit() or not 4 <= len(text) <= 32:
            return _fail(str(exc))
        try:  # all digits and no such block: an alert uid's prefix may be all digits too
            result = ask(alert=alert_ref(text))
        except ControlError:
            return _fail(str(exc))
    print(json.dumps(result, indent=2, sort_keys=True) if args.json else render_explain(result))
    return EXIT_OK


cmd_join = _client("join", lambda r: f"joined {', '.join(r['joined'])}: {r['members']} members",
                   addrs=lambda a: a.peers, wait=lambda a: a.timeout)
cmd_force_leave = _client(
    "force-leave",
    lambda r: f"{r['name']} left and pruned: forgotten here now, and by each member as the news reaches it" if r.get("pruned") else f"{r['name']} marked left",
    name=lambda a: a.name,
    prune=lambda a: a.prune,
)
cmd_leave = _client("leave", lambda r: f"{r['name']} left the cluster; stopping")


def cmd_send(args: argparse.Namespace) -> int:
    """Send, then say what the owners answered: exit 1 unless every record was accepted
    (with ``--acks 0``, unless every record was handed to a socket and written out)."""
    import time

    import numpy as np

    from corec_node.client import LINGER_MS, Client, flush_all
    from corec_node.config import split_addr
    from corec_node.wire import ENTITY_DTYPE, WireError, decode_entities

    try:
        split_addr(args.to)
    except ValueError as exc:
        print(f"corec-node: --to: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not args.timeout > 0:
        print("corec-node: --timeout must be a positive number of seconds", file=sys.stderr)
        return EXIT_USAGE
    acks = args.acks if args.acks == "all" else int(args.acks)
    if args.file:
        try:
            with open(args.file, "rb") as f:
                records = decode_entities(f.read(), max_records=1 << 40)
        except OSError as exc:
            return _fail(f"cannot read {args.file}: {exc.strerror}")
        except WireError as exc:
            return _fail(f"{args.file} is not raw entity records: {exc}")
    else:
        if args.count is None or args.count < 0 or not 0 <= args.channel <= 255:
            print("corec-node: --channel 0..255 needs --count N (N >= 0)", file=sys.stderr)
            return EXIT_USAGE
        rng = np.random.default_rng(args.seed)
        records = np.zeros(args.count, dtype=ENTITY_DTYPE)
        records["id"] = np.arange(args.count, dtype=np.uint32)
        records["channel"] = args.channel
        records["value"] = (20 + rng.normal(0, 2, args.count)).astype(np.float32)
        records["active"] = 1
    started = time.perf_counter()
    # acks 0: no answer bounds the wait, so a socket that takes nothing for --timeout fails the send
    client = Client(args.to, cluster=args.cluster, reply_timeout=args.timeout, acks=acks,
                    timeout=args.timeout if acks == 0 else None)
    try:
        with client:  # closing waits for the answers still due
            client.send(records)
    except TimeoutError as exc:  # a node answered nothing and stopped taking batches
        cause = _unreachable(args.to, args.timeout) if not client.answered else ""
        if cause:
            return _fail(f"{cause}: none of the {len(records):,} records was stored")
        return _fail(f"{exc}; {len(records) - client.accepted:,} records not sent or not confirmed")
    written = flush_all()  # returns once ZeroMQ has written every batch out (or LINGER_MS passed)
    if acks != 0 and not client.answered:  # nothing said a word: no rate, no counts, the cause
        return _fail(_nobody_answered(args.to, args.cluster, args.timeout, len(records)))
    if not written:
        cause = _unreachable(args.to, args.timeout) if not client.answered else ""
        if cause:
            return _fail(f"{cause}: none of the {len(records):,} records was stored")
        return _fail(f"{args.to} did not take the last records within {LINGER_MS / 1000:g} s; "
                     f"{len(records) - client.accepted:,} of {len(records):,} records not confirmed stored")
    took = time.perf_counter() - started
    sent, rejected, unconfirmed = client.sent_records, sum(client.rejected.values()), client.unconfirmed
    reasons = ", ".join(f"{reason} {n:,}" for reason, n in sorted(client.rejected.items()))
    unacked = f", {client.sent_unacknowledged:,} sent without acknowledgement" if acks == 0 else ""
    owners = len(client.owners_used)
    if client.owners_used:
        direct = sum(client.sent_by_owner.values())
        route = f"routed to {owners} owner{'s' if owners != 1 else ''}"
        if direct != sent:  # the map changed to one without owners on the way
            route += f" ({direct:,} records; the rest through {args.to})"
    else:
        route = f"not routed ({client.why_unrouted or 'nothing to send'})"
    landed = client.sent_unacknowledged if acks == 0 else client.accepted  # the rate counts only these
    rate = f" ({landed / max(took, 1e-9):,.0f} records/s)" if landed else ""
    print(f"sent {sent:,} records to {args.to} in {took:.3f} s{rate}: "
          f"{client.accepted:,} accepted, {rejected:,} rejected{f' ({reasons})' if reasons else ''}, "
          f"{unconfirmed:,} unconfirmed{unacked}; {route}")
    if acks == "all" and client.acks_all_by_owner:
        print("acks all was treated as 1: the cluster's map names no replicas (older than 1.6), so each record was "
              "acknowledged by its owner alone")
    if acks == 0:
        print("acks 0: nothing was acknowledged; the records were handed to the nodes, whether they were stored "
              "is not known")
        if client.sent_unacknowledged != len(records):
            return _fail(f"{len(records) - client.sent_unacknowledged:,} of {len(records):,} records were not sent")
        return EXIT_OK
    if unconfirmed and not client.answered:
        return _fail(f"{args.to} did not take the last records: no answer within {args.timeout:g} s (the node is "
                     f"down or unreachable, of another cluster, or older than protocol 1.4)")
    if rejected or unconfirmed:
        return _fail(f"{args.to} did not accept {rejected + unconfirmed:,} of {sent:,} records")
    return EXIT_OK


def cmd_simulate(args: argparse.Namespace) -> int:
    from corec_node.sim.report import render, simulate

    try:
        result = simulate(args.nodes, seed=args.seed, loss=args.loss, kill=args.kill, partition=args.partition,
                          overlay=not args.full_mesh)
    except ValueError as exc:
        print(f"corec-node simulate: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result) if args.json else render(result))
    return 1 if result["violations"] else 0


def cmd_demo(args: argparse.Namespace) -> int:
    from corec_node.demo import run_demo

    return run_demo(keep=args.keep)


def cmd_run(args: argparse.Namespace) -> int:
    config = _config(args, {
        "node.name": args.name,
        "node.listen": args.listen,
        "node.advertise": args.advertise,
        "node.log_level": args.log_level,
        "mesh.join": args.join,
        "mesh.join_required": args.join_required,
        "mesh.profile": args.profile,
        "console.listen": args.console,
    })
    from corec_node import log
    from corec_node.shell.curve import SecurityError
    from corec_node.shell.datacheck import DataDirDamaged, NeedsJoin
    from corec_node.shell.datadir import DataDirBusy, DataDirUnusable
    from corec_node.shell.node import Node, PortUnusable, install_signal_handlers

    log.setup(config.name, config.node.log_level)

    nodes: list[Node] = []

    async def main() -> int:
        nodes.append(Node(config))
        install_signal_handlers(nodes[0])
        return await nodes[0].run()

    try:
        code = asyncio.run(main())
        if nodes and nodes[0].settings_watch.restart_for is not None:  # the cluster committed other settings
            from corec_node.shell.settings_watch import restart_in_place
            restart_in_place(nodes[0].settings_watch.restart_for)
        return code
    except DataDirBusy as exc:
        return _fail(str(exc))
    except DataDirUnusable as exc:
        print(f"corec-node: config error: {exc} (node.data_dir, --data-dir)", file=sys.stderr)
        return EXIT_USAGE
    except PortUnusable as exc:
        print(f"corec-node: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except DataDirDamaged as exc:  # one line, no traceback: the file and the way out
        print(f"corec-node: {exc}", file=sys.stderr)
        return EXIT_DAMAGED
    except NeedsJoin as exc:
        print(f"corec-node: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except SecurityError as exc:  # a key problem is a config problem: exit 2, systemd does not restart
        print(f"corec-node: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_OK


def add_plugin_commands(parser: argparse.ArgumentParser, argv: Sequence[str]) -> None:
    """Plugins' subcommands (``corec_cli_commands``), loaded only when the command named is
    not one of ours (or for the top-level help), so the built-in commands start no faster
    or slower with plugins installed. A plugin that fails to load is one line on stderr:
    the other plugins' commands and ours still work."""
    sub = parser.get_default("_commands")
    first = next((a for a in argv if not a.startswith("-")), None)
    if first in sub.choices or (first is None and not {"-h", "--help"} & set(argv)):
        return
    from corec_node.plugins import PluginManager
    from corec_node.plugins.settings import PluginError

    path = None
    for i, a in enumerate(argv):  # --config FILE may name plugins.paths
        if a == "--config" and i + 1 < len(argv):
            path = argv[i + 1]
        elif a.startswith("--config="):
            path = a.split("=", 1)[1]
    logging.disable(logging.INFO)  # a node's plugin_loaded lines mean nothing to a command line
    try:
        PluginManager(load_config(path, env=os.environ)).load().add_cli(sub)
    except (PluginError, ConfigError) as exc:
        print(f"corec-node: plugin commands not loaded: {exc}", file=sys.stderr)
    finally:
        logging.disable(logging.NOTSET)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    add_plugin_commands(parser, argv)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"corec-node: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # `corec-node blocks | head`: the reader left; end quietly, as cat does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_PIPE


if __name__ == "__main__":
    sys.exit(main())
