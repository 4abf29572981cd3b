"""Access log: one line per HTTP request and per WebSocket connection, combined or JSON.

``access_log_format = combined`` (the default): nginx ``combined`` plus three fields::

    1.2.3.4 - - [24/Nov/2026:15:40:01 +0000] "GET /chat/ HTTP/1.1" 200 512 "-" "curl/8" upstream=127.0.0.1:9001 rt=0.004 request_id=5f0c...

``upstream`` is the server used (``-`` when wsrelay answered itself); ``rt`` the seconds from the
request's first byte to its last; ``request_id`` the request's ``X-Request-ID``
(``wsrelay.requestid``).  For WebSocket connections the line is written when the pair closes, the
status is 101, the byte count is what went to the client, and ``rt`` is the connection's lifetime.

``access_log_format = json``: one object per line (:func:`format_json`, keys in README), the same
facts plus the route, the bytes received and, for a WebSocket pair, its figures
(:class:`WebSocketFigures`).  Strings are the bytes decoded as UTF-8 (a byte that is not valid
UTF-8 shows as the four characters ``\\xHH``), written with JSON escapes for ``"``, ``\\``, control
characters and everything past ASCII, so a line is pure ASCII and no input can end a string or
a line.  Nothing here logs payloads, cookies or Authorization: no caller passes them.
"""

from __future__ import annotations

import errno
import os
import sys
import time
from json.encoder import encode_basestring_ascii
from typing import IO, NamedTuple


#: As nginx's log escaping: '"', '\\', control bytes and bytes past ASCII as \xHH, so a logged
#: field can neither end its quotes nor forge a line or a terminal escape sequence.
_ESCAPES = {c: f"\\x{c:02X}" for c in (*range(0x20), *range(0x7F, 0x100), ord('"'), ord("\\"))}


def escape(value: bytes | str) -> str:
    """``value`` safe to write in a log line (see ``_ESCAPES``)."""
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    return text.translate(_ESCAPES)


def _quote(value: bytes | str | None) -> str:
    if value is None or value == b"" or value == "":
        return "-"
    return escape(value)


class WebSocketFigures(NamedTuple):
    """What a WebSocket pair's access-log line says of it beyond the request's fields.

    ``messages_*``: None in tunnel mode (wsrelay reads no messages there); ``bytes_*``: message
    payload bytes in relay mode, bytes on the wire after the handshake in tunnel mode;
    ``close_code``: the code of the close that ended the pair (1006: a connection lost without a
    close frame; None: a close frame without a code, or one tunnel mode could not read);
    ``close_by``: who closed first, ``client``, ``upstream`` or ``wsrelay``.
    """

    mode: str
    duration: float  # seconds from both handshakes done to the end of the pair
    messages_from_client: int | None
    bytes_from_client: int
    messages_from_upstream: int | None
    bytes_from_upstream: int
    close_code: int | None
    close_by: str | None


class Entry(NamedTuple):
    """One access-log line's facts, for either format (``None``: not known)."""

    client: str | None  # None: a unix: listener
    when: float  # time.time() at the end
    method: bytes
    target: bytes
    protocol: bytes
    status: int
    sent: int  # body bytes sent to the client
    referer: bytes | None
    user_agent: bytes | None
    upstream: str | None  # "host:port"; None: wsrelay answered itself
    duration: float  # seconds from the request's first byte to the end
    request_id: bytes | None = None
    route: str | None = None
    received: int | None = None  # body bytes received from the client
    websocket: WebSocketFigures | None = None


class _Stamps:
    """``time.strftime(fmt)`` of a time, formatted once per second (lines come many a second)."""

    __slots__ = ("fmt", "second", "text")

    def __init__(self, fmt: str) -> None:
        self.fmt, self.second, self.text = fmt, -1, ""

    def __call__(self, when: float) -> str:
        second = int(when)
        if second != self.second:
            self.second, self.text = second, time.strftime(self.fmt, time.gmtime(second))
        return self.text


_combined_stamp = _Stamps("%d/%b/%Y:%H:%M:%S +0000")
_json_stamp = _Stamps("%Y-%m-%dT%H:%M:%S")


