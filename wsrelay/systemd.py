"""systemd integration: readiness and state notifications (sd_notify(3)) and the watchdog.

Invariants:

- Nothing here reads the process environment by itself: the entry point passes ``os.environ``
  (and tests pass a dict), so a worker process, which must not speak for the service, simply
  gets no notifier.
- Sending never raises and never blocks: the socket is non-blocking and a failure is logged once.
  Without ``NOTIFY_SOCKET`` (not started by systemd, or ``Type=simple``) every call does nothing.
- The watchdog is pinged from the reactor (a ``LoopingCall`` on the reactor passed in), so a
  reactor that is stuck stops the pings and systemd restarts the service, as ``WatchdogSec=``
  intends.

The protocol is a few lines (newline-separated ``KEY=VALUE`` in one datagram to the unix socket
named by ``NOTIFY_SOCKET``, ``@`` meaning the abstract namespace); it is written here rather than
taken from a library because the one on PyPI (sdnotify) has not been released since 2017 and
does neither the abstract namespace nor non-blocking sends.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet.task import LoopingCall
from twisted.logger import Logger

log = Logger()

#: How often STATUS= is refreshed while serving (seconds).
STATUS_INTERVAL = 10.0


def _address(value: str) -> str | bytes:
    return b"\0" + value[1:].encode() if value.startswith("@") else value


class Notifier:
    """Tells systemd what the service is doing; a no-op without ``NOTIFY_SOCKET``."""

    def __init__(self, environ: Mapping[str, str], *, pid: int) -> None:
        target = environ.get("NOTIFY_SOCKET", "")
        self.address = _address(target) if target.startswith(("/", "@")) else None
        self.watchdog_interval = _watchdog_interval(environ, pid)
        self._socket: socket.socket | None = None
        self._failed = False
        self._loops: list[LoopingCall] = []

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *fields: str) -> None:
        """One datagram of ``KEY=VALUE`` lines."""
        if self.address is None:
            return
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._socket.setblocking(False)
            self._socket.sendto("\n".join(fields).encode("utf-8", "replace"), self.address)
        except OSError as e:
            if not self._failed:
                self._failed = True
                log.warn("cannot notify systemd at NOTIFY_SOCKET: {error}", error=e.strerror or str(e))

    # -- the states of sd_notify(3) ----------------------------------------------------------

    def ready(self, status: str) -> None:
        self.send("READY=1", "STATUS=" + status)

    def reloading(self) -> None:
        # systemd >= 253 (Type=notify-reload) wants the monotonic time with RELOADING=1.
        self.send("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}", "STATUS=reloading")

    def stopping(self, status: str) -> None:
        self.send("STOPPING=1", "STATUS=" + status)

    def status(self, status: str) -> None:
        self.send("STATUS=" + status)

    # -- timers ------------------------------------------------------------------------------

    def start(self, reactor: Any, describe: Callable[[], str]) -> None:
        """While serving: WATCHDOG=1 every half ``WATCHDOG_USEC`` (when set for this process) and
        ``STATUS=describe()`` every :data:`STATUS_INTERVAL` seconds."""
        if not self.enabled:
            return
        timers: list[tuple[Callable[[], None], float]] = [(lambda: self.status(describe()), STATUS_INTERVAL)]
        if self.watchdog_interval is not None:
            timers.append((lambda: self.send("WATCHDOG=1"), self.watchdog_interval / 2))
        for function, interval in timers:
            loop = LoopingCall(function)
            loop.clock = reactor
            loop.start(interval, now=False)
            self._loops.append(loop)

    def stop(self) -> None:
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops.clear()

    def close(self) -> None:
        self.stop()
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def _watchdog_interval(environ: Mapping[str, str], pid: int) -> float | None:
    """Seconds of ``WATCHDOG_USEC``, when it is meant for ``pid`` (``WATCHDOG_PID``, if set)."""
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    owner = environ.get("WATCHDOG_PID")
    if usec <= 0 or (owner and owner != str(pid)):
        return None
    return usec / 1_000_000


#: Variables systemd sets for the main process only; a worker process must not inherit them.
SERVICE_MANAGER_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID",
                             "LISTEN_FDNAMES")
