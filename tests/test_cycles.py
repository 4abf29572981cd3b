"""Reference cycles: what a relayed pair's or an HTTP request's life leaves for CPython's cyclic
garbage collector, in memory (``bench/cycles.py`` prints the same by type, with the cycles).

An object in a reference cycle is not freed when its last outside reference goes: it waits for a
collection, and every collection walks every object the process holds (in a reconnect storm of
9,500 pairs, 55 % of wsrelay's CPU was that walk, ``bench/README.rst``).  So opening, relaying on
and closing a pair should leave (almost) nothing to it.

The transports here behave as Twisted's TCP ones do once a connection is lost (``tcp.Connection``
stops its producer and lets go of its protocol), so the cycles counted are the ones a socket would
leave, not iosim's; the peers are small protocols that keep nothing.
"""

from __future__ import annotations

import base64
import gc
import hashlib
import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.test import iosim

from tests.test_security import UPSTREAM_OK, HTTPUpstream, get
from tests.test_websocket import GUID, Harness, frame, handshake, header_lines

#: Objects of cyclic garbage one pair may leave from its handshake to its close: Twisted's own,
#: the upstream connection's connector cycle (:class:`Connector`) and what it holds (the transport,
#: its addresses, the endpoint's factory and Deferred, wsrelay's factory of that one connection),
#: 11-12 here.  Measured on CPython 3.11, Twisted 26.10, autobahn 26.10 before the cycles of
#: wsrelay's own were broken: 78 (relay), 65 (tunnel).
MOST_PER_PAIR = 14
#: The same for an HTTP request on its own client connection, the upstream connection pooled
#: (measured: 0; 28 before), and for a handshake whose upstream cannot be reached (0; 15 before).
MOST_PER_REQUEST = 2
#: The only objects of wsrelay's own that may be cyclic garbage: the factory of one upstream
#: connection, which the reactor's connector keeps (it holds nothing of the pair).
CONNECTION_FACTORIES = ("wsrelay.websocket.legs._UpstreamFactory", "wsrelay.tunnel._UpstreamSideFactory",
                        "wsrelay.http.upstream.UpstreamFactory")


class SocketTransport(iosim.FakeTransport):
    """iosim's transport, ending as ``tcp.Connection.connectionLost`` does: the producer stopped
    and dropped, the protocol let go before it is told (bytes for a lost connection are dropped)."""

    def reportDisconnect(self) -> None:
        producer, self.producer = self.producer, None
        if producer is not None:
            producer.stopProducing()
        protocol, self.protocol = self.protocol, None
        if protocol is not None:
            protocol.connectionLost(Failure(self.disconnectReason))

    def bufferReceived(self, buf: bytes) -> None:
        if self.protocol is not None:
            super().bufferReceived(buf)


class Peer(Protocol):
    """A client or an upstream that keeps only the bytes it got."""

    def __init__(self) -> None:
        self.received = b""

    def dataReceived(self, data: bytes) -> None:
        self.received += data


class Upstream(Peer):
    """An upstream that answers the handshake with a 101 and keeps the rest."""

    def dataReceived(self, data: bytes) -> None:
        if not self.received and b"\r\n\r\n" in data:
            head, _, data = data.partition(b"\r\n\r\n")
            key = header_lines(head, b"sec-websocket-key")[0]
            accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
            self.transport.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                                 b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
            self.received = b"-"
        self.received += data


class Connector:
    """Stands in for ``tcp.Connector``, which stays in a reference cycle with its transport
    (``Connector.transport``, ``Client.connector``) after the connection ends, so that the
    factory it holds, and whatever that factory refers to, waits for the collector too."""

    def __init__(self, factory: Any, transport: Any) -> None:
        self.factory = factory
        self.transport = transport
        transport.connector = self


