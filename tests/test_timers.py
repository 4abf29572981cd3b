"""wsrelay.timers: deadlines judged after the reactor has read what arrived.

The first test runs Twisted's real epoll reactor, turn by turn, on a real loopback connection:
the order of timers and reads within a turn is the reactor's own, which no fake clock shows.
"""

from __future__ import annotations

import select
import socket
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet import error as neterror
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock

from wsrelay.http.deadline import Deadline
from wsrelay.timers import call_after_reads, connect_within


@pytest.mark.parametrize("kind", ["call_after_reads", "http Deadline"])
def test_a_deadline_due_with_unread_bytes_runs_after_they_are_read(kind: str) -> None:
    """Both calls are due when the turn starts and a byte waits in the socket: a plain callLater
    runs before the reactor reads it (Twisted runs due timers, then polls); a deadline (of
    call_after_reads, or the HTTP engine's Deadline) runs after."""
    from twisted.internet.epollreactor import EPollReactor

    reactor = EPollReactor()  # never run: turned by hand
    events: list[str] = []
    made: list[Protocol] = []

    class Reader(Protocol):
        def connectionMade(self) -> None:
            made.append(self)

        def dataReceived(self, data: bytes) -> None:
            events.append("read")

    port = reactor.listenTCP(0, Factory.forProtocol(Reader), interface="127.0.0.1")
    client = socket.create_connection(("127.0.0.1", port.getHost().port), timeout=5)
    try:
        for _ in range(100):
            if made:
                break
            reactor.iterate(0.05)
        assert made
        client.sendall(b"x")
        server_side = made[0].transport.getHandle()
        assert select.select([server_side], [], [], 5)[0]  # the byte is in wsrelay's buffer
        if kind == "call_after_reads":
            call_after_reads(reactor, 0, events.append, "deadline")
        else:
            Deadline(reactor).set(0, lambda: events.append("deadline"))
        reactor.callLater(0, events.append, "plain")
        for _ in range(3):
            reactor.iterate(0)
        assert events == ["plain", "read", "deadline"]
    finally:
        client.close()
        port.stopListening()
        for p in made:
            p.transport.abortConnection()
        reactor.iterate(0)
        reactor.disconnectAll()


def test_a_deadline_cancelled_in_its_extra_turn_does_not_run() -> None:
    clock = Clock()
    ran: list[int] = []
    timer = call_after_reads(clock, 5, ran.append, 1)
    assert timer.active() and timer.getTime() == 5
    clock.advance(4.9)
    assert not ran
    clock.advance(0.1)  # under Clock the extra turn takes no time
    assert ran == [1] and not timer.active()
    again = call_after_reads(clock, 1, ran.append, 2)
    again.cancel()
    clock.advance(2)
    assert ran == [1] and not again.active()


def test_connect_within_turns_its_own_cancel_into_a_timeout() -> None:
    """Not connected in time: TimeoutError (what the callers count as connect_timeout); a cancel by
    the caller stays a cancel; a connection in time is passed on and leaves no timer behind."""
    clock = Clock()
    results: list[Any] = []
    slow: defer.Deferred[Any] = defer.Deferred()
    connect_within(clock, slow, 5).addBoth(results.append)
    clock.advance(5)
    assert results and results[-1].check(neterror.TimeoutError)
    assert "no connection within 5s" in str(results[-1].value)

    left: defer.Deferred[Any] = defer.Deferred()
    connect_within(clock, left, 5).addBoth(results.append)
    left.cancel()
    assert results[-1].check(defer.CancelledError)

    fast: defer.Deferred[Any] = defer.Deferred()
    connect_within(clock, fast, 5).addBoth(results.append)
    fast.callback("protocol")
    assert results[-1] == "protocol" and not clock.getDelayedCalls()


@pytest.mark.parametrize("seconds", [0.0, 1.5])
def test_get_time_is_when_it_is_due(seconds: float) -> None:
    clock = Clock()
    clock.advance(10)
    assert call_after_reads(clock, seconds, lambda: None).getTime() == 10 + seconds
