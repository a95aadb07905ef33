"""A plugin's ``[plugin.NAME]`` settings checked against its ``SETTINGS``, and the errors
a plugin that cannot be loaded as configured raises (all :class:`~corec_node.config.ConfigError`:
the CLI exits 2 with one line)."""

from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from corec_node.config import ConfigError

# -- errors ---------------------------------------------------------------------------------


class PluginError(ConfigError):
    """A plugin cannot be loaded as configured. A ConfigError, so the CLI exits 2 with one
    line: a broken plugin is found at start, never at the first call."""

    def __init__(self, plugin: str, message: str, *, key: str = "", source: str = "") -> None:
        Exception.__init__(self, message)
        self.plugin = plugin
        self.source = source
        self.key = key or f"plugin.{plugin}"
        self.expected = message


class PluginConfigError(PluginError):
    """A plugin setting is wrong: unknown key, wrong type, or refused by the plugin.

    ``plugin`` and ``setting`` name what is wrong; the message reads like the node's own
    config errors: ``node.toml: plugin.alerts.thresholds: expected a table, got 3``.
    """

    def __init__(self, plugin: str, setting: str, expected: str, got: object = None, *,
                 source: str = "<defaults>") -> None:
        key = f"plugin.{plugin}.{setting}" if setting else f"plugin.{plugin}"
        detail = f"{source}: {key}: expected {expected}"
        if got is not None:
            detail += f", got {got!r}"
        super().__init__(plugin, detail, key=key, source=source)
        self.setting = setting
        self.expected = expected
        self.got = got


class UnknownPluginTable(PluginConfigError):
    """A ``[plugin.NAME]`` table names no plugin found: a misspelling, or a plugin not
    installed here. Names the file, the table, the closest installed name and all of them:
    ``node.toml: [plugin.alertz]: no plugin named 'alertz' is installed (did you mean
    'alerts'?); installed: alerts, analyzer``."""

    def __init__(self, table: str, installed: Sequence[str], *, source: str = "<defaults>") -> None:
        close = difflib.get_close_matches(table, installed, n=1, cutoff=0.6)
        self.suggestion = close[0] if close else None
        self.installed = tuple(installed)
        hint = f" (did you mean {self.suggestion!r}?)" if self.suggestion else ""
        found = ", ".join(installed) if installed else "none"
        detail = (f"{source}: [plugin.{table}]: no plugin named {table!r} is installed{hint}; "
                  f"installed: {found}. To keep settings for a plugin not installed here, "
                  f"list it in plugins.disabled")
        PluginError.__init__(self, table, detail, key=f"plugin.{table}", source=source)
        self.setting = ""
        self.expected = "the name of an installed plugin"
        self.got = table


class PluginLoadError(PluginError):
    """A plugin could not be imported or registered (import error, unknown or misspelled
    hook, bad hook signature, name clash)."""

    def __init__(self, plugin: str, detail: str, *, source: str = "") -> None:
        super().__init__(plugin, f"plugin {plugin!r}{f' ({source})' if source else ''}: {detail}", source=source)
        self.detail = detail


# -- settings -------------------------------------------------------------------------------


class _Mismatch(Exception):
    pass


def _describe(hint: Any) -> str:
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
             list: "a list", tuple: "a list", dict: "a table"}
    if hint is type(None) or hint is None:
        return "nothing"
    if isinstance(hint, tuple):
        return " or ".join(_describe(h) for h in hint)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(hint))
    if origin is not None:
        args = typing.get_args(hint)
        base = _describe(origin)
        if origin in (list, tuple, collections.abc.Sequence) and args:
            return f"{base} of {_plural(args[0])}"
        if origin in (dict, collections.abc.Mapping) and len(args) == 2:
            return f"a table of {_plural(args[1])}"
        return base
    if hint in (collections.abc.Mapping,):
        return "a table"
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def _plural(hint: Any) -> str:
    plurals = {bool: "true/false values", int: "integers", float: "numbers", str: "strings",
               list: "lists", dict: "tables"}
    return plurals.get(hint) or f"values that are each {_describe(hint)}"


