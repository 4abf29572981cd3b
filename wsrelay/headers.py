"""Header rules between client and upstream.  Pure: no I/O.

Headers travel as lists of ``(name, value)`` byte pairs in wire order, so repeated fields
(two ``Set-Cookie`` lines, two ``Cookie`` lines) stay separate lines and in order; names compare
case-insensitively.

RFC 9110 section 7.6.1: a proxy removes the hop-by-hop fields (``Connection`` and every field it
names, plus the well-known ``Keep-Alive``, ``Proxy-Connection``, ``TE``, ``Trailer``,
``Transfer-Encoding`` and ``Upgrade``) before forwarding, in both directions.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Collection, Iterable, Sequence

Header = tuple[bytes, bytes]

HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade"}
)

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")

#: Set by wsrelay itself toward the upstream; any copy from the client is replaced (or appended to).
FORWARDED_HEADERS = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-real-ip",
                               b"forwarded"})

#: Fields a client could use to tell the upstream something only a proxy in front of it may say
#: (its port, prefix, scheme, the "original" URL, a proxy to use: httpoxy); dropped unless a route
#: names them in ``pass_headers``.
SPOOFABLE = frozenset({
    b"x-forwarded-port", b"x-forwarded-prefix", b"x-forwarded-server", b"x-forwarded-ssl",
    b"x-forwarded-scheme", b"x-url-scheme", b"front-end-https", b"x-original-url", b"x-original-uri",
    b"x-rewrite-url", b"proxy", b"proxy-authorization",
})

_CTL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


def flatten(raw: Iterable[tuple[bytes, Sequence[bytes]]]) -> list[Header]:
    """``Headers.getAllRawHeaders()``-style ``(name, [values])`` into ``(name, value)`` pairs."""
    return [(name, value) for name, values in raw for value in values]


def tokens(headers: Iterable[Header], name: bytes) -> set[bytes]:
    """The lower-cased comma-separated tokens of every ``name`` field (``Connection``, ``Upgrade``)."""
    name = name.lower()
    found: set[bytes] = set()
    for key, value in headers:
        if key.lower() == name:
            found.update(t.strip().lower() for t in value.split(b",") if t.strip())
    return found


def get(headers: Iterable[Header], name: bytes) -> list[bytes]:
    """Every value of field ``name``, in order."""
    name = name.lower()
    return [value for key, value in headers if key.lower() == name]


def is_websocket_upgrade(headers: Sequence[Header]) -> bool:
    """RFC 6455 section 4.2.1: ``Connection`` lists ``upgrade`` and ``Upgrade`` lists ``websocket``.

    Both are token lists compared case-insensitively, so Firefox's ``Connection: keep-alive,
    Upgrade`` counts.
    """
    return b"upgrade" in tokens(headers, b"connection") and b"websocket" in tokens(headers, b"upgrade")


def is_token(value: bytes) -> bool:
    """RFC 9110 section 5.6.2: a method or field name."""
    return _TOKEN.fullmatch(value) is not None


def bad_field(name: bytes, value: bytes) -> str | None:
    """Why a request field cannot be forwarded, or None: its name must be a token and its value
    free of control bytes but HTAB (RFC 9110 section 5.1 and 5.5)."""
    if not _TOKEN.fullmatch(name):
        return f"invalid header name {name[:40]!r}"
    if _CTL.search(value):
        return f"header {name[:40]!r} holds a control byte"
    return None


def strip_hop_by_hop(headers: Iterable[Header], extra: Iterable[bytes] = ()) -> list[Header]:
    """Drop hop-by-hop fields, those named in ``Connection``, and the names in ``extra``."""
    lowered = [(k.lower(), k, v) for k, v in headers]  # one pass: this runs for every response
    drop = HOP_BY_HOP
    for lower, _, value in lowered:
        if lower == b"connection":
            drop = drop | {t.strip().lower() for t in value.split(b",")}
    if extra:
        drop = drop | {e.lower() for e in extra}
    return [(k, v) for lower, k, v in lowered if lower not in drop]


def request_to_upstream(
    headers: Sequence[Header],
    *,
    client_ip: str | None,
    scheme: str,
    host_header: str | None,
    upstream_hostport: str,
    drop: Iterable[bytes] = (),
    forwarded: bool = True,
    passed: Collection[bytes] = (),
    peer_ip: str | None = None,
) -> list[Header]:
    """The header list wsrelay sends upstream for a client request.

    - hop-by-hop fields removed, and ``Content-Length`` (the HTTP client frames the body itself);
    - ``Host``: the client's (``host_header`` None), the upstream's ``host:port`` (``"$upstream"``)
      or a fixed value; exactly one;
    - ``X-Forwarded-For``: the immediate peer's address (``peer_ip``; ``client_ip`` when not
      given) appended to any value received (nginx ``$proxy_add_x_forwarded_for``);
    - ``client_ip``: the client as wsrelay sees it (behind a trusted proxy, the address derived
      from its headers: ``wsrelay.realip``), for ``X-Real-IP`` and ``Forwarded``'s ``for=``;
    - ``X-Forwarded-Proto`` (``http`` or ``https``), ``X-Forwarded-Host`` (the client's Host) and
      ``X-Real-IP`` are set by wsrelay, replacing whatever the client sent;
    - ``Forwarded`` (RFC 7239): wsrelay's own (``for``, ``host``, ``proto``) when ``forwarded``,
      else none; never the client's;
    - the :data:`SPOOFABLE` fields are dropped, but for those named (lower-case) in ``passed``;
    - ``client_ip`` None (a ``unix:`` listener): no address is invented, so no ``X-Real-IP``,
      no ``for=``, and ``X-Forwarded-For`` passes on as received;
    - ``drop``: further names to leave out (the WebSocket layer drops its own handshake fields).
    """
    # One pass over the client's fields (this runs for every request).
    never = _never_forwarded(frozenset(drop), frozenset(passed))
    client_host: bytes | None = None
    prior: list[bytes] = []
    named: set[bytes] = set()  # fields the client's Connection names: hop-by-hop too
    kept: list[tuple[bytes, bytes, bytes]] = []
    for name, value in headers:
        lower = name.lower()
        if lower not in never:
            kept.append((name, value, lower))
        elif lower == b"host":
            if client_host is None:
                client_host = value
        elif lower == b"x-forwarded-for":
            if value.strip():
                prior.append(value.strip())
        elif lower == b"connection":
            named.update(t.strip().lower() for t in value.split(b","))
    out = [(name, value) for name, value, lower in kept if lower not in named]
    prior_xff = b", ".join(prior)
    if host_header is None:
        host = client_host if client_host is not None else upstream_hostport.encode("ascii")
    elif host_header == "$upstream":
        host = upstream_hostport.encode("ascii")
    else:
        host = host_header.encode("ascii")
    ip = client_ip.encode("ascii") if client_ip is not None else None
    peer = peer_ip.encode("ascii") if peer_ip is not None else ip
    out.insert(0, (b"Host", host))
    xff = b", ".join(v for v in (prior_xff, peer) if v)
    if xff:
        out.append((b"X-Forwarded-For", xff))
    out.append((b"X-Forwarded-Proto", scheme.encode("ascii")))
    if client_host is not None:
        out.append((b"X-Forwarded-Host", client_host))
    if ip is not None:
        out.append((b"X-Real-IP", ip))
    if forwarded:
        out.append((b"Forwarded", forwarded_value(client_ip, client_host, scheme)))
    return out


@functools.lru_cache(maxsize=64)
def _never_forwarded(drop: frozenset[bytes], passed: frozenset[bytes]) -> frozenset[bytes]:
    """Lower-case names ``request_to_upstream`` never copies from the client's fields."""
    return frozenset(HOP_BY_HOP | {b"host", b"content-length"} | FORWARDED_HEADERS
                     | {d.lower() for d in drop} | (SPOOFABLE - passed))


@functools.lru_cache(maxsize=4096)
def forwarded_value(client_ip: str | None, host: bytes | None, scheme: str) -> bytes:
    """One RFC 7239 ``Forwarded`` element: ``for`` (an IPv6 address in brackets, quoted), ``host``
    (quoted when it has a port) and ``proto``; parameters wsrelay does not know are left out."""
    pairs = []
    if client_ip is not None:
        pairs.append(b'for="[%s]"' % client_ip.encode("ascii") if ":" in client_ip
                     else b"for=" + client_ip.encode("ascii"))
    if host is not None:
        pairs.append(b'host="%s"' % host if _TOKEN.fullmatch(host) is None else b"host=" + host)
    pairs.append(b"proto=" + scheme.encode("ascii"))
    return b";".join(pairs)


def response_to_client(headers: Iterable[Header]) -> list[Header]:
    """The header list wsrelay sends the client for an upstream response (hop-by-hop removed)."""
    return strip_hop_by_hop(headers)
