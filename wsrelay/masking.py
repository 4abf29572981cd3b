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

Masking keys come from the operating system's CSPRNG.  RFC 6455 section 10.3: "the masking key
MUST be derived from a strong source of entropy, and the masking key for a given frame MUST NOT
make it simple for a server or a proxy to predict the masking key for a subsequent frame."
Autobahn draws them from ``random.getrandbits`` (Mersenne Twister: 624 observed keys predict the
rest); :func:`install` gives its protocol module :data:`KEYS` in place of ``random``, which
takes each key from a pool of ``os.urandom`` bytes (one system call per 1,024 keys).
"""

from __future__ import annotations

import os
import random
import struct
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


#: Bytes of ``os.urandom`` drawn at once for masking keys.
KEY_POOL = 4096
_POOL_FORMAT = struct.Struct(f"!{KEY_POOL // 4}I")


class MaskKeys:
    """Stands in for the ``random`` module inside Autobahn's WebSocket protocol: ``getrandbits``
    (all Autobahn uses it for is a frame's 32-bit masking key) returns bits from ``source``
    (``os.urandom``), ``seed`` does nothing, anything else is the ``random`` module's."""

    def __init__(self, source: Callable[[int], bytes] = os.urandom) -> None:
        self.source = source
        self._keys: list[int] = []  # unused keys of the pool, taken from the end

    def discard(self) -> None:
        """Forget the unused pool (a forked child must not reuse its parent's keys)."""
        self._keys = []

    def getrandbits(self, k: int) -> int:
        if k == 32:
            keys = self._keys
            if not keys:
                keys = self._keys = list(_POOL_FORMAT.unpack(self.source(KEY_POOL)))
            return keys.pop()
        n = (k + 7) >> 3
        return int.from_bytes(self.source(n), "big") >> ((n << 3) - k)

    def key(self) -> bytes:
        """A 4-byte masking key, for frames wsrelay builds itself (the lean relay path)."""
        keys = self._keys
        if not keys:
            keys = self._keys = list(_POOL_FORMAT.unpack(self.source(KEY_POOL)))
        return keys.pop().to_bytes(4, "big")

    def seed(self, *args: Any, **kwargs: Any) -> None:
        """Autobahn reseeds its generator for every factory; there is nothing to seed here."""

    def __getattr__(self, name: str) -> Any:
        return getattr(random, name)


#: The masking keys of every frame wsrelay masks.
KEYS = MaskKeys()
os.register_at_fork(after_in_child=KEYS.discard)

_native: Callable[..., Any] | None = None


def create_xor_masker(mask: bytes, length: int | None = None) -> Any:
    """A masker for a frame of ``length`` payload bytes (Autobahn's ``create_xor_masker`` signature)."""
    if length is not None and length <= SMALL:
        return SmallMasker(mask)
    assert _native is not None, "install() first"
    return _native(mask, length)


def install() -> None:
    """Make Autobahn's WebSocket protocol (both the server and the client side) build its maskers
    with :func:`create_xor_masker` and draw its masking keys from :data:`KEYS`.  Idempotent; the
    rest of Autobahn is untouched.

    Autobahn has no public hook for either: its protocol module calls the module-level names
    ``create_xor_masker`` and ``random.getrandbits``, so those names are what is replaced.
    """
    global _native
    from autobahn.websocket import protocol

    protocol.random = KEYS  # type: ignore[attr-defined]
    current = protocol.create_xor_masker
    if current is create_xor_masker:
        return
    _native = current
    protocol.create_xor_masker = create_xor_masker
