"""Flow control for a relayed WebSocket pair: when wsrelay stops reading a peer, and why.

Nothing here touches sockets; the callables given do.

Twisted gives a transport one producer, which it pauses when its write buffer is full and resumes
when the buffer has drained.  Two reasons stop wsrelay reading a peer, and either is enough:

- :data:`PEER_FULL`: the *other* peer's buffer is full (what this peer sends cannot go on);
- :data:`OWN_FULL`: this peer's *own* buffer is full (it does not read what wsrelay sends it, and
  reading it makes more: pongs, close replies).

So each transport's producer is a :class:`BufferWatch` that holds both legs' :class:`ReadGate`
with their reasons, and a leg reads again only when no reason is left.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

#: The other peer's write buffer is full: relay back-pressure.
PEER_FULL = "peer full"
#: The peer's own write buffer is full: it does not read what wsrelay sends it.
OWN_FULL = "own full"

_NONE: frozenset[str] = frozenset()


class ReadGate:
    """The reasons wsrelay stopped reading one peer: ``pause`` is called when the first reason
    appears, ``resume`` when the last one is gone.  Holding or releasing a reason twice counts once."""

    __slots__ = ("_pause", "_resume", "reasons")

    def __init__(self, pause: Callable[[], None], resume: Callable[[], None]) -> None:
        self._pause = pause
        self._resume = resume
        # a frozenset, replaced on each change: an idle gate holds the one shared empty set
        self.reasons: frozenset[str] = _NONE

    @property
    def paused(self) -> bool:
        """Reading is stopped (for at least one reason)."""
        return bool(self.reasons)

    def hold(self, reason: str) -> None:
        """Stop reading for ``reason``."""
        if reason in self.reasons:
            return
        self.reasons = self.reasons | {reason}
        if len(self.reasons) == 1:
            self._pause()

    def release(self, reason: str) -> None:
        """``reason`` is gone; read again if it was the last one."""
        if reason not in self.reasons:
            return
        self.reasons = self.reasons - {reason}
        if not self.reasons:
            self._resume()


@implementer(IPushProducer)
class BufferWatch:
    """Registered as a transport's producer: while that transport's write buffer is full, each
    ``(gate, reason)`` given is held.

    ``stopProducing`` does nothing on purpose: when one transport dies, the relay closes the other
    leg with a close frame instead of the bare TCP close Twisted would otherwise do.
    """

    __slots__ = ("holds", "full")

    def __init__(self, holds: Sequence[tuple[ReadGate, str]]) -> None:
        self.holds = tuple(holds)
        self.full = False

    def pauseProducing(self) -> None:
        self.full = True
        for gate, reason in self.holds:
            gate.hold(reason)

    def resumeProducing(self) -> None:
        self.full = False
        for gate, reason in self.holds:
            if self.full:
                return  # a resumed reader filled the buffer again: the other holds stay
            gate.release(reason)

    def stopProducing(self) -> None:
        pass
