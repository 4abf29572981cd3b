"""One WebSocket upgrade, from the client's request to the end of the connection pair.

What a relayed pair (``websocket.py``) and a byte tunnel (``tunnel.py``) share:

- the upstream connection: a server from the balancer, the next one when it cannot be reached
  (``retries`` times), the lease's passive-health verdict;
- the answer to the client: an HTTP refusal (the upstream's 4xx/5xx, 502, 504 when nothing
  answers within ``ws_handshake_timeout``, 503 at shutdown), or, after the upstream's 101, the
  takeover of the client's connection from twisted.web, bytes the client pipelined included;
- a client that leaves before its answer leaves no upstream connection behind;
- the idle timer, and at the end one access-log line, the lease released, the gateway told.

Subclasses supply the upstream factory, how to abort the upstream connection, how to close both
sides with 1001, and how many bytes the client was sent.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet import error as neterror
from twisted.internet.interfaces import IProtocolFactory
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper
from twisted.python.failure import Failure
from twisted.web.server import Request

from wsrelay.accesslog import format_line
from wsrelay.answers import answer_error
from wsrelay.config import Route, Upstream
from wsrelay.connect import upstream_endpoint
from wsrelay.errors import BadGateway, GatewayTimeout, ProxyError, ServiceUnavailable

log = Logger()


def reason_text(reason: Failure | BaseException | str) -> str:
    if isinstance(reason, Failure):
        return reason.getErrorMessage() or reason.type.__name__
    return str(reason)


def refusal(status_line: str, detail: str) -> ProxyError:
    """The client's answer to an upstream handshake answered with ``status_line`` (not a good 101).

    A 4xx or 5xx goes to the client as it is; anything else (a redirect, a 101 that failed the
    checks) is a 502.
    """
    parts = status_line.split(" ", 2)
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 502
    if not 400 <= status <= 599:
        return BadGateway(f"upstream answered the WebSocket handshake with {status_line[:100]!r}: {detail}")
    error = ProxyError(f"upstream refused the WebSocket handshake: {status_line[:100]!r}")
    error.status = status
    error.reason = (parts[2] if len(parts) > 2 else "Refused")[:60].encode("ascii", "replace").decode()
    return error


def swap_protocol(transport: Any, protocol: Protocol) -> None:
    """Make ``protocol`` the receiver of ``transport``'s bytes, through a TLS wrapper if any."""
    if isinstance(transport, ProtocolWrapper):
        transport.wrappedProtocol = protocol
    elif isinstance(getattr(transport, "protocol", None), ProtocolWrapper):
        transport.protocol.wrappedProtocol = protocol
    else:
        transport.protocol = protocol


