"""Tunnel mode (``ws_mode = tunnel``): after the upstream's 101, bytes are copied both ways unchanged.

This is what nginx does.  The client's handshake (already validated by ``websocket.py``: version,
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
frame boundary and has not carried a close frame yet, then close both connections.
"""

from __future__ import annotations

import os
import struct
import time
from typing import Any

from twisted.internet import error as neterror
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper
from twisted.python.failure import Failure
from twisted.web.server import Request

from wsrelay import headers as H
from wsrelay.accesslog import format_line
from wsrelay.answers import answer_error
from wsrelay.config import Route, Upstream
from wsrelay.connect import upstream_endpoint
from wsrelay.errors import CLOSE_GOING_AWAY, BadGateway, GatewayTimeout, ProxyError, ServiceUnavailable

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

    def __init__(self) -> None:
        self.header = b""  # an incomplete frame header
        self.remaining = 0  # payload bytes of the current frame still to come
        self.close_seen = False  # a close frame went this way

    @property
    def at_boundary(self) -> bool:
        return not self.header and not self.remaining

    def feed(self, data: bytes) -> None:
        pos, end = 0, len(data)
        while pos < end:
            if self.remaining:
                step = min(self.remaining, end - pos)
                self.remaining -= step
                pos += step
                continue
            head = self.header + data[pos:pos + 14]
            size = self._header_size(head)
            if size is None or len(head) < size:
                self.header = head
                return
            pos += size - len(self.header)
            self.header = b""
            length = head[1] & 0x7F
            if length == 126:
                length = struct.unpack("!H", head[2:4])[0]
            elif length == 127:
                length = struct.unpack("!Q", head[2:10])[0]
            self.remaining = length
            if head[0] & 0x0F == 0x8:
                self.close_seen = True

    @staticmethod
    def _header_size(head: bytes) -> int | None:
        if len(head) < 2:
            return None
        length = head[1] & 0x7F
        size = 2 + (2 if length == 126 else 8 if length == 127 else 0)
        return size + (4 if head[1] & 0x80 else 0)


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
    def __init__(self, transport: Any) -> None:
        self.transport = transport

    def pauseProducing(self) -> None:
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        pass


class _QuietFactory(Factory):
    noisy = False


class _UpstreamSide(Protocol):
    def __init__(self, tunnel: Tunnel) -> None:
        self.tunnel = tunnel
        self.head = b""
        self.open = False

    def connectionMade(self) -> None:
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
                self.tunnel.refuse(BadGateway("upstream handshake response too large"))
            return
        head, rest = self.head[:end + 4], self.head[end + 4:]
        self.head = b""
        self.open = True
        self.tunnel.upstream_answered(head, rest)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.tunnel.side_lost("upstream", reason)


