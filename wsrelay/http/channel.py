"""The client side of an HTTP/1.1 connection: heads parsed by llhttp, one request at a time.

Invariants:

- A head is found, sized and its request line judged by :mod:`wsrelay.http.rules`; its fields
  and the body's framing are parsed by llhttp (httptools), strictly.  Every malformed request is
  answered (400, 408, 413, 414, 431, 501, 505) with a short body, one log line and an access-log
  line, then the connection is closed: no silent close, no wait for a timer, and nothing of it is
  dispatched.
- Requests are handled one at a time, in order.  Bytes that arrive while a request is handled
  are kept (the transport stops reading once they pass ``max_header_size``) and parsed when its
  response has ended.
- llhttp parses each head (a parser per request, fed exactly the head); the body's framing is
  wsrelay's own (``Content-Length`` counted, chunked decoded by :mod:`wsrelay.http.chunked`), so
  each message ends exactly where its framing says, and the bytes after it stay the channel's
  (the next pipelined request, or what a WebSocket client sent early).
- Deadlines: ``client_header_timeout`` for a whole head (from the connection's start, or from the
  first byte of a later head), ``client_body_timeout`` between two reads of a body (408 for
  either), ``keepalive_timeout`` for an idle connection between requests (closed quietly).
- The WebSocket layer takes a connection over with :meth:`RelayChannel.detach`.
"""

from __future__ import annotations

import re
from typing import Any

import httptools
from twisted.internet.interfaces import IHandshakeListener
from twisted.logger import Logger
from zope.interface import implementer

from wsrelay.answers import error_response
from wsrelay.errors import BadRequest, HeaderFieldsTooLarge, ProxyError, RequestTimeout, URITooLong
from wsrelay.http import rules
from wsrelay.http.chunked import ChunkedDecoder
from wsrelay.http.deadline import Deadline
from wsrelay.http.request import log_early_refusal
from wsrelay.http.webchannel import WebChannel
from wsrelay.http.wire import Writer, no_delay
from wsrelay.tls.server import is_tls_error

log = Logger()

_READING_HEAD, _READING_BODY, _HANDLING, _CLOSED, _DETACHED = range(5)
_EMPTY_LINES = re.compile(rb"(?:\r\n)*")


