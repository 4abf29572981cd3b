"""Header rules, in memory: hop-by-hop removal, X-Forwarded-*, Host policy, upgrade detection."""

from __future__ import annotations

import pytest

from wsrelay import headers as H

REQUEST = [
    (b"Host", b"app.example"), (b"Connection", b"keep-alive, X-Private"), (b"X-Private", b"secret"),
    (b"Keep-Alive", b"300"), (b"TE", b"trailers"), (b"Transfer-Encoding", b"chunked"), (b"Upgrade", b"h2c"),
    (b"Proxy-Connection", b"keep-alive"), (b"Content-Length", b"5"), (b"Cookie", b"a=1"), (b"Cookie", b"b=2"),
    (b"X-Forwarded-For", b"203.0.113.1"), (b"X-Forwarded-For", b"198.51.100.2"), (b"X-Forwarded-Proto", b"https"),
    (b"X-Real-IP", b"6.6.6.6"),
]


def upstream(**kw: object) -> list[tuple[bytes, bytes]]:
    args = dict(client_ip="192.0.2.7", scheme="http", host_header=None, upstream_hostport="10.0.0.1:9000")
    args.update(kw)
    return H.request_to_upstream(REQUEST, **args)  # type: ignore[arg-type]


def test_hop_by_hop_and_connection_named_fields_are_removed() -> None:
    """RFC 9110 7.6.1: the fixed hop-by-hop set and every field named in Connection go."""
    names = {k.lower() for k, _ in upstream()}
    for gone in (b"connection", b"x-private", b"keep-alive", b"te", b"transfer-encoding", b"upgrade",
                 b"proxy-connection", b"content-length"):
        assert gone not in names


def test_repeated_fields_stay_separate_and_in_order() -> None:
    """Two Cookie lines stay two lines, in order."""
    assert H.get(upstream(), b"cookie") == [b"a=1", b"b=2"]


def test_forwarded_fields() -> None:
    """X-Forwarded-For is appended to; Proto, Host and X-Real-IP are wsrelay's own."""
    out = upstream(scheme="https")
    assert H.get(out, b"x-forwarded-for") == [b"203.0.113.1, 198.51.100.2, 192.0.2.7"]
    assert H.get(out, b"x-forwarded-proto") == [b"https"]
    assert H.get(out, b"x-forwarded-host") == [b"app.example"]
    assert H.get(out, b"x-real-ip") == [b"192.0.2.7"]


@pytest.mark.parametrize("policy, host", [(None, b"app.example"), ("$upstream", b"10.0.0.1:9000"),
                                          ("backend.internal", b"backend.internal")])
def test_exactly_one_host(policy: str | None, host: bytes) -> None:
    """One Host: the client's, the upstream's host:port, or a fixed value."""
    assert H.get(upstream(host_header=policy), b"host") == [host]


def test_response_hop_by_hop() -> None:
    """Responses lose hop-by-hop fields too, and keep repeated Set-Cookie lines."""
    out = H.response_to_client([(b"Connection", b"X-Hop"), (b"X-Hop", b"1"), (b"Set-Cookie", b"a=1"),
                                (b"Set-Cookie", b"b=2"), (b"Content-Length", b"2"), (b"Keep-Alive", b"5")])
    assert out == [(b"Set-Cookie", b"a=1"), (b"Set-Cookie", b"b=2"), (b"Content-Length", b"2")]


@pytest.mark.parametrize("fields, upgrade", [
    ([(b"Connection", b"Upgrade"), (b"Upgrade", b"websocket")], True),
    ([(b"Connection", b"keep-alive, Upgrade"), (b"Upgrade", b"WebSocket")], True),  # Firefox
    ([(b"Connection", b"keep-alive"), (b"Connection", b"upgrade"), (b"Upgrade", b"websocket")], True),
    ([(b"Connection", b"keep-alive"), (b"Upgrade", b"websocket")], False),
    ([(b"Connection", b"Upgrade"), (b"Upgrade", b"h2c")], False),
])
def test_websocket_upgrade_detection(fields: list[tuple[bytes, bytes]], upgrade: bool) -> None:
    """Connection and Upgrade are token lists compared case-insensitively."""
    assert H.is_websocket_upgrade(fields) is upgrade
