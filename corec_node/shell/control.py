"""Local control socket: how ``corec-node members|status|join|...`` talk to a running node.

A unix stream socket in the data directory, mode 0600 (only the node's user may drive it).
One request per connection: a JSON line ``{"cmd": NAME, ...args}``; one JSON line back,
``{"ok": true, "result": ...}`` or ``{"ok": false, "error": "..."}``.

Every command's parameters are checked here, against :data:`PARAMS`, before its handler
runs: a request with an unknown key, a wrong type or a value out of range is answered with
one error line naming the parameter, and the command does nothing (a ``leave`` with a
typo must not leave). A command missing from :data:`PARAMS` takes no parameters.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from corec_node.config import split_addr
from corec_node.log import LOGGER_NAME

Command = Callable[[dict[str, Any]], Awaitable[Any]]
MAX_REQUEST_BYTES = 64 * 1024
MAX_WAIT_SECONDS = 3600.0  # join waits at most an hour for its peers
MAX_SPREAD_SECONDS = 60.0  # a node that said "left" stops within a minute, never lingers as a zombie
MAX_NAME_BYTES = 255  # wire/limits.MAX_NAME_BYTES: a member name the protocol can carry
MAX_LIST = 64  # peers to join, or voters to name, in one command


class ControlError(Exception):
    """The node could not be reached, or refused the command; the text says which."""


class CommandError(Exception):
    """Raised by a command handler: a refusal the caller should see (not a crash)."""


# -- parameters ----------------------------------------------------------------------


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def seconds(most: float) -> Callable[[Any], float]:
    """A finite number of seconds from 0 to ``most``."""
    def check(value: Any) -> float:
        if not _number(value) or not 0 <= value <= most:
            raise ValueError(f"a number of seconds from 0 to {most:g}")
        return float(value)
    return check


def optional(check: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``check``, or null for "not given"."""
    return lambda value: None if value is None else check(value)


def channel(value: Any) -> int | None:
    """A channel 0..255, or null for every channel."""
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 255:
        raise ValueError("a channel from 0 to 255")
    return value


def member_name(value: Any) -> str:
    """A member name as the protocol carries it: printable, 1 to 255 bytes."""
    if not isinstance(value, str) or not value or len(value.encode()) > MAX_NAME_BYTES or not value.isprintable():
        raise ValueError(f"a member name (printable, 1 to {MAX_NAME_BYTES} bytes)")
    return value


def member_names(value: Any) -> list[str]:
    """A non-empty list of distinct member names."""
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_LIST:
        raise ValueError(f"a list of 1 to {MAX_LIST} member names")
    names = [member_name(v) for v in value]
    if len(set(names)) != len(names):
        raise ValueError("a list of distinct member names")
    return names


def assignments(value: Any) -> list[str]:
    """A list of ``KEY=VALUE`` texts (``settings set``: the keys are checked by the node);
    None, none."""
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > MAX_LIST or not all(
            isinstance(v, str) and "=" in v and len(v) <= 200 for v in value):
        raise ValueError(f"a list of at most {MAX_LIST} KEY=VALUE texts")
    return value


def addresses(value: Any) -> list[str]:
    """A non-empty list of host:port addresses."""
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_LIST:
        raise ValueError(f"a list of 1 to {MAX_LIST} host:port addresses")
    for addr in value:
        try:
            split_addr(addr)
        except (TypeError, ValueError, AttributeError):
            raise ValueError(f"a list of host:port addresses ({_show(addr)} is not one)") from None
    return list(value)


MAX_ALERT_AGE = 10 * 365 * 86400.0  # alerts --since: seconds back, at most ten years


def block_ref(value: Any) -> int:
    """A block: its integer id (channel << 32 | index) or its name, ``CHANNEL:INDEX``."""
    if isinstance(value, str):
        channel, sep, index = value.partition(":")
        if sep and channel.isdigit() and index.isdigit() and int(channel) <= 255 and int(index) < 1 << 32:
            return int(channel) << 32 | int(index)
    elif isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 40:
        return value
    raise ValueError("a block: CHANNEL:INDEX (as blocks shows it) or its integer id")


def alert_ref(value: Any) -> str:
    """An alert uid or its first 4 or more hex digits (``explain``), lowercased."""
    if isinstance(value, str) and 4 <= len(value) <= 32 and all(c in "0123456789abcdefABCDEF" for c in value):
        return value.lower()
    raise ValueError("an alert uid, or its first 4 or more hex digits")


def flag(value: Any) -> bool:
    """true or false."""
    if not isinstance(value, bool):
        raise ValueError("true or false")
    return value


def cursor(value: Any) -> int:
    """A log cursor: a line number, or -1 for "from now on"."""
    if not isinstance(value, int) or isinstance(value, bool) or value < -1:
        raise ValueError("a line number (0 or more), or -1 for from now on")
    return value


@dataclass(frozen=True, slots=True)
class Param:
    """One parameter of a command: the check that cleans its value, and whether it must be given."""

    check: Callable[[Any], Any]
    required: bool = False


