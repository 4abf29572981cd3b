"""wsrelay's XOR (masking and unmasking, RFC 6455 section 5.3) gives exactly what Autobahn's native
masker gives, and Autobahn's own protocol module is left as it is."""

from __future__ import annotations

import os
import random

import pytest
from autobahn.nvx._xormasker import create_xor_masker as native_masker
from autobahn.websocket import protocol
from autobahn.websocket.xormasker import create_xor_masker as autobahn_masker

from wsrelay.websocket.frames import SMALL_XOR, xor


@pytest.mark.parametrize("size", [0, 1, 2, 3, 4, 5, 7, 63, 64, 125, 126, 1023, 1024, 1025, 70000])
def test_xor_matches_native_below_and_above_the_small_size(size: int) -> None:
    """Big-integer XOR up to SMALL_XOR bytes, the native masker above: the same bytes."""
    rng = random.Random(size)
    for _ in range(20):
        mask, data = os.urandom(4), rng.randbytes(size)
        assert xor(data, mask) == native_masker(mask, size).process(data)
    assert xor(b"abc", b"\x00\x00\x00\x00") == b"abc"


def test_masking_twice_restores_the_payload() -> None:
    """XOR with the same key twice gives the payload back, on either side of SMALL_XOR."""
    mask = b"\x01\x80\xff\x7e"
    for data in (bytes(range(256)) * 3, bytes(range(256)) * (SMALL_XOR // 64)):
        assert xor(xor(data, mask), mask) == data


def test_autobahn_keeps_its_own_masker() -> None:
    """wsrelay patches nothing of Autobahn's masking: its protocol module's masker is its own."""
    from tests.test_websocket import Harness

    Harness()  # a gateway, as wsrelay starts one
    assert protocol.create_xor_masker is autobahn_masker
