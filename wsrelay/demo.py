"""A small demo upstream: an HTML page, JSON endpoints and WebSocket endpoints.

``wsrelay-demo-upstream --port 9001`` (or ``python -m wsrelay.demo``) serves:

- ``/``: a page that opens a WebSocket back through whatever proxy served it, sends what you
  type and shows the echo with its round-trip time; what each hop negotiated (the subprotocol and
  extensions the browser got, and those wsrelay negotiated with this upstream); the close code and
  reason when the socket closes; a reconnect button; and the headers the upstream saw (so
  X-Forwarded-* are visible);
- ``/api/info``: JSON with the request's method, path and headers, as the upstream received them;
- ``/api/ws?id=ID``: JSON with what the upstream saw and negotiated for the WebSocket opened with
  ``?id=ID`` (handshake headers, the subprotocols and extensions offered, those chosen); the last
  256 connections are kept;
- ``/ws/echo``: a WebSocket echo (text stays text, binary stays binary, permessage-deflate
  accepted, the first offered subprotocol chosen);
- ``/ws/close?code=4001&reason=bye``: a WebSocket the upstream closes, as soon as it is open, with
  that code (1000 or 3000-4999) and reason, to show close codes travelling to the client.

It is what the sample ``etc/relay.ini`` points at, and the upstream the tests use.  Nothing here
logs payloads or cookies; the JSON endpoints show a request's own headers back to its sender.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import OrderedDict
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
<style>body{font-family:sans-serif;max-width:52em;margin:2em auto}
#log{border:1px solid #ccc;padding:.5em;min-height:6em;max-height:14em;overflow:auto;
white-space:pre-wrap;font-family:monospace}
.hops{display:flex;gap:1em}.hops div{flex:1;border:1px solid #ccc;padding:0 .6em}
.hops pre{white-space:pre-wrap;margin:.4em 0}h2{font-size:1.1em;margin:1em 0 .3em}
#state{font-weight:bold}</style></head>
<body><h1>wsrelay demo</h1>
<p>This page came from the demo upstream through wsrelay. The box below talks to the upstream's
WebSocket echo through the relay: wsrelay terminates the WebSocket on both sides, so each hop
negotiates its own subprotocol and extensions.</p>
<p><input id="msg" value="hello through wsrelay" size="36"> <button id="send">Send</button>
<button id="reconnect">Reconnect</button> <button id="upclose">Upstream closes (4001)</button></p>
<p>Socket: <span id="state">connecting...</span></p>
<div class="hops">
<div><h2>Browser &harr; wsrelay</h2><pre id="client">-</pre></div>
<div><h2>wsrelay &harr; upstream</h2><pre id="upstream">-</pre></div>
</div>
<h2>Messages (round-trip time)</h2><div id="log"></div>
<h2>What the upstream saw (the request for /api/info)</h2><pre id="info" style="white-space:pre-wrap">loading...</pre>
<script>
const $ = (id) => document.getElementById(id);
const log = (t) => { const l = $('log'); l.textContent += t + '\\n'; l.scrollTop = l.scrollHeight; };
const scheme = location.protocol === 'https:' ? 'wss://' : 'ws://';
let ws = null, sentAt = [], rtts = [];
function show(sock, text) { if (sock === ws) $('state').textContent = text; }
function connect(path) {
  if (ws && ws.readyState <= 1) ws.close(1000, 'reconnecting');
  const id = Math.random().toString(36).slice(2, 12);
  const sock = new WebSocket(scheme + location.host + path + (path.includes('?') ? '&' : '?') + 'id=' + id,
                             ['demo.v1']);
  sock.binaryType = 'arraybuffer';
  ws = sock; sentAt = []; rtts = [];
  show(sock, 'connecting...');
  $('client').textContent = $('upstream').textContent = '-';
  sock.onopen = () => {
    show(sock, 'open');
    $('client').textContent = 'URL: ' + sock.url.split('?')[0] + '\\nsubprotocol: ' + (sock.protocol || '(none)')
      + '\\nextensions: ' + (sock.extensions || '(none)');
    fetch('/api/ws?id=' + id).then(r => r.json()).then(j => {
      $('upstream').textContent = 'subprotocol: ' + (j.protocol || '(none)')
        + '\\nextensions: ' + (j.extensions.join(', ') || '(none)')
        + '\\noffered by wsrelay: ' + (j.offered_extensions.join(', ') || '(none)')
        + '\\nX-Forwarded-Proto: ' + (j.headers['x-forwarded-proto'] || '-');
    }).catch((e) => { $('upstream').textContent = 'unknown (' + e + ')'; });
  };
  sock.onmessage = (e) => {
    if (sock !== ws) return;
    const t0 = sentAt.shift();
    const rtt = t0 === undefined ? NaN : performance.now() - t0;
    rtts.push(rtt);
    const data = typeof e.data === 'string' ? e.data : '[' + e.data.byteLength + ' bytes]';
    log('echo in ' + rtt.toFixed(1) + ' ms: ' + (data.length > 80 ? data.slice(0, 77) + '...' : data));
  };
  sock.onclose = (e) => {
    show(sock, 'closed: code ' + e.code + (e.reason ? ', reason "' + e.reason + '"' : ', no reason')
         + (e.wasClean ? '' : ' (not clean)'));
  };
  return sock;
}
function send(text) { sentAt.push(performance.now()); ws.send(text); }
$('send').onclick = () => send($('msg').value);
$('reconnect').onclick = () => connect('/ws/echo');
$('upclose').onclick = () => connect('/ws/close?code=4001&reason=' + encodeURIComponent('closed by the upstream'));
window.demo = { connect, send, get socket() { return ws; }, get rtts() { return rtts; } };
connect('/ws/echo');
fetch('/api/info').then(r => r.json()).then(j => {
  $('info').textContent = j.method + ' ' + j.uri + '\\n' + j.headers.map(([k, v]) => k + ': ' + v).join('\\n'); });
</script></body></html>
"""

