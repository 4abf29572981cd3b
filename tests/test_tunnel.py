"""Tunnel mode in memory: the handshake goes upstream as the client sent it, then bytes flow unchanged."""

from __future__ import annotations

import base64
import hashlib
import struct

import pytest
from twisted.internet.protocol import Protocol
from twisted.test import iosim

from tests.test_websocket import (
    GUID,
    KEY,
    Harness,
    RawClient,
    RawUpstream,
    frame,
    handshake,
    header_lines,
    parse_frames,
    status,
)
from wsrelay.tunnel import FrameTracker, response_head
from wsrelay.upgrade import CLOSE_HANDSHAKE_TIMEOUT

TUNNEL = "ws_mode = tunnel"


def accept(h: Harness, upstream: Protocol, index: int = -1) -> iosim.FakeTransport:
    return h.accept_raw(upstream, index)


def open_tunnel(h: Harness, after: bytes = b"", request: bytes | None = None) -> tuple[RawClient, RawUpstream]:
    client = h.raw_client(request or handshake(extra=[b"Sec-WebSocket-Protocol: chat",
                                                      b"Sec-WebSocket-Extensions: permessage-deflate"]))
    upstream = RawUpstream(after=after)
    accept(h, upstream)
    assert status(client) == 101
    return client, upstream


def test_handshake_goes_upstream_end_to_end_and_101_comes_back_without_hop_by_hop() -> None:
    """The client's key, subprotocols and extensions go upstream; the 101 comes back cleaned."""
    h = Harness(TUNNEL)
    client, upstream = open_tunnel(h)
    assert upstream.request.startswith(b"GET /chat?a=1&b=%20 HTTP/1.1\r\n")
    assert header_lines(upstream.request, b"sec-websocket-key") == [KEY]
    assert header_lines(upstream.request, b"sec-websocket-extensions") == [b"permessage-deflate"]
    assert header_lines(upstream.request, b"upgrade") == [b"websocket"]
    assert header_lines(upstream.request, b"connection") == [b"Upgrade"]
    assert header_lines(upstream.request, b"x-forwarded-for") == [b"10.1.2.3"]
    accept_value = base64.b64encode(hashlib.sha1(KEY + GUID).digest())
    assert header_lines(client.head, b"sec-websocket-accept") == [accept_value]
    assert header_lines(client.head, b"x-upstream") == [b"yes"]
    assert header_lines(client.head, b"keep-alive") == []
    assert header_lines(client.head, b"upgrade") == [b"websocket"]


def test_bytes_copied_unchanged_both_ways() -> None:
    """Whatever follows the 101 is copied byte for byte, RSV bits and odd framing included: every
    byte of a 70,000-byte frame each way is compared, not just a prefix and a length."""
    h = Harness(TUNNEL)
    early = frame(1, b"from upstream right after 101", mask=False)
    client, upstream = open_tunnel(h, after=early)
    odd = bytes([0xC1, 0x85]) + b"\x01\x02\x03\x04" + b"abcde"  # RSV1 set, as deflate would
    up_bytes = odd + frame(2, bytes(range(256)) * 273 + b"end")  # masked: 70,000 bytes of payload
    down_bytes = frame(2, bytes(range(255, -1, -1)) * 273 + b"END", mask=False) + frame(2, b"\xff" * 100, mask=False)
    client.transport.write(up_bytes)
    upstream.transport.write(down_bytes)
    h.settle()
    assert upstream.received == odd + upstream.received[len(odd):]
    assert len(upstream.received) == len(up_bytes)
    assert upstream.received == up_bytes
    assert client.received.partition(b"\r\n\r\n")[2] == early + down_bytes


def test_pipelined_bytes_reach_upstream_after_handshake() -> None:
    """Bytes the client sent along with its handshake go upstream after the request."""
    h = Harness(TUNNEL)
    early = frame(1, b"early")
    client, upstream = open_tunnel(h, request=handshake() + early)
    assert upstream.received == early


