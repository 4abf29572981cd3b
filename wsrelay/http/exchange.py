"""One proxied HTTP request, from dispatch to the last byte (or the abort), on wsrelay's client.

Invariants:

- Every way an exchange can end is handled once, here (the endings themselves in
  :mod:`wsrelay.http.endings`): a response (its lease reports success, or failure for a
  ``fail_statuses`` status), a connect failure (retried on the next server within
  ``retries``/``retry_timeout``, never after bytes of a non-idempotent request were sent), a
  timeout (504; connect, send and read timeouts kept apart), an invalid response (502), an
  upstream that breaks off mid-body (the client connection is aborted: a truncated body is never
  passed off as complete), or the client leaving (the upstream request is abandoned).
- Only the upstream's faults count against it: an exception in wsrelay's own code is a 500 (or an
  aborted response once its head was sent) that releases the lease and the upstream connection
  and leaves passive health alone.
- The response body streams: the upstream connection is the client request's producer, so a full
  client socket pauses the upstream read and the read timer (a slow client is not a slow
  upstream).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import error as neterror
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from wsrelay import headers as H
from wsrelay import requestid
from wsrelay.accesslog import escape
from wsrelay.config import Route, Upstream
from wsrelay.connect import upstream_endpoint
from wsrelay.errors import BadGateway, GatewayTimeout, PayloadTooLarge, ProxyError
from wsrelay.http.deadline import Deadline
from wsrelay.http.endings import Endings
from wsrelay.http.request import body_size, client_ip, peer_ip
from wsrelay.http.response import Response
from wsrelay.http.upstream import UpstreamFailure, UpstreamProtocol, describe, request_head

log = Logger()

#: RFC 9110 section 9.2.2.
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"TRACE"})
#: Methods whose request without a body still says ``Content-Length: 0`` (RFC 9110 section 8.6).
_EXPECT_BODY = frozenset({b"POST", b"PUT", b"PATCH"})


@implementer(IPushProducer)
class _Pump:
    """The client request's producer while the body streams: pauses the upstream read."""

    def __init__(self, exchange: Exchange) -> None:
        self.exchange = exchange

    def pauseProducing(self) -> None:
        exchange = self.exchange
        if exchange.conn is not None:
            exchange.conn.pauseProducing()
        exchange.disarm_timer()

    def resumeProducing(self) -> None:
        exchange = self.exchange
        if exchange.conn is not None and not exchange.done:
            exchange.conn.resumeProducing()
            exchange.arm_timer("read")

    def stopProducing(self) -> None:
        self.exchange.client_gone(None)


