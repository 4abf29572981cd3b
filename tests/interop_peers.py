"""Python peers of the interop matrix (tests/test_interop.py), each run in a process of its own
(txaio picks one framework per process: the Autobahn upstream runs on Twisted, the Autobahn
client on asyncio).

    python -m tests.interop_peers server websockets|autobahn
        -> "interop upstream KIND listening on PORT"; echoes (types kept), chooses the LAST
           subprotocol offered, accepts permessage-deflate; "!protocol" answers the chosen
           subprotocol, "!close CODE REASON" closes so; prints "closed id=ID code=C reason=R" for
           every close it receives (ID: the ?id= of the URL)
    python -m tests.interop_peers client websockets|autobahn URL ID
        -> one JSON line of what it observed, the script of tests/node/interop_client.js:
           connection ID-a: subprotocol, extensions, text, binary, a message in three fragments,
           1 MiB, "!protocol", then the client closes with 4002; connection ID-b: the upstream
           is asked to close with 4001.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import sys
from typing import Any
from urllib.parse import parse_qs, urlsplit

MiB = 1024 * 1024
OFFERED = ["interop.v1", "interop.v2"]
CLOSE_COMMAND = re.compile(r"^!close (\d+) (.*)$", re.S)
TEXT = "h\u00e9llo \u2713"
FRAGMENTS = ["frag-one|", "frag-two|", "frag-three"]


def closed_line(path: str, code: int | None, reason: str) -> None:
    ident = parse_qs(urlsplit(path).query).get("id", ["-"])[0]
    sys.stdout.write(f"closed id={ident} code={code} reason={reason}\n")
    sys.stdout.flush()


# -- upstreams -------------------------------------------------------------------------------


async def websockets_server() -> None:
    from websockets.asyncio.server import ServerConnection, serve
    from websockets.exceptions import ConnectionClosed

    async def handler(ws: ServerConnection) -> None:
        try:
            async for message in ws:
                if message == "!protocol":
                    await ws.send(ws.subprotocol or "(none)")
                elif isinstance(message, str) and (m := CLOSE_COMMAND.match(message)):
                    await ws.close(int(m.group(1)), m.group(2))
                else:
                    await ws.send(message)
        except ConnectionClosed:
            pass
        rcvd = ws.protocol.close_rcvd
        closed_line(ws.request.path, rcvd.code if rcvd else None, rcvd.reason if rcvd else "")

    async with serve(handler, "127.0.0.1", 0, subprotocols=OFFERED, max_size=64 * MiB,
                     select_subprotocol=lambda conn, offered: offered[-1] if offered else None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        print(f"interop upstream websockets listening on {port}", flush=True)
        await asyncio.Future()


def autobahn_server() -> None:
    from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
    from autobahn.websocket.compress import PerMessageDeflateOffer, PerMessageDeflateOfferAccept
    from twisted.internet import reactor

    class Upstream(WebSocketServerProtocol):
        def onConnect(self, request: Any) -> str | None:
            self.path = request.path + "?" + "&".join(f"{k}={v[0]}" for k, v in request.params.items())
            return request.protocols[-1] if request.protocols else None

        def onMessage(self, payload: bytes, isBinary: bool) -> None:
            if not isBinary and payload == b"!protocol":
                self.sendMessage((self.websocket_protocol_in_use or "(none)").encode())
            elif not isBinary and (m := CLOSE_COMMAND.match(payload.decode("utf-8"))):
                self.sendClose(int(m.group(1)), m.group(2))
            else:
                self.sendMessage(payload, isBinary)

        def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
            closed_line(getattr(self, "path", "/"), self.remoteCloseCode, self.remoteCloseReason or "")

    def accept(offers: list[Any]) -> Any:
        return next((PerMessageDeflateOfferAccept(o) for o in offers if isinstance(o, PerMessageDeflateOffer)), None)

    factory = WebSocketServerFactory(server=None, reactor=reactor)
    factory.protocol = Upstream
    factory.setProtocolOptions(perMessageCompressionAccept=accept, maxMessagePayloadSize=64 * MiB,
                               maxFramePayloadSize=64 * MiB, failByDrop=False, webStatus=False)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
    print(f"interop upstream autobahn listening on {port.getHost().port}", flush=True)
    reactor.run()  # type: ignore[attr-defined]


# -- clients ---------------------------------------------------------------------------------


async def websockets_client(url: str, ident: str) -> dict[str, Any]:
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    out: dict[str, Any] = {}
    async with connect(f"{url}?id={ident}-a", subprotocols=OFFERED, max_size=None, proxy=None) as a:
        out["protocol"] = a.subprotocol
        out["extensions"] = a.response.headers.get("Sec-WebSocket-Extensions", "")
        await a.send(TEXT)
        out["text"] = await a.recv()
        await a.send(bytes(range(256)))
        answer = await a.recv()
        out["binary"] = answer.hex() if isinstance(answer, bytes) else None
        await a.send(FRAGMENTS)  # an iterable goes out as one message in fragments
        out["fragmented"] = await a.recv()
        big = os.urandom(MiB)
        await a.send(big)
        back = await a.recv()
        out["big"] = {"length": len(back), "same": isinstance(back, bytes) and back == big}
        await a.send("!protocol")
        out["upstream_protocol"] = await a.recv()
        await a.close(4002, "client bye")
        out["client_close_answer"] = {"code": a.close_code, "reason": a.close_reason}
    async with connect(f"{url}?id={ident}-b", subprotocols=OFFERED, proxy=None) as b:
        await b.send("!close 4001 upstream bye")
        try:
            await b.recv()
        except ConnectionClosed:
            pass
        out["upstream_close"] = {"code": b.close_code, "reason": b.close_reason}
    return out


async def autobahn_client(url: str, ident: str) -> dict[str, Any]:
    from autobahn.asyncio.websocket import WebSocketClientFactory, WebSocketClientProtocol
    from autobahn.websocket.compress import PerMessageDeflateOffer, PerMessageDeflateResponse, \
        PerMessageDeflateResponseAccept

    loop = asyncio.get_running_loop()
    out: dict[str, Any] = {}
    big = os.urandom(MiB)

    class Client(WebSocketClientProtocol):
        def __init__(self) -> None:
            super().__init__()
            self.inbox: asyncio.Queue[tuple[bytes, bool]] = asyncio.Queue()
            self.opened = loop.create_future()
            self.closed = loop.create_future()

        def onOpen(self) -> None:
            self.opened.set_result(None)

        def onMessage(self, payload: bytes, isBinary: bool) -> None:
            self.inbox.put_nowait((payload, isBinary))

        def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
            if not self.opened.done():
                self.opened.set_exception(ConnectionError(f"closed before open: {code} {reason}"))
            if not self.closed.done():
                self.closed.set_result({"code": self.remoteCloseCode, "reason": self.remoteCloseReason or ""})

    async def open_(suffix: str) -> Client:
        factory = WebSocketClientFactory(f"{url}?id={ident}-{suffix}", protocols=OFFERED)
        factory.protocol = Client
        factory.setProtocolOptions(
            maxMessagePayloadSize=0, maxFramePayloadSize=0,
            perMessageCompressionOffers=[PerMessageDeflateOffer()],
            perMessageCompressionAccept=lambda response: (
                PerMessageDeflateResponseAccept(response) if isinstance(response, PerMessageDeflateResponse) else None))
        split = urlsplit(url)
        _, proto = await loop.create_connection(factory, split.hostname, split.port)
        await proto.opened
        return proto

    async def next_(c: Client) -> tuple[bytes, bool]:
        return await c.inbox.get()

    a = await open_("a")
    out["protocol"] = a.websocket_protocol_in_use
    out["extensions"] = ", ".join(type(e).__name__ for e in a.websocket_extensions_in_use)
    a.sendMessage(TEXT.encode())
    payload, binary = await next_(a)
    out["text"] = None if binary else payload.decode()
    a.sendMessage(bytes(range(256)), isBinary=True)
    payload, binary = await next_(a)
    out["binary"] = payload.hex() if binary else None
    a.beginMessage(isBinary=False)
    for part in FRAGMENTS:
        a.sendMessageFrame(part.encode())
    a.endMessage()
    payload, binary = await next_(a)
    out["fragmented"] = None if binary else payload.decode()
    a.sendMessage(big, isBinary=True)
    payload, binary = await next_(a)
    out["big"] = {"length": len(payload), "same": binary and hashlib.sha256(payload).digest() == hashlib.sha256(big).digest()}
    a.sendMessage(b"!protocol")
    out["upstream_protocol"] = (await next_(a))[0].decode()
    a.sendClose(4002, "client bye")
    out["client_close_answer"] = await a.closed
    b = await open_("b")
    b.sendMessage(b"!close 4001 upstream bye")
    out["upstream_close"] = await b.closed
    return out


def main(argv: list[str]) -> None:
    role, kind, *rest = argv
    if role == "server" and kind == "websockets":
        asyncio.run(websockets_server())
    elif role == "server" and kind == "autobahn":
        autobahn_server()
    elif role == "client":
        client = websockets_client if kind == "websockets" else autobahn_client
        result = asyncio.run(asyncio.wait_for(client(*rest), timeout=30))
        print(json.dumps(result), flush=True)
    else:
        raise SystemExit(f"usage: {__doc__}")


if __name__ == "__main__":
    main(sys.argv[1:])
