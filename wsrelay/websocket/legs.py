"""Autobahn's legs of a pair: both opening handshakes, and the whole life of a pair that
negotiated permessage-deflate on a hop (the lean path, ``lean.py``, takes the others once open).

The relay's rules are :class:`wsrelay.relay.Relay`'s on both paths; these legs feed it Autobahn's
frame-level events and perform its actions.
"""

from __future__ import annotations

from pprint import pformat
from typing import TYPE_CHECKING, Any

import txaio
from autobahn.twisted.websocket import WebSocketClientProtocol, WebSocketServerProtocol
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
from twisted.python.failure import Failure

from wsrelay.errors import CLOSE_GOING_AWAY
from wsrelay.flow import PEER_FULL, ReadGate
from wsrelay.inflate import SteppedInflate
from wsrelay.relay import CLIENT, UPSTREAM, Abort, Action, BeginMessage, EndMessage, SendClose, SendFrame, SendMessage
from wsrelay.upgrade import CLOSE_HANDSHAKE_TIMEOUT

if TYPE_CHECKING:
    from autobahn.twisted.websocket import WebSocketClientFactory

    from wsrelay.websocket.pair import Pair

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
    pair: Pair | None = None
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


class _LazyFormat:
    """Autobahn's debug lines, formatted only if written."""

    __slots__ = ("args", "kwargs")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs

    def __format__(self, spec: str) -> str:
        return format(pformat(*self.args, **self.kwargs), spec)

    __str__ = __repr__ = lambda self: pformat(*self.args, **self.kwargs)  # type: ignore[assignment]


def install_lazy_debug() -> None:
    """Autobahn's protocol pretty-prints its ~50 options for a debug line on every connection, and
    its transport details on every client connection, whether debug logging is on or not: about 40 %
    of the CPU of a relayed handshake (measured in memory, 300 pairs).  Its module's ``pformat``
    (a plain module-level name, the standard library's) becomes a lazy one: the same text when
    the line is written, nothing otherwise.  Idempotent."""
    from autobahn.websocket import protocol

    protocol.pformat = _LazyFormat  # type: ignore[attr-defined]


def retire(leg: _Leg) -> bytes:
    """Take an open Autobahn leg out of service (its connection goes to a lean leg): its timers
    cancelled, its state closed so it reads nothing more; returns the bytes it had read after its
    handshake and not processed."""
    p: Any = leg
    for name in ("autoPingPendingCall", "autoPingTimeoutCall", "openHandshakeTimeoutCall",
                 "closeHandshakeTimeoutCall", "serverConnectionDropTimeoutCall"):
        call = getattr(p, name, None)
        if call is not None:
            call.cancel()
            setattr(p, name, None)
    pending, p.data = p.data, b""
    p.state = WebSocketProtocol.STATE_CLOSED
    leg.pair = None
    return pending  # type: ignore[no-any-return]


class _UpstreamFactory:
    """One connection's view of the route's client factory (shares its options)."""

    def __init__(self, base: WebSocketClientFactory, pair: Pair) -> None:
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
