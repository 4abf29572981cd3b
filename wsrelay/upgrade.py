"""One WebSocket upgrade, from the client's request to the end of the connection pair.

What a relayed pair (``websocket/pair.py``) and a byte tunnel (``tunnel.py``) share:

- the upstream connection: a server from the balancer, the next one when it cannot be reached
  (``retries`` times within ``retry_timeout``), the lease's passive-health verdict (a failure for
  a connect error, a handshake timeout, a connection closed or a broken answer during the
  handshake, a status in ``fail_statuses``);
- the answer to the client: an HTTP refusal (the upstream's own final answer, 2xx to 5xx, with
  its end-to-end fields; 502, 504 when nothing answers within ``ws_handshake_timeout``, 503 at
  shutdown), or, after the upstream's 101, the takeover of the client's connection from
  twisted.web, bytes the client pipelined included;
- a client that leaves before its answer leaves no upstream connection behind;
- the request's id (``X-Request-ID``, ``wsrelay.requestid``) on the upstream handshake;
- the idle timer, and at the end one access-log line, the lease released, the gateway told.  A
  pair that opened is logged once, when it ends, with status 101 and its figures (as nginx logs
  an upgraded connection when it closes); a refused handshake is an ordinary request's line.

The client's side of this (its connection taken over or let go, the upstream's fields on its
answer, the end and its access-log line) is :mod:`wsrelay.clientside`.  Subclasses supply the
upstream factory, how to abort the upstream connection, how to close both sides with 1001, and the
pair's figures for the access log.
"""

from __future__ import annotations

import time
from typing import Any

from twisted.internet import defer
from twisted.internet import error as neterror
from twisted.internet.interfaces import IProtocolFactory
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import Request

from wsrelay import headers as H
from wsrelay import requestid
from wsrelay.answers import answer_error
from wsrelay.clientside import ClientSide
from wsrelay.config import Route, Upstream
from wsrelay.connect import upstream_endpoint
from wsrelay.errors import BadGateway, GatewayTimeout, ProxyError, ServiceUnavailable
from wsrelay.handshake import UpstreamRefusal, refusal
from wsrelay.http.request import client_ip, peer_ip
from wsrelay.timers import call_after_reads

log = Logger()

#: Seconds a peer gets to take its close (a close frame, or the last bytes before FIN) before its
#: connection is aborted.
CLOSE_HANDSHAKE_TIMEOUT = 5.0

#: How connecting to an upstream fails when the upstream (or the way to it) is at fault; any other
#: failure is wsrelay's own.
UPSTREAM_CONNECT_FAULTS = (neterror.ConnectError, neterror.DNSLookupError, neterror.TimeoutError,
                           neterror.ConnectionLost, neterror.ConnectionDone)


def _forget(result: object) -> None:
    return None


def reason_text(reason: Failure | BaseException | str) -> str:
    if isinstance(reason, Failure):
        return reason.getErrorMessage() or reason.type.__name__
    return str(reason)


