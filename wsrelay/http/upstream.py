"""wsrelay's HTTP/1.1 client toward upstream servers: one request at a time per connection.

Invariants:

- The request head is written once (one ``write``); a spooled request body follows from its file
  as the transport asks for it (a pull producer: the upstream's back-pressure bounds what is
  buffered), framed by ``Content-Length``.
- The response head is judged strictly before anything of it reaches the client
  (:func:`wsrelay.http.response.parse_head`): a status line of ``HTTP/1.x``, three digits and an optional reason; header
  fields of a token name and a value free of control bytes (no NUL, CR, LF, obs-fold); at most
  ``max_head`` bytes; one unambiguous framing.  Anything else is an :class:`InvalidResponse`: the
  upstream's fault.
- The body's framing is wsrelay's own (``Content-Length`` counted, chunked decoded by
  :mod:`wsrelay.http.chunked`, or to the connection's end), so a response ends exactly where its
  framing says; a body cut short is reported as broken, never as complete.
- A connection goes back to its pool only when the response ended cleanly, nothing followed it,
  the whole request was sent, and both sides allow reuse.
- The handler (:class:`wsrelay.http.exchange.Exchange`) hears of every outcome exactly once:
  ``response_head``, ``response_data``..., then ``response_end``, or ``upstream_failed``.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPullProducer
from twisted.internet.protocol import Factory, Protocol
from zope.interface import implementer

from wsrelay.errors import BadRequest
from wsrelay.http.chunked import ChunkedDecoder
from wsrelay.http.response import CHUNKED, LENGTH, NO_BODY, TO_CLOSE, InvalidResponse, parse_head
from wsrelay.http.wire import Writer, no_delay

#: Body bytes read from the spool file per write.
_READ_SIZE = 256 * 1024

_IDLE, _HEAD, _BODY, _DONE = range(4)


class UpstreamFailure(Exception):
    """How an exchange with an upstream connection failed.

    ``kind``: ``"no response"`` (the connection ended before any response byte), ``"invalid"``
    (an :class:`InvalidResponse`), ``"broken"`` (the connection ended inside a response body).
    ``stale``: the connection was a reused one and failed before any response byte (Twisted's
    ``retryAutomatically`` case: an idempotent request is resent on a new connection).
    """

    def __init__(self, kind: str, detail: str, *, stale: bool = False, reason: Any = None) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail
        self.stale = stale
        self.reason = reason


def request_head(method: bytes, target: bytes, fields: list[tuple[bytes, bytes]], length: int | None,
                 close: bool) -> bytes:
    """A request head for the upstream: the request line, ``fields``, ``Content-Length`` when
    ``length`` is not None, ``Connection: close`` when the connection is not to be kept."""
    lines = [method, b" ", target, b" HTTP/1.1\r\n"]
    for name, value in fields:
        lines += (name, b": ", value, b"\r\n")
    if length is not None:
        lines.append(b"Content-Length: %d\r\n" % length)
    if close:
        lines.append(b"Connection: close\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)


@implementer(IPullProducer)
class _BodySender:
    """Writes a spooled request body as the upstream connection asks for more."""

    def __init__(self, protocol: UpstreamProtocol, content: Any, size: int) -> None:
        self.protocol = protocol
        self.content = content
        self.left = size

    def resumeProducing(self) -> None:
        protocol = self.protocol
        if protocol.sender is not self:
            return
        data = self.content.read(min(_READ_SIZE, self.left)) if self.left else b""
        if not data:
            protocol.body_sent()
            return
        self.left -= len(data)
        protocol.transport.write(data)
        protocol.handler.request_progress()
        if not self.left:
            protocol.body_sent()

    def stopProducing(self) -> None:
        self.protocol.sender = None


class UpstreamProtocol(Protocol):
    """One connection to one upstream server."""

    def __init__(self, pool: Any, key: Any, max_head: int) -> None:
        self.pool = pool
        self.key = key
        self.max_head = max_head
        self.handler: Any = None
        self.state = _IDLE
        self.uses = 0
        self.method = b""
        self.sender: _BodySender | None = None
        self.sending = False
        self.reusable = False
        self.got_bytes = False
        self.paused = False
        self.connected = False
        self._buffer = b""
        self._framing = NO_BODY
        self._left = 0
        self._decoder: ChunkedDecoder | None = None

    def connectionMade(self) -> None:
        self.connected = True
        no_delay(self.transport)
        self.writer = Writer(self.transport)

    # -- the request ----------------------------------------------------------------------------

    def request(self, handler: Any, method: bytes, head: bytes, content: Any = None, size: int = 0) -> None:
        """Send a request: ``head`` (request line to the empty line), then ``size`` bytes of
        ``content`` (a file positioned at the body's start).  ``handler`` hears the outcome."""
        self.handler = handler
        self.method = method
        self.state = _HEAD
        self.uses += 1
        self.got_bytes = False
        self.reusable = True
        self._buffer = b""
        if size and size <= 65536:
            self.writer.write(head + content.read(size))
            handler.request_sent()
        elif size:
            transport = self.writer.queue()
            transport.write(head)
            self.sending = True
            self.sender = _BodySender(self, content, size)
            transport.registerProducer(self.sender, False)
        else:
            self.writer.write(head)
            handler.request_sent()

    def body_sent(self) -> None:
        if self.sender is None:
            return
        self.sender = None
        self.sending = False
        self.transport.unregisterProducer()
        if self.handler is not None and self.state == _HEAD:
            self.handler.request_sent()

    def _stop_sending(self) -> None:
        """The upstream answered before it took the whole body: stop sending it (RFC 9112
        section 9.3); the connection is closed once the response has ended."""
        if self.sender is not None:
            self.sender = None
            self.transport.unregisterProducer()
            self.reusable = False
        self.sending = False

    # -- the response ---------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.state == _IDLE or self.state == _DONE:  # nothing was asked: a broken upstream
            self.reusable = False
            self.transport.abortConnection()
            return
        self.got_bytes = True
        try:
            while data and (self.state == _HEAD or self.state == _BODY):
                if self.state == _HEAD:
                    data = self._head_data(data)
                else:
                    data = self._body_data(data)
        except InvalidResponse as e:
            self._fail(UpstreamFailure("invalid", f"invalid response: {e}"))
            return
        if self.state == _BODY and self.handler is not None:
            self.handler.response_flush()  # the head goes out now, with the body bytes come so far

    def _head_data(self, data: bytes) -> bytes:
        buffer = self._buffer + data if self._buffer else data
        end = buffer.find(b"\r\n\r\n")
        if end < 0 or end + 4 > self.max_head:
            if len(buffer) > self.max_head or end >= 0:
                raise InvalidResponse(f"response head over {self.max_head} bytes")
            if buffer.count(b"\n") != buffer.count(b"\r\n"):
                raise InvalidResponse("bare LF in the response head")
            self._buffer = buffer
            return b""
        self._buffer = b""
        head, rest = buffer[:end + 4], buffer[end + 4:]
        response = parse_head(head, self.method)
        if 100 <= response.code < 200:
            if response.code == 101:
                raise InvalidResponse("101 Switching Protocols to a request that asked for no upgrade")
            return rest  # an interim response (100 Continue, 103 Early Hints): the final one follows
        if self.sending:
            self._stop_sending()
        self.reusable = self.reusable and response.reusable
        self._framing = response.framing
        if response.framing == LENGTH:
            self._left = response.length or 0
            if not self._left:
                self._framing = NO_BODY
        elif response.framing == CHUNKED:
            self._decoder = ChunkedDecoder(self.max_head)
        self.state = _BODY
        self.handler.response_head(response)
        if self.handler is None:  # the handler gave the exchange up meanwhile
            return b""
        if self._framing == NO_BODY:
            self._end(rest)
        return rest

    def _body_data(self, data: bytes) -> bytes:
        framing = self._framing
        if framing == LENGTH:
            if len(data) < self._left:
                self._left -= len(data)
                self.handler.response_data(data)
                return b""
            piece, rest = data[:self._left], data[self._left:]
            self._left = 0
            self.handler.response_data(piece)
            if self.handler is not None:
                self._end(rest)
            return rest
        if framing == CHUNKED:
            try:
                pieces, rest = self._decoder.feed(data)  # type: ignore[union-attr]
            except BadRequest as e:
                raise InvalidResponse(str(e)) from None
            for piece in pieces:
                if self.handler is None:
                    return b""
                if piece:
                    self.handler.response_data(piece)
            if self._decoder is not None and self._decoder.done and self.handler is not None:
                self._decoder = None
                self._end(rest)
            return rest
        self.handler.response_data(data)  # TO_CLOSE
        return b""

    def _end(self, rest: bytes = b"") -> None:
        """The response has ended: the handler is told, and the connection pooled or closed
        (``rest``: bytes after the response, after which nothing on it can be trusted)."""
        if rest:
            self.reusable = False
        handler, self.handler = self.handler, None
        self.state = _DONE
        reuse = self.reusable and not self.sending
        if handler is not None:
            handler.response_end()
        if reuse and self.connected:
            self.state = _IDLE
            if self.paused:
                self.paused = False
                self.transport.resumeProducing()
            self.pool.put(self)
        else:
            self.close()

    def _fail(self, failure: UpstreamFailure) -> None:
        handler, self.handler = self.handler, None
        self.state = _DONE
        self.close()
        if handler is not None:
            handler.upstream_failed(failure)

    # -- flow control and endings ---------------------------------------------------------------

    def pauseProducing(self) -> None:
        if self.transport is not None and not self.paused:
            self.paused = True
            self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        if self.transport is not None and self.paused:
            self.paused = False
            self.transport.resumeProducing()

    def abandon(self) -> None:
        """The exchange is over before the response is (client gone, timeout, internal error):
        the connection is closed, never pooled half-read."""
        self.handler = None
        self.state = _DONE
        self.close()

    def close(self) -> None:
        self.reusable = False
        self.sender = None
        if self.connected and self.transport is not None:
            self.transport.abortConnection()

    def connectionLost(self, reason: Any = None) -> None:
        was_connected, self.connected = self.connected, False
        self.pool.lost(self)
        handler, self.handler = self.handler, None
        state, self.state = self.state, _DONE
        if handler is None or not was_connected:
            return
        detail = describe(reason)
        if not self.got_bytes:
            handler.upstream_failed(UpstreamFailure("no response", f"no response: {detail}",
                                                    stale=self.uses > 1, reason=reason))
        elif state == _BODY and self._framing == TO_CLOSE and reason is not None and reason.check(ConnectionDone):
            handler.response_end()  # a body delimited by the connection's clean end (RFC 9112 6.3)
        elif state == _HEAD:
            handler.upstream_failed(UpstreamFailure("invalid", f"incomplete response head: {detail}",
                                                    reason=reason))
        else:
            handler.upstream_failed(UpstreamFailure("broken", f"upstream broke off the response body: "
                                                    f"{detail}", reason=reason))


def describe(reason: Any) -> str:
    """A failure in a few words for a log line (TLS failures explained by ``wsrelay.tls.upstream``)."""
    if reason is None:
        return "connection lost"
    try:
        from wsrelay.tls.upstream import describe_tls_failure

        return describe_tls_failure(reason)
    except Exception:
        return reason.getErrorMessage() or reason.type.__name__


class UpstreamFactory(Factory):
    """Builds :class:`UpstreamProtocol` for one server's pool key."""

    noisy = False

    def __init__(self, pool: Any, key: Any, max_head: int) -> None:
        self.pool = pool
        self.key = key
        self.max_head = max_head

    def buildProtocol(self, addr: Any) -> UpstreamProtocol:
        return UpstreamProtocol(self.pool, self.key, self.max_head)