def test_refusal_status_passed_to_client() -> None:
    """A non-101 from the upstream goes to the client with its status."""
    h = Harness(TUNNEL)
    client = h.raw_client(handshake())
    accept(h, RawUpstream(answer=b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n"))
    assert status(client) == 403
    assert not h.gateway.live


@pytest.mark.parametrize(("request_bytes", "extra", "code"), [
    (handshake(version=b"12"), "", 426),
    (handshake(key=b"bad"), "", 400),
    (handshake(extra=[b"Origin: https://evil.example"]), "ws_allowed_origins = https://ok.example", 403),
])
def test_tunnel_still_validates_handshake(request_bytes: bytes, extra: str, code: int) -> None:
    """Tunnel mode checks version, key and Origin before contacting an upstream."""
    h = Harness(TUNNEL + "\n" + extra)
    client = h.raw_client(request_bytes)
    assert status(client) == code and h.attempts() == 0


def test_unreachable_upstream_gives_502() -> None:
    """No connection to any server: 502 (after the route's retries)."""
    h = Harness(TUNNEL)
    client = h.raw_client(handshake())
    h.refuse_upstream(0)
    h.refuse_upstream(1)
    assert status(client) == 502


def test_one_side_closing_closes_the_other_after_flushing() -> None:
    """The upstream's close reaches the client with what preceded it, then the client is disconnected."""
    h = Harness(TUNNEL)
    client, upstream = open_tunnel(h)
    upstream.transport.write(frame(8, struct.pack("!H", 4000), mask=False))
    upstream.transport.loseConnection()
    h.settle()
    assert client.frames[-1] == (True, 8, struct.pack("!H", 4000))
    assert client.lost and not h.gateway.live
    assert len(h.log) == 1 and " 101 " in h.log[0]


def test_client_leaving_closes_upstream() -> None:
    """The client's TCP connection ending ends the upstream's."""
    h = Harness(TUNNEL)
    client, upstream = open_tunnel(h)
    client.transport.loseConnection()
    h.settle()
    assert upstream.lost and not h.gateway.live


def test_idle_timeout_sends_1001_close_frames_then_closes() -> None:
    """ws_idle_timeout: each side gets a 1001 close frame (masked toward the upstream), then FIN."""
    h = Harness(TUNNEL + "\nws_idle_timeout = 5s")
    client, upstream = open_tunnel(h)
    h.advance(3)
    client.transport.write(frame(1, b"keepalive"))
    h.settle()
    h.advance(4)
    assert not client.lost
    h.advance(2)
    assert client.frames[-1][1:] == (8, struct.pack("!H", 1001) + b"idle timeout")
    tail = upstream.received[len(frame(1, b"keepalive")):]
    assert tail[0] == 0x88 and tail[1] & 0x80  # a masked close frame
    assert client.lost and upstream.lost


def test_no_close_frame_injected_mid_frame() -> None:
    """A direction stuck in the middle of a frame gets no close frame, only the TCP close."""
    h = Harness(TUNNEL + "\nws_idle_timeout = 5s")
    client, upstream = open_tunnel(h)
    client.transport.write(frame(2, b"x" * 1000)[:500])  # half a frame toward the upstream
    h.settle()
    h.advance(6)
    assert len(upstream.received) == 500
    assert client.frames[-1][1] == 8
    assert upstream.lost


def test_shutdown_closes_tunnel_with_1001() -> None:
    """gateway.shutdown_all() sends 1001 close frames in the tunnel too."""
    h = Harness(TUNNEL)
    client, upstream = open_tunnel(h)
    h.gateway.shutdown_all()
    h.settle()
    assert client.frames[-1][1:] == (8, struct.pack("!H", 1001) + b"server shutting down")
    assert not h.gateway.live


class PausableTransport(iosim.FakeTransport):
    """An iosim transport that, like a TCP one, hands its protocol nothing while it is paused."""

    paused = False
    held = b""

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        held, self.held = self.held, b""
        if held:
            self.protocol.dataReceived(held)

    def bufferReceived(self, buf: bytes) -> None:
        if self.paused:
            self.held += buf
        else:
            super().bufferReceived(buf)


def stall(h: Harness, side: str) -> tuple[iosim.FakeTransport, list[iosim.FakeTransport]]:
    """``side``'s peer reads nothing more (its connection is no longer pumped).  Returns wsrelay's
    transport toward it and the list its aborts are recorded in (iosim's abortConnection is a
    loseConnection; this one ends the connection at once, as a real abort does)."""
    pair = next(iter(h.gateway.live))
    transport = h.server_io if side == "client" else pair.up.transport
    h.pumps.pop(0 if side == "client" else 1)
    aborted: list[iosim.FakeTransport] = []

    def abort() -> None:
        aborted.append(transport)
        transport.disconnected = True
        transport.reportDisconnect()

    transport.abortConnection = abort  # type: ignore[method-assign]
    return transport, aborted


@pytest.mark.parametrize(("side", "ending"), [
    ("client", "shutdown"), ("client", "idle timeout"), ("client", "other side closed"),
    ("upstream", "shutdown"), ("upstream", "other side closed"),
])
def test_peer_that_never_reads_is_aborted_after_close_timeout(side: str, ending: str) -> None:
    """A closing tunnel whose peer does not read (so its close never completes) aborts that
    connection CLOSE_HANDSHAKE_TIMEOUT seconds later: the pair ends and its lease is released."""
    h = Harness(TUNNEL + "\nws_idle_timeout = 60s")
    client, upstream = open_tunnel(h)
    transport, aborted = stall(h, side)
    if ending == "shutdown":
        h.gateway.shutdown_all()
    elif ending == "idle timeout":
        h.clock.advance(60)
    else:
        (upstream if side == "client" else client).transport.loseConnection()
    h.settle()
    assert transport.disconnecting and len(h.gateway.live) == 1
    h.clock.advance(CLOSE_HANDSHAKE_TIMEOUT - 0.1)
    assert aborted == []
    h.clock.advance(0.2)
    h.settle()
    assert aborted == [transport]
    assert not h.gateway.live
    assert all(s["active"] == 0 for s in h.gateway.balancer.snapshot()["up"].values())


def test_closing_peer_that_reads_is_not_aborted() -> None:
    """A peer that takes its close in time is never aborted, and no timer is left behind."""
    h = Harness(TUNNEL)
    client, upstream = open_tunnel(h)
    pair = next(iter(h.gateway.live))
    aborted: list[str] = []
    h.server_io.abortConnection = lambda: aborted.append("client")  # type: ignore[method-assign]
    pair.up.transport.abortConnection = lambda: aborted.append("upstream")
    h.gateway.shutdown_all()
    h.settle()
    assert client.lost and upstream.lost and not h.gateway.live
    h.advance(2 * CLOSE_HANDSHAKE_TIMEOUT, step=1)
    assert aborted == []
    assert not [c for c in h.clock.getDelayedCalls() if getattr(c.func, "__self__", None) is pair]


@pytest.mark.parametrize("slow", ["client", "upstream"])
def test_side_that_stops_reading_pauses_reading_from_the_other(slow: str) -> None:
    """Each transport has the other as its producer: when the slow side's socket is full (its
    transport pauses its producer), wsrelay stops reading the other side until it resumes."""
    h = Harness(TUNNEL)
    h.transport_type = PausableTransport
    client, upstream = open_tunnel(h)
    pair = next(iter(h.gateway.live))
    toward_client, toward_upstream = h.server_io, pair.up.transport
    full, other = (toward_client, toward_upstream) if slow == "client" else (toward_upstream, toward_client)
    assert full.streamingProducer
    full.producer.pauseProducing()  # what a TCP transport does when its write buffer is full
    assert other.paused
    data = frame(2, b"held back", mask=slow == "upstream")
    (upstream if slow == "client" else client).transport.write(data)
    h.settle()
    assert client.frames == [] and upstream.received == b""
    full.producer.resumeProducing()
    h.settle()
    if slow == "client":
        assert client.frames == [(True, 2, b"held back")]
    else:
        assert upstream.received == data


def test_tunnel_metrics_count_octets_per_hop() -> None:
    """Tunnel pairs count octets per hop and direction."""
    h = Harness(TUNNEL)
    client, upstream = open_tunnel(h)
    client.transport.write(b"12345")
    h.settle()
    hops = h.gateway.websocket.metrics.snapshot()["/"]["hops"]
    assert hops["client"]["octets_in"] == 5 and hops["upstream"]["octets_out"] == 5


def test_frame_tracker_follows_boundaries_across_splits() -> None:
    """Frame headers split anywhere are followed; a close frame is noticed."""
    data = frame(2, b"a" * 300) + frame(1, b"b" * 70000, mask=False) + frame(8, b"\x03\xe8")
    for cut in (1, 2, 3, 5, 9, 301, 310, 70300):
        t = FrameTracker()
        t.feed(data[:cut])
        assert not t.at_boundary or cut in (0,)
        t.feed(data[cut:])
        assert t.at_boundary and t.close_seen
    t = FrameTracker()
    for i in range(len(data[:400])):
        t.feed(data[i:i + 1])
    assert not t.close_seen


def test_response_head_keeps_switch_and_drops_hop_by_hop() -> None:
    """Connection/Upgrade stay, Keep-Alive and fields Connection names go, Set-Cookie is added."""
    head = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade, X-Hop\r\n"
            b"X-Hop: 1\r\nKeep-Alive: 5\r\nX-Keep: 2\r\n\r\n")
    out = response_head(head, b"srv=a")
    assert out == (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   b"X-Keep: 2\r\nSet-Cookie: srv=a\r\n\r\n")
    assert parse_frames(b"") == []
