"""Bounds on what a WebSocket peer can make the real ``twistd -n wsrelay`` hold, over loopback."""

from __future__ import annotations

import socket
from collections.abc import Callable

import pytest
import websockets

from tests.scripted_ws import ScriptedWebSocketUpstream, client_handshake, frame
from tests.support import RelayProcess
from tests.test_ws_process import config, handshake_headers, run, wsup  # noqa: F401  (wsup: fixture)

MiB = 1024 * 1024


def flood_without_reading(sock: socket.socket, data: bytes, total: int, stall: float) -> int:
    """Send ``data`` over and over, ``total`` bytes at most, reading nothing; stop early when a
    send makes no progress for ``stall`` seconds (the peer stopped reading).  Returns bytes sent."""
    sock.settimeout(stall)
    sent = 0
    view = memoryview(data)
    while sent < total:
        try:
            sent += sock.send(view[:min(len(data), total - sent)])
        except TimeoutError:
            return sent
    return sent


@pytest.mark.parametrize("path", ["/echo", "/tunnel/echo"])
def test_client_flooding_pings_without_reading_leaves_rss_bounded(
        path: str, wsup: ScriptedWebSocketUpstream, start_relay: Callable[..., RelayProcess]) -> None:
    """A client sends 64 MiB of ping payload and reads nothing: wsrelay stops reading it once what
    it owes the client (pongs in relay mode, the upstream's pongs in tunnel mode) fills the buffer,
    its RSS grows by less than 8 MiB, and another client is served meanwhile.  (The tunnel route's
    idle timeout goes up from 1 s: once the flood has filled every buffer no byte moves, and an
    idle close would reset the client in the middle of its 5 s wait for a send to progress.)"""
    text = config(wsup.port, "ws_ping_interval = off").replace("ws_idle_timeout = 1s", "ws_idle_timeout = 60s")
    assert "ws_idle_timeout = 60s" in text
    relay = start_relay(text)
    ping = frame(9, b"p" * 125, mask=True)
    batch = ping * 512
    total = 64 * MiB // 125 * len(ping)  # 64 MiB of ping payload
    with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        head, _ = client_handshake(s, path, handshake_headers())
        assert head.startswith(b"HTTP/1.1 101")
        baseline = relay.rss_kib()
        sent = flood_without_reading(s, batch, total, stall=5.0)
        grown = relay.rss_kib() - baseline
        assert grown < 8 * 1024, f"wsrelay grew by {grown} KiB after {sent // MiB} MiB of pings"
        assert sent < total, "wsrelay read the whole flood from a client that reads nothing"

        async def bystander() -> str:
            async with websockets.connect(f"ws://127.0.0.1:{relay.port}/echo") as ws:
                await ws.send("still served")
                return await ws.recv()  # type: ignore[return-value]
        assert run(bystander()) == "still served"
