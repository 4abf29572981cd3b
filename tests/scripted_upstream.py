"""A scripted HTTP/1.1 upstream for integration tests: raw sockets, one thread per connection.

It records every connection and the exact bytes of every request head and body, and answers by
path, so tests can assert on what crossed the proxy byte for byte:

- ``/echo``: 200 with a JSON-free plain body ``ok`` and the response headers in ``respond_headers``;
- ``/chunked``: a chunked 200 of three chunks; ``/head``: 200 with Content-Length 5;
- ``/204``, ``/304``: those statuses; ``/cookies``: two ``Set-Cookie`` lines and hop-by-hop fields;
  ``/hsts``: 200 with a Strict-Transport-Security field of its own;
- ``/big?N``: N bytes of a known pattern, written with ``send`` and a 1 s timeout; ``blocked`` is
  set when a send waited that long (only a hint: tests prove back-pressure with
  ``support.held_back``, from ``big_peer``, the proxy's port on that connection, and ``big_sent``);
- ``/silent``: never answers; ``/reset``: sends half a Content-Length body, then resets;
  ``/reset-unframed``: 500 bytes of a body with neither Content-Length nor chunking, then a reset;
  ``/close-unframed``: the same body, ended by a clean close; ``/reset-early``: resets at once;
- ``/early``: answers 403 as soon as it has the request head, before reading the body (as many
  servers do for 401/403/413 and redirects), then reads and discards the body until the proxy
  closes (``early_outcomes`` gets "closed by proxy") or EARLY_GIVE_UP seconds pass ("timed out").

Everything is bounded: ``stop()`` closes the listener and every connection.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

PATTERN = bytes(range(256)) * 256  # 64 KiB
#: Seconds an /early connection waits for the proxy to close it.
EARLY_GIVE_UP = 30.0


def pattern_bytes(offset: int, size: int) -> bytes:
    start = offset % len(PATTERN)
    out = (PATTERN[start:] + PATTERN * (size // len(PATTERN) + 2))[:size]
    return out


@dataclass
class Seen:
    head: bytes
    body: bytes
    connection: int


@dataclass
class ScriptedUpstream:
    listener: socket.socket = field(default_factory=socket.socket)
    requests: list[Seen] = field(default_factory=list)
    connections: int = 0
    closed_connections: int = 0
    big_sent: int = 0
    big_peer: int | None = None
    early_closed_by_proxy: int = 0
    blocked: threading.Event = field(default_factory=threading.Event)
    request_seen: threading.Event = field(default_factory=threading.Event)
    connection_closed: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    early_outcomes: list[str] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def __post_init__(self) -> None:
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
                number = self.connections
                self.sockets.append(conn)
            threading.Thread(target=self._serve, args=(conn, number), daemon=True).start()

    def _read_request(self, conn: socket.socket, buffer: bytes) -> tuple[bytes, bytes, bytes] | None:
        while b"\r\n\r\n" not in buffer:
            chunk = conn.recv(65536)
            if not chunk:
                return None
            buffer += chunk
        head, _, rest = buffer.partition(b"\r\n\r\n")
        if head.split(b" ")[1].split(b"?")[0].endswith(b"/early"):
            self._answer_early(conn, head, rest)
            return None
        length = 0
        chunked = False
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
            if name.strip().lower() == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        if chunked:
            body = b""
            while True:
                while b"\r\n" not in rest:
                    rest += conn.recv(65536)
                size_line, _, rest = rest.partition(b"\r\n")
                size = int(size_line.split(b";")[0], 16)
                while len(rest) < size + 2:
                    rest += conn.recv(65536)
                body += rest[:size]
                rest = rest[size + 2:]
                if size == 0:
                    break
            return head, body, rest
        received = bytearray(rest)  # grows in place: a 16 MiB body is not copied once per chunk
        while len(received) < length:
            chunk = conn.recv(65536)
            if not chunk:
                return None
            received += chunk
        return head, bytes(received[:length]), bytes(received[length:])

    def _answer_early(self, conn: socket.socket, head: bytes, rest: bytes) -> None:
        with self.lock:
            self.requests.append(Seen(head, rest, 0))
        self.request_seen.set()
        conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: 6\r\n\r\nno way")
        conn.settimeout(EARLY_GIVE_UP)
        outcome = "closed by proxy"
        try:
            while conn.recv(65536):  # drain until the proxy closes (bounded by the timeout)
                pass
        except socket.timeout:
            outcome = "timed out"
        except OSError:  # reset: closed with unread data
            pass
        with self.lock:
            if outcome == "closed by proxy":
                self.early_closed_by_proxy += 1
        with self.changed:
            self.early_outcomes.append(outcome)
            self.changed.notify_all()

    def wait_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``predicate`` holds after some recorded outcome (``timeout``: safety net)."""
        with self.changed:
            return self.changed.wait_for(predicate, timeout)

    def _serve(self, conn: socket.socket, number: int) -> None:
        buffer = b""
        try:
            while True:
                parsed = self._read_request(conn, buffer)
                if parsed is None:
                    break
                head, body, buffer = parsed
                with self.lock:
                    self.requests.append(Seen(head, body, number))
                self.request_seen.set()
                if not self._answer(conn, head):
                    break
        except OSError:
            pass
        finally:
            with self.lock:
                self.closed_connections += 1
            self.connection_closed.set()
            conn.close()

    def _answer(self, conn: socket.socket, head: bytes) -> bool:
        target = head.split(b" ")[1]
        path = b"/" + target.split(b"?")[0].rsplit(b"/", 1)[-1]  # the last segment names the script
        is_head = head.startswith(b"HEAD ")
        if path == b"/silent":
            conn.recv(1)  # until the proxy gives up and closes
            return False
        if path == b"/reset-early":  # resets without a byte of response
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return False
        if path in (b"/reset", b"/reset-unframed"):
            length = b"Content-Length: 1000\r\n" if path == b"/reset" else b""
            conn.sendall(b"HTTP/1.1 200 OK\r\n" + length + b"\r\n" + b"x" * 500)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return False
        if path == b"/close-unframed":  # a body delimited by the end of the connection (RFC 9112 6.3)
            conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b"y" * 500)
            conn.shutdown(socket.SHUT_WR)
            return False
        if path == b"/chunked":
            conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                         b"5\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\n\r\n")
            return True
        if path == b"/hsts":
            conn.sendall(b"HTTP/1.1 200 OK\r\nStrict-Transport-Security: max-age=5\r\nContent-Length: 2\r\n\r\nok")
            return True
        if path == b"/204":
            conn.sendall(b"HTTP/1.1 204 No Content\r\nX-Kind: empty\r\n\r\n")
            return True
        if path == b"/304":
            conn.sendall(b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\n\r\n")
            return True
        if path == b"/cookies":
            body = b"ok"
            conn.sendall(b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1; Path=/\r\nSet-Cookie: b=2; Expires=Wed, 21 Oct 2037 07:28:00 GMT\r\n"
                         b"Connection: X-Resp-Hop\r\nX-Resp-Hop: secret\r\nKeep-Alive: timeout=5\r\n"
                         b"Content-Length: 2\r\n\r\n" + (b"" if is_head else body))
            return True
        if path == b"/big":
            size = int(target.split(b"?")[1])
            self.big_peer = conn.getpeername()[1]
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n" % size)
            conn.settimeout(1.0)
            sent = 0
            while sent < size:
                chunk = pattern_bytes(sent, min(65536, size - sent))
                try:
                    n = conn.send(chunk)
                except socket.timeout:
                    self.blocked.set()  # the proxy stopped reading: back-pressure reached us
                    continue
                sent += n
                self.big_sent = sent
            conn.settimeout(None)
            return True
        body = b"ok"
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\n"
                     + (b"" if is_head else body))
        return True

    def stop(self) -> None:
        self.listener.close()
        with self.lock:
            for s in self.sockets:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
