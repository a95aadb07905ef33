"""What the web console shows, made only of answers the node already gives.

Members, leader, voters, status and blocks are the control commands' own handlers
(``commands.py``: the membership ones answered by the mesh process over the link, as for
the CLI), alerts and audit rows the local store's reads (``storage/local.py``). The feed
adds presentation and nothing the node decides: each member's role, rates from two status
counters a refresh apart, the blocks of one channel, and how those are placed by owner.

Rules:
1. One snapshot serves every viewer: each part is built at most once per refresh and
   shared (a build in progress is awaited, not repeated), so ten open pages cost the node
   what one does, and a page nobody opens costs nothing.
2. A part that fails (the mesh process slow, the store closed) is named in ``errors`` and
   the rest of the snapshot is still served: the console shows a sick node, never hides it.
3. The encoded snapshot is strict JSON (a NaN mean becomes null): browsers refuse NaN.
"""

from __future__ import annotations

import asyncio
import collections
import json
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from corec_node.shell.control import CommandError, check_params

if TYPE_CHECKING:
    from corec_node.storage import LocalStore

Command = Callable[[dict[str, Any]], Awaitable[Any]]

REFRESH = 1.0  # seconds a snapshot is reused: the page's update rate, and the most a viewer costs
CHANNELS_REFRESH = 5.0  # the channel list needs every block's row (blocks without --channel): asked less often once known
MAX_BLOCK_ROWS = 2048  # blocks of one channel sent to a page; a wider heatmap is no easier to read
TIMELINE_ROWS = 200  # newest alerts, and newest audit rows, kept for the page
TIMELINE_WINDOW = 86_400.0  # at the first read, rows of the last day
TIMELINE_SLACK = 5.0  # re-read this far back: a row may commit after a later-stamped one was read


def role(member: Mapping[str, Any], leader: str | None) -> str:
    """leader, voter or member: the roles ``voters`` and ``members --detailed`` print."""
    if member["name"] == leader:
        return "leader"
    return "voter" if member.get("voter") else "member"


