"""A stop's drain, in memory: WebSocket pairs closed evenly over ws_drain_spread, HTTP exchanges
given drain_timeout, listening sockets closed without resetting what the kernel queued."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.internet.task import Clock

from tests.support import accept_queue, poll_until
from wsrelay.config import ConfigError, parse
from wsrelay.drain import PairCloser, close_times, stop_listening
from wsrelay.service import RelayService
from wsrelay.upgrade import CLOSE_HANDSHAKE_TIMEOUT

CONFIG = """
[wsrelay]
listen = tcp:0:interface=127.0.0.1
access_log = off
drain_timeout = {drain}
ws_drain_spread = {spread}
[upstream up]
servers = 127.0.0.1:9
[route /]
upstream = up
"""


class FakeExchange:
    """An HTTP exchange (ends by itself) or, with ``pair``, an open WebSocket pair (ends only when
    closed: its close handshake takes ``close_takes`` seconds)."""

    client_ip = None  # not counted by limit_conn

    def __init__(self, service: RelayService, clock: Clock, *, pair: bool = False, close_takes: float = 0.1) -> None:
        self.gateway = service.gateway
        self.clock = clock
        self.open_pair = pair
        self.close_takes = close_takes
        self.shutdown_at: list[float] = []
        self.ended_at: float | None = None
        self.gateway.opened(self)

    def shutdown(self) -> None:
        self.shutdown_at.append(self.clock.seconds())
        self.clock.callLater(self.close_takes, self.end)

    def end(self) -> None:
        if self.ended_at is None:
            self.ended_at = self.clock.seconds()
            self.gateway.closed(self)


def service_for(drain: str, spread: str) -> tuple[RelayService, MemoryReactorClock]:
    reactor = MemoryReactorClock()
    return RelayService(parse(CONFIG.format(drain=drain, spread=spread)), reactor), reactor


def advance_until(reactor: Clock, done: list[Any], step: float = 0.125, limit: float = 60.0) -> None:
    waited = 0.0
    while not done and waited < limit:
        reactor.advance(step)
        waited += step


def test_close_times_are_evenly_spaced_over_the_spread() -> None:
    """n pairs over S seconds: pair i at i*S/n (the first at once); S = 0: every pair at once."""
    assert close_times(4, 2.0) == [0.0, 0.5, 1.0, 1.5]
    assert close_times(1, 5.0) == [0.0]
    assert close_times(3, 0.0) == [0.0, 0.0, 0.0]
    assert close_times(0, 5.0) == []


def test_pair_closer_closes_at_spaced_times_and_skips_pairs_already_gone() -> None:
    """PairCloser with a Clock: ten pairs over 5 s are shut down 0.5 s apart; one that ended on its
    own before its turn is left alone."""
    clock = Clock()
    closed: list[tuple[int, float]] = []
    gone = {3}

    class Pair:
        def __init__(self, n: int) -> None:
            self.n = n

        def shutdown(self) -> None:
            closed.append((self.n, clock.seconds()))

    closer = PairCloser(clock, 5.0, lambda pair: pair.n not in gone)
    assert closer.start([Pair(n) for n in range(10)]) == 10
    clock.pump([0.125] * 60)
    assert closed == [(n, pytest.approx(n * 0.5)) for n in range(10) if n != 3]


def test_stop_spreads_pair_closes_and_lets_http_finish() -> None:
    """A stop with 8 pairs, ws_drain_spread = 4s, drain_timeout = 10s: the pairs are closed 0.5 s
    apart, the HTTP exchanges are not cut and finish on their own (the last at 6 s), and the stop
    completes once everything has ended, not at the drain deadline."""
    service, reactor = service_for("10s", "4s")
    pairs = [FakeExchange(service, reactor, pair=True) for _ in range(8)]
    http = [FakeExchange(service, reactor) for _ in range(3)]
    for i, exchange in enumerate(http):
        reactor.callLater(2.0 * (i + 1), exchange.end)  # at 2, 4 and 6 s
    stopped: list[object] = []
    service.stopService().addBoth(stopped.append)
    assert service.draining and service.gateway.draining
    assert service.connections.limit == 0  # lifted: the listeners' queued connections are accepted
    advance_until(reactor, stopped)
    assert stopped == [None]
    assert sorted(p.shutdown_at[0] for p in pairs) == pytest.approx([i * 0.5 for i in range(8)])
    assert all(len(p.shutdown_at) == 1 for p in pairs)  # closed once, not again at the end
    assert [h.shutdown_at for h in http] == [[], [], []]
    assert reactor.seconds() == pytest.approx(6.0, abs=0.06)


def test_http_exchanges_are_cut_at_drain_timeout_while_pairs_go_on_closing() -> None:
    """drain_timeout = 2s, ws_drain_spread = 6s: an HTTP exchange still running at 2 s is ended
    then; the pairs' closes carry on to 4.5 s (4 pairs); a pair that never finishes its close
    handshake is ended at the last resort, max(2, 6) + CLOSE_HANDSHAKE_TIMEOUT."""
    service, reactor = service_for("2s", "6s")
    pairs = [FakeExchange(service, reactor, pair=True) for _ in range(3)]
    stuck = FakeExchange(service, reactor, pair=True, close_takes=1000)
    slow_http = FakeExchange(service, reactor, close_takes=0)
    stopped: list[object] = []
    service.stopService().addBoth(stopped.append)
    advance_until(reactor, stopped)
    assert stopped == [None]
    assert slow_http.shutdown_at == [pytest.approx(2.0, abs=0.06)]
    assert sorted(p.shutdown_at[0] for p in [*pairs, stuck]) == pytest.approx([0.0, 1.5, 3.0, 4.5])
    assert stuck.shutdown_at[1] == pytest.approx(6.0 + CLOSE_HANDSHAKE_TIMEOUT, abs=0.06)


def test_stop_with_no_spread_closes_every_pair_at_once() -> None:
    """ws_drain_spread = 0: every pair is closed in the first instant of the stop."""
    service, reactor = service_for("10s", "0")
    pairs = [FakeExchange(service, reactor, pair=True) for _ in range(5)]
    stopped: list[object] = []
    service.stopService().addBoth(stopped.append)
    assert [p.shutdown_at for p in pairs] == [[0.0]] * 5
    advance_until(reactor, stopped)
    assert stopped == [None] and reactor.seconds() == pytest.approx(0.1, abs=0.06)


@pytest.mark.parametrize("value, message", [("-1s", "is not a duration"), ("2h", "longer than an hour"),
                                            ("soon", "is not a duration")])
def test_ws_drain_spread_is_validated(value: str, message: str) -> None:
    """A bad ws_drain_spread stops start-up with a message naming [wsrelay] ws_drain_spread."""
    with pytest.raises(ConfigError) as e:
        parse(CONFIG.format(drain="10s", spread=value))
    assert "[wsrelay] ws_drain_spread" in str(e.value) and message in str(e.value)


def test_reuse_port_default_and_off() -> None:
    """reuse_port is on unless the file says off."""
    assert parse(CONFIG.format(drain="1s", spread="1s")).reuse_port is True
    text = CONFIG.format(drain="1s", spread="1s").replace("access_log = off", "access_log = off\nreuse_port = off")
    assert parse(text).reuse_port is False


@contextmanager
def queued(reactor: Any, port: Any, count: int, made: list[Protocol]) -> Iterator[list[socket.socket]]:
    """``count`` clients connected to ``port`` (queued by the kernel until the reactor accepts
    them); afterwards every socket on both sides is closed and the reactor let go."""
    number = port.getHost().port
    clients = [socket.create_connection(("127.0.0.1", number), timeout=5) for _ in range(count)]
    # Queued, not just connected: the kernel may still be handling a client's last ACK.
    assert poll_until(lambda: accept_queue(number) == count, timeout=5), accept_queue(number)
    try:
        yield clients
    finally:
        for c in clients:
            c.close()
        for p in made:
            p.transport.abortConnection()
        reactor.iterate(0)
        reactor.disconnectAll()


def test_stop_listening_accepts_what_the_kernel_queued() -> None:
    """Connections whose handshake the kernel completed but the process never accepted are accepted
    and handed to the factory before the socket closes; none is reset.  (Closing the socket
    without that resets every one of them: the trap of SO_REUSEPORT restarts.)"""
    from twisted.internet.epollreactor import EPollReactor

    from wsrelay.listeners import open_listener

    reactor = EPollReactor()  # not running: nothing is accepted but by stop_listening
    made: list[Protocol] = []

    class Hello(Protocol):
        def connectionMade(self) -> None:
            made.append(self)
            self.transport.write(b"hello")

    port = open_listener(reactor, "tcp:0:interface=127.0.0.1", Factory.forProtocol(Hello), reuse_port=True)
    with queued(reactor, port, 5, made) as clients:
        stop_listening(port)
        assert len(made) == 5
        for _ in range(20):  # write what connectionMade queued
            reactor.iterate(0)
        for c in clients:
            assert c.recv(5) == b"hello"


def test_stop_listening_closes_the_socket_before_twisteds_cleanup() -> None:
    """The socket is closed the instant its queue is seen empty: by the time Twisted's port
    cleanup starts (it logs first, then closes), a new connection is already refused, where
    before it would have been queued on the closing socket and reset with it."""
    from twisted.internet.epollreactor import EPollReactor

    from wsrelay.listeners import open_listener

    reactor = EPollReactor()
    port = open_listener(reactor, "tcp:0:interface=127.0.0.1", Factory.forProtocol(Protocol), reuse_port=True)
    number = port.getHost().port
    outcomes: list[str] = []
    cleanup = port.connectionLost

    def connection_lost(reason: Any) -> None:
        try:
            socket.create_connection(("127.0.0.1", number), timeout=5).close()
            outcomes.append("queued")
        except ConnectionRefusedError:
            outcomes.append("refused")
        cleanup(reason)

    port.connectionLost = connection_lost
    stop_listening(port)
    assert outcomes == ["refused"]
    assert not port.connected


def test_a_listener_a_reload_removes_serves_what_the_kernel_queued_on_it() -> None:
    """A reload that removes a listener stops it as a stop does: the connections queued on it
    are accepted and answered by the site they came to, not reset with the socket."""
    from twisted.internet.epollreactor import EPollReactor

    extra = "[listener extra]\nendpoint = tcp:0:interface=127.0.0.1\n"
    base = CONFIG.format(drain="1s", spread="1s").replace("access_log = off",
                                                          "access_log = off\nmemory_trim_interval = off")
    reactor = EPollReactor()  # not running: only the reload accepts from the removed socket
    service = RelayService(parse(base + extra), reactor, loader=lambda path: parse(base))
    service.startService()
    port = service.ports[("extra", "tcp:0:interface=127.0.0.1")]
    clients = [socket.create_connection(("127.0.0.1", port.getHost().port), timeout=5) for _ in range(3)]
    assert poll_until(lambda: accept_queue(port.getHost().port) == 3, timeout=5)
    try:
        for c in clients:
            c.sendall(b"GET / HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n")
        assert service.reload()
        assert list(service.ports) == [("listen 1", "tcp:0:interface=127.0.0.1")]
        for c in clients:  # each request answered (502: nothing listens at the upstream's port 9)
            c.settimeout(0)
            answer = b""
            for _ in range(2000):
                reactor.iterate(0.005)
                try:
                    chunk = c.recv(65536)
                except BlockingIOError:
                    continue
                if not chunk:
                    break
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 502 "), answer[:100]
        assert not port.connected
    finally:
        for c in clients:
            c.close()
        for p in service.ports.values():
            stop_listening(p)
        reactor.disconnectAll()


def test_a_reload_goes_on_when_stopping_a_removed_listener_fails() -> None:
    """Stopping a port runs its factory's cleanup at once; should that raise, the failure is
    logged and the rest of the reload applies (here the new max_connections)."""
    from twisted.internet.epollreactor import EPollReactor
    from twisted.logger import formatEvent, globalLogPublisher

    extra = "[listener extra]\nendpoint = tcp:0:interface=127.0.0.1\n"
    base = CONFIG.format(drain="1s", spread="1s").replace("access_log = off",
                                                          "access_log = off\nmemory_trim_interval = off")
    reactor = EPollReactor()
    def with_cap(cap: int) -> str:
        return base.replace("access_log = off", f"access_log = off\nmax_connections = {cap}")

    service = RelayService(parse(with_cap(100) + extra), reactor, loader=lambda path: parse(with_cap(50)))
    service.startService()
    key = ("extra", "tcp:0:interface=127.0.0.1")
    port = service.ports[key]

    def broken() -> None:
        raise RuntimeError("cleanup failed")

    service.sites[key].stopFactory = broken
    logged: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_failure") is not None:
            logged.append(f"{formatEvent(event)}: {event['log_failure'].getErrorMessage()}")

    globalLogPublisher.addObserver(observe)
    try:
        assert service.reload()
        assert service.connections.limit == 50 and not port.connected
        assert logged == ["stopping listener extra: cleanup failed"]
    finally:
        globalLogPublisher.removeObserver(observe)
        for p in service.ports.values():
            stop_listening(p)
        reactor.disconnectAll()


@pytest.mark.parametrize("how", ["stop", "reload", "neither"])
def test_a_listener_stopped_at_max_connections_accepts_what_the_kernel_queued(how: str) -> None:
    """At the cap the listener is paused and newcomers wait in the backlog.  A stop lifts the cap
    (as RelayService.stopService does) before the socket closes, so they are accepted, not reset.
    A reload removing one listener leaves the cap in force for the others and releases that port
    from it (as RelayService.reload does): its queue is accepted too, and those connections
    count.  Neither: nothing can be accepted, and stop_listening gives up after one round that
    accepts none instead of trying its 10,000 rounds."""
    from twisted.internet.epollreactor import EPollReactor

    from wsrelay.capacity import ConnectionCap
    from wsrelay.listeners import open_listener

    reactor = EPollReactor()
    made: list[Protocol] = []

    class Hello(Protocol):
        def connectionMade(self) -> None:
            made.append(self)

    port = open_listener(reactor, "tcp:0:interface=127.0.0.1", Factory.forProtocol(Hello), reuse_port=True)
    cap = ConnectionCap(reactor, limit=1)
    cap.watch(port)
    rounds = []
    read = port.doRead

    def counted_read() -> None:
        rounds.append(1)
        read()

    port.doRead = counted_read
    with queued(reactor, port, 4, made):
        port.doRead()  # the reactor's turn: one accepted, then the cap
        assert len(made) == 1 and cap.full
        if how == "stop":
            cap.set_limit(0)
        elif how == "reload":
            cap.release(port)
        stop_listening(port)
        assert not port.connected
        if how == "stop":
            assert len(made) == 4
        elif how == "reload":
            assert len(made) == 4 and cap.open == 4 and cap.limit == 1
        else:
            assert len(made) == 1 and len(rounds) == 2


def test_the_cap_resuming_during_a_stop_does_not_read_the_closing_socket_again() -> None:
    """While stop_listening accepts a queue, the cap may resume its listeners (here it is lifted
    by the second connection); the port being stopped is not among them, so it is closed while
    unregistered from the event loop (at the parent commit: EBADF, and the reactor's table of
    readers left holding the closed descriptor)."""
    from twisted.internet.epollreactor import EPollReactor

    from wsrelay.capacity import ConnectionCap
    from wsrelay.listeners import open_listener

    reactor = EPollReactor()
    cap = ConnectionCap(reactor, limit=1)
    made: list[Protocol] = []

    class Lifting(Protocol):
        def connectionMade(self) -> None:
            made.append(self)
            if len(made) == 2:
                cap.set_limit(0)  # resumes every listener not stopped or stopping

    port = open_listener(reactor, "tcp:0:interface=127.0.0.1", Factory.forProtocol(Lifting), reuse_port=True)
    cap.watch(port)
    with queued(reactor, port, 3, made):
        port.doRead()
        assert len(made) == 1 and cap.full
        cap.release(port)
        stop_listening(port)
        assert len(made) == 3 and not port.connected
        assert port not in reactor.getReaders()


# -- pairs and connections in a drain, with the in-memory harness of test_websocket -------------


@pytest.mark.parametrize("mode", ["relay", "tunnel"])
def test_a_connection_accepted_at_the_close_gets_its_upgrade_then_1001(mode: str) -> None:
    """A connection with no request yet when its listener closes (accepted from the kernel's
    queue) stays open and is waited for; its WebSocket upgrade is answered (101) and the pair is
    closed with 1001 as soon as it opens, so the client goes to the process taking over."""
    import struct

    from tests.test_websocket import Harness, RawClient, RawUpstream, handshake, status

    h = Harness("" if mode == "relay" else "ws_mode = tunnel")
    client = RawClient()
    h.connect_client(client)
    h.gateway.draining = True
    h.site.stopFactory()  # what closing the listening socket does
    assert len(h.gateway.live) == 1 and not client.lost  # the connection itself, waited for
    client.transport.write(handshake())
    h.settle()
    if mode == "relay":
        h.accept_upstream()
    else:
        h.accept_raw(RawUpstream())
    assert status(client) == 101
    h.advance(0.2)
    assert client.frames[-1][1:] == (8, struct.pack("!H", 1001) + b"server shutting down")


def test_only_open_pairs_are_spread_and_idle_keepalive_connections_close_at_once() -> None:
    """A handshake still waiting for its upstream is not an open pair (it finishes like an HTTP
    exchange); an open pair is.  A connection idle after a request is closed when the listener
    closes, not waited for."""
    from tests.test_websocket import Harness, handshake, open_pair

    h = Harness()
    open_pair(h)
    waiting = h.raw_client(handshake())  # no upstream answer yet
    assert len(h.gateway.live) == 2 and len(h.gateway.open_pairs()) == 1
    idle = h.raw_client(b"GET /x HTTP/1.1\r\nHost: relay.example\r\n\r\n")
    h.accept_raw(_Answer())
    assert idle.received.startswith(b"HTTP/1.1 200") and not idle.lost
    h.gateway.draining = True
    h.site.stopFactory()
    h.settle()
    assert idle.lost and not waiting.lost
    assert len(h.gateway.live) == 3  # the pair, the waiting handshake and its connection (until it is taken over)


class _Answer(Protocol):
    """An HTTP upstream that answers one request with 200 and an empty body."""

    def dataReceived(self, data: bytes) -> None:
        if b"\r\n\r\n" in data:
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
