"""max_connections and descriptor exhaustion, in memory: Twisted's own ``tcp.Port.doRead`` and
``tcp.Server`` on a fake clock, with a stand-in listening socket whose ``accept`` the test
scripts (the real process under a low RLIMIT_NOFILE: tests/test_caps_process.py)."""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterator
from typing import Any

import attrs
import pytest
from twisted.internet import tcp
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure

from wsrelay import config
from wsrelay.capacity import BACKOFF_FIRST, RESERVE, ConnectionCap, sizing


class Listening:
    """A listening socket whose ``accept`` returns what the test queued: a connected socket (one
    end of a socketpair) or an error; EAGAIN when the queue is empty."""

    def __init__(self) -> None:
        self.queue: list[Any] = []
        self.peers: list[socket.socket] = []

    def add(self, n: int = 1) -> None:
        for _ in range(n):
            ours, theirs = socket.socketpair()
            self.peers.append(theirs)
            self.queue.append((ours, ("10.0.0.1", 40000 + len(self.peers))))

    def fail(self, code: int) -> None:
        self.queue.append(OSError(code, "scripted"))

    def accept(self) -> tuple[socket.socket, tuple[str, int]]:
        if not self.queue:
            raise BlockingIOError(errno.EAGAIN, "empty")
        item = self.queue.pop(0)
        if isinstance(item, OSError):
            raise item
        return item  # type: ignore[no-any-return]

    def close(self) -> None:
        for peer in self.peers:
            peer.close()
        for item in self.queue:
            if not isinstance(item, OSError):
                item[0].close()


class Harness:
    def __init__(self, limit: int) -> None:
        self.clock = MemoryReactorClock()
        self.cap = ConnectionCap(self.clock, limit)
        self.factory = Factory.forProtocol(Protocol)
        self.connections: list[Any] = []
        self.listening: list[Listening] = []

    def port(self, counted: bool = True) -> tcp.Port:
        """A real tcp.Port, as if it listened, reading its stand-in socket."""
        port = tcp.Port(0, self.factory, interface="127.0.0.1", reactor=self.clock)
        listening = Listening()
        self.listening.append(listening)
        port.socket = listening
        port.fileno = lambda: -1  # type: ignore[method-assign]
        port.connected = True
        port.numberAccepts = 100
        port.startReading()
        self.cap.watch(port, counted)
        return port

    def read(self, port: tcp.Port) -> None:
        """The reactor says the port is readable: Twisted's doRead runs."""
        port.doRead()
        self.connections = [c for c in self.clock.readers if isinstance(c, tcp.Server)]

    def reading(self, port: tcp.Port) -> bool:
        return port in self.clock.readers

    def close(self, connection: Any) -> None:
        self.clock.removeReader(connection)
        connection.connectionLost(Failure(ConnectionDone()))
        self.connections.remove(connection)


@pytest.fixture
def lines() -> Iterator[list[str]]:
    """What wsrelay.capacity and Twisted's tcp module log while the test runs."""
    seen: list[str] = []

    def observe(event: dict) -> None:  # type: ignore[type-arg]
        if event.get("log_namespace", "").startswith(("wsrelay.capacity", "twisted.internet.tcp")) \
                or event.get("isError") or event.get("log_failure"):
            seen.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield seen
    globalLogPublisher.removeObserver(observe)


@pytest.fixture
def h() -> Iterator[Harness]:
    harness = Harness(limit=2)
    yield harness
    for listening in harness.listening:
        listening.close()
    for connection in list(harness.connections):
        harness.close(connection)


def test_at_the_cap_every_counted_listener_stops_and_resumes_below_it(h: Harness, lines: list[str]) -> None:
    """Three clients wait, the cap is 2: two are accepted, the third stays in the backlog (not
    accepted, not closed); every counted listener stops reading, the admin one does not; one
    closes: both read again and the third is accepted."""
    a, b, admin = h.port(), h.port(), h.port(counted=False)
    h.listening[0].add(3)
    h.read(a)
    assert h.cap.open == 2 and len(h.listening[0].queue) == 1
    assert not h.reading(a) and not h.reading(b) and h.reading(admin)
    assert h.cap.cap_reached == 1 and len(lines) == 1 and "max_connections (2) reached" in lines[0]
    h.close(h.connections[0])
    assert h.reading(a) and h.reading(b) and h.cap.open == 1
    h.read(a)
    assert h.cap.open == 2 and not h.listening[0].queue and not h.reading(a)


def test_a_connection_counts_until_its_socket_closes_whoever_reads_it(h: Harness) -> None:
    """The count follows the transport, not the protocol: a protocol switch (the WebSocket
    takeover hands the transport to another protocol) changes nothing, and a second
    connectionLost (Twisted ignores it) is not counted twice."""
    a = h.port()
    h.listening[0].add(1)
    h.read(a)
    connection = h.connections[0]
    connection.protocol = Protocol()  # what swap_protocol does for a plain TCP transport
    assert h.cap.open == 1
    h.close(connection)
    connection.connectionLost(Failure(ConnectionDone()))
    assert h.cap.open == 0


