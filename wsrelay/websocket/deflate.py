"""permessage-deflate (RFC 7692) on the lean path, one hop at a time.  Pure: no I/O.

What was negotiated on a hop is Autobahn's extension object of that hop's handshake
(``PerMessageDeflate``): its public parameters say the window sizes and context takeover of each
side, and its own ``start_compress_message`` / ``compress_message_data`` / ``end_compress_message``
compress what wsrelay sends that hop.  Nothing negotiated on one hop reaches the other: each
:class:`~wsrelay.websocket.lean.LeanLeg` has its own.

Inflation is wsrelay's own (:class:`Inflater`), in steps of at most ``limit`` bytes of output, so
that the reader can stop between two steps (back-pressure) and a small compressed message that
inflates to gigabytes (a "decompression bomb", deflate expands up to about 1,000 times) costs one
step and a socket buffer of memory, whatever ``ws_max_message_size`` says.
"""

from __future__ import annotations

import codecs
import zlib
from typing import Any

from wsrelay.errors import CLOSE_INVALID_PAYLOAD, CLOSE_MESSAGE_TOO_BIG
from wsrelay.relay import CHUNK_SIZE

_utf8_decoder = codecs.getincrementaldecoder("utf-8")

#: The most inflated bytes produced at once: the relay's chunk (``wsrelay.relay.CHUNK_SIZE``),
#: which is what a lean leg's reader steps by.
INFLATE_STEP = CHUNK_SIZE

#: RFC 7692 section 7.2.2: the tail a sender removes from each compressed message.
SYNC_TAIL = b"\x00\x00\xff\xff"


class Inflater:
    """Inflates the compressed messages one peer sends."""

    __slots__ = ("wbits", "reset", "_d", "tail")

    def __init__(self, wbits: int, reset: bool) -> None:
        self.wbits = wbits  # the peer's LZ77 window, in bits
        self.reset = reset  # the peer does not keep its context between messages
        self._d: Any = None
        self.tail = b""  # compressed bytes given and not inflated yet (the step was full)

    @classmethod
    def for_peer(cls, extension: Any, *, peer_is_client: bool) -> Inflater:
        """The inflater for what the peer of a hop sends, from the hop's negotiated extension."""
        if peer_is_client:
            return cls(extension.client_max_window_bits, bool(extension.client_no_context_takeover))
        return cls(extension.server_max_window_bits, bool(extension.server_no_context_takeover))

    def start(self) -> None:
        """A compressed message begins."""
        if self._d is None or self.reset:
            self._d = zlib.decompressobj(-self.wbits)
        self.tail = b""

    def step(self, data: bytes, limit: int) -> bytes:
        """At most ``limit`` inflated bytes from ``data`` (what is left of it stays in
        :attr:`tail`); raises ``zlib.error`` on a corrupt stream."""
        out = self._d.decompress(data, limit)
        self.tail = self._d.unconsumed_tail
        return out  # type: ignore[no-any-return]

    def finish(self) -> bytes:
        """The message is complete: inflate the tail RFC 7692 makes the sender remove."""
        return self._d.decompress(SYNC_TAIL)  # type: ignore[no-any-return]


class Deflater:
    """Compresses what wsrelay sends one hop, with the extension object negotiated there."""

    __slots__ = ("extension",)

    def __init__(self, extension: Any) -> None:
        self.extension = extension

    def whole(self, payload: bytes) -> bytes:
        """A whole message, compressed (the sync tail removed)."""
        e = self.extension
        e.start_compress_message()
        return e.compress_message_data(payload) + e.end_compress_message()  # type: ignore[no-any-return]

    def begin(self) -> None:
        self.extension.start_compress_message()

    def piece(self, payload: bytes) -> bytes:
        return self.extension.compress_message_data(payload)  # type: ignore[no-any-return]

    def end(self) -> bytes:
        return self.extension.end_compress_message()  # type: ignore[no-any-return]