class Exchange(Endings):
    """One proxied request: the handler of an :class:`UpstreamProtocol` request (its endings are
    :class:`~wsrelay.http.endings.Endings`')."""

    def __init__(self, proxy: Any, request: Any, route: Route, upstream: Upstream, scheme: str) -> None:
        self.proxy = proxy
        self.reactor = proxy.gateway.reactor
        self.request = request
        self.route = route
        self.upstream = upstream
        self.scheme = scheme
        raw = getattr(request, "wsrelay_raw", None)  # wire order, as the site checked it
        self.raw = raw if raw is not None else H.flatten(request.requestHeaders.getAllRawHeaders())
        self.client_ip = client_ip(request)
        self.peer_ip = peer_ip(request)
        self.tried: list[str] = []
        self.lease: Any = None
        self.conn: UpstreamProtocol | None = None
        self.connecting: Any = None  # the connect Deferred of a new connection
        self.deadline_timer = Deadline(self.reactor)  # send_timeout or read_timeout
        self.streaming = False  # the response head went to the client; its body follows
        self.done = False
        self.broken = False  # an internal error ended it
        self.body_size = body_size(request)
        self.has_body = bool(self.body_size or request.requestHeaders.hasHeader(b"transfer-encoding"))
        self.deadline = self.reactor.seconds() + route.retry_timeout

    # -- start and attempts ----------------------------------------------------------------------

    def start(self) -> None:
        self.proxy.gateway.opened(self)
        self.request.wsrelay_exchange = self  # told if the client leaves (no Deferred per request)
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
        server = self.lease.server
        if retry_of is not None:
            log.info("route {route}: {failed} failed ({cause}); retrying on {server}",
                     route=self.route.name, failed=self.tried[-1], cause=retry_of[1], server=server.key)
        self.tried.append(server.key)
        self.request.wsrelay_upstream = server.hostport
        try:
            self.head = self.build_head(server)
            self.send(reuse=True)
        except Exception:
            self.internal_error(Failure())

    def build_head(self, server: Any) -> bytes:
        request = self.request
        out = H.request_to_upstream(self.raw, client_ip=self.client_ip, scheme=self.scheme,
                                    host_header=self.route.host_header, upstream_hostport=server.hostport,
                                    drop=requestid.DROP, forwarded=self.route.forwarded,
                                    passed=self.route.pass_headers, peer_ip=self.peer_ip)
        out.append((requestid.HEADER, request.request_id()))
        length = self.body_size if self.has_body or request.method in _EXPECT_BODY else None
        return request_head(request.method, request.uri, out, length, close=not self.upstream.keepalive)

    def send(self, reuse: bool) -> None:
        """Send the request on an idle connection to the lease's server, or on a new one."""
        server = self.lease.server
        key = (self.upstream.name, server.key)
        pool = self.proxy.pool
        conn = pool.take(key, self.upstream.keepalive) if reuse else None
        if conn is not None:
            self.issue(conn)
            return
        self.disarm_timer()  # connect_timeout bounds the connect; the read timer waits for it
        endpoint = upstream_endpoint(self.reactor, self.upstream, server, self.route.connect_timeout)
        d = self.connecting = pool.connect(key, endpoint, self.upstream.max_response_header_size)
        d.addCallbacks(self.connected, self.connect_failed)

    def connected(self, conn: UpstreamProtocol) -> None:
        self.connecting = None
        if self.done or self.broken:
            conn.close()
            return
        try:
            self.issue(conn)
        except Exception:
            self.internal_error(Failure())

    def issue(self, conn: UpstreamProtocol) -> None:
        self.conn = conn
        content = self.request.content
        if self.has_body:
            content.seek(0)
            self.arm_timer("send")
        conn.request(self, self.request.method, self.head, content, self.body_size)

    # -- what the upstream connection reports ----------------------------------------------------------

    def request_progress(self) -> None:
        self.arm_timer("send")

    def request_sent(self) -> None:
        if self.conn is not None:
            self.arm_timer("read")

    def response_head(self, response: Response) -> None:
        self.disarm_timer()
        try:
            self.pass_head(response)
        except Exception:
            self.internal_error(Failure())

    def pass_head(self, response: Response) -> None:
        request = self.request
        if response.codings is not None and request.clientproto != b"HTTP/1.1":
            self.fail_response(f"transfer coding {response.codings!r} for an HTTP/1.0 client")
            return
        if response.code in self.upstream.fail_statuses:
            self.lease.failure(f"status {response.code}")
        else:
            self.lease.success()
        request.setResponseCode(response.code, response.phrase)
        headers = request.responseHeaders
        # The listener's hsts_max_age (only ever set on https): it wins over the upstream's.
        hsts = self.scheme == "https" and headers.hasHeader(b"strict-transport-security")
        add = headers.addRawHeader
        lines = []
        for name, value in H.response_to_client(response.fields):
            if hsts and name.lower() == b"strict-transport-security":
                continue  # the listener's setting wins: one HSTS line, not two
            lines += (name, b": ", value, b"\r\n")
        # The upstream's fields, checked by parse_head, go out as they came (in order, without a
        # twisted.web Headers object per response); wsrelay's own are in responseHeaders.
        request.wsrelay_fields = b"".join(lines)
        if response.length is not None:
            add(b"Content-Length", b"%d" % response.length)
        request.wsrelay_codings = response.codings
        cookie = self.lease.set_cookie(secure=self.scheme == "https")
        if cookie is not None:
            add(b"set-cookie", cookie)
        self.streaming = True
        if response.framing:  # a body follows
            request.registerProducer(_Pump(self), True)
            self.arm_timer("read")

    def response_data(self, data: bytes) -> None:
        if self.done:
            return
        self.arm_timer("read")
        self.request.write(data)

    def response_flush(self) -> None:
        """The upstream's bytes of this read are handled: the response head goes out if no body
        byte has taken it along yet (the head and the first body bytes go out in one write)."""
        if self.streaming and not self.done and not self.request.startedWriting:
            self.request.write(b"")

    def response_end(self) -> None:
        self.conn = None
        self.disarm_timer()
        if not self.done and not self.broken:
            self.finish()

    def upstream_failed(self, failure: UpstreamFailure) -> None:
        self.conn = None
        self.disarm_timer()
        if self.done or self.broken:
            return
        if failure.stale and self.request.method in IDEMPOTENT:
            # A reused connection the server had closed: resend on a new one, as Twisted's
            # retryAutomatically did; not the server's fault, not a retry on another server.
            try:
                self.send(reuse=False)
            except Exception:
                self.internal_error(Failure())
            return
        if self.streaming:
            self.describe_failure(failure.detail)
            self.lease_failure("reset mid-response" if failure.kind == "broken" else "invalid response")
            self.abort_client()
            return
        cause = {"no response": "no response", "invalid": "invalid response"}.get(failure.kind, "no response")
        self.fail(BadGateway(failure.detail), cause,
                  retryable=failure.kind == "no response" and self.request.method in IDEMPOTENT)

    def fail_response(self, detail: str) -> None:
        if self.conn is not None:
            conn, self.conn = self.conn, None
            conn.abandon()
        self.fail(BadGateway(detail), "invalid response", retryable=False)

    def connect_failed(self, reason: Failure) -> None:
        self.connecting = None
        if self.done or self.broken:
            return
        if reason.check(neterror.TimeoutError, neterror.ConnectingCancelledError):
            error: ProxyError = GatewayTimeout(f"connect timeout after {self.route.connect_timeout}s")
            cause = "connect timeout"
        else:
            error, cause = BadGateway(f"connect failed: {describe(reason)}"), "connect error"
        self.fail(error, cause, retryable=True)

    def fail(self, error: ProxyError, cause: str, retryable: bool) -> None:
        """The attempt failed with the upstream's fault ``error``: count it, retry or answer."""
        self.lease_failure(cause)
        if retryable and len(self.tried) <= self.route.retries and self.reactor.seconds() < self.deadline:
            if self.lease is not None:
                self.lease.retried()
            self.release()
            self.attempt(retry_of=(error, cause))
            return
        self.describe_failure(error.detail)
        self.answer(error)

    # -- timers ---------------------------------------------------------------------------------

    def arm_timer(self, kind: str) -> None:
        """(Re)start the timer: ``send`` while the upstream takes the body, ``read`` while we wait on it."""
        if not self.done:
            delay = self.route.send_timeout if kind == "send" else self.route.read_timeout
            self.deadline_timer.set(delay, self.timed_out, kind)

    def disarm_timer(self) -> None:
        self.deadline_timer.clear()

    def timed_out(self) -> None:
        kind = self.deadline_timer.kind
        conn, self.conn = self.conn, None
        if conn is None or self.done:
            return
        conn.abandon()
        if self.streaming:
            self.describe_failure(f"no body bytes within read_timeout {self.route.read_timeout}s")
            self.lease_failure("read timeout")
            self.abort_client()
        elif kind == "send":
            self.fail(GatewayTimeout(f"upstream took no body bytes for send_timeout {self.route.send_timeout}s"),
                      "send timeout", retryable=False)
        else:
            self.fail(GatewayTimeout(f"no response within read_timeout {self.route.read_timeout}s"),
                      "read timeout", retryable=False)

    # -- what ends it (how it ends: endings.py) ----------------------------------------------------

    def client_gone(self, reason: Failure | None) -> None:
        """The client closed its connection before the response was complete."""
        if not self.end():
            return
        self.drop_upstream()
        self.proxy.gateway.closed(self)

    def internal_error(self, reason: Failure) -> None:
        """A failure of wsrelay's own, not the upstream's: one log line, a 500 (or an aborted
        response once its head was sent), the lease and the upstream connection given up, and
        passive health untouched."""
        if self.broken:
            return
        self.broken = True
        log.error("route {route}: internal error handling {method} {target}: {error}",
                  route=self.route.name, method=escape(self.request.method[:40]),
                  target=escape(self.request.uri[:200]),
                  error=f"{reason.type.__name__}: {reason.getErrorMessage()}")
        self.disarm_timer()
        self.release()  # first: nothing that follows may count against the server
        self.request.wsrelay_upstream = None
        self.drop_upstream()
        if self.done:
            return
        if self.request.startedWriting:
            self.abort_client()
        else:
            self.request.wsrelay_codings = None
            self.request.wsrelay_fields = b""
            self.answer(ProxyError(f"internal error: {reason.type.__name__}"))

    def lease_failure(self, cause: str) -> None:
        if self.lease is not None:
            self.lease.failure(cause)

    def describe_failure(self, detail: str) -> None:
        server = self.tried[-1] if self.tried else "-"
        log.warn("route {route} upstream {upstream} server {server}: {detail} ({method} {target})",
                 route=self.route.name, upstream=self.upstream.name, server=server, detail=detail,
                 method=escape(self.request.method[:40]), target=escape(self.request.uri[:200]))
