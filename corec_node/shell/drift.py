"""Drift: what each member says of the settings that must agree across a cluster, and where
they differ. Each node announces, with its own member record (protocol 1.10), ``key=value``
of those config keys and of its plugins' versions; ``corec-node drift`` compares them.

Which keys: the ones that make two nodes disagree about the same data or the same peers
(block size, tick, copies and their quorum, the timer profile, the message limit, the
security mode, evolution and forecasting genes, intelligent channels), and every plugin with its version
(``plugin.NAME``; a node without the plugin says nothing of it, which is a difference too).
Pure."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from corec_node.config import Config


def settings_of(config: Config, plugins: Iterable[Mapping[str, Any]] = ()) -> tuple[str, ...]:
    """What this node announces: ``key=value``, sorted."""
    e = config.engine
    pairs = {
        "engine.block_size": e.block_size, "engine.tick_interval": e.tick_interval, "engine.replicas": e.replicas,
        "engine.min_insync": e.min_insync, "engine.evolve_every": e.evolve_every, "engine.ttl": ",".join(e.ttl),
        "engine.genomes": ",".join(e.genomes), "mesh.profile": config.mesh.profile,
        "mesh.max_message_bytes": config.mesh.max_message_bytes, "security.enabled": config.security.enabled,
    }
    if e.intelligent:  # announced only when set: nodes without it say what they said before
        pairs["engine.intelligent"] = ",".join(map(str, e.intelligent))
    if not config.mesh.overlay:  # announced only when off: one such node makes the cluster a full mesh (SPEC 7.1)
        pairs["mesh.overlay"] = False
    for p in plugins:
        if p.get("state") == "active":
            pairs[f"plugin.{p['name']}"] = p.get("version") or "unversioned"
    return tuple(sorted(f"{k}={_text(v)}"[:255] for k, v in pairs.items()))


def _text(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v) if v != "" else "-"


def differences(members: Iterable[tuple[str, tuple[str, ...]]]) -> dict[str, Any]:
    """``members``: (name, announced settings) of the live members. The keys on which they
    differ, each with every member's value (None: it announced none for that key), and the
    members that announced nothing (older than 1.10: they cannot be compared)."""
    said: dict[str, dict[str, str]] = {}
    silent = []
    for name, settings in members:
        if not settings:
            silent.append(name)
            continue
        said[name] = dict(s.partition("=")[::2] for s in settings)
    keys = sorted({k for values in said.values() for k in values})
    diffs = []
    for key in keys:
        values = {name: values.get(key) for name, values in sorted(said.items())}
        if len(set(values.values())) > 1:
            diffs.append({"key": key, "values": values})
    return {"members": sorted(said), "unknown": sorted(silent), "keys": len(keys), "differences": diffs}
