"""Socket.IO behind two upstreams through the real ``twistd -n wsrelay``: the ``socket.io`` server
and ``socket.io-client`` from npm (tests/node/), clients that start with HTTP long-polling and
upgrade to WebSocket, as browsers do.  With ``balance = cookie`` every request of a session reaches
the server that holds it; with ``balance = round_robin`` Socket.IO fails as its documentation says
("Session ID unknown"), which shows that the first test could fail."""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from collections.abc import Callable, Iterator

import pytest

from tests.nodejs import NODE_DIR, node_missing
from tests.support import Process, RelayProcess, poll_until


class SocketIOServer(Process):
    """``node sio_server.js NAME`` on 127.0.0.1, port chosen by the OS."""

    def __init__(self, name: str) -> None:
        super().__init__(["node", "sio_server.js", name], NODE_DIR)
        self.name = name
        m = self.output.wait_for(rf"socket\.io server {name} listening on (\d+)", timeout=20)
        self.port = int(m.group(1))


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[SocketIOServer, SocketIOServer]]:
    """Two Socket.IO servers, shared by the tests of this module."""
    missing = node_missing()
    if missing:
        pytest.skip(missing)
    started: list[SocketIOServer] = []
    try:
        for name in ("alpha", "beta"):
            started.append(SocketIOServer(name))
        yield started[0], started[1]
    finally:
        for server in started:
            server.stop()


def relay_config(servers: tuple[SocketIOServer, SocketIOServer], balance: str, mode: str) -> str:
    return f"""
        [wsrelay]
        listen = tcp:0:interface=127.0.0.1
        sticky_secret = socket.io test secret, not for production
        [upstream sio]
        servers = 127.0.0.1:{servers[0].port} 127.0.0.1:{servers[1].port}
        balance = {balance}
        {"sticky = wsrelay_srv" if balance == "cookie" else ""}
        [route /]
        upstream = sio
        ws_mode = {mode}
        """


def run_clients(relay: RelayProcess, count: int) -> dict[str, object]:
    done = subprocess.run(["node", "sio_clients.js", f"http://127.0.0.1:{relay.port}", str(count)],
                          cwd=NODE_DIR, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("mode", ["relay", "tunnel"])
def test_socketio_sticky_cookie_long_polling_then_websocket(
        mode: str, servers: tuple[SocketIOServer, SocketIOServer],
        start_relay: Callable[..., RelayProcess]) -> None:
    """balance = cookie: four clients start with long-polling and upgrade to WebSocket through
    wsrelay, spread over both servers; messages go both ways and a room broadcast reaches the
    room's members on that server."""
    relay = start_relay(relay_config(servers, "cookie", mode))
    result = run_clients(relay, 4)
    assert result["ok"], result
    clients = result["clients"]
    assert isinstance(clients, list)
    for c in clients:
        assert (c["first"], c["upgradedTo"], c["transport"]) == ("polling", "websocket", "websocket"), c
        assert c["serverTransport"] == "websocket"  # the server sees the upgraded transport too
        assert c["welcome"] == {"server": c["server"]}  # server to client
        assert c["echo"] == {"server": c["server"], "data": f"hello from client {c['index']}"}  # and back
        assert c["room"] == [{"server": c["server"], "text": f"shout on {c['server']}"}], c
    per_server = Counter(c["server"] for c in clients)
    assert set(per_server) == {"alpha", "beta"}, per_server  # both upstreams took sessions
    assert max(per_server.values()) >= 2  # a room with two members on one server
    relay.output.wait_for(r'"GET /socket\.io/\?EIO=4&transport=websocket&sid=\S+ HTTP/1\.1" 101 ')
    for server in servers:
        assert not any("Session ID unknown" in line for line in server.output.lines), server.output.lines[-5:]


def test_socketio_round_robin_fails_with_session_id_unknown(
        servers: tuple[SocketIOServer, SocketIOServer], start_relay: Callable[..., RelayProcess]) -> None:
    """balance = round_robin: the session's next request reaches the other server, which answers
    Socket.IO's documented "Session ID unknown" (code 1); the client cannot connect."""
    relay = start_relay(relay_config(servers, "round_robin", "relay"))
    marks = [len(server.output.lines) for server in servers]
    result = run_clients(relay, 1)
    assert not result["ok"], result
    def said_unknown() -> bool:
        return any("connection_error code=1 message=Session ID unknown" in line
                   for server, mark in zip(servers, marks) for line in server.output.lines[mark:])

    assert poll_until(said_unknown, timeout=10), [s.output.lines[m:] for s, m in zip(servers, marks)]
