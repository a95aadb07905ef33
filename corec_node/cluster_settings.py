"""The cluster's settings: the configuration keys every node must run with alike, kept in
the committed voter configuration (``mesh/voters.py`` rule 9), so they change only through
the leader, for the whole cluster at once, never by editing one node's file.

A node runs with the committed values, whatever its file says: at start it takes them from
the configuration stored in its data directory; when a leader commits other values while it
runs, it restarts itself in place with them (``shell/node.py``). A difference between a
node's file and the committed values is said once, in one log line per key and one alert.

Which keys: those two nodes must agree on to agree about the same data or reach each other.
``engine.block_size`` and ``security.enabled`` are fixed when the cluster is founded (a new
block size would split every stored block; a new security mode would cut the nodes still
on the old one off); the others change with ``corec-node settings set``.
The cluster label (``node.cluster``) is not here: nodes of different labels never talk.
Pure."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from corec_node.config import Config, ConfigError, validate

KEYS = ("engine.block_size", "engine.tick_interval", "engine.replicas", "engine.min_insync", "security.enabled")
CHANGEABLE = frozenset({"engine.tick_interval", "engine.replicas", "engine.min_insync"})
LIVE = frozenset({"engine.tick_interval"})  # a running node takes these without a restart
SOURCE = "the cluster's committed settings"

Settings = tuple[tuple[str, str], ...]


def text(value: Any) -> str:
    """How a value is written in the configuration (and compared): TOML's spelling."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


def value_of(config: Config, key: str) -> Any:
    section, _, name = key.partition(".")
    return getattr(getattr(config, section), name)


def own(config: Config) -> Settings:
    """This node's values of the keys, from its file, environment and flags."""
    return tuple(sorted((k, text(value_of(config, k))) for k in KEYS))


def differences(config: Config, committed: Iterable[tuple[str, str]]) -> dict[str, tuple[str, str]]:
    """key -> (this node's value, the committed value), for the keys where they differ.
    Keys the committed settings do not hold (an older leader's) are not compared."""
    mine = dict(own(config))
    return {k: (mine[k], v) for k, v in committed if k in mine and _same(k, mine[k], v) is False}


def _same(key: str, a: str, b: str) -> bool:
    if key == "engine.tick_interval":
        try:
            return float(a) == float(b)
        except ValueError:
            return a == b
    return a == b


def apply(config: Config, committed: Iterable[tuple[str, str]]) -> Config:
    """``config`` with the committed values in place of its own, checked together with the
    rest of it (a committed value this node cannot run with is a ConfigError naming the
    key and the committed settings as its source)."""
    diff = differences(config, committed)
    if not diff:
        return config
    sections: dict[str, dict[str, Any]] = {}
    for key, (_, value) in diff.items():
        section, _, name = key.partition(".")
        sections.setdefault(section, {})[name] = _parse(config, key, value)
    out = replace(config, **{s: replace(getattr(config, s), **v) for s, v in sections.items()})
    try:
        validate(out, {k: SOURCE for k in diff})
    except ConfigError as exc:
        if exc.source == SOURCE:
            raise
        raise ConfigError(f"{exc.source} (with {SOURCE}: {', '.join(f'{k}={v}' for k, (_, v) in diff.items())})",
                          exc.key, exc.expected) from None
    return out


def _parse(config: Config, key: str, value: str) -> Any:
    kind = type(value_of(config, key))
    if kind is bool:
        if value not in ("true", "false"):
            raise ConfigError(SOURCE, key, "true or false", value)
        return value == "true"
    try:
        return kind(value)
    except ValueError:
        raise ConfigError(SOURCE, key, f"a{'n integer' if kind is int else ' number'}", value) from None


def changes(config: Config, assignments: Iterable[str], committed: Iterable[tuple[str, str]]) -> dict[str, str]:
    """``KEY=VALUE`` assignments checked for ``settings set``: known, changeable, valid with
    the rest of the committed settings and this (the leader's) configuration. ValueError
    names the first problem."""
    out: dict[str, str] = {}
    for item in assignments:
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise ValueError(f"{item!r}: expected KEY=VALUE")
        if key not in KEYS:
            raise ValueError(f"{key} is not a cluster setting (those are {', '.join(KEYS)})")
        if key not in CHANGEABLE:
            raise ValueError(f"{key} is fixed when the cluster is founded: it cannot change while the cluster holds data")
        try:
            out[key] = text(_parse(config, key, value))
        except ConfigError as exc:
            raise ValueError(f"{key}: expected {exc.expected}, got {value!r}") from None
    base = dict(committed) or dict(own(config))
    try:
        apply(config, tuple((base | out).items()))
    except ConfigError as exc:
        raise ValueError(f"{exc.key}: expected {exc.expected}") from None
    return out


def describe(config: Config, committed: Settings) -> dict[str, Any]:
    """What ``corec-node settings`` shows: the committed values, and this node's file's
    where they differ."""
    return {"committed": dict(committed), "file": dict(own(config)),
            "differences": {k: {"file": a, "committed": b} for k, (a, b) in differences(config, committed).items()}}
