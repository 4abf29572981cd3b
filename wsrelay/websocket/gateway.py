"""The WebSocket side of the gateway: Autobahn factories per route, and each upgrade request
handed to a relayed :class:`~wsrelay.websocket.pair.Pair` or a :class:`~wsrelay.tunnel.Tunnel`."""

from __future__ import annotations

from typing import Any

import txaio
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketServerFactory
from autobahn.websocket.compress import PerMessageDeflateOffer
from twisted.logger import Logger
from twisted.web.server import NOT_DONE_YET, Request

from wsrelay import headers as H
from wsrelay.bucket import Throttle
from wsrelay.config import Route, Upstream
from wsrelay.errors import ProxyError
from wsrelay.handshake import check_handshake
from wsrelay.upgrade import CLOSE_HANDSHAKE_TIMEOUT
from wsrelay.websocket.legs import (
    ClientLeg,
    UpstreamLeg,
    _accept_deflate,
    _accept_deflate_response,
    install_lazy_debug,
)
from wsrelay.websocket.pair import Pair

log = Logger()


class WebSocketGateway:
    """Takes WebSocket upgrade requests of a route and relays them to its upstream group."""

    def __init__(self, gateway: Any) -> None:
        self.gateway = gateway
        txaio.use_twisted()
        txaio.config.loop = gateway.reactor  # Autobahn's timers go through txaio's loop
        install_lazy_debug()  # no pretty-printing per connection for debug lines nobody writes
        self.metrics = gateway.metrics.websocket  # outlives reloads, as the gateway
        self.rate_closes = 0  # clients closed (1008) for going over ws_max_message_rate
        self._rate_lines = Throttle(5.0)
        self._server_factories: dict[Route, WebSocketServerFactory] = {}
        self._client_factories: dict[tuple[Route, Upstream], WebSocketClientFactory] = {}

    def server_factory(self, route: Route) -> WebSocketServerFactory:
        """The route's factory for client legs (options from the route; built once per route)."""
        factory = self._server_factories.get(route)
        if factory is None:
            ws = route.websocket
            factory = WebSocketServerFactory(server=None, reactor=self.gateway.reactor)
            factory.protocol = ClientLeg
            factory.noisy = False
            factory.setProtocolOptions(
                webStatus=False, failByDrop=False, echoCloseCodeReason=True,
                maxFramePayloadSize=ws.max_frame_size, maxMessagePayloadSize=ws.max_message_size,
                autoPingInterval=ws.ping_interval or 0, autoPingTimeout=ws.ping_timeout if ws.ping_interval else 0,
                openHandshakeTimeout=ws.handshake_timeout, closeHandshakeTimeout=CLOSE_HANDSHAKE_TIMEOUT,
                perMessageCompressionAccept=_accept_deflate if ws.compression else (lambda offers: None),
                tcpNoDelay=True,
                # Origin policy is handshake.check_handshake's (ws_allowed_origins), decided before
                # any upstream is contacted; Autobahn's own default refuses "null" after that.
                allowNullOrigin=True,
            )
            self._server_factories = {r: f for r, f in self._server_factories.items()
                                      if r in self.gateway.runtime.config.routes}
            self._server_factories[route] = factory
        return factory

    def client_factory(self, route: Route, upstream: Upstream) -> WebSocketClientFactory:
        """The route's factory for upstream legs."""
        key = (route, upstream)
        factory = self._client_factories.get(key)
        if factory is None:
            ws = route.websocket
            factory = WebSocketClientFactory(reactor=self.gateway.reactor, useragent=None)
            factory.protocol = UpstreamLeg
            factory.noisy = False
            factory.setProtocolOptions(
                failByDrop=False, echoCloseCodeReason=True,
                maxFramePayloadSize=ws.max_frame_size, maxMessagePayloadSize=ws.max_message_size,
                autoPingInterval=ws.ping_interval or 0, autoPingTimeout=ws.ping_timeout if ws.ping_interval else 0,
                # wsrelay's own timer answers 504 first; this one only stops a connection left over
                openHandshakeTimeout=ws.handshake_timeout + 1, closeHandshakeTimeout=CLOSE_HANDSHAKE_TIMEOUT,
                serverConnectionDropTimeout=2,
                perMessageCompressionOffers=[PerMessageDeflateOffer()] if ws.upstream_compression else [],
                perMessageCompressionAccept=_accept_deflate_response,
                tcpNoDelay=True,
            )
            routes = self.gateway.runtime.config.routes
            self._client_factories = {k: f for k, f in self._client_factories.items() if k[0] in routes}
            self._client_factories[key] = factory
        return factory

    def over_rate(self, pair: Pair) -> None:
        """``pair``'s client went over its route's ``ws_max_message_rate``: counted, and one log line
        (no more than one every 5 s for all routes, with how many were held back)."""
        self.rate_closes += 1
        held = self._rate_lines.allow(self.gateway.reactor.seconds())
        if held is None:
            return
        ws = pair.route.websocket
        log.info("route {route}: client {client} sent messages faster than ws_max_message_rate ({rate:g}/s, burst"
                 " {burst}): closed with 1008, its upstream with 1001{more}", route=pair.route.name,
                 client=pair.client_ip or "unix", rate=ws.max_message_rate, burst=ws.message_burst,
                 more=f" ({held} more since the last such line)" if held else "")

    def render(self, request: Request, route: Route, runtime: Any, scheme: str) -> bytes | int:
        raw = H.flatten(request.requestHeaders.getAllRawHeaders())
        try:
            protocols = check_handshake(request, route, raw)
        except ProxyError as e:  # answered by the site
            self.metrics.refused(route.name, e.status)
            raise
        upstream = runtime.config.upstreams[route.upstream]
        if route.websocket.mode == "tunnel":
            from wsrelay.tunnel import Tunnel

            Tunnel(self, request, route, upstream, scheme, raw).start()
        else:
            Pair(self, request, route, upstream, scheme, raw, protocols).start()
        return NOT_DONE_YET
