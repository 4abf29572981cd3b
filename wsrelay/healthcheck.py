"""Active health checks of upstream servers.

For every server of a group with ``health_check`` set, a probe runs every ``health_interval``:

- ``health_check = /path``: ``GET /path HTTP/1.1`` (with ``Connection: close``); a 2xx or 3xx status
  line within ``health_timeout`` is a pass;
- ``health_check = ws:/path``: a WebSocket opening handshake to ``/path``; a ``101`` is a pass.

Only the status line is read; the probe then closes the connection.  ``health_rise`` passes in a row
mark a server up, ``health_fall`` failures in a row mark it down (the balancer skips servers marked
down until they pass again).  Servers start up, so a fresh start or a reload never leaves a group
without servers while the first probes run.  Probes to ``https://`` servers use the group's
upstream TLS settings.

The checker is reconfigured on every reload: probes of servers that stay keep their counters and
state (held by the balancer), probes of removed servers stop, new servers are probed at once.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from wsrelay.config import HealthCheck, Server, Upstream
from wsrelay.connect import upstream_endpoint
from wsrelay.timers import call_after_reads

log = Logger()


def probe_request(check: HealthCheck, server: Server) -> bytes:
    """The bytes of one probe request."""
    lines = [b"GET " + check.path.encode("ascii") + b" HTTP/1.1", b"Host: " + server.hostport.encode("ascii"),
             b"User-Agent: wsrelay-health-check", b"Connection: close" if not check.websocket else b"Connection: Upgrade"]
    if check.websocket:
        key = base64.b64encode(os.urandom(16))
        lines += [b"Upgrade: websocket", b"Sec-WebSocket-Version: 13", b"Sec-WebSocket-Key: " + key]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def passed(check: HealthCheck, status_line: bytes) -> bool:
    """Whether a status line is a pass for ``check``."""
    parts = status_line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        return False
    status = int(parts[1])
    return status == 101 if check.websocket else 200 <= status < 400


class _Probe(Protocol):
    """Sends one probe request and reports the status line."""

    def __init__(self, request: bytes, result: Deferred[bytes]) -> None:
        self.request = request
        self.result = result
        self.buffer = b""

    def connectionMade(self) -> None:
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        if b"\r\n" in self.buffer or len(self.buffer) > 4096:
            line = self.buffer.split(b"\r\n", 1)[0]
            if not self.result.called:
                self.result.callback(line)
            self.transport.abortConnection()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if not self.result.called:
            self.result.errback(reason)


class _ServerProbe:
    """Periodic probes of one server, counting passes and failures in a row."""

    def __init__(self, checker: HealthChecker, group: str, upstream: Upstream, server: Server) -> None:
        self.checker = checker
        self.group = group
        self.upstream = upstream
        self.server = server
        self.in_a_row = 0  # > 0: passes in a row; < 0: failures in a row
        self.healthy = True
        self.loop = LoopingCall(self.run)
        self.loop.clock = checker.reactor
        self.pending: Deferred[Any] | None = None

    @property
    def check(self) -> HealthCheck:
        assert self.upstream.health is not None
        return self.upstream.health

    def start(self) -> None:
        self.loop.start(self.check.interval, now=True)

    def stop(self) -> None:
        if self.loop.running:
            self.loop.stop()
        if self.pending is not None and not self.pending.called:
            self.pending.cancel()

    def run(self) -> None:
        if self.pending is not None and not self.pending.called:
            return  # the previous probe is still within its timeout
        reactor = self.checker.reactor
        check = self.check
        endpoint = upstream_endpoint(reactor, self.upstream, self.server, check.timeout)
        result: Deferred[bytes] = Deferred()
        probes: list[_Probe] = []

        def build() -> _Probe:
            probes.append(_Probe(probe_request(check, self.server), result))
            return probes[-1]

        connecting = endpoint.connect(Factory.forProtocol(build))
        connecting.addErrback(lambda f: result.called or result.errback(f))
        timer = call_after_reads(reactor, check.timeout, lambda: result.called or result.errback(
            Failure(TimeoutError(f"no answer within {check.timeout}s"))))

        def done(outcome: Any) -> None:
            if timer.active():
                timer.cancel()
            if not connecting.called:
                connecting.cancel()
            for probe in probes:
                if probe.transport is not None and probe.transport.connected:
                    probe.transport.abortConnection()
            if isinstance(outcome, Failure):
                self.record(False, outcome.getErrorMessage())
            else:
                self.record(passed(check, outcome), outcome[:80].decode("latin-1", "replace"))

        self.pending = result
        result.addBoth(done)

    def record(self, ok: bool, detail: str) -> None:
        check = self.check
        self.in_a_row = max(1, self.in_a_row + 1) if ok else min(-1, self.in_a_row - 1)
        if ok and not self.healthy and self.in_a_row >= check.rise:
            self.healthy = True
            log.info("upstream {group} server {server} is up: {rise} health checks passed",
                     group=self.group, server=self.server.key, rise=check.rise)
            self.checker.balancer.mark_health(self.group, self.server.key, True)
        elif not ok and self.healthy and -self.in_a_row >= check.fall:
            self.healthy = False
            log.warn("upstream {group} server {server} is down: {fall} health checks failed (last: {detail})",
                     group=self.group, server=self.server.key, fall=check.fall, detail=detail)
            self.checker.balancer.mark_health(self.group, self.server.key, False)


class HealthChecker:
    """All active probes of one process."""

    def __init__(self, reactor: Any, balancer: Any) -> None:
        self.reactor = reactor
        self.balancer = balancer
        self.probes: dict[tuple[str, str], _ServerProbe] = {}

    def configure(self, upstreams: Mapping[str, Upstream]) -> None:
        """Probe exactly the servers of groups with a health check, keeping the state of those that stay."""
        wanted: dict[tuple[str, str], tuple[Upstream, Server]] = {}
        for name, upstream in upstreams.items():
            if upstream.health is not None:
                for server in upstream.servers:
                    wanted[(name, server.key)] = (upstream, server)
        servers = {(name, s.key) for name, up in upstreams.items() for s in up.servers}
        for key in list(self.probes):
            old = self.probes[key]
            if key not in wanted:
                old.stop()
                del self.probes[key]
                if key in servers and key not in wanted and not old.healthy:
                    # Checks were turned off for a server they had marked down: it is up again.
                    self.balancer.mark_health(key[0], key[1], True)
        for key, (upstream, server) in wanted.items():
            probe = self.probes.get(key)
            if probe is None:
                probe = self.probes[key] = _ServerProbe(self, key[0], upstream, server)
                probe.start()
            else:
                interval_changed = probe.check.interval != upstream.health.interval  # type: ignore[union-attr]
                probe.upstream, probe.server = upstream, server
                if interval_changed:
                    probe.stop()
                    probe.start()

    def stop(self) -> None:
        for probe in self.probes.values():
            probe.stop()
        self.probes.clear()
