"""The web console's HTTP server: one read-only page, its JSON snapshot, and a stream of them.

An asyncio server on the node process's loop, so the feed (``console_feed.py``) reads the
node's answers on the loop that owns them, as ``metrics.py``'s scrapes do. Routes::

    GET /               the page (corec_node/console/: index.html, console.js, console.css)
    GET /api/snapshot   the snapshot as JSON; ?channel=N for that channel's blocks
    GET /api/events     server-sent events: event "snapshot", a fresh one every refresh

Rules (the parser, ``parse_request``, is pure: a request head in, a Request or BadRequest out):
1. A request is its head only: at most MAX_HEAD_BYTES, within HEAD_TIMEOUT of its first
   byte, no body.
   Anything else is answered (400, 408 or 431) and counted by reason in ``refused``; bad
   bytes never raise into the node's loop.
2. GET and HEAD only (405 with Allow); a path it does not serve is 404. Nothing it serves
   changes the node: the console is read-only.
3. Bound to loopback, it answers only loopback host names (403 otherwise): a web page from
   elsewhere must not read the cluster through the user's browser by DNS rebinding.
4. One request per connection, then close. An event stream stays open until its viewer
   goes, at most MAX_VIEWERS at once (503 past that); a viewer that stops reading is dropped
   after SLOW_VIEWER seconds instead of growing the node's buffers.
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import logging
import re
import urllib.parse
from dataclasses import dataclass
from importlib import resources
from typing import Any

from corec_node import log
from corec_node.config import join_addr
from corec_node.shell.console_feed import REFRESH, ConsoleFeed

MAX_HEAD_BYTES = 8 * 1024  # a browser's GET with its cookies fits; nothing we serve takes more
MAX_HEADERS = 64
LINGER_SECONDS = 1.0  # after a refusal, what the peer still sends is read and dropped this long...
LINGER_BYTES = 256 * 1024  # ...or up to this much, so the answer is not lost to a reset
IDLE_TIMEOUT = 30.0  # seconds a connection may wait before its first byte; then closed, not counted
HEAD_TIMEOUT = 5.0  # seconds for the rest of the head: a slow-loris connection is answered 408, counted
MAX_VIEWERS = 16  # open event streams; each costs a JSON encoding shared with the others
SLOW_VIEWER = 10.0  # seconds one event may wait for its viewer to read
RETRY_MS = 2000  # EventSource's reconnect delay after the stream breaks (the node restarting)

STATIC = {  # path -> (file in corec_node/console, content type)
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/console.js": ("console.js", "text/javascript; charset=utf-8"),
    "/console.css": ("console.css", "text/css; charset=utf-8"),
}
API = ("/api/snapshot", "/api/events")
SECURITY_HEADERS = (
    "Cache-Control: no-store\r\n"
    "X-Content-Type-Options: nosniff\r\n"
    "Referrer-Policy: no-referrer\r\n"
    "Content-Security-Policy: default-src 'self'; img-src 'self' data:; frame-ancestors 'none'\r\n"
)

_REQUEST_LINE = re.compile(r"([A-Z]{1,16}) (/[!-~]*) HTTP/1\.([01])")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_VALUE = re.compile(r"[\t -~]*")


class BadRequest(Exception):
    """The peer's request is not one we answer: its status line and the reason it is counted under."""

    def __init__(self, status: str, reason: str, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.reason = reason


TOO_LARGE = BadRequest("431 Request Header Fields Too Large", "too_large", f"a request head is at most {MAX_HEAD_BYTES} bytes")
CUT_SHORT = BadRequest("400 Bad Request", "malformed", "the request ended early")
TOO_SLOW = BadRequest("408 Request Timeout", "timeout", f"no complete request within {HEAD_TIMEOUT:g} s")


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]


