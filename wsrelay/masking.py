"""WebSocket payload masking (RFC 6455 section 5.3) that is cheap for small frames.

Autobahn builds a masker object for every masked frame: to unmask each frame a client sends and
to mask each frame wsrelay sends upstream.  Its native (NVX, CFFI) masker XORs fast but costs about
7 microseconds to construct, more than masking a 1 KiB payload takes in Python with one big-integer
XOR.  In relay mode with small messages that constructor was about 9 % of wsrelay's CPU time
(``bench/PROFILE.rst``).

:func:`create_xor_masker` keeps Autobahn's masker for payloads over :data:`SMALL` bytes and uses
:class:`SmallMasker` below that; :func:`install` makes Autobahn's WebSocket protocol use it.  Both
maskers follow Autobahn's interface (``process``, ``pointer``, ``reset``); the payload may come in
pieces (a frame read in several TCP segments), so the key position carries over between calls.
"""

from __future__ import annotations

from typing import Any, Callable

#: Payloads up to this size are masked by :class:`SmallMasker` (measured break-even: 1-2 KiB).
SMALL = 1024


class SmallMasker:
    """XORs with the 4-byte key as one integer operation over the whole piece."""

    __slots__ = ("_key", "_ptr")

    def __init__(self, mask: bytes) -> None:
        if len(mask) != 4:
            raise ValueError(f"a WebSocket masking key is 4 bytes, not {len(mask)}")
        self._key = mask
        self._ptr = 0

    def pointer(self) -> int:
        return self._ptr

    def reset(self) -> None:
        self._ptr = 0

    def process(self, data: bytes) -> bytes:
        n = len(data)
        if n == 0:
            return b""
        shift = self._ptr & 3
        self._ptr += n
        key = self._key[shift:] + self._key[:shift] if shift else self._key
        stream = key * ((n >> 2) + 1)
        masked = int.from_bytes(data, "little") ^ int.from_bytes(stream[:n], "little")
        return masked.to_bytes(n, "little")


_native: Callable[..., Any] | None = None


def create_xor_masker(mask: bytes, length: int | None = None) -> Any:
    """A masker for a frame of ``length`` payload bytes (Autobahn's ``create_xor_masker`` signature)."""
    if length is not None and length <= SMALL:
        return SmallMasker(mask)
    assert _native is not None, "install() first"
    return _native(mask, length)


def install() -> None:
    """Make Autobahn's WebSocket protocol (both the server and the client side) build its maskers
    with :func:`create_xor_masker`.  Idempotent; the rest of Autobahn is untouched."""
    global _native
    from autobahn.websocket import protocol

    current = protocol.create_xor_masker
    if current is create_xor_masker:
        return
    _native = current
    protocol.create_xor_masker = create_xor_masker
