"""Alerts seen cluster-wide: what an ALERT carries besides its kind and text (``facts``,
protocol 1.10), built from a raised alert and read back from a peer's message. Every node
keeps its peers' alerts beside its own (under the raiser's name and uid, so PostgreSQL,
keyed by uid, holds each once) and passes them to its ``corec_alert`` hook marked
``remote``; ``corec-node alerts`` lists them from any node."""

from __future__ import annotations

import uuid
from typing import Any

from corec_node.wire.messages import Alert

FACT_KEYS = ("uid", "severity", "block", "channel", "value", "plugin")
SEVERITIES = ("info", "warning", "error", "critical")  # what a peer may say; anything else is "warning"


def new_uid() -> str:
    return uuid.uuid4().hex


def facts_of(alert: dict[str, Any], uid: str) -> dict[str, Any]:
    """The ``facts`` row of a raised alert: plain values only (a row carries no lists)."""
    facts: dict[str, Any] = {"uid": uid, "severity": alert.get("severity", "warning")}
    block = alert.get("block")
    if type(block) is int and 0 <= block < 1 << 40:
        facts["block"], facts["channel"] = block, block >> 32
    value = alert.get("value")
    if type(value) in (int, float):
        facts["value"] = value
    if isinstance(alert.get("plugin"), str):
        facts["plugin"] = alert["plugin"]
    return facts


def remote_alert(sender: str, msg: Alert) -> dict[str, Any]:
    """A peer's alert as this node's hook and store take it; a uid that is not one (or
    none, from a node older than 1.10) is replaced by a fresh one."""
    facts = msg.facts or {}
    uid = facts.get("uid")
    try:
        uid = uuid.UUID(hex=uid).hex if isinstance(uid, str) else new_uid()
    except ValueError:
        uid = new_uid()
    severity = facts.get("severity")
    block = facts.get("block")
    alert: dict[str, Any] = {
        "kind": msg.kind, "text": msg.text, "uid": uid, "node": sender, "remote": True,
        "severity": severity if severity in SEVERITIES else "warning",
        "block": block if type(block) is int and 0 <= block < 1 << 40 else None,
    }
    if type(facts.get("value")) in (int, float):
        alert["value"] = facts["value"]
    if isinstance(facts.get("plugin"), str):
        alert["plugin"] = facts["plugin"]
    return alert


EPISODE_WINDOW = 300.0  # seconds: the same kind about the same block within this is one episode
EPISODES_KEPT = 10_000  # episodes remembered at most (the oldest go first)


class Episodes:
    """The nucleus's view of alert episodes: the first alert of a (kind, block) in a window
    goes to the sinks, the others raised meanwhile (by the same node or its peers: a
    threshold plugin on every holder of a block) are the same episode. Pure."""

    def __init__(self, window: float = EPISODE_WINDOW, kept: int = EPISODES_KEPT) -> None:
        self.window, self.kept = window, kept
        self._last: dict[tuple[str, Any], float] = {}
        self.folded = 0  # alerts not sent again: part of an episode already sent

    def first(self, alert: dict[str, Any], now: float) -> bool:
        """Whether ``alert`` opens an episode (and so goes to the sinks)."""
        key = (alert["kind"], alert.get("block"))
        last = self._last.get(key)
        if last is not None and now - last < self.window:
            self.folded += 1
            return False
        self._last[key] = now
        if len(self._last) > self.kept:
            del self._last[next(iter(self._last))]
        return True
