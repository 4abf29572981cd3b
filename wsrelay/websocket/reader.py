"""An incremental reader of one peer's WebSocket frames (RFC 6455 section 5) for the lean relay
path.  Pure: nothing here touches sockets, Autobahn or a clock.

:class:`FrameReader` reads one peer's frames after the opening handshake; given an ``inflater``
(permessage-deflate negotiated on that hop, RFC 7692) it inflates compressed messages as they
arrive.  Its invariants:

- a frame header (2 to 14 bytes) is parsed once, and nothing is built per frame but the payload;
- a single-frame message of at most ``chunk`` bytes is delivered whole (:meth:`on_message`, with
  the frame's own bytes when they are unmasked, so they can be written on unchanged); any other
  data frame is delivered as pieces of at most ``chunk`` bytes as they arrive
  (:meth:`on_begin`, :meth:`on_data`..., :meth:`on_frame_end` or :meth:`on_message_end`), so a
  message is never held whole;
- every rule a peer can break is checked here, and the first breach ends reading with
  :meth:`on_error` and the close code its peer must get: 1002 for a protocol error (reserved bits,
  reserved opcodes, a fragmented or long control frame, a frame masked the wrong way, a
  continuation with nothing to continue or a new message inside a fragmented one, an invalid close
  code), 1007 for invalid UTF-8 (text, as the bytes arrive, across fragments; a close reason),
  1009 for a frame or message over its limit;
- after a close frame (:meth:`on_close`), nothing more is read.
"""

from __future__ import annotations

import codecs
import zlib

from wsrelay.errors import CLOSE_INVALID_PAYLOAD, CLOSE_MESSAGE_TOO_BIG, CLOSE_PROTOCOL_ERROR
from wsrelay.websocket.deflate import Inflater, SteppedInflation
from wsrelay.websocket.frames import OP_PING, OP_PONG, xor

#: Close codes a peer may send (RFC 6455 section 7.4.1; what Autobahn accepts), besides 3000-4999.
VALID_CLOSE_CODES = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013})

_utf8_decoder = codecs.getincrementaldecoder("utf-8")