class Upgrade:
    """The life of one client's upgrade request; see the module docstring."""

    kind = "WebSocket"

    def __init__(self, gw: Any, request: Request, route: Route, upstream: Upstream, scheme: str,
                 raw: list[tuple[bytes, bytes]]) -> None:
        self.gw = gw
        self.reactor = gw.gateway.reactor
        self.metrics = gw.metrics
        self.request = request
        self.route = route
        self.upstream = upstream
        self.scheme = scheme
        self.raw = raw
        self.client_ip = getattr(request.getClientAddress(), "host", "127.0.0.1")
        self.tried: list[str] = []
        self.lease: Any = None
        self.connecting: Any = None
        self.timer: Any = None
        self.idle_timer: Any = None
        self.last_activity = 0.0
        self.started = time.monotonic()
        self.answered = False  # the client has its answer: an HTTP refusal, or the takeover
        self.taken_over = False  # the client's connection left twisted.web for this upgrade
        self.opened = False  # counted as an open WebSocket in the metrics
        self.ended = False

    # -- what subclasses supply ---------------------------------------------------------------

    def upstream_factory(self) -> IProtocolFactory:
        raise NotImplementedError

    def abort_upstream(self) -> None:
        """Cancel the connection attempt, abort the upstream connection (no TCP left behind)."""
        raise NotImplementedError

    def close_both(self, reason: str) -> None:
        """After the takeover: close both sides with 1001 and ``reason``."""
        raise NotImplementedError

    def sent_to_client(self) -> int:
        """Bytes sent to the client, for the access log."""
        raise NotImplementedError

    # -- the upstream connection ------------------------------------------------------------

    def start(self) -> None:
        self.gw.gateway.opened(self)
        self.request.notifyFinish().addErrback(lambda _: self.client_left_early())
        self.timer = self.reactor.callLater(self.route.websocket.handshake_timeout, self.handshake_timed_out)
        self.connect()

    def connect(self) -> None:
        try:
            self.lease = self.gw.gateway.balancer.acquire(self.route.upstream, client_ip=self.client_ip,
                                                         headers=self.raw, exclude=self.tried)
        except ProxyError as e:
            self.refuse(e)
            return
        server = self.lease.server
        self.tried.append(server.key)
        self.request.wsrelay_upstream = server.hostport  # type: ignore[attr-defined]
        endpoint = upstream_endpoint(self.reactor, self.upstream, server, self.route.connect_timeout)
        self.connecting = endpoint.connect(self.upstream_factory())
        self.connecting.addErrback(self.connect_failed)

    def connect_failed(self, reason: Failure) -> None:
        self.connecting = None
        if self.answered or reason.check(defer.CancelledError):
            return
        self.lease.failure("connect error")
        self.lease.release()
        self.lease = None
        if len(self.tried) <= self.route.retries:
            log.info("route {route}: {server} unreachable ({reason}); trying another server",
                     route=self.route.name, server=self.tried[-1], reason=reason_text(reason))
            self.connect()
            return
        timeout = reason.check(neterror.TimeoutError) is not None
        self.refuse((GatewayTimeout if timeout else BadGateway)(
            f"WebSocket upstream unreachable: {reason_text(reason)}"))

    def handshake_refused(self, status_line: str, detail: str) -> None:
        """The upstream answered the handshake with something other than a good 101."""
        error = refusal(status_line, detail)
        if self.lease is not None and error.status >= 500 and error.status in self.upstream.fail_statuses:
            self.lease.failure(f"status {error.status}")
        log.info("route {route} upstream {upstream} server {server}: WebSocket handshake refused: {detail}",
                 route=self.route.name, upstream=self.upstream.name, server=self.tried[-1], detail=detail)
        self.refuse(error)

    def handshake_timed_out(self) -> None:
        self.timer = None
        if not self.answered:
            self.refuse(GatewayTimeout(f"no WebSocket handshake from upstream within "
                                       f"{self.route.websocket.handshake_timeout}s"))

    def cancel_timer(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None

    # -- the client's answer ----------------------------------------------------------------

    def refuse(self, error: ProxyError) -> None:
        """Answer the client over HTTP (no WebSocket) and end."""
        if self.answered:
            return
        self.answered = True
        self.cancel_timer()
        if error.status >= 500:
            log.warn("route {route} upstream {upstream}: {detail}", route=self.route.name,
                     upstream=self.upstream.name, detail=error.detail)
        self.abort_upstream()
        request = self.request
        if request.channel is not None and not request.finished and not request._disconnected:
            request.write(answer_error(request, error))
            request.finish()
        self.end()

    def client_left_early(self) -> None:
        """The client disconnected before its answer."""
        if self.answered:
            return
        self.answered = True
        self.cancel_timer()
        self.abort_upstream()
        self.end()

    def take_over(self, protocol_for: Callable[[Any], Protocol]) -> tuple[Any, bytes] | None:
        """Hand the client's connection from twisted.web to ``protocol_for(transport)``.

        Returns the transport and the bytes the client sent after its request (to be read by the
        new protocol), or None when the client has gone meanwhile (the upgrade then ends).
        """
        request = self.request
        channel = request.channel
        transport = channel.transport if channel is not None else None
        if (transport is None or not getattr(transport, "connected", True)
                or getattr(transport, "disconnecting", False)):
            self.client_left_early()
            return None
        self.answered = self.taken_over = True
        self.cancel_timer()
        request.wsrelay_websocket = True  # type: ignore[attr-defined]
        protocol = protocol_for(transport)
        pending = b"".join(channel._dataBuffer)
        channel._dataBuffer = []
        channel.transport = None
        transport.unregisterProducer()  # twisted.web's channel was the transport's producer
        swap_protocol(transport, protocol)
        protocol.makeConnection(transport)
        transport.resumeProducing()
        return transport, pending

    # -- open ------------------------------------------------------------------------------

    def now_open(self) -> None:
        """Both sides are open: count it and start the idle timer."""
        self.opened = True
        self.metrics.opened(self.route.name)
        self.last_activity = self.reactor.seconds()
        if self.route.websocket.idle_timeout:
            self.idle_timer = self.reactor.callLater(self.route.websocket.idle_timeout, self.check_idle)

    def check_idle(self) -> None:
        idle = self.route.websocket.idle_timeout
        assert idle is not None
        quiet = self.reactor.seconds() - self.last_activity
        if quiet < idle:
            self.idle_timer = self.reactor.callLater(idle - quiet, self.check_idle)
            return
        self.idle_timer = None
        log.info("route {route}: {kind} idle for {idle}s, closing both sides", route=self.route.name,
                 kind=self.kind, idle=idle)
        self.close_both("idle timeout")

    # -- endings ---------------------------------------------------------------------------

    def end(self) -> None:
        if self.ended:
            return
        self.ended = True
        if self.idle_timer is not None and self.idle_timer.active():
            self.idle_timer.cancel()
        self.idle_timer = None
        if self.lease is not None:
            self.lease.release()
        if self.taken_over and self.gw.gateway.access_log.enabled:
            request = self.request
            self.gw.gateway.access_log.write(format_line(
                client=self.client_ip, when=time.time(), method=request.method, target=request.uri,
                protocol=request.clientproto, status=101, sent=self.sent_to_client(),
                referer=request.getHeader(b"referer"), user_agent=request.getHeader(b"user-agent"),
                upstream=self.lease.server.hostport if self.lease is not None else None,
                duration=time.monotonic() - self.started,
            ))
        if self.opened:
            self.metrics.ended(self.route.name)
        self.gw.gateway.closed(self)

    def shutdown(self) -> None:
        """wsrelay is stopping: 1001 close frames to both sides (or 503 to a pending handshake)."""
        if not self.taken_over:
            self.refuse(ServiceUnavailable("shutting down"))
        else:
            self.close_both("server shutting down")
