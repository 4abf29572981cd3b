"""WebSocket relay and tunnel through the real ``twistd -n wsrelay``: the ``websockets`` library as
an independent client, raw sockets where the test needs the bytes, and a scripted upstream."""

from __future__ import annotations

import asyncio
import socket
import struct
import zlib
from collections.abc import Callable, Iterator

import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.scripted_ws import ScriptedWebSocketUpstream, client_handshake, frame
from tests.support import RelayProcess, held_back

MiB = 1024 * 1024
KEY = "dGhlIHNhbXBsZSBub25jZQ=="


@pytest.fixture
def wsup() -> Iterator[ScriptedWebSocketUpstream]:
    up = ScriptedWebSocketUpstream()
    try:
        yield up
    finally:
        up.stop()


def config(port: int, extra: str = "") -> str:
    return f"""
[wsrelay]
listen = tcp:0:interface=127.0.0.1
access_log = -
[upstream ws]
servers = 127.0.0.1:{port}
[route /]
upstream = ws
ws_handshake_timeout = 2s
retries = 0
{extra}
[route /tunnel/]
upstream = ws
ws_mode = tunnel
ws_idle_timeout = 1s
"""


@pytest.fixture
def relay(wsup: ScriptedWebSocketUpstream, start_relay: Callable[..., RelayProcess]) -> RelayProcess:
    return start_relay(config(wsup.port))


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(asyncio.wait_for(coro, timeout=60))


def handshake_headers(host: str = "app.example", **extra: str) -> list[tuple[str, str]]:
    headers = [("Host", host), ("Upgrade", "websocket"), ("Connection", "keep-alive, Upgrade"),
               ("Sec-WebSocket-Key", KEY), ("Sec-WebSocket-Version", "13")]
    return headers + [(k.replace("_", "-"), v) for k, v in extra.items()]


def test_handshake_goes_upstream_first_with_client_headers(relay: RelayProcess, wsup: ScriptedWebSocketUpstream) -> None:
    """Firefox-style Connection works; path, query, subprotocols, Cookie/Authorization/Origin/UA
    (repeated lines intact) and X-Forwarded-* reach the upstream; the client gets its subprotocol."""
    with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as s:
        head, reader = client_handshake(s, "/room/echo?id=7&x", handshake_headers(
            Sec_WebSocket_Protocol="chat.v1, chat.v2") + [("Cookie", "a=1"), ("Cookie", "b=2"),
            ("Authorization", "Bearer t"), ("Origin", "https://app.example"), ("User-Agent", "ua/1"),
            ("Sec-WebSocket-Extensions", "permessage-deflate")])
        assert head.startswith(b"HTTP/1.1 101"), head
        assert b"Sec-WebSocket-Protocol: chat.v2" in head  # the upstream's choice
        assert b"X-Upstream: yes" in head  # the upstream's other 101 headers come along
        assert b"Sec-WebSocket-Extensions: permessage-deflate" in head  # negotiated on this hop
        s.sendall(frame(1, b"hi", mask=True))
        opcode, payload = reader.message()
        inflate = zlib.decompressobj(-15)
        assert (opcode, inflate.decompress(payload + b"\x00\x00\xff\xff")) == (1, b"hi")
    up = wsup.handshakes[0].split(b"\r\n")
    assert up[0] == b"GET /room/echo?id=7&x HTTP/1.1"
    assert [l for l in up if l.startswith(b"Cookie")] == [b"Cookie: a=1", b"Cookie: b=2"]
    for line in (b"Host: app.example", b"Authorization: Bearer t", b"Origin: https://app.example",
                 b"User-Agent: ua/1", b"X-Forwarded-For: 127.0.0.1", b"X-Forwarded-Proto: http"):
        assert line in up, line
    assert sum(1 for l in up if l.lower().startswith(b"host:")) == 1
    assert not any(l.lower().startswith(b"sec-websocket-extensions") for l in up)  # negotiated per hop
    assert any(l.lower() == b"sec-websocket-protocol: chat.v1,chat.v2" or l.lower() == b"sec-websocket-protocol: chat.v1, chat.v2"
               for l in up)


