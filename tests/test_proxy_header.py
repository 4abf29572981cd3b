"""The PROXY protocol header, in memory: the parser's verdict on every shape of header (v1 and
v2, split anywhere), and the listener wrapper that reads it before the wrapped protocol's
connection is made."""

from __future__ import annotations

import socket
import struct
from typing import Any

import pytest
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport

from twisted.logger import Logger, formatEvent

from wsrelay import listeners
from wsrelay.listeners import ProxyHeaderFactory
from wsrelay.proxyheader import Header, InvalidHeader, parse

SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def v2(command: int = 1, family: int = 0x11, addresses: bytes | None = None, tlv: bytes = b"") -> bytes:
    if addresses is None:
        addresses = socket.inet_aton("203.0.113.7") + socket.inet_aton("10.0.0.1") + struct.pack("!HH", 40000, 443)
    block = addresses + tlv
    return SIG + bytes([0x20 | command, family]) + struct.pack("!H", len(block)) + block


V6 = (socket.inet_pton(socket.AF_INET6, "2001:db8::7") + socket.inet_pton(socket.AF_INET6, "2001:db8::1")
      + struct.pack("!HH", 40000, 443))

VALID = [
    (b"PROXY TCP4 203.0.113.7 10.0.0.1 40000 443\r\n", ("203.0.113.7", 40000), ("10.0.0.1", 443)),
    (b"PROXY TCP6 2001:db8::7 2001:db8::1 40000 443\r\n", ("2001:db8::7", 40000), ("2001:db8::1", 443)),
    (b"PROXY TCP4 203.0.113.7 10.0.0.1 0 65535\r\n", ("203.0.113.7", 0), ("10.0.0.1", 65535)),
    (b"PROXY UNKNOWN\r\n", None, None),
    (b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n", None, None),
    (v2(), ("203.0.113.7", 40000), ("10.0.0.1", 443)),
    (v2(family=0x21, addresses=V6), ("2001:db8::7", 40000), ("2001:db8::1", 443)),
    (v2(tlv=b"\x04\x00\x01X" + b"\x01\x00\x02h2"), ("203.0.113.7", 40000), ("10.0.0.1", 443)),  # TLVs skipped
    (v2(command=0, addresses=b""), None, None),  # LOCAL: the balancer's own health check
    (v2(command=0), None, None),  # LOCAL with addresses: ignored
    (v2(family=0x00, addresses=b""), None, None),  # UNSPEC
    (v2(family=0x31, addresses=b"\x00" * 216), None, None),  # unix stream
]


@pytest.mark.parametrize(("header", "source", "destination"), VALID)
def test_valid_headers_split_anywhere(header: bytes, source: Any, destination: Any) -> None:
    """Whatever the network's split, every prefix is 'incomplete' and the whole header is read
    to its last byte; what follows it is not part of it."""
    for cut in range(len(header)):
        assert parse(header[:cut]) is None, cut
    assert parse(header + b"GET / HTTP/1.1\r\n") == Header(source, destination, len(header))


INVALID = [
    (b"GET / HTTP/1.1\r\n", "neither v1 nor v2"),
    (b"\x16\x03\x01\x02\x00", "neither v1 nor v2"),  # a TLS ClientHello straight from a client
    (b"PROXY TCP4 203.0.113.7 10.0.0.1 40000\r\n", "is not 'PROXY TCP4|TCP6"),
    (b"PROXY TCP5 203.0.113.7 10.0.0.1 40000 443\r\n", "is not 'PROXY TCP4|TCP6"),
    (b"PROXY  TCP4 203.0.113.7 10.0.0.1 40000 443\r\n", "is not 'PROXY TCP4|TCP6"),
    (b"PROXY TCP4 203.0.113.7 10.0.0.1 40000 443 x\r\n", "is not 'PROXY TCP4|TCP6"),
    (b"PROXY TCP4 2001:db8::7 10.0.0.1 40000 443\r\n", "is not an IPv4 address"),
    (b"PROXY TCP6 203.0.113.7 2001:db8::1 40000 443\r\n", "is not an IPv6 address"),
    (b"PROXY TCP4 203.0.113.300 10.0.0.1 40000 443\r\n", "is not an IP address"),
    (b"PROXY TCP4 host.example 10.0.0.1 40000 443\r\n", "is not an IP address"),
    (b"PROXY TCP4 203.0.113.7 10.0.0.1 65536 443\r\n", "is not a port"),
    (b"PROXY TCP4 203.0.113.7 10.0.0.1 040000 443\r\n", "is not a port"),
    (b"PROXY TCP4 203.0.113.7 10.0.0.1 -1 443\r\n", "is not a port"),
    (b"PROXY TCP4 203.0.113.7 10.0.0.1 +1 443\r\n", "is not a port"),
    (b"PROXY TCP4 " + b"1" * 100, "longer than 107 bytes"),
    (SIG[:11] + b"X", "neither v1 nor v2"),
    (SIG + bytes([0x11, 0x11]) + b"\x00\x0c" + b"\x00" * 12, "version 1"),
    (SIG + bytes([0x22, 0x11]) + b"\x00\x0c" + b"\x00" * 12, "unknown command 2"),
    (v2(family=0x12), "is not TCP"),  # UDP over IPv4
    (v2(family=0x22, addresses=V6), "is not TCP"),  # UDP over IPv6
    (v2(family=0x41), "is not TCP"),
    (v2(addresses=b"\x00" * 11), "11 address bytes where its family needs 12"),
    (v2(family=0x21), "12 address bytes where its family needs 36"),
]


@pytest.mark.parametrize(("data", "reason"), INVALID)
def test_invalid_headers_are_refused_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(InvalidHeader, match=reason.replace("|", r"\|")):
        parse(data)


@pytest.fixture
def lines(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """wsrelay.listeners' log lines, as text."""
    got: list[str] = []
    monkeypatch.setattr(listeners, "log", Logger(observer=lambda event: got.append(formatEvent(event))))
    return got


class Recorder(Protocol):
    def __init__(self) -> None:
        self.received = b""
        self.peer_at_start: Any = None
        self.lost = False

    def connectionMade(self) -> None:
        self.peer_at_start = self.transport.getPeer()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = True


def connect(timeout: float = 5.0) -> tuple[MemoryReactorClock, Any, StringTransport, list[Recorder]]:
    reactor = MemoryReactorClock()
    made: list[Recorder] = []

    class Inner(Factory):
        def buildProtocol(self, addr: Any) -> Recorder:
            made.append(Recorder())
            return made[-1]

    factory = ProxyHeaderFactory(reactor, Inner(), lambda: timeout)
    balancer = IPv4Address("TCP", "10.9.9.9", 5555)
    wrapper = factory.buildProtocol(balancer)
    transport = StringTransport(peerAddress=balancer, hostAddress=IPv4Address("TCP", "10.0.0.1", 443))
    wrapper.makeConnection(transport)
    return reactor, wrapper, transport, made


def test_the_wrapped_connection_starts_after_the_header_with_the_clients_address() -> None:
    """Byte by byte: nothing reaches the wrapped protocol (not even its connectionMade) until the
    header is whole; from its first call on, its peer is the header's client."""
    _, wrapper, _, made = connect()
    for byte in b"PROXY TCP6 2001:db8::7 2001:db8::1 40000 443\r\n":
        assert not made[0].peer_at_start
        wrapper.dataReceived(bytes([byte]))
    wrapper.dataReceived(b"GET / HTTP/1.1\r\n")
    assert made[0].peer_at_start == IPv6Address("TCP", "2001:db8::7", 40000)
    assert wrapper.getHost() == IPv6Address("TCP", "2001:db8::1", 443)
    assert made[0].received == b"GET / HTTP/1.1\r\n"


def test_a_header_naming_no_addresses_leaves_the_connections_own() -> None:
    _, wrapper, transport, made = connect()
    wrapper.dataReceived(v2(command=0, addresses=b"") + b"x")
    assert made[0].peer_at_start == transport.getPeer() and made[0].received == b"x"


@pytest.mark.parametrize(("data", "reason"), [
    (b"GET / HTTP/1.1\r\n", "no PROXY protocol header"),
    (b"PROXY TCP4 203.0.113.7 10.0.0.1 65536 443\r\n", "is not a port"),
])
def test_an_invalid_header_closes_the_connection_with_a_log_line(
        data: bytes, reason: str, lines: list[str]) -> None:
    """The connection is aborted, the wrapped protocol never sees it, and one line names the peer
    (the balancer, or whoever bypassed it) and the reason."""
    _, wrapper, transport, made = connect()
    wrapper.dataReceived(data)
    wrapper.dataReceived(b"more from the same peer before the close")
    assert transport.disconnecting
    wrapper.connectionLost(None)
    assert made[0].peer_at_start is None and not made[0].lost and not made[0].received
    assert len(lines) == 1 and "10.9.9.9:5555" in lines[0] and reason in lines[0]


def test_a_header_that_never_completes_is_refused_at_the_deadline(lines: list[str]) -> None:
    reactor, wrapper, transport, made = connect(timeout=5.0)
    wrapper.dataReceived(b"PROXY TCP4 203.0")
    reactor.advance(4.9)
    assert not transport.disconnecting and not lines
    reactor.advance(0.1)
    assert transport.disconnecting
    assert len(lines) == 1 and "no complete PROXY header within 5s" in lines[0]
    assert made[0].peer_at_start is None


def test_each_connection_gets_the_deadline_in_force_when_it_is_made(lines: list[str]) -> None:
    """The factory asks for the deadline as each connection is made (a reload changes it for
    the next connections): one made under 5 s keeps 5 s after the value becomes 2 s, the next
    one gets 2 s."""
    reactor = MemoryReactorClock()
    deadline = [5.0]
    factory = ProxyHeaderFactory(reactor, Factory.forProtocol(Recorder), lambda: deadline[0])
    balancer = IPv4Address("TCP", "10.9.9.9", 5555)

    def made() -> StringTransport:
        transport = StringTransport(peerAddress=balancer, hostAddress=IPv4Address("TCP", "10.0.0.1", 443))
        factory.buildProtocol(balancer).makeConnection(transport)
        return transport

    first = made()
    deadline[0] = 2.0
    second = made()
    reactor.advance(2.0)
    assert second.disconnecting and not first.disconnecting
    reactor.advance(3.0)
    assert first.disconnecting
    assert [line.rsplit("within ", 1)[1] for line in lines] == ["2s", "5s"]
