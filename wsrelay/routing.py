"""Which route takes a request: (host, path) -> Route.  Pure: no I/O, no reactor.

Rules, most specific first (like nginx choosing a server block by name, then a location):

1. Host: a route naming the exact host beats one with a ``*.domain`` wildcard (the longer wildcard
   wins), which beats a route with no ``host`` (any host).
2. Path, among routes of the best host rank that match: an exact route (``=/path``) beats every
   prefix; among prefixes the longest wins.  Prefixes are plain string prefixes, as in nginx.

Paths are matched after normalisation (percent-decoding, dot-segments resolved, repeated slashes
merged, as nginx does) so ``/chat/../admin`` cannot slip past a route; the request itself is
forwarded byte for byte as the client sent it.  That is only safe when every upstream reads the
target the same way, so :func:`normalize_path` refuses (400) a target whose dot segments lead
somewhere else for another common parser (see :data:`_READINGS`): the route and the upstream
always see the same path.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from urllib.parse import unquote_to_bytes

from wsrelay.config import Route
from wsrelay.errors import BadRequest
from wsrelay.config.hosts import ip_literal

#: A request target is visible ASCII (RFC 9112 section 3.2; RFC 3986 has no other characters).
_VISIBLE = re.compile(rb"[\x21-\x7e]+")
_BAD_PERCENT = re.compile(rb"%(?![0-9A-Fa-f]{2})")
_ENCODED_DOTS = {b".", b"%2e"}  # what WHATWG URL parsers take for a dot in a dot segment


def normalize_path(raw: bytes) -> str:
    """The path of a request target for matching: decoded, dot-segments resolved, no query.

    Raises :class:`BadRequest` for a target that is not origin-form visible ASCII, has a
    fragment, climbs above the root, or whose path common parsers read differently.
    """
    if not _VISIBLE.fullmatch(raw):
        raise BadRequest(f"request target {raw[:80]!r} holds a space, control byte or non-ASCII byte")
    path, _, _ = raw.partition(b"?")
    if not path.startswith(b"/"):
        raise BadRequest(f"request target {raw[:80]!r} is not an absolute path")
    if b"#" in raw:
        raise BadRequest("a request target has no fragment (RFC 9112 section 3.2)")
    if b"%" not in path and b"/." not in path and b"//" not in path and b"\\" not in path:
        return path.decode("ascii")  # already normal (the common case): what _normalize returns
    return _normalize(path)


def _normalize(path: bytes) -> str:
    """The routing reading of ``path`` (as nginx: decode, merge slashes, resolve dots), after
    checking that every reading in :data:`_READINGS` leads to the same place."""
    if not _VISIBLE.fullmatch(path):
        raise BadRequest(f"request path {path[:80]!r} holds a space, control byte or non-ASCII byte")
    if b"\\" in path:
        raise BadRequest("backslash in request path (a separator to some servers, not to others)")
    if _BAD_PERCENT.search(path):
        raise BadRequest("malformed percent-encoding in request path")
    decoded = unquote_to_bytes(path)
    if b"\0" in decoded:
        raise BadRequest("request path contains a NUL byte")
    segments, trailing = _resolve(decoded.split(b"/")[1:], keep_empty=False, is_dot=_plain_dot, strict=True)
    routed = _join(segments, trailing)
    canonical = _canonical(routed)
    for name, reading in _READINGS:
        if _canonical(reading(path)) != canonical:
            raise BadRequest(f"ambiguous request path {path[:80]!r}: {name} reads it differently")
    return routed.decode("latin-1")


def _plain_dot(segment: bytes) -> int:
    """2 for a ``..`` segment, 1 for ``.``, 0 for any other."""
    return 2 if segment == b".." else 1 if segment == b"." else 0


def _whatwg_dot(segment: bytes) -> int:
    lowered = segment.lower()
    if lowered in _ENCODED_DOTS:
        return 1
    return 2 if any(lowered == a + b for a in _ENCODED_DOTS for b in _ENCODED_DOTS) else 0


def _resolve(segments: Iterable[bytes], *, keep_empty: bool, is_dot: Callable[[bytes], int],
             strict: bool = False) -> tuple[list[bytes], bool]:
    """RFC 3986 section 5.2.4 over ``segments``; ``keep_empty``: ``//`` is an empty segment (RFC
    3986, WHATWG) rather than merged (nginx, Tomcat); ``strict``: climbing above the root is an
    error rather than ignored.  Returns the segments and whether the path ends with a slash."""
    out: list[bytes] = []
    trailing = False
    for segment in segments:
        dot = is_dot(segment)
        trailing = dot > 0 or segment == b""
        if dot == 2:
            if out:
                out.pop()
            elif strict:
                raise BadRequest("request path climbs above the root")
        elif dot == 0 and (segment or keep_empty):
            out.append(segment)
    return out, trailing


def _join(segments: list[bytes], trailing: bool) -> bytes:
    text = b"/" + b"/".join(segments)
    return text + b"/" if trailing and text != b"/" else text


def _canonical(path: bytes) -> bytes:
    """What two readings are compared on: decoded, ``\\`` as ``/``, slashes merged."""
    return re.sub(rb"/+", b"/", unquote_to_bytes(path).replace(b"\\", b"/"))


def _rfc3986(path: bytes) -> bytes:
    """Dots resolved before decoding, empty segments kept: ``%2F`` and ``%2E`` are data."""
    return _join(*_resolve(path.split(b"/")[1:], keep_empty=True, is_dot=_plain_dot))


def _whatwg(path: bytes) -> bytes:
    """As a WHATWG URL parser (Node, browsers): ``%2e`` counts as a dot, empty segments kept."""
    return _join(*_resolve(path.split(b"/")[1:], keep_empty=True, is_dot=_whatwg_dot))


def _path_parameters(path: bytes) -> bytes:
    """As Tomcat, Jetty and Spring: ``;parameters`` dropped from each segment before dots (an
    encoded ``%3B`` counted too, for servers that decode first)."""
    segments = [unquote_to_bytes(s).split(b";", 1)[0] for s in path.split(b"/")[1:]]
    return _join(*_resolve(segments, keep_empty=False, is_dot=_plain_dot))


def _backslash_separator(path: bytes) -> bytes:
    """As servers that take a (decoded) backslash for a separator (IIS, some Windows stacks)."""
    decoded = unquote_to_bytes(path).replace(b"\\", b"/")
    return _join(*_resolve(decoded.split(b"/")[1:], keep_empty=False, is_dot=_plain_dot))


#: Other ways upstreams read a path; a target is refused unless each leads where routing does.
_READINGS: tuple[tuple[str, Callable[[bytes], bytes]], ...] = (
    ("an RFC 3986 parser (dots before decoding, empty segments kept)", _rfc3986),
    ("a WHATWG URL parser", _whatwg),
    ("a server that drops ;parameters (Tomcat, Jetty, Spring)", _path_parameters),
    ("a server that takes \\ for /", _backslash_separator),
)


def normalize_host(host: bytes | str | None) -> str | None:
    """The host name of a ``Host`` header value, lower-case and without port or trailing dot;
    an IPv6 literal in the form route ``host`` patterns are stored in (``config.hosts.ip_literal``:
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
