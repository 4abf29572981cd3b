"""How many client connections this process holds, and what it does at its limits.

Invariants:

- **max_connections**: a client connection counts from the moment Twisted builds its transport
  (right after ``accept``) to the moment its socket is closed, whatever protocol reads it in
  between (the HTTP channel, the WebSocket legs after ``detach``, a tunnel), on every listener of
  the process (plain, TLS, ``unix:``, PROXY protocol, ``systemd:``).  At the cap every such
  listener stops reading its listening socket: newcomers wait in the kernel's backlog and are
  accepted, in order, as soon as a connection closes.  Upstream connections are not counted.
- **Descriptor exhaustion** (``accept`` failing with EMFILE or ENFILE, or ENOBUFS/ENOMEM): every
  listener stops reading, newcomers wait in the backlog, and accepting is tried again when a
  client connection closes or after a back-off (0.1 s, doubling to 1 s), whichever comes first.
  One log line per episode (an episode ends when a connection is accepted again), and no more
  than one such line every 10 s.  Without this, Twisted's ``tcp.Port.doRead`` would, on EMFILE,
  accept and at once close every waiting client with a log line each (it keeps a spare
  descriptor for that), and on the other errors log and return with the listening socket still
  readable: the reactor would call it again at once, a busy loop with a log line per turn.
- Nothing is added per request or per message: the count is kept by the transport class each
  listening port instantiates per connection, and the accept errors are seen by a proxy of its
  listening socket (both public attributes of Twisted's ``tcp.Port``/``unix.Port``).
- The counters (``open``, ``cap_reached``, ``exhausted``) are plain integers for the admin page.

The reactor is passed in; :func:`sizing` is pure.
"""

from __future__ import annotations

import errno
import resource
from typing import Any

from twisted.logger import Logger

from wsrelay.bucket import Throttle

#: Descriptors kept out of ``max_connections = auto`` for everything but client and upstream
#: connections (listening sockets, logs, the reactor's own, health checks, reloads).
RESERVE = 32

#: The first and the longest wait before accepting is tried again after descriptor exhaustion.
BACKOFF_FIRST = 0.1
BACKOFF_MAX = 1.0

#: accept() errors that mean "no descriptor (or kernel memory) for a new connection now".
_EXHAUSTED = {errno.EMFILE: "too many open files (EMFILE)", errno.ENFILE: "the system's file table is full (ENFILE)",
              errno.ENOBUFS: "no kernel buffer space (ENOBUFS)", errno.ENOMEM: "out of kernel memory (ENOMEM)"}

log = Logger()


