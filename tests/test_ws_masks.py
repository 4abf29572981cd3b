"""Masking keys of the frames wsrelay sends upstream come from os.urandom (RFC 6455 section 10.3)."""

from __future__ import annotations

import struct
from collections.abc import Iterator

import pytest

from tests.test_websocket import Harness, RawUpstream, frame, handshake
from wsrelay import masking


class CountingSource:
    """Stands in for os.urandom: distinct, known bytes, and a record of each call."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.given = b""

    def __call__(self, n: int) -> bytes:
        self.calls.append(n)
        start = len(self.given)
        out = b"".join(struct.pack("!I", 0x5A000000 + start + 4 * i) for i in range((n + 3) // 4))[:n]
        self.given += out
        return out


@pytest.fixture
def source(monkeypatch: pytest.MonkeyPatch) -> Iterator[CountingSource]:
    fake = CountingSource()
    monkeypatch.setattr(masking.KEYS, "source", fake)
    masking.KEYS.discard()
    yield fake
    masking.KEYS.discard()


def masked_frames(data: bytes) -> list[tuple[int, bytes, bytes]]:
    """Client-to-server frames as ``(opcode, masking key, unmasked payload)``."""
    frames = []
    while data:
        opcode, n = data[0] & 0x0F, data[1] & 0x7F
        assert data[1] & 0x80, "a frame toward the upstream must be masked"
        pos = 2
        if n == 126:
            n, pos = struct.unpack("!H", data[2:4])[0], 4
        elif n == 127:
            n, pos = struct.unpack("!Q", data[2:10])[0], 10
        key, payload = data[pos:pos + 4], data[pos + 4:pos + 4 + n]
        frames.append((opcode, key, bytes(b ^ key[i % 4] for i, b in enumerate(payload))))
        data = data[pos + 4 + n:]
    return frames


def test_keys_come_from_one_pool_drawn_again_when_used_up(source: CountingSource) -> None:
    """Each 32-bit key is 4 bytes of a pool of KEY_POOL bytes from the source; the pool is drawn
    again only when it is used up, and no key is given twice."""
    per_pool = masking.KEY_POOL // 4
    keys = [struct.pack("!I", masking.KEYS.getrandbits(32)) for _ in range(per_pool + 1)]
    assert source.calls == [masking.KEY_POOL, masking.KEY_POOL]
    pools = [source.given[i:i + masking.KEY_POOL] for i in (0, masking.KEY_POOL)]
    assert sorted(keys[:per_pool]) == sorted(pools[0][i:i + 4] for i in range(0, masking.KEY_POOL, 4))
    assert keys[-1] in pools[1]
    assert len(set(keys)) == len(keys)
    assert 0 <= masking.KEYS.getrandbits(3) < 8 and source.calls[-1] == 1
    masking.KEYS.seed()  # what Autobahn calls for each factory: harmless


def test_every_frame_sent_upstream_is_masked_with_a_key_from_the_source(source: CountingSource) -> None:
    """A whole message, a message streamed in frames, and a close frame, relayed to the
    upstream: each frame's key comes from the patched source, and no two frames share a key."""
    h = Harness("ws_compression = off")
    client = h.raw_client(handshake(extra=[b"Sec-WebSocket-Protocol: chat"]))
    upstream = RawUpstream()
    h.accept_raw(upstream)
    assert client.head.startswith(b"HTTP/1.1 101")
    big = bytes(range(256)) * 1024  # 256 KiB: streamed (begun, frame, empty final frame)
    client.transport.write(frame(2, b"one") + frame(1, b"two") + frame(2, big) + frame(8, struct.pack("!H", 1000)))
    h.settle()
    frames = masked_frames(upstream.received)
    assert [f[0] for f in frames[:2]] == [2, 1] and frames[-1][0] == 8
    assert len(frames) >= 5 and frames[-2][0] == 0  # the large one ends with a continuation frame
    assert b"".join(f[2] for f in frames[2:-1]) == big
    keys = [f[1] for f in frames]
    assert len(set(keys)) == len(keys)
    assert source.calls and all(key in source.given for key in keys)
