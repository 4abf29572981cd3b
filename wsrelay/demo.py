"""A small demo upstream: an HTML page, a JSON endpoint and a WebSocket echo.

``wsrelay-demo-upstream --port 9001`` (or ``python -m wsrelay.demo``) serves:

- ``/``: a page that opens a WebSocket back through whatever proxy served it, sends what you
  type and shows the echo, with the headers the upstream saw (so X-Forwarded-* are visible);
- ``/api/info``: JSON with the request's method, path and headers, as the upstream received them;
- ``/ws/echo``: a WebSocket echo (text stays text, binary stays binary, permessage-deflate
  accepted, subprotocols echoed back).

It is what the sample ``etc/relay.ini`` points at, and the upstream the tests use.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.compress import PerMessageDeflateOffer, PerMessageDeflateOfferAccept
from twisted.internet.defer import Deferred
from twisted.internet.task import react
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

PAGE = b"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>wsrelay demo</title>
<style>body{font-family:sans-serif;max-width:46em;margin:2em auto}#log{border:1px solid #ccc;
padding:.5em;min-height:8em;white-space:pre-wrap;font-family:monospace}</style></head>
<body><h1>wsrelay demo</h1>
<p>This page came from the demo upstream through wsrelay. The box below talks to the upstream's
WebSocket echo through the relay.</p>
<p><input id="msg" value="hello through wsrelay" size="40"> <button id="send">Send</button>
<span id="state">connecting...</span></p>
<div id="log"></div>
<h2>What the upstream saw</h2><pre id="info">loading...</pre>
<script>
const log = (t) => { document.getElementById('log').textContent += t + '\\n'; };
const scheme = location.protocol === 'https:' ? 'wss://' : 'ws://';
const ws = new WebSocket(scheme + location.host + '/ws/echo');
ws.onopen = () => { document.getElementById('state').textContent = 'open'; };
ws.onmessage = (e) => log('echo: ' + e.data);
ws.onclose = (e) => { document.getElementById('state').textContent = 'closed (' + e.code + ')'; };
document.getElementById('send').onclick = () => ws.send(document.getElementById('msg').value);
fetch('/api/info').then(r => r.json()).then(j => {
  document.getElementById('info').textContent = JSON.stringify(j, null, 2); });
</script></body></html>
"""


class EchoProtocol(WebSocketServerProtocol):
    """Echo every message back as it came (text as text, binary as binary)."""

    def onConnect(self, request: Any) -> str | None:
        return request.protocols[0] if request.protocols else None

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.sendMessage(payload, isBinary)


def _accept_deflate(offers: list[Any]) -> Any:
    for offer in offers:
        if isinstance(offer, PerMessageDeflateOffer):
            return PerMessageDeflateOfferAccept(offer)
    return None


def echo_factory(reactor: Any | None = None) -> WebSocketServerFactory:
    """An Autobahn echo server factory with sane limits (64 MiB messages, deflate accepted)."""
    factory = WebSocketServerFactory(server=None, reactor=reactor)
    factory.protocol = EchoProtocol
    factory.setProtocolOptions(
        perMessageCompressionAccept=_accept_deflate,
        maxMessagePayloadSize=64 * 1024 * 1024,
        maxFramePayloadSize=64 * 1024 * 1024,
        failByDrop=False,
        webStatus=False,
    )
    return factory


class Page(Resource):
    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        return PAGE


class Info(Resource):
    isLeaf = True

    def render(self, request: Request) -> bytes:
        body = request.content.read() if request.content is not None else b""
        info = {
            "method": request.method.decode("latin-1"),
            "uri": request.uri.decode("latin-1"),
            "headers": [
                [name.decode("latin-1"), value.decode("latin-1")]
                for name, values in request.requestHeaders.getAllRawHeaders()
                for value in values
            ],
            "body_length": len(body),
        }
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(info).encode("utf-8")


def demo_site(reactor: Any | None = None) -> Site:
    """The demo upstream's site."""
    root = Resource()
    root.putChild(b"", Page())
    api = Resource()
    api.putChild(b"info", Info())
    root.putChild(b"api", api)
    ws = Resource()
    ws.putChild(b"echo", WebSocketResource(echo_factory(reactor)))
    root.putChild(b"ws", ws)
    return Site(root)


def serve(reactor: Any, port: int, interface: str) -> Deferred[None]:
    """Listen and serve until the process is stopped."""
    listening = reactor.listenTCP(port, demo_site(reactor), interface=interface)
    address = listening.getHost()
    sys.stdout.write(f"demo upstream listening on http://{address.host}:{address.port}/\n")
    sys.stdout.flush()
    return Deferred()  # never fires: Ctrl-C or SIGTERM stops the reactor


def main(argv: list[str] | None = None) -> None:
    """Run the demo upstream until interrupted."""
    parser = argparse.ArgumentParser(description="wsrelay's demo upstream")
    parser.add_argument("--port", type=int, default=9001)
    parser.add_argument("--interface", default="127.0.0.1")
    args = parser.parse_args(argv)
    react(serve, (args.port, args.interface))


if __name__ == "__main__":
    main()
