"""WebSocket upgrades: the handshake, upstream first, then a message relay (or a byte tunnel).

Order of events for one client (``relay`` mode):

1. The client's handshake is checked before anything goes upstream: ``Sec-WebSocket-Version`` 13
   (else 426 with ``Sec-WebSocket-Version: 13``), a ``Sec-WebSocket-Key`` of 16 base64 bytes and
   ``GET`` (else 400), an allowed ``Origin`` (else 403), WebSocket enabled on the route (else 403).
2. wsrelay opens the upstream WebSocket (server chosen by the balancer; connect failures retry on
   the next server) with the client's target, subprotocols, and header lines (``Cookie``,
   ``Authorization``, ``Origin``, ``User-Agent``... repeated lines intact; one ``Host`` as the route
   says; X-Forwarded-*).  Extensions are negotiated per hop, never forwarded.
3. The upstream answers: a non-101 status goes to the client as that status; no connection is a
   502, no answer within ``ws_handshake_timeout`` a 504.  A 101 makes wsrelay take the client's
   connection over from twisted.web and complete the client's handshake with the subprotocol the
   upstream chose (and the upstream's other 101 headers, ``Set-Cookie`` included).
4. Messages flow through :class:`wsrelay.relay.Relay`; each transport is the other's producer, so
   a side that stops reading stops wsrelay reading from the other side.
5. The pair ends when both legs are closed: one access-log line (status 101), the lease released.

A client that leaves while step 2 is pending leaves no upstream connection behind.
"""

from __future__ import annotations

import base64
import binascii
import time
from typing import Any

import txaio
from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
    WebSocketServerFactory,
    WebSocketServerProtocol,
)
from autobahn.util import encode_truncate
from autobahn.websocket.compress import (
    PerMessageDeflateOffer,
    PerMessageDeflateOfferAccept,
    PerMessageDeflateResponse,
    PerMessageDeflateResponseAccept,
)
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.types import ConnectingRequest
from twisted.internet import error as neterror
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper
from twisted.python.failure import Failure
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from wsrelay import headers as H
from wsrelay.accesslog import format_line
from wsrelay.answers import answer_error
from wsrelay.config import Route, Upstream
from wsrelay.connect import upstream_endpoint
from wsrelay.errors import (
    CLOSE_GOING_AWAY,
    BadGateway,
    BadRequest,
    Forbidden,
    GatewayTimeout,
    ProxyError,
    UpgradeRequired,
)
from wsrelay.metrics import WebSocketMetrics
from wsrelay.relay import CLIENT, UPSTREAM, Relay

log = Logger()

#: Handshake fields each hop negotiates itself; never copied from one hop to the other.
HANDSHAKE_FIELDS = frozenset({
    b"sec-websocket-key", b"sec-websocket-version", b"sec-websocket-extensions",
    b"sec-websocket-protocol", b"sec-websocket-accept", b"origin", b"user-agent",
})


def check_handshake(request: Request, route: Route, raw: list[tuple[bytes, bytes]]) -> list[bytes]:
    """Validate the client's opening handshake (RFC 6455 section 4.2.1); return its subprotocols."""
    if not route.websocket.enabled:
        raise Forbidden(f"WebSocket is off on route {route.name}")
    if request.method != b"GET" or request.clientproto != b"HTTP/1.1":
        raise BadRequest("a WebSocket handshake must be GET over HTTP/1.1")
    versions = H.get(raw, b"sec-websocket-version")
    if [v.strip() for v in versions] != [b"13"]:
        raise UpgradeRequired(f"unsupported Sec-WebSocket-Version {versions!r}",
                              headers={b"Sec-WebSocket-Version": b"13"})
    keys = H.get(raw, b"sec-websocket-key")
    try:
        valid_key = len(keys) == 1 and len(base64.b64decode(keys[0].strip(), validate=True)) == 16
    except (binascii.Error, ValueError):
        valid_key = False
    if not valid_key:
        raise BadRequest("missing or invalid Sec-WebSocket-Key")
    allowed = route.websocket.allowed_origins
    if allowed != ("*",):
        origins = H.get(raw, b"origin")
        if len(origins) != 1 or origins[0].strip().lower().decode("latin-1") not in allowed:
            raise Forbidden(f"Origin {origins[:1]!r} is not allowed on route {route.name}")
    return [p.strip() for v in H.get(raw, b"sec-websocket-protocol") for p in v.split(b",") if p.strip()]


