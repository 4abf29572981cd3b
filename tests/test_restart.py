"""Restarts that refuse nothing, through real processes on 127.0.0.1 (README, Restarts and upgrades).

A stream of HTTP requests (a new connection each) and WebSocket clients (each reconnecting as soon
as it is closed) runs through a restart:

- with ``reuse_port`` (one process, and ``workers = 2``): a new wsrelay binds the same port while
  the old one serves, says it is ready, then the old one gets SIGTERM;
- with a socket held for wsrelay (as systemd's socket activation does): the old process gets
  SIGTERM, exits, and a new one is started on the same socket.

No request may fail and no connection be refused; every WebSocket client is closed with 1001 by
the old process, spread over ``ws_drain_spread``, and reconnects (to the new one) at once.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.support import TWISTD, Process, RelayProcess, UpstreamProcess, write_config

WS_CLIENTS = 8
HTTP_CLIENTS = 3
SPREAD = 2.0

CONFIG = """
[wsrelay]
listen = {listen}
access_log = off
workers = {workers}
drain_timeout = 10s
ws_drain_spread = {spread}s
[upstream demo]
servers = 127.0.0.1:{upstream}
[route /]
upstream = demo
ws_mode = {mode}
{admin}"""


@pytest.fixture
def reserved_ports() -> Iterator[tuple[int, int]]:
    """Two ports kept from other programs for the test's length: bound (not listening) with
    SO_REUSEPORT, so the wsrelay processes, which set it too, can bind them beside these sockets."""
    with socket.socket() as one, socket.socket() as two:
        for sock in (one, two):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(("127.0.0.1", 0))
        yield one.getsockname()[1], two.getsockname()[1]


class Load:
    """HTTP clients (a new connection per request) and WebSocket clients (reconnecting at once
    when closed), recording every outcome with the loop's clock."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.stop = asyncio.Event()
        self.http_ok: list[float] = []
        self.failures: list[str] = []
        self.opens: list[tuple[int, float]] = []
        self.closes: list[tuple[int, int | None, float]] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.progress = asyncio.Event()  # set whenever an outcome is recorded (see until)

    def record(self, outcomes: list[Any], outcome: Any) -> None:
        outcomes.append(outcome)
        self.progress.set()

    def start(self) -> None:
        self.tasks = [asyncio.create_task(self.http()) for _ in range(HTTP_CLIENTS)]
        self.tasks += [asyncio.create_task(self.websocket(i)) for i in range(WS_CLIENTS)]

    async def finish(self) -> None:
        self.stop.set()
        await asyncio.wait_for(asyncio.gather(*self.tasks), 30)

    async def http(self) -> None:
        loop = asyncio.get_running_loop()
        while not self.stop.is_set():
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.port), 20)
                writer.write(b"GET /api/info HTTP/1.1\r\nHost: restart.test\r\nConnection: close\r\n\r\n")
                answer = await asyncio.wait_for(reader.read(), 20)
                writer.close()
            except (OSError, asyncio.TimeoutError) as e:
                self.record(self.failures, f"HTTP: {e!r}")
                continue
            if answer.startswith(b"HTTP/1.1 200 "):
                self.record(self.http_ok, loop.time())
            else:
                self.record(self.failures, f"HTTP: {answer[:80]!r}")

    async def websocket(self, i: int) -> None:
        loop = asyncio.get_running_loop()
        url = f"ws://127.0.0.1:{self.port}/ws/echo"
        while not self.stop.is_set():
            try:
                ws = await connect(url, open_timeout=20, proxy=None)
            except (OSError, asyncio.TimeoutError, Exception) as e:  # noqa: B014 - any refusal counts
                self.record(self.failures, f"WebSocket {i} connect: {e!r}")
                return
            self.record(self.opens, (i, loop.time()))
            try:
                while not self.stop.is_set():
                    await ws.send(f"m{i}")
                    assert await asyncio.wait_for(ws.recv(), 20) == f"m{i}"
                    try:  # pace the messages (and wake at once when the test ends)
                        await asyncio.wait_for(self.stop.wait(), 0.05)
                    except asyncio.TimeoutError:
                        pass
                await ws.close()
            except ConnectionClosed:
                self.record(self.closes, (i, ws.close_code, loop.time()))

    def reconnected(self, times: int = 2) -> bool:
        counts: dict[int, int] = {}
        for i, _ in self.opens:
            counts[i] = counts.get(i, 0) + 1
        return len(counts) == WS_CLIENTS and min(counts.values()) >= times


