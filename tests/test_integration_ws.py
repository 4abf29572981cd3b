"""WebSocket through the real ``twistd -n wsrelay``, with independent clients and upstreams.

Clients: the ``websockets`` library, Autobahn's asyncio flavour, and raw sockets where a test needs
the bytes (or a client that stops reading).  Upstreams: the demo upstream (Autobahn echo) and a
``websockets`` server in the test's own event loop, scripted by path.  Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import struct
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
import websockets
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.support import ROOT, RelayProcess, UpstreamProcess, held_back

MiB = 1 << 20


ROUTE_DEFAULTS = {"retries": "0", "ws_handshake_timeout": "3s", "ws_ping_interval": "off",
                  "ws_max_message_size": "8M", "ws_max_frame_size": "8M"}


def relay_config(port: int, extra: str = "", tunnel_extra: str = "", *, drain: str = "10s") -> str:
    """A relay in front of 127.0.0.1:``port``; ``extra``: route settings (key = value lines
    overriding the defaults, then any further sections)."""
    settings = dict(ROUTE_DEFAULTS)
    rest = []
    lines = extra.splitlines()
    while lines and not lines[0].startswith("["):
        line = lines.pop(0)
        if line.strip():
            key, value = line.split("=", 1)
            settings[key.strip()] = value.strip()
    rest = lines
    route = "\n".join(f"{k} = {v}" for k, v in settings.items())
    further = "\n".join(rest)
    return f"""
