"""Behind an L4 load balancer: listeners that read a PROXY protocol header (v1 and v2) first,
through the real process, over plain TCP and TLS, for HTTP and WebSocket."""

from __future__ import annotations

import socket
import ssl
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.scripted_upstream import ScriptedUpstream
from tests.support import RelayProcess, poll_until
from tests.test_integration_http import upstream  # noqa: F401 (fixture)

REQUEST = b"GET /echo HTTP/1.1\r\nHost: app.example\r\nX-Forwarded-For: 192.0.2.99\r\n\r\n"


def config(port: int, listener_extra: str = "") -> str:
    return f"""
[wsrelay]
access_log = -
[listener lb]
endpoint = tcp:0:interface=127.0.0.1
proxy_protocol = on
{listener_extra}
[upstream app]
servers = 127.0.0.1:{port}
[route /]
upstream = app
"""


def v1(source: str, port: int = 40000) -> bytes:
    return f"PROXY TCP4 {source} 127.0.0.1 {port} 8080\r\n".encode()


def v2(source: str, port: int = 40000) -> bytes:
    """A PROXY v2 header: PROXY command, TCP over IPv4."""
    address = socket.inet_aton(source) + socket.inet_aton("127.0.0.1") + struct.pack("!HH", port, 8080)
    return b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, 0x11]) + struct.pack("!H", len(address)) + address


def exchange(port: int, data: bytes, tls: ssl.SSLContext | None = None, preamble: bytes = b"") -> bytes:
    """Connect, send ``preamble`` in the clear (the PROXY header), then ``data`` (over TLS if
    ``tls``); read until the proxy closes or has answered one response."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.sendall(preamble)
        conn = tls.wrap_socket(raw, server_hostname="localhost") if tls is not None else raw
        conn.sendall(data)
        received = b""
        while b"\r\n\r\n" not in received or not received.endswith(b"ok"):
            chunk = conn.recv(65536)
            if not chunk:
                break
            received += chunk
        return received


@pytest.mark.parametrize("header", [v1, v2], ids=["v1", "v2"])
def test_the_balancers_client_address_is_the_client(
        header: Callable[[str], bytes], upstream: ScriptedUpstream, start_relay: Callable[..., RelayProcess]) -> None:
    """The address in the PROXY header is the client's: X-Real-IP, the address appended to
    X-Forwarded-For, Forwarded's for=, and the access log."""
    relay = start_relay(config(upstream.port))
    answer = exchange(relay.port, REQUEST, preamble=header("203.0.113.7"))
    assert answer.startswith(b"HTTP/1.1 200 "), answer
    head = upstream.requests[-1].head.lower()
    assert b"\r\nx-real-ip: 203.0.113.7\r\n" in head
    assert b"\r\nx-forwarded-for: 192.0.2.99, 203.0.113.7\r\n" in head
    assert b"\r\nforwarded: for=203.0.113.7;" in head
    relay.output.wait_for(r'^203\.0\.113\.7 - - \[.*"GET /echo HTTP/1\.1" 200 ')


def test_a_connection_without_a_header_is_closed_unanswered(
        upstream: ScriptedUpstream, start_relay: Callable[..., RelayProcess]) -> None:
    """A listener that expects a PROXY header closes a connection that starts with anything else
    (an HTTP request straight from a client, bypassing the balancer): nothing reaches the upstream."""
    relay = start_relay(config(upstream.port))
    assert exchange(relay.port, REQUEST) == b""
    assert upstream.connections == 0
    assert poll_until(lambda: relay.open_connections(relay.port) == 0)
    relay.output.wait_for(r"PROXY protocol: connection from 127\.0\.0\.1:\d+ closed: no PROXY protocol header")


