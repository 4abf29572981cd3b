"""An echoing Autobahn WebSocket client that drives a fuzzingserver's cases (through wsrelay).

Usage: python -m tests.autobahn_testee ws://127.0.0.1:PORT AGENT [PARALLEL]

It asks ``/getCaseCount``, runs every case at ``/runCase?case=N&agent=AGENT`` (PARALLEL at a
time, default 1) echoing each message as it came, then calls ``/updateReports?agent=AGENT``.  Each
connection has a time bound; the process exits 0 when the run completed, 1 otherwise.
"""

from __future__ import annotations

import sys
from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol, connectWS
from autobahn.websocket.compress import (
    PerMessageDeflateOffer,
    PerMessageDeflateResponse,
    PerMessageDeflateResponseAccept,
)
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredSemaphore, gatherResults, inlineCallbacks

CASE_TIMEOUT = 120.0


class _Client(WebSocketClientProtocol):
    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self.factory.echo:
            self.sendMessage(payload, isBinary)
        else:
            self.factory.messages.append(payload)

    def onClose(self, wasClean: bool, code: Any, reason: Any) -> None:
        if not self.factory.done.called:
            self.factory.done.callback(None)


def _accept(response: Any) -> Any:
    if isinstance(response, PerMessageDeflateResponse):
        return PerMessageDeflateResponseAccept(response)
    return None


def visit(url: str, echo: bool) -> Deferred[list[bytes]]:
    factory = WebSocketClientFactory(url, reactor=reactor)
    factory.protocol = _Client
    factory.echo = echo
    factory.messages = []
    factory.done = Deferred()
    factory.noisy = False
    factory.setProtocolOptions(perMessageCompressionOffers=[PerMessageDeflateOffer()],
                               perMessageCompressionAccept=_accept, maxMessagePayloadSize=0,
                               maxFramePayloadSize=0, failByDrop=False, autoPingInterval=0)
    connectWS(factory, timeout=10)
    timer = reactor.callLater(CASE_TIMEOUT, lambda: factory.done.called or factory.done.callback(None))
    factory.done.addBoth(lambda r: timer.active() and timer.cancel())
    return factory.done.addCallback(lambda _: factory.messages)


@inlineCallbacks
def run(base: str, agent: str, parallel: int):  # type: ignore[no-untyped-def]
    messages = yield visit(f"{base}/getCaseCount", echo=False)
    count = int(messages[0])
    sys.stdout.write(f"running {count} cases, {parallel} at a time\n")
    sys.stdout.flush()
    slots = DeferredSemaphore(parallel)
    yield gatherResults([slots.run(visit, f"{base}/runCase?case={case}&agent={agent}", True)
                         for case in range(1, count + 1)])
    yield visit(f"{base}/updateReports?agent={agent}", echo=False)


def main() -> None:
    base, agent = sys.argv[1], sys.argv[2]
    parallel = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    status = []
    d = run(base, agent, parallel)
    d.addCallbacks(lambda _: status.append(0), lambda f: (sys.stderr.write(f.getTraceback()), status.append(1)))
    d.addBoth(lambda _: reactor.stop())
    reactor.run()
    sys.exit(status[0] if status else 1)


if __name__ == "__main__":
    main()
