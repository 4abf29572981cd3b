"""The lean relay path: which pairs take it, what an open pair keeps, and the frame reader's
checks, in memory (the Autobahn testsuite covers the wire in tests/test_autobahn.py)."""

from __future__ import annotations

import gc
import struct
import types
from collections import Counter
from typing import Any

import pytest
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet.base import DelayedCall
from twisted.test import iosim
from twisted.web.http import HTTPChannel, Request

from tests.test_websocket import Harness, RawClient, RawUpstream, frame, handshake
from tests.test_ws_masks import masked_frames
from wsrelay.errors import CLOSE_INVALID_PAYLOAD, CLOSE_MESSAGE_TOO_BIG, CLOSE_PROTOCOL_ERROR
from wsrelay.metrics import HopCounters
from wsrelay.websocket.reader import FrameReader
from wsrelay.websocket.lean import LeanLeg

#: Objects one open, idle lean pair may keep alive of its own (measured: 44 on CPython 3.11).
MOST_OBJECTS = 60


def open_pair(h: Harness, *extra: bytes) -> tuple[RawClient, RawUpstream, Any]:
    client = h.raw_client(handshake(extra=[b"Sec-WebSocket-Protocol: chat", *extra]))
    upstream = RawUpstream()
    h.accept_raw(upstream)
    assert client.head.startswith(b"HTTP/1.1 101"), client.head
    return client, upstream, next(iter(h.gateway.live))


def test_pair_without_compression_takes_the_lean_path_and_relays() -> None:
    """No extension on either hop: both connections leave Autobahn for lean legs, and messages
    go both ways (the upstream's own frame bytes reach the client unchanged)."""
    h = Harness()
    client, upstream, pair = open_pair(h)
    assert pair.path == "lean"
    assert isinstance(pair.client_leg, LeanLeg) and isinstance(pair.upstream_leg, LeanLeg)
    client.transport.write(frame(1, b"hello"))
    h.settle()
    assert [(op, payload) for op, _, payload in masked_frames(upstream.received)] == [(1, b"hello")]
    raw = frame(2, b"\x00\x01", mask=False)
    upstream.transport.write(raw)
    h.settle()
    assert client.received.endswith(raw)
    assert h.gateway.websocket.metrics.snapshot()["/"]["paths"] == {"lean": 1}


def test_pair_with_permessage_deflate_takes_the_lean_path_and_compresses_that_hop_only() -> None:
    """permessage-deflate negotiated toward the client only: the pair is lean, a compressed message
    from the client reaches the upstream inflated (no RSV1: nothing negotiated there), and the
    upstream's message reaches the client compressed (RSV1, raw deflate with the tail removed)."""
    import zlib

    h = Harness()
    client, upstream, pair = open_pair(h, b"Sec-WebSocket-Extensions: permessage-deflate")
    assert b"permessage-deflate" in client.head
    assert pair.path == "lean" and isinstance(pair.client_leg, LeanLeg)
    assert pair.client_leg.deflater is not None and pair.upstream_leg.deflater is None
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    text = ("héllo " * 50).encode()
    compressed = bytearray(frame(1, (c.compress(text) + c.flush(zlib.Z_SYNC_FLUSH))[:-4]))
    compressed[0] |= 0x40
    client.transport.write(bytes(compressed))
    h.settle()
    frames = masked_frames(upstream.received)
    assert [(f[0], f[2]) for f in frames] == [(1, text)]
    assert upstream.received[0] & 0x70 == 0
    upstream.transport.write(frame(2, bytes(1000), mask=False))
    h.settle()
    last = client.received.partition(b"\r\n\r\n")[2]
    assert last[0] == 0xC2 and last[1] == len(last) - 2  # FIN, RSV1, binary; one frame
    inflated = zlib.decompressobj(-15).decompress(last[2:] + b"\x00\x00\xff\xff")
    assert inflated == bytes(1000)
    assert h.gateway.websocket.metrics.snapshot()["/"]["paths"] == {"lean": 1}


def held_objects(pair: Any, shared: list[Any]) -> dict[int, Any]:
    """Every object reachable from ``pair``, not through what all pairs share (the gateway, the
    clock, the route, the metrics...) nor through the transports, classes, modules and functions."""
    stop = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.CodeType,
            iosim.FakeTransport, HopCounters)
    skip = {id(o) for o in shared}
    seen: dict[int, Any] = {}
    todo = [pair]
    while todo:
        o = todo.pop()
        if id(o) in seen or id(o) in skip or isinstance(o, stop):
            continue
        seen[id(o)] = o
        todo.extend(gc.get_referents(o))
    return seen


