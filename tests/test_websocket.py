"""The WebSocket gateway in memory: twisted.web site, Autobahn legs, iosim pipes and a fake clock.

A client (raw bytes or Autobahn) talks to wsrelay's real site; wsrelay's upstream connection
attempts land in a MemoryReactorClock and are completed (or refused) by the test with an Autobahn
upstream server.  Time moves only with ``clock.advance``.
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct
from typing import Any

import pytest
from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
    WebSocketServerFactory,
    WebSocketServerProtocol,
)
from autobahn.websocket.compress import (
    PerMessageDeflateOffer,
    PerMessageDeflateResponse,
    PerMessageDeflateResponseAccept,
)
from autobahn.websocket.types import ConnectionDeny
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.test import iosim

from wsrelay import config
from wsrelay.gateway import Gateway
from wsrelay.site import RelaySite

CONFIG = """
[wsrelay]
listen = tcp:0:interface=127.0.0.1
access_log = -  ; written to Harness.log, see below
[upstream up]
servers = 127.0.0.1:9001 127.0.0.1:9002
{upstream_extra}
[route /]
upstream = up
{extra}
"""

#: Both WebSocket modes, for behaviour they share (the handshake, passive health, retries).
MODES = pytest.mark.parametrize("mode", ["ws_mode = relay", "ws_mode = tunnel"])

#: Route settings of the tests unless a test gives its own.
ROUTE_DEFAULTS = {"retries": "1", "ws_ping_interval": "off", "ws_handshake_timeout": "10s"}


def route_settings(extra: str) -> str:
    settings = dict(ROUTE_DEFAULTS)
    for line in extra.splitlines():
        if line.strip():
            key, value = line.split("=", 1)
            settings[key.strip()] = value.strip()
    return "\n".join(f"{k} = {v}" for k, v in settings.items())

KEY = base64.b64encode(b"0123456789abcdef")
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def handshake(path: bytes = b"/chat?a=1&b=%20", extra: list[bytes] | None = None, *,
              connection: bytes = b"Upgrade", version: bytes = b"13", key: bytes | None = KEY) -> bytes:
    lines = [b"GET " + path + b" HTTP/1.1", b"Host: relay.example", b"Upgrade: websocket",
             b"Connection: " + connection, b"Sec-WebSocket-Version: " + version]
    if key is not None:
        lines.append(b"Sec-WebSocket-Key: " + key)
    lines += extra or []
    return b"\r\n".join(lines) + b"\r\n\r\n"


def frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bool = True) -> bytes:
    """One frame as a client sends it (masked) or a server does (unmasked)."""
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    length = bytes([n]) if n < 126 else (bytes([126]) + struct.pack("!H", n) if n < 65536
                                         else bytes([127]) + struct.pack("!Q", n))
    if not mask:
        return head + length + payload
    key = os.urandom(4)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return head + bytes([length[0] | 0x80]) + length[1:] + key + masked


def parse_frames(data: bytes) -> list[tuple[bool, int, bytes]]:
    """Unmasked frames as ``(fin, opcode, payload)``."""
    frames = []
    while data:
        fin, opcode, n = bool(data[0] & 0x80), data[0] & 0x0F, data[1] & 0x7F
        pos = 2
        if n == 126:
            n, pos = struct.unpack("!H", data[2:4])[0], 4
        elif n == 127:
            n, pos = struct.unpack("!Q", data[2:10])[0], 10
        frames.append((fin, opcode, data[pos:pos + n]))
        data = data[pos + n:]
    return frames


class RawClient(Protocol):
    """A client that writes what the test says and keeps what it receives."""

    def __init__(self) -> None:
        self.received = b""
        self.lost = False

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.lost = True

    @property
    def head(self) -> bytes:
        return self.received.partition(b"\r\n\r\n")[0]

    @property
    def frames(self) -> list[tuple[bool, int, bytes]]:
        return parse_frames(self.received.partition(b"\r\n\r\n")[2])


class RawUpstream(Protocol):
    """An upstream that answers the handshake with ``answer`` (a 101 by default) and keeps the rest."""

    def __init__(self, answer: bytes | None = None, after: bytes = b"") -> None:
        self.answer = answer
        self.after = after
        self.request = b""
        self.received = b""
        self.lost = False

    def dataReceived(self, data: bytes) -> None:
        if not self.request:
            head, sep, rest = data.partition(b"\r\n\r\n")
            self.request = head
            key = header_lines(head, b"sec-websocket-key")[0]
            accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
            answer = self.answer or (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                                     b"Connection: Upgrade, Keep-Alive\r\nKeep-Alive: timeout=5\r\n"
                                     b"Sec-WebSocket-Accept: " + accept + b"\r\nSec-WebSocket-Protocol: chat\r\n"
                                     b"X-Upstream: yes\r\n\r\n")
            self.transport.write(answer + self.after)
            data = rest
        self.received += data

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.lost = True


class ClosingUpstream(Protocol):
    """An upstream that closes its connection when the handshake arrives, without an answer."""

    def dataReceived(self, data: bytes) -> None:
        self.transport.loseConnection()


class PartialUpstream(Protocol):
    """An upstream that sends the start of an answer to the handshake, then closes."""

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgr")
        self.transport.loseConnection()


class Recorder:
    """Mixin recording an Autobahn peer's events."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[Any, ...]] = []
        self.opened = False

    def onOpen(self) -> None:
        self.opened = True

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.events.append(("message", payload, isBinary))

    def onMessageFrameBegin(self, length: int) -> None:
        super().onMessageFrameBegin(length)  # type: ignore[misc]
        self.events.append(("frame",))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.events.append(("close", wasClean, code, reason))

    def messages(self) -> list[tuple[bytes, bool]]:
        return [(e[1], e[2]) for e in self.events if e[0] == "message"]

    def close(self) -> tuple[Any, ...] | None:
        return next((e for e in self.events if e[0] == "close"), None)