[wsrelay]
listen = tcp:0:interface=127.0.0.1
access_log = -
drain_timeout = {drain}
[upstream up]
servers = 127.0.0.1:{port}
[route /]
upstream = up
{route}
[route /tunnel/]
upstream = up
ws_mode = tunnel
ws_ping_interval = off
{tunnel_extra}
{further}
"""


def run(coro: Any, timeout: float = 60) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


class ScriptedUpstream:
    """A ``websockets`` upstream in the test's loop.  The path says what it does:

    ``/echo``; ``/close/CODE`` (close with CODE after the first message); ``/vanish`` (drop TCP
    after the first message); ``/flood/N`` (send N 1 MiB binary messages, then echo);
    ``/wait`` (record how the connection ends).
    """

    def __init__(self) -> None:
        self.requests: list[Any] = []
        self.closes: list[tuple[int | None, str]] = []
        self.closed = asyncio.Event()  # set at the first recorded close
        self.closes_by_path: dict[str, list[tuple[int | None, str]]] = {}
        self.recorded = asyncio.Condition()
        self.sent = 0
        self.connections = 0
        self.flood_peer: int | None = None  # wsrelay's port on the /flood/ connection
        self.flood_started = asyncio.Event()

    async def handler(self, ws: ServerConnection) -> None:
        self.connections += 1
        self.requests.append(ws.request)
        path = ws.request.path
        try:
            if path.startswith("/flood/"):
                self.flood_peer = ws.remote_address[1]
                self.flood_started.set()
                for i in range(int(path.rsplit("/", 1)[1])):
                    await ws.send(bytes([i % 256]) * MiB)
                    self.sent += 1
            async for message in ws:
                if path.startswith("/close/"):
                    await ws.close(int(path.rsplit("/", 1)[1]), "upstream says bye")
                    break
                if path == "/vanish":
                    ws.transport.abort()
                    return
                await ws.send(message)
        except ConnectionClosed:
            pass
        finally:
            if ws.close_code is not None or path == "/wait":
                await ws.wait_closed()
                self.closes.append((ws.close_code, ws.close_reason))
                self.closed.set()
                async with self.recorded:
                    self.closes_by_path.setdefault(path, []).append((ws.close_code, ws.close_reason))
                    self.recorded.notify_all()

    async def first_close(self, timeout: float = 5.0) -> tuple[int | None, str]:
        """How the first connection that ended ended; waits for it at most ``timeout`` seconds."""
        await asyncio.wait_for(self.closed.wait(), timeout)
        return self.closes[0]

    async def close_of(self, path: str, timeout: float = 10.0) -> tuple[int | None, str]:
        """How the first connection to ``path`` ended; waits for it at most ``timeout`` seconds."""
        async with self.recorded:
            await asyncio.wait_for(self.recorded.wait_for(lambda: path in self.closes_by_path), timeout)
        return self.closes_by_path[path][0]

    async def start(self) -> int:
        self.server = await serve(self.handler, "127.0.0.1", 0, compression=None, ping_interval=None,
                                  max_size=None, select_subprotocol=lambda ws, offered: offered[-1] if offered else None)
        self.port: int = self.server.sockets[0].getsockname()[1]
        return self.port


async def with_relay(start_relay: Callable[..., RelayProcess], body: Callable[..., Any],
                     extra: str = "", tunnel_extra: str = "", drain: str = "10s") -> Any:
    """Start a scripted upstream in this loop and a real relay in front of it; run ``body``."""
    upstream = ScriptedUpstream()
    port = await upstream.start()
    relay = await asyncio.to_thread(start_relay, relay_config(port, extra, tunnel_extra, drain=drain))
    try:
        return await body(relay, upstream)
    finally:
        upstream.server.close()


def url(relay: RelayProcess, path: str) -> str:
    return f"ws://127.0.0.1:{relay.port}{path}"


# -- through the demo upstream --------------------------------------------------------------


def test_websockets_client_through_real_relay_to_demo(demo_upstream: UpstreamProcess,
                                                      start_relay: Callable[..., RelayProcess]) -> None:
    """The websockets library: subprotocol, text/binary, a 5 MiB message, deflate toward the client;
    the client's close (4001) is answered by the demo upstream itself (1000), through wsrelay."""
    relay = start_relay(relay_config(demo_upstream.port))

    async def go() -> None:
        async with connect(url(relay, "/ws/echo?x=1"), subprotocols=["chat.v2"], proxy=None,
                           max_size=None) as ws:
            assert ws.subprotocol == "chat.v2"
            assert "permessage-deflate" in ws.response.headers.get("Sec-WebSocket-Extensions", "")
            assert "Server" not in ws.response.headers
            big = os.urandom(5 * MiB)
            for message in ["h\u00e9llo", b"\x00\x01", big, ""]:
                await ws.send(message)
                assert await ws.recv() == message
            await ws.close(4001, "done")
            assert ws.close_code in (1000, 4001)
            # The closing handshake is end to end: the 4001 goes to the demo, whose Autobahn answers
            # every close with 1000 and no reason; a 4001 here would be wsrelay answering for it.
            assert (ws.close_code, ws.close_reason) == (1000, "")

    run(go())
    relay.output.wait_for(r'"GET /ws/echo\?x=1 HTTP/1.1" 101 ', timeout=10)


