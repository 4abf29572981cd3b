"""Responses wsrelay writes itself: error pages and redirects, in one place.

Every error answer is a short ``text/plain`` body of the status line, with ``Content-Length``,
no caching, and the headers the error carries (``Retry-After`` on 503, for instance).
"""

from __future__ import annotations

from twisted.web.http import datetimeToString
from twisted.web.server import Request

from wsrelay.errors import ProxyError


def answer_error(request: Request, error: ProxyError, *, close: bool = False) -> bytes:
    """Set ``request``'s status and headers for ``error`` and return the body for ``render``.

    ``close``: end the connection after the answer (a malformed request leaves the stream in an
    unknown state, so nothing after it can be trusted).
    """
    request.setResponseCode(error.status, error.reason.encode("ascii"))
    request.responseHeaders.setRawHeaders(b"date", [datetimeToString()])
    for name in (b"server", b"content-encoding", b"transfer-encoding", b"set-cookie", b"etag", b"last-modified"):
        request.responseHeaders.removeHeader(name)
    request.responseHeaders.setRawHeaders(b"content-type", [b"text/plain; charset=utf-8"])
    request.responseHeaders.setRawHeaders(b"cache-control", [b"no-store"])
    for name, value in error.headers.items():
        request.responseHeaders.setRawHeaders(name, [value])
    body = error.body if request.method != b"HEAD" else b""
    request.responseHeaders.setRawHeaders(b"content-length", [str(len(error.body)).encode("ascii")])
    if close:
        request.responseHeaders.setRawHeaders(b"connection", [b"close"])
        request.channel.persistent = False
    return body


def error_response(error: ProxyError) -> bytes:
    """The whole response for ``error``, for a connection closed after it: a refusal the channel
    writes itself, before (or instead of) twisted.web's request."""
    head = [b"HTTP/1.1 %d %s" % (error.status, error.reason.encode("ascii")),
            b"Content-Type: text/plain; charset=utf-8", b"Content-Length: %d" % len(error.body),
            b"Cache-Control: no-store", b"Connection: close"]
    head += [name + b": " + value for name, value in error.headers.items()]
    return b"\r\n".join(head) + b"\r\n\r\n" + error.body


def answer_redirect(request: Request, status: int, location: bytes) -> bytes:
    """A 301/308 to ``location`` with a one-line body."""
    request.setResponseCode(status)
    request.responseHeaders.removeHeader(b"server")
    request.responseHeaders.setRawHeaders(b"date", [datetimeToString()])
    request.responseHeaders.setRawHeaders(b"location", [location])
    request.responseHeaders.setRawHeaders(b"content-type", [b"text/plain; charset=utf-8"])
    body = b"Moved to " + location + b"\n"
    request.responseHeaders.setRawHeaders(b"content-length", [str(len(body)).encode("ascii")])
    return body if request.method != b"HEAD" else b""
