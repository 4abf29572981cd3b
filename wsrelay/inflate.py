"""Inflation of compressed (permessage-deflate) messages in bounded steps, with back-pressure.

Autobahn inflates each piece of a compressed frame it has read in one call, bounded only by what
is left of ``maxMessagePayloadSize`` (so not at all when that is 0): deflate expands up to about
1,000 times, so one 64 KiB read could become 64 MiB, and a message of gigabytes with no limit.
:class:`SteppedInflate` (a mixin for wsrelay's Autobahn legs) inflates at most
:data:`INFLATE_STEP` bytes at a time and hands each step to the relay, which sends it on as a
frame; when the other side's buffer is full (the leg's reading is paused), it stops inflating,
keeps the compressed rest, and goes on when reading resumes.  So what a compressed message costs
in memory is a step and a socket buffer, whatever its size and whatever the configured limit.

The checks stay Autobahn's: the message size limit counts inflated bytes, text is validated as
UTF-8 as it comes, a corrupt stream is refused with 1007.  Autobahn has no public hook for
stepwise inflation, so this overrides its ``onFrameData`` and ``consumeData`` and reads the
deflate object of its permessage-deflate extension (``_perMessageCompress._decompressor``).
"""

from __future__ import annotations

import zlib
from typing import Any

from autobahn.websocket.protocol import WebSocketProtocol

#: The most inflated bytes produced at once.
INFLATE_STEP = 65536


class SteppedInflate:
    """Mixin (before Autobahn's protocol class): inflate compressed messages in bounded steps.

    The class using it says when to stop (:meth:`inflate_must_wait`) and calls
    :meth:`resume_inflation` when it may go on.
    """

    _deflated: bytes | None = None  # compressed bytes of the current frame not inflated yet

    def inflate_must_wait(self) -> bool:
        """True while what is inflated cannot go on (the other side's buffer is full)."""
        raise NotImplementedError

    def onFrameData(self, payload: bytes) -> bool | None:
        p: Any = self
        if p.current_frame.opcode > 7 or not p._isMessageCompressed:
            return super().onFrameData(payload)  # type: ignore[misc,no-any-return]
        if p.state == WebSocketProtocol.STATE_OPEN:
            p.trafficStats.incomingOctetsWebSocketLevel += len(payload)
        # onMessageFrameBegin counted the frame's compressed length; inflated bytes count instead.
        p.message_data_total_length -= len(payload)
        self._deflated = payload
        return self._inflate()

    def consumeData(self) -> None:
        if self._deflated is not None:
            return  # a frame waits to be inflated: what follows it waits too
        super().consumeData()  # type: ignore[misc]

    def resume_inflation(self) -> None:
        """Go on inflating the frame that waits, then with what was read after it."""
        p: Any = self
        if self._deflated is None:
            return
        if p.state not in (WebSocketProtocol.STATE_OPEN, WebSocketProtocol.STATE_CLOSING):
            self._deflated = None
            return
        if self._inflate() is False:
            return  # waits again, or failed
        frame = p.current_frame
        if frame is not None and p.current_frame_masker.pointer() == frame.length:
            if p.onFrameEnd() is False:
                return
        p.consumeData()

    def _inflate(self) -> bool | None:
        """Inflate what waits, a step at a time.  False: stop processing (waiting, or failed)."""
        p: Any = self
        decompressor = p._perMessageCompress._decompressor
        data = self._deflated
        while True:
            try:
                out = decompressor.decompress(data, INFLATE_STEP)
            except zlib.error as e:
                self._deflated = None
                if not p.failedByMe:
                    p._invalid_payload(f"received WebSocket message cannot be decompressed: {e}")
                return False
            # The output may stop at the step with all input read and more still to come out.
            data = decompressor.unconsumed_tail
            if out and self._deliver(out) is False:
                self._deflated = None
                return False
            if not data and len(out) < INFLATE_STEP:
                self._deflated = None
                return None
            if self.inflate_must_wait():
                self._deflated = data
                return False

    def _deliver(self, data: bytes) -> bool | None:
        """What Autobahn does with an inflated piece: count it, check it, pass it on."""
        p: Any = self
        if p.state == WebSocketProtocol.STATE_OPEN:
            p.trafficStats.incomingOctetsAppLevel += len(data)
        p.message_data_total_length += len(data)
        limit = p.maxMessagePayloadSize
        if 0 < limit < p.message_data_total_length and not p.failedByMe:
            p.wasMaxMessagePayloadSizeExceeded = True
            p._max_message_size_exceeded(
                p.message_data_total_length, limit,
                f"received WebSocket message exceeds payload limit of {limit} octets after decompression")
            return False
        if p.utf8validateIncomingCurrentMessage:
            p.utf8validateLast = p.utf8validator.validate(data)
            if not p.utf8validateLast[0]:
                if p._invalid_payload("encountered invalid UTF-8 while processing text message "
                                      f"at payload octet index {p.utf8validateLast[3]}"):
                    return False
        p._onMessageFrameData(data)
        return None
