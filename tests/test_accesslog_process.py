"""The JSON access log and request ids through the real ``twistd -n wsrelay``: an HTTP request
and a relayed WebSocket pair that exchanges messages and closes with a code, each line parsed and
its fields checked exactly; the upstreams see the X-Request-ID the log names."""

from __future__ import annotations

import http.client
import json
import re
import socket
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.scripted_upstream import ScriptedUpstream
from tests.scripted_ws import ScriptedWebSocketUpstream, client_handshake, frame
from tests.support import RelayProcess, poll_until
from tests.test_integration_http import upstream  # noqa: F401  (fixture)
from tests.test_websocket import header_lines
from tests.test_ws_process import wsup  # noqa: F401  (fixture)

KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def records(path: Path) -> list[dict[str, Any]]:
    """Every line of the access log, each parsed as one JSON object."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text("ascii").splitlines()]


def test_json_access_log_and_request_ids_through_real_process(
        upstream: ScriptedUpstream, wsup: ScriptedWebSocketUpstream,
        start_relay: Callable[..., RelayProcess], tmp_path: Path) -> None:
    """access_log_format = json, trust_request_id = on: an HTTP request with a client id keeps it,
    a relayed pair without one gets a new one; both reach the upstream as X-Request-ID and the
    log's lines carry exactly the documented fields, the pair's written when it ends."""
    log_file = tmp_path / "access.log"
    relay = start_relay(f"""
        [wsrelay]
        listen = tcp:0:interface=127.0.0.1
        access_log = {log_file}
        access_log_format = json
        trust_request_id = on
        [upstream api]
        servers = 127.0.0.1:{upstream.port}
        [upstream chat]
        servers = 127.0.0.1:{wsup.port}
        [route /api/]
        upstream = api
        [route /ws/]
        upstream = chat
        ws_ping_interval = off
        """)

    # HTTP: a body, a cookie and Authorization, the client's own id.
    conn = http.client.HTTPConnection("127.0.0.1", relay.port, timeout=10)
    conn.request("POST", "/api/echo?q=1", body=b"hello", headers={
        "Host": "app.example", "X-Request-ID": "client-id-1", "User-Agent": "test/1",
        "Cookie": "s=secret-cookie", "Authorization": "Bearer secret-token"})
    response = conn.getresponse()
    assert response.status == 200 and response.read() == b"ok"
    conn.close()
    seen, = upstream.requests
    assert header_lines(seen.head, b"x-request-id") == [b"client-id-1"]

    # WebSocket, relay mode: two messages each way, then the client closes with 4002.
    with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as s:
        head, reader = client_handshake(s, "/ws/echo", [
            ("Host", "app.example"), ("Upgrade", "websocket"), ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", KEY), ("Sec-WebSocket-Version", "13"), ("User-Agent", "ws/1")])
        assert head.startswith(b"HTTP/1.1 101"), head
        for payload in (b"secret-message-1", b"two"):
            s.sendall(frame(1, payload, mask=True))
            assert reader.message() == (1, payload)
        assert not any(r["status"] == 101 for r in records(log_file))  # written when the pair ends
        s.sendall(frame(8, struct.pack("!H", 4002) + b"done", mask=True))
        opcode, payload = reader.message()
        assert (opcode, payload[:2]) == (8, struct.pack("!H", 4002))
    ws_ids = header_lines(wsup.handshakes[0], b"x-request-id")
    assert len(ws_ids) == 1 and re.fullmatch(rb"[0-9a-f]{32}", ws_ids[0])

    assert poll_until(lambda: len(records(log_file)) == 2)
    http_line, ws_line = records(log_file)
    for line in (http_line, ws_line):
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line.pop("time"))
        assert 0 <= line.pop("duration") < 10
    assert http_line == {
        "client": "127.0.0.1", "method": "POST", "target": "/api/echo?q=1", "protocol": "HTTP/1.1",
        "status": 200, "bytes_sent": 2, "bytes_received": 5, "route": "/api/",
        "upstream": f"127.0.0.1:{upstream.port}", "request_id": "client-id-1", "referer": None,
        "user_agent": "test/1"}
    assert 0 <= ws_line.pop("ws_duration") < 10
    assert ws_line == {
        "client": "127.0.0.1", "method": "GET", "target": "/ws/echo", "protocol": "HTTP/1.1",
        "status": 101, "bytes_sent": 19, "bytes_received": 19, "route": "/ws/",
        "upstream": f"127.0.0.1:{wsup.port}", "request_id": ws_ids[0].decode(), "referer": None,
        "user_agent": "ws/1", "ws_mode": "relay", "ws_messages_from_client": 2, "ws_bytes_from_client": 19,
        "ws_messages_from_upstream": 2, "ws_bytes_from_upstream": 19, "ws_close_code": 4002,
        "ws_close_by": "client"}
    text = log_file.read_text("ascii") + "\n".join(relay.output.lines)
    for secret in ("secret-cookie", "secret-token", "hello", "secret-message"):
        assert secret not in text
