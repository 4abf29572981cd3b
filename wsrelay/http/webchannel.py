"""The side of wsrelay's client channel that twisted.web's Request sees: the connection's
addresses, and the writes of a response.  Nothing here parses or decides
(:class:`wsrelay.http.channel.RelayChannel` does).

Invariants:

- A response head (:meth:`WebChannel.writeHeaders`) is held until the body bytes that follow it in
  the same call, so a response and its first body bytes leave in one write (``Request.write``
  calls :meth:`~WebChannel.flush_head` when it returns); the upstream's fields
  (``wsrelay_fields``, in wire order) go before wsrelay's own.
- Every write goes through the connection's :class:`wsrelay.http.wire.Writer` (set at connection),
  or through the transport once the channel has none.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import ISSLTransport
from twisted.internet.protocol import Protocol

from wsrelay.http.wire import Writer


class WebChannel(Protocol):
    """What ``twisted.web.server.Request`` calls on its channel to answer (the subclass keeps the
    request being answered in ``request``)."""

    _writer: Writer | None = None
    _head_out = b""  # a response head held until the body bytes that follow it in the same call
    _peer: Any = None  # the connection's addresses, asked of the transport once
    _host: Any = None

    def _send(self, data: bytes) -> None:
        if self._head_out:
            data, self._head_out = self._head_out + data, b""
        writer = self._writer
        if writer is not None:
            writer.write(data)
        elif self.transport is not None:
            self.transport.write(data)

    def flush_head(self) -> None:
        """Send a held response head (the request's ``write`` calls this when it returns)."""
        if self._head_out:
            self._send(b"")

    def getPeer(self) -> Any:
        if self._peer is None:
            self._peer = self.transport.getPeer()
        return self._peer

    def getHost(self) -> Any:
        if self._host is None:
            self._host = self.transport.getHost()
        return self._host

    def isSecure(self) -> bool:
        return ISSLTransport.providedBy(self.transport)

    def writeHeaders(self, version: bytes, code: bytes, reason: bytes, headers: Any) -> None:
        request = self.request
        lines = [version, b" ", code, b" ", reason, b"\r\n", getattr(request, "wsrelay_fields", b"")]
        codings = getattr(request, "wsrelay_codings", None)  # an upstream's "gzip, chunked"
        for name, values in headers.getAllRawHeaders():
            if codings is not None and name.lower() == b"transfer-encoding":
                values = [codings + b", chunked"]
            for value in values:
                lines += (name, b": ", value, b"\r\n")
        lines.append(b"\r\n")
        self._head_out = b"".join(lines)

    def write(self, data: bytes) -> None:
        self._send(data)

    def writeSequence(self, data: list[bytes]) -> None:
        self._send(b"".join(data))

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.transport.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        if self.transport is not None:
            self.transport.unregisterProducer()

    def loseConnection(self) -> None:
        if self.transport is not None:
            self.transport.loseConnection()
