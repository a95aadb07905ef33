"""The node's control commands: what ``corec-node status``, ``blocks``, ``members``,
``leader``, ``voters``, ``join``, ``leave``, ``force-leave`` and ``plugins`` ask a running
node through its control socket (``control.py``). The control socket is served by the node
process; the membership and election commands are answered by the mesh process
(``MeshCommands``, over the link), the data plane's here. Each command validates its
parameters before it acts and answers with JSON-able data.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from corec_node import __version__, log
from corec_node.config import tag_map
from corec_node.shell.control import CommandError
from corec_node.shell.link import RequestFailed
from corec_node.wire.messages import MemberStatus

if TYPE_CHECKING:  # the mesh process imports this module: it needs neither plane's code
    from corec_node.config import Config
    from corec_node.plugins import PluginManager
    from corec_node.shell.control_plane import ControlPlane
    from corec_node.shell.data_plane import DataPlane
    from corec_node.shell.traffic import Traffic
    from corec_node.shell.transport import Transport

Command = Callable[[dict[str, Any]], Awaitable[Any]]


class MeshLink(Protocol):
    """The mesh process as the node's commands reach it (``mesh_process.MeshHandle``)."""

    async def request(self, command: str, params: dict[str, Any], *, timeout: float | None = None) -> Any: ...

    def hung(self) -> str | None: ...

    @property
    def link_dropped(self) -> Mapping[str, int]: ...


@dataclass(frozen=True, slots=True)
class Identity:
    """Who this node is, as ``status`` reports it."""

    name: str
    addr: str
    pub: str
    cluster: str
    started_wall: float


STATUS_WAIT = 2.0  # status answers within the CLI's patience, even when the mesh process is slow
MESH_COMMANDS = ("members", "leader", "voters", "recover-voters", "join", "leave", "force-leave", "drift")


