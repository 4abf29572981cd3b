"""Parsers for configuration values: each takes the raw INI string and returns the value or raises
``ValueError`` with a message for the user (``config.py`` adds the file, section and key).

Pure functions, no I/O (file names are made absolute, not opened).
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable

from wsrelay.headers import SPOOFABLE

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$", re.IGNORECASE)
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_SIZE = re.compile(r"^\s*(\d+)\s*([kmg]i?b?|b)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
_OFF = {"off", "none", "no", "false", "0"}
_ON = {"on", "yes", "true", "1"}


def parse_duration(text: str) -> float:
    """``"30s"``, ``"250ms"``, ``"5m"``, ``"1h"`` or a bare number of seconds."""
    m = _DURATION.match(text)
    if not m:
        raise ValueError(f"{text!r} is not a duration (examples: 30s, 250ms, 5m, 1h)")
    return float(m.group(1)) * _DURATION_UNITS[m.group(2).lower() if m.group(2) else None]


def parse_optional_duration(text: str) -> float | None:
    """A duration, or ``off`` for none."""
    if text.strip().lower() in _OFF:
        return None
    value = parse_duration(text)
    return value or None


def parse_size(text: str) -> int:
    """``"16M"``, ``"64K"``, ``"1G"`` or a bare number of bytes (binary multiples)."""
    if text.strip().lower() in {"off", "none", "unlimited"}:
        return 0
    m = _SIZE.match(text)
    if not m:
        raise ValueError(f"{text!r} is not a size (examples: 512K, 16M, 1G, 0 for unlimited)")
    unit = (m.group(2) or "").lower()[:1]
    return int(m.group(1)) * _SIZE_UNITS[unit]


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in _ON:
        return True
    if value in _OFF:
        return False
    raise ValueError(f"{text!r} is not on or off")


def int_range(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise ValueError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise ValueError(f"{value} is out of range ({low} to {high})")
        return value

    return parse


def choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().lower().replace("-", "_")
        if value not in choices:
            raise ValueError(f"{text!r} is not one of: {', '.join(choices)}")
        return value

    return parse


def redirect(text: str) -> int | None:
    value = text.strip().lower()
    if value in _OFF:
        return None
    if value in {"301", "on", "https"}:
        return 301
    if value == "308":
        return 308
    raise ValueError(f"{text!r} is not off, 301 or 308")


def words(text: str) -> tuple[str, ...]:
    return tuple(text.replace(",", " ").split())


def pass_headers(text: str) -> frozenset[bytes]:
    """Names of the fields wsrelay drops as spoofable (``headers.SPOOFABLE``) that a route passes."""
    names = frozenset(w.lower().encode("ascii", "replace") for w in words(text))
    unknown = sorted(n.decode() for n in names - SPOOFABLE)
    if unknown:
        raise ValueError(f"{', '.join(unknown)}: only these are dropped, so only these can be passed: "
                         + ", ".join(sorted(n.decode() for n in SPOOFABLE)))
    return names


def host_for_url(host: str) -> str:
    return f"[{host}]" if ":" in host else host


_HOSTNAME = re.compile(r"^(\*\.)?([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?\.)*[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$")


def host_patterns(text: str) -> tuple[str, ...]:
    hosts = tuple(h.lower().rstrip(".") for h in words(text))
    for host in hosts:
        if host == "*":
            raise ValueError("'*' matches every host: leave 'host' out instead")
        if not _HOSTNAME.match(host) and not is_ip(host.strip("[]")):
            raise ValueError(f"{host!r} is not a host name, '*.domain' wildcard or IP address")
    return hosts


def is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def status_set(text: str) -> frozenset[int]:
    statuses = set()
    for word in words(text):
        if word.lower() in _OFF:
            continue
        if not word.isdigit() or not 500 <= int(word) <= 599:
            raise ValueError(f"{word!r} is not a 5xx status")
        statuses.add(int(word))
    return frozenset(statuses)


def origins(text: str) -> tuple[str, ...]:
    listed = words(text)
    if not listed:
        raise ValueError("give '*' or one or more origins such as https://example.com")
    if "*" in listed:
        if len(listed) > 1:
            raise ValueError("'*' allows every origin: do not list others beside it")
        return ("*",)
    for origin in listed:
        if not re.match(r"^https?://[^/\s]+$", origin, re.IGNORECASE):
            raise ValueError(f"{origin!r} is not an origin (scheme://host[:port], no path)")
    return tuple(o.lower() for o in listed)


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


def route_path(text: str) -> tuple[str, bool]:
    value = text.strip()
    exact = value.startswith("=")
    if exact:
        value = value[1:].strip()
    if not value.startswith("/"):
        raise ValueError(f"{text!r} is not a path: it must start with '/' (or '=/' for exact)")
    if any(c.isspace() or ord(c) < 0x21 or ord(c) == 0x7F for c in value):
        raise ValueError(f"{text!r}: a path may not contain spaces or control characters")
    return value, exact


def health_check(text: str) -> tuple[str, bool] | None:
    value = text.strip()
    if value.lower() in _OFF:
        return None
    websocket = False
    m = re.match(r"^(ws|http):(/.*)$", value, re.IGNORECASE)
    if m:
        websocket = m.group(1).lower() == "ws"
        value = m.group(2)
    if not value.startswith("/") or any(c.isspace() for c in value):
        raise ValueError(f"{text!r} is not a path (examples: /healthz, ws:/socket)")
    return value, websocket


def host_header(text: str) -> str | None:
    value = text.strip()
    if value.lower() in {"pass", "$host", "$http_host"}:
        return None
    if value.lower() in {"upstream", "$upstream", "$proxy_host"}:
        return "$upstream"
    if not re.match(r"^[A-Za-z0-9.\-\[\]:_]+$", value):
        raise ValueError(f"{text!r} is not 'pass', 'upstream' or a host[:port]")
    return value


def tls_version(text: str) -> str:
    value = text.strip().lower().removeprefix("tlsv").removeprefix("tls")
    if value not in {"1.2", "1.3"}:
        raise ValueError(f"{text!r} is not 1.2 or 1.3")
    return value


def cipher_string(text: str) -> str:
    value = text.strip()
    if not re.match(r"^[A-Za-z0-9_:+!@=\-.,]+$", value):
        raise ValueError(f"{text!r} is not an OpenSSL cipher string")
    return value


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
        if value.lower() in _OFF:
            return None
        if value in {"-", "stdout"}:
            return "-"
        return file_path(base)(value)

    return parse


def workers(text: str) -> int:
    if text.strip().lower() == "auto":
        return max(1, os.cpu_count() or 1)
    return int_range(1, 256)(text)


def password(text: str) -> str:
    return text.strip()


# Mozilla "intermediate" TLS <= 1.2 suites (TLS 1.3 suites are OpenSSL's defaults).
MOZILLA_INTERMEDIATE_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
    "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:DHE-RSA-CHACHA20-POLY1305"
)
