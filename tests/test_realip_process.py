"""trusted_proxies through the real ``twistd -n wsrelay``: the client address a trusted peer's
X-Forwarded-For names reaches the upstream (X-Real-IP, Forwarded for=, the peer appended to
X-Forwarded-For) and the access log, for HTTP requests and WebSocket handshakes; an untrusted
peer's headers name nobody; behind a PROXY protocol listener the PROXY address is the peer."""

from __future__ import annotations

import socket
from collections.abc import Callable

from tests.scripted_upstream import ScriptedUpstream
from tests.scripted_ws import ScriptedWebSocketUpstream, client_handshake
from tests.support import RelayProcess
from tests.test_integration_http import upstream  # noqa: F401 (fixture)
from tests.test_proxy_protocol import exchange, v1
from tests.test_ws_process import wsup  # noqa: F401 (fixture)

KEY = "dGhlIHNhbXBsZSBub25jZQ=="
CHAIN = "6.6.6.6, 203.0.113.50, 10.0.0.1"  # the client's spoof, the client, a trusted proxy


def config(http_port: int, ws_port: int, trusted: str, listener_extra: str = "") -> str:
    return f"""
[wsrelay]
access_log = -
trusted_proxies = {trusted}
[listener main]
endpoint = tcp:0:interface=127.0.0.1
{listener_extra}
[upstream app]
servers = 127.0.0.1:{http_port}
[upstream ws]
servers = 127.0.0.1:{ws_port}
[route /]
upstream = app
[route /ws/]
upstream = ws
retries = 0
"""


def request(xff: str) -> bytes:
    return f"GET /echo HTTP/1.1\r\nHost: app.example\r\nX-Forwarded-For: {xff}\r\n\r\n".encode()


def fields(head: bytes) -> dict[bytes, bytes]:
    return {k.strip().lower(): v.strip() for k, _, v in (l.partition(b":") for l in head.split(b"\r\n")[1:])}


def ws_handshake(port: int, xff: str, preamble: bytes = b"") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(preamble)
        head, _ = client_handshake(s, "/ws/echo", [
            ("Host", "app.example"), ("Upgrade", "websocket"), ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", KEY), ("Sec-WebSocket-Version", "13"), ("X-Forwarded-For", xff)])
        return head


def test_a_trusted_peer_names_the_client(upstream: ScriptedUpstream, wsup: ScriptedWebSocketUpstream,  # noqa: F811
                                         start_relay: Callable[..., RelayProcess]) -> None:
    """From a trusted peer (loopback, and 10.0.0.0/8 skipped): the rightmost untrusted entry is the
    client in X-Real-IP, Forwarded for= and the access log, over HTTP and in a WebSocket
    handshake; X-Forwarded-For is the list received with the peer appended."""
    relay = start_relay(config(upstream.port, wsup.port, "127.0.0.0/8 10.0.0.0/8"))
    answer = exchange(relay.port, request(CHAIN))
    assert answer.startswith(b"HTTP/1.1 200 "), answer
    seen = fields(upstream.requests[-1].head)
    assert seen[b"x-real-ip"] == b"203.0.113.50"
    assert seen[b"x-forwarded-for"] == CHAIN.encode() + b", 127.0.0.1"
    assert seen[b"forwarded"].startswith(b"for=203.0.113.50;")
    relay.output.wait_for(r'^203\.0\.113\.50 - - \[.*"GET /echo HTTP/1\.1" 200 ')

    head = ws_handshake(relay.port, CHAIN)
    assert head.startswith(b"HTTP/1.1 101"), head
    seen = fields(wsup.handshakes[-1])
    assert seen[b"x-real-ip"] == b"203.0.113.50"
    assert seen[b"x-forwarded-for"] == CHAIN.encode() + b", 127.0.0.1"
    assert seen[b"forwarded"].startswith(b"for=203.0.113.50;")


def test_an_untrusted_peers_headers_name_nobody(upstream: ScriptedUpstream,  # noqa: F811
                                                wsup: ScriptedWebSocketUpstream,
                                                start_relay: Callable[..., RelayProcess]) -> None:
    """A peer outside trusted_proxies (the [listener] setting replacing [wsrelay]'s) is the
    client: X-Forwarded-For is appended to, as without the key, for HTTP and WebSocket."""
    relay = start_relay(config(upstream.port, wsup.port, "127.0.0.0/8", "trusted_proxies = 192.0.2.0/24"))
    assert exchange(relay.port, request(CHAIN)).startswith(b"HTTP/1.1 200 ")
    seen = fields(upstream.requests[-1].head)
    assert seen[b"x-real-ip"] == b"127.0.0.1"
    assert seen[b"x-forwarded-for"] == CHAIN.encode() + b", 127.0.0.1"
    relay.output.wait_for(r'^127\.0\.0\.1 - - \[.*"GET /echo HTTP/1\.1" 200 ')
    assert ws_handshake(relay.port, CHAIN).startswith(b"HTTP/1.1 101")
    seen = fields(wsup.handshakes[-1])
    assert seen[b"x-real-ip"] == b"127.0.0.1"
    assert seen[b"x-forwarded-for"] == CHAIN.encode() + b", 127.0.0.1"


def test_behind_proxy_protocol_the_proxy_headers_peer_is_judged(
        upstream: ScriptedUpstream, wsup: ScriptedWebSocketUpstream,  # noqa: F811
        start_relay: Callable[..., RelayProcess]) -> None:
    """With proxy_protocol on, the PROXY header's address is the peer: trusted (a CDN node in
    10.0.0.0/8), its X-Forwarded-For names the client; untrusted, it is the client itself."""
    relay = start_relay(config(upstream.port, wsup.port, "10.0.0.0/8", "proxy_protocol = on"))
    assert exchange(relay.port, request("203.0.113.50"), preamble=v1("10.2.3.4")).startswith(b"HTTP/1.1 200 ")
    seen = fields(upstream.requests[-1].head)
    assert seen[b"x-real-ip"] == b"203.0.113.50"
    assert seen[b"x-forwarded-for"] == b"203.0.113.50, 10.2.3.4"
    assert exchange(relay.port, request("203.0.113.50"), preamble=v1("198.51.100.8")).startswith(b"HTTP/1.1 200 ")
    seen = fields(upstream.requests[-1].head)
    assert seen[b"x-real-ip"] == b"198.51.100.8"
    assert seen[b"x-forwarded-for"] == b"203.0.113.50, 198.51.100.8"
    assert ws_handshake(relay.port, "203.0.113.51", preamble=v1("10.2.3.4")).startswith(b"HTTP/1.1 101")
    seen = fields(wsup.handshakes[-1])
    assert seen[b"x-real-ip"] == b"203.0.113.51"
    assert seen[b"x-forwarded-for"] == b"203.0.113.51, 10.2.3.4"