def test_messages_in_order_types_kept_large_streamed(relay: RelayProcess) -> None:
    """Many text and binary messages, and a 5 MiB one, come back once, in order, with their types."""
    async def go() -> None:
        async with websockets.connect(f"ws://127.0.0.1:{relay.port}/echo", max_size=None) as ws:
            sent = []
            for i in range(200):
                m = f"text {i} é" if i % 2 else bytes([i % 256]) * (i * 37)
                sent.append(m)
                await ws.send(m)
            big = bytes(range(256)) * (5 * MiB // 256)
            await ws.send(big)
            got = [await ws.recv() for _ in range(201)]
            assert got[:200] == sent
            assert got[200] == big
    run(go())


def test_deflate_toward_client_without_upstream_deflate(relay: RelayProcess, wsup: ScriptedWebSocketUpstream) -> None:
    """A client with permessage-deflate talks through wsrelay to an upstream without it."""
    async def go() -> None:
        async with websockets.connect(f"ws://127.0.0.1:{relay.port}/echo", compression="deflate") as ws:
            assert "permessage-deflate" in ws.response.headers.get("Sec-WebSocket-Extensions", "")
            await ws.send("x" * 100000)
            assert await ws.recv() == "x" * 100000
    run(go())
    assert b"sec-websocket-extensions" not in wsup.handshakes[0].lower()


def test_client_close_code_reaches_upstream(relay: RelayProcess, wsup: ScriptedWebSocketUpstream) -> None:
    """A client's close code and reason (4001) reach the upstream unchanged."""
    async def go() -> None:
        async with websockets.connect(f"ws://127.0.0.1:{relay.port}/echo") as ws:
            await ws.send("x")
            await ws.recv()
            await ws.close(4001, "done here")
    run(go())
    assert wsup.closed_frame.wait(5)
    assert wsup.closes_received[0] == struct.pack("!H", 4001) + b"done here"


@pytest.mark.parametrize("code", [1001, 1008, 1011, 1012, 1013, 3000, 4999])
def test_upstream_close_codes_reach_the_client(code: int, relay: RelayProcess) -> None:
    """Close codes Autobahn's sendClose would refuse (1001, 1008, 1011...) still reach the client."""
    async def go() -> tuple[int | None, str | None]:
        async with websockets.connect(f"ws://127.0.0.1:{relay.port}/close?{code}") as ws:
            await ws.send("trigger")
            with pytest.raises(ConnectionClosed):
                await ws.recv()
            return ws.close_code, ws.close_reason
    assert run(go()) == (code, "bye")


def test_upstream_vanishing_gives_client_1011(relay: RelayProcess) -> None:
    """An upstream that drops TCP without a close frame: the client gets a close frame with 1011."""
    async def go() -> int | None:
        async with websockets.connect(f"ws://127.0.0.1:{relay.port}/drop") as ws:
            await ws.send("trigger")
            with pytest.raises(ConnectionClosed):
                await ws.recv()
            return ws.close_code
    assert run(go()) == 1011


def test_client_vanishing_gives_upstream_1001(relay: RelayProcess, wsup: ScriptedWebSocketUpstream) -> None:
    """A client that drops TCP without a close frame: the upstream gets a close frame with 1001."""
    with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as s:
        head, reader = client_handshake(s, "/echo", handshake_headers())
        assert head.startswith(b"HTTP/1.1 101")
        s.sendall(frame(1, b"hi", mask=True))
        assert reader.message() == (1, b"hi")
    assert wsup.closed_frame.wait(5)
    assert wsup.closes_received[0][:2] == struct.pack("!H", 1001)


def test_upstream_refusal_and_failures_map_to_statuses(wsup: ScriptedWebSocketUpstream,
                                                      start_relay: Callable[..., RelayProcess]) -> None:
    """Upstream 403 -> 403; unreachable -> 502; no handshake answer in time -> 504."""
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead_port = dead.getsockname()[1]
    dead.close()
    relay = start_relay(config(wsup.port) + f"""
[upstream dead]
servers = 127.0.0.1:{dead_port}
[route /dead/]
upstream = dead
retries = 0
""")

    async def status(path: str) -> int:
        with pytest.raises(InvalidStatus) as info:
            async with websockets.connect(f"ws://127.0.0.1:{relay.port}{path}"):
                pass
        return info.value.response.status_code

    assert run(status("/status403")) == 403
    assert run(status("/dead/x")) == 502
    assert run(status("/silent")) == 504


def test_client_leaving_during_upstream_handshake_leaves_nothing(wsup: ScriptedWebSocketUpstream,
                                                                 start_relay: Callable[..., RelayProcess]) -> None:
    """A client that disconnects while the upstream handshake is pending: wsrelay closes the upstream.

    ws_handshake_timeout is a minute here and the wait for the upstream connection to end half of
    that: a close seen at all cannot be the timeout's, however slow the machine."""
    relay = start_relay(config(wsup.port).replace("ws_handshake_timeout = 2s", "ws_handshake_timeout = 60s"))
    with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as s:
        s.sendall(b"GET /silent HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  b"Sec-WebSocket-Key: " + KEY.encode() + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
        assert wsup.handshake_seen.wait(10)  # the upstream has the handshake: now the client leaves
        assert wsup.connections < 2
    assert wsup.ended.wait(30)  # well before the 60 s handshake timeout
    assert wsup.connections == 1


@pytest.mark.parametrize("headers, status, expect", [
    ([("Sec-WebSocket-Version", "8"), ("Sec-WebSocket-Key", KEY)], 426, b"Sec-WebSocket-Version: 13"),
    ([("Sec-WebSocket-Version", "13")], 400, b""),
    ([("Sec-WebSocket-Version", "13"), ("Sec-WebSocket-Key", "c2hvcnQ=")], 400, b""),
    ([("Sec-WebSocket-Version", "13"), ("Sec-WebSocket-Key", KEY), ("Origin", "https://evil.example")], 403, b""),
])
def test_bad_handshakes_never_reach_upstream(headers: list[tuple[str, str]], status: int, expect: bytes,
                                             wsup: ScriptedWebSocketUpstream,
                                             start_relay: Callable[..., RelayProcess]) -> None:
    """Wrong version: 426 with the supported version; bad key: 400; disallowed Origin: 403."""
    relay = start_relay(config(wsup.port, "ws_allowed_origins = https://app.example"))
    with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as s:
        head, _ = client_handshake(s, "/echo", [("Host", "a"), ("Upgrade", "websocket"),
                                                ("Connection", "Upgrade"), *headers])
    assert head.startswith(b"HTTP/1.1 %d" % status), head
    assert expect.lower() in head.lower()  # field names are case-insensitive
    assert wsup.connections == 0


def test_oversized_message_gets_1009(wsup: ScriptedWebSocketUpstream, start_relay: Callable[..., RelayProcess]) -> None:
    """A message over ws_max_message_size is refused with close code 1009 to its sender."""
    relay = start_relay(config(wsup.port, "ws_max_message_size = 1K\nws_max_frame_size = 1K"))

    async def go() -> int | None:
        async with websockets.connect(f"ws://127.0.0.1:{relay.port}/echo") as ws:
            await ws.send(b"x" * 4096)
            with pytest.raises(ConnectionClosed):
                await ws.recv()
            return ws.close_code
    assert run(go()) == 1009


def test_protocol_error_gets_1002_and_affects_only_its_pair(relay: RelayProcess) -> None:
    """A frame with a reserved bit set gets close 1002; another pair carries on."""
    async def other() -> websockets.ClientConnection:
        return await websockets.connect(f"ws://127.0.0.1:{relay.port}/echo")

    async def go() -> None:
        bystander = await other()
        with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as s:
            head, reader = client_handshake(s, "/echo", handshake_headers())
            assert head.startswith(b"HTTP/1.1 101")
            s.sendall(frame(1, b"bad", mask=True, rsv=2))
            opcode, payload = reader.message()
            assert opcode == 8 and payload[:2] == struct.pack("!H", 1002)
        await bystander.send("still here")
        assert await bystander.recv() == "still here"
        await bystander.close()
    run(go())


def slow_client_backpressure(relay: RelayProcess, wsup: ScriptedWebSocketUpstream, target: str) -> None:
    """An upstream sends 64 MiB (64 messages of 1 MiB) to a client that does not read: wsrelay stops
    reading the upstream, its RSS grows < 16 MiB, and every message arrives intact, in full."""
    size = 64 * MiB
    baseline = relay.rss_kib()
    with socket.create_connection(("127.0.0.1", relay.port), timeout=30) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        head, reader = client_handshake(s, f"{target}?{size}", handshake_headers())
        assert head.startswith(b"HTTP/1.1 101")
        assert wsup.blocked.wait(30), "the upstream was never paused"
        assert wsup.flood_peer is not None
        assert held_back(relay.port, wsup.port, wsup.flood_peer, lambda: wsup.flood_sent), \
            f"wsrelay kept reading the upstream ({wsup.flood_sent} bytes sent)"
        assert wsup.flood_sent < size // 2
        grown = relay.rss_kib() - baseline
        assert grown < 16 * 1024, f"wsrelay grew by {grown} KiB"
        got = 0
        for i in range(size // MiB):
            opcode, payload = reader.message()
            assert opcode == 2
            assert payload == wsup.flood_payload, f"message {i} differs from what the upstream sent"
            got += len(payload)
        assert got == size


def test_slow_client_backpressure_bounds_memory(wsup: ScriptedWebSocketUpstream, relay: RelayProcess) -> None:
    """Relay mode: an upstream sending 64 MiB to a client that does not read: wsrelay stops reading
    the upstream, its RSS grows < 16 MiB, and all 64 MiB arrive intact once the client reads."""
    slow_client_backpressure(relay, wsup, "/flood")


def test_tunnel_slow_client_backpressure_bounds_memory(wsup: ScriptedWebSocketUpstream,
                                                       start_relay: Callable[..., RelayProcess]) -> None:
    """Tunnel mode through the real process: the same 64 MiB toward a client that does not read:
    wsrelay stops reading the upstream, its RSS grows < 16 MiB, and all 64 MiB arrive intact."""
    relay = start_relay(config(wsup.port) + "[route /bulk/]\nupstream = ws\nws_mode = tunnel\n")
    slow_client_backpressure(relay, wsup, "/bulk/flood")


def test_tunnel_mode_copies_bytes_and_closes_on_idle(relay: RelayProcess, wsup: ScriptedWebSocketUpstream) -> None:
    """Tunnel mode: the upstream's 101 goes to the client as sent, frames pass unchanged, and
    ws_idle_timeout closes both sides with a close frame (1001)."""
    with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as s:
        head, reader = client_handshake(s, "/tunnel/echo", handshake_headers(Sec_WebSocket_Protocol="p1, p2"))
        assert head.startswith(b"HTTP/1.1 101")
        assert b"X-Upstream: yes" in head and b"Sec-WebSocket-Protocol: p2" in head
        s.sendall(frame(2, b"\x00\xff" * 1000, mask=True))
        assert reader.message() == (2, b"\x00\xff" * 1000)
        opcode, payload = reader.message()  # nothing sent for 1 s: the idle close
        assert opcode == 8 and payload[:2] == struct.pack("!H", 1001)
    assert wsup.closed_frame.wait(5)
    assert wsup.closes_received[0][:2] == struct.pack("!H", 1001)


def test_relay_idle_timeout_and_ping(wsup: ScriptedWebSocketUpstream, start_relay: Callable[..., RelayProcess]) -> None:
    """wsrelay pings the client every ws_ping_interval, and ws_idle_timeout closes both sides with 1001."""
    relay = start_relay(config(wsup.port, "ws_ping_interval = 1500ms\nws_ping_timeout = 1s\nws_idle_timeout = 3s"))
    with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as s:
        head, reader = client_handshake(s, "/echo", handshake_headers())
        assert head.startswith(b"HTTP/1.1 101")
        saw_ping = False
        while True:
            fin, opcode, payload = reader.read()
            if opcode == 9:
                saw_ping = True
                s.sendall(frame(10, payload, mask=True))
            elif opcode == 8:
                break
        assert saw_ping
        assert payload[:2] == struct.pack("!H", 1001)
    assert wsup.closed_frame.wait(5)
    assert wsup.closes_received[0][:2] == struct.pack("!H", 1001)


def test_websocket_access_log_line_through_real_process(relay: RelayProcess) -> None:
    """A relayed WebSocket gets one access-log line with status 101 and its upstream."""
    async def go() -> None:
        async with websockets.connect(f"ws://127.0.0.1:{relay.port}/echo") as ws:
            await ws.send("x")
            await ws.recv()
    run(go())
    relay.output.wait_for(r'"GET /echo HTTP/1.1" 101 \d+ .* upstream=127\.0\.0\.1:\d+ rt=')


def test_handshake_retried_on_next_server(wsup: ScriptedWebSocketUpstream,
                                          start_relay: Callable[..., RelayProcess]) -> None:
    """An unreachable server is skipped: the WebSocket handshake is retried on the next one."""
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead_port = dead.getsockname()[1]
    dead.close()
    relay = start_relay(config(wsup.port).replace(
        f"servers = 127.0.0.1:{wsup.port}", f"servers = 127.0.0.1:{dead_port} 127.0.0.1:{wsup.port}").replace(
        "retries = 0", "retries = 1"))

    async def go() -> None:
        for i in range(3):
            async with websockets.connect(f"ws://127.0.0.1:{relay.port}/echo") as ws:
                await ws.send(f"try {i}")
                assert await ws.recv() == f"try {i}"
    run(go())
    assert wsup.connections == 3
