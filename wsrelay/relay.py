"""The WebSocket message relay between two legs.  Pure: no I/O, no Autobahn, no reactor.

A *leg* is one side's WebSocket connection (toward the client, or toward the upstream); the relay
sees events from a source leg and drives the destination leg, the same way in both directions.

Rules:

1. Messages are delivered once, in order, with their type.  A message whose payload stays under
   ``stream_threshold`` is collected and sent as one frame (one frame in, one frame out: no
   fragmentation overhead for the common small message).  A larger one is streamed: its first
   ``stream_threshold`` bytes open a fragmented message on the destination and every further
   chunk is sent as it arrives, so no whole large message is ever held.
2. Until the destination leg is open (the upstream may speak right after its 101, before the
   client has its own), events are queued in order and replayed when it opens.
3. A close frame from one side is forwarded with its code and reason (RFC 6455 section 7.4; a close
   without a code is forwarded without one).  Codes that must never be on the wire are not sent.
4. A leg lost without a close frame closes the other: the upstream gets 1001 (the client went
   away), the client gets 1011 (the upstream failed).  Never a half-open pair.
5. ``idle_timeout``: no message in either direction for that long closes both legs with 1001.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from wsrelay.errors import CLOSE_GOING_AWAY, CLOSE_INTERNAL_ERROR, close_code_sendable

CLIENT = "client"
UPSTREAM = "upstream"


class Leg(Protocol):
    """What the relay needs from one side's WebSocket connection."""

    side: str  # CLIENT or UPSTREAM

    def relay_message(self, payload: bytes, binary: bool) -> None: ...
    def relay_begin(self, binary: bool) -> None: ...
    def relay_frame(self, payload: bytes) -> None: ...
    def relay_end(self) -> None: ...
    def relay_close(self, code: int | None, reason: str) -> None: ...
    def relay_is_open(self) -> bool: ...


class _Direction:
    """The state of messages flowing from one leg to the other."""

    __slots__ = ("binary", "chunks", "size", "streaming", "messages", "octets")

    def __init__(self) -> None:
        self.binary = False
        self.chunks: list[bytes] = []
        self.size = 0
        self.streaming = False
        self.messages = 0
        self.octets = 0


class Relay:
    """Relays messages and closes between ``client`` and ``upstream`` legs."""

    def __init__(self, client: Leg, upstream: Leg, *, stream_threshold: int = 65536,
                 on_message: Callable[[str, int], None] | None = None) -> None:
        self.legs = {CLIENT: client, UPSTREAM: upstream}
        self.directions = {CLIENT: _Direction(), UPSTREAM: _Direction()}  # keyed by source side
        self.stream_threshold = stream_threshold
        self.on_message = on_message
        self.queued: dict[str, list[Callable[[], None]]] = {CLIENT: [], UPSTREAM: []}  # by destination
        self.closed_sides: set[str] = set()
        self.close_codes: dict[str, int | None] = {}
        self.last_activity = 0.0

    def _other(self, side: str) -> str:
        return UPSTREAM if side == CLIENT else CLIENT

    def _to(self, side: str, action: Callable[[Leg], None]) -> None:
        """Run ``action`` on the leg of ``side`` now, or when it opens."""
        if side in self.closed_sides:
            return
        leg = self.legs[side]
        if leg.relay_is_open() and not self.queued[side]:
            action(leg)
        else:
            self.queued[side].append(lambda: action(leg))

    def leg_opened(self, side: str) -> None:
        """The leg of ``side`` completed its handshake: replay what waited for it."""
        queued, self.queued[side] = self.queued[side], []
        for action in queued:
            action()

    # -- messages --------------------------------------------------------------------------

    def message_begin(self, source: str, binary: bool) -> None:
        d = self.directions[source]
        d.binary = binary
        d.chunks = []
        d.size = 0
        d.streaming = False

    def message_data(self, source: str, payload: bytes) -> None:
        d = self.directions[source]
        d.size += len(payload)
        if d.streaming:
            self._to(self._other(source), lambda leg: leg.relay_frame(payload))
            return
        d.chunks.append(payload)
        if d.size > self.stream_threshold:
            first, binary = b"".join(d.chunks), d.binary
            d.chunks = []
            d.streaming = True

            def open_stream(leg: Leg) -> None:
                leg.relay_begin(binary)
                leg.relay_frame(first)

            self._to(self._other(source), open_stream)

    def message_end(self, source: str) -> None:
        d = self.directions[source]
        d.messages += 1
        d.octets += d.size
        if d.streaming:
            self._to(self._other(source), lambda leg: leg.relay_end())
        else:
            payload, binary = b"".join(d.chunks), d.binary
            self._to(self._other(source), lambda leg: leg.relay_message(payload, binary))
        d.chunks = []
        d.streaming = False
        if self.on_message is not None:
            self.on_message(source, d.size)

    # -- closing ---------------------------------------------------------------------------

    def close_received(self, source: str, code: int | None, reason: str) -> None:
        """``source``'s peer sent a close frame: forward it (its own leg answers it)."""
        self.close_codes[source] = code
        forward = code if close_code_sendable(code) else None
        self._to(self._other(source), lambda leg: leg.relay_close(forward, reason if forward else ""))

    def leg_closed(self, source: str, clean: bool) -> None:
        """``source``'s connection is gone; close the other leg if it is still up."""
        self.closed_sides.add(source)
        self.queued[source] = []
        other = self._other(source)
        if other in self.closed_sides:
            return
        if source in self.close_codes:
            return  # its close frame was already forwarded
        code, reason = ((CLOSE_GOING_AWAY, "client went away") if source == CLIENT
                        else (CLOSE_INTERNAL_ERROR, "upstream connection lost"))
        self._to(other, lambda leg: leg.relay_close(code, reason))
        if not self.legs[other].relay_is_open():
            # The other leg never opened: nothing to close politely; its owner aborts it.
            self.queued[other] = []

    def close_both(self, code: int, reason: str) -> None:
        """wsrelay ends the pair itself (idle timeout, shutdown)."""
        for side in (CLIENT, UPSTREAM):
            self._to(side, lambda leg: leg.relay_close(code, reason))

    def stats(self) -> dict[str, Any]:
        return {side: {"messages": d.messages, "octets": d.octets} for side, d in self.directions.items()}
