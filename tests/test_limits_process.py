"""limit_req and limit_conn through the real ``twistd -n wsrelay``: 429 with Retry-After, recovery
once time has passed (bounded waits), WebSocket pairs counted until they close, and no count
left behind by any way an exchange or a pair ends (timeouts, resets, aborts, refusals)."""

from __future__ import annotations

import socket
from collections.abc import Callable

from tests.scripted_upstream import ScriptedUpstream
from tests.scripted_ws import ScriptedWebSocketUpstream, client_handshake, frame
from tests.support import RelayProcess, poll_until
from tests.test_integration_http import upstream  # noqa: F401 (fixture)
from tests.test_ws_process import wsup  # noqa: F401 (fixture)

KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def config(http_port: int, ws_port: int) -> str:
    return f"""
[wsrelay]
listen = tcp:0:interface=127.0.0.1
access_log = -
[upstream app]
servers = 127.0.0.1:{http_port}
[upstream ws]
servers = 127.0.0.1:{ws_port}
[upstream gone]
servers = 127.0.0.1:1
[route /rl/]
upstream = app
limit_req_rate = 30r/m
limit_req_burst = 2
[route /one/]
upstream = app
limit_conn = 1
read_timeout = 1s
[route /gone/]
upstream = gone
limit_conn = 1
retries = 0
[route /ws/]
upstream = ws
limit_conn = 1
retries = 0
ws_handshake_timeout = 2s
"""


def get(port: int, path: str) -> tuple[int, bytes]:
    """One request on its own connection: the status and the response head."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n\r\n".encode())
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    head = answer.partition(b"\r\n\r\n")[0]
    return int(head.split(b" ", 2)[1]), head


def status(port: int, path: str) -> int:
    return get(port, path)[0]


def ws_open(port: int, path: str) -> tuple[socket.socket, bytes]:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    head, _ = client_handshake(s, path, [("Host", "app.example"), ("Upgrade", "websocket"),
                                         ("Connection", "Upgrade"), ("Sec-WebSocket-Key", KEY),
                                         ("Sec-WebSocket-Version", "13")])
    return s, head


def test_limit_req_answers_429_then_recovers(upstream: ScriptedUpstream,  # noqa: F811
                                            wsup: ScriptedWebSocketUpstream,  # noqa: F811
                                            start_relay: Callable[..., RelayProcess]) -> None:
    """30r/m with a burst of 2: two pass, the third gets 429 with Retry-After (2 s: one token at
    0.5/s), one log line names the limit; once the time has passed the client is served again.
    Other routes are not limited by it."""
    relay = start_relay(config(upstream.port, wsup.port))
    assert [status(relay.port, "/rl/echo") for _ in range(2)] == [200, 200]
    code, head = get(relay.port, "/rl/echo")
    assert code == 429, head
    assert b"\r\nRetry-After: 2" in head or b"\r\nRetry-After: 1" in head, head
    relay.output.wait_for(r"127\.0\.0\.1 GET /rl/echo: 429 \(limit_req 0\.5/s burst 2 of route /rl/; 0 more")
    relay.output.wait_for(r'^127\.0\.0\.1 - - \[.*"GET /rl/echo HTTP/1\.1" 429 ')
    assert status(relay.port, "/one/echo") == 200
    assert poll_until(lambda: status(relay.port, "/rl/echo") == 200, timeout=10, interval=0.5)
    assert len(upstream.requests) == 4  # no refused request reached the upstream


def test_limit_conn_counts_websocket_pairs_until_they_close(
        upstream: ScriptedUpstream, wsup: ScriptedWebSocketUpstream,  # noqa: F811
        start_relay: Callable[..., RelayProcess]) -> None:
    """limit_conn 1: an open pair (after the takeover) is the client's one: another handshake
    and a plain request get 429 with Retry-After: 1; once the pair has closed, both pass."""
    relay = start_relay(config(upstream.port, wsup.port))
    pair, head = ws_open(relay.port, "/ws/echo")
    try:
        assert head.startswith(b"HTTP/1.1 101"), head
        code, head = get(relay.port, "/one/echo")
        assert code == 429 and b"\r\nRetry-After: 1\r\n" in head, head
        second, head = ws_open(relay.port, "/ws/echo")
        second.close()
        assert head.startswith(b"HTTP/1.1 429 ") and b"\r\nRetry-After: 1\r\n" in head, head
        relay.output.wait_for(r"GET /one/echo: 429 \(limit_conn 1 of route /one/ reached; 0 more")
        pair.sendall(frame(8, b"\x03\xe8", mask=True))
        assert pair.recv(65536)[:1] == b"\x88"  # the close handshake
    finally:
        pair.close()
    assert poll_until(lambda: status(relay.port, "/one/echo") == 200, timeout=10)
    second, head = ws_open(relay.port, "/ws/echo")
    second.close()
    assert head.startswith(b"HTTP/1.1 101"), head


def test_every_ending_uncounts(upstream: ScriptedUpstream, wsup: ScriptedWebSocketUpstream,  # noqa: F811
                               start_relay: Callable[..., RelayProcess]) -> None:
    """limit_conn 1 and a client that ends its exchanges and pairs every way there is: a read
    timeout (504), an unreachable upstream (502), an upstream reset mid-body, the client leaving
    mid-request, a refused handshake, a client leaving before its handshake's answer, an upstream
    dropping an open pair.  After each, the client is served again (nothing leaked)."""
    relay = start_relay(config(upstream.port, wsup.port))
    served = lambda: status(relay.port, "/one/echo") == 200  # noqa: E731

    assert status(relay.port, "/one/silent") == 504
    assert served()
    assert status(relay.port, "/gone/x") == 502
    assert served()
    with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as s:
        s.sendall(b"GET /one/reset HTTP/1.1\r\nHost: a\r\n\r\n")
        while s.recv(65536):
            pass
    assert poll_until(served)
    with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as s:
        s.sendall(b"GET /one/silent HTTP/1.1\r\nHost: a\r\n\r\n")
        assert poll_until(lambda: len(upstream.requests) >= 6 and upstream.requests[-1].head.startswith(b"GET /one/silent"))
        assert status(relay.port, "/one/echo") == 429  # it is counted while in progress
    assert poll_until(served)

    sock, head = ws_open(relay.port, "/ws/status403")
    sock.close()
    assert head.startswith(b"HTTP/1.1 403 "), head
    assert served()
    with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as s:
        s.sendall(f"GET /ws/silent HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
        assert poll_until(lambda: any(h.startswith(b"GET /ws/silent") for h in wsup.handshakes))
    assert poll_until(served)
    sock, head = ws_open(relay.port, "/ws/drop")
    try:
        assert head.startswith(b"HTTP/1.1 101"), head
        sock.sendall(frame(1, b"bye", mask=True))
        try:
            while sock.recv(65536):  # until wsrelay ends the client's side too
                pass
        except ConnectionResetError:
            pass
    finally:
        sock.close()
    assert poll_until(served)
