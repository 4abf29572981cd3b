"""The twisted.web request of wsrelay's channel: early body-size checks and the access log.

- A body larger than its route's ``max_body_size`` gets 413 as soon as that is known: at the
  head when ``Content-Length`` says so (before any ``100 Continue``), or while a chunked body
  streams in; the request is then never dispatched.
- Every request answered over HTTP gets one access-log line when it ends, including those wsrelay
  answers itself (one refused before twisted.web had a request for it: :func:`log_early_refusal`);
  a WebSocket takeover logs its own line when the pair closes.
- Every request has an id (:meth:`RelayRequest.request_id`, ``wsrelay.requestid``), made when
  first asked for: by the proxy or the WebSocket handshake, which pass it upstream as
  ``X-Request-ID``, or by the access-log line.
"""

from __future__ import annotations

import time
from typing import Any

from twisted.python.failure import Failure
from twisted.web import server

from wsrelay import requestid
from wsrelay.accesslog import Entry
from wsrelay.errors import BadRequest, PayloadTooLarge, ProxyError
from wsrelay.http import rules
from wsrelay.routing import normalize_host, normalize_path


def peer_ip(request: Any) -> str | None:
    """The connection's peer address (a PROXY protocol header's, where the listener reads one), or
    None where there is none (a ``unix:`` listener): wsrelay never invents one."""
    return getattr(request.getClientAddress(), "host", None)


def client_ip(request: Any) -> str | None:
    """The client's IP address: the one derived from a trusted proxy's headers (the site sets
    ``wsrelay_client``, ``wsrelay.realip``), else the peer's."""
    derived = getattr(request, "wsrelay_client", None)
    return derived if derived is not None else peer_ip(request)


def log_early_refusal(gateway: Any, client: str | None, method: bytes | None, target: bytes | None,
                      version: bytes | None, head: bytes, status: int, sent: int) -> None:
    """The metrics and access-log line of a request refused on its request line or head, before
    twisted.web had a request for it (``Referer`` and ``User-Agent`` read loosely from ``head``)."""
    gateway.metrics.http.done(None, method, status, 0.0, 0, sent)
    access_log = gateway.access_log
    if access_log.enabled:
        fields = rules.loose_fields(head) if method is not None else {}
        access_log.log(Entry(
            client=client, when=time.time(), method=method or b"-", target=target or b"-",
            protocol=version or b"-", status=status, sent=sent,
            referer=fields.get(b"referer"), user_agent=fields.get(b"user-agent"), upstream=None,
            duration=0.0, request_id=requestid.new_id()))


def body_size(request: Any) -> int:
    """The size of a request's spooled body."""
    received = getattr(request, "wsrelay_received", None)  # counted as the body came in
    if received is not None:
        return received
    content = request.content
    if content is None:
        return 0
    position = content.tell()
    size = content.seek(0, 2)
    content.seek(position)
    return size