def check_value(value: Any, hint: Any) -> Any:
    """``value`` checked against a type (``int``, ``float``, ``str``, ``bool``, ``list``,
    ``dict``, a tuple of those, ``list[int]``, ``dict[str, float]``, ``X | None``, ``Any``);
    returns it converted (int -> float, list -> tuple) or raises ValueError saying what was
    expected."""
    try:
        return _check(value, hint)
    except _Mismatch:
        raise ValueError(_describe(hint)) from None


def _check(value: Any, hint: Any) -> Any:
    if hint is Any or hint is object:
        return value
    if isinstance(hint, tuple):
        for h in hint:
            try:
                return _check(value, h)
            except _Mismatch:
                continue
        raise _Mismatch
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return _check(value, tuple(args))
    if hint is type(None) or hint is None:
        if value is None:
            return None
        raise _Mismatch
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _Mismatch
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise _Mismatch
    if hint is str:
        if isinstance(value, str):
            return value
        raise _Mismatch
    base = origin or hint
    if base in (list, tuple, collections.abc.Sequence):
        if not isinstance(value, (list, tuple)):
            raise _Mismatch
        if base is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(args) != len(value):
                raise _Mismatch
            return tuple(_check(v, a) for v, a in zip(value, args))
        elem = args[0] if args else Any
        items = [_check(v, elem) for v in value]
        return tuple(items) if base is tuple else items
    if base in (dict, collections.abc.Mapping):
        if not isinstance(value, Mapping):
            raise _Mismatch
        if len(args) == 2:
            return {_check(k, args[0]): _check(v, args[1]) for k, v in value.items()}
        return dict(value)
    if isinstance(hint, type):
        if isinstance(value, hint):
            return value
        raise _Mismatch
    return value  # an annotation we do not understand (a string, a TypeVar): not checked


def validate_settings(plugin: str, spec: Any, table: Mapping[str, Any] | None, *, source: str = "<defaults>") -> Any:
    """Check ``[plugin.NAME]`` against the plugin's ``SETTINGS``; return the settings with
    defaults filled in (a dict), or an instance when ``SETTINGS`` is a dataclass. Without
    ``SETTINGS`` the table is returned as is (the plugin checks it in corec_configure)."""
    table = dict(table or {})
    if spec is None:
        return table
    if isinstance(spec, type) and dataclasses.is_dataclass(spec):
        hints = typing.get_type_hints(spec)
        fields = {f.name: f for f in dataclasses.fields(spec) if f.init}
        values: dict[str, Any] = {}
        for key, value in table.items():
            if key not in fields:
                raise PluginConfigError(plugin, key, f"one of {', '.join(fields) or '(no settings)'}", "unknown key", source=source)
            try:
                values[key] = check_value(value, hints.get(key, Any))
            except ValueError as exc:
                raise PluginConfigError(plugin, key, str(exc), value, source=source) from None
        for key, f in fields.items():
            if key not in values and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise PluginConfigError(plugin, key, "a value (this setting has no default)", source=source)
        try:
            return spec(**values)
        except (TypeError, ValueError) as exc:  # the dataclass's own __post_init__ checks
            raise PluginConfigError(plugin, "", f"valid settings ({exc})", source=source) from None
    if isinstance(spec, Mapping):
        out: dict[str, Any] = {}
        for key, entry in spec.items():
            if not (isinstance(entry, tuple) and len(entry) == 2):
                raise PluginLoadError(plugin, f"SETTINGS[{key!r}] must be (type, default), got {entry!r}")
            out[key] = entry[1]
        for key, value in table.items():
            if key not in spec:
                raise PluginConfigError(plugin, key, f"one of {', '.join(spec) or '(no settings)'}", "unknown key", source=source)
            try:
                out[key] = check_value(value, spec[key][0])
            except ValueError as exc:
                raise PluginConfigError(plugin, key, str(exc), value, source=source) from None
        return out
    raise PluginLoadError(plugin, f"SETTINGS must be a dict of key -> (type, default) or a dataclass, got {type(spec).__name__}")