def test_descriptor_exhaustion_pauses_every_listener_with_one_line_per_episode(h: Harness, lines: list[str]) -> None:
    """accept fails with EMFILE: nothing is accepted and closed (Twisted's own recovery would),
    every listener stops reading (admin included), one line names the limit; reading resumes
    after the back-off, which doubles while accept keeps failing, and at once when a connection
    closes; an accept that succeeds ends the episode."""
    a, admin = h.port(), h.port(counted=False)
    h.listening[0].add(1)
    h.read(a)
    h.listening[0].fail(errno.EMFILE)
    h.listening[0].add(1)
    h.read(a)
    assert not h.reading(a) and not h.reading(admin)
    assert len(h.listening[0].queue) == 1 and h.cap.open == 1  # the newcomer waits
    assert len(lines) == 1 and "too many open files (EMFILE)" in lines[0] and "RLIMIT_NOFILE" in lines[0]
    h.clock.advance(BACKOFF_FIRST)
    assert h.reading(a) and h.reading(admin)
    h.listening[0].queue.insert(0, OSError(errno.EMFILE, "again"))
    h.read(a)
    h.clock.advance(BACKOFF_FIRST)
    assert not h.reading(a)  # the back-off doubled
    h.clock.advance(BACKOFF_FIRST)
    assert h.reading(a)
    h.listening[0].queue.insert(0, OSError(errno.EMFILE, "again"))
    h.read(a)
    h.close(h.connections[0])  # a descriptor came free: no need to wait
    assert h.reading(a) and not h.clock.getDelayedCalls()
    h.read(a)
    assert h.cap.open == 1 and not h.cap.starving and h.cap.exhausted == 1
    assert len(lines) == 1


def test_episodes_in_quick_succession_log_one_line_per_10_seconds(h: Harness, lines: list[str]) -> None:
    """A second episode within 10 s of the first line is counted, not logged; the next line says
    how many were held back.  ENFILE is named as such."""
    a = h.port()
    for when in range(3):
        h.listening[0].fail(errno.ENFILE if when == 2 else errno.EMFILE)
        h.listening[0].add(1)
        h.read(a)
        h.clock.advance(BACKOFF_FIRST)
        h.read(a)  # accepted: the episode ends
        h.close(h.connections[0])
        h.clock.advance(5.0 - BACKOFF_FIRST)
    assert h.cap.exhausted == 3
    assert len(lines) == 2 and "(1 more times since the last such line)" in lines[1] and "ENFILE" in lines[1]


def test_a_listener_that_stopped_is_never_resumed(h: Harness) -> None:
    """A listener a reload removed (or a stopping wsrelay closed) is forgotten, not read again."""
    a, b = h.port(), h.port()
    h.listening[0].add(2)
    h.read(a)
    b.disconnecting = True  # stopListening under way
    h.close(h.connections[0])
    assert h.reading(a) and not h.reading(b)
    b.connected = False  # stopped
    h.listening[0].add(1)
    h.read(a)
    h.close(h.connections[0])
    assert not h.reading(b) and b not in h.cap._ports


def test_a_reload_moves_the_cap_at_once(h: Harness) -> None:
    """Lowered under the connections open, the listeners stop (the connections stay); raised
    above them, they read again."""
    a = h.port()
    h.listening[0].add(1)
    h.read(a)
    h.cap.set_limit(1)
    assert not h.reading(a) and h.cap.open == 1
    h.cap.set_limit(5)
    assert h.reading(a)
    h.cap.set_limit(0)
    h.listening[0].add(10)
    while h.listening[0].queue:  # Twisted accepts as many per read as the last read did, plus 20
        h.read(a)
    assert h.cap.open == 11 and h.reading(a)


def test_sizing_against_the_descriptor_limit() -> None:
    """auto is (RLIMIT_NOFILE - RESERVE) / 2 and says so; a configured cap the limit cannot hold
    (two descriptors per relayed connection) is warned about; 0 is no cap; no limit, no auto cap."""
    assert sizing(None, 1024) == ((1024 - RESERVE) // 2, "max_connections = auto: 496 client connections per"
                                  " process (RLIMIT_NOFILE 1024)")
    assert sizing(None, 10)[0] == 1
    assert sizing(None, -1) == (0, None)
    cap, line = sizing(1000, 1024)
    assert cap == 1000 and line is not None and "at least 2032" in line and "it is 1024" in line
    assert sizing(496, 1024) == (496, None)
    assert sizing(0, 64) == (0, None)


@pytest.mark.parametrize("text, value", [("auto", None), ("", None), ("0", 0), ("5000", 5000)])
def test_max_connections_values(text: str, value: int | None) -> None:
    """auto (the default), 0 (no cap) or a number of client connections per process."""
    cfg = config.parse(f"[wsrelay]\nlisten = tcp:0\nmax_connections = {text}\n[upstream u]\nservers = 127.0.0.1:1\n"
                       "[route /]\nupstream = u\n")
    assert cfg.max_connections == value


@pytest.mark.parametrize("text", ["-1", "many", "1.5", "20000000"])
def test_bad_max_connections_names_the_key(text: str) -> None:
    """A bad value stops the configuration with [wsrelay] max_connections named."""
    with pytest.raises(config.ConfigError) as e:
        config.parse(f"[wsrelay]\nlisten = tcp:0\nmax_connections = {text}\n[upstream u]\nservers = 127.0.0.1:1\n"
                     "[route /]\nupstream = u\n")
    assert (e.value.section, e.value.key) == ("wsrelay", "max_connections")


def test_check_warns_of_a_cap_the_descriptor_limit_cannot_hold(monkeypatch: pytest.MonkeyPatch) -> None:
    """--check says what start-up would warn: max_connections over what RLIMIT_NOFILE can hold."""
    from wsrelay import service

    monkeypatch.setattr(service, "descriptor_limit", lambda: 1024)
    cfg = config.parse("[wsrelay]\nlisten = tcp:0\naccess_log = off\nmax_connections = 1000\n"
                       "[upstream u]\nservers = 127.0.0.1:1\n[route /]\nupstream = u\n")
    assert any("needs RLIMIT_NOFILE of at least 2032" in w for w in service.check(cfg))
    assert not any("RLIMIT_NOFILE" in w for w in service.check(attrs.evolve(cfg, max_connections=None)))
