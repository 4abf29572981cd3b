"""workers = N: several processes share each port, and signals reach every one of them."""

from __future__ import annotations

import os
import select
import signal
import socket
from collections.abc import Callable
from pathlib import Path

from tests.support import RelayProcess

CONFIG = """
[wsrelay]
listen = tcp:0:interface=127.0.0.1
workers = 2
access_log = off
[route /]
redirect = 301
"""


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def socket_count(pid: int) -> int:
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if os.readlink(fd).startswith("socket:"):
                count += 1
        except OSError:
            pass
    return count


def wait_exit(pid: int, timeout: float = 15.0) -> None:
    """Wait for a process that is not our child to end (pidfd becomes readable), with a bound."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        ready, _, _ = select.select([fd], [], [], timeout)
        assert ready, f"process {pid} still running after {timeout}s"
    finally:
        os.close(fd)


def test_connections_spread_over_workers_and_signals_reach_them(
        start_relay: Callable[..., RelayProcess]) -> None:
    """Two workers share the port: connections land in both; SIGHUP and SIGTERM reach both."""
    relay = start_relay(CONFIG)
    relay.wait_listening(count=2)  # the master's line and the worker's
    assert len(set(relay.urls)) == 1, relay.urls  # the worker joined the master's port
    relay.output.wait_for(r"worker 1 started")
    worker_pids = children(relay.pid)
    assert len(worker_pids) == 1
    pids = [relay.pid, *worker_pids]
    before = {pid: socket_count(pid) for pid in pids}

    clients = []
    try:
        for _ in range(60):
            c = socket.create_connection(("127.0.0.1", relay.port), timeout=5)
            c.sendall(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
            assert c.recv(12) == b"HTTP/1.1 301"
            clients.append(c)
        gained = {pid: socket_count(pid) - before[pid] for pid in pids}
        assert sum(gained.values()) >= 60
        assert all(g >= 5 for g in gained.values()), gained
    finally:
        for c in clients:
            c.close()

    mark = len(relay.output.lines)
    relay.signal(signal.SIGHUP)
    relay.output.wait_for(r"configuration reloaded .*worker 1", start=mark)
    relay.output.wait_for(r"configuration reloaded from .* groups$", start=mark)  # the master's own

    relay.signal(signal.SIGTERM)
    assert relay.wait(20) in (0, -signal.SIGTERM)
    relay.output.wait_for("wsrelay stopped, worker 1")
    relay.output.wait_for("wsrelay stopped$")
    for pid in worker_pids:
        wait_exit(pid)