class Upstream(Recorder, WebSocketServerProtocol):
    """The upstream server: echoes unless ``behaviour`` says otherwise."""

    echo = True
    protocol_choice: str | None = None
    deny: int | None = None
    greeting: list[tuple[bytes, bool]] = []

    def onConnect(self, request: Any) -> Any:
        self.request = request
        if self.deny:
            raise ConnectionDeny(self.deny, "no")
        return self.protocol_choice

    def onOpen(self) -> None:
        super().onOpen()
        for payload, binary in self.greeting:
            self.sendMessage(payload, binary)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        super().onMessage(payload, isBinary)
        if self.echo:
            self.sendMessage(payload, isBinary)


class Client(Recorder, WebSocketClientProtocol):
    pass


def upstream_factory(clock: MemoryReactorClock, **attrs: Any) -> WebSocketServerFactory:
    factory = WebSocketServerFactory(reactor=clock, server=None)
    factory.protocol = type("TestUpstream", (Upstream,), attrs)
    factory.setProtocolOptions(failByDrop=False, echoCloseCodeReason=True, webStatus=False, allowNullOrigin=True)
    return factory


class Harness:
    """wsrelay's site and gateway on a fake clock, with in-memory connections."""

    #: The class of wsrelay's in-memory transports toward the client and toward raw upstreams.
    transport_type: type[iosim.FakeTransport] = iosim.FakeTransport

    def __init__(self, extra: str = "", upstream_extra: str = "") -> None:
        self.clock = MemoryReactorClock()
        self.config = config.parse(CONFIG.format(extra=route_settings(extra), upstream_extra=upstream_extra))
        self.gateway = Gateway(self.clock, self.config)
        self.site = RelaySite(self.gateway, self.config.listeners[0])
        self.pumps: list[iosim.IOPump] = []
        self.log: list[str] = []
        self.gateway.access_log.write = self.log.append  # type: ignore[method-assign]
        self.upstreams: list[Upstream] = []

    def connect_client(self, proto: Protocol) -> iosim.FakeTransport:
        """Connect ``proto`` to wsrelay's site; returns the client's transport."""
        server = self.site.buildProtocol(IPv4Address("TCP", "10.1.2.3", 40000))
        s_io = self.transport_type(server, True, IPv4Address("TCP", "127.0.0.1", 8080),
                                   IPv4Address("TCP", "10.1.2.3", 40000))
        c_io = iosim.FakeTransport(proto, False, IPv4Address("TCP", "10.1.2.3", 40000),
                                   IPv4Address("TCP", "127.0.0.1", 8080))
        self.server_io = s_io
        self.pumps.append(iosim.connect(server, s_io, proto, c_io, greet=False, clock=self.clock))
        return c_io

    def raw_client(self, data: bytes) -> RawClient:
        client = RawClient()
        self.connect_client(client)
        client.transport.write(data)
        self.settle()
        return client

    def autobahn_client(self, url: str = "ws://relay.example/chat?a=1", **options: Any) -> Client:
        factory = WebSocketClientFactory(url, reactor=self.clock, protocols=options.pop("protocols", []))
        factory.protocol = Client
        factory.setProtocolOptions(failByDrop=False, **options)
        client = factory.buildProtocol(None)
        self.connect_client(client)
        self.settle()
        return client

    def attempts(self) -> int:
        return len(self.clock.tcpClients)

    def refuse_upstream(self, index: int = -1) -> None:
        _, _, factory, _, _ = self.clock.tcpClients[index]
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        self.settle()

    def accept_upstream(self, index: int = -1, settle: bool = True, **behaviour: Any) -> Upstream:
        host, port, wrapping, _, _ = self.clock.tcpClients[index]
        relay_side = wrapping.buildProtocol(IPv4Address("TCP", host, port))
        upstream = upstream_factory(self.clock, **behaviour).buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
        u_io = iosim.FakeTransport(upstream, True, IPv4Address("TCP", host, port), IPv4Address("TCP", "127.0.0.1", 50000))
        r_io = iosim.FakeTransport(relay_side, False, IPv4Address("TCP", "127.0.0.1", 50000), IPv4Address("TCP", host, port))
        self.pumps.append(iosim.connect(upstream, u_io, relay_side, r_io, greet=False, clock=self.clock))
        self.upstreams.append(upstream)
        if settle:
            self.settle()
        return upstream

    def accept_raw(self, upstream: Protocol, index: int = -1) -> iosim.FakeTransport:
        """Complete connection attempt ``index`` with ``upstream``; returns wsrelay's transport toward it."""
        host, port, wrapping, _, _ = self.clock.tcpClients[index]
        relay_side = wrapping.buildProtocol(IPv4Address("TCP", host, port))
        u_io = iosim.FakeTransport(upstream, True)
        r_io = self.transport_type(relay_side, False)
        self.pumps.append(iosim.connect(upstream, u_io, relay_side, r_io, greet=False, clock=self.clock))
        self.settle()
        return r_io

    def settle(self) -> None:
        for _ in range(10000):
            if not any([p.pump() for p in self.pumps]):
                return
        raise AssertionError("connections never settled")

    def advance(self, seconds: float, step: float = 0.1) -> None:
        elapsed = 0.0
        while elapsed < seconds:
            self.clock.advance(step)
            elapsed += step
            self.settle()

    def relay_handshake(self) -> bytes:
        """The handshake the upstream received, as bytes."""
        return self.upstreams[-1].http_request_data