#: An Autobahn (asyncio) client, run in its own process: txaio picks one framework per process, and
#: this test process also runs Twisted-based Autobahn tests.
AUTOBAHN_CLIENT = """
import asyncio, json, sys
from autobahn.asyncio.websocket import WebSocketClientFactory, WebSocketClientProtocol

async def main(url, port):
    done = asyncio.get_running_loop().create_future()

    class Client(WebSocketClientProtocol):
        received = []

        def onOpen(self):
            self.beginMessage(isBinary=True)
            for part in (b"a" * 10, b"b" * 100000, b"c"):
                self.sendMessageFrame(part)
            self.endMessage()
            self.sendMessage("t\\u00e9xt".encode())

        def onMessage(self, payload, isBinary):
            self.received.append([payload.decode("latin-1"), isBinary])
            if len(self.received) == 2:
                self.sendClose(1000)

        def onClose(self, wasClean, code, reason):
            if not done.done():
                done.set_result({"messages": self.received, "clean": wasClean, "code": code})

    factory = WebSocketClientFactory(url)
    factory.protocol = Client
    await asyncio.get_running_loop().create_connection(factory, "127.0.0.1", port)
    print(json.dumps(await asyncio.wait_for(done, 30)))

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


def test_autobahn_asyncio_client_through_real_relay(demo_upstream: UpstreamProcess,
                                                    start_relay: Callable[..., RelayProcess]) -> None:
    """Autobahn (asyncio) as client: a fragmented message comes back whole, types kept, clean close."""
    relay = start_relay(relay_config(demo_upstream.port))
    done = subprocess.run([sys.executable, "-c", AUTOBAHN_CLIENT, url(relay, "/ws/echo"), str(relay.port)],
                          capture_output=True, timeout=60, check=True)
    result = json.loads(done.stdout)
    assert result["messages"] == [["a" * 10 + "b" * 100000 + "c", True], ["t\u00e9xt".encode().decode("latin-1"), False]]
    assert result["clean"] and result["code"] == 1000


def test_shipped_config_in_front_of_the_demo(demo_upstream: UpstreamProcess,
                                            start_relay: Callable[..., RelayProcess]) -> None:
    """etc/relay.ini as shipped (only its port and the demo's port changed for the test): the demo
    page, the headers the upstream saw and the WebSocket echo, all through wsrelay."""
    text = (ROOT / "etc" / "relay.ini").read_text()
    assert "listen = tcp:8080:interface=127.0.0.1" in text and "127.0.0.1:9001" in text
    relay = start_relay(text.replace("listen = tcp:8080:", "listen = tcp:0:")
                        .replace("127.0.0.1:9001", f"127.0.0.1:{demo_upstream.port}"))
    with urllib.request.urlopen(url(relay, "/").replace("ws://", "http://"), timeout=10) as page:
        assert page.status == 200 and page.headers["Content-Type"].startswith("text/html")
        assert b"<title>wsrelay demo</title>" in page.read()
    with urllib.request.urlopen(url(relay, "/api/info").replace("ws://", "http://"), timeout=10) as info:
        seen = json.loads(info.read())
    headers = {name.lower(): value for name, value in seen["headers"]}
    assert seen["uri"] == "/api/info"
    assert headers["x-forwarded-for"] == headers["x-real-ip"] == "127.0.0.1"
    assert headers["x-forwarded-proto"] == "http" and headers["host"] == f"127.0.0.1:{relay.port}"

    async def echo() -> None:
        async with connect(url(relay, "/ws/echo"), proxy=None) as ws:
            await ws.send("hello")
            assert await ws.recv() == "hello"

    run(echo())


def test_tunnel_mode_through_real_relay(demo_upstream: UpstreamProcess, start_relay: Callable[..., RelayProcess]) -> None:
    """Tunnel mode: deflate negotiated end to end with the upstream; messages echo."""
    # The demo serves its echo on /ws/echo only and a tunnel keeps the path: make /ws/ the tunnel.
    relay = start_relay(relay_config(demo_upstream.port).replace("[route /tunnel/]", "[route /ws/]"))

    async def go() -> None:
        async with connect(url(relay, "/ws/echo"), proxy=None, max_size=None) as ws:
            assert "permessage-deflate" in ws.response.headers.get("Sec-WebSocket-Extensions", "")
            for message in ["x" * 100000, b"\x01" * 3]:
                await ws.send(message)
                assert await ws.recv() == message
            await ws.close(4002, "tunnelled")

    run(go())


# -- scripted upstream ----------------------------------------------------------------------


@pytest.mark.parametrize("code", [1001, 1008, 1011, 1012, 1013, 3000, 4999])
def test_upstream_close_codes_reach_websockets_client(code: int, start_relay: Callable[..., RelayProcess]) -> None:
    """The upstream's close code and reason reach the client unchanged."""

    async def body(relay: RelayProcess, upstream: ScriptedUpstream) -> None:
        async with connect(url(relay, f"/close/{code}"), proxy=None) as ws:
            await ws.send("go")
            with pytest.raises(ConnectionClosed):
                await ws.recv()
            assert (ws.close_code, ws.close_reason) == (code, "upstream says bye")

    run(with_relay(start_relay, body))


@pytest.mark.parametrize("code", [1000, 1001, 3000, 4999])
def test_client_close_code_reaches_upstream(code: int, start_relay: Callable[..., RelayProcess]) -> None:
    """The client's close code and reason reach the upstream unchanged."""

    async def body(relay: RelayProcess, upstream: ScriptedUpstream) -> None:
        async with connect(url(relay, "/wait"), proxy=None) as ws:
            await ws.close(code, "client says bye")
        assert await upstream.first_close() == (code, "client says bye")
        assert len(upstream.closes) == 1

    run(with_relay(start_relay, body))


def test_upstream_vanishing_gives_client_1011_and_client_vanishing_gives_upstream_1001(
        start_relay: Callable[..., RelayProcess]) -> None:
    """No half-open pair: a lost upstream closes the client with 1011; a lost client, the upstream with 1001."""

    async def body(relay: RelayProcess, upstream: ScriptedUpstream) -> None:
        async with connect(url(relay, "/vanish"), proxy=None) as ws:
            await ws.send("go")
            with pytest.raises(ConnectionClosed):
                await ws.recv()
            assert ws.close_code == 1011
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
        writer.write(raw_handshake("/wait"))
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
        writer.transport.abort()
        assert (await upstream.first_close())[0] == 1001

    run(with_relay(start_relay, body))


def test_deflate_client_and_plain_upstream(start_relay: Callable[..., RelayProcess]) -> None:
    """The client negotiates permessage-deflate with wsrelay; the upstream hop has none."""

    async def body(relay: RelayProcess, upstream: ScriptedUpstream) -> None:
        async with connect(url(relay, "/echo"), proxy=None, max_size=None) as ws:
            assert "permessage-deflate" in ws.response.headers["Sec-WebSocket-Extensions"]
            payload = "compressible " * 100000
            await ws.send(payload)
            assert await ws.recv() == payload
        assert "Sec-WebSocket-Extensions" not in upstream.requests[0].headers

    run(with_relay(start_relay, body, extra="ws_compression = on\nws_upstream_compression = off"))


def test_bad_handshakes_never_reach_upstream(start_relay: Callable[..., RelayProcess]) -> None:
    """Version 8: 426 with Sec-WebSocket-Version: 13; a bad Origin: 403; no upstream connection."""

    async def body(relay: RelayProcess, upstream: ScriptedUpstream) -> None:
        for request, status, header in [
            (raw_handshake("/echo", version="8"), b"426", b"Sec-WebSocket-Version: 13"),
            (raw_handshake("/echo", extra="Origin: https://evil.example\r\n"), b"403", b""),
            (raw_handshake("/echo", key="nope"), b"400", b""),
        ]:
            reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.split(b" ")[1] == status and header.lower() in head.lower()
            writer.close()
        with pytest.raises(InvalidStatus):
            async with connect(url(relay, "/echo"), proxy=None, origin="https://evil.example"):
                pass
        assert upstream.connections == 0

    run(with_relay(start_relay, body, extra="ws_allowed_origins = https://app.example"))


def test_oversized_message_gets_1009(start_relay: Callable[..., RelayProcess]) -> None:
    """A message over ws_max_message_size: the sender gets 1009, the upstream 1001."""

    async def body(relay: RelayProcess, upstream: ScriptedUpstream) -> None:
        async with connect(url(relay, "/wait"), proxy=None, compression=None) as ws:
            await ws.send(b"x" * 2 * MiB)
            with pytest.raises(ConnectionClosed):
                await ws.recv()
            assert ws.close_code == 1009
        assert (await upstream.first_close())[0] == 1001

    run(with_relay(start_relay, body, extra="ws_max_message_size = 1M\nws_max_frame_size = 1M"))


def test_silent_client_dropped_by_ping_and_idle_timeout(start_relay: Callable[..., RelayProcess]) -> None:
    """A client that never answers pings is dropped for that reason (wsrelay's log says so); an
    idle pair is closed with 1001 close frames, to the client and to the upstream."""

    async def body(relay: RelayProcess, upstream: ScriptedUpstream) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
        writer.write(raw_handshake("/ping/wait"))
        await reader.readuntil(b"\r\n\r\n")
        mark = len(relay.output.lines)
        assert (await asyncio.wait_for(reader.readexactly(1), 5))[0] == 0x89  # wsrelay pings
        try:
            await asyncio.wait_for(reader.read(), 10)  # until wsrelay drops the silent client
        except ConnectionResetError:
            pass
        # Why it was dropped: the ping timeout, and nothing else.
        await asyncio.to_thread(relay.output.wait_for, r"route /ping/: client connection lost "
                                r"\(.*WebSocket ping timeout \(peer did not respond with pong in time\)", 10, mark)
        assert (await upstream.close_of("/ping/wait"))[0] == 1001  # the upstream is told the client went
        async with connect(url(relay, "/wait"), proxy=None) as ws:
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 10)
            assert (ws.close_code, ws.close_reason) == (1001, "idle timeout")
        assert await upstream.close_of("/wait") == (1001, "idle timeout")

    run(with_relay(start_relay, body, extra="ws_idle_timeout = 1500ms\n"
                   "[route /ping/]\nupstream = up\nws_ping_interval = 2s\nws_ping_timeout = 1s"))