@implementer(IHandshakeListener)
class RelayChannel(WebChannel):
    """What ``twisted.web.server.Request`` needs from a channel, over wsrelay's own parser (the
    calls of the response's side are :class:`~wsrelay.http.webchannel.WebChannel`'s)."""

    def __init__(self, site: Any, config: Any) -> None:
        self.site = self.factory = site
        self.requestFactory = site.requestFactory
        self.reactor = site.gateway.reactor
        self.max_request_line = config.max_request_line
        self.max_header_size = config.max_header_size
        self.header_timeout = config.client_header_timeout
        self.body_timeout = config.client_body_timeout
        self.keepalive_timeout = config.keepalive_timeout
        self.state = _READING_HEAD
        self.persistent = True
        self.refused = False
        self.request: Any = None
        self.method = self.target = self.version = None
        self._buffer = b""  # an incomplete head
        self._pending = b""  # bytes after the request being handled
        self._paused = False
        self._feeding = False
        self._fields: list[tuple[bytes, bytes]] = []
        self._head = b""  # the head being judged, for the access-log line of a refusal
        self._remaining = 0  # Content-Length bytes still to come
        self._chunked: ChunkedDecoder | None = None
        self._deadline = Deadline(self.reactor)

    # -- connection ----------------------------------------------------------------------------

    _tls_done = False  # a TLS listener's handshake completed on this connection

    def connectionMade(self) -> None:
        no_delay(self.transport)
        self._writer = Writer(self.transport)
        self._set_timer(self.header_timeout, self._head_timed_out)

    def dataReceived(self, data: bytes) -> None:
        if self.state == _HANDLING:
            self._pending += data
            if len(self._pending) > self.max_header_size and not self._paused:
                self._paused = True
                self.transport.pauseProducing()
            return
        if self.state >= _CLOSED:
            return
        self._feed(data)

    def handshakeCompleted(self) -> None:
        """TLS listeners: the handshake is over (``IHandshakeListener``, called by Twisted's TLS)."""
        self._tls_done = True
        self.site.tls_counters.handshakes += 1

    def connectionLost(self, reason: Any = None) -> None:
        self.site.channels.discard(self)
        if self.held:
            self._release()
        tls = self.site.tls_counters
        if tls is not None and not self._tls_done and is_tls_error(reason):
            tls.failures += 1
        self._stop_timer()
        state, self.state = self.state, _CLOSED
        request, self.request = self.request, None
        if request is not None and state != _DETACHED:
            request.connectionLost(reason)

    # -- parsing -------------------------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        self._feeding = True
        try:
            while True:
                while data and self.state in (_READING_HEAD, _READING_BODY):
                    if self.state == _READING_HEAD:
                        data = self._head_data(data)
                    else:
                        data = self._body_data(data)
                if data and self.state == _HANDLING:
                    self._pending = data + self._pending
                elif self._pending and self.state == _READING_HEAD:  # a response ended meanwhile
                    data, self._pending = self._pending, b""
                    continue
                break
        except ProxyError as e:
            self.refuse(e)
        finally:
            self._feeding = False

    def _head_data(self, data: bytes) -> bytes:
        if self._buffer:
            data = self._buffer + data
            self._buffer = b""
        elif self.request is None and self._deadline.kind == "keepalive":
            self._set_timer(self.header_timeout, self._head_timed_out)  # the first byte of a head
        if data.startswith(b"\r\n"):  # RFC 9112 section 2.2: empty lines before a request line
            data = data[_EMPTY_LINES.match(data).end():]  # one slice: linear in what is skipped
        end = data.find(b"\r\n\r\n")
        if end < 0:
            if len(data) > self.max_header_size:
                raise HeaderFieldsTooLarge(f"request head over {self.max_header_size} bytes")
            problem = rules.check_partial(data, self.max_request_line)
            if problem is not None:
                raise problem
            self._buffer = data
            return b""
        head, rest = data[:end + 2], data[end + 4:]
        line_end = head.find(b"\r\n")
        if line_end > self.max_request_line:
            raise URITooLong(f"request line of {line_end} bytes")
        if len(head) + 2 > self.max_header_size:
            raise HeaderFieldsTooLarge(f"request head of {len(head) + 2} bytes")
        self._head = head
        method, target, version = rules.request_line(head[:line_end + 2])
        self.method, self.target, self.version = method, target, version
        if rules.bare_lf(head):
            raise BadRequest("bare LF in the request head (RFC 9112 section 2.2)")
        self._fields = []
        try:
            httptools.HttpRequestParser(self).feed_data(head + b"\r\n")
        except httptools.HttpParserUpgrade:
            pass  # a WebSocket handshake: the connection may be taken over once it is handled
        except httptools.HttpParserError as e:
            raise rules.parser_error(str(e)) from None
        self._start_request(self._fields, method, target, version)
        if self.state != _READING_HEAD:  # refused
            return b""
        if self._remaining or self._chunked is not None:
            self.state = _READING_BODY
            self._set_timer(self.body_timeout, self._body_timed_out)
        else:
            self._dispatch()
        return rest

    def _start_request(self, fields: list[tuple[bytes, bytes]], method: bytes, target: bytes,
                       version: bytes) -> None:
        request = self.request = self.requestFactory(self)
        request.wsrelay_raw = fields  # the fields in wire order, beside twisted.web's Headers
        add = request.requestHeaders.addRawHeader
        coding: list[bytes] = []
        length: int | None = 0
        connection: list[bytes] = []
        expect = False
        for name, value in fields:
            add(name, value)
            lower = name.lower()
            if lower == b"transfer-encoding":
                coding.append(value)
            elif lower == b"content-length":
                length = int(value)  # llhttp allows one, of digits only
            elif lower == b"connection":
                connection.append(value)
            elif lower == b"expect":
                expect = value.strip().lower() == b"100-continue"
        if coding:
            rules.transfer_coding(coding, version)
            length = None
            self._chunked = ChunkedDecoder(self.max_header_size)
        else:
            self._chunked = None
            self._remaining = length or 0
        if connection:
            tokens = {t.strip().lower() for v in connection for t in v.split(b",")}
        else:
            tokens = set()
        if version != b"HTTP/1.1":
            self.persistent = False
        elif b"close" in tokens:
            self.persistent = False
            request.responseHeaders.setRawHeaders(b"connection", [b"close"])
        request.method, request.uri, request.clientproto = method, target, version
        request.gotLength(length)  # may refuse (413) at once
        if self.refused:
            return
        if expect and version == b"HTTP/1.1" and (self._remaining or self._chunked is not None):
            self._send(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _body_data(self, data: bytes) -> bytes:
        self._set_timer(self.body_timeout, self._body_timed_out)
        request = self.request
        decoder = self._chunked
        if decoder is None:
            take = self._remaining
            if len(data) <= take:
                body, rest = data, b""
            else:
                body, rest = data[:take], data[take:]
            self._remaining -= len(body)
            request.handleContentChunk(body)
            complete = not self._remaining
        else:
            pieces, rest = decoder.feed(data)
            for piece in pieces:
                if self.refused:
                    break
                request.handleContentChunk(piece)
            complete = decoder.done
        if self.refused:
            return b""
        if complete:
            self._dispatch()
        return rest

    # httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        self._fields.append((name, value))

    # -- one request at a time ------------------------------------------------------------------

    def _dispatch(self) -> None:
        self._cancel_timer()
        self.state = _HANDLING
        self._chunked = None
        request = self.request
        request.requestReceived(self.method, self.target, self.version)

    def requestDone(self, request: Any) -> None:
        """Called by the request when its response has ended (``Request._cleanup``)."""
        if request is not self.request:
            return
        self.request = None
        if self.state != _HANDLING:
            return
        if not self.persistent:
            self.state = _CLOSED
            self.transport.loseConnection()
            return
        self.state = _READING_HEAD
        self.method = self.target = self.version = None
        self._head = b""
        self._set_timer(self.keepalive_timeout, self._idle_timed_out, "keepalive")
        data, self._pending = self._pending, b""
        if self._paused:
            self._paused = False
            self.transport.resumeProducing()
        if data:
            if self._feeding:
                self._pending = data  # the _feed loop under way picks it up
            else:
                self._feed(data)

    # -- the WebSocket seam ---------------------------------------------------------------------

    def detach(self) -> tuple[Any, bytes] | None:
        """Give the connection up for a protocol switch (the seam between the HTTP engine and the
        WebSocket layer): returns the transport and the bytes the client sent after the request
        being answered, and takes no part in the connection from then on; None when the client has
        gone (or is going) already."""
        transport = self.transport
        if (transport is None or self.state != _HANDLING or not getattr(transport, "connected", True)
                or getattr(transport, "disconnecting", False)):
            return None
        self.flush_head()
        self.site.channels.discard(self)
        if self.held:
            self._release()
        self._writer = None  # the transport is the WebSocket layer's from now on
        # The request keeps its channel (twisted.web's): the channel lets go of the request, so
        # the two are no reference cycle once the WebSocket layer lets the request go.
        self.request = None
        pending, self._pending = self._pending, b""
        self.state = _DETACHED
        self._stop_timer()
        self.transport = None
        if self._paused:
            self._paused = False
            transport.resumeProducing()
        return transport, pending

    def stop_keepalive(self) -> bool:
        """No more requests on this connection: closed now if it is idle between requests, else
        after the response under way (which says ``Connection: close`` if its head is not out).
        A connection that has not had a request yet (accepted just before its listener closed;
        its request may be on the way) gets that one.  Returns whether it stays open."""
        if self.state >= _CLOSED or self.transport is None:
            return False
        self.persistent = False
        if (self.state == _READING_HEAD and not self._buffer and self.request is None
                and self._deadline.kind == "keepalive"):
            self.state = _CLOSED
            self._stop_timer()
            self.transport.loseConnection()
            return False
        request = self.request
        if request is not None and not request.startedWriting:
            request.responseHeaders.setRawHeaders(b"connection", [b"close"])
        return True

    #: Set by the site when a drain waits for this connection (``Gateway.live``) to close.
    held = False
    #: A held connection is not one client's exchange: ``limit_conn`` does not count it.
    client_ip = None

    def shutdown(self) -> None:
        """The drain is over: end this connection now."""
        if self.transport is not None:
            self.transport.abortConnection()

    def _release(self) -> None:
        self.held = False
        self.site.gateway.closed(self)

    # -- refusals and deadlines ------------------------------------------------------------------

    def refuse(self, error: ProxyError, request: Any = None) -> None:
        """Answer ``error`` on the raw transport and close: a request wsrelay will not handle."""
        if self.refused or self.transport is None:
            return
        self.refused = True
        self.state = _CLOSED
        self._cancel_timer()
        host = getattr(self.getPeer(), "host", None)  # None: a unix: listener
        peer = host or "-"
        log.info("{client}: {status} ({detail})", client=peer, status=error.status, detail=error.detail)
        self._head_out = b""  # a response of the request being refused, never finished
        self._send(error_response(error))
        request = request or self.request
        if request is not None:
            request.log_refusal(error.status, len(error.body))
        else:  # refused on its request line: no request yet, an access-log line all the same
            log_early_refusal(self.site.gateway, host, self.method, self.target, self.version, self._head,
                              error.status, len(error.body))
        self.transport.loseConnection()

    def _set_timer(self, seconds: float, call: Any, kind: str = "head") -> None:
        self._deadline.set(seconds, call, kind)

    def _cancel_timer(self) -> None:
        self._deadline.clear()

    def _stop_timer(self) -> None:
        self._deadline.stop()

    def _head_timed_out(self) -> None:
        if self._buffer or self.request is not None:
            self.refuse(RequestTimeout(f"no complete request head within {self.header_timeout}s"))
        else:  # nothing sent: nobody to answer
            self._close_quietly()

    def _body_timed_out(self) -> None:
        self.refuse(RequestTimeout(f"no request body bytes for {self.body_timeout}s"))

    def _idle_timed_out(self) -> None:
        self._close_quietly()

    def _close_quietly(self) -> None:
        if self.state == _READING_HEAD and not self._buffer and self.transport is not None:
            self.state = _CLOSED
            self.transport.loseConnection()