class ControlCommands:
    """Answers the control socket in the node process: the data plane's commands here, the
    control plane's forwarded to the mesh process (``MeshCommands``)."""

    def __init__(
        self,
        *,
        identity: Identity,
        mesh: MeshLink,
        data: DataPlane,
        traffic: Traffic,
        plugins: PluginManager,
        storage_status: Callable[[], dict[str, Any]],
        configs: Callable[[], tuple[Config, Config]] | None = None,
    ) -> None:
        self.identity = identity
        self.configs = configs  # () -> (this node's file, what it runs with now): ``settings``
        self.mesh = mesh
        self.data = data
        self.traffic = traffic
        self.plugins = plugins
        self.storage_status = storage_status
        self._refiner: Any = None  # explain's endpoint (shell/explain_llm.py), made when first asked

    def table(self) -> dict[str, Command]:
        table: dict[str, Command] = {"status": self.status, "blocks": self.blocks, "plugins": self.plugin_list,
                                     "logs": self.logs, "genome": self.genome, "alerts": self.alerts,
                                     "explain": self.explain, "settings": self.settings}
        for name in MESH_COMMANDS:
            table[name] = self._forward(name)
        return table

    def _forward(self, command: str) -> Command:
        async def forward(req: dict[str, Any]) -> Any:
            return await self._ask(command, req)
        return forward

    async def _ask(self, command: str, req: dict[str, Any], timeout: float | None = None) -> Any:
        hung = self.mesh.hung()
        if hung is not None:  # fail now, not after the request's timeout
            raise CommandError(hung)
        try:
            return await self.mesh.request(command, req, timeout=timeout)
        except RequestFailed as exc:
            raise CommandError(str(exc)) from None

    async def settings(self, req: dict[str, Any]) -> dict[str, Any]:
        """``corec-node settings [set KEY=VALUE...]``: the cluster's committed settings and
        where this node's file differs; with ``set``, as leader, commit new values
        (cluster_settings.py, voters rule 9)."""
        from corec_node import cluster_settings

        assert self.configs is not None
        file, running = self.configs()
        voters = await self._ask("voters", {})
        committed = tuple(sorted(voters.get("settings", {}).items()))
        out: dict[str, Any] = {}
        if req.get("set"):
            try:
                changes = cluster_settings.changes(running, req["set"], committed)
            except ValueError as exc:
                raise CommandError(str(exc)) from None
            voters = await self._ask("settings-set", {"settings": changes})
            committed = tuple(sorted(voters.get("settings", {}).items()))
            out["changed"] = changes
        return {**out, **cluster_settings.describe(file, committed), "running": dict(cluster_settings.own(running)),
                "index": voters["index"], "config_committed": voters["committed"], "leader": voters["leader"]}

    async def status(self, req: dict[str, Any]) -> dict[str, Any]:
        mesh = await self._ask("status", req, STATUS_WAIT)
        rejected = collections.Counter(mesh.pop("rejected"))
        rejected.update(self.traffic.rejected)
        link_dropped = collections.Counter(mesh.pop("link_dropped"))
        link_dropped.update(self.mesh.link_dropped)
        return {
            **mesh,
            "messages_out": mesh["messages_out"] + sum(self.traffic.messages_out.values()),
            "messages_out_by_type": dict(collections.Counter(mesh.get("messages_out_by_type", {})) + self.traffic.messages_out),
            **self.data.status(),
            "storage": self.storage_status(),
            "rejected": dict(rejected),
            "link_dropped": dict(link_dropped),  # messages between the node's two processes
        }

    async def logs(self, req: dict[str, Any]) -> dict[str, Any]:
        """``monitor``'s read: the log lines of both processes since their cursors, in time
        order, and the cursors to ask from next."""
        mesh = await self._ask("logs", {"mesh": req.get("mesh", -1)})
        lines, after, missed = log.RECENT.since(req.get("node", -1))
        return {"lines": sorted([*lines, *mesh["lines"]]), "node": after, "mesh": mesh["next"],
                "missed": missed + mesh["missed"]}

    async def plugin_list(self, _req: dict[str, Any]) -> list[dict[str, Any]]:
        return self.plugins.info()

    async def blocks(self, req: dict[str, Any]) -> list[dict[str, Any]]:
        channel = req.get("channel")
        if channel is not None and (not isinstance(channel, int) or isinstance(channel, bool)):
            raise CommandError("channel must be an integer")
        from corec_node.engine.adaptive import (
            SPEC_KEY,  # the node process has it; the mesh process needs none
        )

        epoch = self.data.engine.epoch  # the map the answer was made under, on every row
        # a genome's whole spec rides some rows (engine/adaptive.py rule 4): `genome BLOCK` shows it
        return [{**{k: v for k, v in row.items() if k != SPEC_KEY}, "epoch": epoch}
                for row in self.data.engine.rows_with_holders(channel)]


    async def genome(self, req: dict[str, Any]) -> dict[str, Any]:
        """``corec-node genome BLOCK``: the block's genome as this node knows it (every node
        learns every block's genome from its owner's rows), its row, and the shadow trials
        this node ran on it as its owner (the audit rows, oldest first)."""
        from corec_node.engine.genome import describe, to_dict  # the node process has them

        block = int(req["block"])
        name = f"{block >> 32}:{block & 0xFFFFFFFF}"
        engine = self.data.engine
        row = next((r for r in engine.cluster_rows(block >> 32) if r["block"] == block), None)
        genome = engine.adaptive.genomes.get(block) or engine.adaptive.known.get(block)
        if row is None and genome is None:
            raise CommandError(f"no block {name} in the cluster's rows")
        trials: list[dict[str, Any]] = []
        store = self.data.recorder.store
        if store is not None:
            for kind in ("genome_replaced", "genome_kept"):
                trials += [{"ts": a["ts"], "kind": kind, "reason": a["reason"], **a["details"]}
                           for a in await store.audit(kind=kind, subject=f"block {name}")]
            trials.sort(key=lambda t: t["ts"])
        row = row or {}
        return {"block": block, "name": name, "owner": row.get("owner"), "held_here": block in engine.adaptive.genomes,
                "genome": to_dict(genome) if genome is not None else None,
                **{k: row.get(k) for k in ("forecast", "forecast_error", "fitness", "mean", "tick")},
                "trials": trials[-MAX_TRIALS_SHOWN:], "genes": describe()}


    async def alerts(self, req: dict[str, Any]) -> list[dict[str, Any]]:
        """``corec-node alerts``: the alerts this node keeps, its own and its peers' (every
        node keeps every alert it heard, shell/alerts.py), oldest first, ``since`` seconds back."""
        store = self.data.recorder.store
        if store is None:
            raise CommandError("the node's store is not open yet")
        since = req.get("since")
        rows = await store.alerts(None if since is None else time.time() - float(since))
        return [{"ts": r["ts"], "node": r["node"], "kind": r["kind"], "severity": r["severity"], "block": r["block"],
                 "name": f"{r['block'] >> 32}:{r['block'] & 0xFFFFFFFF}" if type(r["block"]) is int else None,
                 "text": r["message"], "uid": r["uid"], "details": r["details"]} for r in rows[-MAX_ALERTS_SHOWN:]]


    async def explain(self, req: dict[str, Any]) -> dict[str, Any]:
        """``corec-node explain BLOCK|ALERT``: the account by rules (``explain.py``) from this
        node's store and its view of the cluster's rows, reworded by the ``[explain]``
        endpoint when one is configured and ``refine`` is not false (here, on request:
        never on the tick path)."""
        # the node process has these; the mesh process needs none
        from corec_node import explain as ex
        from corec_node.engine.genome import to_dict
        from corec_node.shell.explain_facts import UnknownSubject, read_alert, read_block
        from corec_node.shell.explain_llm import Refiner

        store = self.data.recorder.store
        if store is None:
            raise CommandError("the node's store is not open yet")
        if ("block" in req) == ("alert" in req):
            raise CommandError("explain: give a block or an alert")
        engine, me = self.data.engine, self.identity.name
        if "alert" in req:
            try:
                rows = await read_alert(store.path, req["alert"], node=me)
            except UnknownSubject as exc:
                raise CommandError(str(exc)) from None
            block = rows.alert["block"]
            row = next((r for r in engine.cluster_rows(block >> 32) if r["block"] == block), None) \
                if type(block) is int else None
            account = ex.alert_account(rows.alert, now=time.time(), node=me, audit=rows.audit, alerts=rows.alerts,
                                       row=row)
        else:
            block = req["block"]
            gap = max(EXPLAIN_GAP_MIN, EXPLAIN_GAP_TICKS * self.data.config.tick_interval)
            rows = await read_block(store.path, block, gap=gap, node=me)
            row = next((r for r in engine.cluster_rows(block >> 32) if r["block"] == block), None)
            genome = engine.adaptive.genomes.get(block) or engine.adaptive.known.get(block)
            if row is None and genome is None and rows.empty():
                raise CommandError(f"no block {ex.block_name(block)} in the cluster's rows or this node's store")
            account = ex.block_account(
                block, now=time.time(), node=me, row=row, state=rows.state, held_here=block in engine.adaptive.genomes,
                tenures=rows.tenures, history_gap=gap, audit=rows.audit, alerts=rows.alerts,
                genome=to_dict(genome) if genome is not None else rows.genome, placement=rows.placement)
        if not req.get("refine", True):
            return {**account, "refined": False, "fallback": "not asked (--local)"}
        if self._refiner is None:
            self._refiner = Refiner(self.plugins.config.explain)
        return await self._refiner.refine(account)