class FrameReader(SteppedInflation):
    """Reads the frames of one peer; subclasses supply the ``on_*`` callbacks."""

    __slots__ = ("masked", "chunk", "max_frame", "max_message", "failed", "done",
                 "_pending", "_buffered", "_need", "_remaining", "_key", "_kpos", "_fin",
                 "in_message", "_binary", "_decoder", "_size", "_hold", "_single",
                 "inflater", "_compressed", "_inflated", "waiting", "_rest")

    def __init__(self, *, masked: bool, chunk: int, max_frame: int = 0, max_message: int = 0,
                 inflater: Inflater | None = None) -> None:
        self.masked = masked  # the peer must mask its frames (it is a client)
        self.chunk = chunk
        self.max_frame = max_frame  # 0: no limit
        self.max_message = max_message
        self.failed = False
        self.done = False  # a close frame was read, or reading failed: the rest is ignored
        self._pending: list[bytes] | tuple[()] = ()  # bytes of an incomplete header or small frame
        self._buffered = 0
        self._need = 0
        self._remaining = 0  # payload bytes of the frame being delivered in pieces
        self._key: bytes | None = None
        self._kpos = 0
        self._fin = False
        self.in_message = False
        self._binary = False
        self._hold: list[bytes] | None = None  # the pieces of a small frame, until it is complete
        self._single = False  # the frame held is a whole message
        self._decoder: codecs.IncrementalDecoder | None = None
        self._size = 0  # payload bytes of the current message so far (frames announced)
        self.inflater = inflater  # permessage-deflate was negotiated: RSV1 marks compressed messages
        self._compressed = False  # the current message is compressed
        self._inflated = 0  # inflated bytes of the current compressed message
        self.waiting = False  # inflation stopped until resume_inflation(): the other side is full
        self._rest = b""  # what was read after the frame whose inflation waits

    # -- callbacks -----------------------------------------------------------------------------

    def on_message(self, payload: bytes, binary: bool, raw: bytes | None) -> None:
        """A whole single-frame message; ``raw``: the frame's bytes when unmasked, else None."""
        raise NotImplementedError

    def on_begin(self, binary: bool) -> None:
        raise NotImplementedError

    def on_data(self, payload: bytes) -> None:
        raise NotImplementedError

    def on_frame_end(self) -> None:
        """A non-final frame of the current message is complete."""
        raise NotImplementedError

    def on_message_end(self) -> None:
        raise NotImplementedError

    def on_ping(self, payload: bytes) -> None:
        raise NotImplementedError

    def on_pong(self, payload: bytes) -> None:
        raise NotImplementedError

    def on_close(self, code: int | None, reason: str) -> None:
        raise NotImplementedError

    def on_error(self, code: int, reason: str) -> None:
        raise NotImplementedError


    # -- reading -------------------------------------------------------------------------------

    def _fail(self, code: int, reason: str) -> None:
        self.failed = self.done = True
        self._pending = ()
        self.on_error(code, reason)

    def feed(self, data: bytes) -> None:
        """Read ``data``, the next bytes from the peer."""
        if self.done:
            return
        if self.waiting:
            self._rest += data
            return
        if self._pending:
            self._buffered += len(data)
            self._pending.append(data)
            if self._buffered < self._need:
                return
            data = b"".join(self._pending)
            self._pending = ()
        pos = 0
        end = len(data)
        while pos < end:
            if self.done:
                return
            if self._remaining:
                n = self._remaining
                if n > end - pos:
                    n = end - pos
                if n > self.chunk:
                    n = self.chunk
                piece = data if n == end else data[pos:pos + n]
                pos += n
                self._remaining -= n
                self._piece(piece)
                if self.waiting:
                    self._rest = data[pos:]
                    return
                continue
            avail = end - pos
            if avail < 2:
                self._wait(data, pos, 2)
                return
            b0 = data[pos]
            b1 = data[pos + 1]
            n = b1 & 0x7F
            hl = 2
            if n > 125:
                if n == 126:
                    hl = 4
                    if avail < 4:
                        self._wait(data, pos, 4)
                        return
                    n = (data[pos + 2] << 8) | data[pos + 3]
                else:
                    hl = 10
                    if avail < 10:
                        self._wait(data, pos, 10)
                        return
                    n = int.from_bytes(data[pos + 2:pos + 10], "big")
                    if n >> 63:
                        self._fail(CLOSE_PROTOCOL_ERROR, "frame length with the most significant bit set")
                        return
            if b1 & 0x80:
                if not self.masked:
                    self._fail(CLOSE_PROTOCOL_ERROR, "masked frame from a server")
                    return
                if avail < hl + 4:
                    self._wait(data, pos, hl + 4)
                    return
                key: bytes | None = data[pos + hl:pos + hl + 4]
                hl += 4
            elif self.masked:
                self._fail(CLOSE_PROTOCOL_ERROR, "unmasked frame from a client")
                return
            else:
                key = None
            op = b0 & 0x0F
            fin = b0 & 0x80
            compressed = False
            if b0 & 0x70:
                # RFC 7692 section 6: RSV1 on the first frame of a compressed message only
                if b0 & 0x70 != 0x40 or self.inflater is None:
                    self._fail(CLOSE_PROTOCOL_ERROR, "reserved bits set (no extension for them)")
                    return
                if op == 0 or op > 7:
                    self._fail(CLOSE_PROTOCOL_ERROR, "RSV1 on a continuation or control frame")
                    return
                compressed = True
            if op > 7:
                if op > 10:
                    self._fail(CLOSE_PROTOCOL_ERROR, f"reserved control opcode {op}")
                    return
                if not fin:
                    self._fail(CLOSE_PROTOCOL_ERROR, "fragmented control frame")
                    return
                if n > 125:
                    self._fail(CLOSE_PROTOCOL_ERROR, "control frame payload over 125 bytes")
                    return
                if avail < hl + n:
                    self._wait(data, pos, hl + n)
                    return
                payload = data[pos + hl:pos + hl + n]
                pos += hl + n
                if key is not None:
                    payload = xor(payload, key)
                self._control(op, payload)
                continue
            if op == 0:
                if not self.in_message:
                    self._fail(CLOSE_PROTOCOL_ERROR, "continuation frame with no message to continue")
                    return
            elif op > 2:
                self._fail(CLOSE_PROTOCOL_ERROR, f"reserved data opcode {op}")
                return
            elif self.in_message:
                self._fail(CLOSE_PROTOCOL_ERROR, "new message inside a fragmented one")
                return
            if self.max_frame and n > self.max_frame:
                self._fail(CLOSE_MESSAGE_TOO_BIG, f"frame of {n} bytes over the limit of {self.max_frame}")
                return
            size = self._size + n if op == 0 else n
            if self.max_message and size > self.max_message:
                self._fail(CLOSE_MESSAGE_TOO_BIG, f"message over the limit of {self.max_message} bytes")
                return
            if n < self.chunk and avail >= hl + n and op and fin and not compressed:
                start = pos + hl
                if key is None:
                    raw = data if hl + n == end else data[pos:start + n]
                    payload = raw[hl:]
                else:
                    raw = None
                    payload = xor(data[start:start + n], key)
                pos = start + n
                if op == 1:
                    try:
                        payload.decode("utf-8")
                    except UnicodeDecodeError as e:
                        self._fail(CLOSE_INVALID_PAYLOAD, f"invalid UTF-8 in a text message at byte {e.start}")
                        return
                self.on_message(payload, op == 2, raw)
                continue
            if compressed and n < self.chunk and avail >= hl + n and fin:
                start = pos + hl
                payload = data[start:start + n]
                pos = start + n
                if not self._whole_compressed(xor(payload, key) if key is not None else payload, op):
                    if self.waiting:
                        self._rest = data[pos:]
                    return
                continue
            # A frame whose payload is delivered as it arrives: held until complete when it is
            # small (a small message leaves as one frame), in pieces of ``chunk`` otherwise.
            # Text is checked as it arrives either way (a bad byte fails at once).
            single = bool(op and fin and n < self.chunk and not compressed)
            if op:
                self._binary = op == 2
                self._decoder = _utf8_decoder() if op == 1 else None
                self._compressed = compressed
                if compressed:
                    self._inflated = 0
                    self.inflater.start()  # type: ignore[union-attr]
                if not single:
                    self.in_message = True
                    self.on_begin(op == 2)
            self._hold = [] if n < self.chunk and not self._compressed else None
            self._single = single
            self._size = size
            pos += hl
            self._remaining = n
            self._key = key
            self._kpos = 0
            self._fin = bool(fin)
            if not n:
                self._frame_done()

    def _wait(self, data: bytes, pos: int, need: int) -> None:
        """Keep ``data[pos:]`` until ``need`` bytes of it are there."""
        rest = data[pos:] if pos else data
        self._pending = [rest]
        self._buffered = len(rest)
        self._need = need

    def _piece(self, piece: bytes) -> None:
        key = self._key
        if key is not None:
            shift = self._kpos & 3
            self._kpos += len(piece)
            piece = xor(piece, key[shift:] + key[:shift] if shift else key)
        if self._compressed:
            if not self._inflate(piece):
                return
            if not self._remaining and not self.done:
                self._frame_done()
            return
        if self._decoder is not None:
            try:
                self._decoder.decode(piece, False)
            except UnicodeDecodeError:
                self._fail(CLOSE_INVALID_PAYLOAD, "invalid UTF-8 in a text message")
                return
        if self._hold is not None:
            self._hold.append(piece)
        elif piece:
            self.on_data(piece)
        if not self._remaining and not self.done:
            self._frame_done()

    def _frame_done(self) -> None:
        if self._compressed and self._fin:
            try:
                out = self.inflater.finish()  # type: ignore[union-attr]
            except zlib.error as e:
                self._fail(CLOSE_INVALID_PAYLOAD, f"compressed message cannot be inflated: {e}")
                return
            if out and not self._inflated_piece(out):
                return
            self._compressed = False
        held, self._hold = self._hold, None
        if not self._fin:
            if held:
                self.on_data(b"".join(held))
            self.on_frame_end()
            return
        if self._decoder is not None:
            try:
                self._decoder.decode(b"", True)
            except UnicodeDecodeError:
                self._fail(CLOSE_INVALID_PAYLOAD, "text message ends inside a UTF-8 sequence")
                return
            self._decoder = None
        self._size = 0
        if self._single:
            self._single = False
            self.on_message(b"".join(held or ()), self._binary, None)
            return
        if held:
            self.on_data(b"".join(held))
        self.in_message = False
        self.on_message_end()

    def _control(self, op: int, payload: bytes) -> None:
        if op == OP_PING:
            self.on_ping(payload)
        elif op == OP_PONG:
            self.on_pong(payload)
        else:
            n = len(payload)
            if n == 1:
                self._fail(CLOSE_PROTOCOL_ERROR, "close frame with a 1-byte payload")
                return
            code = (payload[0] << 8) | payload[1] if n else None
            if code is not None and code not in VALID_CLOSE_CODES and not 3000 <= code <= 4999:
                self._fail(CLOSE_PROTOCOL_ERROR, f"invalid close code {code}")
                return
            try:
                reason = payload[2:].decode("utf-8")
            except UnicodeDecodeError:
                self._fail(CLOSE_INVALID_PAYLOAD, "close reason is not UTF-8")
                return
            self.done = True
            self.on_close(code, reason)
