"""workers = N and the admin listener: the master's /metrics and /status cover every worker,
each sample labelled with its worker, through sockets in a private directory; a worker that does
not answer is left out within the bounded wait and shown as down."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import time
from collections.abc import Callable
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.support import RelayProcess
from tests.test_admin import admin_url, fetch
from tests.test_workers import children, wait_exit
from wsrelay.adminworkers import TIMEOUT

CONFIG = """
[wsrelay]
listen = tcp:0:interface=127.0.0.1
workers = 2
access_log = off
[admin]
endpoint = tcp:0:interface=127.0.0.1
[route /]
redirect = 301
"""


def samples(base: str, name: str) -> dict[str, float]:
    """``name``'s samples by their worker label."""
    code, _, body = fetch(base + "/metrics")
    assert code == 200
    return {s.labels["worker"]: s.value for family in text_string_to_metric_families(body.decode())
            for s in family.samples if s.name == name}


def test_master_metrics_and_status_cover_every_worker(start_relay: Callable[..., RelayProcess]) -> None:
    """60 requests spread by the kernel over the master and its worker: /metrics has each one's
    count under its worker label, adding up to 60, and each process's own process_* figures;
    /status has the worker's document; the sockets' directory is private and removed at stop; a
    stopped worker is shown down (wsrelay_worker_up 0) within the bounded wait."""
    relay = start_relay(CONFIG)
    relay.output.wait_for("wsrelay ready$")
    base = admin_url(relay)
    (worker,) = children(relay.pid)
    argv = Path(f"/proc/{worker}/cmdline").read_bytes().split(b"\0")
    path = argv[argv.index(b"--admin-socket") + 1].decode()
    directory = os.path.dirname(path)
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    assert stat.S_ISSOCK(os.stat(path).st_mode)

    for _ in range(60):
        with socket.create_connection(("127.0.0.1", relay.port), timeout=5) as c:
            c.sendall(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
            assert c.recv(12) == b"HTTP/1.1 301"
    requests = samples(base, "wsrelay_http_requests_total")
    assert set(requests) == {"0", "1"} and sum(requests.values()) == 60, requests
    assert min(requests.values()) >= 1, requests  # the kernel spread them (5+ each in test_workers)
    assert samples(base, "wsrelay_worker_up") == {"0": 1.0, "1": 1.0}
    memory = samples(base, "process_resident_memory_bytes")
    assert set(memory) == {"0", "1"} and all(v > 0 for v in memory.values())
    status = json.loads(fetch(base + "/status")[2])
    own = status["http"]["/"]["requests"]["GET 3xx"]
    theirs = status["workers"]["1"]["http"]["/"]["requests"]["GET 3xx"]
    assert (own, theirs) == (requests["0"], requests["1"])

    os.kill(worker, signal.SIGSTOP)  # it cannot answer: left out, shown down, within the bound
    try:
        started = time.monotonic()
        assert samples(base, "wsrelay_worker_up") == {"0": 1.0, "1": 0.0}
        assert time.monotonic() - started < TIMEOUT + 2
        assert set(samples(base, "wsrelay_http_requests_total")) == {"0"}
    finally:
        os.kill(worker, signal.SIGCONT)
    assert samples(base, "wsrelay_worker_up") == {"0": 1.0, "1": 1.0}

    relay.signal(signal.SIGTERM)
    assert relay.wait(20) in (0, -signal.SIGTERM)
    wait_exit(worker)
    assert not os.path.exists(directory)