EXPLAIN_GAP_TICKS = 10  # history rows further apart than this many ticks (or EXPLAIN_GAP_MIN s) are two stretches
EXPLAIN_GAP_MIN = 30.0
MAX_ALERTS_SHOWN = 1000  # the newest alerts ``alerts`` lists
MAX_TRIALS_SHOWN = 50  # the latest shadow trials ``genome`` lists


class MeshCommands:
    """The control plane's commands, answered in the mesh process from its own state, so
    they tell the truth about membership and election whatever the data plane is doing."""

    def __init__(
        self,
        *,
        identity: Identity,
        control: ControlPlane,
        traffic: Traffic,
        transport: Transport,
        now: Callable[[], float],
        stop: Callable[[int], None],
        link_dropped: Mapping[str, int],
    ) -> None:
        self.identity = identity
        self.control = control
        self.traffic = traffic
        self.transport = transport
        self.now = now
        self.stop = stop
        self.link_dropped = link_dropped  # this process's end of the link (a live counter)

    def table(self) -> dict[str, Command]:
        return {
            "status": self.status,
            "members": self.members,
            "leader": self.leader,
            "voters": self.voters,
            "recover-voters": self.recover_voters,
            "join": self.join,
            "leave": self.leave,
            "force-leave": self.force_leave,
            "logs": self.logs,
            "drift": self.drift,
            "settings-set": self.settle,  # from the node process's ``settings`` only (checked there)
        }

    async def settle(self, req: dict[str, Any]) -> dict[str, Any]:
        try:
            return self.control.settle(dict(req["settings"]), self.now())
        except ValueError as exc:
            raise CommandError(str(exc)) from None

    async def drift(self, _req: dict[str, Any]) -> dict[str, Any]:
        """``corec-node drift``: where the live members' announced settings differ."""
        from corec_node.shell.drift import differences

        assert self.control.core is not None
        live = [(m.name, m.build[5]) for m in self.control.core.membership.members()
                if m.status in (MemberStatus.ALIVE, MemberStatus.SUSPECT)]
        return differences(live)

    async def logs(self, req: dict[str, Any]) -> dict[str, Any]:
        """The mesh process's log lines since its cursor (the node process merges its own)."""
        lines, after, missed = log.RECENT.since(req.get("mesh", -1))
        return {"lines": lines, "next": after, "missed": missed}

    def members_json(self) -> list[dict[str, Any]]:
        assert self.control.core is not None
        voters = self.control.core.config.names()
        return [
            {"name": m.name, "addr": m.addr, "pub": m.pub, "status": m.status.label,
             "incarnation": m.inc, "self": m.name == self.identity.name,
             "version": m.build[0] or None, "protocol": m.build[1] or None, "features": list(m.build[2]),
             "tags": tag_map(m.build[4]), "settings": list(m.build[5]),
             "voter": m.name in voters}
            for m in self.control.core.membership.members()
        ]

    def stats(self) -> dict[str, Any]:
        """What the node process shows in metrics and systemd's status line, once a second."""
        core = self.control.core
        assert core is not None
        t = self.traffic
        rejected = {**t.rejected, **self.transport.refused}  # frames, and handshakes refused
        return {
            "members": core.membership.counts(), "leader": core.leader, "term": core.term,
            "elections": self.control.elections_started, "stalled": core.stalled,
            "topic_in": dict(t.topic_in), "topic_out": dict(t.topic_out),
            "bytes_in": dict(t.bytes_in), "bytes_out": dict(t.bytes_out),
            "rejected": rejected, "dropped": {**self.transport.dropped, **self.link_dropped},
            "heartbeat_gap_max": round(self.control.gaps.largest, 4), "heartbeat_gaps_late": self.control.gaps.late,
        }

    async def status(self, _req: dict[str, Any]) -> dict[str, Any]:
        core = self.control.core
        assert core is not None
        me = self.identity
        return {
            "name": me.name,
            "addr": me.addr,
            "pub": me.pub,
            "cluster": me.cluster,
            "version": __version__,
            "uptime": round(time.time() - me.started_wall, 3),
            "members": core.membership.counts(),
            "leader": core.leader,
            "term": core.term,
            "awareness": core.membership.awareness,
            "messages_in": sum(self.traffic.messages_in.values()),
            "messages_out": sum(self.traffic.messages_out.values()),
            "messages_in_by_type": dict(self.traffic.messages_in),
            "messages_out_by_type": dict(self.traffic.messages_out),
            "rejected": {**self.traffic.rejected, **self.transport.refused},  # frames, and handshakes refused
            "dropped": dict(self.transport.dropped),
            "link_dropped": dict(self.link_dropped),
            "name_conflicts": [{"name": n, "addr": a} for a, n in self.control.conflicts.items()],
            "voters": sorted(self.control.core.config.names()),
            "disk_error": self.control.disk_error,
            "connection_hints": self.control.hints,
            "engine_stalled": core.stalled,
            "heartbeat_gap_max": round(self.control.gaps.largest, 4),
            "heartbeat_gaps_late": self.control.gaps.late,
            # the overlay's neighbours (direct addresses; null without mesh.overlay), and
            # the addresses this node holds a direct (DEALER) connection to, the members whose
            # PUB stream it follows, and whether the data plane rides the tree (SPEC 7.1)
            "overlay_neighbors": sorted(self.control.neighbors) if self.control.overlay else None,
            "direct_peers": len(self.transport.dealers),
            "subscribed_peers": len(self.transport.sub_peers),
            "tree_data": self.control.tree_data,
            "tree_delivered_by_type": dict(self.control.tree_delivered),  # broadcasts the tree brought, by their type
            # live members that speak no overlay (an older release, or mesh.overlay = false):
            # while any, every node runs as a full mesh (overlay rule 10)
            "overlay_legacy_members": self.control.legacy_members,
        }

    async def members(self, _req: dict[str, Any]) -> list[dict[str, Any]]:
        return self.members_json()

    async def leader(self, _req: dict[str, Any]) -> dict[str, Any]:
        return {"leader": self.control.leader, "term": self.control.term}

    async def voters(self, _req: dict[str, Any]) -> dict[str, Any]:
        return self.control.voters_json()

    async def recover_voters(self, req: dict[str, Any]) -> dict[str, Any]:
        names = req.get("names")
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise CommandError("recover-voters needs the names of the new voters")
        try:
            return self.control.recover_voters(names, self.now())
        except ValueError as exc:
            raise CommandError(str(exc)) from None

    async def join(self, req: dict[str, Any]) -> dict[str, Any]:
        core = self.control.core
        assert core is not None
        addrs = req.get("addrs")
        if not isinstance(addrs, list) or not addrs or not all(isinstance(a, str) for a in addrs):
            raise CommandError("join needs at least one host:port")
        timeout = _seconds(req, "wait", 5.0)
        self.control.join(addrs, self.now())
        deadline = self.now() + timeout
        while True:
            reached = {m.addr for m in core.membership.members() if m.status == MemberStatus.ALIVE}
            missing = [a for a in addrs if a not in reached]
            if not missing:
                return {"joined": addrs, "members": len(core.membership.members())}
            if self.now() >= deadline:
                raise CommandError(f"no answer from {', '.join(missing)} within {timeout:g} s (still trying in the background)")
            await asyncio.sleep(0.02)

    async def leave(self, req: dict[str, Any]) -> dict[str, Any]:
        spread = _seconds(req, "spread", 1.0)  # checked before anything is announced
        self.control.leave(self.now())

        async def stop_later() -> None:
            # keep ticking for a moment so the queued "left" gossip goes out and is retransmitted
            await asyncio.sleep(spread)
            self.stop(0)

        asyncio.get_running_loop().create_task(stop_later())
        return {"left": True, "name": self.identity.name, "stopping_in": spread}

    async def force_leave(self, req: dict[str, Any]) -> dict[str, Any]:
        name = req.get("name")
        if not isinstance(name, str):
            raise CommandError("force-leave needs a member name")
        prune = req.get("prune", False) is True
        try:
            self.control.force_leave(name, self.now(), prune=prune)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        return {"name": name, "status": "left", "pruned": prune}


MAX_WAIT_SECONDS = 3600.0  # a control command never waits longer than an hour


def _seconds(req: dict[str, Any], key: str, default: float) -> float:
    """A non-negative, finite number of seconds from the request, or CommandError."""
    value = req.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= MAX_WAIT_SECONDS:
        raise CommandError(f"{key} must be a number of seconds from 0 to {MAX_WAIT_SECONDS:g}, got {value!r}")
    return float(value)
