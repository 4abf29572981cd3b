"""/metrics through the real process: after real HTTP requests (plain and over TLS), a relayed
WebSocket pair with messages and wsrelay's pings, two refused handshakes and a failed TLS
handshake, every counter has exactly the value the traffic implies."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families

from tests.certs import CA
from tests.support import RelayProcess, UpstreamProcess, poll_until
from tests.test_admin import admin_url, demo, fetch  # noqa: F401 (demo: the fixture)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def ca(tmp_path: Path) -> CA:
    return CA(tmp_path)


def config(ca: CA, upstream_port: int, dead_port: int) -> str:
    cert, key = ca.leaf("a", "a.test")
    return f"""
[wsrelay]
listen = tcp:0:interface=127.0.0.1
access_log = off
[listener public]
endpoint = tcp:0:interface=127.0.0.1
tls = on
certificates = a
[certificate a]
cert = {cert}
key = {key}
[admin]
endpoint = tcp:0:interface=127.0.0.1
[upstream demo]
servers = 127.0.0.1:{upstream_port}
[route /]
upstream = demo
ws_ping_interval = 1500ms
ws_ping_timeout = 1s
ws_compression = off
[upstream flaky]
servers = 127.0.0.1:{dead_port}, 127.0.0.1:{upstream_port}
balance = round_robin
[route /retry/]
upstream = flaky
retries = 1
"""


def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(base: str) -> Samples:
    code, _, body = fetch(base + "/metrics")
    assert code == 200
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(body.decode()) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def exchange(sock: socket.socket, request: bytes) -> tuple[int, bytes]:
    """Send one request, read its response (Content-Length framed): status and body."""
    sock.sendall(request)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")[1:]
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk
        body += chunk
    return int(head.split(b" ", 2)[1]), body


def test_metrics_count_exactly_what_went_through(ca: CA, demo: UpstreamProcess,
                                                 start_relay: Callable[..., RelayProcess]) -> None:
    """HTTP requests by route, method and status class, their durations and body bytes; a pair
    by route and mode, its messages, bytes, closes and pings per hop; handshake refusals by status
    (wsrelay's own 426, the upstream's 404); TLS handshakes and a refused one (no certificate for
    the name) by listener."""
    dead = unused_port()
    relay = start_relay(config(ca, demo.port, dead), wait=False)
    urls = relay.wait_listening(count=2)
    plain = int(next(u for u in urls if u.startswith("http://")).rstrip("/").rsplit(":", 1)[1])
    tls = int(next(u for u in urls if u.startswith("https://")).rstrip("/").rsplit(":", 1)[1])
    base = admin_url(relay)
    sent_out: dict[str, int] = {"/": 0, "-": 0, "/retry/": 0}

    def http(request: bytes, route: str = "/", port: int = plain, wrap: ssl.SSLContext | None = None) -> int:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            sock = wrap.wrap_socket(raw, server_hostname="a.test") if wrap is not None else raw
            status, body = exchange(sock, request)
        sent_out[route] += len(body)
        return status

    host = b"Host: relay.test\r\n"
    assert http(b"GET /api/info HTTP/1.1\r\n" + host + b"\r\n") == 200
    assert http(b"GET /api/info HTTP/1.1\r\n" + host + b"\r\n") == 200
    assert http(b"POST /api/info HTTP/1.1\r\n" + host + b"Content-Length: 1000\r\n\r\n" + b"x" * 1000) == 200
    assert http(b"GET /nothing HTTP/1.1\r\n" + host + b"\r\n") == 404
    assert http(b"POST /api/info HTTP/1.1\r\n" + host + b"Content-Length: 99999999\r\n\r\n") == 413  # at the head
    assert http(b"GET / HTTP/1.1\r\nHost: bad host\r\n\r\n", route="-") == 400
    assert http(b"GET / HTTP/1.1 extra\r\n\r\n", route="-") == 400  # refused on its request line
    for _ in range(2):  # round robin: one of the two tries the dead server first, then the demo
        assert http(b"GET /retry/x HTTP/1.1\r\n" + host + b"\r\n", route="/retry/") == 404
    upgrade = host + b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    assert http(b"GET /ws/echo HTTP/1.1\r\n" + upgrade + b"Sec-WebSocket-Version: 8\r\n\r\n") == 426
    assert http(b"GET /ws/none HTTP/1.1\r\n" + upgrade + b"Sec-WebSocket-Version: 13\r\n\r\n") == 404

    good = ssl.create_default_context(cafile=str(ca.pem))
    assert http(b"GET /api/info HTTP/1.1\r\n" + host + b"\r\n", port=tls, wrap=good) == 200
    with socket.create_connection(("127.0.0.1", tls), timeout=10) as raw:
        with pytest.raises(ssl.SSLError):
            good.wrap_socket(raw, server_hostname="other.test")  # no certificate for that name

    async def pair() -> None:
        async with websockets.connect(f"ws://127.0.0.1:{plain}/ws/echo", compression=None) as ws:
            for text in ("a", "bb"):
                await ws.send(text)
                assert await ws.recv() == text

            def pinged() -> bool:  # both hops have answered one of wsrelay's pings
                s = scrape(base)
                return all((value(s, "wsrelay_websocket_ping_rtt_seconds_count", route="/", hop=hop) or 0) >= 1
                           for hop in ("client", "upstream"))

            assert await asyncio.to_thread(poll_until, pinged, 10.0)

    asyncio.run(asyncio.wait_for(pair(), 30))
    assert poll_until(lambda: value(scrape(base), "wsrelay_websocket_pairs_open", route="/", mode="relay") == 0)

    s = scrape(base)
    requests = {(dict(k[1])["route"], dict(k[1])["method"], dict(k[1])["code"]): v
                for k, v in s.items() if k[0] == "wsrelay_http_requests_total"}
    assert requests == {("/", "GET", "2xx"): 3, ("/", "POST", "2xx"): 1, ("/", "GET", "4xx"): 3, ("/", "POST", "4xx"): 1,
                        ("-", "GET", "4xx"): 1, ("-", "other", "4xx"): 1,
                        ("/retry/", "GET", "4xx"): 2}
    assert value(s, "wsrelay_http_request_duration_seconds_count", route="/") == 8
    assert value(s, "wsrelay_http_request_duration_seconds_bucket", route="/", le="+Inf") == 8
    assert value(s, "wsrelay_http_request_duration_seconds_count", route="-") == 2
    assert value(s, "wsrelay_http_body_bytes_total", route="/", direction="in") == 1000
    assert value(s, "wsrelay_http_body_bytes_total", route="/", direction="out") == sent_out["/"]
    assert value(s, "wsrelay_http_body_bytes_total", route="-", direction="out") == sent_out["-"]

    assert value(s, "wsrelay_websocket_pairs_opened_total", route="/", mode="relay") == 1
    for hop, direction in (("client", "in"), ("client", "out"), ("upstream", "in"), ("upstream", "out")):
        assert value(s, "wsrelay_websocket_messages_total", route="/", hop=hop, direction=direction) == 2
        assert value(s, "wsrelay_websocket_payload_bytes_total", route="/", hop=hop, direction=direction) == 3
        assert value(s, "wsrelay_websocket_closes_total", route="/", hop=hop, direction=direction, code="1000") == 1
    for hop in ("client", "upstream"):
        pings = value(s, "wsrelay_websocket_pings_total", route="/", hop=hop)
        assert pings is not None and pings >= 1
        assert value(s, "wsrelay_websocket_ping_rtt_seconds_count", route="/", hop=hop) == pings
        assert value(s, "wsrelay_websocket_pings_missed_total", route="/", hop=hop) == 0
    assert value(s, "wsrelay_websocket_handshake_refusals_total", route="/", code="426") == 1
    assert value(s, "wsrelay_websocket_handshake_refusals_total", route="/", code="404") == 1

    assert value(s, "wsrelay_tls_handshakes_total", listener="public") == 1
    assert value(s, "wsrelay_tls_handshake_failures_total", listener="public") == 1
    server = f"http://127.0.0.1:{demo.port}"
    assert value(s, "wsrelay_upstream_server_active", upstream="demo", server=server) == 0
    assert value(s, "wsrelay_upstream_server_retries_total", upstream="demo", server=server) == 0
    failed = f"http://127.0.0.1:{dead}"
    assert value(s, "wsrelay_upstream_server_retries_total", upstream="flaky", server=failed) == 1
    assert value(s, "wsrelay_upstream_server_failures_total", upstream="flaky", server=failed,
                 cause="connect_error") == 1
    assert value(s, "wsrelay_upstream_server_retries_total", upstream="flaky", server=server) == 0
    assert not [k for k in s if k[0] == "wsrelay_upstream_server_failures_total" and ("server", server) in k[1]]