class SocketHarness(Harness):
    """:class:`tests.test_websocket.Harness` with :class:`SocketTransport` on both ends of every
    connection and a :class:`Connector` for each upstream connection; the pumps do not keep the
    protocols they connected (a socket keeps only its transport's current protocol);
    :meth:`forget` drops the harness's own records (ended pumps, connection attempts)."""

    transport_type = SocketTransport

    def connect_client(self, proto: Protocol) -> iosim.FakeTransport:
        server = self.site.buildProtocol(IPv4Address("TCP", "10.1.2.3", 40000))
        s_io = SocketTransport(server, True, IPv4Address("TCP", "127.0.0.1", 8080),
                               IPv4Address("TCP", "10.1.2.3", 40000))
        c_io = SocketTransport(proto, False, IPv4Address("TCP", "10.1.2.3", 40000),
                               IPv4Address("TCP", "127.0.0.1", 8080))
        self.pumps.append(iosim.connect(server, s_io, proto, c_io, greet=False, clock=self.clock))
        self.pumps[-1].client = self.pumps[-1].server = None
        return c_io

    def accept_raw(self, upstream: Protocol, index: int = -1) -> iosim.FakeTransport:
        host, port, wrapping, _, _ = self.clock.tcpClients[index]
        relay_side = wrapping.buildProtocol(IPv4Address("TCP", host, port))
        u_io = SocketTransport(upstream, True)
        r_io = SocketTransport(relay_side, False)
        Connector(wrapping, r_io)
        self.pumps.append(iosim.connect(upstream, u_io, relay_side, r_io, greet=False, clock=self.clock))
        self.pumps[-1].client = self.pumps[-1].server = None
        self.settle()
        return r_io

    def forget(self) -> None:
        """Drop what the harness keeps of ended connections (a reactor keeps nothing of them)."""
        self.settle()
        self.pumps = [p for p in self.pumps if not (p.clientIO.disconnected and p.serverIO.disconnected)]
        for kept in (self.upstreams, self.clock.tcpClients, self.clock.connectors, self.log):
            kept.clear()


def open_pair(h: SocketHarness) -> tuple[Peer, Peer]:
    """A relayed pair, open, one message each way."""
    client = Peer()
    h.connect_client(client)
    client.transport.write(handshake())
    h.settle()
    upstream = Upstream()
    h.accept_raw(upstream)
    assert client.received.startswith(b"HTTP/1.1 101"), client.received[:200]
    client.transport.write(frame(2, b"hello"))
    upstream.transport.write(frame(2, b"hello", mask=False))
    h.settle()
    return client, upstream


def close_pair(h: SocketHarness, client: Peer, upstream: Peer, clean: bool) -> None:
    """``clean``: the client's close 1000, answered by the upstream, which then closes TCP;
    otherwise the client's connection is simply gone (as in a reconnect storm) and the upstream
    answers wsrelay's 1001."""
    if clean:
        client.transport.write(frame(8, b"\x03\xe8"))
    else:
        client.transport.loseConnection()
    h.settle()
    upstream.transport.write(frame(8, b"\x03\xe8", mask=False))
    upstream.transport.loseConnection()
    h.settle()
    client.transport.loseConnection()
    h.settle()


def pairs(h: SocketHarness, n: int, clean: bool = True) -> None:
    """``n`` relayed pairs, one after the other, opened and closed."""
    for _ in range(n):
        close_pair(h, *open_pair(h), clean=clean)
    h.forget()
    assert not h.gateway.live


def hang_up(h: SocketHarness, client: Peer, status: bytes) -> None:
    """``client`` got its answer (starting with ``status``) and closes its connection."""
    assert client.received.startswith(status), client.received[:200]
    client.transport.loseConnection()
    h.settle()


def refusals(h: SocketHarness, n: int, answer: bytes | None) -> None:
    """``n`` handshakes refused: by the upstream with ``answer``, or (None) because no server of
    the group takes the connection (502, after the retry)."""
    for _ in range(n):
        client = Peer()
        h.connect_client(client)
        client.transport.write(handshake())
        h.settle()
        if answer is None:
            while not client.received:
                h.refuse_upstream()
        else:
            upstream = Peer()
            h.accept_raw(upstream)
            upstream.transport.write(answer)
            upstream.transport.loseConnection()
            h.settle()
        hang_up(h, client, b"HTTP/1.1 ")
    h.forget()
    assert not h.gateway.live


#: An upstream's answer that ends its connection (no keep-alive).
CLOSING = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"


def requests(h: SocketHarness, n: int, answer: bytes = UPSTREAM_OK) -> None:
    """``n`` GETs, each on its own client connection (the upstream connection is pooled, unless
    ``answer`` closes it)."""
    for _ in range(n):
        client = Peer()
        h.connect_client(client)
        before = h.attempts()
        client.transport.write(get(b"/x"))
        h.clock.advance(0)
        h.settle()
        if h.attempts() > before:
            upstream = HTTPUpstream(answer)
            h.accept_raw(upstream)
            if answer is CLOSING:
                upstream.transport.loseConnection()
                h.settle()
        hang_up(h, client, b"HTTP/1.1 200")
    h.forget()
    assert not h.gateway.live