def descriptor_limit() -> int:
    """The process's soft RLIMIT_NOFILE (-1: unlimited)."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return -1 if soft == resource.RLIM_INFINITY else soft


def sizing(max_connections: int | None, nofile: int) -> tuple[int, str | None]:
    """The cap in force (0: none) for the configured ``max_connections`` (None: auto) under a soft
    descriptor limit ``nofile`` (-1: unlimited), and a line for the log (None: nothing to say).

    Each relayed connection holds two descriptors (the client's and its upstream's), so ``auto``
    is ``(nofile - RESERVE) // 2``; a configured cap the limit cannot hold is warned about."""
    if max_connections is None:
        if nofile < 0:
            return 0, None
        cap = max(1, (nofile - RESERVE) // 2)
        return cap, f"max_connections = auto: {cap} client connections per process (RLIMIT_NOFILE {nofile})"
    needed = 2 * max_connections + RESERVE
    if max_connections and 0 <= nofile < needed:
        return max_connections, (
            f"max_connections = {max_connections} needs RLIMIT_NOFILE of at least {needed} (each relayed"
            f" connection also holds an upstream descriptor), but it is {nofile}: raise it (LimitNOFILE="
            f" in the systemd unit, ulimit -n) or lower max_connections; until then, accepting pauses"
            f" whenever descriptors run out")
    return max_connections, None


class _Accepting:
    """A listening socket as its port sees it: ``accept`` refuses at the cap, and turns descriptor
    exhaustion into a pause of every listener (Twisted then reads it as "no more clients")."""

    def __init__(self, sock: Any, cap: ConnectionCap, counted: bool) -> None:
        self.sock = sock
        self.cap = cap
        self.counted = counted

    def accept(self) -> tuple[Any, Any]:
        cap = self.cap
        if self.counted and cap.full:
            raise BlockingIOError(errno.EAGAIN, "at max_connections")  # the rest wait in the backlog
        try:
            accepted = self.sock.accept()
        except OSError as e:
            if e.errno not in _EXHAUSTED:
                raise
            cap.exhausted_by(e.errno)
            raise BlockingIOError(errno.EAGAIN, "paused: no descriptor") from None
        if cap.starving:
            cap.fed()
        return accepted  # type: ignore[no-any-return]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


class ConnectionCap:
    """The client connections of one process and the listening ports it pauses and resumes."""

    def __init__(self, reactor: Any, limit: int = 0) -> None:
        self.reactor = reactor
        self.limit = limit  # 0: no cap
        self.open = 0  # client connections open now
        self.cap_reached = 0  # times the cap paused the listeners
        self.exhausted = 0  # descriptor exhaustion episodes
        self.full = False  # at the cap: counted listeners paused
        self.starving = False  # in a descriptor exhaustion episode
        self._waiting = False  # every listener paused until the back-off ends or a connection closes
        self._backoff = BACKOFF_FIRST
        self._timer: Any = None
        self._ports: dict[Any, bool] = {}  # listening port -> counted
        self._classes: dict[type, type] = {}
        self._lines = {"cap": Throttle(10.0), "exhausted": Throttle(10.0)}  # one line per 10 s at most

    # -- ports ----------------------------------------------------------------------------------

    def watch(self, port: Any, counted: bool = True) -> None:
        """Take charge of a listening port's accepting (``counted``: its connections count toward
        the cap; the admin listener's do not, so it answers at the cap)."""
        port.socket = _Accepting(port.socket, self, counted)
        if counted:
            port.transport = self._counting(port.transport)
        self._ports[port] = counted
        if self._waiting or (counted and self.full):
            port.stopReading()

    def release(self, port: Any) -> None:
        """``port`` is about to stop listening (a reload removed its listener): what the kernel
        queued on it is accepted even at the cap, as a stop lifts the cap; those connections
        still count."""
        accepting = port.socket
        if isinstance(accepting, _Accepting):
            accepting.counted = False

    def configure(self, max_connections: int | None, label: str = "") -> None:
        """Put the configured ``max_connections`` (None: auto) in force, sized against the
        descriptor limit now; a line says the cap ``auto`` chose when it changes, and warns of a
        configured cap the limit cannot hold (at start-up and each reload)."""
        cap, line = sizing(max_connections, descriptor_limit())
        changed = cap != self.limit
        self.set_limit(cap)
        if line is not None and max_connections is not None:
            log.warn("{line}{label}", line=line, label=label)
        elif line is not None and changed:
            log.info("{line}{label}", line=line, label=label)

    def set_limit(self, limit: int) -> None:
        """A reload's ``max_connections``: applies at once (connections above it stay open)."""
        self.limit = limit
        full = bool(limit) and self.open >= limit
        if full and not self.full:
            self._reach_cap()
        elif self.full and not full:
            self.full = False
            self._resume()

    def _counting(self, base: type) -> type:
        counting = self._classes.get(base)
        if counting is None:
            cap = self

            class Counting(base):  # type: ignore[valid-type, misc]
                def __init__(self, *args: Any, **kwargs: Any) -> None:
                    super().__init__(*args, **kwargs)
                    cap.opened()

                def connectionLost(self, reason: Any) -> None:
                    first = hasattr(self, "socket")  # Twisted returns early from a second call
                    try:
                        super().connectionLost(reason)
                    finally:
                        if first:
                            cap.closed()

            Counting.__name__ = Counting.__qualname__ = base.__name__
            self._classes[base] = counting = Counting
        return counting

    def _resume(self) -> None:
        for port, counted in list(self._ports.items()):
            if not port.connected:  # stopped listening (a reload removed it, or wsrelay stops)
                del self._ports[port]
            elif not port.disconnecting and not self._waiting and not (counted and self.full):
                port.startReading()

    def _pause(self, counted_only: bool) -> None:
        for port, counted in self._ports.items():
            if counted or not counted_only:
                port.stopReading()

    # -- connections ----------------------------------------------------------------------------

    def opened(self) -> None:
        self.open += 1
        if self.limit and self.open >= self.limit and not self.full:
            self._reach_cap()

    def closed(self) -> None:
        self.open -= 1
        resume = False
        if self.full and self.open < self.limit:
            self.full = False
            resume = True
        if self._waiting:  # a descriptor came free: try now rather than at the back-off's end
            self._stop_waiting()
            resume = True
        if resume:
            self._resume()

    def _reach_cap(self) -> None:
        self.full = True
        self.cap_reached += 1
        self._pause(counted_only=True)
        self._line("cap", "max_connections ({limit}) reached, {open} client connections open: not accepting"
                          " until one closes (newcomers wait in the listen backlog){more}",
                   limit=self.limit, open=self.open)

    # -- descriptor exhaustion --------------------------------------------------------------------

    def exhausted_by(self, code: int) -> None:
        """``accept`` failed for want of a descriptor (``code``): pause every listener."""
        if not self.starving:
            self.starving = True
            self.exhausted += 1
            self._backoff = BACKOFF_FIRST
            nofile = descriptor_limit()
            self._line("exhausted", "cannot accept connections: {why}, with RLIMIT_NOFILE {nofile} and {open} client"
                                    " connections open; listeners paused (newcomers wait in the listen backlog), trying"
                                    " again when one closes or within {max}s{more}",
                       why=_EXHAUSTED[code], nofile="unlimited" if nofile < 0 else nofile, open=self.open,
                       max=BACKOFF_MAX)
        else:
            self._backoff = min(self._backoff * 2, BACKOFF_MAX)
        self._waiting = True
        self._pause(counted_only=False)
        if self._timer is None or not self._timer.active():
            self._timer = self.reactor.callLater(self._backoff, self._retry)

    def fed(self) -> None:
        """A connection was accepted again: the exhaustion episode is over."""
        self.starving = False
        self._backoff = BACKOFF_FIRST

    def _retry(self) -> None:
        self._timer = None
        self._waiting = False
        self._resume()

    def _stop_waiting(self) -> None:
        self._waiting = False
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def stop(self) -> None:
        """No more retries (wsrelay stops)."""
        self._stop_waiting()

    # -- log lines ----------------------------------------------------------------------------------

    def _line(self, kind: str, text: str, **fields: Any) -> None:
        held = self._lines[kind].allow(self.reactor.seconds())
        if held is not None:
            log.warn(text, more=f" ({held} more times since the last such line)" if held else "", **fields)