def test_shutdown_sends_1001(start_relay: Callable[..., RelayProcess]) -> None:
    """SIGTERM: open pairs get 1001 close frames before wsrelay exits."""

    async def body(relay: RelayProcess, upstream: ScriptedUpstream) -> None:
        async with connect(url(relay, "/echo"), proxy=None) as ws:
            await ws.send("x")
            await ws.recv()
            relay.signal(15)
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 10)
            assert ws.close_code == 1001

    run(with_relay(start_relay, body, drain="500ms"))


def test_slow_client_backpressure_bounds_memory(start_relay: Callable[..., RelayProcess]) -> None:
    """64 MiB toward a client that does not read: wsrelay stops reading the upstream, its RSS grows
    by < 16 MiB (from before the flood), and every message arrives whole and unchanged."""

    async def body(relay: RelayProcess, upstream: ScriptedUpstream) -> None:
        before = relay.rss_kib()  # before the flood starts
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.port, limit=65536)
        writer.write(raw_handshake("/flood/64"))
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101")
        await asyncio.wait_for(upstream.flood_started.wait(), 10)
        assert upstream.flood_peer is not None
        # Blocked is a socket state, proven while the upstream keeps trying (support.held_back).
        assert await asyncio.to_thread(held_back, relay.port, upstream.port, upstream.flood_peer,
                                       lambda: upstream.sent), f"wsrelay kept reading ({upstream.sent} MiB sent)"
        assert upstream.sent < 48, "wsrelay kept reading the upstream"
        growth = relay.rss_kib() - before
        assert growth < 16 * 1024, f"RSS grew by {growth} KiB"
        for i in range(64):
            fin, opcode, payload = await read_frame(reader)
            while not fin:
                more_fin, _, more = await read_frame(reader)
                payload += more
                fin = more_fin
            assert opcode == 2 and len(payload) == MiB and payload[0] == payload[-1] == i % 256, i
            assert payload == bytes([i % 256]) * MiB, f"message {i} differs from what the upstream sent"
        assert upstream.sent == 64
        writer.close()

    run(with_relay(start_relay, body), timeout=120)


# -- raw helpers ----------------------------------------------------------------------------


def raw_handshake(path: str, *, version: str = "13", key: str | None = None, extra: str = "") -> bytes:
    key = key or base64.b64encode(os.urandom(16)).decode()
    return (f"GET {path} HTTP/1.1\r\nHost: relay.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: {version}\r\n{extra}\r\n").encode()


async def read_frame(reader: asyncio.StreamReader) -> tuple[bool, int, bytes]:
    b0, b1 = await reader.readexactly(2)
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack("!H", await reader.readexactly(2))[0]
    elif n == 127:
        n = struct.unpack("!Q", await reader.readexactly(8))[0]
    return bool(b0 & 0x80), b0 & 0x0F, await reader.readexactly(n)


assert websockets  # the library under its own name, for readers
