"""Active health checks, in memory: probe bytes, pass/fail rules, rise/fall, timeouts, reload."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from wsrelay import config
from wsrelay.healthcheck import HealthChecker, passed, probe_request


def upstreams(check: str = "/healthz", extra: str = "") -> Any:
    return config.parse(f"""
[wsrelay]
listen = tcp:0
[upstream app]
servers = 127.0.0.1:9001 127.0.0.1:9002
health_check = {check}
health_interval = 5s
health_timeout = 2s
health_rise = 2
health_fall = 2
{extra}
[route /]
upstream = app
""").upstreams


class RecordingBalancer:
    def __init__(self) -> None:
        self.marks: list[tuple[str, str, bool]] = []

    def mark_health(self, group: str, server_key: str, healthy: bool) -> None:
        self.marks.append((group, server_key, healthy))


def answer(reactor: MemoryReactorClock, index: int, status_line: bytes | None) -> StringTransport:
    """Complete connection attempt ``index`` and have the server send ``status_line`` (None: refuse)."""
    host, port, factory, timeout, bind = reactor.tcpClients[index]
    if status_line is None:
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        return StringTransport()
    proto = factory.buildProtocol(IPv4Address("TCP", host, port))
    transport = StringTransport()
    proto.makeConnection(transport)
    proto.dataReceived(status_line + b"\r\nContent-Length: 0\r\n\r\n")
    return transport


def test_probe_request_bytes() -> None:
    """HTTP probes are a plain GET with Connection: close; ws: probes are an opening handshake."""
    app = upstreams()["app"]
    http = probe_request(app.health, app.servers[0])
    assert http.startswith(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:9001\r\n")
    assert b"Connection: close" in http and http.endswith(b"\r\n\r\n")
    ws = upstreams("ws:/socket")["app"]
    hs = probe_request(ws.health, ws.servers[0])
    assert hs.startswith(b"GET /socket HTTP/1.1")
    assert b"Upgrade: websocket" in hs and b"Sec-WebSocket-Version: 13" in hs and b"Sec-WebSocket-Key: " in hs


@pytest.mark.parametrize("line, http_ok, ws_ok", [
    (b"HTTP/1.1 200 OK", True, False), (b"HTTP/1.1 302 Found", True, False), (b"HTTP/1.1 404 Not Found", False, False),
    (b"HTTP/1.1 503 Busy", False, False), (b"HTTP/1.1 101 Switching Protocols", False, True), (b"garbage", False, False),
])
def test_pass_rules(line: bytes, http_ok: bool, ws_ok: bool) -> None:
    """2xx/3xx passes an HTTP check; only 101 passes a WebSocket check; garbage never passes."""
    assert passed(upstreams()["app"].health, line) is http_ok
    assert passed(upstreams("ws:/s")["app"].health, line) is ws_ok


def test_fall_then_rise() -> None:
    """health_fall failures in a row mark a server down; health_rise passes bring it back."""
    reactor, balancer = MemoryReactorClock(), RecordingBalancer()
    checker = HealthChecker(reactor, balancer)
    checker.configure(upstreams())
    assert len(reactor.tcpClients) == 2  # both servers probed at once
    answer(reactor, 0, b"HTTP/1.1 500 Oops")
    answer(reactor, 1, b"HTTP/1.1 200 OK")
    assert balancer.marks == []  # one failure is not yet fall = 2
    reactor.advance(5)
    answer(reactor, 2, None)  # refused
    answer(reactor, 3, b"HTTP/1.1 200 OK")
    assert balancer.marks == [("app", "http://127.0.0.1:9001", False)]
    reactor.advance(5)
    answer(reactor, 4, b"HTTP/1.1 200 OK")
    answer(reactor, 5, b"HTTP/1.1 200 OK")
    assert len(balancer.marks) == 1  # one pass is not yet rise = 2
    reactor.advance(5)
    answer(reactor, 6, b"HTTP/1.1 204 No Content")
    assert balancer.marks[-1] == ("app", "http://127.0.0.1:9001", True)


def test_silent_server_times_out_and_connection_is_closed() -> None:
    """A server that accepts but never answers fails the probe after health_timeout; the probe hangs up."""
    reactor, balancer = MemoryReactorClock(), RecordingBalancer()
    checker = HealthChecker(reactor, balancer)
    checker.configure(upstreams())
    transports = []
    for rnd in range(2):
        for i in range(2):
            host, port, factory, _, _ = reactor.tcpClients[rnd * 2 + i]
            proto = factory.buildProtocol(IPv4Address("TCP", host, port))
            t = StringTransport()
            proto.makeConnection(t)
            transports.append(t)
        reactor.advance(2)  # timeout
        reactor.advance(3)  # next round
    assert all(t.disconnecting for t in transports)
    assert sorted(balancer.marks) == [("app", "http://127.0.0.1:9001", False), ("app", "http://127.0.0.1:9002", False)]


def test_reload_keeps_state_and_stops_removed_probes() -> None:
    """A reload keeps probes of servers that stay, stops removed ones, starts new ones at once."""
    reactor, balancer = MemoryReactorClock(), RecordingBalancer()
    checker = HealthChecker(reactor, balancer)
    checker.configure(upstreams())
    first = checker.probes[("app", "http://127.0.0.1:9001")]
    reloaded = config.parse("""
[wsrelay]
listen = tcp:0
[upstream app]
servers = 127.0.0.1:9001 127.0.0.1:9003
health_check = /healthz
[route /]
upstream = app
""").upstreams
    before = len(reactor.tcpClients)
    checker.configure(reloaded)
    assert checker.probes[("app", "http://127.0.0.1:9001")] is first
    assert ("app", "http://127.0.0.1:9002") not in checker.probes
    assert len(reactor.tcpClients) == before + 1  # only the new server probed at once
    assert reactor.tcpClients[-1][1] == 9003
    checker.configure(config.parse("[wsrelay]\nlisten=tcp:0\n[upstream app]\nservers=127.0.0.1:9001\n"
                                   "[route /]\nupstream=app\n").upstreams)
    assert checker.probes == {}
    assert not first.loop.running
