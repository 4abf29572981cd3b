"""The lean relay path: after both opening handshakes, each connection of a pair is read by a
:class:`LeanLeg`, a small ``__slots__`` protocol fed by :class:`~wsrelay.websocket.reader.FrameReader`.

Taken only by pairs with no extension on either hop (a permessage-deflate pair stays on
Autobahn's legs, see ``pair.py``).  The rules stay :class:`wsrelay.relay.Relay`'s: every event
goes to it, and only a whole small message whose way is clear comes back as ``None`` ("send it
now"), so the common case builds no object but the payload.  What this module adds is the wire:

- frames from the client must be masked, from the upstream unmasked (1002 otherwise, see
  ``reader.py`` for every check and its close code);
- a message from the upstream goes to the client as the upstream's own frame bytes when it is a
  whole small message (unmasked on both hops, nothing rebuilt); toward the upstream every frame is
  masked with a fresh key from ``os.urandom`` (:data:`wsrelay.masking.KEYS`, RFC 6455 section
  10.3) in one C-speed pass;
- pings are answered on each hop (not after the peer's close), wsrelay's own pings go out every
  ``ws_ping_interval`` and a hop that does not answer within ``ws_ping_timeout`` is dropped, unless
  wsrelay itself stopped reading it because the other side is slow;
- ``ws_max_message_rate``: each message the client begins takes a token from its leg's
  :class:`~wsrelay.bucket.TokenBucket` (the time from the reactor); with none left, the client gets
  1008 and the relay fails its side (its upstream gets 1001), and what it sends until its close is
  dropped.  A leg without a limit pays one attribute test per message;
- the closing handshake as Autobahn's legs run it: a close wsrelay sends waits
  ``CLOSE_HANDSHAKE_TIMEOUT`` for its answer; once a close was answered, the server side (toward
  the client) closes TCP, the client side (toward the upstream) lets the server close it first,
  for up to ``SERVER_DROP_TIMEOUT``.  A connection that does not go away after its close is
  aborted.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.interfaces import IProtocol
from twisted.logger import Logger
from zope.interface import implementer

from wsrelay import masking
from wsrelay.bucket import TokenBucket
from wsrelay.errors import CLOSE_POLICY_VIOLATION
from wsrelay.flow import PEER_FULL, ReadGate
from wsrelay.relay import CLIENT, Abort, Action, BeginMessage, EndMessage, Relay, SendClose, SendFrame, SendMessage
from wsrelay.timers import call_after_reads
from wsrelay.upgrade import CLOSE_HANDSHAKE_TIMEOUT
from wsrelay.websocket.deflate import Deflater, Inflater
from wsrelay.websocket.frames import OP_CLOSE, OP_PING, OP_PONG, close_payload, header, xor
from wsrelay.websocket.reader import FrameReader

log = Logger()

#: Seconds the upstream gets to close TCP after the closing handshake (RFC 6455 section 7.1.1).
SERVER_DROP_TIMEOUT = 2.0


class _RefuseAll:
    """The rate of a client already closed for going over it: every message is dropped."""

    __slots__ = ()

    @staticmethod
    def take(now: float) -> bool:
        return False


_REFUSE_ALL: Any = _RefuseAll()


@implementer(IProtocol)
class LeanLeg(FrameReader):
    """One side of a relayed pair on the lean path: reads its peer's frames, writes the relay's."""

    __slots__ = ("pair", "side", "peer", "relay", "transport", "masks", "hop", "gate", "peer_closed",
                 "close_sent", "out_op", "timer", "ping_call", "ping_payload", "ping_at", "idle", "why",
                 "deflater", "limit")

    def __init__(self, pair: Any, side: str, relay: Relay, hop: Any, *, chunk: int, max_frame: int,
                 max_message: int, idle: bool, extension: Any = None, limit: TokenBucket | None = None) -> None:
        client = side == CLIENT
        super().__init__(masked=client, chunk=chunk, max_frame=max_frame, max_message=max_message,
                         inflater=Inflater.for_peer(extension, peer_is_client=client) if extension else None)
        # permessage-deflate negotiated on this hop (Autobahn's extension object of its handshake)
        self.deflater = Deflater(extension) if extension else None
        self.pair = pair
        self.side = side
        self.peer: LeanLeg | None = None
        self.relay = relay
        self.transport: Any = None
        self.masks = not client  # frames toward an upstream are masked
        self.hop = hop  # this hop's counters (wsrelay.metrics.HopCounters)
        self.gate: ReadGate | None = None
        self.peer_closed = False  # the peer's close waits for the other side's answer
        self.close_sent = False
        self.out_op = 0  # opcode of the next frame of a message begun toward this peer
        self.timer: Any = None  # close handshake or TCP close deadline
        self.ping_call: Any = None  # wsrelay's next ping, or the deadline of the one sent
        self.ping_payload: bytes | None = None
        self.ping_at = 0.0  # when it was sent (the reactor's clock), for the round-trip time
        self.idle = idle  # the pair has an idle timeout: note each message's time
        self.why: str | None = None  # why wsrelay dropped this connection, for the log
        self.limit = limit  # ws_max_message_rate of the client's messages (None: no limit)

    # -- IProtocol ------------------------------------------------------------------------------

    def makeConnection(self, transport: Any) -> None:
        self.transport = transport

    def connectionMade(self) -> None:
        pass

    def logPrefix(self) -> str:
        return f"LeanLeg({self.side})"

    def dataReceived(self, data: bytes) -> None:
        self.feed(data)

    def connectionLost(self, reason: Any = None) -> None:
        self._cancel_timers()
        pair, self.pair = self.pair, None
        if pair is not None:
            self.done = True
            pair.lean_lost(self, reason)
        # The references that close cycles (the legs refer to each other; a leg's gate calls its
        # bound methods) go with the connection: an ended pair is freed by reference counting,
        # not left to CPython's cyclic collector.
        self.peer = None
        self.gate = None

    # -- flow control (see wsrelay.flow) ----------------------------------------------------------

    @property
    def read_paused(self) -> bool:
        """wsrelay stopped reading this peer because the other side is slow."""
        return self.gate is not None and PEER_FULL in self.gate.reasons

    def pause_reading(self) -> None:
        if self.transport is not None:
            self.transport.pauseProducing()

    def resume_reading(self) -> None:
        if self.transport is not None:
            self.transport.resumeProducing()
        self.resume_inflation()

    def inflate_must_wait(self) -> bool:
        return self.gate is not None and self.gate.paused

    # -- what the peer sends (FrameReader callbacks) ------------------------------------------------

    def on_message(self, payload: bytes, binary: bool, raw: bytes | None) -> None:
        pair = self.pair
        limit = self.limit
        if limit is not None and not limit.take(pair.reactor.seconds()):
            self._over_rate()
            return
        hop = self.hop
        hop.messages_in += 1
        hop.octets_in += len(payload)
        if self.idle:
            pair.last_activity = pair.reactor.seconds()
        out = self.relay.message(self.side, payload, binary)
        if out is None:
            self.peer.send_message(payload, binary, raw)  # type: ignore[union-attr]
        else:
            pair.perform(out)

    def on_begin(self, binary: bool) -> None:
        pair = self.pair
        limit = self.limit
        if limit is not None and not limit.take(pair.reactor.seconds()):
            self._over_rate()  # the message's frames are dropped (the relay mutes this side)
            return
        pair.perform(self.relay.message_begin(self.side, binary))

    def on_data(self, payload: bytes) -> None:
        self.hop.octets_in += len(payload)
        self.pair.perform(self.relay.frame_data(self.side, payload))

    def on_frame_end(self) -> None:
        self.pair.perform(self.relay.frame_end(self.side))

    def on_message_end(self) -> None:
        self.hop.messages_in += 1
        pair = self.pair
        if self.idle:
            pair.last_activity = pair.reactor.seconds()
        pair.perform(self.relay.message_end(self.side))

    def on_ping(self, payload: bytes) -> None:
        # RFC 6455 section 5.5.1: after its close the peer sends nothing; a ping it sends anyway is
        # not answered while its close waits for the other side's answer.
        if not self.peer_closed and not self.close_sent:
            self._write_frame(0x80 | OP_PONG, payload)

    def on_pong(self, payload: bytes) -> None:
        if self.ping_payload is not None and payload == self.ping_payload:
            self.ping_payload = None
            self._cancel(self.ping_call)
            reactor = self.pair.reactor
            self.hop.rtt.observe(max(reactor.seconds() - self.ping_at, 0.0))  # a clock set back: 0
            self.ping_call = reactor.callLater(self.pair.route.websocket.ping_interval, self._ping)

    def on_close(self, code: int | None, reason: str) -> None:
        pair = self.pair
        pair.metrics.close_in(pair.route.name, self.side, code)
        if self.close_sent:
            # The answer to wsrelay's close: the closing handshake of this hop is over.
            pair.perform(self.relay.close_received(self.side, code, reason))
            self._closed()
            return
        self.peer_closed = True
        pair.perform(self.relay.close_received(self.side, code, reason))

    def on_error(self, code: int, reason: str) -> None:
        pair = self.pair
        log.info("route {route}: {side} failed with close code {code} ({reason})", route=pair.route.name,
                 side=self.side, code=code, reason=reason)
        pair.metrics.close_out(pair.route.name, self.side, code)
        first = not self.close_sent
        if first:
            self._write_frame(0x80 | OP_CLOSE, close_payload(code, reason))
            self.close_sent = True
        pair.perform(self.relay.failed(self.side, code))
        self._lose()

    def _over_rate(self) -> None:
        """The client sends messages faster than ``ws_max_message_rate``: it gets 1008 (and its
        answer is awaited as for any close wsrelay sends), its upstream 1001; what it sends until
        its close is dropped."""
        self.limit = _REFUSE_ALL
        if self.close_sent:
            return
        pair = self.pair
        pair.gw.over_rate(pair)  # counted, and a log line (at most one every few seconds)
        pair.metrics.close_out(pair.route.name, self.side, CLOSE_POLICY_VIOLATION)
        self._send_close(CLOSE_POLICY_VIOLATION, "message rate limit exceeded", False)
        pair.perform(self.relay.failed(self.side, CLOSE_POLICY_VIOLATION))

    # -- what the relay sends this peer -------------------------------------------------------------

    def send_message(self, payload: bytes, binary: bool, raw: bytes | None) -> None:
        """A whole message as one frame (``raw``: the sender's own unmasked frame bytes)."""
        hop = self.hop
        hop.messages_out += 1
        hop.octets_out += len(payload)
        if self.deflater is not None:
            self._write_frame(0xC2 if binary else 0xC1, self.deflater.whole(payload))
        elif raw is not None and not self.masks:
            self.transport.write(raw)
        else:
            self._write_frame(0x82 if binary else 0x81, payload)

    def perform(self, action: Action) -> None:
        """One of the relay's actions toward this peer."""
        hop = self.hop
        deflater = self.deflater
        if isinstance(action, SendMessage):
            self.send_message(action.payload, action.binary, None)
        elif isinstance(action, SendFrame):
            hop.octets_out += len(action.payload)
            self._write_frame(self.out_op, action.payload if deflater is None else deflater.piece(action.payload))
            self.out_op = 0
        elif isinstance(action, BeginMessage):
            self.out_op = 2 if action.binary else 1
            if deflater is not None:
                deflater.begin()
                self.out_op |= 0x40  # RSV1 on the first frame: compressed (RFC 7692 section 6)
        elif isinstance(action, EndMessage):
            hop.messages_out += 1
            self._write_frame(0x80 | self.out_op, b"" if deflater is None else deflater.end())
            self.out_op = 0
        elif isinstance(action, SendClose):
            pair = self.pair
            if pair is not None:
                pair.metrics.close_out(pair.route.name, self.side, action.code)
            self._send_close(action.code, action.reason, action.reply)
        elif isinstance(action, Abort):
            if self.transport is not None:
                self.transport.abortConnection()

    def _write_frame(self, first: int, payload: bytes) -> None:
        transport = self.transport
        if transport is None:
            return
        n = len(payload)
        if self.masks:
            key = masking.KEYS.key()
            head = header(first, n, key)
            payload = xor(payload, key)
        else:
            head = header(first, n)
        if n < 1024:
            transport.write(head + payload)
        else:  # no copy of a large payload to join it to its header
            transport.write(head)
            transport.write(payload)

    def _send_close(self, code: int | None, reason: str, reply: bool) -> None:
        if self.close_sent or self.transport is None:
            return
        self.close_sent = True
        self._write_frame(0x80 | OP_CLOSE, close_payload(code, reason))
        if reply:
            self._closed()
        else:
            self._set_timer(CLOSE_HANDSHAKE_TIMEOUT, self._abort)

    # -- ending -------------------------------------------------------------------------------------

    def _closed(self) -> None:
        """Both close frames have crossed this hop."""
        self.done = True
        if self.side == CLIENT:
            self._lose()  # RFC 6455 section 7.1.1: the server closes TCP first
        else:
            self._set_timer(SERVER_DROP_TIMEOUT, self._lose)

    def _lose(self) -> None:
        """Close TCP once what is queued is written; abort if that does not happen in time."""
        self.done = True
        transport = self.transport
        if transport is not None:
            transport.loseConnection()
            self._set_timer(CLOSE_HANDSHAKE_TIMEOUT, self._abort)

    def _abort(self) -> None:
        self.timer = None
        if self.transport is not None:
            self.transport.abortConnection()

    def _set_timer(self, seconds: float, call: Any) -> None:
        self._cancel(self.timer)
        pair = self.pair
        self.timer = call_after_reads(pair.reactor, seconds, call) if pair is not None else None

    @staticmethod
    def _cancel(call: Any) -> None:
        if call is not None and call.active():
            call.cancel()

    def _cancel_timers(self) -> None:
        self._cancel(self.timer)
        self._cancel(self.ping_call)
        self.timer = self.ping_call = None

    # -- wsrelay's own pings ----------------------------------------------------------------------

    def start_pings(self) -> None:
        ws = self.pair.route.websocket
        if ws.ping_interval:
            self.ping_call = self.pair.reactor.callLater(ws.ping_interval, self._ping)

    def _ping(self) -> None:
        self.ping_call = None
        if self.close_sent or self.peer_closed or self.pair is None:
            return
        self.ping_payload = os.urandom(8)
        self._write_frame(0x80 | OP_PING, self.ping_payload)
        self.hop.pings += 1
        self.ping_at = self.pair.reactor.seconds()
        self.ping_call = call_after_reads(self.pair.reactor, self.pair.route.websocket.ping_timeout, self._ping_timeout)

    def _ping_timeout(self) -> None:
        self.ping_call = None
        pair = self.pair
        if pair is None:
            return
        if self.read_paused:
            # wsrelay itself stopped reading this peer (the other side is slow): its pong may be
            # waiting unread.  Not a dead peer; check again later.
            self.ping_call = call_after_reads(pair.reactor, pair.route.websocket.ping_timeout, self._ping_timeout)
            return
        self.hop.pings_missed += 1
        self.why = "WebSocket ping timeout (peer did not respond with pong in time)"
        if self.transport is not None:
            self.transport.abortConnection()
