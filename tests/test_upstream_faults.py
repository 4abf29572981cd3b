"""Upstream faults with real processes: an upstream that dies under 100 relayed WebSockets.

(Refused, silent and resetting upstreams are in test_integration_http.py and test_ws_process.py;
balancing around a dead server in test_balancing.py.)"""

from __future__ import annotations

import asyncio
import signal
import urllib.request
from collections.abc import Callable
from pathlib import Path

import websockets
from websockets.exceptions import ConnectionClosed

from tests.support import RelayProcess, UpstreamProcess, poll_until


def test_upstream_death_under_100_websockets(tmp_path: Path, start_relay: Callable[..., RelayProcess]) -> None:
    """Killing the upstream under 100 live relayed WebSockets: every client gets a close frame
    (1011), and wsrelay's open file descriptors return to their baseline."""
    upstream = UpstreamProcess(tmp_path)
    try:
        relay = start_relay(f"""
[wsrelay]
listen = tcp:0:interface=127.0.0.1
access_log = off
[upstream demo]
servers = 127.0.0.1:{upstream.port}
[route /]
upstream = demo
""")
        # One request first: the reactor is then surely running, with the descriptors it opens
        # once at start-up (its signal pipe) and the pooled upstream connection in the baseline,
        # read once wsrelay has closed its end of that request's connection.
        with urllib.request.urlopen(f"http://127.0.0.1:{relay.port}/api/info", timeout=10) as response:
            assert response.status == 200
        assert poll_until(lambda: relay.open_connections(relay.port) == 0)
        baseline = relay.open_fds()

        async def go() -> list[int | None]:
            clients = [await websockets.connect(f"ws://127.0.0.1:{relay.port}/ws/echo") for _ in range(100)]
            for i, ws in enumerate(clients):
                await ws.send(f"m{i}")
            assert [await ws.recv() for ws in clients] == [f"m{i}" for i in range(100)]
            assert relay.open_fds() >= baseline + 200  # both legs of every pair
            upstream.popen.send_signal(signal.SIGKILL)

            async def closed(ws: websockets.ClientConnection) -> int | None:
                try:
                    await ws.recv()
                except ConnectionClosed:
                    pass
                return ws.close_code

            return await asyncio.gather(*(closed(ws) for ws in clients))

        codes = asyncio.run(asyncio.wait_for(go(), timeout=60))
        assert codes == [1011] * 100
        # Every socket of the 100 pairs is released.
        assert poll_until(lambda: relay.open_fds() <= baseline), f"baseline {baseline}: " + " ".join(relay.fd_targets())
    finally:
        upstream.stop()