def format_line(e: Entry) -> str:
    """One combined-format line (no newline); ``client`` None (a ``unix:`` listener) shows as
    ``unix``; ``route``, ``received`` and ``websocket`` are the JSON format's only."""
    request = _quote(b" ".join((e.method, e.target, e.protocol)))
    return (
        f'{e.client or "unix"} - - [{_combined_stamp(e.when)}] "{request}" {e.status} {e.sent} '
        f'"{_quote(e.referer)}" "{_quote(e.user_agent)}" upstream={e.upstream or "-"} rt={e.duration:.3f} '
        f"request_id={_quote(e.request_id)}"
    )


def _json_string(value: bytes | str | None) -> str:
    if value is None:
        return "null"
    if isinstance(value, bytes):
        value = value.decode("utf-8", "backslashreplace")
    return encode_basestring_ascii(value)


def _json_int(value: int | None) -> str:
    return "null" if value is None else str(int(value))


def format_json(e: Entry) -> str:
    """One JSON object (no newline), keys always in this order; ``null`` for what is not known."""
    stamp = _json_stamp(e.when) + ".%03dZ" % (int(e.when * 1000) % 1000)
    s = _json_string
    line = (
        f'{{"time":"{stamp}","client":{s(e.client)},"method":{s(e.method)},"target":{s(e.target)},'
        f'"protocol":{s(e.protocol)},"status":{int(e.status)},"bytes_sent":{int(e.sent)},'
        f'"bytes_received":{_json_int(e.received)},"duration":{e.duration:.6f},"route":{s(e.route)},'
        f'"upstream":{s(e.upstream)},"request_id":{s(e.request_id)},"referer":{s(e.referer)},'
        f'"user_agent":{s(e.user_agent)}'
    )
    w = e.websocket
    if w is None:
        return line + "}"
    return line + (
        f',"ws_mode":{s(w.mode)},"ws_duration":{w.duration:.6f},'
        f'"ws_messages_from_client":{_json_int(w.messages_from_client)},'
        f'"ws_bytes_from_client":{int(w.bytes_from_client)},'
        f'"ws_messages_from_upstream":{_json_int(w.messages_from_upstream)},'
        f'"ws_bytes_from_upstream":{int(w.bytes_from_upstream)},'
        f'"ws_close_code":{_json_int(w.close_code)},"ws_close_by":{s(w.close_by)}}}'
    )


#: ``access_log_format`` values and their formatters
FORMATS = {"combined": format_line, "json": format_json}


def open_problem(path: str | None) -> str | None:
    """Why appending to the file ``path`` would fail, found without creating it (for ``--check``);
    None if it would work.  The words are ``strerror``'s, as when opening fails."""
    if path is None or path == "-":
        return None
    if os.path.isdir(path):
        return os.strerror(errno.EISDIR)
    if os.path.exists(path):
        return None if os.access(path, os.W_OK) else os.strerror(errno.EACCES)
    parent = os.path.dirname(path) or "."
    if not os.path.isdir(parent):
        return os.strerror(errno.ENOENT)
    return None if os.access(parent, os.W_OK | os.X_OK) else os.strerror(errno.EACCES)


class AccessLog:
    """Writes lines to a file (appending, line-buffered) or to stdout (``"-"``), or nowhere (None).

    Opening raises OSError (a missing directory, no permission).
    """

    def __init__(self, path: str | None, format: str = "combined") -> None:
        self.path = path
        self.format = format
        self.line = FORMATS[format]  # the formatter of ``format``
        self._file: IO[str] | None = None
        self._owned = False  # never close stdout: twistd swaps sys.stdout, so compare nothing to it
        if path == "-":
            self._file = sys.stdout
        elif path is not None:
            self._file = open(path, "a", buffering=1, encoding="ascii")
            self._owned = True

    @property
    def enabled(self) -> bool:
        """False for ``access_log = off``: callers skip building the line (it costs on hot paths)."""
        return self._file is not None

    def log(self, entry: Entry) -> None:
        """Write ``entry``'s line in this log's format."""
        self.write(self.line(entry))

    def write(self, line: str) -> None:
        if self._file is not None:
            self._file.write(line + "\n")
            if not self._owned:
                self._file.flush()

    def close(self) -> None:
        if self._file is not None and self._owned:
            self._file.close()
        self._file = None
