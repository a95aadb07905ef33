"""The node's control commands: what ``corec-node status``, ``blocks``, ``members``,
``leader``, ``join``, ``leave``, ``force-leave`` and ``plugins`` ask a running node through
its control socket (``control.py``). Each command runs on the node's loop, validates its
parameters before it acts, and answers with JSON-able data.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from corec_node import __version__
from corec_node.plugins import PluginManager
from corec_node.shell.control import CommandError
from corec_node.shell.control_plane import ControlPlane
from corec_node.shell.data_plane import DataPlane
from corec_node.shell.traffic import Traffic
from corec_node.shell.transport import Transport
from corec_node.wire.messages import MemberStatus

Command = Callable[[dict[str, Any]], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class Identity:
    """Who this node is, as ``status`` reports it."""

    name: str
    addr: str
    pub: str
    cluster: str
    started_wall: float


class ControlCommands:
    """Answers the control socket from the planes it is given (see the module docstring)."""

    def __init__(
        self,
        *,
        identity: Identity,
        control: ControlPlane,
        data: DataPlane,
        traffic: Traffic,
        transport: Transport,
        plugins: PluginManager,
        storage_status: Callable[[], dict[str, Any]],
        now: Callable[[], float],
        stop: Callable[[int], None],
    ) -> None:
        self.identity = identity
        self.control = control
        self.data = data
        self.traffic = traffic
        self.transport = transport
        self.plugins = plugins
        self.storage_status = storage_status
        self.now = now
        self.stop = stop

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
            "blocks": self.blocks,
            "plugins": self.plugin_list,
        }

    def members_json(self) -> list[dict[str, Any]]:
        assert self.control.core is not None
        voters = self.control.core.config.names()
        return [
            {"name": m.name, "addr": m.addr, "pub": m.pub, "status": m.status.label,
             "incarnation": m.inc, "self": m.name == self.identity.name,
             "version": m.build[0] or None, "protocol": m.build[1] or None, "features": list(m.build[2]),
             "voter": m.name in voters}
            for m in self.control.core.membership.members()
        ]

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
            **self.data.status(),
            "storage": self.storage_status(),
            "rejected": dict(self.traffic.rejected),
            "dropped": dict(self.transport.dropped),
            "name_conflicts": [{"name": n, "addr": a} for a, n in self.control.conflicts.items()],
            "voters": sorted(self.control.core.config.names()),
            "disk_error": self.control.disk_error,
            "connection_hints": self.control.hints,
        }

    async def plugin_list(self, _req: dict[str, Any]) -> list[dict[str, Any]]:
        return self.plugins.info()

    async def blocks(self, req: dict[str, Any]) -> list[dict[str, Any]]:
        channel = req.get("channel")
        if channel is not None and (not isinstance(channel, int) or isinstance(channel, bool)):
            raise CommandError("channel must be an integer")
        return self.data.engine.cluster_rows(channel)

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
        try:
            self.control.force_leave(name, self.now())
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        return {"name": name, "status": "left"}


MAX_WAIT_SECONDS = 3600.0  # a control command never waits longer than an hour


def _seconds(req: dict[str, Any], key: str, default: float) -> float:
    """A non-negative, finite number of seconds from the request, or CommandError."""
    value = req.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= MAX_WAIT_SECONDS:
        raise CommandError(f"{key} must be a number of seconds from 0 to {MAX_WAIT_SECONDS:g}, got {value!r}")
    return float(value)
