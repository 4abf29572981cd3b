"""WebSocket upgrades: the handshake, upstream first, then a message relay (or a byte tunnel).

Order of events for one client (``relay`` mode):

1. The client's handshake is checked before anything goes upstream (:func:`check_handshake`):
   WebSocket enabled on the route (else 403, chosen over 400 because the request is well formed
   but not allowed there), ``GET`` over HTTP/1.1 and no URI fragment (else 400),
   ``Sec-WebSocket-Version`` 13 (else 426 with ``Sec-WebSocket-Version: 13``), one
   ``Sec-WebSocket-Key`` of 16 base64 bytes (else 400), at most one valid ``Origin`` (else 400)
   that the route allows (else 403), distinct valid subprotocol tokens (else 400).
2. wsrelay opens the upstream WebSocket (server chosen by the balancer; connect failures retry on
   the next server, ``retries`` times within ``retry_timeout``) with the client's request target
   byte for byte, its subprotocols, and its header lines from twisted.web (``Cookie``,
   ``Authorization``, ``Origin``, ``User-Agent``... repeated lines intact; one ``Host`` as the
   route says; X-Forwarded-*).  Extensions are negotiated per hop, never forwarded.
3. The upstream answers: a final status (2xx to 5xx) goes to the client as that status with the
   upstream's end-to-end fields (``Location``, ``WWW-Authenticate``, ``Retry-After``,
   ``Set-Cookie``...; see :func:`wsrelay.upgrade.refusal`); a 1xx, and a 101 that fails
   Autobahn's checks, are a 502; no connection is a 502 (504 for a connect timeout), no answer
   within ``ws_handshake_timeout`` a 504.  A 101 makes wsrelay take the
   client's connection over from twisted.web (with any bytes the client pipelined) and complete
   the client's handshake with the subprotocol the upstream chose, the upstream's other 101
   headers and the balancer's ``Set-Cookie``.
4. Messages flow through :class:`wsrelay.relay.Relay` frame by frame; the closing handshake is end
   to end (a peer's close is answered with the other peer's answer).  A side whose socket
   buffer is full stops wsrelay reading from the other side (back-pressure) and from that side
   itself (a peer that pings and never reads gets no unbounded queue of pongs), see
   :mod:`wsrelay.flow`.
5. A side lost without a close frame: the other gets 1001 (toward the upstream) or 1011 (toward
   the client; 1014 "bad gateway" would be more precise, but Autobahn-based clients refuse it as
   a protocol error).  Ping timeouts (``ws_ping_interval``/``ws_ping_timeout``, per hop) count as
   lost, except while wsrelay itself stopped reading that side for back-pressure.  Protocol
   errors get 1002/1007/1009 on their own hop and end only their own pair.
6. The pair ends when both legs are closed: one access-log line (status 101, payload bytes sent
   to the client), the balancer lease released, :meth:`Gateway.closed`.

A client that leaves while step 2 is pending leaves no upstream connection behind.
"""

from __future__ import annotations

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
from autobahn.websocket.utf8validator import Utf8Validator
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import NOT_DONE_YET, Request

from wsrelay import headers as H
from wsrelay import masking
from wsrelay.config import Route, Upstream
from wsrelay.errors import CLOSE_GOING_AWAY, BadGateway
from wsrelay.flow import OWN_FULL, PEER_FULL, BufferWatch, ReadGate
from wsrelay.handshake import HANDSHAKE_FIELDS, check_handshake
from wsrelay.inflate import SteppedInflate
from wsrelay.metrics import WebSocketMetrics
from wsrelay.relay import (
    CLIENT,
    UPSTREAM,
    Abort,
    Action,
    BeginMessage,
    EndMessage,
    Relay,
    SendClose,
    SendFrame,
    SendMessage,
)
from wsrelay.upgrade import CLOSE_HANDSHAKE_TIMEOUT, Upgrade

log = Logger()

def _accept_deflate(offers: list[Any]) -> Any:
    for offer in offers:
        if isinstance(offer, PerMessageDeflateOffer):
            return PerMessageDeflateOfferAccept(offer)
    return None


