"""The demo upstream's own endpoints, without a browser: /api/ws reports what the upstream saw and
negotiated for a WebSocket, /ws/close closes with the code and reason asked for, and the page
carries the controls the browser test uses."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request

import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from tests.support import UpstreamProcess


def get(upstream: UpstreamProcess, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{upstream.port}{path}", timeout=10) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_api_ws_reports_the_handshake_and_negotiation(demo_upstream: UpstreamProcess) -> None:
    """/api/ws?id= has the handshake headers, the offers and what the upstream chose; unknown ids 404."""
    async def go() -> None:
        async with websockets.connect(f"ws://127.0.0.1:{demo_upstream.port}/ws/echo?id=t1",
                                      subprotocols=["a.v1", "b.v2"], additional_headers={"Cookie": "k=v"},
                                      proxy=None) as ws:
            await ws.send("x")
            assert await ws.recv() == "x"
            status, body = await asyncio.to_thread(get, demo_upstream, "/api/ws?id=t1")
            assert status == 200
            seen = json.loads(body)
            assert seen["path"] == "/ws/echo" and seen["headers"]["cookie"] == "k=v"
            assert seen["offered_protocols"] == ["a.v1", "b.v2"] and seen["protocol"] == "a.v1"
            assert seen["offered_extensions"][0].startswith("permessage-deflate")
            assert seen["extensions"][0].startswith("permessage-deflate")

    asyncio.run(asyncio.wait_for(go(), 30))
    assert get(demo_upstream, "/api/ws?id=nope")[0] == 404


@pytest.mark.parametrize(("query", "code", "reason"), [
    ("code=4001&reason=bye%20now", 4001, "bye now"),
    ("", 4001, "closed by the upstream"),
    ("code=1011&reason=x", 4001, "x"),  # only 1000 and 3000-4999 are asked for; others become 4001
])
def test_ws_close_closes_with_the_code_asked_for(query: str, code: int, reason: str,
                                                 demo_upstream: UpstreamProcess) -> None:
    """/ws/close closes as soon as it is open, with the code and reason of its query."""
    async def go() -> None:
        async with websockets.connect(f"ws://127.0.0.1:{demo_upstream.port}/ws/close?{query}", proxy=None) as ws:
            with pytest.raises(ConnectionClosed) as closed:
                await ws.recv()
            assert closed.value.rcvd is not None
            assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (code, reason)

    asyncio.run(asyncio.wait_for(go(), 30))


def test_page_has_the_teaching_controls(demo_upstream: UpstreamProcess) -> None:
    """The page shows both hops, round-trip times, the close code and a reconnect button."""
    status, page = get(demo_upstream, "/")
    assert status == 200
    for marker in (b'id="client"', b'id="upstream"', b'id="reconnect"', b'id="upclose"', b"round-trip",
                   b"/api/ws?id=", b"closed: code "):
        assert marker in page, marker