@contextmanager
def collector_off() -> Iterator[None]:
    """The collector disabled, as it was restored after."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def cyclic_garbage(run: Callable[[], object]) -> list[Any]:
    """The objects that only the cyclic collector frees after ``run()``, collector off meanwhile.

    Run it in a process of its own (:func:`measured`): in a longer one, objects of earlier work
    can become garbage meanwhile (Twisted's buffer of log events, for one, lets old events and
    what they hold go as new ones come) and would be counted."""
    with collector_off():
        gc.collect()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            run()
            gc.collect()
            found = list(gc.garbage)
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
    return found


def by_type(objects: list[Any]) -> Counter[str]:
    return Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in objects)


def own(garbage: list[Any]) -> Counter[str]:
    """wsrelay's objects among ``garbage``, by type, but the connections' factories."""
    kinds = by_type(garbage)
    return Counter({k: n for k, n in kinds.items() if k.startswith("wsrelay.") and k not in CONNECTION_FACTORIES})


#: What the tests measure: route settings, what one unit is, the most objects per unit.
SCENARIOS: dict[str, tuple[str, Callable[[SocketHarness, int], object], int]] = {
    "relay-closed": ("", lambda h, n: pairs(h, n, clean=True), MOST_PER_PAIR),
    "relay-dropped": ("", lambda h, n: pairs(h, n, clean=False), MOST_PER_PAIR),
    "tunnel-closed": ("ws_mode = tunnel", lambda h, n: pairs(h, n, clean=True), MOST_PER_PAIR),
    "tunnel-dropped": ("ws_mode = tunnel", lambda h, n: pairs(h, n, clean=False), MOST_PER_PAIR),
    "unreachable": ("", lambda h, n: refusals(h, n, None), MOST_PER_REQUEST),
    "http-pooled": ("", lambda h, n: requests(h, n, UPSTREAM_OK), MOST_PER_REQUEST),
    "http-closing": ("", lambda h, n: requests(h, n, CLOSING), MOST_PER_PAIR),
}
UNITS = 20


def measure_all() -> dict[str, dict[str, Any]]:
    """Every scenario's cyclic garbage (after 5 units of warm-up: one-time allocations)."""
    out = {}
    for name, (settings, run, _) in SCENARIOS.items():
        h = SocketHarness(settings)
        run(h, 5)
        garbage = cyclic_garbage(lambda: run(h, UNITS))  # noqa: B023 (called at once)
        out[name] = {"total": len(garbage), "own": dict(own(garbage)), "kinds": by_type(garbage).most_common(25)}
        del garbage[:]
    return out


@pytest.fixture(scope="module")
def measured() -> dict[str, dict[str, Any]]:
    """:func:`measure_all` in a fresh interpreter (see :func:`cyclic_garbage`)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = "import json; from tests.test_cycles import measure_all; print(json.dumps(measure_all()))"
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])  # type: ignore[no-any-return]


def check(measured: dict[str, dict[str, Any]], name: str) -> None:
    """No object of wsrelay's own (but a connection's factory) among the scenario's garbage, and
    at most its bound of objects in all per unit."""
    found = measured[name]
    assert not found["own"], found["own"]
    assert found["total"] <= SCENARIOS[name][2] * UNITS, found["kinds"]


@pytest.mark.parametrize("name", ["relay-closed", "relay-dropped", "tunnel-closed", "tunnel-dropped"])
def test_a_pair_from_handshake_to_close_leaves_no_cyclic_garbage(measured: dict[str, Any], name: str) -> None:
    """Opening a pair (twisted.web, the Autobahn handshakes, the upstream connection), relaying a
    message each way and closing it (cleanly, or the client simply gone), relay or tunnel, leaves
    nothing of wsrelay's to the cyclic collector, and only the upstream connection's connector
    cycle."""
    check(measured, name)


def test_an_unreachable_upstream_leaves_no_cyclic_garbage(measured: dict[str, Any]) -> None:
    """A handshake whose upstream connection is refused on both servers (a 502) leaves nothing
    to the cyclic collector."""
    check(measured, "unreachable")


@pytest.mark.parametrize("name", ["http-pooled", "http-closing"])
def test_an_http_request_leaves_no_cyclic_garbage(measured: dict[str, Any], name: str) -> None:
    """A GET on its own client connection leaves nothing of wsrelay's to the cyclic collector:
    nothing at all over a pooled upstream connection, only that connection's connector cycle
    over one the upstream closes."""
    check(measured, name)
