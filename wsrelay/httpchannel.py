"""wsrelay's HTTP/1.1 channel and request: size limits enforced as bytes arrive, and the access log.

- A request line longer than ``max_request_line`` gets 414; a request line plus headers larger than
  ``max_header_size`` gets 431.  Both close the connection (the stream can no longer be trusted)
  and nothing reaches an upstream.
- A body larger than its route's ``max_body_size`` gets 413 as soon as that is known: at the
  headers when ``Content-Length`` says so, or while a chunked body streams in.  No
  ``100 Continue`` is sent for a request refused this way.
- Everything else twisted.web refuses (``Content-Length`` with ``Transfer-Encoding``, differing
  ``Content-Length`` values, malformed chunking or header lines) gets its 400 and a close.
- Every request that is answered over HTTP gets one access-log line when it ends, including those
  wsrelay answers itself; a WebSocket takeover logs its own line when the pair closes.
"""

from __future__ import annotations

import time
from typing import Any

from twisted.logger import Logger
from twisted.web import http, server

from wsrelay import headers as H
from wsrelay.accesslog import format_line
from wsrelay.errors import BadRequest, HeaderFieldsTooLarge, PayloadTooLarge, ProxyError, URITooLong
from wsrelay.routing import normalize_host, normalize_path

log = Logger()


def client_ip(request: Any) -> str | None:
    """The client's IP address, or None where there is none (a ``unix:`` listener): wsrelay never
    invents one."""
    return getattr(request.getClientAddress(), "host", None)


class RelayHTTPChannel(http.HTTPChannel):
    """twisted.web's channel with wsrelay's limits and precise refusals."""

    max_request_line = 8192
    refused = False
    _host: Any = None

    def getHost(self) -> Any:
        # twisted.web asks for every request (Request.__init__): one getsockname() per connection.
        if self._host is None:
            self._host = super().getHost()
        return self._host

    def configure_limits(self, max_request_line: int, max_header_size: int) -> None:
        self.max_request_line = max_request_line
        self.totalHeadersSize = max_header_size
        # Let our checks see over-long lines before LineReceiver's own limit does.
        self.MAX_LENGTH = max(max_request_line, max_header_size) + 1

    def lineReceived(self, line: bytes) -> None:
        if self.refused:
            return
        if self._HTTPChannel__first_line and len(line) > self.max_request_line:  # type: ignore[attr-defined]
            self.refuse(URITooLong(f"request line of {len(line)} bytes"))
            return
        if self._receivedHeaderSize + len(line) > self.totalHeadersSize:
            self.refuse(HeaderFieldsTooLarge(f"request header block over {self.totalHeadersSize} bytes"))
            return
        super().lineReceived(line)

    def lineLengthExceeded(self, line: bytes) -> None:
        if self._HTTPChannel__first_line:  # type: ignore[attr-defined]
            self.refuse(URITooLong(f"request line of {len(line)}+ bytes"))
        else:
            self.refuse(HeaderFieldsTooLarge(f"header line of {len(line)}+ bytes"))

    def _respondToBadRequestAndDisconnect(self) -> None:
        # twisted.web's refusals (Content-Length with Transfer-Encoding, differing Content-Length
        # values, malformed header lines or chunking): a 400 with a body, a log line, a close.
        request = self.requests[-1] if self.requests else None
        self.refuse(BadRequest("malformed request (framing or header syntax)"), request)

    def detach(self) -> tuple[Any, bytes] | None:
        """Give the connection up for a protocol switch (the seam between the HTTP engine and the
        WebSocket layer): returns the transport and the bytes the client sent after the request
        being answered, and takes no part in the connection from then on; None when the client has
        gone (or is going) already."""
        transport = self.transport
        if (transport is None or not getattr(transport, "connected", True)
                or getattr(transport, "disconnecting", False)):
            return None
        pending = b"".join(self._dataBuffer)
        self._dataBuffer = []
        self.transport = None
        transport.unregisterProducer()  # this channel was the transport's producer
        return transport, pending

    def allContentReceived(self) -> None:
        # A request refused while its body streamed in (413 on a chunk) may still see its last
        # chunk in the same read: it was answered, so it is never dispatched.
        if not self.refused:
            super().allContentReceived()

    def _send100Continue(self) -> None:
        if not self.refused:
            super()._send100Continue()

    def refuse(self, error: ProxyError, request: RelayRequest | None = None) -> None:
        """Answer ``error`` on the raw transport and close: used before a request is complete."""
        if self.refused:
            return
        self.refused = True
        peer = getattr(self.transport.getPeer(), "host", "-") if self.transport else "-"
        log.info("{client}: {status} ({detail})", client=peer, status=error.status, detail=error.detail)
        head = [b"HTTP/1.1 %d %s" % (error.status, error.reason.encode("ascii")),
                b"Content-Type: text/plain; charset=utf-8", b"Content-Length: %d" % len(error.body),
                b"Cache-Control: no-store", b"Connection: close"]
        head += [name + b": " + value for name, value in error.headers.items()]
        self.transport.write(b"\r\n".join(head) + b"\r\n\r\n" + error.body)
        if request is None and self.requests:
            request = self.requests[-1]  # the request whose head was being read
        if request is not None:
            request.log_refusal(error.status, len(error.body))
        else:  # refused on its request line: no request yet, an access-log line all the same
            access_log = self.site.gateway.access_log
            if access_log.enabled:
                access_log.write(format_line(
                    client=peer, when=time.time(), method=b"-", target=b"-", protocol=b"-",
                    status=error.status, sent=len(error.body), referer=None, user_agent=None,
                    upstream=None, duration=0.0))
        self.dataReceived = lambda data: None  # type: ignore[method-assign]
        self.transport.loseConnection()


