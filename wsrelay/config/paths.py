"""Parsers for configuration values that name places: route paths, request targets (health
checks), listening endpoints, file names.  Pure functions, no I/O (file names are made absolute, not
opened); each raises ``ValueError`` with a message for the user, as in :mod:`wsrelay.config.values`.

A request target wsrelay sends is converted once to the form it sends: ASCII, non-ASCII characters
percent-encoded as UTF-8 (names of hosts: :mod:`wsrelay.config.hosts`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from urllib.parse import unquote_to_bytes

from wsrelay.config.values import OFF


def endpoint(text: str) -> str:
    value = text.strip()
    kind = value.split(":", 1)[0].lower()
    if kind not in {"tcp", "tcp6", "unix", "systemd"}:
        raise ValueError(
            f"{value!r} is not a server endpoint (examples: tcp:8080:interface=127.0.0.1, "
            "tcp6:8080:interface=\\:\\:1, unix:/run/wsrelay.sock, systemd:domain=INET:index=0)"
        )
    if kind in {"tcp", "tcp6"}:
        parts = value.split(":")
        if len(parts) < 2 or not parts[1].isdigit() or not 0 <= int(parts[1]) <= 65535:
            raise ValueError(f"{value!r}: the port must follow '{kind}:' (0 to 65535)")
    return value


def endpoints(text: str) -> tuple[str, ...]:
    values = tuple(endpoint(v) for v in text.split())
    if not values:
        raise ValueError("give at least one endpoint, such as tcp:8080:interface=127.0.0.1")
    return values


def _controls(value: str) -> bool:
    return any(c.isspace() or ord(c) < 0x21 or ord(c) == 0x7F for c in value)


def route_path(text: str) -> tuple[str, bool]:
    """A route's path in the form requests are matched in (``routing.normalize_path``):
    percent-decoded, each byte one character (non-ASCII is taken as UTF-8).  A path that no
    normalised request path can equal (dot segments, repeated slashes, NUL) is refused."""
    value = text.strip()
    exact = value.startswith("=")
    if exact:
        value = value[1:].strip()
    if not value.startswith("/"):
        raise ValueError(f"{text!r} is not a path: it must start with '/' (or '=/' for exact)")
    if _controls(value):
        raise ValueError(f"{text!r}: a path may not contain spaces or control characters")
    decoded = unquote_to_bytes(value.encode("utf-8"))
    if any(b < 0x20 or b == 0x7F for b in decoded):
        raise ValueError(f"{text!r}: a path may not hold an encoded control character")
    segments = decoded.split(b"/")[1:]
    if b"//" in decoded or any(s in (b".", b"..") for s in segments):
        raise ValueError(f"{text!r} would never match: requests are matched after '.' and '..' are"
                         " resolved and repeated slashes merged")
    return decoded.decode("latin-1"), exact


def request_target(text: str) -> str:
    """A path (and query) wsrelay sends in a request line: ASCII, non-ASCII characters
    percent-encoded as UTF-8 (as browsers do), no spaces, controls or fragment."""
    if not text.startswith("/") or _controls(text) or "#" in text:
        raise ValueError(f"{text!r} is not a path (examples: /healthz, ws:/socket)")
    return "".join(c if c.isascii() else "".join(f"%{b:02X}" for b in c.encode("utf-8")) for c in text)


def health_check(text: str) -> tuple[str, bool] | None:
    value = text.strip()
    if value.lower() in OFF:
        return None
    websocket = False
    m = re.match(r"^(ws|http):(/.*)$", value, re.IGNORECASE)
    if m:
        websocket = m.group(1).lower() == "ws"
        value = m.group(2)
    return request_target(value), websocket


def file_path(base: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = os.path.expanduser(text.strip())
        if not value:
            raise ValueError("give a file name")
        return value if os.path.isabs(value) else os.path.normpath(os.path.join(base, value))

    return parse


def access_log(base: str) -> Callable[[str], str | None]:
    def parse(text: str) -> str | None:
        value = text.strip()
        if value.lower() in OFF:
            return None
        if value in {"-", "stdout"}:
            return "-"
        return file_path(base)(value)

    return parse
