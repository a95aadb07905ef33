"""The systemd notify protocol, spoken by the node itself (no libsystemd, no dependency).

systemd passes ``NOTIFY_SOCKET`` (a unix datagram socket path, or ``@name`` for an
abstract socket) to a ``Type=notify`` service; the service sends newline-separated
``KEY=VALUE`` datagrams to it: ``READY=1`` once it serves, ``WATCHDOG=1`` at least every
``WATCHDOG_USEC``, ``STATUS=...`` for ``systemctl status``, ``STOPPING=1`` on shutdown.

What a caller may rely on:
- Every method is a no-op returning False when ``NOTIFY_SOCKET`` is unset (a node run by
  hand, in a container, in tests).
- No method raises into the caller and none blocks: one non-blocking ``sendto`` per call.
  A failed send is logged (rate-limited) and counted in :attr:`Notifier.failures`.
- The watchdog must be fed from the node's own tick loop, never from a helper thread or a
  timer of its own: a hung event loop then stops the pings and systemd restarts the node.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

from corec_node import log

FAILURE_LOG_PERIOD = 10.0  # seconds between two "notify_failed" log lines: a gone socket must not flood journald


def _socket_address(value: str) -> str | None:
    """``NOTIFY_SOCKET`` to a ``sendto`` address; None for a form we do not speak (``vsock:``)."""
    if value.startswith("@"):
        return "\0" + value[1:]  # abstract namespace, as sd_notify does
    if value.startswith("/"):
        return value
    return None


def _watchdog_usec(env: Mapping[str, str]) -> int | None:
    """The watchdog timeout meant for this process, or None (no watchdog, or another PID's)."""
    raw = env.get("WATCHDOG_USEC", "")
    try:
        usec = int(raw)
    except ValueError:
        return None
    if usec <= 0:
        return None
    pid = env.get("WATCHDOG_PID", "")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None  # systemd meant the watchdog for another process (our parent)
        except ValueError:
            return None
    return usec


class Notifier:
    """Talks to systemd's notify socket; build it with :meth:`from_env`."""

    __slots__ = ("address", "watchdog_usec", "sent", "failures", "_sock", "_last_watchdog", "_last_failure_log")

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        """``address`` as :func:`socket.sendto` takes it (``"\\0name"`` for abstract); None: disabled."""
        self.address = address
        self.watchdog_usec = watchdog_usec if address else None
        self.sent = 0
        self.failures = 0
        self._sock: socket.socket | None = None
        self._last_watchdog = float("-inf")
        self._last_failure_log = float("-inf")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, unset: bool = False) -> Notifier:
        """Read ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID``.

        ``unset=True`` removes them from ``os.environ`` so that child processes (plugins)
        do not inherit them, as ``sd_notify(unset_environment=1)`` does.
        """
        env = os.environ if environ is None else environ
        raw = env.get("NOTIFY_SOCKET", "")
        address = _socket_address(raw) if raw else None
        if raw and address is None:
            log.event("notify_unsupported", logging.WARNING, socket=raw,
                      detail="NOTIFY_SOCKET is neither a path nor @abstract; not notifying systemd")
        usec = _watchdog_usec(env)
        if unset and environ is None:
            for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
                os.environ.pop(key, None)
        return cls(address, usec)

    # -- state ----------------------------------------------------------------------

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def watchdog_interval(self) -> float | None:
        """Seconds between two pings: half of ``WATCHDOG_USEC``, as systemd recommends; None if off."""
        if self.watchdog_usec is None:
            return None
        return self.watchdog_usec / 2_000_000

    # -- messages -------------------------------------------------------------------

    def ready(self, status: str = "") -> bool:
        """The node serves: its sockets are bound and the control socket answers."""
        return self._send("READY=1" + (f"\nSTATUS={_one_line(status)}" if status else ""))

    def status(self, text: str) -> bool:
        """A one-line status shown by ``systemctl status`` (newlines are flattened)."""
        return self._send(f"STATUS={_one_line(text)}")

    def watchdog(self) -> bool:
        """Ping the watchdog now (unconditionally)."""
        ok = self._send("WATCHDOG=1")
        if ok:
            self._last_watchdog = time.monotonic()
        return ok

    def watchdog_due(self, now: float | None = None) -> bool:
        """Ping the watchdog if :meth:`watchdog_interval` has passed since the last ping.

        Cheap enough for every tick (a comparison when no ping is due); ``now`` is
        ``time.monotonic()`` unless given. Returns True when a ping went out.
        """
        interval = self.watchdog_interval()
        if interval is None:
            return False
        now = time.monotonic() if now is None else now
        if now - self._last_watchdog < interval:
            return False
        ok = self._send("WATCHDOG=1")
        if ok:
            self._last_watchdog = now
        return ok

    def stopping(self, status: str = "") -> bool:
        """The node is shutting down (sent before sockets close)."""
        return self._send("STOPPING=1" + (f"\nSTATUS={_one_line(status)}" if status else ""))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    # -- I/O --------------------------------------------------------------------------

    def _send(self, message: str) -> bool:
        if self.address is None:
            return False
        try:
            if self._sock is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                sock.setblocking(False)
                self._sock = sock
            self._sock.sendto(message.encode("utf-8", "replace"), self.address)
        except (OSError, ValueError) as exc:  # gone socket, full queue (EAGAIN), refused: never the caller's problem
            self.failures += 1
            now = time.monotonic()
            if now - self._last_failure_log >= FAILURE_LOG_PERIOD:
                self._last_failure_log = now
                log.event("notify_failed", logging.WARNING, message=message.split("=", 1)[0],
                          error=getattr(exc, "strerror", None) or str(exc), failures=self.failures)
            return False
        self.sent += 1
        return True


def _one_line(text: str) -> str:
    return " ".join(text.splitlines())


__all__ = ["Notifier"]