def placement(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Blocks and entities each member owns among ``rows``, and the blocks it holds as a replica."""
    by: dict[str, dict[str, Any]] = collections.defaultdict(lambda: {"blocks": 0, "entities": 0, "replicas": 0})
    for row in rows:
        owner = by[row["owner"]]
        owner["blocks"] += 1
        owner["entities"] += int(row.get("count") or 0)
        for name in row.get("replicas") or ():
            by[name]["replicas"] += 1
    return [{"name": name, **counts} for name, counts in sorted(by.items())]


def channels(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each channel with its number of blocks and entities, in channel order."""
    out: dict[int, dict[str, int]] = {}
    for row in rows:
        c = out.setdefault(int(row["channel"]), {"blocks": 0, "entities": 0})
        c["blocks"] += 1
        c["entities"] += int(row.get("count") or 0)
    return [{"channel": ch, **counts} for ch, counts in sorted(out.items())]


def strict(value: Any) -> Any:
    """``value`` with every non-finite float as None (rule 3)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(v) for v in value]
    return value


def encode(snapshot: Mapping[str, Any]) -> bytes:
    return json.dumps(strict(snapshot), separators=(",", ":"), default=str, allow_nan=False).encode()


class Tail:
    """The newest rows of an append-only table (alerts, audit), read incrementally by time."""

    def __init__(self, keep: int = TIMELINE_ROWS) -> None:
        self.rows: collections.deque[dict[str, Any]] = collections.deque(maxlen=keep)
        self.since: float | None = None  # the newest row's ts (at first: a window back from now)
        self._seen: dict[str, float] = {}  # uid -> ts of the rows inside the slack window

    def start(self, wall: float) -> float:
        """The ``since`` of the next read."""
        if self.since is None:
            self.since = wall - TIMELINE_WINDOW
        return self.since - TIMELINE_SLACK

    def add(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            if row["uid"] in self._seen:
                continue
            self._seen[row["uid"]] = row["ts"]
            self.rows.append(row)
            self.since = row["ts"] if self.since is None else max(self.since, row["ts"])
        if self.since is not None:
            floor = self.since - TIMELINE_SLACK
            self._seen = {uid: ts for uid, ts in self._seen.items() if ts >= floor}

    def newest(self) -> list[dict[str, Any]]:
        return sorted(self.rows, key=lambda r: r["ts"], reverse=True)


class _Shared:
    """Parts by key, rebuilt when older than their age; a build in progress is shared (rule 1)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self._parts: dict[Any, tuple[float, asyncio.Future[Any]]] = {}

    async def get(self, key: Any, age: float, build: Callable[[], Awaitable[Any]]) -> Any:
        entry = self._parts.get(key)
        now = self.clock()
        if entry is None or (entry[1].done() and now - entry[0] >= age):
            entry = (now, asyncio.ensure_future(build()))
            self._parts[key] = entry
        return await asyncio.shield(entry[1])


class ConsoleFeed:
    """Builds the console's snapshot (see the module docstring) from the node's command
    table and its local store. ``extra`` adds a small dict of the server's own counters."""

    def __init__(
        self,
        commands: Mapping[str, Command],
        store: Callable[[], LocalStore | None],
        *,
        extra: Callable[[], dict[str, Any]] = dict,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.commands = commands
        self.store = store
        self.extra = extra
        self.clock = clock
        self.wall = wall
        self._shared = _Shared(clock)
        self._alerts = Tail()
        self._audit = Tail()
        self._last: tuple[float, dict[str, Any]] | None = None  # (clock, status) of the previous build
        self._channels_seen = False  # until blocks exist the channel list is asked every refresh

    async def encoded(self, channel: int | None) -> bytes:
        """The snapshot as strict JSON bytes, shared by every viewer of ``channel``."""
        return await self._shared.get(("encoded", channel), REFRESH, lambda: self._encode(channel))

    async def _encode(self, channel: int | None) -> bytes:
        return encode(await self.snapshot(channel))

    async def snapshot(self, channel: int | None) -> dict[str, Any]:
        """Everything the page shows; ``channel`` None: the lowest channel that has blocks."""
        if channel is not None:
            check_params("blocks", {"channel": channel})  # the CLI's own check: CommandError
        cluster, chans, timeline = await asyncio.gather(
            self._shared.get("cluster", REFRESH, self._cluster),
            self._shared.get("channels", CHANNELS_REFRESH if self._channels_seen else REFRESH, self._channels),
            self._shared.get("timeline", REFRESH, self._timeline))
        if channel is None and chans["channels"]:
            channel = chans["channels"][0]["channel"]
        blocks = await self._shared.get(("blocks", channel), REFRESH, lambda: self._blocks(channel))
        errors = {**cluster["errors"], **chans["errors"], **timeline["errors"], **blocks["errors"]}
        listed = [c for c in chans["channels"] if c["channel"] != channel] + blocks["channel"]  # the chosen one fresh
        return {**cluster["parts"], "channels": sorted(listed, key=lambda c: c["channel"]), "channel": channel,
                **blocks["parts"], **timeline["parts"], "errors": errors,
                "console": {**self.extra(), "refresh": REFRESH}}

    async def _ask(self, command: str, errors: dict[str, str], **params: Any) -> Any:
        """One control command's answer, as the CLI gets it; None and an error noted if refused."""
        try:
            return await self.commands[command](params)
        except CommandError as exc:
            errors[command] = str(exc)
        except Exception as exc:  # a handler's bug must not take the console down (rule 2)
            errors[command] = f"{type(exc).__name__}: {exc}"
        return None

    async def _cluster(self) -> dict[str, Any]:
        errors: dict[str, str] = {}
        status, members, leader, voters = await asyncio.gather(
            self._ask("status", errors), self._ask("members", errors),
            self._ask("leader", errors), self._ask("voters", errors))
        who = (leader or status or {}).get("leader")
        if members is not None:
            members = [{**m, "role": role(m, who)} for m in members]
        return {"parts": {"at": self.wall(), "status": status, "members": members, "leader": leader,
                          "voters": voters, "rates": self._rates(status)}, "errors": errors}

    def _rates(self, status: dict[str, Any] | None) -> dict[str, Any] | None:
        """Records per second between this status and the previous one."""
        if status is None:
            return None
        now, last = self.clock(), self._last
        self._last = (now, status)
        if last is None or now <= last[0]:
            return None
        seconds = now - last[0]

        def per_s(get: Callable[[dict[str, Any]], float]) -> float:
            try:
                return max(0.0, (get(status) - get(last[1])) / seconds)
            except (KeyError, TypeError):
                return 0.0

        return {"seconds": round(seconds, 3),
                "ingested": per_s(lambda s: s["ingested"]),
                "received": per_s(lambda s: s["producers"]["records"]),
                "accepted": per_s(lambda s: s["producers"]["accepted"]),
                "flow_holds": per_s(lambda s: s["flow"]["holds"])}

    async def _channels(self) -> dict[str, Any]:
        errors: dict[str, str] = {}
        rows = await self._ask("blocks", errors)
        found = channels(rows or [])
        self._channels_seen = bool(found)
        return {"channels": found, "errors": errors}

    async def _blocks(self, channel: int | None) -> dict[str, Any]:
        errors: dict[str, str] = {}
        rows = await self._ask("blocks", errors, channel=channel) if channel is not None else []
        rows = rows or []
        return {"parts": {"blocks": rows[:MAX_BLOCK_ROWS], "blocks_total": len(rows), "placement": placement(rows)},
                "channel": channels(rows), "errors": errors}

    async def _timeline(self) -> dict[str, Any]:
        errors: dict[str, str] = {}
        store = self.store()
        if store is None:
            errors["store"] = "the local store is not open"
        else:
            wall = self.wall()
            try:
                alerts, audit = await asyncio.gather(store.alerts(self._alerts.start(wall)),
                                                     store.audit(self._audit.start(wall)))
            except Exception as exc:  # a closed or busy store: named, the rest still served
                errors["store"] = f"{type(exc).__name__}: {exc}"
            else:
                self._alerts.add(alerts)
                self._audit.add(audit)
        return {"parts": {"alerts": self._alerts.newest(), "audit": self._audit.newest()}, "errors": errors}