def _accept_deflate(offers: list[Any]) -> Any:
    for offer in offers:
        if isinstance(offer, PerMessageDeflateOffer):
            return PerMessageDeflateOfferAccept(offer)
    return None


def _accept_deflate_response(response: Any) -> Any:
    if isinstance(response, PerMessageDeflateResponse):
        return PerMessageDeflateResponseAccept(response)
    return None


def _reason_text(reason: Failure | BaseException | str) -> str:
    if isinstance(reason, Failure):
        return reason.getErrorMessage() or reason.type.__name__
    return str(reason)


@implementer(IPushProducer)
class _Pauser:
    """Registered as a transport's producer: pauses and resumes the other leg's reading.

    ``stopProducing`` does nothing on purpose: when one transport dies, the relay closes the other
    leg with a close frame instead of the bare TCP close Twisted would otherwise do.
    """

    def __init__(self, transport: Any) -> None:
        self.transport = transport

    def pauseProducing(self) -> None:
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        pass


class _Leg:
    """Mixin for both legs: streams frames into the relay, and implements relay.Leg."""

    side: str
    pair: _Pair | None = None
    opened = False

    # -- receiving (Autobahn callbacks) ------------------------------------------------------

    def onMessageBegin(self, isBinary: bool) -> None:
        super().onMessageBegin(isBinary)  # type: ignore[misc]
        if self.pair is not None:
            self.pair.relay.message_begin(self.side, isBinary)

    def onMessageFrameData(self, payload: bytes) -> None:
        # Not calling super: it would collect the whole message.
        if self.pair is not None:
            self.pair.relay.message_data(self.side, payload)

    def onMessageFrameEnd(self) -> None:
        pass

    def onMessageEnd(self) -> None:
        self.message_data = None
        if self.pair is not None and not self.failedByMe:  # type: ignore[attr-defined]
            self.pair.relay.message_end(self.side)

    def onCloseFrame(self, code: int | None, reasonRaw: bytes | None) -> Any:
        failed = super().onCloseFrame(code, reasonRaw)  # type: ignore[misc]
        # A close frame Autobahn rejected (reserved code, invalid UTF-8 reason) is not forwarded:
        # this leg is failed with 1002/1007 and the other leg is closed as for a lost leg.
        if self.pair is not None and not failed:
            self.pair.relay.close_received(self.side, self.remoteCloseCode,  # type: ignore[attr-defined]
                                           self.remoteCloseReason or "")  # type: ignore[attr-defined]
        return failed

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self.pair is not None:
            self.pair.leg_closed(self, wasClean, code, reason)

    # -- sending (relay.Leg) ----------------------------------------------------------------

    def relay_is_open(self) -> bool:
        return self.opened

    def relay_message(self, payload: bytes, binary: bool) -> None:
        if self.state == WebSocketProtocol.STATE_OPEN:  # type: ignore[attr-defined]
            self.sendMessage(payload, binary)  # type: ignore[attr-defined]

    def relay_begin(self, binary: bool) -> None:
        if self.state == WebSocketProtocol.STATE_OPEN:  # type: ignore[attr-defined]
            self.beginMessage(binary)  # type: ignore[attr-defined]

    def relay_frame(self, payload: bytes) -> None:
        if self.state == WebSocketProtocol.STATE_OPEN:  # type: ignore[attr-defined]
            self.sendMessageFrame(payload)  # type: ignore[attr-defined]

    def relay_end(self) -> None:
        if self.state == WebSocketProtocol.STATE_OPEN:  # type: ignore[attr-defined]
            self.endMessage()  # type: ignore[attr-defined]

    def relay_close(self, code: int | None, reason: str) -> None:
        if self.state == WebSocketProtocol.STATE_OPEN:  # type: ignore[attr-defined]
            self.sendCloseFrame(code, encode_truncate(reason, 123) if code is not None and reason else None)  # type: ignore[attr-defined]
        elif self.state in (WebSocketProtocol.STATE_CONNECTING,):  # type: ignore[attr-defined]
            self.dropConnection(abort=True)  # type: ignore[attr-defined]


