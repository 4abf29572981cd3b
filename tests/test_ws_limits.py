"""Bounds on what a WebSocket peer can make wsrelay hold, in memory: pongs toward a peer that does
not read (and the pause reasons behind them), inflation of compressed messages."""

from __future__ import annotations

from twisted.test import iosim

from tests.test_websocket import Harness, RawClient, frame, handshake, parse_frames
from wsrelay.flow import OWN_FULL, PEER_FULL, BufferWatch, ReadGate

KiB = 1024


class BufferedTransport(iosim.FakeTransport):
    """An iosim transport that behaves like a TCP one toward its producer and its protocol: it
    pauses its producer when more than ``bufferSize`` bytes wait to be written and resumes it
    when they have gone; while its peer is ``stalled`` (reads nothing) they never go; while it is
    paused it hands its protocol nothing (what arrives is ``held``, as the kernel would)."""

    bufferSize = 64 * KiB
    stalled = False
    paused = False
    producerPaused = False
    held = b""

    def pending(self) -> int:
        return sum(len(chunk) for chunk in self.stream)

    def write(self, data: bytes) -> None:
        super().write(data)
        if (self.producer is not None and self.streamingProducer and not self.producerPaused
                and self.pending() > self.bufferSize):
            self.producerPaused = True
            self.producer.pauseProducing()

    def getOutBuffer(self) -> bytes | None:
        if self.stalled:
            return None
        out = super().getOutBuffer()
        if self.producerPaused and self.producer is not None:
            self.producerPaused = False
            self.producer.resumeProducing()
        return out

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


def open_raw_pair(h: Harness) -> tuple[RawClient, object]:
    h.transport_type = BufferedTransport
    client = h.raw_client(handshake())
    upstream = h.accept_upstream()
    assert client.head.startswith(b"HTTP/1.1 101") and upstream.opened
    return client, next(iter(h.gateway.live))


# -- pause reasons ---------------------------------------------------------------------------


def test_read_gate_resumes_only_when_every_reason_is_gone() -> None:
    """A gate pauses at its first reason and resumes at its last; a reason counts once."""
    calls: list[str] = []
    gate = ReadGate(lambda: calls.append("pause"), lambda: calls.append("resume"))
    gate.hold(PEER_FULL)
    gate.hold(OWN_FULL)
    gate.hold(OWN_FULL)
    assert calls == ["pause"] and gate.paused
    gate.release(PEER_FULL)
    gate.release(PEER_FULL)
    assert calls == ["pause"] and gate.reasons == {OWN_FULL}
    gate.release(OWN_FULL)
    assert calls == ["pause", "resume"] and not gate.paused
    gate.release(OWN_FULL)
    assert calls == ["pause", "resume"]


def test_each_full_buffer_pauses_both_legs_and_reading_resumes_when_both_drain() -> None:
    """The client's buffer full: wsrelay stops reading the upstream (back-pressure) and the client
    (its own pongs).  The upstream's buffer full as well: both stay paused until both drain."""
    h = Harness()
    client, pair = open_raw_pair(h)
    client_leg, upstream_leg = pair.client_leg, pair.upstream_leg
    toward_client, toward_upstream = client_leg.transport, upstream_leg.transport
    assert isinstance(toward_client.producer, BufferWatch) and isinstance(toward_upstream.producer, BufferWatch)
    toward_client.producer.pauseProducing()
    assert client_leg.gate.reasons == {OWN_FULL} and upstream_leg.gate.reasons == {PEER_FULL}
    assert toward_client.paused
    toward_upstream.producer.pauseProducing()
    assert client_leg.gate.reasons == {OWN_FULL, PEER_FULL} == upstream_leg.gate.reasons
    toward_client.producer.resumeProducing()
    assert client_leg.gate.reasons == {PEER_FULL} and toward_client.paused
    toward_upstream.producer.resumeProducing()
    assert not client_leg.gate.paused and not upstream_leg.gate.paused and not toward_client.paused


def test_client_that_pings_and_never_reads_is_no_longer_read() -> None:
    """A client floods pings (4 MiB) and reads nothing: once a buffer's worth of pongs waits for it,
    wsrelay stops reading it, so what wsrelay holds toward it stays bounded (the rest of the flood
    waits unread, as it would in the kernel's buffers).  Once the client reads, every ping gets its
    pong and the pair still relays messages."""
    h = Harness()
    client, pair = open_raw_pair(h)
    toward_client = h.server_io
    toward_client.stalled = True
    ping = frame(9, b"p" * 125)
    batch = ping * 64  # 8.4 KiB, about what one read of a busy socket brings
    batches = 4 * 1024 * KiB // len(batch)
    most = 0
    for _ in range(batches):
        client.transport.write(batch)
        h.settle()
        most = max(most, toward_client.pending())
    assert most <= toward_client.bufferSize + len(batch) + 1024, f"{most} bytes queued toward the client"
    assert toward_client.paused and pair.client_leg.gate.reasons == {OWN_FULL}
    assert len(toward_client.held) > 3 * 1024 * KiB  # the flood is not read while the client does not read
    toward_client.stalled = False
    h.settle()
    pongs = [f for f in client.frames if f[1] == 10]
    assert len(pongs) == batches * 64 and pongs[0][2] == b"p" * 125
    client.transport.write(frame(1, b"still relayed"))
    h.settle()
    assert h.upstreams[-1].messages() == [(b"still relayed", False)]
    assert parse_frames(client.received.partition(b"\r\n\r\n")[2])[-1] == (True, 1, b"still relayed")



def test_client_that_never_reads_is_still_dropped_by_its_ping_timeout() -> None:
    """wsrelay stopped reading a client that does not read (not the other side's doing), so its
    ping timeout is not excused: it is dropped, and the upstream gets 1001."""
    h = Harness("ws_ping_interval = 2s\nws_ping_timeout = 1s")
    client, pair = open_raw_pair(h)
    h.server_io.stalled = True
    for _ in range(16):
        client.transport.write(frame(9, b"p" * 125) * 64)
        h.settle()
    assert pair.client_leg.gate.reasons == {OWN_FULL}
    h.advance(4)
    assert client.lost and not h.gateway.live
    assert h.upstreams[-1].close()[2] == 1001
