"""Autobahn's legs of a pair: the two opening handshakes, nothing more.

Each leg's connection goes to a :class:`~wsrelay.websocket.lean.LeanLeg` as soon as its handshake
is over (:func:`retire`); no frame is ever read or written by Autobahn.
"""

from __future__ import annotations

from pprint import pformat
from typing import TYPE_CHECKING, Any

from autobahn.twisted.websocket import WebSocketClientProtocol, WebSocketServerProtocol
from autobahn.websocket.compress import (
    PerMessageDeflateOffer,
    PerMessageDeflateOfferAccept,
    PerMessageDeflateResponse,
    PerMessageDeflateResponseAccept,
)
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.types import ConnectingRequest
from twisted.python.failure import Failure

from wsrelay.relay import CLIENT, UPSTREAM, Abort, Action

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


class _Leg:
    """Mixin for both Autobahn legs, which only run the handshakes: a leg that closes (its
    handshake failed, or its peer left during it) tells the pair; an :class:`Abort` from the relay
    (the other side is gone before this one opened) drops it."""

    side: str
    pair: Pair | None = None

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self.pair is not None:
            self.pair.leg_closed(self, wasClean, reason)

    def perform(self, action: Action) -> None:
        # Before its handshake completes the relay queues everything for this side but Abort.
        if isinstance(action, Abort) and self.transport is not None:  # type: ignore[attr-defined]
            self.dropConnection(abort=True)  # type: ignore[attr-defined]


class ClientLeg(_Leg, WebSocketServerProtocol):
    """The leg toward the client (wsrelay is the WebSocket server)."""

    side = CLIENT

    def onConnect(self, request: Any) -> Any:
        assert self.pair is not None
        return self.pair.client_accept()

    def onOpen(self) -> None:
        if self.pair is not None:
            self.pair.client_opened()


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
        self.pair: Pair | None = pair
        # Autobahn checks the upstream's chosen subprotocol against the factory's list.
        self.protocols = [p.decode("latin-1") for p in pair.protocols]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._base, name)

    def buildProtocol(self, addr: Any) -> UpstreamLeg:
        # One connection per factory: the pair is let go at once.  The reactor's connector keeps
        # this factory in a reference cycle with the transport (tcp.Connector.transport,
        # Client.connector) after the connection ends; the pair must not hang off it.
        pair, self.pair = self.pair, None
        assert pair is not None, "one connection per upstream factory"
        proto = UpstreamLeg()
        proto.factory = self
        proto.pair = pair
        pair.upstream_leg = proto
        return proto
