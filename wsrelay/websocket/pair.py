"""One client WebSocket and its upstream WebSocket, from the handshake to the last close.

The handshakes are Autobahn's (``legs.py``).  Once both are open, the pair leaves Autobahn: both
connections are handed to :class:`~wsrelay.websocket.lean.LeanLeg` protocols (``path = "lean"``),
each with the permessage-deflate parameters its hop negotiated, if any, and the Autobahn legs, the
twisted.web request and everything else of the handshake are let go.  Only a pair whose upstream
is gone by the time the client's handshake completes stays on Autobahn's legs
(``path = "autobahn"``) to its end.  Either way, :class:`wsrelay.relay.Relay` makes every decision.
"""

from __future__ import annotations

from typing import Any

from autobahn.websocket.compress import PerMessageCompress
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import Request

from wsrelay import headers as H
from wsrelay.accesslog import WebSocketFigures
from wsrelay.bucket import TokenBucket
from wsrelay.clientside import swap_protocol
from wsrelay.config import Route, Upstream
from wsrelay.errors import CLOSE_GOING_AWAY, BadGateway
from wsrelay.flow import OWN_FULL, PEER_FULL, BufferWatch, ReadGate
from wsrelay.handshake import HANDSHAKE_FIELDS
from wsrelay.relay import CLIENT, UPSTREAM, Abort, Action, Relay
from wsrelay.upgrade import Upgrade
from wsrelay.websocket.lean import LeanLeg
from wsrelay.websocket.legs import ClientLeg, UpstreamLeg, _Leg, _UpstreamFactory, retire

log = Logger()


