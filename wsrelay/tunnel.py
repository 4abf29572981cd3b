"""Tunnel mode (``ws_mode = tunnel``): after the upstream's 101, bytes are copied both ways unchanged.

This is what nginx does.  The client's handshake (already validated by ``websocket/``: version,
key, Origin) goes upstream with its own ``Sec-WebSocket-*`` lines, so the client and the upstream
negotiate subprotocols and extensions end to end, and the upstream's 101 goes back to the client
with its hop-by-hop fields removed (``Connection: Upgrade`` and ``Upgrade`` stay: they are the
switch itself) and the balancer's ``Set-Cookie`` added.  Then each transport is the other's
producer (a side that stops reading stops wsrelay reading from the other), and when one side
closes the other is closed after what was sent to it is flushed.

wsrelay never parses payloads here, but it follows frame *headers* in each direction
(:class:`FrameTracker`) so that it knows when it may put a frame of its own on the wire.
``ws_idle_timeout`` (no byte in either direction for that long) and shutdown send each side a
close frame with 1001 (masked toward the upstream, as a client must) when that direction is at a
frame boundary and has not carried a close frame yet, then close both connections.  A connection
being closed that is still open ``CLOSE_HANDSHAKE_TIMEOUT`` seconds later (a peer that does not
read what is queued toward it) is aborted, as in relay mode.
"""

from __future__ import annotations

import os
import struct
from typing import Any

from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import Request

from wsrelay import headers as H
from wsrelay.accesslog import WebSocketFigures
from wsrelay.config import Route, Upstream
from wsrelay.errors import CLOSE_ABNORMAL, CLOSE_GOING_AWAY, BadGateway
from wsrelay.http.wire import no_delay
from wsrelay.timers import call_after_reads
from wsrelay.upgrade import CLOSE_HANDSHAKE_TIMEOUT, Upgrade

log = Logger()

MAX_RESPONSE_HEAD = 65536