class ClientLeg(_Leg, WebSocketServerProtocol):
    """The leg toward the client (wsrelay is the WebSocket server)."""

    side = CLIENT

    def onConnect(self, request: Any) -> Any:
        assert self.pair is not None
        return self.pair.client_accept()

    def onOpen(self) -> None:
        self.opened = True
        if self.pair is not None:
            self.pair.client_opened()


class UpstreamLeg(_Leg, WebSocketClientProtocol):
    """The leg toward the upstream (wsrelay is the WebSocket client)."""

    side = UPSTREAM
    _handshake_sent = False

    def onConnecting(self, transport_details: Any) -> ConnectingRequest:
        assert self.pair is not None
        pair = self.pair
        server = pair.lease.server
        return ConnectingRequest(host=server.host, port=server.port, resource=pair.request.uri.decode("latin-1"),
                                 headers={}, useragent=None, origin=None,
                                 protocols=[p.decode("latin-1") for p in pair.protocols])

    def sendData(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:
        if not self._handshake_sent and self.pair is not None:
            # Autobahn's handshake bytes: keep its own WebSocket lines, put our Host and the
            # client's header lines (repeated lines intact) in place of what it would write.
            self._handshake_sent = True
            data = self.pair.rewrite_handshake(data)
        super().sendData(data, sync, chopsize)

    def onConnect(self, response: Any) -> None:
        if self.pair is not None:
            self.pair.upstream_response = response

    def onOpen(self) -> None:
        self.opened = True
        if self.pair is not None:
            self.pair.upstream_opened(self)

    def failHandshake(self, reason: str) -> None:
        if self.pair is not None:
            self.pair.upstream_refused(self, reason)
        super().failHandshake(reason)


class _UpstreamFactory:
    """One connection's view of the route's client factory (shares its options)."""

    def __init__(self, base: WebSocketClientFactory, pair: _Pair) -> None:
        self._base = base
        self.pair = pair
        # Autobahn checks the upstream's chosen subprotocol against the factory's list.
        self.protocols = [p.decode("latin-1") for p in pair.protocols]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._base, name)

    def buildProtocol(self, addr: Any) -> UpstreamLeg:
        proto = UpstreamLeg()
        proto.factory = self
        proto.pair = self.pair
        return proto


