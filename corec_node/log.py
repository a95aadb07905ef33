"""Structured log lines on stdout, one per event, for journald and for people.

A line is logfmt: ``ts=... level=info node=a event=member_changed name=b new=dead``.
Values with spaces, quotes or ``=`` are JSON-quoted, so ``shlex``-style or logfmt parsers
read them back. Call :func:`event` rather than formatting messages by hand.
"""

from __future__ import annotations

import collections
import json
import logging
import sys
import time
from typing import Any

LOGGER_NAME = "corec"
_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:/[]@+,")


def _value(v: Any) -> str:
    if isinstance(v, float):
        v = round(v, 6)
    s = v if isinstance(v, str) else json.dumps(v, separators=(",", ":"), default=str)
    if s and all(c in _SAFE for c in s):
        return s
    return json.dumps(s)


class LogfmtFormatter(logging.Formatter):
    def __init__(self, node: str) -> None:
        super().__init__()
        self.node = node

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        ts += f".{int(record.msecs):03d}Z"
        fields = getattr(record, "fields", None) or {}
        parts = [f"ts={ts}", f"level={record.levelname.lower()}", f"node={_value(self.node)}"]
        parts.append(f"event={_value(record.getMessage())}")
        parts.extend(f"{k}={_value(v)}" for k, v in fields.items())
        if record.exc_info:
            parts.append(f"error={_value(self.formatException(record.exc_info))}")
        return " ".join(parts)


RECENT_LINES = 2000  # log lines each process keeps for ``corec-node monitor``


class RecentLines(logging.Handler):
    """The process's latest log lines, numbered, for ``monitor`` to read from a cursor."""

    def __init__(self, keep: int = RECENT_LINES) -> None:
        super().__init__()
        self._lines: collections.deque[tuple[int, str]] = collections.deque(maxlen=keep)
        self._next = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:  # a line that cannot be formatted is the stream handler's to report
            return
        self._lines.append((self._next, line))
        self._next += 1

    def since(self, cursor: int) -> tuple[list[str], int, int]:
        """Lines numbered ``cursor`` and up (-1: none, only where "now" is), the next cursor,
        and how many lines between were no longer kept."""
        if cursor < 0:
            return [], self._next, 0
        lines = [line for n, line in self._lines if n >= cursor]
        first = self._lines[0][0] if self._lines else self._next
        return lines, self._next, max(0, min(first, self._next) - cursor)


RECENT = RecentLines()


def setup(node: str, level: str = "info") -> logging.Logger:
    """Route the ``corec`` logger to stdout as logfmt, and to RECENT; idempotent."""
    logger = logging.getLogger(LOGGER_NAME)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(LogfmtFormatter(node))
    logger.addHandler(handler)
    RECENT.setFormatter(LogfmtFormatter(node))
    logger.addHandler(RECENT)
    logger.setLevel(level.upper())
    logger.propagate = False
    return logger


def loop_exception(_loop: Any, context: dict[str, Any]) -> None:
    """The event loop's handler for what nothing awaited (a library's task that failed):
    one logfmt line naming the error, its traceback at debug level only, never the raw
    multi-line traceback asyncio would print into the log stream."""
    exc = context.get("exception")
    error = f"{type(exc).__name__}: {exc}" if exc is not None else None
    event("loop_exception", logging.WARNING, message=context.get("message", ""), error=error)
    logger = logging.getLogger(LOGGER_NAME)
    if exc is not None and logger.isEnabledFor(logging.DEBUG):
        logger.debug("loop_exception_traceback", exc_info=exc)


def event(name: str, level: int = logging.INFO, /, **fields: Any) -> None:
    """Log one event with its fields (cheap when the level is off)."""
    logger = logging.getLogger(LOGGER_NAME)
    if logger.isEnabledFor(level):
        logger.log(level, name, extra={"fields": fields})


def parse_line(line: str) -> dict[str, str]:
    """Read a logfmt line back (tests and tools use it)."""
    out: dict[str, str] = {}
    i, n = 0, len(line)
    while i < n:
        while i < n and line[i] == " ":
            i += 1
        eq = line.find("=", i)
        if eq < 0:
            break
        key = line[i:eq]
        i = eq + 1
        if i < n and line[i] == '"':
            decoder = json.JSONDecoder()
            value, end = decoder.raw_decode(line, i)
            out[key] = value
            i = end
        else:
            end = line.find(" ", i)
            end = n if end < 0 else end
            out[key] = line[i:end]
            i = end
    return out
