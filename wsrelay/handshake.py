"""The opening handshake, both ends of it.  Pure: no I/O.

- :func:`check_handshake`: the client's, checked before anything goes upstream (RFC 6455 section
  4.2.1): a request's method, version, target and header lines in, its subprotocols or an error
  (with its HTTP status) out;
- :func:`refusal`: an upstream's answer that is not a good 101, turned into the client's answer.
"""

from __future__ import annotations

import base64
import binascii
import re

from urllib.parse import urlsplit

from twisted.web.http import NO_BODY_CODES, RESPONSES
from twisted.web.server import Request

from wsrelay import headers as H
from wsrelay.config import Route
from wsrelay.errors import BadGateway, BadRequest, Forbidden, ProxyError, UpgradeRequired
from wsrelay.http.response import LENGTH, InvalidResponse
from wsrelay.http.response import parse_head as parse_response

_TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")

#: Handshake fields each hop negotiates itself; never copied from one hop to the other.
HANDSHAKE_FIELDS = frozenset({
    b"sec-websocket-key", b"sec-websocket-version", b"sec-websocket-extensions",
    b"sec-websocket-protocol", b"sec-websocket-accept", b"origin", b"user-agent",
})


def check_handshake(request: Request, route: Route, raw: list[tuple[bytes, bytes]]) -> list[bytes]:
    """Validate the client's opening handshake (RFC 6455 section 4.2.1); return its subprotocols.

    Everything Autobahn would refuse later is refused here, before an upstream is contacted.
    """
    if not route.websocket.enabled:
        raise Forbidden(f"WebSocket is off on route {route.name}")
    if request.method != b"GET" or request.clientproto != b"HTTP/1.1":
        raise BadRequest("a WebSocket handshake must be GET over HTTP/1.1")
    if b"#" in request.uri:
        raise BadRequest("a WebSocket URI has no fragment (RFC 6455 section 3)")
    versions = H.get(raw, b"sec-websocket-version")
    if [v.strip() for v in versions] != [b"13"]:
        raise UpgradeRequired(f"unsupported Sec-WebSocket-Version {versions!r}",
                              headers={b"Sec-WebSocket-Version": b"13"})
    keys = H.get(raw, b"sec-websocket-key")
    try:
        valid_key = len(keys) == 1 and len(base64.b64decode(keys[0].strip(), validate=True)) == 16
    except (binascii.Error, ValueError):
        valid_key = False
    if not valid_key:
        raise BadRequest("missing or invalid Sec-WebSocket-Key")
    origins = H.get(raw, b"origin")
    if len(origins) > 1:
        raise BadRequest("more than one Origin header")
    if origins and not valid_origin(origins[0].strip().decode("latin-1")):
        raise BadRequest(f"invalid Origin {origins[0][:100]!r}")
    allowed = route.websocket.allowed_origins
    if allowed != ("*",):
        # Browsers always send Origin, so a handshake without one is not a browser's: refusing
        # it protects no user and breaks every non-browser client (ws_require_origin does).
        if not origins:
            if route.websocket.require_origin:
                raise Forbidden(f"no Origin, and route {route.name} requires one (ws_require_origin)")
        elif origins[0].strip().lower().decode("latin-1") not in allowed:
            raise Forbidden(f"Origin {origins[:1]!r} is not allowed on route {route.name}")
    protocols = [p.strip() for v in H.get(raw, b"sec-websocket-protocol") for p in v.split(b",") if p.strip()]
    if len(set(protocols)) != len(protocols):
        raise BadRequest("a subprotocol is offered twice")
    if any(not _TOKEN.match(p) for p in protocols):
        raise BadRequest("invalid subprotocol token")
    return protocols


def valid_origin(value: str) -> bool:
    """Whether an Origin value is one the client leg's WebSocket server accepts: ``null``, a
    ``file:`` URL (Chromium's, for local pages), or a URL with a host and, if any, a port of
    digits within 0-65535 (RFC 6454's serialization is scheme://host[:port])."""
    if value.lower() == "null":
        return True
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 (a port that is not a number, or out of range: ValueError)
    except ValueError:
        return False
    return parts.scheme.lower() == "file" or bool(parts.hostname)


#: The longest upstream refusal body passed on to the client.
REFUSAL_BODY_MAX = 65536

#: Fields of an upstream refusal never passed on, besides hop-by-hop ones: the framing (wsrelay
#: frames the body itself) and fields twisted.web sets.  ``Sec-WebSocket-*`` belong to the
#: upstream hop too.
_NOT_PASSED = frozenset({b"content-length", b"date", b"server"})


class UpstreamRefusal(ProxyError):
    """The upstream's own final answer to the handshake, passed on to the client.

    ``fields``: its end-to-end fields in wire order (repeated ``Set-Cookie`` lines intact);
    ``upstream_body``: its body when that came whole with the head, else None (the client then
    gets a plain-text body naming the status, and none of the fields describing the upstream's).
    """

    def __init__(self, status: int, reason: str, fields: list[H.Header], body: bytes | None, detail: str) -> None:
        super().__init__(detail)
        self.status, self.reason, self.fields, self.upstream_body = status, reason, fields, body

    @property
    def body(self) -> bytes:
        if self.status in NO_BODY_CODES:
            return b""
        return self.upstream_body if self.upstream_body is not None else super().body


def _describes_body(name: bytes) -> bool:
    name = name.lower()
    return name.startswith(b"content-") or name in {b"etag", b"last-modified"}


def refusal(head: bytes, rest: bytes, detail: str) -> ProxyError:
    """The client's answer to an upstream that answered the handshake with ``head`` (not a good
    101); ``rest`` is what came after the head.

    A final status (2xx to 5xx: a redirect to a login page, a 401 and its challenge, a 503 and its
    Retry-After) goes to the client with the upstream's end-to-end fields, and its body if it came
    whole (``Content-Length``, at most ``REFUSAL_BODY_MAX``).  A 1xx (a 101 that failed the checks
    included: it is not a final answer) or a head the HTTP engine would refuse (a malformed status
    line or field, ambiguous framing: ``wsrelay.http.response``) is a 502, counted against the
    server.
    """
    shown = head.split(b"\r\n", 1)[0][:100].decode("latin-1")
    try:  # judged as the HTTP engine judges every upstream response (wsrelay.http.response)
        response = parse_response(head, b"GET")
    except InvalidResponse as e:
        return BadGateway(f"upstream answered the WebSocket handshake with an invalid head: {e}: {detail}")
    status = response.code
    if status < 200:
        return BadGateway(f"upstream answered the WebSocket handshake with {shown!r}: {detail}")
    length = response.length if response.framing == LENGTH else None
    body = rest[:length] if length is not None and length <= REFUSAL_BODY_MAX and len(rest) >= length else None
    passed = [(n, v) for n, v in H.strip_hop_by_hop(response.fields)
              if n.lower() not in _NOT_PASSED and not n.lower().startswith(b"sec-websocket-")
              and (body is not None or not _describes_body(n))]
    phrase = response.phrase.decode("latin-1")
    reason = "".join(c for c in phrase if " " <= c <= "~")[:60].strip() or RESPONSES.get(status, b"Refused").decode()
    return UpstreamRefusal(status, reason, passed, body, f"upstream answered the WebSocket handshake with {shown!r}")
