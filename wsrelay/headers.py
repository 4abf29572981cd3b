"""Header rules between client and upstream.  Pure: no I/O.

Headers travel as lists of ``(name, value)`` byte pairs in wire order, so repeated fields
(two ``Set-Cookie`` lines, two ``Cookie`` lines) stay separate lines and in order; names compare
case-insensitively.

RFC 9110 section 7.6.1: a proxy removes the hop-by-hop fields (``Connection`` and every field it
names, plus the well-known ``Keep-Alive``, ``Proxy-Connection``, ``TE``, ``Trailer``,
``Transfer-Encoding`` and ``Upgrade``) before forwarding, in both directions.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

Header = tuple[bytes, bytes]

HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade"}
)

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")

#: Set by wsrelay itself toward the upstream; any copy from the client is replaced (or appended to).
FORWARDED_HEADERS = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-real-ip"})


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


def bad_value(value: bytes) -> bool:
    """True if a field value holds CR, LF or NUL (RFC 9110 section 5.5: never forwarded)."""
    return b"\r" in value or b"\n" in value or b"\0" in value


def parse_head(head: bytes) -> tuple[bytes, list[Header]]:
    """An HTTP message head's first line and its fields, in wire order.

    Only well-formed ``token: value`` lines are kept: a line without a colon or with a bad field
    name (obsolete line folding included) and a value with CR, LF or NUL are left out, so nothing
    malformed is ever passed on.
    """
    first, *lines = head.rstrip(b"\r\n").split(b"\r\n")
    fields: list[Header] = []
    for line in lines:
        name, sep, value = line.partition(b":")
        if sep and _TOKEN.fullmatch(name) and not bad_value(value):
            fields.append((name, value.strip(b" \t")))
    return first, fields


def strip_hop_by_hop(headers: Iterable[Header], extra: Iterable[bytes] = ()) -> list[Header]:
    """Drop hop-by-hop fields, those named in ``Connection``, and the names in ``extra``."""
    headers = list(headers)
    drop = HOP_BY_HOP | tokens(headers, b"connection") | {e.lower() for e in extra}
    return [(k, v) for k, v in headers if k.lower() not in drop]


def request_to_upstream(
    headers: Sequence[Header],
    *,
    client_ip: str,
    scheme: str,
    host_header: str | None,
    upstream_hostport: str,
    drop: Iterable[bytes] = (),
) -> list[Header]:
    """The header list wsrelay sends upstream for a client request.

    - hop-by-hop fields removed, and ``Content-Length`` (the HTTP client frames the body itself);
    - ``Host``: the client's (``host_header`` None), the upstream's ``host:port`` (``"$upstream"``)
      or a fixed value; exactly one;
    - ``X-Forwarded-For``: the client's address appended to any value received (nginx
      ``$proxy_add_x_forwarded_for``);
    - ``X-Forwarded-Proto`` (``http`` or ``https``), ``X-Forwarded-Host`` (the client's Host) and
      ``X-Real-IP`` are set by wsrelay, replacing whatever the client sent.
    - ``drop``: further names to leave out (the WebSocket layer drops its own handshake fields).
    """
    client_host = next(iter(get(headers, b"host")), None)
    prior_xff = b", ".join(v.strip() for v in get(headers, b"x-forwarded-for") if v.strip())
    out = strip_hop_by_hop(headers, extra={b"host", b"content-length", *FORWARDED_HEADERS, *drop})
    if host_header is None:
        host = client_host if client_host is not None else upstream_hostport.encode("ascii")
    elif host_header == "$upstream":
        host = upstream_hostport.encode("ascii")
    else:
        host = host_header.encode("ascii")
    ip = client_ip.encode("ascii")
    out.insert(0, (b"Host", host))
    out.append((b"X-Forwarded-For", prior_xff + b", " + ip if prior_xff else ip))
    out.append((b"X-Forwarded-Proto", scheme.encode("ascii")))
    if client_host is not None:
        out.append((b"X-Forwarded-Host", client_host))
    out.append((b"X-Real-IP", ip))
    return out


def response_to_client(headers: Iterable[Header]) -> list[Header]:
    """The header list wsrelay sends the client for an upstream response (hop-by-hop removed)."""
    return strip_hop_by_hop(headers)
