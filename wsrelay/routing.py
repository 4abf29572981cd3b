"""Which route takes a request: (host, path) -> Route.  Pure: no I/O, no reactor.

Rules, most specific first (like nginx choosing a server block by name, then a location):

1. Host: a route naming the exact host beats one with a ``*.domain`` wildcard (the longer wildcard
   wins), which beats a route with no ``host`` (any host).
2. Path, among routes of the best host rank that match: an exact route (``=/path``) beats every
   prefix; among prefixes the longest wins.  Prefixes are plain string prefixes, as in nginx.

Paths are matched after normalisation (percent-decoding, dot-segments resolved, repeated slashes
merged) so ``/chat/../admin`` cannot slip past a route; the request itself is forwarded byte for
byte as the client sent it.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import unquote_to_bytes

from wsrelay.config import Route
from wsrelay.errors import BadRequest
from wsrelay.values import ip_literal


def normalize_path(raw: bytes) -> str:
    """The path of a request target for matching: decoded, dot-segments resolved, no query.

    Raises :class:`BadRequest` for targets that are not origin-form or that climb above the root.
    """
    path = raw.split(b"?", 1)[0].split(b"#", 1)[0]
    if not path.startswith(b"/"):
        raise BadRequest(f"request target {raw[:80]!r} is not an absolute path")
    if b"%" not in path and b"/." not in path and b"//" not in path and b"\0" not in path:
        return path.decode("latin-1")  # already normal (the common case): what _normalize returns
    return _normalize(path)


def _normalize(path: bytes) -> str:
    decoded = unquote_to_bytes(path)
    if b"\0" in decoded:
        raise BadRequest("request path contains a NUL byte")
    segments: list[bytes] = []
    for segment in decoded.split(b"/")[1:]:
        if segment == b"..":
            if not segments:
                raise BadRequest("request path climbs above the root")
            segments.pop()
        elif segment not in (b".", b""):
            segments.append(segment)
    trailing = decoded.endswith(b"/") or decoded.endswith(b"/.") or decoded.endswith(b"/..")
    text = "/" + "/".join(s.decode("latin-1") for s in segments)
    if trailing and text != "/":
        text += "/"
    return text


def normalize_host(host: bytes | str | None) -> str | None:
    """The host name of a ``Host`` header value, lower-case and without port or trailing dot;
    an IPv6 literal in the form route ``host`` patterns are stored in (``values.ip_literal``:
    compressed, no brackets), so ``[0:0::1]:80`` matches ``host = [::1]``."""
    if host is None:
        return None
    text = host.decode("latin-1") if isinstance(host, bytes) else host
    text = text.strip().lower()
    if text.startswith("["):
        end = text.find("]")
        if end <= 0:
            return None
        return ip_literal(text[: end + 1]) or text[: end + 1]  # not an IPv6 literal: matches no pattern
    if text.count(":") > 1:  # an IPv6 address without brackets (not valid in Host, but unambiguous)
        return ip_literal(text) or text
    name = text.rsplit(":", 1)[0] if ":" in text else text
    return name.rstrip(".") or None


def _host_rank(pattern: str, host: str | None) -> int:
    """0: no match; 1 + suffix length for a wildcard match; a large number for an exact match."""
    if host is None:
        return 0
    if pattern.startswith("*."):
        suffix = pattern[1:]  # ".example.com"
        return 1 + len(suffix) if host.endswith(suffix) and len(host) > len(suffix) else 0
    return 1_000_000 if host == pattern else 0


class Router:
    """Routes in the configuration's order, with the rules of the module docstring."""

    def __init__(self, routes: Iterable[Route]) -> None:
        self.routes = tuple(routes)

    def match(self, host: str | None, path: str) -> Route | None:
        """The route for a normalised ``host`` (or None) and a normalised ``path``."""
        best: Route | None = None
        best_key: tuple[int, int, int] = (-1, -1, -1)
        for route in self.routes:
            if route.hosts:
                host_rank = max(_host_rank(p, host) for p in route.hosts)
                if host_rank == 0:
                    continue
            else:
                host_rank = 0
            if route.exact:
                if path != route.path:
                    continue
                path_rank = (1, len(route.path))
            else:
                if not path.startswith(route.path):
                    continue
                path_rank = (0, len(route.path))
            key = (host_rank, *path_rank)
            if key > best_key:
                best, best_key = route, key
        return best
