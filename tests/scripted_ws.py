"""A scripted WebSocket upstream on raw sockets, and frame helpers, for integration tests.

Behaviour by the last path segment of the request target:

- ``echo``: echoes every message (as one unmasked frame), answers a close with the same code;
- ``flood?N``: sends N bytes as 1 MiB binary messages (each ``flood_payload``) with ``send`` and a
  1 s timeout, setting ``blocked`` when a send waited that long (only a hint: tests prove
  back-pressure with ``support.held_back``, from ``flood_peer``, the proxy's port on that
  connection, and ``flood_sent``);
- ``close?CODE``: after the first client message, closes with CODE and reason ``bye``;
- ``drop``: after the first client message, closes the TCP connection without a close frame;
- ``status403``: refuses the handshake with 403; ``silent``: never answers the handshake.

It records each handshake head, the close frames it receives, and whether connections ended.
The subprotocol it picks is the *last* one offered, so tests can tell it chose.
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import struct
import threading
from dataclasses import dataclass, field

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 section 1.3


def accept_key(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + GUID).digest())


def frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bool = False, rsv: int = 0) -> bytes:
    """One WebSocket frame."""
    head = bytes([(0x80 if fin else 0) | rsv << 4 | opcode])
    n = len(payload)
    length = bytes([n]) if n < 126 else (bytes([126]) + struct.pack("!H", n) if n < 65536 else bytes([127]) + struct.pack("!Q", n))
    if not mask:
        return head + length + payload
    key = os.urandom(4)
    length = bytes([length[0] | 0x80]) + length[1:]
    return head + length + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


class FrameReader:
    """Reads frames from a blocking socket (with the socket's timeout)."""

    def __init__(self, sock: socket.socket, buffer: bytes = b"", *, answer_pings: bool = False) -> None:
        self.sock = sock
        self.buffer = buffer
        self._at = 0
        self.answer_pings = answer_pings  # as a server: reply to pings with unmasked pongs

    def _need(self, n: int) -> bytes:
        # What is not read yet is self.buffer[self._at:]; taking a few bytes moves _at rather than
        # copying the rest (a 1 MiB read of small frames is not copied once per frame).
        while len(self.buffer) - self._at < n:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise EOFError("connection closed")
            self.buffer = self.buffer[self._at:] + chunk
            self._at = 0
        out = self.buffer[self._at:self._at + n]
        self._at += n
        return out

    def read(self) -> tuple[bool, int, bytes]:
        """(fin, opcode, payload) of the next frame."""
        b0, b1 = self._need(2)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", self._need(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", self._need(8))[0]
        key = self._need(4) if b1 & 0x80 else None
        payload = self._need(n)
        if key:
            payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload)) if n < 4096 else _unmask(payload, key)
        return bool(b0 & 0x80), b0 & 0x0F, payload

    def message(self) -> tuple[int, bytes]:
        """The next data message (opcode, payload) or a close (8, payload); pings are skipped."""
        opcode, parts = None, []
        while True:
            fin, op, payload = self.read()
            if op == 9 and self.answer_pings:
                self.sock.sendall(frame(10, payload))
            if op in (9, 10):
                continue
            if op == 8:
                return 8, payload
            if op != 0:
                opcode = op
            parts.append(payload)
            if fin:
                assert opcode is not None
                return opcode, b"".join(parts)


def _unmask(payload: bytes, key: bytes) -> bytes:
    mask = (key * (len(payload) // 4 + 1))[:len(payload)]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(mask, "big")).to_bytes(len(payload), "big")


def client_handshake(sock: socket.socket, target: str, headers: list[tuple[str, str]]) -> tuple[bytes, FrameReader]:
    """Send a raw client handshake; return the response head and a reader for what follows."""
    lines = [f"GET {target} HTTP/1.1", *(f"{k}: {v}" for k, v in headers)]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            break
        buffer += chunk
    head, _, rest = buffer.partition(b"\r\n\r\n")
    return head, FrameReader(sock, rest)


@dataclass
class ScriptedWebSocketUpstream:
    listener: socket.socket = field(default_factory=socket.socket)
    handshakes: list[bytes] = field(default_factory=list)
    closes_received: list[bytes] = field(default_factory=list)
    connections: int = 0
    blocked: threading.Event = field(default_factory=threading.Event)
    ended: threading.Event = field(default_factory=threading.Event)
    closed_frame: threading.Event = field(default_factory=threading.Event)
    handshake_seen: threading.Event = field(default_factory=threading.Event)
    flood_sent: int = 0
    flood_peer: int | None = None
    flood_payload: bytes = b""

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
            self.connections += 1
            self.sockets.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            self._script(conn)
        except (OSError, EOFError):
            pass
        finally:
            self.ended.set()
            conn.close()

    def _script(self, conn: socket.socket) -> None:
        buffer = b""
        while b"\r\n\r\n" not in buffer:
            chunk = conn.recv(65536)
            if not chunk:
                return
            buffer += chunk
        head, _, rest = buffer.partition(b"\r\n\r\n")
        self.handshakes.append(head)
        self.handshake_seen.set()
        target = head.split(b" ")[1]
        name = target.split(b"?")[0].rsplit(b"/", 1)[-1]
        arg = target.split(b"?")[1] if b"?" in target else b""
        if name == b"silent":
            conn.recv(1)
            return
        if name == b"status403":
            conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 4\r\n\r\nnope")
            return
        fields = {}
        for line in head.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            fields.setdefault(k.strip().lower(), []).append(v.strip())
        offered = [p.strip() for v in fields.get(b"sec-websocket-protocol", []) for p in v.split(b",") if p.strip()]
        response = [b"HTTP/1.1 101 Switching Protocols", b"Upgrade: websocket", b"Connection: Upgrade",
                    b"Sec-WebSocket-Accept: " + accept_key(fields[b"sec-websocket-key"][0]), b"X-Upstream: yes"]
        if offered:
            response.append(b"Sec-WebSocket-Protocol: " + offered[-1])
        conn.sendall(b"\r\n".join(response) + b"\r\n\r\n")
        reader = FrameReader(conn, rest, answer_pings=True)
        if name == b"flood":
            size = int(arg)
            self.flood_payload = os.urandom(1 << 20)
            self.flood_peer = conn.getpeername()[1]
            conn.settimeout(1.0)
            sent = 0
            block = frame(2, self.flood_payload)
            total = (size // (1 << 20)) * len(block)
            view = memoryview(block)
            while sent < total:
                offset = sent % len(block)
                try:
                    sent += conn.send(view[offset:])
                except socket.timeout:
                    self.blocked.set()
                self.flood_sent = sent
            conn.settimeout(None)
        while True:
            opcode, payload = reader.message()
            if opcode == 8:
                self.closes_received.append(payload)
                self.closed_frame.set()
                conn.sendall(frame(8, payload[:2]))
                return
            if name == b"close":
                conn.sendall(frame(8, struct.pack("!H", int(arg)) + b"bye"))
                return self._drain(reader)
            if name == b"drop":
                return
            conn.sendall(frame(opcode, payload))

    def _drain(self, reader: FrameReader) -> None:
        while True:
            opcode, payload = reader.message()
            if opcode == 8:
                self.closes_received.append(payload)
                self.closed_frame.set()
                return

    def stop(self) -> None:
        self.listener.close()
        for s in self.sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