def close_frame(code: int, reason: bytes, *, masked: bool) -> bytes:
    """A complete close frame (RFC 6455 section 5.5.1); ``masked`` for client-to-server."""
    payload = struct.pack("!H", code) + reason[:123]
    if not masked:
        return bytes([0x88, len(payload)]) + payload
    mask = os.urandom(4)
    return bytes([0x88, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class FrameTracker:
    """Follows WebSocket frame boundaries in one direction (RFC 6455 section 5.2), headers only."""

    __slots__ = ("header", "remaining", "close_seen", "close_code")

    def __init__(self) -> None:
        self.header = b""  # an incomplete frame header
        self.remaining = 0  # payload bytes of the current frame still to come
        self.close_seen = False  # a close frame went this way
        #: the first close frame's code, when its two bytes came in the same read as its header
        #: (None: no code, or not seen)
        self.close_code: int | None = None

    @property
    def at_boundary(self) -> bool:
        return not self.header and not self.remaining

    def feed(self, data: bytes) -> None:
        pos, end = 0, len(data)
        if self.header:
            data = self.header + data
            self.header = b""
            end = len(data)
        while pos < end:
            if self.remaining:
                step = end - pos
                if step > self.remaining:
                    step = self.remaining
                self.remaining -= step
                pos += step
                continue
            avail = end - pos
            if avail < 2:
                self.header = data[pos:]
                return
            b1 = data[pos + 1]
            length = b1 & 0x7F
            size = 2
            if length == 126:
                size = 4
            elif length == 127:
                size = 10
            if b1 & 0x80:
                size += 4
            if avail < size:
                self.header = data[pos:]
                return
            if length == 126:
                length = (data[pos + 2] << 8) | data[pos + 3]
            elif length == 127:
                length = int.from_bytes(data[pos + 2:pos + 10], "big")
            if data[pos] & 0x0F == 0x8 and not self.close_seen:
                self.close_seen = True
                start = pos + size
                if length >= 2 and start + 2 <= end:
                    code = data[start:start + 2]
                    if b1 & 0x80:  # masked: the key is the header's last four bytes
                        code = bytes((code[0] ^ data[start - 4], code[1] ^ data[start - 3]))
                    self.close_code = (code[0] << 8) | code[1]
            pos += size
            self.remaining = length


def response_head(head: bytes, set_cookie: bytes | None) -> bytes:
    """The upstream's 101 head as the client gets it: hop-by-hop fields out, the switch kept."""
    status_line, *lines = head.rstrip(b"\r\n").split(b"\r\n")
    fields = [(name.strip(), value.strip()) for name, sep, value in (line.partition(b":") for line in lines) if sep]
    named = H.tokens(fields, b"connection") - {b"upgrade"}
    drop = (H.HOP_BY_HOP - {b"connection", b"upgrade"}) | named
    kept = [(n, b"Upgrade" if n.lower() == b"connection" and named else v)
            for n, v in fields if n.lower() not in drop]
    if set_cookie is not None:
        kept.append((b"Set-Cookie", set_cookie))
    return b"\r\n".join([status_line, *(n + b": " + v for n, v in kept)]) + b"\r\n\r\n"


class _Pauser:
    __slots__ = ("transport",)

    def __init__(self, transport: Any) -> None:
        self.transport = transport

    def pauseProducing(self) -> None:
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        pass


class _UpstreamSideFactory(Factory):
    """The factory of one upstream connection.  It lets go of the tunnel once it has built the
    connection's protocol: the reactor's connector keeps it in a reference cycle with the
    transport (tcp.Connector.transport, Client.connector) after the connection ends."""

    noisy = False

    def __init__(self, tunnel: Tunnel) -> None:
        self.tunnel: Tunnel | None = tunnel

    def buildProtocol(self, addr: Any) -> _UpstreamSide:
        tunnel, self.tunnel = self.tunnel, None
        assert tunnel is not None, "one connection per upstream factory"
        protocol = _UpstreamSide(tunnel)
        protocol.factory = self
        return protocol


class _UpstreamSide(Protocol):
    def __init__(self, tunnel: Tunnel) -> None:
        self.tunnel = tunnel
        self.head = b""
        self.open = False

    def connectionMade(self) -> None:
        no_delay(self.transport)
        self.tunnel.upstream_connected(self)

    def dataReceived(self, data: bytes) -> None:
        if self.open:
            self.tunnel.to_client(data)
            return
        if self.tunnel.answered:
            return
        self.head += data
        end = self.head.find(b"\r\n\r\n")
        if end < 0:
            if len(self.head) > MAX_RESPONSE_HEAD:
                self.tunnel.handshake_failed("bad handshake", BadGateway("upstream handshake response too large"))
            return
        head, rest = self.head[:end + 4], self.head[end + 4:]
        self.head = b""
        self.open = True
        self.tunnel.upstream_answered(head, rest)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        tunnel, self.tunnel = self.tunnel, None  # no reference cycle with the tunnel (Tunnel.up)
        tunnel.side_lost("upstream", reason)


class _ClientSide(Protocol):
    def __init__(self, tunnel: Tunnel) -> None:
        self.tunnel = tunnel

    def dataReceived(self, data: bytes) -> None:
        self.tunnel.to_upstream(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        tunnel, self.tunnel = self.tunnel, None
        tunnel.side_lost("client", reason)


class Tunnel(Upgrade):
    """One tunnelled WebSocket connection."""

    kind = "tunnel"
    __slots__ = ("up", "client_transport", "lost", "sent", "to_client_frames", "to_upstream_frames", "abort_timers",
                 "client_hop", "upstream_hop", "received", "head_size", "ended_by")

    def __init__(self, gw: Any, request: Request, route: Route, upstream: Upstream, scheme: str,
                 raw: list[tuple[bytes, bytes]]) -> None:
        super().__init__(gw, request, route, upstream, scheme, raw)
        self.up: _UpstreamSide | None = None
        self.client_transport: Any = None
        self.lost: set[str] = set()
        self.sent = 0
        self.to_client_frames = FrameTracker()
        self.to_upstream_frames = FrameTracker()
        self.abort_timers: dict[str, Any] = {}
        self.client_hop: Any = None  # the route's counters of each hop (wsrelay.metrics.HopCounters)
        self.upstream_hop: Any = None
        self.received = 0  # bytes from the client after its handshake
        self.head_size = 0  # the 101 head's share of ``sent``
        self.ended_by: tuple[str, int | None] | None = None  # as wsrelay.relay.Relay.ended_by

    def upstream_factory(self) -> Factory:
        return _UpstreamSideFactory(self)

    def upstream_connected(self, up: _UpstreamSide) -> None:
        if self.answered:
            up.transport.abortConnection()
            return
        self.up = up
        try:
            out = self.upstream_headers()
        except Exception:  # wsrelay's fault, not the upstream's: a 500, health untouched
            self.internal_error(Failure())
            return
        lines = [self.request.method + b" " + self.request.uri + b" HTTP/1.1"]
        lines += [name + b": " + value for name, value in out]
        lines += [b"Upgrade: websocket", b"Connection: Upgrade"]
        up.transport.write(b"\r\n".join(lines) + b"\r\n\r\n")

    def upstream_answered(self, head: bytes, rest: bytes) -> None:
        parts = head.split(b"\r\n", 1)[0].split(b" ", 2)
        if len(parts) < 2 or parts[1] != b"101":
            self.handshake_refused(head, rest, "not a 101")
            return
        self.lease.success()
        self.open_tunnel(response_head(head, self.lease.set_cookie(secure=self.scheme == "https")), rest)

    def open_tunnel(self, head: bytes, first: bytes) -> None:
        taken = self.take_over(lambda transport: _ClientSide(self))
        if taken is None:
            return
        transport, pending = taken
        self.forget_handshake()
        self.client_transport = transport
        self.client_hop = self.metrics.hop(self.route.name, "client")
        self.upstream_hop = self.metrics.hop(self.route.name, "upstream")
        assert self.up is not None
        up = self.up.transport
        transport.registerProducer(_Pauser(up), True)
        up.registerProducer(_Pauser(transport), True)
        self.sent += len(head)
        self.head_size = len(head)
        transport.write(head)
        self.now_open()
        if first:
            self.to_client(first)
        if pending:
            self.to_upstream(pending)

    def to_client(self, data: bytes) -> None:
        if self.client_transport is None:
            return
        self.last_activity = self.reactor.seconds()
        self.sent += len(data)
        frames = self.to_client_frames
        frames.feed(data)
        if frames.close_seen and self.ended_by is None:
            self.ended_by = ("upstream", frames.close_code)
        n = len(data)
        self.upstream_hop.octets_in += n
        self.client_hop.octets_out += n
        self.client_transport.write(data)

    def to_upstream(self, data: bytes) -> None:
        if self.up is None or self.up.transport is None:
            return
        self.last_activity = self.reactor.seconds()
        frames = self.to_upstream_frames
        frames.feed(data)
        if frames.close_seen and self.ended_by is None:
            self.ended_by = ("client", frames.close_code)
        n = len(data)
        self.received += n
        self.client_hop.octets_in += n
        self.upstream_hop.octets_out += n
        self.up.transport.write(data)

    def close_both(self, reason: str) -> None:
        """A 1001 close frame to each side where one may go (see the module docstring), then close."""
        why = reason.encode("utf-8")
        if self.ended_by is None:
            self.ended_by = ("wsrelay", CLOSE_GOING_AWAY)
        if self.client_transport is not None:
            if self.to_client_frames.at_boundary and not self.to_client_frames.close_seen:
                self.to_client_frames.close_seen = True
                self.client_transport.write(close_frame(CLOSE_GOING_AWAY, why, masked=False))
                self.metrics.close_out(self.route.name, "client", CLOSE_GOING_AWAY)
            self.close_side("client", self.client_transport)
        if self.up is not None and self.up.transport is not None:
            if self.to_upstream_frames.at_boundary and not self.to_upstream_frames.close_seen:
                self.to_upstream_frames.close_seen = True
                self.up.transport.write(close_frame(CLOSE_GOING_AWAY, why, masked=True))
                self.metrics.close_out(self.route.name, "upstream", CLOSE_GOING_AWAY)
            self.close_side("upstream", self.up.transport)

    def close_side(self, side: str, transport: Any) -> None:
        """Close ``side`` once what is queued toward it is written; abort it if it is still open
        ``CLOSE_HANDSHAKE_TIMEOUT`` seconds later (a peer that never reads would otherwise keep its
        connection, this pair and its server's connection count forever)."""
        transport.loseConnection()
        if side not in self.lost and side not in self.abort_timers:
            self.abort_timers[side] = call_after_reads(self.reactor, CLOSE_HANDSHAKE_TIMEOUT, self.abort_side, side,
                                                       transport)

    def abort_side(self, side: str, transport: Any) -> None:
        del self.abort_timers[side]
        if side not in self.lost:
            log.info("route {route}: tunnel {side} still open {timeout}s after its close; aborting",
                     route=self.route.name, side=side, timeout=CLOSE_HANDSHAKE_TIMEOUT)
            transport.abortConnection()

    def side_lost(self, side: str, reason: Failure | None) -> None:
        if side in self.lost:
            return
        self.lost.add(side)
        if self.ended_by is None and self.client_transport is not None:
            self.ended_by = (side, CLOSE_ABNORMAL)
        timer = self.abort_timers.pop(side, None)
        if timer is not None and timer.active():
            timer.cancel()
        if side == "upstream" and self.client_transport is None:
            up = self.up
            self.handshake_failed("closed during handshake",
                                  BadGateway("upstream closed during the WebSocket handshake"),
                                  retryable=up is not None and not up.head and not up.open)
            return
        if side == "client":
            if self.up is not None and self.up.transport is not None:
                self.close_side("upstream", self.up.transport)  # after what is queued toward it is written
        elif self.client_transport is not None:
            self.close_side("client", self.client_transport)
        if {"client", "upstream"} <= self.lost or (side == "client" and self.up is None):
            self.end()

    def forget_upstream(self) -> None:
        self.up = None
        self.lost.discard("upstream")

    def abort_upstream(self) -> None:
        if self.connecting is not None and not self.connecting.called:
            self.connecting.cancel()
        if self.up is not None and self.up.transport is not None:
            self.lost.add("upstream")
            self.up.transport.abortConnection()

    def sent_to_client(self) -> int:
        return self.sent

    def figures(self, duration: float) -> WebSocketFigures:
        by, code = self.ended_by or (None, None)
        return WebSocketFigures("tunnel", duration, None, self.received, None, self.sent - self.head_size, code, by)