class RelayRequest(server.Request):
    """twisted.web's request with early body-size checks and access logging."""

    #: set by handlers: the upstream server used ("host:port"), or None when wsrelay answered.
    wsrelay_upstream: str | None = None
    #: set by the WebSocket gateway on takeover: the pair logs itself.
    wsrelay_websocket = False
    #: set by the HTTP proxy: transfer codings of the upstream's body before chunked ("gzip"),
    #: passed on to the client as they came (the body is not decoded).
    wsrelay_codings: bytes | None = None
    #: set by the HTTP proxy: the upstream's end-to-end fields as header lines, written before
    #: responseHeaders (which holds wsrelay's own: framing, HSTS, the sticky cookie).
    wsrelay_fields = b""
    #: set by the channel: the request's header fields in wire order (``requestHeaders`` groups
    #: them by name); what the site checks and the proxy forwards.
    wsrelay_raw: list[tuple[bytes, bytes]] | None = None
    #: set by the HTTP proxy: the exchange to tell when the client leaves before the response ends.
    wsrelay_exchange: Any = None
    #: set by the site when the peer is a trusted proxy: the client address its headers give.
    wsrelay_client: str | None = None
    #: set by the site: the name of the route the request matched (None: none matched yet).
    wsrelay_route: str | None = None
    #: the request's id, once :meth:`request_id` made it.
    wsrelay_request_id: bytes | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.wsrelay_started = time.monotonic()
        self.wsrelay_received = 0
        self.wsrelay_limit = 0
        self._logged = False
        # Kept here: twisted.web drops ``self.channel`` when the request finishes.
        self._gateway = self.channel.site.gateway
        self.defaultContentType = None  # never invent a Content-Type for upstream responses

    def process(self) -> None:
        """Render the site's one resource (a leaf: no traversal, no path segments unquoted).

        Unlike twisted.web's, no ``Server`` or ``Date`` field is set first: a proxied response
        carries the upstream's own (or none), and wsrelay's own answers set ``Date``
        (``answers.py``)."""
        self.site = self.channel.site
        self.prepath = []
        self.postpath = []
        self.sitepath = []
        try:
            self.render(self.site.resource)
        except BaseException:
            self.processingFailed(Failure())

    def gotLength(self, length: int | None) -> None:
        super().gotLength(length)
        if length == 0:
            return
        try:
            self.wsrelay_limit = self._body_limit()
        except ProxyError:
            self.wsrelay_limit = 0  # the request is refused later with its proper error
        if length is not None and self.wsrelay_limit and length > self.wsrelay_limit:
            self.channel.refuse(PayloadTooLarge(f"Content-Length {length} over the route's limit "
                                                f"{self.wsrelay_limit}"), self)

    def _body_limit(self) -> int:
        hosts = self.requestHeaders.getRawHeaders(b"host") or []
        target = self.channel.target
        if not target:
            raise BadRequest("no request target")
        route = self._gateway.runtime.router.match(normalize_host(hosts[0] if hosts else None),
                                                   normalize_path(target))
        if route is None:
            return 0
        self.wsrelay_route = route.name  # a 413 answered now counts on its route
        return route.max_body_size

    def handleContentChunk(self, data: bytes) -> None:
        self.wsrelay_received += len(data)
        if self.wsrelay_limit and self.wsrelay_received > self.wsrelay_limit:
            self.channel.refuse(PayloadTooLarge(f"body over the route's limit {self.wsrelay_limit}"), self)
            return
        self.content.write(data)

    def request_id(self) -> bytes:
        """The request's ``X-Request-ID``: the client's when ``trust_request_id`` and it is valid,
        else a new one (``wsrelay.requestid``); the same on every call."""
        rid = self.wsrelay_request_id
        if rid is None:
            trust = self._gateway.runtime.config.trust_request_id
            sent = self.requestHeaders.getRawHeaders(requestid.FIELD) if trust else None
            rid = self.wsrelay_request_id = requestid.choose(sent, trust)
        return rid

    # -- access log ---------------------------------------------------------------------------

    def _log_line(self, status: int, sent: int, *, method: bytes | None = None, target: bytes | None = None,
                  protocol: bytes | None = None) -> None:
        if self._logged or self.wsrelay_websocket:
            return
        self._logged = True
        gateway = self._gateway
        duration = time.monotonic() - self.wsrelay_started
        gateway.metrics.http.done(self.wsrelay_route, method if method is not None else self.method, status,
                                  duration, self.wsrelay_received, sent)
        if not gateway.access_log.enabled:
            return
        gateway.access_log.log(Entry(  # positional, in Entry's order: this runs for every request
            client_ip(self), time.time(),
            method if method is not None else (self.method or b"-"),
            target if target is not None else (self.uri or b"-"),
            protocol or self.clientproto, status, sent, self.getHeader(b"referer"), self.getHeader(b"user-agent"),
            self.wsrelay_upstream, duration,
            self.request_id(), self.wsrelay_route, self.wsrelay_received,
        ))

    def log_refusal(self, status: int, sent: int) -> None:
        """Log a request refused before it was complete (its method and target come from the channel)."""
        channel = self.channel
        self._log_line(status, sent, method=getattr(channel, "method", None) or b"-",
                       target=getattr(channel, "target", None) or b"-",
                       protocol=getattr(channel, "version", None) or b"HTTP/1.1")

    def write(self, data: bytes) -> None:
        super().write(data)
        channel = self.channel
        if channel is not None:
            channel.flush_head()  # the head and these body bytes go out in one write

    def finish(self) -> Any:
        self._log_line(self.code, self.sentLength)
        return super().finish()

    def connectionLost(self, reason: Any) -> None:
        # Only requests that reached a handler (requestReceived sets ``path``); the client left.
        finished = self.finished
        if not finished and not self.wsrelay_websocket and getattr(self, "path", None) is not None:
            self._log_line(499 if self.code == 200 and not self.startedWriting else self.code, self.sentLength)
        super().connectionLost(reason)
        exchange, self.wsrelay_exchange = self.wsrelay_exchange, None
        if exchange is not None and not finished:
            exchange.client_gone(None)
