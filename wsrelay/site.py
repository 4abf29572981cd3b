"""The twisted.web site of a listener: request validation, routing and dispatch.

A request passes, in order: request-level checks (a token method; an origin-form target of
visible ASCII whose path every common parser reads alike, ``routing.normalize_path``; token field
names and values free of control bytes; one valid ``Host`` on HTTP/1.1), header names with ``_``
dropped (unless the listener's ``underscores_in_headers``), the listener's https
redirect (if any), route lookup (404), the route's redirect (if
any), then goes to the WebSocket gateway (an upgrade request) or the HTTP proxy (anything else).
Every refusal is a :class:`wsrelay.errors.ProxyError` answered by :func:`answer_error`, so no
upstream ever sees a request wsrelay rejects.
"""

from __future__ import annotations

import re

from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from wsrelay import headers as H
from wsrelay.accesslog import escape
from wsrelay.answers import answer_error, answer_redirect
from wsrelay.config import Listener
from wsrelay.errors import BadRequest, NotFound, ProxyError
from wsrelay.gateway import Gateway
from wsrelay.http.channel import RelayChannel
from wsrelay.http.request import RelayRequest, client_ip
from wsrelay.routing import normalize_host, normalize_path

#: An IP literal, or a name of non-empty labels (a trailing dot allowed), and an optional port.
_VALID_HOST = re.compile(rb"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*\.?)(:\d{1,5})?$")


def client_address(request: Request) -> str:
    return client_ip(request) or "unix"


def drop_underscored(request: Request) -> bool:
    """Remove header fields whose name holds ``_`` (nginx's ``underscores_in_headers off``).

    CGI and WSGI upstreams turn both ``X_Forwarded_For`` and ``X-Forwarded-For`` into
    ``HTTP_X_FORWARDED_FOR``: passed on, the first would let a client spoof the second, which
    wsrelay sets.  Dropped here, before dispatch, so neither the HTTP proxy nor the WebSocket
    handshake ever sends one.
    """
    headers = request.requestHeaders
    names = [name for name, _ in headers.getAllRawHeaders() if b"_" in name]
    for name in names:
        headers.removeHeader(name)
    raw = getattr(request, "wsrelay_raw", None)
    if names and raw is not None:
        request.wsrelay_raw = [(k, v) for k, v in raw if b"_" not in k]  # type: ignore[attr-defined]
    return bool(names)


class RelayResource(Resource):
    """The single resource of a listener's site: it sees every request (``isLeaf``)."""

    isLeaf = True
    log = Logger()

    def __init__(self, gateway: Gateway, listener: Listener) -> None:
        super().__init__()
        self.gateway = gateway
        self.listener = listener
        self.scheme = "https" if listener.tls is not None else "http"

    def render(self, request: Request) -> bytes | int:
        try:
            return self._dispatch(request)
        except ProxyError as e:
            self.log.info(
                "{client} {method} {target}: {status} ({detail})",
                client=client_address(request), method=escape(request.method[:40]),
                target=escape(request.uri[:200]), status=e.status, detail=e.detail,
            )
            request.wsrelay_upstream = None  # type: ignore[attr-defined]
            return answer_error(request, e, close=e.status == 400)

    def _dispatch(self, request: Request) -> bytes | int:
        # Everything wsrelay could not forward as it is refused here, before any route or server.
        if not H.is_token(request.method):
            raise BadRequest(f"invalid method {request.method[:40]!r}")
        path = normalize_path(request.uri)  # origin-form, visible ASCII, unambiguous (routing.py)
        raw = getattr(request, "wsrelay_raw", None)  # the channel's fields, in wire order
        if raw is None:
            raw = H.flatten(request.requestHeaders.getAllRawHeaders())
        for name, value in raw:
            problem = H.bad_field(name, value)
            if problem is not None:
                raise BadRequest(problem)
        hosts = H.get(raw, b"host")
        if len(hosts) > 1:
            raise BadRequest("more than one Host header")
        if not hosts and request.clientproto == b"HTTP/1.1":
            raise BadRequest("HTTP/1.1 request without Host (RFC 9112 section 3.2)")
        host = hosts[0] if hosts else None
        if host is not None and not _VALID_HOST.match(host):
            raise BadRequest(f"invalid Host header {host[:100]!r}")
        if not self.listener.underscores_in_headers:
            drop_underscored(request)
        tls = self.listener.tls
        if tls is not None and tls.hsts_max_age:
            request.responseHeaders.setRawHeaders(
                b"strict-transport-security", [b"max-age=%d" % tls.hsts_max_age]
            )
        if self.listener.redirect is not None:
            return self._redirect(request, host, self.listener.redirect)
        runtime = self.gateway.runtime
        route = runtime.router.match(normalize_host(host), path)
        if route is None:
            raise NotFound(f"no route for host {host!r} path {path!r}")
        request.wsrelay_route = route.name  # type: ignore[attr-defined]
        if route.redirect is not None:
            if tls is None:
                return self._redirect(request, host, route.redirect)
            # Already https: redirecting again would loop.  A route with an upstream serves it.
            if not route.upstream:
                raise NotFound(f"route {route.name} only redirects plain HTTP to https")
        if H.is_websocket_upgrade(raw):
            return self.gateway.websocket.render(request, route, runtime, self.scheme)
        return self.gateway.http.render(request, route, runtime, self.scheme)

    def _redirect(self, request: Request, host: bytes | None, status: int) -> bytes:
        if host is None:
            raise BadRequest("cannot redirect to https without a Host header")
        name = host.rsplit(b":", 1)[0] if not host.endswith(b"]") else host
        port = self.listener.redirect_port
        authority = name if port in (None, 443) else name + b":%d" % port
        # request.uri passed normalize_path: origin-form ("/..."), so it cannot change the authority.
        return answer_redirect(request, status, b"https://" + authority + request.uri)


class RelaySite(Site):
    """A listener's site: wsrelay's channel (limits, deadlines, errors) and request class,
    HTTP/1.1 only."""

    requestFactory = RelayRequest

    def __init__(self, gateway: Gateway, listener: Listener) -> None:
        # Never parse what we only forward: twisted.web would otherwise read a whole form or
        # multipart body into request.args, on the reactor, before render.
        super().__init__(RelayResource(gateway, listener), parsePOSTFormSubmission=False)
        self.gateway = gateway
        self.listener = listener
        self.displayTracebacks = False
        self.noisy = False
        self.channels: set[RelayChannel] = set()  # open client connections (until detached)

    def use(self, listener: Listener) -> None:
        """Apply a reloaded listener's settings (redirect, redirect_port, hsts_max_age) to new
        requests.  Whether it is TLS cannot change: the socket keeps its factory."""
        assert (listener.tls is None) == (self.listener.tls is None), "tls on/off needs a restart"
        self.listener = self.resource.listener = listener

    def acceptableProtocols(self) -> list[bytes]:
        # Never offer h2 through ALPN: WebSocket takeover and streaming need HTTP/1.1.
        return [b"http/1.1"]

    def buildProtocol(self, addr):  # type: ignore[no-untyped-def]
        # The limits and deadlines of the configuration in force when the connection is made.
        channel = RelayChannel(self, self.gateway.runtime.config)
        self.channels.add(channel)
        return channel

    def stopFactory(self) -> None:
        """The listener's last port stopped (wsrelay is stopping, or a reload removed it): idle
        keep-alive connections are closed at once, busy ones after the response under way."""
        super().stopFactory()
        for channel in list(self.channels):
            channel.stop_keepalive()

    def log(self, request: Request) -> None:
        # The access log is written by the handlers, which know the upstream and timing.
        pass
