"""The WebSocket relay between two legs, as a pure state machine: events in, actions out.

Nothing here touches sockets, Autobahn or a clock.  ``websocket/`` feeds each leg's events in
(:meth:`Relay.message_begin`, :meth:`Relay.frame_data`, :meth:`Relay.close_received`, ...) and
performs the :data:`Action` values each call returns, in order.  The code is direction-agnostic:
every event names its *source* side, the actions go to the other side, and only
:data:`LOST_CLOSE` says what each side is told when its partner vanishes.

Rules:

1. Every message is delivered once, in order, with its type (text stays text, binary stays binary).
   A message that fits in ``chunk_size`` and arrives as one frame leaves as one frame
   (:class:`SendMessage`).  Otherwise it is relayed frame by frame: each received frame is sent on
   as soon as it is complete, and a frame larger than ``chunk_size`` is cut into several
   (:class:`BeginMessage`, :class:`SendFrame`..., :class:`EndMessage`).  No more than
   ``chunk_size`` bytes of a message are ever held.  :meth:`Relay.message` is the same decision
   for a whole one-frame message, made without building an action when the way is clear.
2. Actions for a side that is not open yet (the upstream may speak right after its 101, before
   the client has its own) wait, in order, until :meth:`Relay.opened`.
3. The closing handshake is end to end.  RFC 6455 section 5.5.1: "If an endpoint receives a Close
   frame and did not previously send a Close frame, the endpoint MUST send a Close frame in
   response."  When one side's peer closes, its code and reason go to the other side, and the
   first side is answered only when the other side's peer answers (with that answer's code), so
   messages still on their way to the closing peer reach it.  If the other side cannot answer
   (it is gone, or already closing), the closing peer is answered at once with its own code.
4. Codes that must never be on the wire (1005, 1006, 1015, RFC 6455 section 7.4.1) are not
   forwarded: such a close is relayed without a code.
5. A side lost without a close frame, or failed by wsrelay for a protocol error (its peer got
   1002/1007/1009 from Autobahn), closes the other side with :data:`LOST_CLOSE` (1001 toward the
   upstream: the client went away; 1011 toward the client: the upstream failed), or answers the
   other side's pending close.  A side that never opened is aborted instead.  Never a half-open
   pair.
6. After a close was sent to a side, nothing more is sent to it.
7. The pair remembers what ended it (:attr:`Relay.ended_by`): the first close frame from a peer
   (``client`` or ``upstream`` and its code), wsrelay's own (``wsrelay``: a peer failed, an idle
   timeout, a shutdown), or a side lost without one (that side, with 1006, RFC 6455 section 7.1.5).
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs

from wsrelay.errors import CLOSE_ABNORMAL, CLOSE_GOING_AWAY, CLOSE_INTERNAL_ERROR, close_code_sendable

CLIENT = "client"
UPSTREAM = "upstream"
SIDES = (CLIENT, UPSTREAM)

#: What a side is told when the other side is lost or failed, keyed by the side told.
LOST_CLOSE: dict[str, tuple[int, str]] = {
    UPSTREAM: (CLOSE_GOING_AWAY, "client went away"),
    CLIENT: (CLOSE_INTERNAL_ERROR, "upstream connection lost"),
}

#: Default largest piece of a message held before it is sent on.
CHUNK_SIZE = 65536


def other(side: str) -> str:
    """The side opposite ``side``."""
    return UPSTREAM if side == CLIENT else CLIENT


@attrs.frozen
class SendMessage:
    """Send a whole message as one frame."""

    to: str
    payload: bytes
    binary: bool


@attrs.frozen
class BeginMessage:
    """Start a fragmented message (no frame is written until :class:`SendFrame`)."""

    to: str
    binary: bool


@attrs.frozen
class SendFrame:
    """Send one non-final frame of the message begun (never empty)."""

    to: str
    payload: bytes


@attrs.frozen
class EndMessage:
    """End the message begun (a final frame)."""

    to: str


@attrs.frozen
class SendClose:
    """Send a close frame; ``reply``: it answers the peer's own close (then the leg may drop TCP)."""

    to: str
    code: int | None
    reason: str
    reply: bool = False


@attrs.frozen
class Abort:
    """Drop the side's connection without a close frame (it never opened)."""

    to: str


Action = SendMessage | BeginMessage | SendFrame | EndMessage | SendClose | Abort


@attrs.define
class Counters:
    """Traffic of one side: received from its peer, and sent to it."""

    messages_in: int = 0
    octets_in: int = 0
    messages_out: int = 0
    octets_out: int = 0
    close_in: int | None = None  # the code of the close frame its peer sent (None: no code, or none)
    close_out: int | None = None  # the code of the close frame wsrelay sent it


