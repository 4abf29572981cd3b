"""Which keys each kind of section takes, with their parsers and defaults, and the server lists of
upstream groups.  Pure: no I/O (file names are made absolute, not opened).

These tables are the single source of which keys exist (``describe_keys``); etc/relay.ini
documents each, and a test checks that it does.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from wsrelay.config import hosts, paths
from wsrelay.config import values as V
from wsrelay.config.model import Server

# --------------------------------------------------------------------------------------------
# Upstream servers (values that are objects of this module)

def _server(text: str, is_default_scheme: str = "http") -> Server:
    words = text.split()
    address = words[0]
    scheme = is_default_scheme
    m = re.match(r"^(https?|wss?)://(.*)$", address, re.IGNORECASE)
    if m:
        scheme = {"http": "http", "ws": "http", "https": "https", "wss": "https"}[m.group(1).lower()]
        address = m.group(2).rstrip("/")
    m = re.match(r"^(\[[^\]/]*\]|[^:\[\]/]+):(\d{1,5})$", address)
    if not m:
        raise ValueError(f"{words[0]!r} is not host:port (or [ipv6]:port, optionally https://...)")
    host, port = hosts.server_host(m.group(1)), int(m.group(2))  # ASCII: A-labels, canonical IPv6
    if not 1 <= port <= 65535:
        raise ValueError(f"{words[0]!r}: port {port} is out of range (1 to 65535)")
    options: dict[str, Any] = {}
    for word in words[1:]:
        name, _, value = word.partition("=")
        name = name.lower()
        if name == "backup" and not value:
            options["backup"] = True
        elif name == "weight":
            options["weight"] = V.int_range(1, 1000)(value)
        elif name == "max_conns":
            options["max_conns"] = V.int_range(0, 1_000_000)(value)
        else:
            raise ValueError(f"{word!r}: unknown server option (weight=N, max_conns=N, backup)")
    return Server(scheme=scheme, host=host, port=port, **options)


def _servers(text: str) -> tuple[Server, ...]:
    # Servers are separated by spaces, commas or new lines; option words (weight=N, max_conns=N,
    # backup) belong to the server before them.
    groups: list[list[str]] = []
    for word in text.replace(",", " ").split():
        name = word.partition("=")[0].lower()
        if name in {"weight", "max_conns", "backup"} or (groups and "=" in word and ":" not in word):
            if not groups:
                raise ValueError(f"{word!r} comes before any server")
            groups[-1].append(word)
        else:
            groups.append([word])
    if not groups:
        raise ValueError("give at least one server, such as 127.0.0.1:9001")
    servers = tuple(_server(" ".join(group)) for group in groups)
    seen = set()
    for server in servers:
        if server.key in seen:
            raise ValueError(f"{server.key} is listed twice")
        seen.add(server.key)
    if all(s.backup for s in servers):
        raise ValueError("every server is a backup: at least one must not be")
    return servers


# --------------------------------------------------------------------------------------------
# Limits

def _connection_cap(text: str) -> int | None:
    """``max_connections``: ``auto`` (None: from the descriptor limit), 0 (no cap) or a number."""
    if text.strip().lower() == "auto":
        return None
    return V.int_range(0, 10_000_000)(text)


_RATE = re.compile(r"^(\d+(?:\.\d+)?)\s*(?:r?/\s*([sm]))?$", re.IGNORECASE)


def _message_rate(text: str) -> float | None:
    """``ws_max_message_rate``: messages per second (``50``, ``50/s``, ``0.5``, ``30/m``), or off."""
    text = text.strip()
    if text.lower() in {"off", "0"}:
        return None
    m = _RATE.match(text)
    if not m:
        raise ValueError(f"{text!r} is not a rate: messages per second such as 50 or 50/s, or per minute"
                         " such as 30/m, or off")
    rate = float(m.group(1)) / (60.0 if (m.group(2) or "s").lower() == "m" else 1.0)
    if not 0.001 <= rate <= 1_000_000:
        raise ValueError(f"{text!r} is out of range (0.001 to 1000000 messages per second)")
    return rate


# --------------------------------------------------------------------------------------------
# Which keys each kind of section takes, with their parsers and defaults (as text, parsed the
# same way as user input so the defaults shown in etc/relay.ini are the real ones).

_Key = tuple[Callable[[str], Any], str | None]  # parser, default text (None: required)


def _drain_spread(text: str) -> float:
    """``ws_drain_spread``: a duration of at most an hour (0: every pair at once)."""
    value = V.parse_duration(text)
    if value > 3600:
        raise ValueError(f"{text!r} is longer than an hour: a stop would take that long")
    return value


def _trim_interval(text: str) -> float | None:
    """``memory_trim_interval``: off, or a duration from 1 s to an hour."""
    value = V.parse_optional_duration(text)
    if value is not None and not 1 <= value <= 3600:
        raise ValueError(f"{text!r} is out of range (1s to 1h, or off)")
    return value


def _global_keys(base: str) -> dict[str, _Key]:
    return {
        "listen": (paths.endpoints, ""),
        "access_log": (paths.access_log(base), "-"),
        "access_log_format": (V.choice("combined", "json"), "combined"),
        "trust_request_id": (V.parse_bool, "off"),
        "workers": (V.workers, "1"),
        "max_connections": (_connection_cap, "auto"),
        "drain_timeout": (V.parse_duration, "10s"),
        "ws_drain_spread": (_drain_spread, "5s"),
        "reuse_port": (V.parse_bool, "on"),
        "memory_trim_interval": (_trim_interval, "10s"),
        "max_request_line": (V.parse_size, "8K"),
        "max_header_size": (V.parse_size, "16K"),
        "log_format": (V.choice("text", "json"), "text"),
        "underscores_in_headers": (V.parse_bool, "off"),
        "client_header_timeout": (V.parse_duration, "60s"),
        "client_body_timeout": (V.parse_duration, "60s"),
        "keepalive_timeout": (V.parse_duration, "75s"),
        "sticky_secret": (V.secret, ""),
        "sticky_secret_file": (paths.file_path(base), ""),
        "trusted_proxies": (hosts.trusted_proxies, "off"),
        # Defaults of the routes' limits, and the most client buckets each route keeps.
        "limit_conn": (V.limit_count, "off"),
        "limit_req_rate": (V.request_rate, "off"),
        "limit_req_burst": (V.int_range(1, 1_000_000), ""),  # empty: one second's worth
        "limit_req_clients": (V.int_range(1, 10_000_000), "100000"),
    }


def _listener_keys(base: str) -> dict[str, _Key]:
    return {
        "endpoint": (paths.endpoint, None),
        "tls": (V.parse_bool, "off"),
        "certificates": (V.words, ""),
        "default_certificate": (lambda t: None if t.strip().lower() in {"", "none", "refuse"} else t.strip(), ""),
        "tls_min_version": (V.tls_version, "1.2"),
        "tls_ciphers": (V.cipher_string, V.MOZILLA_INTERMEDIATE_CIPHERS),
        "hsts_max_age": (V.parse_optional_duration, "off"),
        "redirect": (V.redirect, "off"),
        "redirect_port": (V.int_range(1, 65535), ""),
        "proxy_protocol": (V.parse_bool, "off"),
        "underscores_in_headers": (V.parse_bool, ""),  # empty: the [wsrelay] setting
        "trusted_proxies": (hosts.trusted_proxies, ""),  # empty: the [wsrelay] setting
    }


def _certificate_keys(base: str) -> dict[str, _Key]:
    return {
        "cert": (paths.file_path(base), None),
        "key": (paths.file_path(base), None),
        "password": (V.password, ""),
        "hosts": (hosts.host_patterns, ""),
    }


def _upstream_keys(base: str) -> dict[str, _Key]:
    return {
        "servers": (_servers, None),
        "balance": (V.choice("round_robin", "least_conn", "ip_hash", "cookie", "header"), ""),
        "sticky": (lambda t: t.strip(), ""),
        "max_fails": (V.int_range(0, 1000), "1"),
        "fail_timeout": (V.parse_duration, "10s"),
        "fail_statuses": (V.status_set, "off"),
        "health_check": (paths.health_check, "off"),
        "health_interval": (V.parse_duration, "5s"),
        "health_timeout": (V.parse_duration, "2s"),
        "health_rise": (V.int_range(1, 100), "2"),
        "health_fall": (V.int_range(1, 100), "3"),
        "keepalive": (V.int_range(0, 10_000), "16"),
        "max_response_header_size": (V.parse_size, "64K"),
        "tls_verify": (V.parse_bool, "on"),
        "tls_ca": (paths.file_path(base), ""),
        "tls_server_name": (hosts.tls_server_name, ""),
    }


def _admin_keys(base: str) -> dict[str, _Key]:
    return {
        "endpoint": (lambda t: None if t.strip().lower() in {"", "off", "none"} else paths.endpoint(t), "off"),
        "allow": (hosts.networks, ""),
    }


def _route_keys(base: str) -> dict[str, _Key]:
    return {
        "path": (paths.route_path, ""),
        "host": (hosts.host_patterns, ""),
        "upstream": (lambda t: t.strip(), ""),
        "host_header": (hosts.host_header, "pass"),
        "max_body_size": (V.parse_size, "16M"),
        "connect_timeout": (V.parse_duration, "5s"),
        "read_timeout": (V.parse_duration, "60s"),
        "send_timeout": (V.parse_duration, "60s"),
        "retries": (V.int_range(0, 10), "1"),
        "retry_timeout": (V.parse_duration, "10s"),
        "redirect": (V.redirect, "off"),
        "forwarded": (V.parse_bool, "on"),
        "pass_headers": (V.pass_headers, ""),
        "websocket": (V.parse_bool, "on"),
        "ws_mode": (V.choice("relay", "tunnel"), "relay"),
        "ws_ping_interval": (V.parse_optional_duration, "30s"),
        "ws_ping_timeout": (V.parse_duration, "10s"),
        "ws_idle_timeout": (V.parse_optional_duration, "off"),
        "ws_max_message_size": (V.parse_size, "16M"),
        "ws_max_frame_size": (V.parse_size, "16M"),
        "ws_max_message_rate": (_message_rate, "off"),
        "ws_message_burst": (V.int_range(1, 1_000_000), ""),
        "ws_allowed_origins": (hosts.origins, "*"),
        "ws_require_origin": (V.parse_bool, "off"),
        "ws_handshake_timeout": (V.parse_duration, "10s"),
        "ws_compression": (V.parse_bool, "on"),
        "ws_upstream_compression": (V.parse_bool, "off"),
        "limit_conn": (V.limit_count, ""),  # empty: the [wsrelay] setting
        "limit_req_rate": (V.request_rate, ""),  # empty: the [wsrelay] setting
        "limit_req_burst": (V.int_range(1, 1_000_000), ""),  # empty: the [wsrelay] setting
    }


_SECTION_KINDS = ("wsrelay", "admin", "listener", "certificate", "upstream", "route")
_UNNAMED = ("wsrelay", "admin")


def describe_keys() -> dict[str, Iterable[str]]:
    """The known keys of each section kind (for documentation tests)."""
    return {
        "wsrelay": _global_keys("."),
        "admin": _admin_keys("."),
        "listener": _listener_keys("."),
        "certificate": _certificate_keys("."),
        "upstream": _upstream_keys("."),
        "route": _route_keys("."),
    }
