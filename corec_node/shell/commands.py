"""The node's control commands: what ``corec-node status``, ``blocks``, ``members``,
``leader``, ``join``, ``leave``, ``force-leave`` and ``plugins`` ask a running node through
its control socket (``control.py``). A mixin of :class:`corec_node.shell.node.Node`; each command
runs on the node's loop and answers with JSON-able data.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from corec_node import __version__
from corec_node.shell.control import CommandError
from corec_node.wire.messages import MemberStatus


class ControlCommands:
    """Node methods answering the control socket (see the module docstring)."""

    def _commands(self) -> dict[str, Any]:
        return {
            "status": self._cmd_status,
            "members": self._cmd_members,
            "leader": self._cmd_leader,
            "join": self._cmd_join,
            "leave": self._cmd_leave,
            "force-leave": self._cmd_force_leave,
            "blocks": self._cmd_blocks,
            "plugins": self._cmd_plugins,
        }

    def members_json(self) -> list[dict[str, Any]]:
        assert self.membership is not None
        return [
            {"name": m.name, "addr": m.addr, "pub": m.pub, "status": m.status.label,
             "incarnation": m.inc, "self": m.name == self.name}
            for m in self.membership.members()
        ]

    async def _cmd_status(self, _req: dict[str, Any]) -> dict[str, Any]:
        assert self.membership is not None
        return {
            "name": self.name,
            "addr": self.addr,
            "pub": self.pub_addr,
            "cluster": self.cluster,
            "version": __version__,
            "uptime": round(time.time() - self.started_wall, 3),
            "members": self.membership.counts(),
            "leader": self.leader,
            "term": self.term,
            "awareness": self.membership.awareness,
            "messages_in": sum(self.messages_in.values()),
            "messages_out": sum(self.messages_out.values()),
            "entities": self.engine.store.count(),
            "blocks": len(self.engine.store.block_ids()),
            "cluster_blocks": len(self.engine.cluster_rows()),
            "entity_errors": self.engine.entity_errors,
            "ingested": self.engine.ingested,
            "ingest_dropped": self.ingest_dropped,
            "ingest_queue": self._batches.qsize() if self._batches is not None else 0,
            "ingest_queue_bytes": self._batches.bytes if self._batches is not None else 0,
            "repairs": self.engine.repairs,
            "fusions": self.engine.fusions,
            "audit_fits": self.auditor.fits,
            "flow": self.flow.status(),
            "placement_version": self.engine.placement.version,
            "placement_confirmed": self._placement_confirmed(),
            "storage": self.storage_status(),
            "rejected": dict(self.rejected),
            "dropped": dict(self.transport.dropped),
            "name_conflicts": [{"name": n, "addr": a} for a, n in self.conflicts.items()],
        }

    async def _cmd_plugins(self, _req: dict[str, Any]) -> list[dict[str, Any]]:
        return self.plugins.info()

    async def _cmd_blocks(self, req: dict[str, Any]) -> list[dict[str, Any]]:
        channel = req.get("channel")
        if channel is not None and not isinstance(channel, int):
            raise CommandError("channel must be an integer")
        return self.engine.cluster_rows(channel)

    async def _cmd_members(self, _req: dict[str, Any]) -> list[dict[str, Any]]:
        return self.members_json()

    async def _cmd_leader(self, _req: dict[str, Any]) -> dict[str, Any]:
        return {"leader": self.leader, "term": self.term}

    async def _cmd_join(self, req: dict[str, Any]) -> dict[str, Any]:
        assert self.membership is not None
        addrs = req.get("addrs")
        timeout = float(req.get("wait", 5.0))
        if not isinstance(addrs, list) or not addrs or not all(isinstance(a, str) for a in addrs):
            raise CommandError("join needs at least one host:port")
        self._joined_at = time.time()
        self._apply(self.membership.join(addrs, self.now()))
        deadline = self.now() + timeout
        while True:
            reached = {m.addr for m in self.membership.members() if m.status == MemberStatus.ALIVE}
            missing = [a for a in addrs if a not in reached]
            if not missing:
                return {"joined": addrs, "members": len(self.membership.members())}
            if self.now() >= deadline:
                raise CommandError(f"no answer from {', '.join(missing)} within {timeout:g} s (still trying in the background)")
            await asyncio.sleep(0.02)

    async def _cmd_leave(self, req: dict[str, Any]) -> dict[str, Any]:
        assert self.membership is not None
        self._apply(self.membership.leave(self.now()))
        spread = float(req.get("spread", 1.0))

        async def stop_later() -> None:
            # keep ticking for a moment so the queued "left" gossip goes out and is retransmitted
            await asyncio.sleep(spread)
            self.request_stop(0)

        asyncio.get_running_loop().create_task(stop_later())
        return {"left": True, "name": self.name, "stopping_in": spread}

    async def _cmd_force_leave(self, req: dict[str, Any]) -> dict[str, Any]:
        assert self.membership is not None
        name = req.get("name")
        if not isinstance(name, str):
            raise CommandError("force-leave needs a member name")
        try:
            self._apply(self.membership.force_leave(name, self.now()))
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        return {"name": name, "status": "left"}