def parse_request(head: bytes) -> Request:
    """A request head (up to and with its blank line) as a Request; BadRequest if malformed."""
    def bad(text: str) -> BadRequest:
        return BadRequest("400 Bad Request", "malformed", text)

    if not head.endswith(b"\r\n\r\n"):
        raise bad("the head must end with an empty line")
    try:
        text = head[:-4].decode("ascii")
    except UnicodeDecodeError:
        raise bad("the head is not ASCII") from None
    line, *rest = text.split("\r\n")
    match = _REQUEST_LINE.fullmatch(line)
    if match is None:
        raise bad("expected METHOD /path HTTP/1.x")
    method, target, minor = match.groups()
    if len(rest) > MAX_HEADERS:
        raise BadRequest("431 Request Header Fields Too Large", "too_large", f"more than {MAX_HEADERS} headers")
    headers: dict[str, str] = {}
    for field in rest:
        name, sep, value = field.partition(":")
        if not sep or not _TOKEN.fullmatch(name) or not _VALUE.fullmatch(value):
            raise bad(f"not a header line: {field[:40]!r}")
        name = name.lower()
        if name == "host" and name in headers:
            raise bad("two Host headers")
        headers[name] = value.strip(" \t")
    if minor == "1" and "host" not in headers:
        raise bad("HTTP/1.1 needs a Host header")
    if method in ("GET", "HEAD") and (headers.get("content-length", "0") != "0" or "transfer-encoding" in headers):
        raise bad("a GET has no body")
    path, _, query = target.partition("?")
    try:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise bad("malformed query string") from None
    return Request(method, path, dict(pairs), headers)


def channel_param(query: dict[str, str]) -> int | None:
    """``?channel=N`` (0-255); absent or empty: the feed's choice. BadRequest otherwise."""
    value = query.get("channel", "")
    if value == "":
        return None
    if not (value.isascii() and value.isdigit() and len(value) <= 3) or int(value) > 255:
        raise BadRequest("400 Bad Request", "malformed", "channel must be a number from 0 to 255")
    return int(value)


def is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str:
    """The name in a Host header, without its port (``[::1]:8500`` is ``::1``)."""
    if header.startswith("["):
        return header[1:].partition("]")[0]
    return header.rpartition(":")[0] if header.count(":") == 1 else header


def load_static() -> dict[str, tuple[bytes, str]]:
    """The page's files, read once: they ship inside the package (no build step, no CDN)."""
    folder = resources.files("corec_node").joinpath("console")
    return {path: (folder.joinpath(name).read_bytes(), kind) for path, (name, kind) in STATIC.items()}