def test_open_idle_pair_keeps_nothing_of_the_handshake() -> None:
    """Once open, a pair holds no twisted.web request or channel, no Autobahn protocol, no
    timer that fired or was cancelled, and few objects in all (a regression fails here, not in a
    benchmark).  Against the Autobahn path of before this change it finds the request, both
    Autobahn protocols and about 440 objects."""
    h = Harness()
    _, _, pair = open_pair(h)
    held = held_objects(pair, [h.gateway, h.clock, h.config, pair.route, pair.upstream, pair.gw,
                               pair.metrics, pair.lease])
    kinds = Counter(type(o).__name__ for o in held.values())
    bad = [o for o in held.values() if isinstance(o, (Request, HTTPChannel, WebSocketProtocol))
           or (isinstance(o, DelayedCall) and (o.called or o.cancelled))]
    assert not bad, bad
    assert len(held) <= MOST_OBJECTS, kinds.most_common(20)
    assert all(not hasattr(o, "__dict__") for o in held.values() if isinstance(o, LeanLeg))


# -- the frame reader ---------------------------------------------------------------------------


class Reader(FrameReader):
    """Records what a FrameReader reports."""

    __slots__ = ("events",)

    def __init__(self, **options: Any) -> None:
        super().__init__(**{"masked": True, "chunk": 16, **options})
        self.events: list[tuple[Any, ...]] = []

    def on_message(self, payload: bytes, binary: bool, raw: bytes | None) -> None:
        self.events.append(("message", payload, binary))

    def on_begin(self, binary: bool) -> None:
        self.events.append(("begin", binary))

    def on_data(self, payload: bytes) -> None:
        self.events.append(("data", payload))

    def on_frame_end(self) -> None:
        self.events.append(("frame end",))

    def on_message_end(self) -> None:
        self.events.append(("end",))

    def on_ping(self, payload: bytes) -> None:
        self.events.append(("ping", payload))

    def on_pong(self, payload: bytes) -> None:
        self.events.append(("pong", payload))

    def on_close(self, code: int | None, reason: str) -> None:
        self.events.append(("close", code, reason))

    def on_error(self, code: int, reason: str) -> None:
        self.events.append(("error", code))


def feed_bytewise(reader: FrameReader, data: bytes) -> None:
    for i in range(len(data)):
        reader.feed(data[i:i + 1])


@pytest.mark.parametrize("split", [False, True])
def test_reader_delivers_small_messages_whole_and_large_ones_in_pieces(split: bool) -> None:
    """Whole or byte by byte: a small message is one event, a fragmented one is relayed per
    fragment, a frame over ``chunk`` comes in pieces of at most ``chunk`` bytes."""
    r = Reader()
    data = (frame(1, "héllo".encode()) + frame(2, b"ab", fin=False) + frame(0, b"cd")
            + frame(2, bytes(40)) + frame(9, b"p") + frame(8, struct.pack("!H", 4000) + b"bye"))
    feed_bytewise(r, data) if split else r.feed(data)
    pieces = [e for e in r.events[6:] if e[0] == "data"]
    assert r.events[:6] == [("message", "héllo".encode(), False), ("begin", True), ("data", b"ab"),
                            ("frame end",), ("data", b"cd"), ("end",)]
    assert b"".join(p[1] for p in pieces) == bytes(40) and all(len(p[1]) <= 16 for p in pieces)
    assert r.events[-2:] == [("ping", b"p"), ("close", 4000, "bye")]


@pytest.mark.parametrize("data,code", [
    (frame(1, b"x", mask=False), CLOSE_PROTOCOL_ERROR),  # a client must mask
    (bytes([0xC1]) + frame(1, b"x")[1:], CLOSE_PROTOCOL_ERROR),  # RSV1 with no extension
    (frame(3, b"x"), CLOSE_PROTOCOL_ERROR),  # reserved data opcode
    (frame(11, b"x"), CLOSE_PROTOCOL_ERROR),  # reserved control opcode
    (frame(9, b"x", fin=False), CLOSE_PROTOCOL_ERROR),  # fragmented control frame
    (frame(9, bytes(126)), CLOSE_PROTOCOL_ERROR),  # control frame over 125 bytes
    (frame(0, b"x"), CLOSE_PROTOCOL_ERROR),  # continuation of nothing
    (frame(1, b"a", fin=False) + frame(1, b"b"), CLOSE_PROTOCOL_ERROR),  # new message inside one
    (frame(8, struct.pack("!H", 1005)), CLOSE_PROTOCOL_ERROR),  # a code never on the wire
    (frame(8, b"\x03"), CLOSE_PROTOCOL_ERROR),  # a 1-byte close payload
    (frame(8, struct.pack("!H", 1000) + b"\xff"), CLOSE_INVALID_PAYLOAD),  # reason not UTF-8
    (frame(1, b"ok\xff"), CLOSE_INVALID_PAYLOAD),
    (frame(1, b"\xce", fin=False) + frame(0, b"\xbb\xff"), CLOSE_INVALID_PAYLOAD),  # across fragments
    (frame(2, bytes(101)), CLOSE_MESSAGE_TOO_BIG),  # frame over max_frame
    (frame(2, bytes(60), fin=False) + frame(0, bytes(60), fin=False) + frame(0, bytes(60), fin=False)
     + frame(0, bytes(60)), CLOSE_MESSAGE_TOO_BIG),  # message over max_message
])
def test_reader_refuses_what_rfc_6455_forbids_with_the_right_code(data: bytes, code: int) -> None:
    """Each breach ends reading with its close code (1002, 1007, 1009); nothing after it is read."""
    r = Reader(max_frame=100, max_message=200)
    r.feed(data + frame(1, b"after"))
    assert r.events[-1] == ("error", code) and r.done
    assert ("message", b"after", False) not in r.events