async def until(load: Load, predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    """Wait until ``predicate`` (over what ``load`` recorded) holds, checking it each time an
    outcome is recorded; AssertionError after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        remaining = deadline - loop.time()
        assert remaining > 0, f"not within {timeout}s"
        load.progress.clear()  # no outcome can be recorded between the check and the wait
        try:
            await asyncio.wait_for(load.progress.wait(), remaining)
        except asyncio.TimeoutError:
            pass


def check_ramp(load: Load) -> None:
    """Every WebSocket client closed with 1001, the closes spread over the drain (not one instant),
    and each client open again soon after its close."""
    assert load.failures == [], load.failures[:10]
    assert {code for _, code, _ in load.closes} == {1001}, load.closes
    first_close: dict[int, float] = {}
    for i, _, at in load.closes:
        first_close.setdefault(i, at)
    assert len(first_close) == WS_CLIENTS
    times = sorted(first_close.values())
    assert times[-1] - times[0] >= SPREAD * 0.5, times  # 8 pairs over 2 s: 1.75 s from first to last


@pytest.mark.parametrize("workers, mode", [(1, "relay"), (2, "relay"), (1, "tunnel")])
def test_restart_with_reuse_port_refuses_nothing(tmp_path: Path, demo_upstream: UpstreamProcess,
                                                 reserved_ports: tuple[int, int], workers: int, mode: str) -> None:
    """New process on the same ports (the admin listener's too), ready, then SIGTERM to the old:
    no request fails, no connection is refused, WebSocket clients (relayed or tunnelled) get 1001
    spread over ws_drain_spread and are open on the new process within a second of their close."""
    reserved_port, admin_port = reserved_ports
    path = write_config(tmp_path, CONFIG.format(
        listen=f"tcp:{reserved_port}:interface=127.0.0.1", workers=workers, spread=SPREAD, upstream=demo_upstream.port,
        mode=mode, admin=f"[admin]\nendpoint = tcp:{admin_port}:interface=127.0.0.1\n"))
    old = RelayProcess(path)
    new: RelayProcess | None = None
    try:
        old.output.wait_for(r"wsrelay ready$")

        async def run() -> tuple[Load, float, float]:
            nonlocal new
            load = Load(reserved_port)
            load.start()
            await until(load, lambda: len(load.http_ok) >= 20 and load.reconnected(times=1))
            new = await asyncio.to_thread(RelayProcess, path)
            await asyncio.to_thread(new.output.wait_for, r"wsrelay ready$")
            loop = asyncio.get_running_loop()
            signalled = loop.time()
            old.signal(signal.SIGTERM)
            assert await asyncio.to_thread(old.wait, 40) in (0, -signal.SIGTERM)
            ended = loop.time()
            served_after = len(load.http_ok)
            await until(load, lambda: load.reconnected() and len(load.http_ok) >= served_after + 20)
            await load.finish()
            return load, signalled, ended

        load, signalled, ended = asyncio.run(run())
        check_ramp(load)
        closes = {i: at for i, _, at in load.closes}
        for i, at in closes.items():  # open again (on the new process: the old one no longer listens)
            reopened = min(t for j, t in load.opens if j == i and t >= at)
            assert reopened - at < 1.0, (i, at, reopened)
        assert len(load.closes) == WS_CLIENTS  # the old process closed each once; the new one none
        assert any(signalled <= t <= ended for t in load.http_ok)  # served through the drain
    finally:
        old.stop()
        if new is not None:
            new.stop()


def held_socket_relay(path: Path, sock: socket.socket, cwd: Path) -> Process:
    """wsrelay started as systemd starts a socket-activated service: the socket as descriptor 3,
    LISTEN_FDS=1, LISTEN_FDNAMES=web and LISTEN_PID its own pid (set by the shell it replaces)."""
    fd = sock.fileno()
    return Process(["sh", "-c", 'LISTEN_PID=$$ exec "$0" "$@"', TWISTD, "-n", "--pidfile=", "wsrelay",
                    "--config", str(path)], cwd, {"LISTEN_FDS": "1", "LISTEN_FDNAMES": "web"},
                   pass_fds=(3,), preexec_fn=lambda: os.dup2(fd, 3))


def test_restart_with_a_held_socket_refuses_nothing(tmp_path: Path, demo_upstream: UpstreamProcess) -> None:
    """systemd's way (socket activation, ``systemctl restart``): the socket stays with the
    activator, the old process drains and exits, the new one starts on the same socket.  Meanwhile
    connections wait in the socket's backlog: none is refused and no request fails; WebSocket
    clients get 1001 spread over ws_drain_spread and open again on the new process."""
    path = write_config(tmp_path, CONFIG.format(listen="systemd:domain=INET:name=web", workers=1,
                                                spread=SPREAD, upstream=demo_upstream.port, mode="relay", admin=""))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(511)
    port = sock.getsockname()[1]
    processes: list[Process] = [held_socket_relay(path, sock, tmp_path)]
    try:
        processes[0].output.wait_for(r"wsrelay ready$")

        async def run() -> Load:
            load = Load(port)
            load.start()
            await until(load, lambda: len(load.http_ok) >= 20 and load.reconnected(times=1))
            old = processes[0]
            old.signal(signal.SIGTERM)
            assert await asyncio.to_thread(old.wait, 40) in (0, -signal.SIGTERM)
            processes.append(held_socket_relay(path, sock, tmp_path))
            served_before = len(load.http_ok)
            await asyncio.to_thread(processes[1].output.wait_for, r"wsrelay ready$")
            await until(load, lambda: load.reconnected() and len(load.http_ok) >= served_before + 20)
            await load.finish()
            return load

        load = asyncio.run(run())
        check_ramp(load)
    finally:
        for process in processes:
            process.stop()
        sock.close()
