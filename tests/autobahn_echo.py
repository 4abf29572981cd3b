"""An Autobahn echo server on 127.0.0.1 (port chosen by the OS): the upstream of the Autobahn runs.

Usage: python -m tests.autobahn_echo  -> prints "echo listening on PORT".
"""

from __future__ import annotations

import sys

from autobahn.twisted.websocket import WebSocketServerFactory
from twisted.internet import reactor

from wsrelay.demo import EchoProtocol, _accept_deflate


def main() -> None:
    factory = WebSocketServerFactory(server=None, reactor=reactor)
    factory.protocol = EchoProtocol
    factory.setProtocolOptions(perMessageCompressionAccept=_accept_deflate, maxMessagePayloadSize=0,
                               maxFramePayloadSize=0, failByDrop=False, webStatus=False)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    sys.stdout.write(f"echo listening on {port.getHost().port}\n")
    sys.stdout.flush()
    reactor.run()


if __name__ == "__main__":
    main()