class Upgrade(ClientSide):
    """The life of one client's upgrade request; see the module docstring (the client's side:
    :class:`~wsrelay.clientside.ClientSide`)."""

    kind = "WebSocket"
    # One per open WebSocket: slots keep it small (an idle pair's memory, issue 11).
    __slots__ = ("gw", "reactor", "metrics", "request", "route", "upstream", "scheme", "raw", "client_ip", "peer_ip",
                 "tried", "lease", "connecting", "timer", "idle_timer", "last_activity", "started",
                 "deadline", "answered", "taken_over", "opened", "ended", "log_request", "opened_at")

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
        self.client_ip = client_ip(request)
        self.peer_ip = peer_ip(request)
        self.tried: list[str] = []
        self.lease: Any = None
        self.connecting: Any = None
        self.timer: Any = None
        self.idle_timer: Any = None
        self.last_activity = 0.0
        self.started = time.monotonic()
        self.opened_at = 0.0  # time.monotonic() when both sides were open
        self.deadline = self.reactor.seconds() + route.retry_timeout  # no retry after this
        self.answered = False  # the client has its answer: an HTTP refusal, or the takeover
        self.taken_over = False  # the client's connection left twisted.web for this upgrade
        self.opened = False  # counted as an open WebSocket in the metrics
        self.ended = False
        # what the access log needs of the request, kept when the request is let go
        self.log_request: tuple[bytes, bytes, bytes, bytes | None, bytes | None, bytes] | None = None

    # -- what subclasses supply ---------------------------------------------------------------

    def upstream_factory(self) -> IProtocolFactory:
        raise NotImplementedError

    def close_both(self, reason: str) -> None:
        """After the takeover: close both sides with 1001 and ``reason``."""
        raise NotImplementedError

    def upstream_headers(self, drop: frozenset[bytes] = frozenset()) -> list[H.Header]:
        """The client's header lines as the upstream gets them (``headers.request_to_upstream``),
        and the request's ``X-Request-ID``."""
        route = self.route
        out = H.request_to_upstream(self.raw, client_ip=self.client_ip, scheme=self.scheme,
                                    host_header=route.host_header, upstream_hostport=self.lease.server.hostport,
                                    drop=drop | requestid.DROP, forwarded=route.forwarded, passed=route.pass_headers,
                                    peer_ip=self.peer_ip)
        out.append((requestid.HEADER, self.request.request_id()))  # type: ignore[attr-defined]
        return out

    # -- the upstream connection ------------------------------------------------------------

    def start(self) -> None:
        self.gw.gateway.opened(self)
        self.request.notifyFinish().addErrback(lambda _: self.client_left_early())
        self.timer = call_after_reads(self.reactor, self.route.websocket.handshake_timeout, self.handshake_timed_out)
        self.connect()

    def connect(self, retry_of: ProxyError | None = None) -> None:
        """Connect to a server of the group; ``retry_of``: the failure being retried."""
        try:
            self.lease = self.gw.gateway.balancer.acquire(self.route.upstream, client_ip=self.client_ip,
                                                         headers=self.raw, exclude=self.tried)
        except ProxyError as e:
            self.refuse(retry_of or e)  # no other server to try: the client gets the failure itself
            return
        server = self.lease.server
        if retry_of is not None:
            log.info("route {route}: {failed} unreachable ({detail}); trying {server}", route=self.route.name,
                     failed=self.tried[-1], detail=retry_of.detail, server=server.key)
        self.tried.append(server.key)
        self.request.wsrelay_upstream = server.hostport  # type: ignore[attr-defined]
        try:
            endpoint = upstream_endpoint(self.reactor, self.upstream, server, self.route.connect_timeout)
            self.connecting = endpoint.connect(self.upstream_factory())
        except Exception:
            self.internal_error(Failure())
            return
        # The connection's Deferred stays referenced by the endpoint's factory for the life of the
        # connection: its result must not keep the handshake's protocol alive.
        self.connecting.addCallbacks(_forget, self.connect_failed)

    def internal_error(self, reason: Failure) -> None:
        """A failure of wsrelay's own, not the upstream's: one log line, a 500, the lease given
        up without a word to passive health."""
        log.error("route {route}: internal error in a {kind} handshake: {error}", route=self.route.name,
                  kind=self.kind, error=f"{reason.type.__name__}: {reason.getErrorMessage()}")
        if self.lease is not None:
            self.lease.release()
            self.lease = None
        self.refuse(ProxyError(f"internal error: {reason.type.__name__}"))

    def connect_failed(self, reason: Failure) -> None:
        self.connecting = None
        if self.answered or reason.check(defer.CancelledError):
            return
        if not reason.check(*UPSTREAM_CONNECT_FAULTS):
            self.internal_error(reason)
            return
        timeout = reason.check(neterror.TimeoutError) is not None
        self.lease.failure("connect timeout" if timeout else "connect error")
        retry = len(self.tried) <= self.route.retries and self.reactor.seconds() < self.deadline
        if retry:
            self.lease.retried()
        self.lease.release()
        self.lease = None
        error = (GatewayTimeout if timeout else BadGateway)(f"WebSocket upstream unreachable: {reason_text(reason)}")
        if retry:
            self.connect(retry_of=error)
            return
        self.refuse(error)

    def handshake_refused(self, head: bytes, rest: bytes, detail: str) -> None:
        """The upstream answered the handshake with ``head`` (then ``rest``), not a good 101.

        Passive health as on the HTTP side: a status in ``fail_statuses`` or a broken answer is a
        failure, any other final status a success.
        """
        error = refusal(head, rest, detail)
        if self.lease is not None:
            if not isinstance(error, UpstreamRefusal):
                self.lease.failure("bad handshake")
            elif error.status in self.upstream.fail_statuses:
                self.lease.failure(f"status {error.status}")
            else:
                self.lease.success()
        log.info("route {route} upstream {upstream} server {server}: WebSocket handshake refused: {detail}",
                 route=self.route.name, upstream=self.upstream.name, server=self.tried[-1], detail=detail)
        self.refuse(error)

    def handshake_failed(self, cause: str, error: ProxyError, retryable: bool = False) -> None:
        """The upstream gave no answer (timeout, connection closed) or a broken one: a failure for
        passive health (``cause``), then ``error`` to the client.  ``retryable``: the upstream
        closed the connection without a byte of answer, so the handshake (a GET) is tried on
        another server, within ``retries`` and ``retry_timeout``, as for a refused connection."""
        if self.answered:
            return
        if self.lease is not None:
            self.lease.failure(cause)
        if (retryable and self.lease is not None and len(self.tried) <= self.route.retries
                and self.reactor.seconds() < self.deadline):
            self.lease.retried()
            self.lease.release()
            self.lease = None
            self.forget_upstream()
            self.connect(retry_of=error)
            return
        self.refuse(error)

    def forget_upstream(self) -> None:
        """Before a retry: drop what is left of the failed upstream connection."""
        raise NotImplementedError

    def handshake_timed_out(self) -> None:
        self.timer = None
        self.handshake_failed("handshake timeout", GatewayTimeout(
            f"no WebSocket handshake from upstream within {self.route.websocket.handshake_timeout}s"))

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
        if request.channel is not None and not request.finished:  # a lost client's request has no channel
            self.metrics.refused(self.route.name, error.status)
            body = answer_error(request, error)
            if isinstance(error, UpstreamRefusal):
                self.pass_on(error)
            request.write(body)
            request.finish()
        self.end()

    # -- open ------------------------------------------------------------------------------

    def now_open(self) -> None:
        """Both sides are open: count it and start the idle timer (or, when wsrelay is stopping,
        close it with 1001 right after, so its client reconnects to the process taking over)."""
        self.opened = True
        self.opened_at = time.monotonic()
        self.metrics.opened(self.route.name, self.route.websocket.mode)
        self.last_activity = self.reactor.seconds()
        if self.gw.gateway.draining:
            self.reactor.callLater(0, self.shutdown_if_open)
        elif self.route.websocket.idle_timeout:
            self.idle_timer = self.reactor.callLater(self.route.websocket.idle_timeout, self.check_idle)

    @property
    def open_pair(self) -> bool:
        """Both sides open and not ended: a drain closes it (gateway.is_open_pair)."""
        return self.opened and not self.ended

    def shutdown_if_open(self) -> None:
        if self.open_pair:
            self.shutdown()

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

    def shutdown(self) -> None:
        """wsrelay is stopping: 1001 close frames to both sides (or 503 to a pending handshake)."""
        if not self.taken_over:
            self.refuse(ServiceUnavailable("shutting down"))
        else:
            self.close_both("server shutting down")