#: How many WebSocket connections /api/ws remembers.
SESSIONS_KEPT = 256


class EchoProtocol(WebSocketServerProtocol):
    """Echo every message back as it came (text as text, binary as binary).

    When the factory has a ``sessions`` dict (the demo site's does), the handshake is recorded
    there under the ``id`` query parameter, for ``/api/ws``."""

    def onConnect(self, request: Any) -> str | None:
        self._record: dict[str, Any] | None = None
        chosen = request.protocols[0] if request.protocols else None
        sessions = getattr(self.factory, "sessions", None)
        ids = request.params.get("id")
        if sessions is not None and ids:
            self._record = {
                "path": request.path,
                "headers": dict(request.headers),
                "offered_protocols": list(request.protocols),
                "offered_extensions": [self._offer_text(o) for o in request.extensions],
                "protocol": chosen,
                "extensions": [],
            }
            sessions[ids[0]] = self._record
            while len(sessions) > SESSIONS_KEPT:
                sessions.popitem(last=False)
        return chosen

    @staticmethod
    def _offer_text(offer: Any) -> str:
        name, params = offer  # (extension name, {parameter: [values]}) as Autobahn parsed it
        return "; ".join([name] + [k if v is True else f"{k}={v}" for k, vs in params.items() for v in vs])

    @staticmethod
    def _in_use_text(extension: Any) -> str:
        state = extension.__json__() if hasattr(extension, "__json__") else {}
        words = [getattr(extension, "EXTENSION_NAME", type(extension).__name__)]
        for key in ("server_no_context_takeover", "client_no_context_takeover"):
            if state.get(key):
                words.append(key)
        for key in ("server_max_window_bits", "client_max_window_bits"):
            if state.get(key):
                words.append(f"{key}={state[key]}")
        return "; ".join(words)

    def onOpen(self) -> None:
        if getattr(self, "_record", None) is not None:
            assert self._record is not None
            self._record["extensions"] = [self._in_use_text(e) for e in self.websocket_extensions_in_use]

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.sendMessage(payload, isBinary)


class ClosingProtocol(EchoProtocol):
    """Closes as soon as it is open with the ``code`` (default 4001) and ``reason`` of its query."""

    def onOpen(self) -> None:
        super().onOpen()
        params = self.http_request_params or {}
        try:
            code = int(params.get("code", ["4001"])[0])
        except ValueError:
            code = 4001
        if code != 1000 and not 3000 <= code <= 4999:
            code = 4001
        reason = params.get("reason", ["closed by the upstream"])[0][:100]
        self.sendClose(code, reason)


def _accept_deflate(offers: list[Any]) -> Any:
    for offer in offers:
        if isinstance(offer, PerMessageDeflateOffer):
            return PerMessageDeflateOfferAccept(offer)
    return None


def echo_factory(reactor: Any | None = None, protocol: type[EchoProtocol] = EchoProtocol,
                 sessions: OrderedDict[str, dict[str, Any]] | None = None) -> WebSocketServerFactory:
    """An Autobahn echo server factory with sane limits (64 MiB messages, deflate accepted);
    ``sessions``: where handshakes are recorded for /api/ws."""
    factory = WebSocketServerFactory(server=None, reactor=reactor)
    factory.protocol = protocol
    factory.sessions = sessions  # type: ignore[attr-defined]
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


class Sessions(Resource):
    """``/api/ws?id=ID``: what the upstream saw and negotiated for that WebSocket (404 if unknown)."""

    isLeaf = True

    def __init__(self, sessions: OrderedDict[str, dict[str, Any]]) -> None:
        super().__init__()
        self.sessions = sessions

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        ids = (request.args or {}).get(b"id") or [b""]
        record = self.sessions.get(ids[0].decode("utf-8", "replace"))
        if record is None:
            request.setResponseCode(404)
            return b'{"error": "no such WebSocket id"}'
        return json.dumps(record).encode("utf-8")


def demo_site(reactor: Any | None = None) -> Site:
    """The demo upstream's site."""
    sessions: OrderedDict[str, dict[str, Any]] = OrderedDict()
    root = Resource()
    root.putChild(b"", Page())
    api = Resource()
    api.putChild(b"info", Info())
    api.putChild(b"ws", Sessions(sessions))
    root.putChild(b"api", api)
    ws = Resource()
    ws.putChild(b"echo", WebSocketResource(echo_factory(reactor, sessions=sessions)))
    ws.putChild(b"close", WebSocketResource(echo_factory(reactor, ClosingProtocol, sessions)))
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
