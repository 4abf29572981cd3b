"""Bounds on what a WebSocket peer can make wsrelay hold, in memory: pongs toward a peer that does
not read (and the pause reasons behind them), inflation of compressed messages."""

from __future__ import annotations

import struct
import tracemalloc
import zlib

from tests.test_tunnel import PausableTransport
from tests.test_websocket import Harness, RawClient, RawUpstream, frame, handshake, parse_frames
from wsrelay.flow import OWN_FULL, PEER_FULL, BufferWatch, ReadGate
from wsrelay.websocket.deflate import INFLATE_STEP

KiB = 1024


class BufferedTransport(PausableTransport):
    """An iosim transport that behaves like a TCP one toward its producer and its protocol: it
    pauses its producer when more than ``bufferSize`` bytes wait to be written and resumes it
    when they have gone; while its peer is ``stalled`` (reads nothing) they never go; while it is
    paused it hands its protocol nothing (what arrives is ``held``, as the kernel would)."""

    bufferSize = 64 * KiB
    stalled = False
    producerPaused = False

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


# -- inflation ------------------------------------------------------------------------------

GiB = 1024 * 1024 * KiB


def deflate_bomb(size: int) -> bytes:
    """A permessage-deflate payload (RFC 7692: raw deflate, sync flush, trailer cut) of ``size`` zeros."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    zeros = bytes(1024 * KiB)
    parts = [c.compress(zeros) for _ in range(size // len(zeros))]
    parts.append(c.flush(zlib.Z_SYNC_FLUSH))
    return b"".join(parts)[:-4]


class CountingUpstream(RawUpstream):
    """A raw upstream that counts what it receives after the handshake instead of keeping it."""

    octets = 0

    def dataReceived(self, data: bytes) -> None:
        if not self.request:
            super().dataReceived(data)
            self.octets, self.received = len(self.received), b""
        else:
            self.octets += len(data)


def test_compressed_bomb_with_no_message_limit_is_inflated_in_bounded_steps() -> None:
    """ws_max_message_size = 0 (no limit): a 1 MiB compressed message that inflates to 1 GiB is
    inflated a step at a time and streamed upstream as frames.  While the upstream does not read,
    wsrelay stops inflating after a buffer's worth; memory stays within a few MiB (tracemalloc)
    until the whole GiB has reached the upstream, and the pair stays open."""
    h = Harness("ws_max_message_size = 0\nws_max_frame_size = 0")
    h.transport_type = BufferedTransport
    client = h.raw_client(handshake(extra=[b"Sec-WebSocket-Protocol: chat",
                                           b"Sec-WebSocket-Extensions: permessage-deflate"]))
    upstream = CountingUpstream()
    toward_upstream = h.accept_raw(upstream)
    assert b"permessage-deflate" in client.head
    bomb = deflate_bomb(GiB)
    assert len(bomb) < 2 * 1024 * KiB
    message = bytearray(frame(2, bomb))
    message[0] |= 0x40  # RSV1: compressed
    toward_upstream.stalled = True
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        client.transport.write(bytes(message))
        del message, bomb
        h.settle()
        held = toward_upstream.pending()
        assert held <= toward_upstream.bufferSize + 2 * INFLATE_STEP, f"{held} bytes inflated toward the upstream"
        toward_upstream.stalled = False
        for _ in range(100000):
            if not any([p.pump() for p in h.pumps]):
                break
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert upstream.octets > GiB
    assert peak < 16 * 1024 * KiB, f"peak {peak // KiB} KiB while inflating"
    assert h.gateway.live and not client.lost


def test_compressed_message_over_the_limit_gets_1009_after_a_bounded_inflation() -> None:
    """With a limit, a compressed message that inflates past it gets 1009 (the upstream 1001), and
    no more than the limit and a step was inflated."""
    h = Harness("ws_max_message_size = 1M\nws_max_frame_size = 1M")
    client = h.raw_client(handshake(extra=[b"Sec-WebSocket-Extensions: permessage-deflate"]))
    upstream = h.accept_upstream()
    message = bytearray(frame(2, deflate_bomb(64 * 1024 * KiB)))
    message[0] |= 0x40
    client.transport.write(bytes(message))
    h.settle()
    assert client.frames[-1][1:] == (8, struct.pack("!H", 1009) + client.frames[-1][2][2:])
    assert upstream.close()[2] == 1001


def test_a_watch_paused_again_while_resuming_keeps_its_remaining_holds() -> None:
    """A reader resumed by a drained buffer may fill it again at once: the holds not yet released
    stay held (each gate's reasons match the buffer's state)."""
    first = ReadGate(lambda: None, lambda: watch.pauseProducing())
    second = ReadGate(lambda: None, lambda: None)
    watch = BufferWatch([(first, PEER_FULL), (second, OWN_FULL)])
    watch.pauseProducing()
    watch.resumeProducing()
    assert first.reasons == {PEER_FULL} and second.reasons == {OWN_FULL}
