"""A stop that refuses nothing: what a draining process does with its ports and its WebSocket pairs.

Invariants:

- Nothing here imports the global reactor: the clock is passed in.
- A listening TCP socket is closed only after every connection the kernel has already queued on
  it (handshake done, not yet accepted) has been accepted, in the same turn of the event loop as
  the close: with ``SO_REUSEPORT`` the kernel does not move those to the other sockets of the
  port (unless ``net.ipv4.tcp_migrate_req = 1``), it resets them.  What is accepted then is served
  like any other connection of a draining process (one request, then the connection is closed).
- WebSocket pairs never end by themselves, so a stop closes them (1001, "going away") spread
  evenly over ``ws_drain_spread``: pair ``i`` of ``n`` at ``i * spread / n`` seconds, so that their
  clients reconnect to the new process as a ramp, not all in the same instant.
"""

from __future__ import annotations

import select
from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet import main, tcp
from twisted.internet.defer import Deferred, inlineCallbacks, maybeDeferred
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure

from wsrelay.config import Config
from wsrelay.upgrade import CLOSE_HANDSHAKE_TIMEOUT

log = Logger()

#: At most this many rounds of accepting what is queued (each accepts up to Twisted's batch).
MAX_ACCEPT_ROUNDS = 10000


def stop_listening(port: IListeningPort) -> Deferred[None]:
    """Stop listening on ``port`` without resetting what its socket has queued.

    For a TCP port (Twisted's ``tcp.Port``, which adopted sockets and ``systemd:`` endpoints are
    too): stop polling it, accept every queued connection (handing each to the factory, as the
    event loop would), then close the socket at once, before another turn of the event loop can
    let more connections queue unseen.  When a round accepts none (the process is out of
    descriptors, or at ``max_connections`` with the port not released from the cap:
    ``ConnectionCap.release``), the rest are left to the close.  Any other port just stops
    listening.
    """
    if not isinstance(port, tcp.Port) or not port.connected:
        return maybeDeferred(port.stopListening)
    port.stopReading()
    port.disconnecting = True  # as Twisted's loseConnection: nothing (the cap) starts reading it again
    poller = select.poll()
    poller.register(port.fileno(), select.POLLIN)
    for _ in range(MAX_ACCEPT_ROUNDS):
        if not poller.poll(0):
            break
        taken = port.sessionno
        port.doRead()
        if port.sessionno == taken:  # none could be (out of descriptors, or at the cap): stop trying
            break
    # Closed the instant the queue is seen empty: Twisted's own close comes after a log line,
    # time in which the kernel could queue (then reset) another connection on this socket.
    port.socket.close()
    # What port.stopListening() does one turn of the event loop later, done now (its close of
    # the socket, already closed, does nothing).
    port.connectionLost(Failure(main.CONNECTION_DONE))
    done: Deferred[None] = Deferred()
    done.callback(None)
    return done


def close_times(count: int, spread: float) -> list[float]:
    """When each of ``count`` pairs is closed, in seconds from the start of the drain: evenly
    spaced over ``spread`` (the first at once, the last ``spread / count`` before its end)."""
    return [spread * i / count for i in range(count)]


class PairCloser:
    """Closes open WebSocket pairs (their ``shutdown()``: 1001 to both sides) over ``spread`` seconds.

    ``still_open(pair)`` is checked at each pair's time: a pair that ended meanwhile is left alone.
    """

    def __init__(self, clock: Any, spread: float, still_open: Callable[[Any], bool]) -> None:
        self.clock = clock
        self.spread = spread
        self.still_open = still_open
        self.calls: list[Any] = []

    def start(self, pairs: Iterable[Any]) -> int:
        """Schedule the closes; returns how many pairs there are."""
        pairs = list(pairs)
        for pair, delay in zip(pairs, close_times(len(pairs), self.spread)):
            if delay <= 0:
                self._close(pair)
            else:
                self.calls.append(self.clock.callLater(delay, self._close, pair))
        return len(pairs)

    def _close(self, pair: Any) -> None:
        if self.still_open(pair):
            pair.shutdown()

    def cancel(self) -> None:
        """Forget the closes still to come (the drain's last resort closes everything anyway)."""
        for call in self.calls:
            if call.active():
                call.cancel()
        self.calls = []


def stop_time(config: Config) -> float:
    """The longest a drain takes, and 5 s more (a worker gets this long before SIGKILL)."""
    return max(config.drain_timeout, config.ws_drain_spread) + CLOSE_HANDSHAKE_TIMEOUT + 5


@inlineCallbacks
def drain(clock: Any, gateway: Any, config: Config, label: str = ""):  # type: ignore[no-untyped-def]
    """Wait for ``gateway``'s live exchanges to end, once its listeners are closed: HTTP exchanges
    get ``drain_timeout`` (then they are ended), open WebSocket pairs are closed over
    ``ws_drain_spread`` and get ``CLOSE_HANDSHAKE_TIMEOUT`` for their close handshakes; whatever
    is left after that is ended, with a bounded moment for its close frames to go out."""
    closer = PairCloser(clock, config.ws_drain_spread, lambda pair: pair in gateway.live)
    pairs = closer.start(gateway.open_pairs())
    log.info("draining {n} open exchanges: HTTP ones get up to {t}s, {pairs} WebSocket pairs are closed over"
             " {spread}s{label}", n=len(gateway.live), t=config.drain_timeout, pairs=pairs,
             spread=config.ws_drain_spread, label=label)
    http_deadline = clock.callLater(config.drain_timeout, gateway.shutdown_all, pairs=False)
    yield idle_within(clock, gateway, max(config.drain_timeout, config.ws_drain_spread) + CLOSE_HANDSHAKE_TIMEOUT)
    if http_deadline.active():
        http_deadline.cancel()
    closer.cancel()
    if gateway.live:
        gateway.shutdown_all()
        yield idle_within(clock, gateway, 2.0)


def idle_within(clock: Any, gateway: Any, seconds: float) -> Deferred[None]:
    """Fires when ``gateway`` has no live exchange, or after ``seconds``, whichever comes first."""
    idle = gateway.when_idle()
    timer = clock.callLater(seconds, idle.cancel)

    def done(result: object) -> None:
        if timer.active():
            timer.cancel()

    return idle.addBoth(done)