def test_proxy_protocol_before_tls(tmp_path: Path, upstream: ScriptedUpstream,
                                   start_relay: Callable[..., RelayProcess]) -> None:
    """On a TLS listener the PROXY header comes first, in the clear; the client address it gives
    reaches the upstream as with plain TCP, and X-Forwarded-Proto is https."""
    from tests.certs import CA

    ca = CA(tmp_path)
    cert, key = ca.leaf("site", "localhost")
    relay = start_relay(config(upstream.port, "tls = on\ncertificates = site\n") + f"""
[certificate site]
cert = {cert}
key = {key}
""")
    context = ssl.create_default_context(cafile=str(ca.pem))
    answer = exchange(relay.port, REQUEST, tls=context, preamble=v2("198.51.100.4"))
    assert answer.startswith(b"HTTP/1.1 200 "), answer
    head = upstream.requests[-1].head.lower()
    assert b"\r\nx-real-ip: 198.51.100.4\r\n" in head and b"\r\nx-forwarded-proto: https\r\n" in head


def test_websocket_handshakes_carry_the_client_address(tmp_path: Path, start_relay: Callable[..., RelayProcess]) -> None:
    """A WebSocket through a PROXY listener: the upstream's handshake names the client from the
    header, and the relayed connection works (the header is not taken for WebSocket bytes)."""
    import base64
    import os

    from tests.support import UpstreamProcess

    demo = UpstreamProcess(tmp_path)
    try:
        relay = start_relay(config(demo.port))
        key = base64.b64encode(os.urandom(16))
        with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as conn:
            conn.sendall(v1("203.0.113.9") + b"GET /api/info HTTP/1.1\r\nHost: app.example\r\n\r\n")
            info = b""
            while b"}" not in info:
                chunk = conn.recv(65536)
                assert chunk, info
                info += chunk
            assert b"203.0.113.9" in info  # the demo reports the X-Real-IP / X-Forwarded-For it saw
        with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as conn:
            conn.sendall(v1("203.0.113.9") + b"GET /ws/echo HTTP/1.1\r\nHost: app.example\r\nUpgrade: websocket\r\n"
                         b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + key + b"\r\n\r\n")
            answer = b""
            while b"\r\n\r\n" not in answer:
                chunk = conn.recv(65536)
                assert chunk, answer
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 101 "), answer
            mask = os.urandom(4)
            payload = b"through the balancer"
            conn.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
            echo = answer.partition(b"\r\n\r\n")[2]
            while len(echo) < 2 + len(payload):
                chunk = conn.recv(65536)
                assert chunk, echo
                echo += chunk
            assert echo[:2 + len(payload)] == bytes([0x81, len(payload)]) + payload
    finally:
        demo.stop()


def test_turning_proxy_protocol_on_or_off_needs_a_restart(tmp_path: Path) -> None:
    """A kept listener keeps its socket and its wrapping: a reload that changes proxy_protocol is
    refused, naming the key."""
    from wsrelay import config as configmod
    from wsrelay.config import ConfigError
    from wsrelay.service import _restart_needed

    old = configmod.parse(config(9001))
    new = configmod.parse(config(9001).replace("proxy_protocol = on", "proxy_protocol = off"))
    with pytest.raises(ConfigError, match=r"\[listener lb\] proxy_protocol: changed from on to off"):
        _restart_needed(old, new)


def test_a_reload_sets_the_proxy_header_deadline_of_the_next_connections(
        tmp_path: Path, upstream: ScriptedUpstream, start_relay: Callable[..., RelayProcess]) -> None:
    """client_header_timeout bounds the wait for the PROXY header too: lowered by a reload from
    60 s to 1 s, a connection made after the reload that sends nothing is closed after 1 s (the
    listener and its socket are the same)."""
    import signal

    from tests.support import write_config

    text = config(upstream.port).replace("access_log = -", "access_log = -\nclient_header_timeout = 60s")
    relay = start_relay(text)
    relay.output.wait_for(r"wsrelay ready$")  # SIGHUP handled from here on (before: twistd's default, an exit)
    mark = len(relay.output.lines)
    write_config(tmp_path, text.replace("client_header_timeout = 60s", "client_header_timeout = 1s"))
    relay.signal(signal.SIGHUP)
    relay.output.wait_for("configuration reloaded", start=mark)
    with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as s:
        assert s.recv(1) == b""  # closed by wsrelay, well before the 10 s bound
    relay.output.wait_for(r"PROXY protocol: connection from 127\.0\.0\.1:\d+ closed: no complete PROXY header"
                          r" within 1s", start=mark)
