"""How one proxied HTTP request ends toward its client: a complete response, wsrelay's own error
answer, or an aborted connection; and what every ending lets go.

Invariants:

- Each ending happens once (``done``): whichever comes first wins, the others do nothing.
- Every ending releases the lease and stops the exchange's timer first, so nothing that follows
  can count against the server; an abort also lets go of the upstream connection (or the attempt
  to make one).  The request then no longer refers to its exchange (no reference cycle is left).
- A response whose head has gone out is never followed by a second head: an error then aborts the
  client's connection, without the terminating chunk, so a truncated body is never passed off as
  complete.
"""

from __future__ import annotations

from wsrelay.answers import answer_error
from wsrelay.errors import ProxyError


class Endings:
    """The endings of :class:`wsrelay.http.exchange.Exchange`, which holds the state they use:
    ``request``, ``proxy``, ``lease``, ``conn``, ``connecting``, ``deadline_timer``, ``done``,
    ``streaming``."""

    def drop_upstream(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.abandon()
        connecting, self.connecting = self.connecting, None
        if connecting is not None:
            connecting.cancel()

    def answer(self, error: ProxyError) -> None:
        if self.request.startedWriting:  # cannot happen before streaming; never two heads
            self.abort_client()
            return
        self.streaming = False
        self.request.write(answer_error(self.request, error))
        self.finish()

    def finish(self) -> None:
        if not self.end():
            return
        self.request.unregisterProducer()
        self.request.finish()
        self.proxy.gateway.closed(self)

    def abort_client(self) -> None:
        """End the client's connection without a clean end of the response."""
        if not self.end():
            return
        self.drop_upstream()
        self.request.unregisterProducer()
        self.request.code = 502 if not self.request.startedWriting else self.request.code
        # Flush what was relayed, then close without the terminating chunk: the client sees a body
        # shorter than its Content-Length (or an unterminated chunked body), never a complete one.
        transport = self.request.channel.transport
        if transport is not None:
            transport.loseConnection()
        self.proxy.gateway.closed(self)

    def end(self) -> bool:
        """What every ending does first, once: False if the exchange had already ended.  The lease
        and the timer go (nothing that follows counts against the server), and the request no
        longer refers to the exchange (``wsrelay_exchange``, whose only use is to tell a live
        exchange that its client left), so the two make no reference cycle for CPython's
        collector."""
        if self.done:
            return False
        self.done = True
        self.release()
        if self.request.wsrelay_exchange is self:
            self.request.wsrelay_exchange = None
        return True

    def release(self) -> None:
        self.deadline_timer.stop()
        if self.lease is not None:
            self.lease.release()
            self.lease = None

    def shutdown(self) -> None:
        """Stopping and the drain time is over: end this exchange now."""
        self.drop_upstream()
        self.abort_client()