def test_reader_fails_invalid_utf8_before_the_frame_is_complete() -> None:
    """Text is checked as it arrives: the first bad byte fails the frame, its end unread."""
    r = Reader()
    whole = frame(1, b"abc\xf4\x90\x80\x80def")
    r.feed(whole[:2 + 4 + 5])
    assert r.events == [("error", CLOSE_INVALID_PAYLOAD)]


def test_reader_of_a_server_refuses_masked_frames() -> None:
    """Frames from an upstream must not be masked (1002)."""
    r = Reader(masked=False)
    r.feed(frame(2, b"x", mask=False) + frame(2, b"y"))
    assert r.events == [("message", b"x", True), ("error", CLOSE_PROTOCOL_ERROR)]


def test_handshake_protocols_are_freed_once_the_pair_is_open(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both Autobahn protocols of the handshake are garbage once the lean legs have the
    connections: nothing keeps them (the endpoint keeps its connection Deferred for the life of the
    connection, so that Deferred must not hold the protocol as its result)."""
    import weakref

    from wsrelay.websocket import pair as pair_module

    retired: list[weakref.ref[Any]] = []
    original = pair_module.retire

    def recording(leg: Any) -> bytes:
        retired.append(weakref.ref(leg))
        return original(leg)

    monkeypatch.setattr(pair_module, "retire", recording)
    h = Harness()
    _, _, pair = open_pair(h)
    assert pair.path == "lean" and len(retired) == 2
    for pump in h.pumps:  # iosim's pumps keep the protocols they connected; a socket does not
        pump.client = pump.server = None
    gc.collect()
    assert [r() for r in retired] == [None, None]


def test_autobahn_pretty_prints_nothing_for_debug_lines_nobody_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Opening a pair formats none of Autobahn's debug lines (its per-connection pretty-printing of
    its options was about 40 % of a handshake's CPU); when formatted, a line reads as before."""
    from pprint import pformat

    from autobahn.websocket import protocol

    from wsrelay.websocket import legs

    calls: list[int] = []
    monkeypatch.setattr(protocol, "pformat", lambda *a, **k: calls.append(1) or pformat(*a, **k))
    h = Harness()  # the gateway makes Autobahn's pformat lazy again
    _, _, pair = open_pair(h)
    assert pair.path == "lean" and calls == []
    lazy = legs._LazyFormat([("option", 1, "Factory")])
    assert format(lazy) == str(lazy) == pformat([("option", 1, "Factory")])


@pytest.mark.parametrize("split", [False, True])
def test_reader_inflates_compressed_messages_in_steps_of_at_most_chunk(split: bool) -> None:
    """A compressed message that inflates to less than ``chunk`` is one message; one that
    inflates to more comes in steps of at most ``chunk`` bytes, whole or read byte by byte;
    RSV1 on a continuation frame is a protocol error."""
    import zlib

    from wsrelay.websocket.deflate import Inflater

    def compressed(payload: bytes, op: int = 2) -> bytes:
        c = zlib.compressobj(6, zlib.DEFLATED, -15)
        out = bytearray(frame(op, (c.compress(payload) + c.flush(zlib.Z_SYNC_FLUSH))[:-4]))
        out[0] |= 0x40
        return bytes(out)

    r = Reader(inflater=Inflater(15, True))
    data = compressed(b"tiny") + compressed(bytes(100)) + compressed("é".encode() * 20, op=1)
    feed_bytewise(r, data) if split else r.feed(data)
    messages, current = [], None
    for event in r.events:
        if event[0] == "message":
            messages.append((event[1], event[2], 1))
        elif event[0] == "begin":
            current = (b"", event[1], 0)
        elif event[0] == "data":
            assert current is not None and 0 < len(event[1]) <= 16
            current = (current[0] + event[1], current[1], current[2] + 1)
        elif event[0] == "end":
            messages.append(current)
    assert [(m[0], m[1]) for m in messages] == [(b"tiny", True), (bytes(100), True), ("é".encode() * 20, False)]
    assert messages[0][2] == 1 or split  # one event when it arrives whole
    bad = bytearray(frame(2, b"x", fin=False) + frame(0, b"y"))
    bad[7] |= 0x40  # RSV1 on the continuation
    r.feed(bytes(bad))
    assert r.events[-1] == ("error", CLOSE_PROTOCOL_ERROR)