class ConsoleServer:
    """Serves the console on ``host:port`` (rules in the module docstring). ``start`` raises
    OSError when the address cannot be bound; the node turns that into one line, exit 2."""

    def __init__(self, feed: ConsoleFeed, host: str, port: int) -> None:
        self.feed = feed
        self.host = host
        self.port = port
        self.loopback = is_loopback(host)
        self.static = load_static()
        self.server: asyncio.AbstractServer | None = None
        self.answered: collections.Counter[str] = collections.Counter()  # by route
        self.refused: collections.Counter[str] = collections.Counter()  # by reason (rule 1)
        self.viewers = 0
        self._handlers: set[asyncio.Task[Any]] = set()

    def stats(self) -> dict[str, Any]:
        """What the snapshot says of the console itself."""
        return {"addr": f"{self.host}:{self.port}", "answered": sum(self.answered.values()),
                "refused": dict(self.refused), "viewers": self.viewers}

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, self.host, self.port, limit=MAX_HEAD_BYTES)
        self.port = self.server.sockets[0].getsockname()[1]
        log.event("console_listening", url=f"http://{join_addr(self.host, self.port)}/")
        if not self.loopback:
            log.event("console_exposed", logging.WARNING, listen=f"{self.host}:{self.port}",
                      detail="the console has no login: anyone who reaches this address reads the cluster")

    async def close(self) -> None:
        """Stop listening and end every open request and event stream."""
        if self.server is not None:
            self.server.close()
            for task in list(self._handlers):
                task.cancel()
            await asyncio.gather(*self._handlers, return_exceptions=True)
            await self.server.wait_closed()
            self.server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        try:
            await self._serve(reader, writer)
        except asyncio.CancelledError:
            pass  # the node is stopping
        except (TimeoutError, ConnectionError):
            pass  # the viewer went, or stopped reading (rule 4)
        except Exception:  # a bug here must not take the node down (rule 1)
            self.refused["error"] += 1
            logging.getLogger(log.LOGGER_NAME).exception("console_request_failed")
        finally:
            if task is not None:
                self._handlers.discard(task)
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:  # a connection opened and left idle (a browser's preconnect) is no bad request
            first = await asyncio.wait_for(reader.readexactly(1), IDLE_TIMEOUT)
        except (TimeoutError, asyncio.IncompleteReadError):
            return None
        try:
            head = first + await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
            request = parse_request(head)
        except asyncio.LimitOverrunError:
            return await self._refuse(reader, writer, TOO_LARGE)
        except asyncio.IncompleteReadError as exc:
            if exc.partial.strip():  # bytes, then the end: a request cut short
                await self._refuse(reader, writer, CUT_SHORT)
            return None
        except TimeoutError:
            return await self._refuse(reader, writer, TOO_SLOW)
        except BadRequest as exc:
            return await self._refuse(reader, writer, exc)
        try:
            return await self._route(request, reader, writer)
        except BadRequest as exc:
            return await self._refuse(reader, writer, exc)

    async def _route(self, request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if request.method not in ("GET", "HEAD"):
            raise BadRequest("405 Method Not Allowed", "method", "the console is read-only: GET only")
        if self.loopback and not is_loopback(host_name(request.headers.get("host", self.host))):
            raise BadRequest("403 Forbidden", "host", "this console answers loopback host names only")
        head_only = request.method == "HEAD"
        if request.path in self.static:
            body, kind = self.static[request.path]
            self.answered["static"] += 1
            return await self._reply(writer, "200 OK", body, kind, head_only=head_only)
        if request.path not in API:
            raise BadRequest("404 Not Found", "not_found", "no such page: try /")
        channel = channel_param(request.query)
        if request.path == "/api/snapshot":
            body = await self.feed.encoded(channel)
            self.answered["snapshot"] += 1
            return await self._reply(writer, "200 OK", body, "application/json", head_only=head_only)
        if self.viewers >= MAX_VIEWERS:
            raise BadRequest("503 Service Unavailable", "busy", f"{MAX_VIEWERS} event streams are open already")
        self.answered["events"] += 1
        writer.write(self._head("200 OK", "text/event-stream", None))
        if head_only:
            return None
        self.viewers += 1
        try:
            await self._stream(reader, writer, channel)
        finally:
            self.viewers -= 1
        return None

    async def _stream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, channel: int | None) -> None:
        """A snapshot every refresh until the viewer goes (rule 4): its end of the connection
        closing (or any byte it sends: a viewer sends nothing more) ends the stream at once."""
        gone = asyncio.ensure_future(reader.read(1))
        try:
            writer.write(f"retry: {RETRY_MS}\n\n".encode())
            while not gone.done() and not writer.is_closing():
                writer.write(b"event: snapshot\ndata: " + await self.feed.encoded(channel) + b"\n\n")
                await asyncio.wait_for(writer.drain(), SLOW_VIEWER)
                await asyncio.wait([gone], timeout=REFRESH)
        finally:
            gone.cancel()

    async def _refuse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, exc: BadRequest) -> None:
        self.refused[exc.reason] += 1
        log.event("console_refused", logging.DEBUG, status=exc.status, reason=exc.reason, detail=str(exc))
        extra = "Allow: GET, HEAD\r\n" if exc.reason == "method" else ""
        await self._reply(writer, exc.status, (str(exc) + "\n").encode(), "text/plain; charset=utf-8", extra=extra)
        await self._linger(reader, writer)

    @staticmethod
    async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """After refusing, read and drop what the peer still sends, for a moment: closing
        with unread bytes would reset the connection, and the peer might never read why."""
        if writer.can_write_eof():
            writer.write_eof()
        dropped = 0
        try:
            async with asyncio.timeout(LINGER_SECONDS):
                while dropped < LINGER_BYTES and (chunk := await reader.read(65536)):
                    dropped += len(chunk)
        except (TimeoutError, ConnectionError):
            pass

    @staticmethod
    def _head(status: str, content_type: str, length: int | None, extra: str = "") -> bytes:
        size = f"Content-Length: {length}\r\n" if length is not None else ""
        return (f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n{size}Connection: close\r\n"
                f"{SECURITY_HEADERS}{extra}\r\n").encode("latin-1")

    async def _reply(self, writer: asyncio.StreamWriter, status: str, body: bytes, content_type: str, *,
                     head_only: bool = False, extra: str = "") -> None:
        head = self._head(status, content_type, len(body), extra)
        writer.write(head if head_only else head + body)
        await asyncio.wait_for(writer.drain(), SLOW_VIEWER)
