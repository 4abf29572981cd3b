"""Masking keys for the frames wsrelay sends upstream (RFC 6455 section 5.3).

RFC 6455 section 10.3: "the masking key MUST be derived from a strong source of entropy, and the
masking key for a given frame MUST NOT make it simple for a server or a proxy to predict the
masking key for a subsequent frame."  :data:`KEYS` takes each key from a pool of ``os.urandom``
bytes (one system call per 1,024 keys); a forked child draws its own pool.  The XOR itself is
``wsrelay.websocket.frames.xor``.  (Autobahn draws its keys from ``random.getrandbits``, a Mersenne
Twister whose 624 observed outputs predict the rest; it masks no frame of wsrelay's: the lean path
takes every connection over once its handshake is done.)
"""

from __future__ import annotations

import os
import struct
from typing import Any, Callable

#: Bytes of ``os.urandom`` drawn at once for masking keys.
KEY_POOL = 4096
_POOL_FORMAT = struct.Struct(f"!{KEY_POOL // 4}I")


class MaskKeys:
    """Masking keys from ``source`` (``os.urandom``), pooled: :meth:`key` for a frame's 4 bytes,
    ``getrandbits`` for ``k`` bits (as the ``random`` module's), ``seed`` a no-op."""

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
        """Nothing to seed: the keys come from the operating system."""


#: The masking keys of every frame wsrelay masks.
KEYS = MaskKeys()
os.register_at_fork(after_in_child=KEYS.discard)