# What each command accepts (the CLI's requests; ``cmd`` itself is not a parameter).
PARAMS: dict[str, dict[str, Param]] = {
    "status": {},
    "members": {},
    "leader": {},
    "voters": {},
    "plugins": {},
    "blocks": {"channel": Param(channel)},
    "genome": {"block": Param(block_ref, required=True)},
    "explain": {"block": Param(block_ref), "alert": Param(alert_ref), "refine": Param(flag)},  # a block or an alert
    "alerts": {"since": Param(optional(seconds(MAX_ALERT_AGE)))},
    "drift": {},
    "settings": {"set": Param(assignments)},
    "join": {"addrs": Param(addresses, required=True), "wait": Param(seconds(MAX_WAIT_SECONDS))},
    "leave": {"spread": Param(seconds(MAX_SPREAD_SECONDS))},
    "force-leave": {"name": Param(member_name, required=True), "prune": Param(flag)},
    "recover-voters": {"names": Param(member_names, required=True)},
    "logs": {"node": Param(cursor), "mesh": Param(cursor)},  # one cursor per process of the node
}


def check_params(cmd: str, request: Mapping[str, Any],
                 params: Mapping[str, Mapping[str, Param]] = PARAMS) -> dict[str, Any]:
    """The request with its parameters checked and cleaned; CommandError names the first bad one."""
    spec = params.get(cmd, {})
    clean: dict[str, Any] = {"cmd": cmd}
    for key, value in request.items():
        if key == "cmd":
            continue
        if key not in spec:
            takes = f"takes {', '.join(spec)}" if spec else "takes no parameters"
            raise CommandError(f"{cmd}: unknown parameter {key!r} ({cmd} {takes})")
        try:
            clean[key] = spec[key].check(value)
        except ValueError as exc:
            raise CommandError(f"{cmd}: {key} must be {exc}, got {_show(value)}") from None
    missing = [key for key, p in spec.items() if p.required and key not in clean]
    if missing:
        raise CommandError(f"{cmd}: {missing[0]} is required")
    return clean


def _show(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


# -- the server ------------------------------------------------------------------------


class ControlServer:
    def __init__(self, path: Path, commands: dict[str, Command],
                 params: Mapping[str, Mapping[str, Param]] = PARAMS) -> None:
        self.path = path
        self.commands = commands
        self.params = params
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        if self.path.exists():
            if _answers(self.path):
                raise ControlError(f"another node is running with this data directory ({self.path})")
            self.path.unlink()
        old = os.umask(0o177)  # created 0600: no window where others could connect
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=str(self.path), limit=MAX_REQUEST_BYTES)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            reply = await self._answer(reader)
            writer.write(json.dumps(reply, default=str).encode() + b"\n")
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def _answer(self, reader: asyncio.StreamReader) -> dict[str, Any]:
        """One reply for any request, even a malformed one: a caller always learns why."""
        try:
            line = await reader.readline()
        except ValueError:  # longer than the reader's limit
            return {"ok": False, "error": f"request longer than {MAX_REQUEST_BYTES} bytes"}
        try:
            request = json.loads(line)
        except ValueError:
            return {"ok": False, "error": "expected one line of JSON"}
        if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
            return {"ok": False, "error": "expected a JSON object with a cmd"}
        handler = self.commands.get(request["cmd"])
        try:
            if handler is None:
                raise CommandError(f"unknown command {request['cmd']!r}")
            result = await handler(check_params(request["cmd"], request, self.params))
        except (ValueError, CommandError) as exc:
            return {"ok": False, "error": str(exc)}
        except Exception as exc:  # a bug in a command must not leave the caller without an answer
            logging.getLogger(LOGGER_NAME).exception("control_command_failed")
            return {"ok": False, "error": f"{request['cmd']} failed: {type(exc).__name__}: {exc}"}
        return {"ok": True, "result": result}

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


def _answers(path: Path) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(0.5)
    try:
        s.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        s.close()


def request(path: Path, cmd: str, timeout: float = 10.0, **args: Any) -> Any:
    """Send one command to the node behind ``path``; ControlError says why it failed."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        try:
            s.connect(str(path))
        except FileNotFoundError:
            raise ControlError(f"no node is running with data directory {path.parent} (no {path.name})") from None
        except OSError as exc:
            raise ControlError(f"cannot reach the node at {path}: {exc.strerror or exc}") from None
        s.sendall(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
        chunks = []
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
        data = b"".join(chunks)
    except TimeoutError:
        raise ControlError(f"the node at {path} did not answer within {timeout:g} s") from None
    except OSError as exc:
        raise ControlError(f"lost the node at {path}: {exc.strerror or exc}") from None
    finally:
        s.close()
    try:
        reply = json.loads(data)
    except ValueError:
        raise ControlError(f"the node at {path} sent no valid answer") from None
    if not reply.get("ok"):
        raise ControlError(reply.get("error", "the node refused the command"))
    return reply.get("result")