def status(client: RawClient) -> int:
    return int(client.head.split(b" ", 2)[1])


def header_lines(head: bytes, name: bytes) -> list[bytes]:
    return [line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")[1:]
            if line.split(b":", 1)[0].strip().lower() == name.lower()]


def servers_down(h: Harness) -> int:
    """How many servers of the test group passive health has taken out (max_fails = 1: one failure)."""
    return sum(s["down"] for s in h.gateway.balancer.snapshot()["up"].values())


def body(client: RawClient) -> bytes:
    return client.received.partition(b"\r\n\r\n")[2]


def open_pair(h: Harness, **behaviour: Any) -> tuple[Client, Upstream]:
    client = h.autobahn_client()
    upstream = h.accept_upstream(**behaviour)
    assert client.opened and upstream.opened
    return client, upstream


# -- handshake ------------------------------------------------------------------------------


def test_upgrade_with_connection_token_list_is_relayed_upstream_first() -> None:
    """`Connection: keep-alive, Upgrade` is an upgrade; the client's 101 waits for the upstream's."""
    h = Harness()
    client = h.raw_client(handshake(connection=b"keep-alive, Upgrade", extra=[b"Sec-WebSocket-Protocol: a, b"]))
    assert h.attempts() == 1 and client.received == b""
    h.accept_upstream(protocol_choice="b")
    assert status(client) == 101
    assert header_lines(client.head, b"sec-websocket-protocol") == [b"b"]
    assert header_lines(client.head, b"server") == []
    accept = base64.b64encode(__import__("hashlib").sha1(KEY + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
    assert header_lines(client.head, b"sec-websocket-accept") == [accept]


def test_upstream_handshake_carries_client_target_and_headers() -> None:
    """Raw path and query, subprotocols, repeated Cookie lines, Authorization, Origin, UA, one Host, X-Forwarded-*."""
    h = Harness()
    h.raw_client(handshake(b"/chat/%7Eroom?q=a%2Fb&x", extra=[
        b"Cookie: a=1", b"Cookie: b=2", b"Authorization: Bearer t", b"Origin: https://app.example",
        b"User-Agent: test/1", b"Sec-WebSocket-Protocol: v1, v2", b"X-Forwarded-For: 192.0.2.9",
        b"Sec-WebSocket-Extensions: permessage-deflate"]))
    h.accept_upstream()
    sent = h.relay_handshake()
    assert sent.startswith(b"GET /chat/%7Eroom?q=a%2Fb&x HTTP/1.1\r\n")
    assert header_lines(sent, b"cookie") == [b"a=1", b"b=2"]
    assert header_lines(sent, b"authorization") == [b"Bearer t"]
    assert header_lines(sent, b"origin") == [b"https://app.example"]
    assert header_lines(sent, b"user-agent") == [b"test/1"]
    assert header_lines(sent, b"host") == [b"relay.example"]
    assert header_lines(sent, b"x-forwarded-for") == [b"192.0.2.9, 10.1.2.3"]
    assert header_lines(sent, b"x-forwarded-proto") == [b"http"]
    assert header_lines(sent, b"sec-websocket-protocol") == [b"v1,v2"]
    assert header_lines(sent, b"sec-websocket-key") != [KEY]  # each hop has its own key
    assert header_lines(sent, b"sec-websocket-extensions") == []  # negotiated per hop


def test_upstream_refusal_status_reaches_client() -> None:
    """A non-101 from the upstream goes to the client as that status; no WebSocket."""
    h = Harness()
    client = h.raw_client(handshake())
    h.accept_upstream(deny=403)
    assert status(client) == 403
    assert not h.gateway.live


@MODES
def test_upstream_redirect_reaches_client_with_its_headers_and_body(mode: str) -> None:
    """A 302 reaches the client as a 302 with Location, every Set-Cookie line, Content-Type and the
    body that came with it; hop-by-hop fields (and those Connection names) do not."""
    h = Harness(mode)
    client = h.raw_client(handshake())
    h.accept_raw(RawUpstream(answer=(
        b"HTTP/1.1 302 Found\r\nLocation: https://login.example/?next=%2Fchat\r\nSet-Cookie: a=1; Path=/\r\n"
        b"Set-Cookie: b=2; Expires=Wed, 21 Oct 2037 07:28:00 GMT\r\nConnection: close, X-Hop\r\nX-Hop: 1\r\n"
        b"Keep-Alive: timeout=5\r\nContent-Type: text/html\r\nContent-Length: 5\r\nCache-Control: private\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n<a/>\n")))
    assert status(client) == 302
    assert header_lines(client.head, b"location") == [b"https://login.example/?next=%2Fchat"]
    assert header_lines(client.head, b"set-cookie") == [b"a=1; Path=/", b"b=2; Expires=Wed, 21 Oct 2037 07:28:00 GMT"]
    assert header_lines(client.head, b"content-type") == [b"text/html"]
    assert header_lines(client.head, b"cache-control") == [b"private"]
    for gone in (b"x-hop", b"keep-alive", b"sec-websocket-version"):
        assert header_lines(client.head, gone) == []
    assert body(client) == b"<a/>\n"
    assert not h.gateway.live and servers_down(h) == 0


@MODES
def test_upstream_challenge_reaches_client_with_a_plain_body(mode: str) -> None:
    """A 401 keeps its WWW-Authenticate; a body that did not come whole with the head is replaced
    by a plain-text one, with none of the fields that described the upstream's."""
    h = Harness(mode)
    client = h.raw_client(handshake())
    h.accept_raw(RawUpstream(answer=(
        b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"chat\"\r\nContent-Type: application/json\r\n"
        b"Content-Language: en\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"e\":\r\n")))
    assert status(client) == 401
    assert header_lines(client.head, b"www-authenticate") == [b'Bearer realm="chat"']
    assert header_lines(client.head, b"content-type") == [b"text/plain; charset=utf-8"]
    assert header_lines(client.head, b"content-language") == []
    assert body(client) == b"401 Unauthorized\n"


@MODES
@pytest.mark.parametrize(("answer", "code", "field"), [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 200, None),
    (b"HTTP/1.1 204 No Content\r\nX-Why: none\r\n\r\n", 204, (b"x-why", b"none")),
    (b"HTTP/1.1 307 Temporary Redirect\r\nLocation: /elsewhere\r\n\r\n", 307, (b"location", b"/elsewhere")),
    (b"HTTP/1.1 503 Busy\r\nRetry-After: 30\r\n\r\n", 503, (b"retry-after", b"30")),
    (b"HTTP/1.1 100 Continue\r\n\r\n", 502, None),
    (b"HTTP/1.1 600 Odd\r\n\r\n", 502, None),
], ids=["200", "204", "307", "503", "100", "600"])
def test_upstream_final_status_passed_on_1xx_is_502(mode: str, answer: bytes, code: int,
                                                    field: tuple[bytes, bytes] | None) -> None:
    """Any final status (2xx to 5xx) reaches the client with its fields; a 1xx, not a final answer,
    is a 502 and a failure of that server (a broken answer, as on the HTTP side)."""
    h = Harness(mode)
    client = h.raw_client(handshake())
    h.accept_raw(RawUpstream(answer=answer))
    assert status(client) == code
    if field is not None:
        assert header_lines(client.head, field[0]) == [field[1]]
    if code == 204:
        assert header_lines(client.head, b"content-length") == [] and body(client) == b""
    assert servers_down(h) == (1 if code == 502 else 0)
    assert not h.gateway.live


@MODES
def test_fail_statuses_count_as_server_failure_other_refusals_do_not(mode: str) -> None:
    """A refusal with a status in the group's fail_statuses is a failure of that server; another is not."""
    h = Harness(mode, upstream_extra="fail_statuses = 503")
    first = h.raw_client(handshake())
    h.accept_raw(RawUpstream(answer=b"HTTP/1.1 503 Service Unavailable\r\n\r\n"))
    assert status(first) == 503 and servers_down(h) == 1
    second = h.raw_client(handshake())
    h.accept_raw(RawUpstream(answer=b"HTTP/1.1 403 Forbidden\r\n\r\n"))
    assert status(second) == 403 and servers_down(h) == 1


@MODES
def test_handshake_timeout_is_a_server_failure(mode: str) -> None:
    """An upstream that takes the connection but never answers the handshake: 504, and a failure
    of that server for passive health (max_fails = 1 takes it out)."""
    h = Harness(mode + "\nws_handshake_timeout = 3s")
    client = h.raw_client(handshake())
    h.accept_raw(Protocol())
    h.advance(3.1)
    assert status(client) == 504
    assert servers_down(h) == 1


@MODES
def test_upstream_closing_during_handshake_is_a_server_failure(mode: str) -> None:
    """An upstream that closes the connection instead of answering: a failure of that server, and
    the handshake goes to the next one (a GET, nothing answered); with none left, 502."""
    h = Harness(mode)
    client = h.raw_client(handshake())
    h.accept_raw(ClosingUpstream())
    assert servers_down(h) == 1 and h.attempts() == 2 and client.received == b""
    h.accept_upstream()
    assert status(client) == 101
    h = Harness(mode)
    client = h.raw_client(handshake())
    h.accept_raw(ClosingUpstream())
    h.accept_raw(ClosingUpstream())
    assert status(client) == 502
    assert servers_down(h) == 2 and h.attempts() == 2 and not h.gateway.live


@MODES
def test_upstream_closing_after_part_of_an_answer_is_not_retried(mode: str) -> None:
    """An upstream that sent part of an answer, then closed: 502, no second attempt."""
    h = Harness(mode)
    client = h.raw_client(handshake())
    h.accept_raw(PartialUpstream())
    assert status(client) == 502
    assert h.attempts() == 1 and not h.gateway.live


@MODES
def test_no_retry_once_retry_timeout_has_passed(mode: str) -> None:
    """A connect failure after retry_timeout is not retried on another server (retries left or not): 502."""
    h = Harness(mode + "\nretry_timeout = 1s")
    client = h.raw_client(handshake())
    h.advance(1.5)
    h.refuse_upstream(0)
    assert h.attempts() == 1
    assert status(client) == 502


def test_unreachable_upstream_retries_next_server_then_502() -> None:
    """A refused connection is retried on the other server (route retries), then 502."""
    h = Harness()
    client = h.raw_client(handshake())
    h.refuse_upstream(0)
    assert h.attempts() == 2
    assert h.clock.tcpClients[0][1] != h.clock.tcpClients[1][1]
    assert client.received == b""
    h.refuse_upstream(1)
    assert status(client) == 502
    assert not h.gateway.live


def test_retries_left_but_no_server_left_gives_the_failure_itself() -> None:
    """retries = 3 with two servers, both refusing: the client gets 502 (what happened), not 503
    ('no server available')."""
    h = Harness("retries = 3")
    client = h.raw_client(handshake())
    h.refuse_upstream(0)
    h.refuse_upstream(1)
    assert h.attempts() == 2
    assert status(client) == 502
    assert not h.gateway.live


def test_retry_reaches_second_server() -> None:
    """After a refused connection, the next server's 101 opens the pair."""
    h = Harness()
    client = h.autobahn_client()
    h.refuse_upstream(0)
    h.accept_upstream(1)
    assert client.opened


def test_silent_upstream_gives_504_and_is_closed() -> None:
    """No upstream answer within ws_handshake_timeout: 504, and the upstream connection is dropped."""
    h = Harness("ws_handshake_timeout = 3s")
    client = h.raw_client(handshake())
    host, port, wrapping, _, _ = h.clock.tcpClients[0]
    silent = wrapping.buildProtocol(IPv4Address("TCP", host, port))
    u_io = iosim.FakeTransport(Protocol(), True)
    r_io = iosim.FakeTransport(silent, False)
    h.pumps.append(iosim.connect(Protocol(), u_io, silent, r_io, greet=False, clock=h.clock))
    h.settle()
    h.advance(2.9)
    assert client.received == b""
    h.advance(0.2)
    assert status(client) == 504
    assert r_io.disconnecting


def test_client_leaving_during_upstream_handshake_leaves_no_upstream_connection() -> None:
    """A client that disconnects before its 101: the pending upstream connection is closed."""
    h = Harness()
    client = h.raw_client(handshake())
    client.transport.loseConnection()
    h.settle()
    assert not h.gateway.live
    assert h.clock.connectors[0].stoppedConnecting  # the connection attempt was cancelled
    h2 = Harness()
    client = h2.raw_client(handshake())
    host, port, wrapping, _, _ = h2.clock.tcpClients[0]
    relay_side = wrapping.buildProtocol(IPv4Address("TCP", host, port))
    r_io = iosim.FakeTransport(relay_side, False)
    h2.pumps.append(iosim.connect(Protocol(), iosim.FakeTransport(Protocol(), True), relay_side, r_io,
                                  greet=False, clock=h2.clock))
    h2.settle()
    client.transport.loseConnection()
    h2.settle()
    assert r_io.disconnecting and not h2.gateway.live


def test_bytes_pipelined_after_handshake_are_relayed() -> None:
    """A frame sent in the same write as the handshake is not lost."""
    h = Harness()
    client = h.raw_client(handshake() + frame(1, b"early"))
    h.accept_upstream()
    assert h.upstreams[0].messages() == [(b"early", False)]
    assert client.frames == [(True, 1, b"early")]


# -- bad handshakes never reach an upstream -------------------------------------------------


@pytest.mark.parametrize(("request_bytes", "extra", "code", "header"), [
    (handshake(version=b"8"), "", 426, (b"sec-websocket-version", b"13")),
    (handshake(key=None), "", 400, None),
    (handshake(key=b"short"), "", 400, None),
    (handshake(extra=[b"Origin: https://evil.example"]), "ws_allowed_origins = https://app.example", 403, None),
    (handshake(), "ws_allowed_origins = https://app.example\nws_require_origin = on", 403, None),
    (handshake(extra=[b"Sec-WebSocket-Protocol: a, a"]), "", 400, None),
    (handshake(), "websocket = off", 403, None),
])
def test_bad_handshake_refused_before_any_upstream(request_bytes: bytes, extra: str, code: int,
                                                   header: tuple[bytes, bytes] | None) -> None:
    """Bad version (426 + Sec-WebSocket-Version: 13), key (400), Origin (403), WebSocket off (403)."""
    h = Harness(extra)
    client = h.raw_client(request_bytes)
    assert status(client) == code
    if header:
        assert header_lines(client.head, header[0]) == [header[1]]
    assert h.attempts() == 0


@pytest.mark.parametrize("extra", ["ws_allowed_origins = https://app.example",
                                   "ws_allowed_origins = https://app.example\nws_require_origin = off"])
def test_a_handshake_without_origin_passes_allowed_origins(extra: str) -> None:
    """With ws_allowed_origins set, a handshake without Origin (not a browser: wscat, an SDK, a
    server-to-server feed) is let through unless ws_require_origin = on."""
    h = Harness(extra)
    client = h.raw_client(handshake())
    h.accept_upstream()
    assert status(client) == 101


@pytest.mark.parametrize(("origin", "valid"), [
    (b"https://app.example", True), (b"http://app.example:8080", True), (b"null", True), (b"NULL", True),
    (b"file://", True), (b"chrome-extension://abcdefghijklmnop", True), (b"http://[2001:db8::1]:443", True),
    (b"https://app.example:99999", False), (b"https://app.example:x", False), (b"app.example", False),
    (b"https://", False), (b"", False), (b"http://[2001:db8::1", False),
])
def test_an_origin_the_client_leg_could_not_take_is_a_400(origin: bytes, valid: bool) -> None:
    """An Origin with no host, or a port that is not a port, is refused before any upstream; the
    shapes browsers send (null, file://, extension schemes, IPv6 literals) pass."""
    h = Harness()
    client = h.raw_client(handshake(extra=[b"Origin: " + origin]))
    if valid:
        h.accept_upstream()
    assert status(client) == (101 if valid else 400)
    assert h.attempts() == (1 if valid else 0)


def test_allowed_origin_passes() -> None:
    """An allowed Origin opens the pair."""
    h = Harness("ws_allowed_origins = https://app.example")
    client = h.raw_client(handshake(extra=[b"Origin: https://APP.example"]))
    h.accept_upstream()
    assert status(client) == 101


# -- messages -------------------------------------------------------------------------------


def test_text_and_binary_messages_both_ways_in_order() -> None:
    """Text stays text, binary stays binary, order kept, in both directions."""
    h = Harness()
    client, upstream = open_pair(h)
    sent = [(b"one", False), (b"\x00\x01", True), (b"", False), ("\u00e9t\u00e9".encode(), False), (b"x" * 200000, True)]
    for payload, binary in sent:
        client.sendMessage(payload, binary)
    h.settle()
    assert upstream.messages() == sent
    assert client.messages() == sent


def test_upstream_greeting_right_after_101_reaches_client() -> None:
    """Messages the upstream sends right after its 101 reach the client after the client's 101."""
    h = Harness()
    client = h.autobahn_client()
    h.accept_upstream(greeting=[(b"hello", False), (b"\x02", True)], echo=False)
    assert client.messages() == [(b"hello", False), (b"\x02", True)]


def test_fragments_relayed_frame_by_frame() -> None:
    """Each fragment reaches the upstream before the next one is sent; the whole message is intact."""
    h = Harness()
    client, upstream = open_pair(h, echo=False)
    client.beginMessage(isBinary=True)
    client.sendMessageFrame(b"first")
    h.settle()
    assert upstream.events.count(("frame",)) == 1 and upstream.messages() == []
    client.sendMessageFrame(b"second")
    h.settle()
    assert upstream.events.count(("frame",)) == 2
    client.endMessage()
    h.settle()
    assert upstream.messages() == [(b"firstsecond", True)]


def test_large_message_is_streamed_not_held() -> None:
    """A 1 MiB frame goes on while it arrives: the upstream has part of it before the rest is sent."""
    h = Harness("ws_max_message_size = 2M\nws_max_frame_size = 2M")
    client = h.raw_client(handshake())
    upstream = h.accept_upstream(echo=False)
    data = frame(2, b"z" * (1 << 20))
    client.transport.write(data[:300000])
    h.settle()
    assert upstream.events.count(("frame",)) >= 1 and upstream.messages() == []
    client.transport.write(data[300000:])
    h.settle()
    assert upstream.messages() == [(b"z" * (1 << 20), True)]


def test_deflate_toward_client_and_plain_toward_upstream() -> None:
    """permessage-deflate is negotiated with the client only; the upstream hop stays plain."""
    h = Harness("ws_compression = on\nws_upstream_compression = off")
    client = h.autobahn_client(perMessageCompressionOffers=[PerMessageDeflateOffer()],
                               perMessageCompressionAccept=lambda r: PerMessageDeflateResponseAccept(r)
                               if isinstance(r, PerMessageDeflateResponse) else None)
    upstream = h.accept_upstream()
    assert client._perMessageCompress is not None
    assert upstream._perMessageCompress is None
    assert header_lines(h.relay_handshake(), b"sec-websocket-extensions") == []
    big = os.urandom(100000) + b"a" * 300000
    client.sendMessage(b"squeeze " * 1000, False)
    client.sendMessage(big, True)
    h.settle()
    assert upstream.messages() == [(b"squeeze " * 1000, False), (big, True)]
    assert client.messages() == upstream.messages()


def test_deflate_toward_upstream_when_configured() -> None:
    """ws_upstream_compression = on offers permessage-deflate to the upstream."""
    h = Harness("ws_compression = off\nws_upstream_compression = on")
    client = h.autobahn_client()
    assert header_lines(client.http_request_data, b"sec-websocket-extensions") == []
    host, port, wrapping, _, _ = h.clock.tcpClients[0]
    factory = upstream_factory(h.clock)
    factory.setProtocolOptions(perMessageCompressionAccept=lambda offers: __import__(
        "autobahn.websocket.compress", fromlist=["x"]).PerMessageDeflateOfferAccept(offers[0]) if offers else None)
    relay_side = wrapping.buildProtocol(IPv4Address("TCP", host, port))
    upstream = factory.buildProtocol(None)
    h.pumps.append(iosim.connect(upstream, iosim.FakeTransport(upstream, True), relay_side,
                                 iosim.FakeTransport(relay_side, False), greet=False, clock=h.clock))
    h.settle()
    assert b"permessage-deflate" in upstream.http_request_data
    assert upstream._perMessageCompress is not None and client._perMessageCompress is None
    client.sendMessage(b"hello " * 5000)
    h.settle()
    assert upstream.messages() == [(b"hello " * 5000, False)] == client.messages()


# -- closing --------------------------------------------------------------------------------

CODES = [1000, 1001, 1008, 1011, 1012, 1013, 3000, 4000, 4999]


@pytest.mark.parametrize("code", CODES)
def test_client_close_code_and_reason_reach_upstream(code: int) -> None:
    """The client's close code and reason reach the upstream; the client gets the upstream's answer."""
    h = Harness()
    client, upstream = open_pair(h)
    client.sendCloseFrame(code, "r\u00e9ason".encode())
    h.settle()
    assert upstream.close() == ("close", True, code, "r\u00e9ason")
    assert client.close() == ("close", True, code, "r\u00e9ason")
    assert not h.gateway.live


@pytest.mark.parametrize("code", CODES)
def test_upstream_close_code_and_reason_reach_client(code: int) -> None:
    """The upstream's close code and reason reach the client."""
    h = Harness()
    client, upstream = open_pair(h)
    upstream.sendCloseFrame(code, b"bye")
    h.settle()
    assert client.close() == ("close", True, code, "bye")
    assert upstream.close()[:3] == ("close", True, 1000)  # the client's answer (Autobahn's default)
    assert not h.gateway.live


def test_messages_in_flight_reach_a_closing_client() -> None:
    """After the client's close, what the upstream sends before answering still reaches the client."""
    h = Harness()
    client, upstream = open_pair(h, echo=False)
    client.sendMessage(b"last words")
    client.sendCloseFrame(1000)
    h.pumps[0].pump()  # the client's bytes reach wsrelay, which forwards them upstream
    upstream.sendMessage(b"reply")  # sent before the upstream saw the close
    h.settle()
    assert upstream.messages() == [(b"last words", False)]
    assert client.messages() == [(b"reply", False)]
    assert client.close()[:3] == ("close", True, 1000)


def test_ping_after_close_is_not_answered() -> None:
    """A client that pings after its close frame gets no pong (RFC 6455 5.5.1, Autobahn 7.1.3),
    even while its close waits for the upstream's answer; the close itself is still answered."""
    h = Harness()
    client = h.raw_client(handshake())
    h.accept_upstream()
    h.pumps[-1].pump()  # hold the upstream hop: the client's close stays unanswered for now
    client.transport.write(frame(8, (1000).to_bytes(2, "big")) + frame(9, b"still there?"))
    h.pumps[0].pump()
    assert not [f for f in client.frames if f[1] == 10]
    h.settle()
    assert [f[1] for f in client.frames] == [8]
    assert client.frames[0][2][:2] == (1000).to_bytes(2, "big")


def test_upstream_lost_without_close_gives_client_1011() -> None:
    """The upstream's TCP connection ends without a close frame: the client gets 1011."""
    h = Harness()
    client, upstream = open_pair(h)
    upstream.transport.loseConnection()
    h.settle()
    assert client.close()[:3] == ("close", True, 1011)
    assert not h.gateway.live
    assert len(h.log) == 1 and '"GET /chat?a=1 HTTP/1.1" 101 ' in h.log[0]


def test_client_lost_without_close_gives_upstream_1001() -> None:
    """The client's TCP connection ends without a close frame: the upstream gets 1001."""
    h = Harness()
    client, upstream = open_pair(h)
    client.transport.loseConnection()
    h.settle()
    assert upstream.close()[:3] == ("close", True, 1001)
    assert not h.gateway.live


def test_shutdown_closes_both_sides_with_1001() -> None:
    """gateway.shutdown_all(): both sides get a 1001 close frame."""
    h = Harness()
    client, upstream = open_pair(h)
    assert len(h.gateway.live) == 1
    h.gateway.shutdown_all()
    h.settle()
    assert client.close()[:3] == ("close", True, 1001)
    assert upstream.close()[:3] == ("close", True, 1001)
    assert not h.gateway.live


# -- limits and protocol errors -------------------------------------------------------------


def test_oversized_message_gets_1009_and_other_side_1001() -> None:
    """A message over ws_max_message_size: 1009 to its sender, 1001 to the upstream."""
    h = Harness("ws_max_message_size = 1K\nws_max_frame_size = 1K")
    client, upstream = open_pair(h)
    client.sendMessage(b"x" * 2000, True)
    h.settle()
    assert client.close()[2] == 1009
    assert upstream.close()[:3] == ("close", True, 1001)
    assert upstream.messages() == []


def test_oversized_message_from_upstream_gets_1009_and_client_1011() -> None:
    """An oversized upstream message: 1009 to the upstream, 1011 to the client."""
    h = Harness("ws_max_message_size = 1K\nws_max_frame_size = 1K")
    client, upstream = open_pair(h)
    upstream.sendMessage(b"x" * 2000, True)
    h.settle()
    assert upstream.close()[2] == 1009
    assert client.close()[:3] == ("close", True, 1011)


@pytest.mark.parametrize(("bad", "code"), [
    (frame(1, b"\xff\xfe"), 1007),                     # invalid UTF-8 in a text message
    (frame(1, b"unmasked", mask=False), 1002),         # client frames must be masked
    (frame(3, b"x"), 1002),                            # reserved opcode
    (frame(8, struct.pack("!H", 1005)), 1002),         # a code never allowed on the wire
    (frame(0, b"orphan continuation"), 1002),
])
def test_protocol_errors_close_with_right_code_and_only_that_pair(bad: bytes, code: int) -> None:
    """Protocol errors get 1002/1007 on that hop; the upstream gets 1001; another pair is untouched."""
    h = Harness()
    other_client, other_upstream = open_pair(h)
    client = h.raw_client(handshake())
    upstream = h.accept_upstream()
    assert status(client) == 101
    client.transport.write(bad)
    h.settle()
    closes = [f for f in client.frames if f[1] == 8]
    assert closes and struct.unpack("!H", closes[0][2][:2])[0] == code
    assert upstream.close()[:3] == ("close", True, 1001)
    other_client.sendMessage(b"still here")
    h.settle()
    assert other_client.messages() == [(b"still here", False)] and other_client.close() is None


# -- pings and idle -------------------------------------------------------------------------


def test_pings_answered_and_silent_client_closed() -> None:
    """wsrelay pings each hop; a client that stops answering is dropped, the upstream gets 1001."""
    h = Harness("ws_ping_interval = 5s\nws_ping_timeout = 2s")
    client = h.raw_client(handshake())
    upstream = h.accept_upstream()  # an Autobahn upstream answers pings itself
    assert status(client) == 101
    h.advance(5.5)
    assert any(f[1] == 9 for f in client.frames)  # a ping reached the client
    h.advance(3)
    assert h.server_io.disconnecting
    assert upstream.close()[:3] == ("close", True, 1001)
    assert not h.gateway.live


def test_pings_keep_a_quiet_pair_open() -> None:
    """Peers that answer pings stay connected however long the pair is quiet."""
    h = Harness("ws_ping_interval = 5s\nws_ping_timeout = 2s")
    client, upstream = open_pair(h)
    h.advance(30, step=0.5)
    assert client.close() is None and upstream.close() is None


def test_peer_pings_are_answered_by_wsrelay() -> None:
    """A ping from the client is answered on the client hop."""
    h = Harness()
    client = h.raw_client(handshake())
    h.accept_upstream()
    client.transport.write(frame(9, b"are you there"))
    h.settle()
    assert (True, 10, b"are you there") in client.frames


def test_idle_timeout_closes_both_with_1001() -> None:
    """ws_idle_timeout: no message either way for that long closes both sides with close frames."""
    h = Harness("ws_idle_timeout = 10s")
    client, upstream = open_pair(h)
    h.advance(6)
    client.sendMessage(b"activity")
    h.settle()
    h.advance(8)
    assert client.close() is None
    h.advance(3)
    assert client.close()[:3] == ("close", True, 1001)
    assert upstream.close()[:3] == ("close", True, 1001)


# -- bookkeeping ----------------------------------------------------------------------------


def test_metrics_count_messages_octets_and_closes_per_hop() -> None:
    """Per-hop counters: messages and octets each way, close codes each way."""
    h = Harness()
    client, upstream = open_pair(h)
    client.sendMessage(b"12345")
    h.settle()
    client.sendCloseFrame(4000)
    h.settle()
    snap = h.gateway.websocket.metrics.snapshot()["/"]
    assert snap["opened"] == 1 and snap["open"] == 0
    c, u = snap["hops"]["client"], snap["hops"]["upstream"]
    assert (c["messages_in"], c["octets_in"], c["messages_out"], c["octets_out"]) == (1, 5, 1, 5)
    assert (u["messages_in"], u["octets_in"], u["messages_out"], u["octets_out"]) == (1, 5, 1, 5)
    assert c["closes_in"] == {"4000": 1} and u["closes_out"] == {"4000": 1}
    assert u["closes_in"] == {"4000": 1} and c["closes_out"] == {"4000": 1}


def test_access_log_line_and_lease_released_at_close() -> None:
    """One access-log line per pair (status 101, bytes to the client); the balancer lease is released."""
    h = Harness()
    client, upstream = open_pair(h)
    client.sendMessage(b"abc")
    h.settle()
    client.sendCloseFrame(1000)
    h.settle()
    assert len(h.log) == 1
    assert " 101 3 " in h.log[0] and "upstream=127.0.0.1:900" in h.log[0]
    snapshot = h.gateway.balancer.snapshot()["up"]
    assert all(s.get("active", 0) == 0 for s in snapshot.values())


def test_transports_cross_registered_as_producers() -> None:
    """Each leg's transport has a producer that pauses the other leg's reading (and its own)."""
    h = Harness()
    client, upstream = open_pair(h)
    pair = next(iter(h.gateway.live))
    client_t, upstream_t = pair.client_leg.transport, pair.upstream_leg.transport
    assert client_t.streamingProducer and upstream_t.streamingProducer
    assert [g for g, _ in client_t.producer.holds] == [pair.upstream_leg.gate, pair.client_leg.gate]
    assert [g for g, _ in upstream_t.producer.holds] == [pair.client_leg.gate, pair.upstream_leg.gate]
    client_t.producer.pauseProducing()
    assert pair.upstream_leg.read_paused
    client_t.producer.resumeProducing()
    assert not pair.upstream_leg.read_paused
