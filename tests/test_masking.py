"""wsrelay's masker for small frames gives exactly what Autobahn's native masker gives."""

from __future__ import annotations

import os
import random

import pytest
from autobahn.nvx._xormasker import create_xor_masker as native_masker
from autobahn.websocket import protocol

from wsrelay import masking


def pieces(data: bytes, rng: random.Random) -> list[bytes]:
    out, i = [], 0
    while i < len(data):
        n = rng.randint(1, 9)
        out.append(data[i:i + n])
        i += n
    return out


@pytest.mark.parametrize("size", [0, 1, 2, 3, 4, 5, 7, 63, 64, 125, 126, 1023, 1024])
def test_small_masker_matches_native_whole_and_in_pieces(size: int) -> None:
    rng = random.Random(size)
    for _ in range(20):
        mask, data = os.urandom(4), os.urandom(size)
        expected = native_masker(mask, size).process(data)
        assert masking.SmallMasker(mask).process(data) == expected
        masker = masking.SmallMasker(mask)
        assert b"".join(masker.process(p) for p in pieces(data, rng)) == expected
        assert masker.pointer() == size
        masker.reset()
        assert masker.pointer() == 0 and masker.process(data) == expected
    assert masking.SmallMasker(b"\x00\x00\x00\x00").process(b"abc") == b"abc"


def test_masking_twice_restores_the_payload() -> None:
    mask, data = b"\x01\x80\xff\x7e", bytes(range(256)) * 3
    assert masking.SmallMasker(mask).process(masking.SmallMasker(mask).process(data)) == data


def test_a_key_is_four_bytes() -> None:
    with pytest.raises(ValueError, match="4 bytes"):
        masking.SmallMasker(b"abc")


def test_install_routes_small_frames_to_the_small_masker_and_large_ones_to_autobahn() -> None:
    masking.install()
    masking.install()  # idempotent: the native masker is kept, not replaced by ours
    assert protocol.create_xor_masker is masking.create_xor_masker
    assert isinstance(protocol.create_xor_masker(b"abcd", masking.SMALL), masking.SmallMasker)
    large = protocol.create_xor_masker(b"abcd", masking.SMALL + 1)
    assert not isinstance(large, masking.SmallMasker)
    data = os.urandom(masking.SMALL + 1)
    assert large.process(data) == native_masker(b"abcd", len(data)).process(data)
