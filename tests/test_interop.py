"""Interop matrix through the real ``twistd -n wsrelay``, in relay and tunnel mode: real WebSocket
clients (Node ``ws`` with permessage-deflate on and off, Python ``websockets``, ``wscat``, Autobahn)
against real upstreams (Node ``ws``, Python ``websockets``, Autobahn).  One process per upstream
kind and one wsrelay, shared by all 30 pairs; one client process per pair.  docs/interop.rst is
the table of what runs.

Every pair: the subprotocol the upstream chose (the last one offered), text, binary, a message in
three fragments, 1 MiB, the client's close code reaching the upstream and the upstream's close
code and reason reaching the client.  ``wscat`` sends typed text lines only: binary, fragments and
1 MiB are not checked with it (see docs/interop.rst).
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.interop_peers import FRAGMENTS, TEXT
from tests.nodejs import NODE_DIR, node_missing
from tests.support import ROOT, Process, RelayProcess, write_config

MiB = 1024 * 1024
MODES = ["relay", "tunnel"]
UPSTREAMS = ["ws", "websockets", "autobahn"]
CLIENTS = ["ws-deflate", "ws", "websockets", "wscat", "autobahn"]
#: Clients that offer permessage-deflate (so it is negotiated on the client hop).
OFFER_DEFLATE = {"ws-deflate", "websockets", "autobahn"}


class InteropUpstream(Process):
    """One upstream kind (see tests/interop_peers.py and tests/node/interop_server.js)."""

    def __init__(self, kind: str) -> None:
        if kind == "ws":
            super().__init__(["node", "interop_server.js"], NODE_DIR)
        else:
            super().__init__([sys.executable, "-m", "tests.interop_peers", "server", kind], ROOT)
        self.port = int(self.output.wait_for(rf"interop upstream {kind} listening on (\d+)", 20).group(1))


@pytest.fixture(scope="module")
def upstreams() -> Iterator[dict[str, InteropUpstream]]:
    missing = node_missing()
    if missing:
        pytest.skip(missing)
    started: dict[str, InteropUpstream] = {}
    try:
        for kind in UPSTREAMS:
            started[kind] = InteropUpstream(kind)
        yield started
    finally:
        for process in started.values():
            process.stop()


@pytest.fixture(scope="module")
def relay(upstreams: dict[str, InteropUpstream], tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    """One wsrelay: /relay/KIND/ and /tunnel/KIND/ lead to the upstream KIND in that mode."""
    sections = ["[wsrelay]\nlisten = tcp:0:interface=127.0.0.1\n"]
    for kind, process in upstreams.items():
        sections.append(f"[upstream {kind}]\nservers = 127.0.0.1:{process.port}\n")
        for mode in MODES:
            sections.append(f"[route /{mode}/{kind}/]\nupstream = {kind}\nws_mode = {mode}\n")
    process = RelayProcess(write_config(tmp_path_factory.mktemp("interop"), "\n".join(sections)))
    try:
        yield process
    finally:
        process.stop()


class Terminal:
    """A program whose output goes to a pseudo-terminal (wscat prints its control lines, such as
    ``Disconnected (code: ...)``, only to a terminal) and whose input is a pipe."""

    ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")

    def __init__(self, argv: list[str], cwd: Path) -> None:
        self.master, slave = pty.openpty()
        self.process = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.PIPE, stdout=slave, stderr=slave,
                                        start_new_session=True)
        os.close(slave)
        self.seen = b""

    def expect(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        """Wait for ``pattern`` in the output (escape sequences removed); AssertionError at the deadline."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.ANSI.sub(b"", self.seen).decode("utf-8", "replace")
            if m := re.search(pattern, text):
                return m
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([self.master], [], [], max(0.0, remaining))
            chunk = b""
            if ready:
                try:
                    chunk = os.read(self.master, 65536)
                except OSError:  # the program ended and closed the terminal
                    pass
            if not chunk:
                raise AssertionError(f"no {pattern!r} within {timeout} s; output:\n{text[-2000:]}")
            self.seen += chunk

    def type(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line.encode() + b"\n")
        self.process.stdin.flush()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)
        os.close(self.master)


def run_wscat(url: str, ident: str) -> dict[str, Any]:
    """wscat, typed at: a text line, "!protocol" and a client close on one connection; an
    upstream close on another."""
    out: dict[str, Any] = {"protocol": None}
    wscat = [str(NODE_DIR / "node_modules" / "wscat" / "bin" / "wscat"), "--no-color", "--slash",
             "-s", "interop.v1", "-s", "interop.v2", "-c"]
    a = Terminal(["node", *wscat, f"{url}?id={ident}-a"], NODE_DIR)
    try:
        a.expect(r"Connected")  # wscat's ws checks the 101 names one of the offered subprotocols
        a.type(TEXT)
        out["text"] = a.expect(r"< (h\S+ \S+)\r?\n").group(1)
        a.type("!protocol")
        out["upstream_protocol"] = a.expect(r"< (interop\S*|\(none\))").group(1)
        a.type("/close 4002 client bye")
        a.expect(r"Disconnected \(code: \d+")
    finally:
        a.close()
    b = Terminal(["node", *wscat, f"{url}?id={ident}-b"], NODE_DIR)
    try:
        b.expect(r"Connected")
        b.type("!close 4001 upstream bye")
        m = b.expect(r'Disconnected \(code: (\d+), reason: "([^"]*)"\)')
        out["upstream_close"] = {"code": int(m.group(1)), "reason": m.group(2)}
    finally:
        b.close()
    return out


def run_client(client: str, url: str, ident: str) -> dict[str, Any]:
    if client == "wscat":
        return run_wscat(url, ident)
    if client.startswith("ws"):
        argv, cwd = ["node", "interop_client.js", url, ident, "deflate" if client == "ws-deflate" else "plain"], NODE_DIR
    else:
        argv, cwd = [sys.executable, "-m", "tests.interop_peers", "client", client, url, ident], ROOT
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("upstream", UPSTREAMS)
@pytest.mark.parametrize("mode", MODES)
def test_interop(mode: str, upstream: str, client: str, relay: RelayProcess,
                 upstreams: dict[str, InteropUpstream]) -> None:
    """One client against one upstream through wsrelay: subprotocol, text, binary, fragments,
    1 MiB, and a close code each way."""
    ident = f"{mode}-{upstream}-{client}"
    up = upstreams[upstream]
    mark = len(up.output.lines)
    seen = run_client(client, f"ws://127.0.0.1:{relay.port}/{mode}/{upstream}/echo", ident)

    assert seen["upstream_protocol"] == "interop.v2"  # what the upstream chose...
    assert seen["text"] == TEXT
    assert seen["upstream_close"] == {"code": 4001, "reason": "upstream bye"}
    if client != "wscat":
        assert seen["protocol"] == "interop.v2"  # ...is what the client got
        deflate = "permessage-deflate" in seen["extensions"] or "PerMessageDeflate" in seen["extensions"]
        assert deflate == (client in OFFER_DEFLATE), seen["extensions"]
        assert seen["binary"] == bytes(range(256)).hex()
        assert seen["fragmented"] == "".join(FRAGMENTS)
        assert seen["big"] == {"length": MiB, "same": True}
    # The client's close code and reason reached the upstream.
    up.output.wait_for(rf"^closed id={re.escape(ident)}-a code=4002 reason=client bye$", 10, mark)