class RelayRequest(server.Request):
    """twisted.web's request with early body-size checks and access logging."""

    #: set by handlers: the upstream server used ("host:port"), or None when wsrelay answered.
    wsrelay_upstream: str | None = None
    #: set by the WebSocket gateway on takeover: the pair logs itself.
    wsrelay_websocket = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.wsrelay_started = time.monotonic()
        self.wsrelay_received = 0
        self.wsrelay_limit = 0
        self._logged = False
        # Kept here: twisted.web drops ``self.channel`` when the request finishes.
        self._gateway = self.channel.site.gateway
        self.defaultContentType = None  # never invent a Content-Type for upstream responses

    def gotLength(self, length: int | None) -> None:
        super().gotLength(length)
        try:
            self.wsrelay_limit = self._body_limit()
        except ProxyError:
            self.wsrelay_limit = 0  # the request is refused later with its proper error
        if length is not None and self.wsrelay_limit and length > self.wsrelay_limit:
            self.channel.refuse(PayloadTooLarge(f"Content-Length {length} over the route's limit "
                                                f"{self.wsrelay_limit}"), self)

    def _body_limit(self) -> int:
        raw = H.flatten(self.requestHeaders.getAllRawHeaders())
        hosts = H.get(raw, b"host")
        path = self.channel._path
        if not path:
            raise BadRequest("no request target")
        route = self._gateway.runtime.router.match(normalize_host(hosts[0] if hosts else None), normalize_path(path))
        return route.max_body_size if route is not None else 0

    def handleContentChunk(self, data: bytes) -> None:
        if self.channel.refused:
            return
        self.wsrelay_received += len(data)
        if self.wsrelay_limit and self.wsrelay_received > self.wsrelay_limit:
            self.channel.refuse(PayloadTooLarge(f"body over the route's limit {self.wsrelay_limit}"), self)
            return
        super().handleContentChunk(data)

    # -- access log ---------------------------------------------------------------------------

    def _log_line(self, status: int, sent: int, *, method: bytes | None = None, target: bytes | None = None,
                  protocol: bytes | None = None) -> None:
        if self._logged or self.wsrelay_websocket:
            return
        self._logged = True
        gateway = self._gateway
        if not gateway.access_log.enabled:
            return
        peer = self.getClientAddress()
        gateway.access_log.write(format_line(
            client=getattr(peer, "host", "-"), when=time.time(),
            method=method if method is not None else (self.method or b"-"),
            target=target if target is not None else (self.uri or b"-"),
            protocol=protocol or self.clientproto, status=status, sent=sent,
            referer=self.getHeader(b"referer"), user_agent=self.getHeader(b"user-agent"),
            upstream=self.wsrelay_upstream, duration=time.monotonic() - self.wsrelay_started,
        ))

    def log_refusal(self, status: int, sent: int) -> None:
        """Log a request refused before it was complete (its method and target come from the channel)."""
        channel = self.channel
        # Refused on its request line (twisted.web made the request, but parsed nothing yet): no
        # method or target; a line all the same.
        self._log_line(status, sent, method=getattr(channel, "_command", None) or b"-",
                       target=getattr(channel, "_path", None) or b"-",
                       protocol=getattr(channel, "_version", None) or b"HTTP/1.1")

    def finish(self) -> Any:
        self._log_line(self.code, self.sentLength)
        return super().finish()

    def connectionLost(self, reason: Any) -> None:
        # Only requests that reached a handler (requestReceived sets ``path``); the client left.
        if not self.finished and not self.wsrelay_websocket and getattr(self, "path", None) is not None:
            self._log_line(499 if self.code == 200 and not self.startedWriting else self.code, self.sentLength)
        super().connectionLost(reason)
