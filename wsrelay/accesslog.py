"""Access log: one line per HTTP request and per WebSocket connection, combined log format.

Format (nginx ``combined`` plus two fields)::

    1.2.3.4 - - [24/Nov/2026:15:40:01 +0000] "GET /chat/ HTTP/1.1" 200 512 "-" "curl/8" upstream=127.0.0.1:9001 rt=0.004

``upstream`` is the server used (``-`` when wsrelay answered itself); ``rt`` the seconds from the
request's first byte to its last.  For WebSocket connections the line is written when the pair
closes, the status is 101, the byte count is what went to the client, and ``rt`` is the
connection's lifetime.  Nothing here logs payloads, cookies or Authorization.
"""

from __future__ import annotations

import errno
import os
import sys
import time
from typing import IO


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


def format_line(
    *,
    client: str,
    when: float,
    method: bytes,
    target: bytes,
    protocol: bytes,
    status: int,
    sent: int,
    referer: bytes | None,
    user_agent: bytes | None,
    upstream: str | None,
    duration: float,
) -> str:
    """One combined-format line (no newline)."""
    stamp = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(when))
    request = _quote(b" ".join((method, target, protocol)))
    return (
        f'{client} - - [{stamp}] "{request}" {status} {sent} "{_quote(referer)}" "{_quote(user_agent)}" '
        f"upstream={upstream or '-'} rt={duration:.3f}"
    )


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

    def __init__(self, path: str | None) -> None:
        self.path = path
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

    def write(self, line: str) -> None:
        if self._file is not None:
            self._file.write(line + "\n")
            if not self._owned:
                self._file.flush()

    def close(self) -> None:
        if self._file is not None and self._owned:
            self._file.close()
        self._file = None