class SteppedInflation:
    """The inflating part of :class:`~wsrelay.websocket.reader.FrameReader` (its attributes):
    compressed payload inflated a step of ``chunk`` bytes at a time, each step checked (the
    message limit counts inflated bytes, text is UTF-8 as it comes) and passed on, stopping
    between steps while :meth:`inflate_must_wait`."""

    __slots__ = ()

    def inflate_must_wait(self) -> bool:
        """True while inflated bytes cannot go on (the other side's buffer is full)."""
        return False

    def _whole_compressed(self, payload: bytes, op: int) -> bool:
        """A whole one-frame compressed message: delivered whole when it inflates to less than a
        step, else streamed as any other; False when reading stops (failed, or waiting)."""
        inflater = self.inflater
        inflater.start()
        chunk = self.chunk
        try:
            out = inflater.step(payload, chunk)
            whole = not inflater.tail and len(out) < chunk
            if whole:
                out += inflater.finish()  # the message's last output: the tail is inflated
        except zlib.error as e:
            self._fail(CLOSE_INVALID_PAYLOAD, f"compressed message cannot be inflated: {e}")
            return False
        if whole and len(out) < chunk:
            if self.max_message and len(out) > self.max_message:
                self._fail(CLOSE_MESSAGE_TOO_BIG, f"message over the limit of {self.max_message} bytes once inflated")
                return False
            if op == 1:
                try:
                    out.decode("utf-8")
                except UnicodeDecodeError:
                    self._fail(CLOSE_INVALID_PAYLOAD, "invalid UTF-8 in a text message")
                    return False
            self.on_message(out, op == 2, None)
            return not self.done
        # Larger once inflated: the stepped way, from where this step left off.
        self._binary = op == 2
        self._decoder = _utf8_decoder() if op == 1 else None
        self._compressed = True
        self._inflated = 0
        self._hold = None
        self._single = False
        self._fin = True
        self._remaining = 0
        self.in_message = True
        self.on_begin(op == 2)
        if self.done or (out and not self._inflated_piece(out)):
            return False
        if whole:
            self._compressed = False  # its tail is inflated already
        elif not self._inflate(inflater.tail):
            return False
        self._frame_done()
        return not self.done

    def _inflate(self, data: bytes) -> bool:
        """Inflate ``data`` a step at a time, each step checked and passed on; False when reading
        stops (failed, or waiting for the other side: the rest is kept)."""
        inflater = self.inflater
        assert inflater is not None
        chunk = self.chunk
        while True:
            try:
                out = inflater.step(data, chunk)
            except zlib.error as e:
                self._fail(CLOSE_INVALID_PAYLOAD, f"compressed message cannot be inflated: {e}")
                return False
            data = inflater.tail
            if out and not self._inflated_piece(out):
                return False
            if not data and len(out) < chunk:
                return True
            if self.inflate_must_wait():
                self.waiting = True
                return False

    def _inflated_piece(self, out: bytes) -> bool:
        self._inflated += len(out)
        if self.max_message and self._inflated > self.max_message:
            self._fail(CLOSE_MESSAGE_TOO_BIG, f"message over the limit of {self.max_message} bytes once inflated")
            return False
        if self._decoder is not None:
            try:
                self._decoder.decode(out, False)
            except UnicodeDecodeError:
                self._fail(CLOSE_INVALID_PAYLOAD, "invalid UTF-8 in a text message")
                return False
        self.on_data(out)
        return not self.done

    def resume_inflation(self) -> None:
        """The other side drained: go on inflating what waits, then reading what came after it."""
        if not self.waiting or self.done:
            return
        self.waiting = False
        assert self.inflater is not None
        if not self._inflate(self.inflater.tail):
            if self.waiting:
                return
        elif not self._remaining and not self.done:
            self._frame_done()
        if self.waiting or self.done:
            return
        rest, self._rest = self._rest, b""
        if rest:
            self.feed(rest)
