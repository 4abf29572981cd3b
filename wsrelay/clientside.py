"""The client's side of a WebSocket upgrade (:class:`wsrelay.upgrade.Upgrade`'s base): its
connection, its answer, the end.

- After the upstream's 101 the client's connection is taken over from twisted.web
  (:meth:`ClientSide.take_over`), with the bytes the client pipelined after its request; a client
  already gone by then ends the upgrade.
- A client that leaves before its answer leaves no upstream connection behind.
- A refused handshake's answer carries the upstream's own fields (:meth:`ClientSide.pass_on`).
- An upgrade ends once (:meth:`ClientSide.end`): the idle timer stopped, the lease released, one
  access-log line for a pair that was taken over (status 101 and its figures, as nginx logs an
  upgraded connection when it closes), the gateway told.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from twisted.internet.protocol import Protocol
from twisted.protocols.policies import ProtocolWrapper
from twisted.web.http import NO_BODY_CODES

from wsrelay.accesslog import Entry, WebSocketFigures
from wsrelay.handshake import UpstreamRefusal


def swap_protocol(transport: Any, protocol: Protocol) -> None:
    """Make ``protocol`` the receiver of ``transport``'s bytes, through a TLS wrapper if any."""
    if isinstance(transport, ProtocolWrapper):
        transport.wrappedProtocol = protocol
    elif isinstance(getattr(transport, "protocol", None), ProtocolWrapper):
        transport.protocol.wrappedProtocol = protocol
    else:
        transport.protocol = protocol


class ClientSide:
    """What :class:`~wsrelay.upgrade.Upgrade` does on the client's side; ``Upgrade`` holds the
    state (its ``__slots__``) and subclasses supply the hooks below."""

    __slots__ = ()

    # -- what subclasses supply ---------------------------------------------------------------

    def abort_upstream(self) -> None:
        """Cancel the connection attempt, abort the upstream connection (no TCP left behind)."""
        raise NotImplementedError

    def sent_to_client(self) -> int:
        """Bytes sent to the client, for the access log."""
        raise NotImplementedError

    def figures(self, duration: float) -> WebSocketFigures:
        """The open pair's figures for its access-log line (``duration``: seconds open)."""
        raise NotImplementedError

    # -- the client's answer ----------------------------------------------------------------

    def cancel_timer(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None

    def pass_on(self, answer: UpstreamRefusal) -> None:
        """The upstream's fields on the client's answer, in place of wsrelay's own of the same name
        (``Content-Type``, ``Cache-Control``), and the balancer's ``Set-Cookie``."""
        headers = self.request.responseHeaders
        for name in {n.lower() for n, _ in answer.fields}:
            headers.removeHeader(name)
        for name, value in answer.fields:
            headers.addRawHeader(name, value)
        if answer.status in NO_BODY_CODES:
            headers.removeHeader(b"content-length")
        cookie = self.lease.set_cookie(secure=self.scheme == "https") if self.lease is not None else None
        if cookie is not None:
            headers.addRawHeader(b"set-cookie", cookie)

    def client_left_early(self) -> None:
        """The client disconnected before its answer."""
        if self.answered:
            return
        self.answered = True
        self.cancel_timer()
        self.abort_upstream()
        self.end()

    def take_over(self, protocol_for: Callable[[Any], Protocol]) -> tuple[Any, bytes] | None:
        """Hand the client's connection from twisted.web to ``protocol_for(transport)``.

        Returns the transport and the bytes the client sent after its request (to be read by the
        new protocol), or None when the client has gone meanwhile (the upgrade then ends).
        """
        request = self.request
        channel = request.channel
        detached = channel.detach() if channel is not None else None
        if detached is None:
            self.client_left_early()
            return None
        transport, pending = detached
        self.answered = self.taken_over = True
        self.cancel_timer()
        request.wsrelay_websocket = True  # type: ignore[attr-defined]
        protocol = protocol_for(transport)
        swap_protocol(transport, protocol)
        protocol.makeConnection(transport)
        transport.resumeProducing()
        return transport, pending

    def forget_handshake(self) -> None:
        """The pair is open: let the twisted.web request, the client's header lines and every
        handshake timer go (an open pair keeps only what it relays with)."""
        self.keep_log_request()
        self.request = None  # type: ignore[assignment]
        self.raw = None  # type: ignore[assignment]
        self.connecting = None
        self.cancel_timer()

    # -- endings ---------------------------------------------------------------------------

    def end(self) -> None:
        if self.ended:
            return
        self.ended = True
        if self.idle_timer is not None and self.idle_timer.active():
            self.idle_timer.cancel()
        self.idle_timer = None
        if self.lease is not None:
            self.lease.release()
        if self.taken_over and self.gw.gateway.access_log.enabled:
            self.write_log()
        if self.opened:
            self.metrics.ended(self.route.name, self.route.websocket.mode)
        self.gw.gateway.closed(self)

    def keep_log_request(self) -> None:
        """Keep what the access log needs of the request, before it is let go."""
        request = self.request
        if request is not None:
            self.log_request = (request.method, request.uri, request.clientproto, request.getHeader(b"referer"),
                                request.getHeader(b"user-agent"), request.request_id())  # type: ignore[attr-defined]

    def write_log(self) -> None:
        """The access-log line of a pair that was taken over (its 101 went to the client)."""
        self.keep_log_request()
        assert self.log_request is not None
        method, target, protocol, referer, user_agent, request_id = self.log_request
        now = time.monotonic()
        figures = self.figures(now - self.opened_at if self.opened else 0.0)
        self.gw.gateway.access_log.log(Entry(
            client=self.client_ip, when=time.time(), method=method, target=target,
            protocol=protocol, status=101, sent=self.sent_to_client(), referer=referer, user_agent=user_agent,
            upstream=self.lease.server.hostport if self.lease is not None else None,
            duration=now - self.started, request_id=request_id, route=self.route.name,
            received=figures.bytes_from_client, websocket=figures,
        ))