def _accept_deflate_response(response: Any) -> Any:
    if isinstance(response, PerMessageDeflateResponse):
        return PerMessageDeflateResponseAccept(response)
    return None


class _Leg(SteppedInflate):
    """Mixin for both legs: feeds Autobahn's frame-level events to the relay, performs its actions.

    Autobahn's own message buffering is bypassed (``onMessageFrameData`` does not call the base),
    but its checks stay: frame and message size limits (``onMessageFrameBegin``), UTF-8 and
    inflation checks, close-frame validation.  A close frame from the peer is not answered by
    Autobahn: the relay answers it once the other side has (relay rule 3).
    """

    side: str
    pair: _Pair | None = None
    gate: ReadGate | None = None  # why wsrelay stopped reading this peer (set once both legs are open)
    peer_closed = False  # the peer sent a close frame that waits for the other side's answer
    _in_size = 0

    # -- flow control (see wsrelay.flow) -----------------------------------------------------

    @property
    def read_paused(self) -> bool:
        """wsrelay stopped reading this peer because the other side is slow (not this peer's doing)."""
        return self.gate is not None and PEER_FULL in self.gate.reasons

    def pause_reading(self) -> None:
        if self.transport is not None:  # type: ignore[attr-defined]
            self.transport.pauseProducing()  # type: ignore[attr-defined]

    def resume_reading(self) -> None:
        if self.transport is not None:  # type: ignore[attr-defined]
            self.transport.resumeProducing()  # type: ignore[attr-defined]
        self.resume_inflation()

    def inflate_must_wait(self) -> bool:
        return self.gate is not None and self.gate.paused

    # -- receiving (Autobahn callbacks) ------------------------------------------------------

    def onMessageBegin(self, isBinary: bool) -> None:
        super().onMessageBegin(isBinary)  # type: ignore[misc]
        self._in_size = 0
        if self.pair is not None:
            self.pair.feed(self.pair.relay.message_begin(self.side, isBinary))

    def onMessageFrameData(self, payload: bytes) -> None:
        # Not calling the base class: it would keep the whole message.
        if self.pair is not None and not self.failedByMe:  # type: ignore[attr-defined]
            self._in_size += len(payload)
            self.pair.last_activity = self.pair.reactor.seconds()
            self.pair.feed(self.pair.relay.frame_data(self.side, payload))

    def onMessageFrameEnd(self) -> None:
        self.frame_data = None
        frame = self.current_frame  # type: ignore[attr-defined]
        if self.pair is not None and not self.failedByMe and frame is not None and not frame.fin:  # type: ignore[attr-defined]
            self.pair.feed(self.pair.relay.frame_end(self.side))

    def onMessageEnd(self) -> None:
        self.message_data = None
        if self.pair is not None and not self.failedByMe:  # type: ignore[attr-defined]
            self.pair.message_ended(self.side, self._in_size)

    def onCloseFrame(self, code: int | None, reasonRaw: bytes | None) -> Any:
        pair = self.pair
        if pair is None or self.state != WebSocketProtocol.STATE_OPEN:  # type: ignore[attr-defined]
            # An answer to a close wsrelay sent (or a closing handshake Autobahn runs alone).
            answer = self.state == WebSocketProtocol.STATE_CLOSING and not self.failedByMe  # type: ignore[attr-defined]
            failed = super().onCloseFrame(code, reasonRaw)  # type: ignore[misc]
            if pair is not None and answer and not failed and not self.failedByMe:  # type: ignore[attr-defined]
                pair.close_received(self.side, self.remoteCloseCode, self.remoteCloseReason or "")  # type: ignore[attr-defined]
            return failed
        # The peer starts the closing handshake.  An invalid code or reason is Autobahn's to
        # refuse (1002/1007, seen by the relay as a failure); a valid one is forwarded and
        # answered later.
        if code is not None and (code < 1000 or code >= 5000 or (
                code <= 2999 and code not in WebSocketProtocol.CLOSE_STATUS_CODES_ALLOWED)):
            return super().onCloseFrame(code, reasonRaw)  # type: ignore[misc]
        reason = ""
        if reasonRaw is not None:
            valid, ended, _, _ = Utf8Validator().validate(reasonRaw)
            if not (valid and ended):
                return super().onCloseFrame(code, reasonRaw)  # type: ignore[misc]
            reason = reasonRaw.decode("utf-8")
        self.remoteCloseCode, self.remoteCloseReason = code, reason or None
        self.wasClean = True
        self.peer_closed = True
        pair.close_received(self.side, code, reason)
        return None

    def onPing(self, payload: bytes) -> None:
        # RFC 6455 section 5.5.1: after a close frame the peer sends nothing; a ping it sends
        # anyway is not answered while its close waits for the other side's answer.
        if not self.peer_closed:
            super().onPing(payload)  # type: ignore[misc]

    def _fail_connection(self, code: int = CLOSE_GOING_AWAY, reason: str = "going away") -> None:
        first = self.state != WebSocketProtocol.STATE_CLOSED and not self.failedByMe  # type: ignore[attr-defined]
        super()._fail_connection(code, reason)  # type: ignore[misc]
        if first and self.pair is not None:
            self.pair.failed(self.side, code)

    def onAutoPingTimeout(self) -> None:
        if self.read_paused:
            # wsrelay itself stopped reading this peer (the other side is slow): its pong may be
            # waiting unread.  Not a dead peer; check again later.  (A peer that does not read
            # what wsrelay sends it is not excused: that is its own doing.)
            self.autoPingTimeoutCall = txaio.call_later(self.autoPingTimeout, self.onAutoPingTimeout)  # type: ignore[attr-defined]
            return
        super().onAutoPingTimeout()  # type: ignore[misc]

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self.pair is not None:
            self.pair.leg_closed(self, wasClean, reason)

    # -- sending (the relay's actions) ------------------------------------------------------

    def sendData(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:
        # Autobahn's sendData builds the arguments of a debug log call for every write, whether
        # debug logging is on or not (3-4 % of relay-mode CPU with small messages).  The common
        # case, an immediate write, goes straight to the transport with the same bookkeeping.
        if sync or chopsize or self.send_queue or self.logOctets:  # type: ignore[attr-defined]
            super().sendData(data, sync, chopsize)  # type: ignore[misc]
            return
        self.transport.write(data)  # type: ignore[attr-defined]
        state = self.state  # type: ignore[attr-defined]
        if state == WebSocketProtocol.STATE_OPEN:
            self.trafficStats.outgoingOctetsWireLevel += len(data)  # type: ignore[attr-defined]
        elif state in (WebSocketProtocol.STATE_CONNECTING, WebSocketProtocol.STATE_PROXY_CONNECTING):
            self.trafficStats.preopenOutgoingOctetsWireLevel += len(data)  # type: ignore[attr-defined]

    def perform(self, action: Action) -> None:
        if isinstance(action, Abort):
            if self.transport is not None:  # type: ignore[attr-defined]
                self.dropConnection(abort=True)  # type: ignore[attr-defined]
            return
        if self.state != WebSocketProtocol.STATE_OPEN:  # type: ignore[attr-defined]
            return
        if isinstance(action, SendMessage):
            self.sendMessage(action.payload, action.binary)  # type: ignore[attr-defined]
        elif isinstance(action, BeginMessage):
            self.beginMessage(action.binary)  # type: ignore[attr-defined]
        elif isinstance(action, SendFrame):
            self.sendMessageFrame(action.payload)  # type: ignore[attr-defined]
        elif isinstance(action, EndMessage):
            self.endMessage()  # type: ignore[attr-defined]
        elif isinstance(action, SendClose):
            reason = encode_truncate(action.reason, 123) if action.code is not None and action.reason else None
            self.sendCloseFrame(action.code, reason, isReply=action.reply)  # type: ignore[attr-defined]
            if action.reply:
                self.answered_close()

    def answered_close(self) -> None:
        """wsrelay answered the peer's close: end the TCP connection as Autobahn would have."""
        raise NotImplementedError


def _abort_if_open(transport: Any) -> None:
    if getattr(transport, "connected", False) and not getattr(transport, "disconnected", False):
        transport.abortConnection()


class ClientLeg(_Leg, WebSocketServerProtocol):
    """The leg toward the client (wsrelay is the WebSocket server)."""

    side = CLIENT

    def onConnect(self, request: Any) -> Any:
        assert self.pair is not None
        return self.pair.client_accept()

    def onOpen(self) -> None:
        if self.pair is not None:
            self.pair.client_opened()

    def answered_close(self) -> None:
        # RFC 6455 section 7.1.1: the server closes the TCP connection first.  A client that
        # does not read what is still queued for it would hold the connection: abort it later.
        transport = self.transport
        self.dropConnection(abort=False)
        if transport is not None:
            txaio.call_later(CLOSE_HANDSHAKE_TIMEOUT, _abort_if_open, transport)


class UpstreamLeg(_Leg, WebSocketClientProtocol):
    """The leg toward the upstream (wsrelay is the WebSocket client)."""

    side = UPSTREAM
    _handshake_sent = False
    answered_any = False  # a byte came from the upstream: its handshake is not retried elsewhere

    def dataReceived(self, data: bytes) -> None:
        self.answered_any = True
        super().dataReceived(data)

    def onConnecting(self, transport_details: Any) -> ConnectingRequest:
        assert self.pair is not None
        pair = self.pair
        server = pair.lease.server
        return ConnectingRequest(host=server.host, port=server.port, resource="/",
                                 headers={}, useragent=None, origin=None,
                                 protocols=[p.decode("latin-1") for p in pair.protocols])

    def sendData(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:
        if not self._handshake_sent and self.pair is not None:
            # Autobahn's handshake bytes: keep its own WebSocket lines, put the client's target,
            # our Host and the client's header lines (repeated lines intact) in place of the rest.
            self._handshake_sent = True
            try:
                data = self.pair.rewrite_handshake(data)
            except Exception:  # wsrelay's fault, not the upstream's: a 500, health untouched
                self.pair.internal_error(Failure())
                return
        super().sendData(data, sync, chopsize)

    def onConnect(self, response: Any) -> None:
        if self.pair is not None:
            self.pair.upstream_response = response

    def onOpen(self) -> None:
        if self.pair is not None:
            self.pair.upstream_opened(self)
        else:
            self.dropConnection(abort=True)

    def failHandshake(self, reason: str) -> None:
        if self.pair is not None:
            self.pair.upstream_refused(self, reason)
        super().failHandshake(reason)

    def answered_close(self) -> None:
        # RFC 6455 section 7.1.1: the client waits for the server to close TCP, for a while.
        if self.serverConnectionDropTimeout > 0:  # type: ignore[attr-defined]
            self.serverConnectionDropTimeoutCall = txaio.call_later(
                self.serverConnectionDropTimeout, self.onServerConnectionDropTimeout)  # type: ignore[attr-defined]


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
        self.pair.upstream_leg = proto
        return proto


class _Pair(Upgrade):
    """One client WebSocket and its upstream WebSocket, from handshake to the last close."""

    def __init__(self, gw: WebSocketGateway, request: Request, route: Route, upstream: Upstream, scheme: str,
                 raw: list[tuple[bytes, bytes]], protocols: list[bytes]) -> None:
        super().__init__(gw, request, route, upstream, scheme, raw)
        self.protocols = protocols
        self.upstream_leg: UpstreamLeg | None = None
        self.client_leg: ClientLeg | None = None
        self.legs: dict[str, _Leg] = {}
        self.upstream_response: Any = None
        self.relay = Relay()
        self.closed_legs: set[str] = set()

    # -- handshake -------------------------------------------------------------------------

    def forget_upstream(self) -> None:
        self.upstream_leg = None
        self.upstream_response = None
        self.closed_legs.discard(UPSTREAM)

    def upstream_factory(self) -> _UpstreamFactory:
        return _UpstreamFactory(self.gw.client_factory(self.route, self.upstream), self)

    def connect_failed(self, reason: Failure) -> None:
        self.upstream_leg = None
        super().connect_failed(reason)

    def rewrite_handshake(self, data: bytes) -> bytes:
        head, _, rest = data.partition(b"\r\n\r\n")
        _, *lines = head.split(b"\r\n")
        ours = self.upstream_headers(drop=HANDSHAKE_FIELDS)
        keep = [line for line in lines if line.split(b":", 1)[0].strip().lower() not in
                {b"host", b"pragma", b"cache-control"}]
        passed = [name + b": " + value for name, value in ours]
        for name in (b"origin", b"user-agent"):
            passed += [name.title() + b": " + v for v in H.get(self.raw, name)]
        request_line = b"GET " + self.request.uri + b" HTTP/1.1"  # the client's target, byte for byte
        return b"\r\n".join([request_line, *passed, *keep]) + b"\r\n\r\n" + rest

    def upstream_refused(self, leg: UpstreamLeg, reason: str) -> None:
        leg.pair = None
        self.upstream_leg = None
        head = getattr(leg, "http_response_data", b"") or b""
        self.handshake_refused(head, (getattr(leg, "data", b"") or b"")[len(head):], reason)

    def upstream_opened(self, leg: UpstreamLeg) -> None:
        if self.answered:  # the client left, or was answered: end this leg
            leg.pair = None
            leg.dropConnection(abort=True)
            return
        self.lease.success()
        self.upstream_leg = leg
        self.legs[UPSTREAM] = leg
        self.feed(self.relay.opened(UPSTREAM))
        self.hand_over()

    def client_accept(self) -> Any:
        """The client leg's onConnect: the subprotocol the upstream chose, and its 101 headers."""
        response = self.upstream_response
        chosen = getattr(response, "protocol", None) if response is not None else None
        extra: dict[str, Any] = {}
        raw = self.upstream_leg.http_response_data if self.upstream_leg is not None else b""
        for line in raw.split(b"\r\n")[1:]:
            name, sep, value = line.partition(b":")
            key = name.strip().lower()
            if (not sep or key in H.HOP_BY_HOP or key.startswith(b"sec-websocket-")
                    or key in {b"date", b"server", b"content-length"}):
                continue
            extra.setdefault(name.strip().decode("latin-1"), []).append(value.strip().decode("latin-1"))
        cookie = self.lease.set_cookie(secure=self.scheme == "https") if self.lease is not None else None
        if cookie is not None:
            extra.setdefault("Set-Cookie", []).append(cookie.decode("latin-1"))
        return (chosen, extra) if extra else chosen

    def client_leg_for(self, transport: Any) -> ClientLeg:
        leg = self.gw.server_factory(self.route).buildProtocol(transport.getPeer())
        leg.pair = self
        self.client_leg = leg
        self.legs[CLIENT] = leg
        return leg

    def hand_over(self) -> None:
        """The client leg takes the client's connection and reads its handshake again."""
        taken = self.take_over(self.client_leg_for)
        if taken is None:
            return
        _, pending = taken
        assert self.client_leg is not None
        request = self.request
        head = [request.method + b" " + request.uri + b" HTTP/1.1"]
        extensions = [v for n, v in self.raw if n.lower() == b"sec-websocket-extensions"]
        head += [name + b": " + value for name, value in self.raw if name.lower() != b"sec-websocket-extensions"]
        if extensions:  # Autobahn refuses repeated lines; RFC 6455 section 9.1 allows them
            head.append(b"Sec-WebSocket-Extensions: " + b", ".join(extensions))
        self.client_leg.dataReceived(b"\r\n".join(head) + b"\r\n\r\n" + pending)

    def client_opened(self) -> None:
        client, upstream = self.client_leg, self.upstream_leg
        assert client is not None and upstream is not None
        if upstream.transport is not None:
            # A transport has one producer, so each one's holds both legs: when its buffer is
            # full, wsrelay stops reading the other peer (back-pressure) and this peer too (what
            # it sends makes pongs and close replies toward it, which it does not read).
            client.gate = ReadGate(client.pause_reading, client.resume_reading)
            upstream.gate = ReadGate(upstream.pause_reading, upstream.resume_reading)
            client.transport.registerProducer(BufferWatch([(upstream.gate, PEER_FULL), (client.gate, OWN_FULL)]), True)
            upstream.transport.registerProducer(BufferWatch([(client.gate, PEER_FULL), (upstream.gate, OWN_FULL)]), True)
        self.now_open()
        self.feed(self.relay.opened(CLIENT))

    # -- relaying --------------------------------------------------------------------------

    def feed(self, actions: list[Action]) -> None:
        """Perform the relay's actions, in order."""
        for action in actions:
            leg = self.legs.get(action.to)
            if isinstance(action, SendMessage):
                self.metrics.sent(self.route.name, action.to, len(action.payload), message=True)
            elif isinstance(action, SendFrame):
                self.metrics.sent(self.route.name, action.to, len(action.payload))
            elif isinstance(action, EndMessage):
                self.metrics.sent(self.route.name, action.to, 0, message=True)
            elif isinstance(action, SendClose):
                self.metrics.close_out(self.route.name, action.to, action.code)
            if leg is not None:
                leg.perform(action)
            elif isinstance(action, Abort) and action.to == UPSTREAM:
                self.abort_upstream()

    def message_ended(self, side: str, size: int) -> None:
        self.last_activity = self.reactor.seconds()
        self.metrics.received(self.route.name, side, size)
        self.feed(self.relay.message_end(side))

    def close_received(self, side: str, code: int | None, reason: str) -> None:
        self.metrics.close_in(self.route.name, side, code)
        self.feed(self.relay.close_received(side, code, reason))

    def failed(self, side: str, code: int) -> None:
        log.info("route {route}: {side} failed with close code {code}", route=self.route.name, side=side, code=code)
        self.metrics.close_out(self.route.name, side, code)
        self.feed(self.relay.failed(side, code))

    def close_both(self, reason: str) -> None:
        self.feed(self.relay.close_both(CLOSE_GOING_AWAY, reason))

    # -- endings ---------------------------------------------------------------------------

    def abort_upstream(self) -> None:
        """No upstream connection may outlive a client that never got its 101."""
        if self.connecting is not None and not self.connecting.called:
            self.connecting.cancel()
        leg, self.upstream_leg = self.upstream_leg, None
        if leg is not None:
            leg.pair = None
            if leg.transport is not None:
                leg.transport.abortConnection()

    def leg_closed(self, leg: _Leg, clean: bool, reason: str | None) -> None:
        side = leg.side
        if side in self.closed_legs:
            return
        self.closed_legs.add(side)
        if side == UPSTREAM and self.client_leg is None:
            # Before the client's 101: the upstream went away during or right after its handshake.
            self.upstream_leg = None
            leg.pair = None  # nothing more from that connection, whatever comes next
            self.handshake_failed("closed during handshake",
                                  BadGateway(f"upstream closed during the handshake: {reason}"),
                                  retryable=not getattr(leg, "answered_any", False))
            return
        if not clean:
            log.info("route {route}: {side} connection lost ({reason})", route=self.route.name, side=side,
                     reason=reason)
        self.feed(self.relay.lost(side))
        if self.relay.finished or {CLIENT, UPSTREAM} <= self.closed_legs:
            self.end()

    def sent_to_client(self) -> int:
        return self.relay.counters(CLIENT).octets_out


class WebSocketGateway:
    """Takes WebSocket upgrade requests of a route and relays them to its upstream group."""

    def __init__(self, gateway: Any) -> None:
        self.gateway = gateway
        txaio.use_twisted()
        txaio.config.loop = gateway.reactor  # Autobahn's timers go through txaio's loop
        masking.install()  # small frames masked without a native masker object each
        self.metrics = WebSocketMetrics()
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