class _Pair:
    """One client WebSocket and its upstream WebSocket, from handshake to the last close."""

    def __init__(self, gw: WebSocketGateway, request: Request, route: Route, upstream: Upstream, scheme: str,
                 raw: list[tuple[bytes, bytes]], protocols: list[bytes]) -> None:
        self.gw = gw
        self.reactor = gw.gateway.reactor
        self.request = request
        self.route = route
        self.upstream = upstream
        self.scheme = scheme
        self.raw = raw
        self.protocols = protocols
        self.client_ip = getattr(request.getClientAddress(), "host", "127.0.0.1")
        self.tried: list[str] = []
        self.lease: Any = None
        self.connecting: Any = None
        self.upstream_leg: UpstreamLeg | None = None
        self.client_leg: ClientLeg | None = None
        self.upstream_response: Any = None
        self.relay = Relay(self, self, on_message=self._on_message)  # legs replaced below
        self.timer: Any = None
        self.idle_timer: Any = None
        self.started = time.monotonic()
        self.answered = False
        self.ended = False
        self.closed_legs: set[str] = set()
        self.client_bytes = 0

    # -- handshake -------------------------------------------------------------------------

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
        factory = _UpstreamFactory(self.gw.client_factory(self.route, self.upstream), self)
        endpoint = upstream_endpoint(self.reactor, self.upstream, server, self.route.connect_timeout)
        self.connecting = endpoint.connect(factory)
        self.connecting.addErrback(self.connect_failed)

    def connect_failed(self, reason: Failure) -> None:
        self.connecting = None
        if self.answered:
            return
        self.lease.failure("connect error")
        self.lease.release()
        self.lease = None
        if len(self.tried) <= self.route.retries:
            log.info("route {route}: {server} unreachable ({reason}); trying another server",
                     route=self.route.name, server=self.tried[-1], reason=_reason_text(reason))
            self.connect()
            return
        timeout = reason.check(neterror.TimeoutError) is not None
        error = (GatewayTimeout if timeout else BadGateway)(f"WebSocket upstream unreachable: {_reason_text(reason)}")
        self.refuse(error)

    def rewrite_handshake(self, data: bytes) -> bytes:
        head, _, rest = data.partition(b"\r\n\r\n")
        request_line, *lines = head.split(b"\r\n")
        server = self.lease.server
        ours = H.request_to_upstream(self.raw, client_ip=self.client_ip, scheme=self.scheme,
                                     host_header=self.route.host_header, upstream_hostport=server.hostport,
                                     drop=HANDSHAKE_FIELDS | {b"cookie2"})
        keep = [line for line in lines if line.split(b":", 1)[0].strip().lower() not in
                {b"host", b"pragma", b"cache-control"}]
        passed = [name + b": " + value for name, value in ours]
        for name in (b"origin", b"user-agent"):
            passed += [name.title() + b": " + v for v in H.get(self.raw, name)]
        return b"\r\n".join([request_line, *passed, *keep]) + b"\r\n\r\n" + rest

    def upstream_refused(self, leg: UpstreamLeg, reason: str) -> None:
        status_line = getattr(leg, "http_status_line", "") or ""
        parts = status_line.split(" ", 2)
        status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 502
        if status == 101:
            status = 502  # a 101 that failed our checks (bad accept, unoffered subprotocol)
        if self.lease is not None:
            if status >= 500 and status in self.upstream.fail_statuses:
                self.lease.failure(f"status {status}")
        error: ProxyError
        if status < 400:
            error = BadGateway(f"upstream answered the WebSocket handshake with {status_line!r}: {reason}")
        else:
            error = ProxyError(f"upstream refused the WebSocket handshake: {status_line!r}")
            error.status = status
            error.reason = (parts[2] if len(parts) > 2 else "Refused")[:60]
        log.warn("route {route} upstream {upstream} server {server}: WebSocket handshake refused: {detail}",
                 route=self.route.name, upstream=self.upstream.name, server=self.tried[-1], detail=reason)
        self.refuse(error)

    def upstream_opened(self, leg: UpstreamLeg) -> None:
        if self.answered:  # the client left, or we already answered: end this leg politely
            leg.sendCloseFrame(CLOSE_GOING_AWAY, b"client went away")
            return
        self.lease.success()
        self.upstream_leg = leg
        self.take_over()

    def client_accept(self) -> Any:
        """The client leg's onConnect: the subprotocol the upstream chose, and its 101 headers."""
        response = self.upstream_response
        chosen = getattr(response, "protocol", None) if response is not None else None
        extra: dict[str, Any] = {}
        raw = self.upstream_leg.http_response_data if self.upstream_leg is not None else b""
        for line in raw.split(b"\r\n")[1:]:
            name, sep, value = line.partition(b":")
            key = name.strip().lower()
            if not sep or key in H.HOP_BY_HOP or key.startswith(b"sec-websocket-") or key in {b"date", b"server"}:
                continue
            extra.setdefault(name.strip().decode("latin-1"), []).append(value.strip().decode("latin-1"))
        cookie = self.lease.set_cookie() if self.lease is not None else None
        if cookie is not None:
            extra.setdefault("Set-Cookie", []).append(cookie.decode("latin-1"))
        return (chosen, extra) if extra else chosen

    def take_over(self) -> None:
        """Hand the client's connection from twisted.web to the client leg."""
        request = self.request
        channel = request.channel
        transport = channel.transport
        if transport is None or not transport.connected:
            self.client_left_early()
            return
        self.answered = True
        self.cancel_timer()
        request.wsrelay_websocket = True  # type: ignore[attr-defined]
        leg = self.gw.server_factory(self.route).buildProtocol(transport.getPeer())
        leg.pair = self
        self.client_leg = leg
        self.relay = Relay(leg, self.upstream_leg, on_message=self._on_message)  # type: ignore[arg-type]
        pending = b"".join(channel._dataBuffer)
        channel._dataBuffer = []
        channel.transport = None
        transport.unregisterProducer()  # twisted.web's channel was the transport's producer
        if isinstance(transport, ProtocolWrapper):
            transport.wrappedProtocol = leg
        elif isinstance(getattr(transport, "protocol", None), ProtocolWrapper):
            transport.protocol.wrappedProtocol = leg
        else:
            transport.protocol = leg
        leg.makeConnection(transport)
        transport.resumeProducing()
        head = [request.method + b" " + request.uri + b" HTTP/1.1"]
        head += [name + b": " + value for name, value in self.raw]
        leg.dataReceived(b"\r\n".join(head) + b"\r\n\r\n" + pending)

    def client_opened(self) -> None:
        client, upstream = self.client_leg, self.upstream_leg
        assert client is not None and upstream is not None
        client.transport.registerProducer(_Pauser(upstream.transport), True)
        upstream.transport.registerProducer(_Pauser(client.transport), True)
        self.relay.leg_opened(CLIENT)
        self.relay.leg_opened(UPSTREAM)
        if self.route.websocket.idle_timeout:
            self.idle_timer = self.reactor.callLater(self.route.websocket.idle_timeout, self.check_idle)
        self.gw.metrics.opened(self.route.name)

    def _on_message(self, source: str, size: int) -> None:
        self.relay.last_activity = self.reactor.seconds()
        self.gw.metrics.message(self.route.name, source, size)
        if source == UPSTREAM:
            self.client_bytes += size

    def check_idle(self) -> None:
        idle = self.route.websocket.idle_timeout
        assert idle is not None
        quiet = self.reactor.seconds() - max(self.relay.last_activity, 0.0)
        if self.relay.last_activity and quiet < idle:
            self.idle_timer = self.reactor.callLater(idle - quiet, self.check_idle)
            return
        if not self.relay.last_activity and self.reactor.seconds() - self._opened_at() < idle:
            self.idle_timer = self.reactor.callLater(idle, self.check_idle)
            return
        self.idle_timer = None
        log.info("route {route}: WebSocket idle for {idle}s, closing both sides", route=self.route.name, idle=idle)
        self.relay.close_both(CLOSE_GOING_AWAY, "idle timeout")

    def _opened_at(self) -> float:
        if not hasattr(self, "_opened"):
            self._opened = self.reactor.seconds()
        return self._opened

    # -- endings ---------------------------------------------------------------------------

    def handshake_timed_out(self) -> None:
        self.timer = None
        if self.answered:
            return
        self.refuse(GatewayTimeout(f"no WebSocket handshake from upstream within "
                                   f"{self.route.websocket.handshake_timeout}s"))

    def cancel_timer(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None

    def abort_upstream(self) -> None:
        if self.connecting is not None and not self.connecting.called:
            self.connecting.cancel()
        leg = self.upstream_leg or None
        if leg is None and self.connecting is not None and self.connecting.called:
            leg = getattr(self.connecting, "result", None)
        if leg is not None and getattr(leg, "transport", None) is not None:
            leg.pair = None
            leg.transport.abortConnection()

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
        if request.channel is not None and not request.finished:
            request.write(answer_error(request, error))
            request.finish()
        self.end()

    def client_left_early(self) -> None:
        """The client disconnected before its 101."""
        if self.answered:
            return
        self.answered = True
        self.cancel_timer()
        self.abort_upstream()
        self.end()

    def leg_closed(self, leg: _Leg, clean: bool, code: int | None, reason: str | None) -> None:
        side = leg.side
        if side in self.closed_legs:
            return
        self.closed_legs.add(side)
        if side == UPSTREAM and self.client_leg is None:
            # Before the client's 101: the upstream went away during or right after its handshake.
            if not self.answered:
                self.refuse(BadGateway(f"upstream closed during the handshake: {reason}"))
            return
        if not clean:
            log.info("route {route}: {side} leg lost ({reason})", route=self.route.name, side=side, reason=reason)
        self.gw.metrics.closed(self.route.name, side, self.relay.close_codes.get(side))
        self.relay.leg_closed(side, clean)
        other = self.upstream_leg if side == CLIENT else self.client_leg
        if other is not None and other.state == WebSocketProtocol.STATE_CONNECTING:
            other.dropConnection(abort=True)
        if {CLIENT, UPSTREAM} <= self.closed_legs:
            self.end()

    def end(self) -> None:
        if self.ended:
            return
        self.ended = True
        if self.idle_timer is not None and self.idle_timer.active():
            self.idle_timer.cancel()
        if self.lease is not None:
            self.lease.release()
        if self.client_leg is not None:
            request = self.request
            self.gw.gateway.access_log.write(format_line(
                client=self.client_ip, when=time.time(), method=request.method, target=request.uri,
                protocol=request.clientproto, status=101, sent=self.client_bytes,
                referer=request.getHeader(b"referer"), user_agent=request.getHeader(b"user-agent"),
                upstream=self.lease.server.hostport if self.lease is not None else None,
                duration=time.monotonic() - self.started,
            ))
            self.gw.metrics.ended(self.route.name)
        self.gw.gateway.closed(self)

    def shutdown(self) -> None:
        """wsrelay is stopping: close both legs with 1001."""
        if self.client_leg is None:
            self.refuse(ProxyError("shutting down"))
            return
        self.relay.close_both(CLOSE_GOING_AWAY, "server shutting down")


class WebSocketGateway:
    """Takes WebSocket upgrade requests of a route and relays them to its upstream group."""

    def __init__(self, gateway: Any) -> None:
        self.gateway = gateway
        txaio.use_twisted()
        txaio.config.loop = gateway.reactor  # Autobahn's timers go through txaio's loop
        self.metrics = WebSocketMetrics()
        self._server_factories: dict[Route, WebSocketServerFactory] = {}
        self._client_factories: dict[tuple[Route, Upstream], WebSocketClientFactory] = {}

    def server_factory(self, route: Route) -> WebSocketServerFactory:
        factory = self._server_factories.get(route)
        if factory is None:
            ws = route.websocket
            factory = WebSocketServerFactory(server=None, reactor=self.gateway.reactor)
            factory.protocol = ClientLeg
            factory.noisy = False
            factory.setProtocolOptions(
                webStatus=False, failByDrop=False, echoCloseCodeReason=True,
                maxFramePayloadSize=ws.max_frame_size, maxMessagePayloadSize=ws.max_message_size,
                autoPingInterval=ws.ping_interval or 0, autoPingTimeout=ws.ping_timeout,
                openHandshakeTimeout=ws.handshake_timeout, closeHandshakeTimeout=5,
                perMessageCompressionAccept=_accept_deflate if ws.compression else (lambda offers: None),
                tcpNoDelay=True,
            )
            self._server_factories = {r: f for r, f in self._server_factories.items()
                                      if r in self.gateway.runtime.config.routes}
            self._server_factories[route] = factory
        return factory

    def client_factory(self, route: Route, upstream: Upstream) -> WebSocketClientFactory:
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
                autoPingInterval=ws.ping_interval or 0, autoPingTimeout=ws.ping_timeout,
                openHandshakeTimeout=ws.handshake_timeout, closeHandshakeTimeout=5,
                serverConnectionDropTimeout=2,
                perMessageCompressionOffers=[PerMessageDeflateOffer()] if ws.upstream_compression else [],
                perMessageCompressionAccept=_accept_deflate_response,
                tcpNoDelay=True,
            )
            routes = self.gateway.runtime.config.routes
            self._client_factories = {k: f for k, f in self._client_factories.items() if k[0] in routes}
            self._client_factories[key] = factory
        return factory

    def render(self, request: Request, route: Route, runtime: Any, scheme: str) -> bytes | int:
        raw = H.flatten(request.requestHeaders.getAllRawHeaders())
        protocols = check_handshake(request, route, raw)
        upstream = runtime.config.upstreams[route.upstream]
        if route.websocket.mode == "tunnel":
            from wsrelay.tunnel import Tunnel

            Tunnel(self, request, route, upstream, scheme, raw).start()
        else:
            _Pair(self, request, route, upstream, scheme, raw, protocols).start()
        return NOT_DONE_YET
