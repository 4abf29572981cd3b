"""The client's opening handshake, checked before anything goes upstream (RFC 6455 section 4.2.1).

Pure: a request's method, version, target and header lines in, its subprotocols or an error (with
its HTTP status) out.
"""

from __future__ import annotations

import base64
import binascii
import re

from urllib.parse import urlsplit

from twisted.web.server import Request

from wsrelay import headers as H
from wsrelay.config import Route
from wsrelay.errors import BadRequest, Forbidden, UpgradeRequired

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
