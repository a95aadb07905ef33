"""corec-alerts: an alert when a block's aggregate leaves the band set for its channel.

Config (``[plugin.alerts]`` in the node's TOML)::

    [plugin.alerts]
    field = "mean"          # the aggregate checked: mean, min, max, std, error_rate, fitness, active, count
    repeat_every = 0        # ticks between two alerts while a block stays out; 0: once per excursion
    severity = "warning"    # of threshold_exceeded alerts
    thresholds = { "7" = { min = 0.0, max = 40.0 }, "*" = { max = 100.0 } }

``thresholds`` maps a channel ("0".."255", or "*" for every channel without its own band)
to a band with ``min`` and/or ``max`` (inclusive) and optionally its own ``field`` and
``severity``. A block leaving its band raises ``threshold_exceeded``; coming back raises
``threshold_cleared`` (severity info). A block with no active entity has no mean, min, max
or std, and is not judged on them.

The hook runs in a worker thread (it is sync); the manager never runs two of its calls at
once, so the per-block state needs no lock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from corec_node.hookspecs import hookimpl
from corec_node.plugins import PluginConfigError

__version__ = "0.1.0"
NAME = "alerts"
FIELDS = ("mean", "min", "max", "std", "error_rate", "fitness", "active", "count")
SEVERITIES = ("info", "warning", "critical")


@dataclass(frozen=True, slots=True)
class Band:
    lo: float | None
    hi: float | None
    field: str
    severity: str

    def breach(self, value: float) -> str | None:
        """"below" / "above" when ``value`` is out of the band, else None."""
        if self.lo is not None and value < self.lo:
            return "below"
        if self.hi is not None and value > self.hi:
            return "above"
        return None


def parse_thresholds(table: dict[str, Any], field: str, severity: str) -> dict[int | None, Band]:
    """``{channel or None (for "*"): Band}``; PluginConfigError names the bad key."""
    bands: dict[int | None, Band] = {}
    for key, spec in table.items():
        where = f"thresholds.{key}"
        if key == "*":
            channel: int | None = None
        else:
            try:
                channel = int(key)
            except ValueError:
                channel = -1
            if not 0 <= channel <= 255:
                raise PluginConfigError(NAME, where, 'a channel "0".."255" or "*"', key)
        if not isinstance(spec, dict):
            raise PluginConfigError(NAME, where, "a table with min and/or max", spec)
        unknown = set(spec) - {"min", "max", "field", "severity"}
        if unknown:
            raise PluginConfigError(NAME, f"{where}.{min(unknown)}", "one of min, max, field, severity", "unknown key")
        lo, hi = spec.get("min"), spec.get("max")
        for name, v in (("min", lo), ("max", hi)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
                raise PluginConfigError(NAME, f"{where}.{name}", "a number", v)
        if lo is None and hi is None:
            raise PluginConfigError(NAME, where, "at least one of min and max")
        if lo is not None and hi is not None and lo > hi:
            raise PluginConfigError(NAME, where, f"min <= max, got min {lo} > max {hi}")
        f = spec.get("field", field)
        if f not in FIELDS:
            raise PluginConfigError(NAME, f"{where}.field", f"one of {', '.join(FIELDS)}", f)
        sev = spec.get("severity", severity)
        if sev not in SEVERITIES:
            raise PluginConfigError(NAME, f"{where}.severity", f"one of {', '.join(SEVERITIES)}", sev)
        bands[channel] = Band(None if lo is None else float(lo), None if hi is None else float(hi), f, sev)
    return bands


class AlertsPlugin:
    """Threshold alerts per channel. One instance per node (the entry point's ``plugin``)."""

    SETTINGS = {
        "thresholds": (dict, {}),
        "field": (str, "mean"),
        "repeat_every": (int, 0),
        "severity": (str, "warning"),
    }

    def __init__(self) -> None:
        self.bands: dict[int | None, Band] = {}
        self.repeat_every = 0
        self._out: dict[int, tuple[str, int]] = {}  # block -> (breach, tick of its last alert)

    @hookimpl
    def corec_configure(self, config: Any) -> None:
        s = config.plugin[NAME]
        if s["field"] not in FIELDS:
            raise PluginConfigError(NAME, "field", f"one of {', '.join(FIELDS)}", s["field"])
        if s["severity"] not in SEVERITIES:
            raise PluginConfigError(NAME, "severity", f"one of {', '.join(SEVERITIES)}", s["severity"])
        if s["repeat_every"] < 0:
            raise PluginConfigError(NAME, "repeat_every", "0 or more ticks", s["repeat_every"])
        self.bands = parse_thresholds(s["thresholds"], s["field"], s["severity"])
        self.repeat_every = s["repeat_every"]
        self._out.clear()

    @hookimpl
    def corec_block_aggregates(self, tick: int, aggregates: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Alerts for the blocks that left (or came back into) their band this tick."""
        return self.check(tick, aggregates)

    def check(self, tick: int, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        bands = self.bands
        if not bands:
            return []
        default = bands.get(None)
        alerts: list[dict[str, Any]] = []
        out: dict[int, tuple[str, int]] = {}
        for row in rows:
            band = bands.get(row["channel"], default)
            if band is None:
                continue
            value = row.get(band.field)
            block = row["block"]
            if value is None or math.isnan(value):  # no active entity: nothing to judge
                if block in self._out:
                    out[block] = self._out[block]
                continue
            breach = band.breach(value)
            prev = self._out.get(block)
            if breach is None:
                if prev is not None:
                    alerts.append(self._alert("threshold_cleared", "info", row, band, value,
                                              f"back within [{_fmt(band.lo, '-inf')}, {_fmt(band.hi, 'inf')}]"))
                continue
            if prev is None or prev[0] != breach or (self.repeat_every and tick - prev[1] >= self.repeat_every):
                limit = band.lo if breach == "below" else band.hi
                alerts.append(self._alert("threshold_exceeded", band.severity, row, band, value,
                                          f"{breach} {'min' if breach == 'below' else 'max'} {_fmt(limit, '')}"))
                out[block] = (breach, tick)
            else:
                out[block] = prev
        self._out = out  # blocks no longer in the rows (handed off, gone) are forgotten
        return alerts

    @staticmethod
    def _alert(kind: str, severity: str, row: dict[str, Any], band: Band, value: float, what: str) -> dict[str, Any]:
        channel, number = row["channel"], row["block"] & 0xFFFFFFFF
        return {
            "kind": kind,
            "severity": severity,
            "text": f"block {channel}:{number} {band.field} {value:.4g} {what} (tick {row['tick']})",
            "block": row["block"],
            "channel": channel,
            "tick": row["tick"],
            "field": band.field,
            "value": value,
            "min": band.lo,
            "max": band.hi,
        }


def _fmt(v: float | None, none: str) -> str:
    return none if v is None else f"{v:g}"


plugin = AlertsPlugin()
"""The object the entry point names: ``alerts = "corec_alerts:plugin"``."""