class Pair(Upgrade):
    """One client WebSocket and its upstream WebSocket, from handshake to the last close."""

    __slots__ = ("protocols", "upstream_leg", "client_leg", "legs", "upstream_response", "relay", "closed_legs",
                 "path", "upstream_head")

    def __init__(self, gw: Any, request: Request, route: Route, upstream: Upstream, scheme: str,
                 raw: list[tuple[bytes, bytes]], protocols: list[bytes]) -> None:
        super().__init__(gw, request, route, upstream, scheme, raw)
        self.protocols = protocols
        self.upstream_leg: UpstreamLeg | None = None
        self.client_leg: ClientLeg | None = None
        self.legs: dict[str, _Leg] = {}
        self.upstream_response: Any = None
        self.relay = Relay()
        self.closed_legs: set[str] = set()
        self.path = "handshake"  # "lean" once both connections left Autobahn
        self.upstream_head = b""  # the upstream's 101 (its fields go to the client's 101)

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
        """The upstream's 101 is in: its connection goes to a lean leg at once, then the client's
        handshake is completed; what the upstream sent right after its 101 is read last."""
        if self.answered:  # the client left, or was answered: end this leg
            leg.pair = None
            leg.dropConnection(abort=True)
            return
        self.lease.success()
        self.upstream_head = leg.http_response_data or b""
        lean, pending = self.take_leg(UPSTREAM, leg)
        self.feed(self.relay.opened(UPSTREAM))
        lean.start_pings()
        self.hand_over()
        if pending and lean.pair is not None:
            lean.dataReceived(pending)

    def take_leg(self, side: str, old: _Leg) -> tuple[LeanLeg, bytes]:
        """``old``'s connection (its handshake just completed) goes to a lean leg, with the
        permessage-deflate parameters negotiated on that hop; returns it and the bytes Autobahn
        had read after the handshake."""
        ws = self.route.websocket
        relay = self.relay
        rate = ws.max_message_rate if side == CLIENT else None  # the upstream is the operator's own
        leg = LeanLeg(self, side, relay, self.metrics.hop(self.route.name, side), chunk=relay.chunk_size,
                      max_frame=ws.max_frame_size, max_message=ws.max_message_size,
                      idle=bool(ws.idle_timeout), extension=_deflate_in_use(old),
                      limit=TokenBucket(rate, ws.message_burst) if rate else None)
        transport = old.transport  # type: ignore[attr-defined]
        pending = retire(old)
        old.transport = None  # type: ignore[attr-defined]
        leg.transport = transport
        swap_protocol(transport, leg)
        leg.gate = ReadGate(leg.pause_reading, leg.resume_reading)
        self.legs[side] = leg  # type: ignore[assignment]
        if side == CLIENT:
            self.client_leg = leg  # type: ignore[assignment]
        else:
            self.upstream_leg = leg  # type: ignore[assignment]
        return leg, pending

    def client_accept(self) -> Any:
        """The client leg's onConnect: the subprotocol the upstream chose, and its 101 headers."""
        response = self.upstream_response
        chosen = getattr(response, "protocol", None) if response is not None else None
        extra: dict[str, Any] = {}
        for line in self.upstream_head.split(b"\r\n")[1:]:
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
        """The client has its 101: its connection goes to a lean leg; both are open."""
        client, upstream = self.client_leg, self.upstream_leg
        assert client is not None and isinstance(upstream, LeanLeg)
        self.path = "lean"
        c, pending = self.take_leg(CLIENT, client)
        u = upstream
        c.peer, u.peer = u, c
        if u.transport is not None:
            # A transport has one producer, so each one's holds both legs: when its buffer is
            # full, wsrelay stops reading the other peer (back-pressure) and this peer too (what
            # it sends makes pongs and close replies toward it, which it does not read).
            c.transport.registerProducer(BufferWatch([(u.gate, PEER_FULL), (c.gate, OWN_FULL)]), True)
            u.transport.registerProducer(BufferWatch([(c.gate, PEER_FULL), (u.gate, OWN_FULL)]), True)
        self.forget_handshake()
        self.now_open()
        self.took_path()
        self.feed(self.relay.opened(CLIENT))
        c.start_pings()
        if pending and c.pair is not None:
            c.dataReceived(pending)

    def took_path(self) -> None:
        if self.metrics.took_path(self.route.name, self.path):
            log.info("route {route}: first relayed pair on the {path} path", route=self.route.name, path=self.path)

    def forget_handshake(self) -> None:
        """Nothing of the handshake stays referenced by an open pair."""
        super().forget_handshake()
        self.protocols = None  # type: ignore[assignment]
        self.upstream_response = None
        self.upstream_head = b""

    def lean_lost(self, leg: LeanLeg, reason: Any) -> None:
        """A lean leg's connection is gone."""
        why = leg.why or (reason.getErrorMessage() if isinstance(reason, Failure) else str(reason))
        self.leg_closed(leg, leg.close_sent and leg.done and not leg.failed, why)  # type: ignore[arg-type]

    # -- relaying --------------------------------------------------------------------------

    def feed(self, actions: list[Action]) -> None:
        """Perform the relay's actions, in order, each by the leg of its side."""
        legs = self.legs
        for action in actions:
            leg = legs.get(action.to)
            if leg is not None:
                leg.perform(action)
            elif isinstance(action, Abort) and action.to == UPSTREAM:
                self.abort_upstream()

    perform = feed

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
                                  retryable=not getattr(leg, "answered_any", True))
            return
        if not clean:
            log.info("route {route}: {side} connection lost ({reason})", route=self.route.name, side=side,
                     reason=reason)
        self.feed(self.relay.lost(side))
        if self.relay.finished or {CLIENT, UPSTREAM} <= self.closed_legs:
            self.end()

    def sent_to_client(self) -> int:
        return self.relay.counters(CLIENT).octets_out

    def figures(self, duration: float) -> WebSocketFigures:
        relay = self.relay
        client, upstream = relay.counters(CLIENT), relay.counters(UPSTREAM)
        by, code = relay.ended_by or (None, None)
        return WebSocketFigures("relay", duration, client.messages_in, client.octets_in,
                                upstream.messages_in, upstream.octets_in, code, by)


def _deflate_in_use(protocol: Any) -> PerMessageCompress | None:
    """The permessage-deflate parameters a hop's handshake agreed (Autobahn's extensions in use)."""
    for extension in protocol.websocket_extensions_in_use:
        if isinstance(extension, PerMessageCompress):
            return extension
    return None