@attrs.define(slots=True)
class _Side:
    name: str
    other: str = ""
    open: bool = False
    gone: bool = False
    close_sent: bool = False  # a close frame went (or is queued) to this side
    peer_close: tuple[int | None, str] | None = None  # this side's peer closed; not answered yet
    mute: bool = False  # its peer closed, or was failed: nothing more from it is relayed
    queue: list[Action] = attrs.field(factory=list)
    # the message this side's peer is sending
    in_message: bool = False
    discard: bool = False
    binary: bool = False
    pending: list[bytes] = attrs.field(factory=list)
    pending_size: int = 0
    begun: bool = False  # the message was begun toward the other side
    size: int = 0
    counters: Counters = attrs.field(factory=Counters)


class Relay:
    """The relay of one client WebSocket and its upstream WebSocket."""

    def __init__(self, *, chunk_size: int = CHUNK_SIZE) -> None:
        self.chunk_size = chunk_size
        self.sides = {name: _Side(name, other(name)) for name in SIDES}
        #: who ended the pair first (``client``, ``upstream`` or ``wsrelay``) and the close code
        #: (rule 7); None while nothing did
        self.ended_by: tuple[str, int | None] | None = None

    # -- state -----------------------------------------------------------------------------

    def counters(self, side: str) -> Counters:
        """The traffic counters of ``side``."""
        return self.sides[side].counters

    @property
    def finished(self) -> bool:
        """Both sides are gone."""
        return all(s.gone for s in self.sides.values())

    def _emit(self, action: Action, out: list[Action]) -> None:
        side = self.sides[action.to]
        if side.gone:
            return
        if isinstance(action, Abort):
            side.queue.clear()
            side.gone = True
            out.append(action)
            return
        if side.close_sent:
            return  # rule 6
        c = side.counters
        if isinstance(action, SendClose):
            side.close_sent = True
            side.peer_close = None
            c.close_out = action.code
        elif isinstance(action, SendMessage):
            c.messages_out += 1
            c.octets_out += len(action.payload)
        elif isinstance(action, SendFrame):
            c.octets_out += len(action.payload)
        elif isinstance(action, EndMessage):
            c.messages_out += 1
        if side.open:
            out.append(action)
        else:
            side.queue.append(action)

    def _answer(self, side: _Side, code: int | None, reason: str, out: list[Action]) -> None:
        """Answer the pending close of ``side``'s peer."""
        if not close_code_sendable(code):
            code, reason = None, ""
        self._emit(SendClose(side.name, code, reason if code is not None else "", reply=True), out)

    def _echo(self, side: _Side, out: list[Action]) -> None:
        assert side.peer_close is not None
        code, reason = side.peer_close
        self._answer(side, code, reason, out)

    def _partner_ended(self, dest: _Side, out: list[Action]) -> None:
        """``dest``'s partner is lost or failed: end ``dest`` too (rule 5)."""
        if dest.gone:
            return
        if not dest.open:
            self._emit(Abort(dest.name), out)
        elif dest.peer_close is not None:
            self._echo(dest, out)
        else:
            code, reason = LOST_CLOSE[dest.name]
            self._emit(SendClose(dest.name, code, reason), out)

    # -- events ----------------------------------------------------------------------------

    def opened(self, side: str) -> list[Action]:
        """``side`` completed its opening handshake: what waited for it goes now."""
        s = self.sides[side]
        if s.gone:
            return []
        s.open = True
        out, s.queue = s.queue, []
        return out

    def message(self, source: str, payload: bytes, binary: bool) -> list[Action] | None:
        """``source``'s peer sent a whole message in one frame (already unmasked and checked).

        The common case of a relay, so it builds nothing: ``None`` means "send ``payload`` to the
        other side as one frame now" (counted already, rule 1).  Otherwise (the other side is not
        open yet, is closing, or the message is not smaller than ``chunk_size``) it is exactly
        :meth:`message_begin`, :meth:`frame_data`, :meth:`message_end`, whose actions it returns.
        """
        s = self.sides[source]
        n = len(payload)
        if not s.in_message and not s.mute and not s.gone and n < self.chunk_size:
            d = self.sides[s.other]
            if d.open and not d.close_sent and not d.gone:
                c = s.counters
                c.messages_in += 1
                c.octets_in += n
                c = d.counters
                c.messages_out += 1
                c.octets_out += n
                return None
        out = self.message_begin(source, binary)
        out += self.frame_data(source, payload)
        out += self.message_end(source)
        return out

    def message_begin(self, source: str, binary: bool) -> list[Action]:
        """``source``'s peer starts a message."""
        s = self.sides[source]
        s.in_message = True
        s.discard = s.mute or s.gone
        s.binary = binary
        s.pending, s.pending_size, s.begun, s.size = [], 0, False, 0
        return []

    def frame_data(self, source: str, payload: bytes) -> list[Action]:
        """Payload of the current frame (already unmasked and inflated)."""
        s = self.sides[source]
        out: list[Action] = []
        if not s.in_message or s.discard or not payload:
            return out
        s.size += len(payload)
        s.pending.append(payload)
        s.pending_size += len(payload)
        if s.pending_size >= self.chunk_size:
            self._flush(s, out)
        return out

    def frame_end(self, source: str) -> list[Action]:
        """A non-final frame of the current message is complete: send on what it carried."""
        s = self.sides[source]
        out: list[Action] = []
        if s.in_message and not s.discard:
            self._flush(s, out)
        return out

    def message_end(self, source: str) -> list[Action]:
        """``source``'s peer completed its message (the final frame was valid)."""
        s = self.sides[source]
        out: list[Action] = []
        if not s.in_message:
            return out
        s.in_message = False
        if s.discard:
            return out
        s.counters.messages_in += 1
        s.counters.octets_in += s.size
        dest = other(source)
        if s.begun:
            self._flush(s, out)
            self._emit(EndMessage(dest), out)
        else:
            self._emit(SendMessage(dest, b"".join(s.pending), s.binary), out)
        s.pending, s.pending_size, s.begun = [], 0, False
        return out

    def _flush(self, s: _Side, out: list[Action]) -> None:
        if not s.pending_size:
            return
        dest = other(s.name)
        if not s.begun:
            s.begun = True
            self._emit(BeginMessage(dest, s.binary), out)
        self._emit(SendFrame(dest, b"".join(s.pending)), out)
        s.pending, s.pending_size = [], 0

    def close_received(self, source: str, code: int | None, reason: str) -> list[Action]:
        """``source``'s peer sent a (valid) close frame."""
        s = self.sides[source]
        d = self.sides[other(source)]
        out: list[Action] = []
        s.counters.close_in = code
        if self.ended_by is None:
            self.ended_by = (source, code)
        s.mute = True
        self._drop_message(s)
        if s.close_sent:
            # The answer to a close wsrelay sent: if that close was forwarded from the other
            # side's peer, this answer is the other side's answer (rule 3).
            if d.peer_close is not None:
                self._answer(d, code, reason, out)
            return out
        s.peer_close = (code, reason)
        if d.gone or d.close_sent:
            self._echo(s, out)  # nobody to ask: answer with the peer's own code
            return out
        forward = code if close_code_sendable(code) else None
        self._emit(SendClose(d.name, forward, reason if forward is not None else ""), out)
        return out

    def failed(self, source: str, code: int) -> list[Action]:
        """wsrelay failed ``source`` (a protocol error of its peer; Autobahn sent ``code``)."""
        s = self.sides[source]
        out: list[Action] = []
        if self.ended_by is None:
            self.ended_by = ("wsrelay", code)
        s.mute = True
        self._drop_message(s)
        if not s.close_sent:
            s.close_sent = True
            s.peer_close = None
            s.counters.close_out = code
        self._partner_ended(self.sides[other(source)], out)
        return out

    def lost(self, source: str) -> list[Action]:
        """``source``'s connection is gone (cleanly after a close, or not)."""
        s = self.sides[source]
        out: list[Action] = []
        if s.gone:
            return out
        if self.ended_by is None:
            self.ended_by = (source, CLOSE_ABNORMAL)
        s.gone = True
        s.queue.clear()
        self._drop_message(s)
        self._partner_ended(self.sides[other(source)], out)
        return out

    def close_both(self, code: int, reason: str) -> list[Action]:
        """wsrelay ends the pair itself (idle timeout, shutdown): each side gets ``code``."""
        out: list[Action] = []
        if self.ended_by is None:
            self.ended_by = ("wsrelay", code)
        for s in self.sides.values():
            if s.gone:
                continue
            if not s.open:
                self._emit(Abort(s.name), out)
            elif s.peer_close is not None:
                self._echo(s, out)
            else:
                self._emit(SendClose(s.name, code, reason), out)
        return out

    def _drop_message(self, s: _Side) -> None:
        """A message cut short by a close: the other side is closing too, so it is not ended."""
        if s.in_message:
            s.discard = True
            s.pending, s.pending_size = [], 0


def run(relay: Relay, events: Iterable[tuple[str, tuple[object, ...]]]) -> list[Action]:
    """Feed ``(method name, args)`` events to ``relay``; all the actions, in order (for tests)."""
    out: list[Action] = []
    for name, args in events:
        out.extend(getattr(relay, name)(*args))
    return out
