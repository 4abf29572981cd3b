"""``ws_max_message_rate``: the client's messages per second on one relayed WebSocket, in memory
on a fake clock (the real process: tests/test_caps_process.py)."""

from __future__ import annotations

import struct

import pytest

from tests.test_websocket import Harness, frame
from tests.test_ws_lean import open_pair
from tests.test_ws_masks import masked_frames
from wsrelay import config
from wsrelay.config import ConfigError

RATE = "ws_max_message_rate = 2\nws_message_burst = 3"


def closes(frames: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
    return [struct.unpack("!H", p[:2]) + (p[2:],) for op, p in frames if op == 8]  # type: ignore[misc]


def test_client_over_the_rate_gets_1008_and_its_upstream_1001() -> None:
    """Three messages at once (the burst) reach the upstream; the fourth is not relayed: the client
    gets 1008 with a reason, the upstream 1001, one log line; once the client answers the close,
    its connection is closed."""
    h = Harness(RATE)
    client, upstream, pair = open_pair(h)
    for i in range(4):
        client.transport.write(frame(1, b"m%d" % i))
    h.settle()
    assert [(op, p) for op, _, p in masked_frames(upstream.received)][:3] == [(1, b"m0"), (1, b"m1"), (1, b"m2")]
    assert closes([(op, p) for op, _, p in masked_frames(upstream.received)]) == [(1001, b"client went away")]
    assert [(op, p) for _, op, p in client.frames] == [(8, struct.pack("!H", 1008) + b"message rate limit exceeded")]
    assert h.gateway.websocket.rate_closes == 1
    client.transport.write(frame(1, b"dropped") + frame(8, struct.pack("!H", 1008)))
    h.settle()
    assert client.lost
    assert b"dropped" not in b"".join(p for _, _, p in masked_frames(upstream.received))
    snapshot = h.gateway.websocket.metrics.snapshot()["/"]["hops"]["client"]
    assert snapshot["closes_out"] == {"1008": 1}


def test_tokens_come_back_at_the_rate_on_the_clock() -> None:
    """After the burst, one more message passes once 1/rate seconds have gone by on the reactor's
    clock; the next one at the same instant is over the rate."""
    h = Harness(RATE)
    client, upstream, _ = open_pair(h)
    for i in range(3):
        client.transport.write(frame(1, b"m%d" % i))
    h.settle()
    h.clock.advance(0.5)
    client.transport.write(frame(2, b"late"))
    h.settle()
    assert [p for op, _, p in masked_frames(upstream.received)] == [b"m0", b"m1", b"m2", b"late"]
    client.transport.write(frame(2, b"over"))
    h.settle()
    assert [op for _, op, _ in client.frames] == [8]


def test_fragmented_message_counts_when_it_begins_and_upstream_is_not_limited() -> None:
    """A fragmented message over the rate is refused at its first frame (nothing of it is
    relayed); the upstream's messages are never limited."""
    h = Harness("ws_max_message_rate = 1\nws_message_burst = 1")
    client, upstream, _ = open_pair(h)
    for i in range(10):
        upstream.transport.write(frame(1, b"u%d" % i, mask=False))
    h.settle()
    assert [p for _, op, p in client.frames] == [b"u%d" % i for i in range(10)]
    client.transport.write(frame(1, b"one"))
    client.transport.write(frame(1, b"frag", fin=False) + frame(0, b"ment"))
    h.settle()
    sent = [(op, p) for op, _, p in masked_frames(upstream.received)]
    assert sent[0] == (1, b"one") and all(p not in (b"frag", b"ment") for _, p in sent)
    assert client.frames[-1][1] == 8


def test_log_lines_about_the_rate_are_rate_limited() -> None:
    """Many clients over the rate within a few seconds: one log line, the count goes on."""
    h = Harness("ws_max_message_rate = 1\nws_message_burst = 1")
    lines: list[str] = []
    from twisted.logger import globalLogPublisher

    def observe(event: dict) -> None:  # type: ignore[type-arg]
        if "ws_max_message_rate" in event.get("log_format", ""):
            lines.append(event["log_format"])

    globalLogPublisher.addObserver(observe)
    try:
        for _ in range(3):
            client, _, _ = open_pair(h)
            client.transport.write(frame(1, b"a") + frame(1, b"b"))
            h.settle()
    finally:
        globalLogPublisher.removeObserver(observe)
    assert len(lines) == 1
    assert h.gateway.websocket.rate_closes == 3


@pytest.mark.parametrize("text, key, message", [
    ("ws_max_message_rate = fast", "ws_max_message_rate", "is not a rate"),
    ("ws_max_message_rate = 0.0001", "ws_max_message_rate", "out of range"),
    ("ws_message_burst = 5", "ws_message_burst", "only applies with ws_max_message_rate"),
    ("ws_max_message_rate = 5\nws_message_burst = 0", "ws_message_burst", "out of range"),
    ("ws_max_message_rate = 5\nws_mode = tunnel", "ws_max_message_rate", "only applies with ws_mode = relay"),
])
def test_bad_rate_settings_name_the_key(text: str, key: str, message: str) -> None:
    """Each bad value stops the configuration with the route section and the key named."""
    with pytest.raises(ConfigError) as e:
        config.parse(f"[wsrelay]\nlisten = tcp:0\n[upstream u]\nservers = 127.0.0.1:1\n[route /]\nupstream = u\n{text}\n")
    assert (e.value.section, e.value.key) == ("route /", key) and message in str(e.value)


@pytest.mark.parametrize("text, rate, burst", [
    ("50", 50.0, 50), ("50/s", 50.0, 50), ("30/m", 0.5, 1), ("2.5 r/s", 2.5, 3), ("off", None, 1),
])
def test_rate_syntax_and_default_burst(text: str, rate: float | None, burst: int) -> None:
    """Per second or per minute, nginx's ``r/s`` accepted; the burst defaults to one second's worth."""
    cfg = config.parse(f"[wsrelay]\nlisten = tcp:0\n[upstream u]\nservers = 127.0.0.1:1\n[route /]\nupstream = u\n"
                       f"ws_max_message_rate = {text}\n")
    ws = cfg.routes[0].websocket
    assert (ws.max_message_rate, ws.message_burst) == (rate, burst)