class _ClientSide(Protocol):
    def __init__(self, tunnel: Tunnel) -> None:
        self.tunnel = tunnel

    def dataReceived(self, data: bytes) -> None:
        self.tunnel.to_upstream(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.tunnel.side_lost("client", reason)


class Tunnel:
    """One tunnelled WebSocket connection."""

    def __init__(self, gw: Any, request: Request, route: Route, upstream: Upstream, scheme: str,
                 raw: list[tuple[bytes, bytes]]) -> None:
        self.gw = gw
        self.reactor = gw.gateway.reactor
        self.request = request
        self.route = route
        self.upstream = upstream
        self.scheme = scheme
        self.raw = raw
        self.client_ip = getattr(request.getClientAddress(), "host", "127.0.0.1")
        self.tried: list[str] = []
        self.lease: Any = None
        self.connecting: Any = None
        self.up: _UpstreamSide | None = None
        self.client_transport: Any = None
        self.answered = False
        self.ended = False
        self.lost: set[str] = set()
        self.timer: Any = None
        self.idle_timer: Any = None
        self.last_activity = 0.0
        self.started = time.monotonic()
        self.sent_to_client = 0
        self.to_client_frames = FrameTracker()
        self.to_upstream_frames = FrameTracker()
        self.metrics = gw.metrics

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
        endpoint = upstream_endpoint(self.reactor, self.upstream, server, self.route.connect_timeout)
        self.connecting = endpoint.connect(_QuietFactory.forProtocol(lambda: _UpstreamSide(self)))
        self.connecting.addErrback(self.connect_failed)

    def connect_failed(self, reason: Failure) -> None:
        self.connecting = None
        if self.answered:
            return
        self.lease.failure("connect error")
        self.lease.release()
        self.lease = None
        if len(self.tried) <= self.route.retries:
            self.connect()
            return
        timeout = reason.check(neterror.TimeoutError) is not None
        self.refuse((GatewayTimeout if timeout else BadGateway)(
            f"WebSocket upstream unreachable: {reason.getErrorMessage()}"))

    def upstream_connected(self, up: _UpstreamSide) -> None:
        if self.answered:
            up.transport.abortConnection()
            return
        self.up = up
        server = self.lease.server
        out = H.request_to_upstream(self.raw, client_ip=self.client_ip, scheme=self.scheme,
                                    host_header=self.route.host_header, upstream_hostport=server.hostport)
        lines = [self.request.method + b" " + self.request.uri + b" HTTP/1.1"]
        lines += [name + b": " + value for name, value in out]
        lines += [b"Upgrade: websocket", b"Connection: Upgrade"]
        up.transport.write(b"\r\n".join(lines) + b"\r\n\r\n")

    def upstream_answered(self, head: bytes, rest: bytes) -> None:
        status_line = head.split(b"\r\n", 1)[0]
        parts = status_line.split(b" ", 2)
        status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        if status != 101:
            error = ProxyError(f"upstream refused the WebSocket handshake: {status_line[:100]!r}")
            if status >= 400:
                error.status, error.reason = status, (parts[2] if len(parts) > 2 else b"Refused").decode("latin-1")[:60]
            else:
                error = BadGateway(f"upstream answered the handshake with {status_line[:100]!r}")
            self.refuse(error)
            return
        self.lease.success()
        self.take_over(response_head(head, self.lease.set_cookie()), rest)

    def take_over(self, head: bytes, first: bytes) -> None:
        request = self.request
        channel = request.channel
        transport = channel.transport if channel is not None else None
        if (transport is None or not getattr(transport, "connected", True)
                or getattr(transport, "disconnecting", False)):
            self.client_left_early()
            return
        self.answered = True
        self.cancel_timer()
        request.wsrelay_websocket = True  # type: ignore[attr-defined]
        pending = b"".join(channel._dataBuffer)
        channel._dataBuffer = []
        channel.transport = None
        transport.unregisterProducer()
        side = _ClientSide(self)
        if isinstance(transport, ProtocolWrapper):
            transport.wrappedProtocol = side
        elif isinstance(getattr(transport, "protocol", None), ProtocolWrapper):
            transport.protocol.wrappedProtocol = side
        else:
            transport.protocol = side
        side.makeConnection(transport)
        self.client_transport = transport
        assert self.up is not None
        up = self.up.transport
        transport.registerProducer(_Pauser(up), True)
        up.registerProducer(_Pauser(transport), True)
        transport.resumeProducing()
        self.last_activity = self.reactor.seconds()
        self.sent_to_client += len(head)
        transport.write(head)
        if first:
            self.to_client(first)
        if pending:
            self.to_upstream(pending)
        if self.route.websocket.idle_timeout:
            self.idle_timer = self.reactor.callLater(self.route.websocket.idle_timeout, self.check_idle)
        self.gw.metrics.opened(self.route.name)

    def to_client(self, data: bytes) -> None:
        if self.client_transport is None:
            return
        self.last_activity = self.reactor.seconds()
        self.sent_to_client += len(data)
        self.to_client_frames.feed(data)
        self.metrics.received(self.route.name, "upstream", len(data), message=False)
        self.metrics.sent(self.route.name, "client", len(data))
        self.client_transport.write(data)

    def to_upstream(self, data: bytes) -> None:
        if self.up is None or self.up.transport is None:
            return
        self.last_activity = self.reactor.seconds()
        self.to_upstream_frames.feed(data)
        self.metrics.received(self.route.name, "client", len(data), message=False)
        self.metrics.sent(self.route.name, "upstream", len(data))
        self.up.transport.write(data)

    def check_idle(self) -> None:
        idle = self.route.websocket.idle_timeout
        assert idle is not None
        quiet = self.reactor.seconds() - self.last_activity if self.last_activity else idle
        if quiet < idle:
            self.idle_timer = self.reactor.callLater(idle - quiet, self.check_idle)
            return
        self.idle_timer = None
        log.info("route {route}: tunnel idle for {idle}s, closing both sides", route=self.route.name, idle=idle)
        self.close_both()

    def close_both(self, reason: bytes = b"idle timeout") -> None:
        """A 1001 close frame to each side where one may go (see the module docstring), then close."""
        if self.client_transport is not None:
            if self.to_client_frames.at_boundary and not self.to_client_frames.close_seen:
                self.to_client_frames.close_seen = True
                self.client_transport.write(close_frame(CLOSE_GOING_AWAY, reason, masked=False))
                self.metrics.close_out(self.route.name, "client", CLOSE_GOING_AWAY)
            self.client_transport.loseConnection()
        if self.up is not None and self.up.transport is not None:
            if self.to_upstream_frames.at_boundary and not self.to_upstream_frames.close_seen:
                self.to_upstream_frames.close_seen = True
                self.up.transport.write(close_frame(CLOSE_GOING_AWAY, reason, masked=True))
                self.metrics.close_out(self.route.name, "upstream", CLOSE_GOING_AWAY)
            self.up.transport.loseConnection()

    def side_lost(self, side: str, reason: Failure | None) -> None:
        if side in self.lost:
            return
        self.lost.add(side)
        if side == "upstream" and self.client_transport is None:
            if not self.answered:
                self.refuse(BadGateway("upstream closed during the WebSocket handshake"))
            return
        other = self.up.transport if side == "client" and self.up is not None else self.client_transport
        if other is not None:
            other.loseConnection()  # after what is buffered toward it is written
        if {"client", "upstream"} <= self.lost or (side == "client" and self.up is None):
            self.end()

    def handshake_timed_out(self) -> None:
        self.timer = None
        if not self.answered:
            self.refuse(GatewayTimeout(f"no WebSocket handshake from upstream within "
                                       f"{self.route.websocket.handshake_timeout}s"))

    def cancel_timer(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None

    def abort_upstream(self) -> None:
        if self.connecting is not None and not self.connecting.called:
            self.connecting.cancel()
        if self.up is not None and self.up.transport is not None:
            self.lost.add("upstream")
            self.up.transport.abortConnection()

    def refuse(self, error: ProxyError) -> None:
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
        if self.answered:
            return
        self.answered = True
        self.cancel_timer()
        self.abort_upstream()
        self.end()

    def end(self) -> None:
        if self.ended:
            return
        self.ended = True
        if self.idle_timer is not None and self.idle_timer.active():
            self.idle_timer.cancel()
        if self.lease is not None:
            self.lease.release()
        if self.client_transport is not None:
            request = self.request
            self.gw.gateway.access_log.write(format_line(
                client=self.client_ip, when=time.time(), method=request.method, target=request.uri,
                protocol=request.clientproto, status=101, sent=self.sent_to_client,
                referer=request.getHeader(b"referer"), user_agent=request.getHeader(b"user-agent"),
                upstream=self.lease.server.hostport if self.lease is not None else None,
                duration=time.monotonic() - self.started,
            ))
            self.gw.metrics.ended(self.route.name)
        self.gw.gateway.closed(self)

    def shutdown(self) -> None:
        """wsrelay is stopping: 1001 close frames to both sides (or 503 to a pending handshake)."""
        if self.client_transport is None:
            self.refuse(ServiceUnavailable("shutting down"))
        else:
            self.close_both(b"server shutting down")
