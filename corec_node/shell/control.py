"""Local control socket: how ``corec-node members|status|join|...`` talk to a running node.

A unix stream socket in the data directory, mode 0600 (only the node's user may drive it).
One request per connection: a JSON line ``{"cmd": NAME, ...args}``; one JSON line back,
``{"ok": true, "result": ...}`` or ``{"ok": false, "error": "..."}``.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

Command = Callable[[dict[str, Any]], Awaitable[Any]]
MAX_REQUEST_BYTES = 64 * 1024


class ControlError(Exception):
    """The node could not be reached, or refused the command; the text says which."""


class CommandError(Exception):
    """Raised by a command handler: a refusal the caller should see (not a crash)."""


class ControlServer:
    def __init__(self, path: Path, commands: dict[str, Command]) -> None:
        self.path = path
        self.commands = commands
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
            line = await reader.readline()
            try:
                request = json.loads(line)
                if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
                    raise ValueError("expected a JSON object with a cmd")
                handler = self.commands.get(request["cmd"])
                if handler is None:
                    raise CommandError(f"unknown command {request['cmd']!r}")
                reply = {"ok": True, "result": await handler(request)}
            except (ValueError, CommandError) as exc:
                reply = {"ok": False, "error": str(exc)}
            writer.write(json.dumps(reply, default=str).encode() + b"\n")
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

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
