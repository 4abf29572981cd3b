"""The streaming HTTP reverse proxy: a route's plain HTTP requests to its upstream group.

Invariants:

- HTTP/1.1 to upstreams over a persistent pool per upstream group (``keepalive`` idle connections
  per server); the method, the request target (byte for byte) and every header line are passed
  on, with hop-by-hop fields removed and X-Forwarded-* added (``headers.request_to_upstream``).
- Bodies stream: the request body from twisted.web's spool file (``FileBodyProducer``), the
  response body as it arrives, with the upstream read paused while the client's socket is full
  (the response's transport is registered as the request's producer).  Nothing is cached.
- Every way an exchange can end is handled once, in :class:`_Exchange`: a response (its lease
  reports success, or failure for a ``fail_statuses`` status), a connect failure (retried on the
  next server within ``retries``/``retry_timeout``, never after bytes of a non-idempotent request
  were sent), a timeout (504), an upstream that breaks off mid-body (the client connection is
  aborted: a truncated body is never passed off as complete), or the client leaving (the upstream
  request is cancelled).
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import error as neterror
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer, IStreamClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import client
from twisted.web._newclient import HTTP11ClientProtocol
from twisted.web.client import (
    URI,
    FileBodyProducer,
    HTTPConnectionPool,
    RequestTransmissionFailed,
    ResponseDone,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from wsrelay import headers as H
from wsrelay.accesslog import escape
from wsrelay.answers import answer_error
from wsrelay.config import Route, Server, Upstream
from wsrelay.connect import upstream_endpoint
from wsrelay.errors import BadGateway, GatewayTimeout, PayloadTooLarge, ProxyError
from wsrelay.http.request import client_ip

log = Logger()

#: RFC 9110 section 9.2.2.
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"TRACE"})

#: Fields twisted.web adds to every response that must come from the upstream or not at all.
_DEFAULT_FIELDS = (b"server", b"date", b"content-type")

#: What the upstream (or the network to it) did.  Only these count against a server; any other
#: failure is wsrelay's own (a 500 that touches neither health nor the pool).
_UPSTREAM_FAULTS = (neterror.ConnectError, neterror.DNSLookupError, neterror.TimeoutError,
                    neterror.ConnectingCancelledError, neterror.ConnectionLost, ConnectionDone,
                    ResponseNeverReceived, ResponseFailed, RequestTransmissionFailed, CancelledError)


class _UpstreamAgent(client._AgentBase):
    """Issues a request to one chosen server with the client's target as-is.

    ``Agent.request`` would re-serialise the target through ``urlunparse`` (dropping an empty
    ``?``, mangling ``//`` paths); this sends exactly the bytes the client sent.
    """

    def send(self, key: Any, endpoint: Any, method: bytes, server: Server, target: bytes,
             headers: Headers, body: Any) -> Deferred[IResponse]:
        uri = URI(scheme=b"https" if server.tls else b"http", netloc=server.hostport.encode("ascii"),
                  host=server.host.encode("ascii"), port=server.port, path=target, params=b"", query=b"",
                  fragment=b"")
        return self._requestWithEndpoint(key, endpoint, method, uri, headers, body, target)


class _RelayClientProtocol(HTTP11ClientProtocol):
    """Keeps the response's connection-control fields, which Twisted's parser sets apart.

    ``Content-Length`` (to pass on unchanged) and ``Connection`` (whose tokens name more
    hop-by-hop fields to remove) live in the parser's ``connHeaders``, not ``response.headers``.
    """

    def request(self, request: Any) -> Deferred[IResponse]:
        d = super().request(request)
        parser = self._parser
        if parser is not None:
            all_headers = parser.allHeadersReceived

            def keep_connection_headers() -> None:
                if parser.response is not None:
                    parser.response.wsrelay_conn_headers = parser.connHeaders
                all_headers()

            parser.allHeadersReceived = keep_connection_headers
        return d

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        # A body without Content-Length or chunking ends when the connection does; Twisted calls
        # any end of it PotentialDataLoss.  Mark the response when the end was a reset or an error,
        # not the upstream's clean close, so the exchange does not pass a truncated body off as whole.
        response = getattr(self._parser, "response", None)  # none before the status line
        if response is not None and not reason.check(ConnectionDone):
            response.wsrelay_broken = reason
        super().connectionLost(reason)

    def _finishResponse_TRANSMITTING(self, rest: bytes) -> None:
        """The upstream sent its whole response before taking the whole request body (a 401, 403,
        413 or redirect answered early).

        Twisted hands the response on and gives the connection up, but would go on sending the
        body, from a spool file that the finished exchange has closed by then.  RFC 9112
        section 9.3 says what a client does instead: stop sending the body and close the connection.
        """
        request = self._currentRequest
        super()._finishResponse_WAITING(rest)  # the response reaches the exchange, whole
        if request is not None and request.bodyProducer is not None:
            request.stopWriting()
        if self.transport is not None:
            self.transport.abortConnection()


class _QuietClientFactory(client._HTTP11ClientFactory):
    noisy = False  # no log line per upstream connection

    def buildProtocol(self, addr: Any) -> _RelayClientProtocol:
        return _RelayClientProtocol(self._quiescentCallback)


@implementer(IPushProducer)
class _BodyPump(Protocol):
    """Copies the upstream response body to the client.

    It is the request's producer: when the client's socket is full twisted.web pauses it, which
    pauses the upstream read and the read timer (a slow client is not a slow upstream).
    """

    def __init__(self, exchange: _Exchange) -> None:
        self.exchange = exchange

    def connectionMade(self) -> None:
        self.exchange.body_transport = self.transport
        self.exchange.request.registerProducer(self, True)

    def dataReceived(self, data: bytes) -> None:
        self.exchange.body_data(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.exchange.body_done(reason)

    def pauseProducing(self) -> None:
        self.transport.pauseProducing()
        self.exchange.disarm_timer()

    def resumeProducing(self) -> None:
        self.transport.resumeProducing()
        self.exchange.arm_timer("read")

    def stopProducing(self) -> None:
        self.transport.stopProducing()


@implementer(IStreamClientEndpoint)
class _WatchedEndpoint:
    """Tells the exchange when a new upstream connection is being made and when that is over."""

    def __init__(self, endpoint: IStreamClientEndpoint, exchange: _Exchange) -> None:
        self.endpoint = endpoint
        self.exchange = exchange

    def connect(self, factory: Any) -> Deferred[Any]:
        self.exchange.connect_started()
        d = self.endpoint.connect(factory)

        def ended(result: Any) -> Any:
            self.exchange.connect_ended()
            return result

        return d.addBoth(ended)


class _SpoolProducer(FileBodyProducer):
    """Streams the spooled request body, telling the exchange as each piece is accepted."""

    def __init__(self, exchange: _Exchange, cooperator: Any) -> None:
        super().__init__(exchange.request.content, cooperator=cooperator)
        self.exchange = exchange

    def startProducing(self, consumer: Any) -> Deferred[None]:
        exchange = self.exchange
        exchange.arm_timer("send")

        class Counting:
            def write(self, data: bytes) -> None:
                exchange.arm_timer("send")
                consumer.write(data)

        d = super().startProducing(Counting())
        d.addCallback(lambda _: exchange.arm_timer("read"))
        return d


class _Exchange:
    """One proxied request, from dispatch to the last byte (or the abort)."""

    def __init__(self, proxy: HTTPProxy, request: Request, route: Route, upstream: Upstream, scheme: str) -> None:
        self.proxy = proxy
        self.reactor = proxy.gateway.reactor
        self.request = request
        self.route = route
        self.upstream = upstream
        self.scheme = scheme
        self.raw = H.flatten(request.requestHeaders.getAllRawHeaders())
        self.client_ip = client_ip(request)
        self.tried: list[str] = []
        self.lease: Any = None
        self.pending: Deferred[IResponse] | None = None
        self.timer: Any = None
        self.timer_kind = "read"
        self.timeout_kind: str | None = None
        self.body_transport: Any = None
        self.response_in: IResponse | None = None
        self.connecting = False  # a new upstream connection is being made: the read timer waits
        self.has_body = False
        self.deadline = self.reactor.seconds() + route.retry_timeout
        self.done = False
        self.broken = False  # an internal error ended it
        self.body_size = _spooled_size(request)

    # -- start and attempts ----------------------------------------------------------------

    def start(self) -> None:
        self.proxy.gateway.opened(self)
        self.request.notifyFinish().addErrback(self.client_gone)
        if self.route.max_body_size and self.body_size > self.route.max_body_size:
            self.answer(PayloadTooLarge(f"body of {self.body_size} bytes over {self.route.max_body_size}"))
            return
        self.attempt()

    def attempt(self, retry_of: tuple[ProxyError, str] | None = None) -> None:
        """Send the request to a server of the group; ``retry_of``: the failure being retried."""
        try:
            self.lease = self.proxy.gateway.balancer.acquire(
                self.route.upstream, client_ip=self.client_ip, headers=self.raw, exclude=self.tried)
        except ProxyError as e:
            error = e
            if retry_of is not None:  # no other server to try: the client gets the failure itself
                error = retry_of[0]
                self.describe_failure(error.detail)
            self.answer(error)
            return
        try:
            self.send(retry_of)
        except Exception:
            self.internal_error(Failure())

    def send(self, retry_of: tuple[ProxyError, str] | None) -> None:
        """Send the request to the server of ``self.lease``."""
        server = self.lease.server
        if retry_of is not None:
            log.info("route {route}: {failed} failed ({cause}); retrying on {server}",
                     route=self.route.name, failed=self.tried[-1], cause=retry_of[1], server=server.key)
        self.tried.append(server.key)
        self.request.wsrelay_upstream = server.hostport  # type: ignore[attr-defined]
        out = H.request_to_upstream(self.raw, client_ip=self.client_ip, scheme=self.scheme,
                                    host_header=self.route.host_header, upstream_hostport=server.hostport,
                                    forwarded=self.route.forwarded, passed=self.route.pass_headers)
        headers = Headers()
        for name, value in out:
            headers.addRawHeader(name, value)
        body = None
        self.has_body = bool(self.body_size or self.request.requestHeaders.hasHeader(b"transfer-encoding"))
        if self.has_body:
            self.request.content.seek(0)
            body = _SpoolProducer(self, self.proxy.cooperator)
            body.length = self.body_size
        endpoint = _WatchedEndpoint(
            upstream_endpoint(self.reactor, self.upstream, server, self.route.connect_timeout), self)
        agent = self.proxy.agent_for(self.upstream)
        self.pending = agent.send((self.upstream.name, server.key), endpoint, self.request.method, server,
                                  self.request.uri, headers, body)
        if body is None and not self.connecting:  # a pooled connection: the request is on its way
            self.arm_timer("read")
        self.pending.addCallbacks(self.response, self.failed).addErrback(self.internal_error)

    def connect_started(self) -> None:
        """The agent makes a new connection (bounded by connect_timeout): no read timer yet."""
        self.connecting = True
        self.disarm_timer()

    def connect_ended(self) -> None:
        self.connecting = False
        if self.pending is not None and not self.has_body:
            self.arm_timer("read")  # a request without a body is sent as soon as connected

    def arm_timer(self, kind: str) -> None:
        """(Re)start the timer: ``send`` while the upstream takes the body, ``read`` while we wait on it."""
        if self.done:
            return
        delay = self.route.send_timeout if kind == "send" else self.route.read_timeout
        self.timer_kind = kind
        if self.timer is not None and self.timer.active():
            self.timer.reset(delay)
        else:
            self.timer = self.reactor.callLater(delay, self.timed_out)

    def disarm_timer(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None

    def timed_out(self) -> None:
        self.timer = None
        if self.pending is not None:  # still waiting for the response
            self.timeout_kind = self.timer_kind
            self.pending.cancel()
        elif self.body_transport is not None:
            self.describe_failure(f"no body bytes within read_timeout {self.route.read_timeout}s")
            self.lease_failure("read timeout")
            self.body_transport.stopProducing()
            self.abort_client()

    # -- outcomes --------------------------------------------------------------------------

    def response(self, response: IResponse) -> None:
        self.pending = None
        self.response_in = response
        self.disarm_timer()
        if self.done:
            response.deliverBody(_Drop())  # the client left meanwhile
            return
        if response.code in self.upstream.fail_statuses:
            self.lease.failure(f"status {response.code}")
        else:
            self.lease.success()
        request = self.request
        request.setResponseCode(response.code, response.phrase)
        for name in _DEFAULT_FIELDS:
            request.responseHeaders.removeHeader(name)
        conn = getattr(response, "wsrelay_conn_headers", None)
        fields = _framing(response, H.flatten(conn.getAllRawHeaders()) if conn is not None else [],
                          request.method)
        fields += H.flatten(response.headers.getAllRawHeaders())
        hsts = request.responseHeaders.hasHeader(b"strict-transport-security")  # the listener's hsts_max_age
        for name, value in H.response_to_client(fields):
            if hsts and name.lower() == b"strict-transport-security":
                continue  # the listener's setting wins: one HSTS line, not two
            request.responseHeaders.addRawHeader(name, value)
        cookie = self.lease.set_cookie(secure=self.scheme == "https")
        if cookie is not None:
            request.responseHeaders.addRawHeader(b"set-cookie", cookie)
        if request.method == b"HEAD" or response.code in (204, 304) or 100 <= response.code < 200:
            # No body on the wire; keep the upstream's headers (Content-Length included) as they are.
            response.deliverBody(Protocol())
            self.finish()
            return
        self.arm_timer("read")
        response.deliverBody(_BodyPump(self))

    def body_data(self, data: bytes) -> None:
        if self.done:
            return
        self.arm_timer("read")
        self.request.write(data)

    def body_done(self, reason: Failure | None) -> None:
        self.disarm_timer()
        if self.done:
            return
        broken = getattr(self.response_in, "wsrelay_broken", None)
        if reason is None or reason.check(ResponseDone) or (reason.check(PotentialDataLoss) and broken is None):
            self.finish()
            return
        if broken is not None:  # a body delimited by the connection's end, and that end was an error
            reason = broken
        self.describe_failure(f"upstream broke off the response body: {_reason(reason)}")
        self.lease_failure("reset mid-response")
        self.abort_client()

    def failed(self, reason: Failure) -> None:
        self.pending = None
        self.disarm_timer()
        if self.done or self.broken:
            return
        timeout, self.timeout_kind = self.timeout_kind, None
        if not timeout and not reason.check(*_UPSTREAM_FAULTS):
            self.internal_error(reason)
            return
        connect_failure = reason.check(neterror.ConnectError, neterror.DNSLookupError,
                                       neterror.ConnectingCancelledError) is not None
        if timeout == "send":
            error: ProxyError = GatewayTimeout(f"upstream took no body bytes for send_timeout {self.route.send_timeout}s")
            cause = "send timeout"
        elif timeout == "read":
            error = GatewayTimeout(f"no response within read_timeout {self.route.read_timeout}s")
            cause = "read timeout"
        elif reason.check(neterror.TimeoutError, neterror.ConnectingCancelledError):
            error, cause = GatewayTimeout(f"connect timeout after {self.route.connect_timeout}s"), "connect timeout"
        elif connect_failure:
            error, cause = BadGateway(f"connect failed: {_reason(reason)}"), "connect error"
        else:
            error, cause = BadGateway(f"no response: {_reason(reason)}"), "no response"
        self.lease_failure(cause)
        # Retry when nothing was sent (connect failed), or when resending is safe (idempotent).
        retryable = (connect_failure or (reason.check(ResponseNeverReceived) is not None
                                         and self.request.method in IDEMPOTENT and not timeout))
        if retryable and len(self.tried) <= self.route.retries and self.reactor.seconds() < self.deadline:
            self.release()
            self.attempt(retry_of=(error, cause))
            return
        self.describe_failure(error.detail)
        self.answer(error)

    def client_gone(self, reason: Failure) -> None:
        """The client closed its connection before the response was complete."""
        if self.done:
            return
        self.done = True
        self.disarm_timer()
        if self.pending is not None:  # still waiting for the response
            self.pending.cancel()
        if self.body_transport is not None:
            self.body_transport.stopProducing()
        self.release()
        self.proxy.gateway.closed(self)

    def internal_error(self, reason: Failure) -> None:
        """A failure of wsrelay's own, not the upstream's: one log line, a 500 (or an aborted
        response once its head was sent), the lease and the upstream connection given up, and
        passive health untouched."""
        log.error("route {route}: internal error handling {method} {target}: {error}",
                  route=self.route.name, method=escape(self.request.method[:40]),
                  target=escape(self.request.uri[:200]),
                  error=f"{reason.type.__name__}: {reason.getErrorMessage()}")
        if self.broken:
            return
        self.broken = True
        self.disarm_timer()
        self.release()  # first: nothing that follows may count against the server
        self.request.wsrelay_upstream = None  # type: ignore[attr-defined]
        if self.pending is not None:
            pending, self.pending = self.pending, None
            pending.cancel()  # failed() sees self.broken and leaves it alone
        if self.response_in is not None and self.body_transport is None:
            self.response_in.deliverBody(_Drop())
        if self.body_transport is not None:
            self.body_transport.stopProducing()
        if self.done:
            return
        if self.request.startedWriting:
            self.abort_client()
        else:
            self.answer(ProxyError(f"internal error: {reason.type.__name__}"))

    # -- endings ---------------------------------------------------------------------------

    def lease_failure(self, cause: str) -> None:
        if self.lease is not None:
            self.lease.failure(cause)

    def describe_failure(self, detail: str) -> None:
        server = self.tried[-1] if self.tried else "-"
        log.warn("route {route} upstream {upstream} server {server}: {detail} ({method} {target})",
                 route=self.route.name, upstream=self.upstream.name, server=server, detail=detail,
                 method=escape(self.request.method[:40]), target=escape(self.request.uri[:200]))

    def answer(self, error: ProxyError) -> None:
        self.request.write(answer_error(self.request, error))
        self.finish()

    def finish(self) -> None:
        if self.done:
            return
        self.done = True
        self.release()
        self.request.unregisterProducer()
        self.request.finish()
        self.proxy.gateway.closed(self)

    def abort_client(self) -> None:
        """End the client's connection without a clean end of the response."""
        if self.done:
            return
        self.done = True
        self.release()
        self.request.unregisterProducer()
        self.request.code = 502 if not self.request.startedWriting else self.request.code
        # Flush what was relayed, then close without the terminating chunk: the client sees a body
        # shorter than its Content-Length (or an unterminated chunked body), never a complete one.
        self.request.channel.transport.loseConnection()
        self.proxy.gateway.closed(self)

    def release(self) -> None:
        if self.lease is not None:
            self.lease.release()
            self.lease = None

    def shutdown(self) -> None:
        """Stopping and the drain time is over: end this exchange now."""
        if self.pending is not None:  # still waiting for the response
            self.pending.cancel()
        self.abort_client()


class HTTPProxy:
    """Proxies plain HTTP requests of a route to its upstream group."""

    def __init__(self, gateway: Any) -> None:
        from twisted.internet.task import Cooperator

        self.gateway = gateway
        self.pools: dict[str, HTTPConnectionPool] = {}
        self.agents: dict[str, _UpstreamAgent] = {}
        self.cooperator = Cooperator(scheduler=lambda x: gateway.reactor.callLater(0, x))

    def agent_for(self, upstream: Upstream) -> _UpstreamAgent:
        pool = self.pools.get(upstream.name)
        if pool is None:
            pool = self.pools[upstream.name] = HTTPConnectionPool(self.gateway.reactor, persistent=True)
            pool.retryAutomatically = True
            pool._factory = _QuietClientFactory
            self.agents[upstream.name] = _UpstreamAgent(self.gateway.reactor, pool)
        pool.maxPersistentPerHost = upstream.keepalive
        pool.persistent = upstream.keepalive > 0
        return self.agents[upstream.name]

    def render(self, request: Request, route: Route, runtime: Any, scheme: str) -> bytes | int:
        upstream = runtime.config.upstreams[route.upstream]
        _Exchange(self, request, route, upstream, scheme).start()
        return NOT_DONE_YET

    def close(self) -> None:
        for pool in self.pools.values():
            pool.closeCachedConnections()
        self.cooperator.stop()


class _Drop(Protocol):
    """Takes a response body nobody will read: the upstream connection is closed, not drained."""

    def connectionMade(self) -> None:
        self.transport.stopProducing()


def _framing(response: IResponse, conn: list[H.Header], method: bytes) -> list[H.Header]:
    """The response's framing fields for the client (RFC 9112 section 6.3).

    ``Transfer-Encoding`` is hop-by-hop: when the upstream sent it, the body was decoded by its
    coding and twisted.web frames it anew, so the upstream's ``Content-Length`` (ambiguous beside
    it) is dropped.  Otherwise one ``Content-Length``: the length Twisted's parser accepted
    (``42, 42`` becomes ``42``; differing values fail the response before this), or for a HEAD or
    304 answer, whose field speaks of a body not sent, the upstream's value if it is one number.
    Other connection fields (``Connection`` and the fields it names) are kept for
    ``headers.response_to_client`` to remove.
    """
    fields = [(k, v) for k, v in conn if k.lower() != b"content-length"]
    lengths = [v for k, v in conn if k.lower() == b"content-length"]
    if (not lengths or any(k.lower() == b"transfer-encoding" for k, _ in conn) or response.code == 204
            or response.code < 200):
        return fields
    if method == b"HEAD" or response.code == 304:
        values = {v.strip() for line in lengths for v in line.split(b",")}
        if len(values) != 1 or not next(iter(values)).isdigit():
            return fields
        return fields + [(b"Content-Length", b"%d" % int(next(iter(values))))]
    if not isinstance(response.length, int):
        return fields
    return fields + [(b"Content-Length", b"%d" % response.length)]


def _spooled_size(request: Request) -> int:
    content = request.content
    if content is None:
        return 0
    try:
        return os.fstat(content.fileno()).st_size
    except (AttributeError, OSError, ValueError):
        position = content.tell()
        content.seek(0, 2)
        size = content.tell()
        content.seek(position)
        return size


def _reason(failure: Failure) -> str:
    if failure.check(ResponseFailed, ResponseNeverReceived):
        inner = getattr(failure.value, "reasons", None) or []
        if inner:
            return "; ".join(_reason(r) for r in inner)
    if failure.check(CancelledError):
        return "cancelled"
    try:
        from wsrelay import tls

        return tls.describe_tls_failure(failure)
    except Exception:
        return failure.getErrorMessage() or failure.type.__name__
