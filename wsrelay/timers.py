"""Deadlines that judge a peer only after reading what it sent.

Twisted's reactor runs the timers that are due before it polls for I/O.  After wsrelay itself
was held up past a deadline (a long pause of the process, a machine out of CPU, SIGSTOP), a
deadline on a peer would fire with the peer's answer already in the socket buffer, unread: a
close handshake taken for unanswered (and the messages before the close reply dropped), a pong
for missed, an upstream's 101 for a handshake timeout, a connection for not made in time, a
request for idle.  :func:`call_after_reads` schedules ``call`` so that, once due, it waits for
one more turn of the reactor: the poll of that turn reads what is pending (and may settle the
matter, e.g. cancel the call), and only then does ``call`` run.  Under a clock that is advanced
by hand (``twisted.internet.task.Clock``) the extra turn takes no time, so tests see the same
timing as with ``callLater``.

:func:`connect_within` puts a connection attempt under such a deadline (the endpoints' own
timeout, a plain ``callLater``, is kept only as a late backstop).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet import error as neterror
from twisted.python.failure import Failure

#: Seconds added to an endpoint's own connect timeout, which stays only as a backstop behind
#: :func:`connect_within`'s.
BACKSTOP = 5.0


class AfterReads:
    """A scheduled call, as ``IDelayedCall`` for what wsrelay uses of one (``active``, ``cancel``,
    ``getTime``), that runs one reactor turn after it is due."""

    __slots__ = ("reactor", "call", "args", "delayed")

    def __init__(self, reactor: Any, seconds: float, call: Callable[..., object], *args: Any) -> None:
        self.reactor = reactor
        self.call = call
        self.args = args
        self.delayed: Any = reactor.callLater(seconds, self._due)

    def _due(self) -> None:
        self.delayed = self.reactor.callLater(0, self._run)

    def _run(self) -> None:
        self.delayed = None
        self.call(*self.args)

    def active(self) -> bool:
        return self.delayed is not None and self.delayed.active()

    def cancel(self) -> None:
        delayed, self.delayed = self.delayed, None
        if delayed is not None and delayed.active():
            delayed.cancel()

    def getTime(self) -> float:  # noqa: N802 (IDelayedCall's name)
        return self.delayed.getTime() if self.delayed is not None else self.reactor.seconds()


def call_after_reads(reactor: Any, seconds: float, call: Callable[..., object], *args: Any) -> AfterReads:
    """``reactor.callLater(seconds, call, *args)``, but ``call`` runs only after the reactor has
    read what arrived meanwhile (see the module's docstring)."""
    return AfterReads(reactor, seconds, call, *args)


def connect_within(reactor: Any, connecting: defer.Deferred[Any], seconds: float) -> defer.Deferred[Any]:
    """``connecting`` (an endpoint's ``connect``), failed with ``TimeoutError`` if it has not
    succeeded ``seconds`` later, judged after reads; a cancel by the caller stays a cancel."""
    timer = call_after_reads(reactor, seconds, connecting.cancel)

    def settled(result: Any) -> Any:
        if timer.active():
            timer.cancel()
        elif isinstance(result, Failure) and result.check(defer.CancelledError, neterror.ConnectingCancelledError):
            return Failure(neterror.TimeoutError(f"no connection within {seconds:g}s"))
        return result

    return connecting.addBoth(settled)
