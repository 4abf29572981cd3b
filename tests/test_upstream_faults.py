"""Upstream faults with real processes: upstreams that die under load or one after the other.

(Refused, silent and resetting upstreams are in test_integration_http.py and test_ws_process.py;
the balancing and health logic, with a clock, in test_balancing.py and test_healthcheck.py.)"""

from __future__ import annotations

import asyncio
import re
import signal
import urllib.error
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


def get(port: int, path: str = "/api/info") -> tuple[int, dict[str, str]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            response.read()
            return response.status, dict(response.headers)
    except urllib.error.HTTPError as e:
        e.read()
        return e.code, dict(e.headers)


def test_servers_dying_and_coming_back(tmp_path: Path, start_relay: Callable[..., RelayProcess]) -> None:
    """Two real upstreams, round robin: both serve; one killed, every request still succeeds (the
    failed connect is retried on the other, then the dead one is out); both killed, 503 with
    Retry-After; one restarted, the active health check brings it back."""
    a, b = UpstreamProcess(tmp_path), UpstreamProcess(tmp_path)
    revived: UpstreamProcess | None = None
    try:
        relay = start_relay(f"""
[wsrelay]
listen = tcp:0:interface=127.0.0.1
access_log = -
[upstream demo]
servers = 127.0.0.1:{a.port} 127.0.0.1:{b.port}
balance = round_robin
max_fails = 1
fail_timeout = 30s
health_check = /api/info
health_interval = 200ms
health_timeout = 100ms
health_rise = 1
health_fall = 1
[route /]
upstream = demo
""")

        def served(start: int) -> list[int]:
            return [int(m) for line in relay.output.lines[start:]
                    for m in re.findall(r'"GET /api/info HTTP/1\.1" 200 .* upstream=127\.0\.0\.1:(\d+)', line)]

        start = len(relay.output.lines)
        assert [get(relay.port)[0] for _ in range(4)] == [200] * 4
        assert poll_until(lambda: len(served(start)) == 4)
        assert sorted(served(start)) == sorted([a.port, b.port] * 2)

        a.signal(signal.SIGKILL)
        a.wait()
        start = len(relay.output.lines)
        assert [get(relay.port)[0] for _ in range(6)] == [200] * 6
        assert poll_until(lambda: len(served(start)) == 6)
        assert set(served(start)) == {b.port}

        b.signal(signal.SIGKILL)
        b.wait()
        assert poll_until(lambda: get(relay.port)[0] == 503, timeout=10)
        status, headers = get(relay.port)
        assert status == 503 and int(headers["Retry-After"]) >= 1

        revived = UpstreamProcess(tmp_path, port=b.port)
        assert poll_until(lambda: get(relay.port)[0] == 200, timeout=10)
    finally:
        for upstream in (a, b, revived):
            if upstream is not None:
                upstream.stop()
