"""Parsers for configuration values: each takes the raw INI string and returns the value or raises
``ValueError`` with a message for the user (:mod:`wsrelay.config.loader` adds the file, section and
key).  Pure functions, no I/O.

This module parses durations, sizes, switches, numbers, choices, rates, statuses, word lists, TLS
versions and cipher strings, secrets.  Host names, addresses and networks are parsed in
:mod:`wsrelay.config.hosts`; paths, endpoints and file names in :mod:`wsrelay.config.paths`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable

from wsrelay.headers import SPOOFABLE

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$", re.IGNORECASE)
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_SIZE = re.compile(r"^\s*(\d+)\s*([kmg]i?b?|b)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
#: What turns a value off (here, and in ``hosts`` and ``paths``).
OFF = {"off", "none", "no", "false", "0"}
_ON = {"on", "yes", "true", "1"}


def parse_duration(text: str) -> float:
    """``"30s"``, ``"250ms"``, ``"5m"``, ``"1h"`` or a bare number of seconds."""
    m = _DURATION.match(text)
    if not m:
        raise ValueError(f"{text!r} is not a duration (examples: 30s, 250ms, 5m, 1h)")
    return float(m.group(1)) * _DURATION_UNITS[m.group(2).lower() if m.group(2) else None]


def parse_optional_duration(text: str) -> float | None:
    """A duration, or ``off`` for none."""
    if text.strip().lower() in OFF:
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
    if value in OFF:
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
    if value in OFF:
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


_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:r?/(s|m))?\s*$", re.IGNORECASE)


def request_rate(text: str) -> float:
    """``limit_req_rate``: requests per second (``10``, ``10r/s``, ``30r/m``, ``0.5``); ``off``: 0."""
    if text.strip().lower() in OFF:
        return 0.0
    m = _RATE.match(text)
    if not m:
        raise ValueError(f"{text!r} is not a rate (examples: 10, 10r/s, 30r/m, off)")
    rate = float(m.group(1)) / (60.0 if (m.group(2) or "s").lower() == "m" else 1.0)
    if not 0.001 <= rate <= 1_000_000:
        raise ValueError(f"{text!r} is out of range (0.001 to 1000000 requests per second, or off)")
    return rate


def limit_count(text: str) -> int:
    """``limit_conn``: a number of exchanges and pairs, or ``off`` (0)."""
    if text.strip().lower() in OFF - {"0"}:
        return 0
    return int_range(0, 1_000_000)(text)


def status_set(text: str) -> frozenset[int]:
    statuses = set()
    for word in words(text):
        if word.lower() in OFF:
            continue
        if not word.isdigit() or not 500 <= int(word) <= 599:
            raise ValueError(f"{word!r} is not a 5xx status")
        statuses.add(int(word))
    return frozenset(statuses)


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


def workers(text: str) -> int:
    if text.strip().lower() == "auto":
        return max(1, os.cpu_count() or 1)
    return int_range(1, 256)(text)


def password(text: str) -> str:
    return text.strip()


def secret(text: str) -> str:
    """A secret key given in the file (``sticky_secret``): at least 16 bytes."""
    value = text.strip()
    if len(value.encode("utf-8")) < 16:
        raise ValueError("is too short: give at least 16 characters (e.g. 'openssl rand -base64 32')")
    return value


# Mozilla "intermediate" TLS <= 1.2 suites (TLS 1.3 suites are OpenSSL's defaults).
MOZILLA_INTERMEDIATE_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
    "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:DHE-RSA-CHACHA20-POLY1305"
)
