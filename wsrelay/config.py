"""INI text to frozen, validated configuration objects.

Invariants: nothing here touches sockets, files other than the one being parsed, or the reactor.
Every problem is a :class:`ConfigError` that names the file, the section and the key; a
configuration that parses is complete (every route's upstream exists, every listener's certificates
exist, every value is in range), so the rest of wsrelay never re-validates it.

The accepted shape is documented key by key in ``etc/relay.ini`` and README.rst; the tables
``_SECTION_KEYS`` below are the single source of which keys exist.
"""

from __future__ import annotations

import configparser
import difflib
import ipaddress
import os
import re
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any

import attrs

DEFAULT_PATH = "etc/relay.ini"


class ConfigError(Exception):
    """A configuration problem, located as precisely as we can: file, section, key."""

    def __init__(self, path: str, section: str | None, key: str | None, message: str) -> None:
        super().__init__(path, section, key, message)
        self.path = path
        self.section = section
        self.key = key
        self.message = message

    def __str__(self) -> str:
        where = self.path
        if self.section is not None:
            where += f": [{self.section}]"
        if self.key is not None:
            where += f" {self.key}"
        return f"{where}: {self.message}"


# --------------------------------------------------------------------------------------------
# The objects


@attrs.frozen
class Server:
    """One server of an upstream group (nginx ``server`` inside ``upstream``)."""

    scheme: str  # "http" (plain; ws for WebSocket) or "https" (TLS; wss for WebSocket)
    host: str
    port: int
    weight: int = 1
    max_conns: int = 0  # 0: unlimited
    backup: bool = False

    @property
    def key(self) -> str:
        """Identity of the server across reloads (health and connection counts follow it)."""
        return f"{self.scheme}://{_host_for_url(self.host)}:{self.port}"

    @property
    def tls(self) -> bool:
        return self.scheme == "https"

    @property
    def hostport(self) -> str:
        return f"{_host_for_url(self.host)}:{self.port}"


@attrs.frozen
class HealthCheck:
    """Active health checks of an upstream group."""

    path: str  # request target, e.g. "/healthz"
    websocket: bool  # True: a WebSocket handshake to path; False: HTTP GET path, 2xx/3xx is healthy
    interval: float
    timeout: float
    rise: int
    fall: int


@attrs.frozen
class Upstream:
    """An upstream group: servers, balancing, passive and active health, upstream TLS."""

    name: str
    servers: tuple[Server, ...]
    balance: str  # round_robin | least_conn | ip_hash | cookie | header
    sticky: str | None  # cookie or header name, for balance = cookie | header
    max_fails: int  # 0: passive health off
    fail_timeout: float
    fail_statuses: frozenset[int]
    health: HealthCheck | None
    keepalive: int  # idle persistent connections kept per server
    tls_verify: bool
    tls_ca: str | None  # None: the system trust store
    tls_server_name: str | None  # None: the server's host
    balance_explicit: bool = False  # False: balance was defaulted (least_conn if any WS route)


@attrs.frozen
class WebSocketOptions:
    """How a route treats WebSocket upgrades."""

    enabled: bool
    mode: str  # relay | tunnel
    ping_interval: float | None  # None: wsrelay sends no pings of its own
    ping_timeout: float
    idle_timeout: float | None  # None: no idle timeout
    max_message_size: int  # 0: unlimited
    max_frame_size: int  # 0: unlimited
    allowed_origins: tuple[str, ...]  # ("*",): any Origin (and requests with none)
    handshake_timeout: float
    compression: bool  # permessage-deflate toward clients
    upstream_compression: bool  # permessage-deflate toward upstreams


@attrs.frozen
class Route:
    """A location: which requests it takes (host, path) and where and how it sends them."""

    name: str  # the section's name, for logs
    path: str
    exact: bool
    hosts: tuple[str, ...]  # lower-case; "" tuple = any host; "*.example.com" wildcards
    upstream: str
    host_header: str | None  # None: pass the client's Host; "$upstream": the server's host:port
    max_body_size: int  # 0: unlimited
    connect_timeout: float
    read_timeout: float
    send_timeout: float
    retries: int  # extra attempts on other servers when connecting fails
    retry_timeout: float  # time budget for all attempts
    redirect: int | None  # 301 / 308: answer with a redirect to https instead of proxying
    websocket: WebSocketOptions


@attrs.frozen
class Certificate:
    """A certificate chain and its key, served for ``hosts`` (SNI names)."""

    name: str
    cert_file: str
    key_file: str
    password: str | None
    hosts: tuple[str, ...]  # empty: the names in the certificate itself


@attrs.frozen
class ServerTLS:
    """TLS settings of a listener."""

    certificates: tuple[str, ...]  # Certificate names, in order
    default_certificate: str | None  # None: refuse handshakes with no or an unknown SNI name
    min_version: str  # "1.2" | "1.3"
    ciphers: str  # OpenSSL cipher string for TLS <= 1.2
    hsts_max_age: int | None  # None: no Strict-Transport-Security header


@attrs.frozen
class Listener:
    """A listening endpoint and how it treats connections."""

    name: str
    endpoint: str  # Twisted server endpoint string
    tls: ServerTLS | None
    redirect: int | None  # 301 / 308: every request is redirected to https
    redirect_port: int | None  # port of the https URL; None: 443 (omitted from the URL)


@attrs.frozen
class Config:
    """A whole, validated configuration. Swapped in whole on reload, never mutated."""

    path: str
    listeners: tuple[Listener, ...]
    upstreams: Mapping[str, Upstream]
    routes: tuple[Route, ...]
    certificates: Mapping[str, Certificate]
    access_log: str | None  # "-": stdout; None: off
    workers: int
    drain_timeout: float
    max_request_line: int
    max_header_size: int


# --------------------------------------------------------------------------------------------
# Value parsers: each takes the raw string and returns the value or raises ValueError(message).

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


def _int_range(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise ValueError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise ValueError(f"{value} is out of range ({low} to {high})")
        return value

    return parse


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().lower().replace("-", "_")
        if value not in choices:
            raise ValueError(f"{text!r} is not one of: {', '.join(choices)}")
        return value

    return parse


def _redirect(text: str) -> int | None:
    value = text.strip().lower()
    if value in _OFF:
        return None
    if value in {"301", "on", "https"}:
        return 301
    if value == "308":
        return 308
    raise ValueError(f"{text!r} is not off, 301 or 308")


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.replace(",", " ").split())


def _host_for_url(host: str) -> str:
    return f"[{host}]" if ":" in host else host


_HOSTNAME = re.compile(r"^(\*\.)?([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?\.)*[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$")


def _host_patterns(text: str) -> tuple[str, ...]:
    hosts = tuple(h.lower().rstrip(".") for h in _words(text))
    for host in hosts:
        if host == "*":
            raise ValueError("'*' matches every host: leave 'host' out instead")
        if not _HOSTNAME.match(host) and not _is_ip(host.strip("[]")):
            raise ValueError(f"{host!r} is not a host name, '*.domain' wildcard or IP address")
    return hosts


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _status_set(text: str) -> frozenset[int]:
    statuses = set()
    for word in _words(text):
        if word.lower() in _OFF:
            continue
        if not word.isdigit() or not 500 <= int(word) <= 599:
            raise ValueError(f"{word!r} is not a 5xx status")
        statuses.add(int(word))
    return frozenset(statuses)


def _origins(text: str) -> tuple[str, ...]:
    origins = _words(text)
    if not origins:
        raise ValueError("give '*' or one or more origins such as https://example.com")
    if "*" in origins:
        if len(origins) > 1:
            raise ValueError("'*' allows every origin: do not list others beside it")
        return ("*",)
    for origin in origins:
        if not re.match(r"^https?://[^/\s]+$", origin, re.IGNORECASE):
            raise ValueError(f"{origin!r} is not an origin (scheme://host[:port], no path)")
    return tuple(o.lower() for o in origins)


def _endpoint(text: str) -> str:
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


def _endpoints(text: str) -> tuple[str, ...]:
    values = tuple(_endpoint(v) for v in text.split())
    if not values:
        raise ValueError("give at least one endpoint, such as tcp:8080:interface=127.0.0.1")
    return values


def _route_path(text: str) -> tuple[str, bool]:
    value = text.strip()
    exact = value.startswith("=")
    if exact:
        value = value[1:].strip()
    if not value.startswith("/"):
        raise ValueError(f"{text!r} is not a path: it must start with '/' (or '=/' for exact)")
    if any(c.isspace() or ord(c) < 0x21 or ord(c) == 0x7F for c in value):
        raise ValueError(f"{text!r}: a path may not contain spaces or control characters")
    return value, exact


def _server(text: str, is_default_scheme: str = "http") -> Server:
    words = text.split()
    address = words[0]
    scheme = is_default_scheme
    m = re.match(r"^(https?|wss?)://(.*)$", address, re.IGNORECASE)
    if m:
        scheme = {"http": "http", "ws": "http", "https": "https", "wss": "https"}[m.group(1).lower()]
        address = m.group(2).rstrip("/")
    m = re.match(r"^\[([0-9a-fA-F:.]+)\]:(\d+)$", address) or re.match(r"^([^:\[\]/]+):(\d+)$", address)
    if not m:
        raise ValueError(f"{words[0]!r} is not host:port (or [ipv6]:port, optionally https://...)")
    host, port = m.group(1), int(m.group(2))
    if not 1 <= port <= 65535:
        raise ValueError(f"{words[0]!r}: port {port} is out of range (1 to 65535)")
    options: dict[str, Any] = {}
    for word in words[1:]:
        name, _, value = word.partition("=")
        name = name.lower()
        if name == "backup" and not value:
            options["backup"] = True
        elif name == "weight":
            options["weight"] = _int_range(1, 1000)(value)
        elif name == "max_conns":
            options["max_conns"] = _int_range(0, 1_000_000)(value)
        else:
            raise ValueError(f"{word!r}: unknown server option (weight=N, max_conns=N, backup)")
    return Server(scheme=scheme, host=host.lower(), port=port, **options)


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


def _health_check(text: str) -> tuple[str, bool] | None:
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


def _host_header(text: str) -> str | None:
    value = text.strip()
    if value.lower() in {"pass", "$host", "$http_host"}:
        return None
    if value.lower() in {"upstream", "$upstream", "$proxy_host"}:
        return "$upstream"
    if not re.match(r"^[A-Za-z0-9.\-\[\]:_]+$", value):
        raise ValueError(f"{text!r} is not 'pass', 'upstream' or a host[:port]")
    return value


def _tls_version(text: str) -> str:
    value = text.strip().lower().removeprefix("tlsv").removeprefix("tls")
    if value not in {"1.2", "1.3"}:
        raise ValueError(f"{text!r} is not 1.2 or 1.3")
    return value


def _cipher_string(text: str) -> str:
    value = text.strip()
    if not re.match(r"^[A-Za-z0-9_:+!@=\-.,]+$", value):
        raise ValueError(f"{text!r} is not an OpenSSL cipher string")
    return value


def _file_path(base: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = os.path.expanduser(text.strip())
        if not value:
            raise ValueError("give a file name")
        return value if os.path.isabs(value) else os.path.normpath(os.path.join(base, value))

    return parse


def _access_log(base: str) -> Callable[[str], str | None]:
    def parse(text: str) -> str | None:
        value = text.strip()
        if value.lower() in _OFF:
            return None
        if value in {"-", "stdout"}:
            return "-"
        return _file_path(base)(value)

    return parse


def _workers(text: str) -> int:
    if text.strip().lower() == "auto":
        return max(1, os.cpu_count() or 1)
    return _int_range(1, 256)(text)


def _password(text: str) -> str:
    return text.strip()


# Mozilla "intermediate" TLS <= 1.2 suites (TLS 1.3 suites are OpenSSL's defaults).
MOZILLA_INTERMEDIATE_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
    "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:DHE-RSA-CHACHA20-POLY1305"
)

# --------------------------------------------------------------------------------------------
# Which keys each kind of section takes, with their parsers and defaults (as text, parsed the
# same way as user input so the defaults shown in etc/relay.ini are the real ones).

_Key = tuple[Callable[[str], Any], str | None]  # parser, default text (None: required)


def _global_keys(base: str) -> dict[str, _Key]:
    return {
        "listen": (_endpoints, ""),
        "access_log": (_access_log(base), "-"),
        "workers": (_workers, "1"),
        "drain_timeout": (parse_duration, "10s"),
        "max_request_line": (parse_size, "8K"),
        "max_header_size": (parse_size, "16K"),
    }


def _listener_keys(base: str) -> dict[str, _Key]:
    return {
        "endpoint": (_endpoint, None),
        "tls": (parse_bool, "off"),
        "certificates": (_words, ""),
        "default_certificate": (lambda t: None if t.strip().lower() in {"", "none", "refuse"} else t.strip(), ""),
        "tls_min_version": (_tls_version, "1.2"),
        "tls_ciphers": (_cipher_string, MOZILLA_INTERMEDIATE_CIPHERS),
        "hsts_max_age": (parse_optional_duration, "off"),
        "redirect": (_redirect, "off"),
        "redirect_port": (_int_range(1, 65535), ""),
    }


def _certificate_keys(base: str) -> dict[str, _Key]:
    return {
        "cert": (_file_path(base), None),
        "key": (_file_path(base), None),
        "password": (_password, ""),
        "hosts": (_host_patterns, ""),
    }


def _upstream_keys(base: str) -> dict[str, _Key]:
    return {
        "servers": (_servers, None),
        "balance": (_choice("round_robin", "least_conn", "ip_hash", "cookie", "header"), ""),
        "sticky": (lambda t: t.strip(), ""),
        "max_fails": (_int_range(0, 1000), "1"),
        "fail_timeout": (parse_duration, "10s"),
        "fail_statuses": (_status_set, "off"),
        "health_check": (_health_check, "off"),
        "health_interval": (parse_duration, "5s"),
        "health_timeout": (parse_duration, "2s"),
        "health_rise": (_int_range(1, 100), "2"),
        "health_fall": (_int_range(1, 100), "3"),
        "keepalive": (_int_range(0, 10_000), "16"),
        "tls_verify": (parse_bool, "on"),
        "tls_ca": (_file_path(base), ""),
        "tls_server_name": (lambda t: t.strip(), ""),
    }


def _route_keys(base: str) -> dict[str, _Key]:
    return {
        "path": (_route_path, ""),
        "host": (_host_patterns, ""),
        "upstream": (lambda t: t.strip(), ""),
        "host_header": (_host_header, "pass"),
        "max_body_size": (parse_size, "16M"),
        "connect_timeout": (parse_duration, "5s"),
        "read_timeout": (parse_duration, "60s"),
        "send_timeout": (parse_duration, "60s"),
        "retries": (_int_range(0, 10), "1"),
        "retry_timeout": (parse_duration, "10s"),
        "redirect": (_redirect, "off"),
        "websocket": (parse_bool, "on"),
        "ws_mode": (_choice("relay", "tunnel"), "relay"),
        "ws_ping_interval": (parse_optional_duration, "30s"),
        "ws_ping_timeout": (parse_duration, "10s"),
        "ws_idle_timeout": (parse_optional_duration, "off"),
        "ws_max_message_size": (parse_size, "16M"),
        "ws_max_frame_size": (parse_size, "16M"),
        "ws_allowed_origins": (_origins, "*"),
        "ws_handshake_timeout": (parse_duration, "10s"),
        "ws_compression": (parse_bool, "on"),
        "ws_upstream_compression": (parse_bool, "off"),
    }


_SECTION_KINDS = ("wsrelay", "listener", "certificate", "upstream", "route")


# --------------------------------------------------------------------------------------------
# Parsing


def load(path: str) -> Config:
    """Read and validate the file at ``path``; raise :class:`ConfigError` on any problem."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise ConfigError(path, None, None, "no such file") from None
    except OSError as e:
        raise ConfigError(path, None, None, f"cannot be read: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(path, None, None, f"is not UTF-8 text ({e.reason} at byte {e.start})") from None
    return parse(text, path)


def parse(text: str, path: str = "<config>") -> Config:
    """Parse INI ``text`` (file name ``path`` for messages and relative file paths)."""
    base = os.path.dirname(os.path.abspath(path)) if not path.startswith("<") else os.getcwd()
    parser = configparser.ConfigParser(
        interpolation=None,
        inline_comment_prefixes=(";", "#"),
        comment_prefixes=(";", "#"),
        empty_lines_in_values=False,
        strict=True,
        default_section="\0no-default-section",
    )
    parser.optionxform = str  # type: ignore[assignment, method-assign]
    try:
        parser.read_string(text, source=path)
    except configparser.DuplicateSectionError as e:
        raise ConfigError(path, e.section, None, f"section appears twice (line {e.lineno})") from None
    except configparser.DuplicateOptionError as e:
        raise ConfigError(path, e.section, e.option, f"key appears twice in the section (line {e.lineno})") from None
    except configparser.MissingSectionHeaderError as e:
        raise ConfigError(path, None, None, f"line {e.lineno}: a key before any [section]") from None
    except configparser.ParsingError as e:
        lines = ", ".join(str(lineno) for lineno, _ in e.errors)
        raise ConfigError(path, None, None, f"cannot parse line {lines}: expected 'key = value'") from None
    return _Builder(path, base, parser).build()


class _Builder:
    def __init__(self, path: str, base: str, parser: configparser.ConfigParser) -> None:
        self.path = path
        self.base = base
        self.parser = parser

    def error(self, section: str | None, key: str | None, message: str) -> ConfigError:
        return ConfigError(self.path, section, key, message)

    def values(self, section: str, keys: Mapping[str, _Key]) -> dict[str, Any]:
        """Parse every key of ``section`` with ``keys``' parsers, defaults filled in."""
        given = self.parser[section]
        for key in given:
            if key.lower() not in keys:
                close = difflib.get_close_matches(key.lower(), keys, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else f" (known keys: {', '.join(sorted(keys))})"
                raise self.error(section, key, f"unknown key{hint}")
        lowered = {k.lower(): v for k, v in given.items()}
        result: dict[str, Any] = {}
        for key, (parse_value, default) in keys.items():
            raw = lowered.get(key)
            if raw is None:
                if default is None:
                    raise self.error(section, key, "is required")
                result[key] = parse_value(default) if default != "" else None
                continue
            try:
                result[key] = parse_value(raw) if raw.strip() != "" else None
            except ValueError as e:
                raise self.error(section, key, str(e)) from None
            if result[key] is None and default is None:
                raise self.error(section, key, "is required and may not be empty")
        return result

    def build(self) -> Config:
        sections: dict[str, list[tuple[str, str]]] = {kind: [] for kind in _SECTION_KINDS}
        for section in self.parser.sections():
            kind, _, name = section.strip().partition(" ")
            kind = kind.lower()
            if kind not in sections:
                close = difflib.get_close_matches(kind, _SECTION_KINDS, n=1)
                hint = f"; did you mean [{close[0]} ...]?" if close else ""
                raise self.error(section, None, f"unknown section (known: [wsrelay], [listener NAME], "
                                 f"[certificate NAME], [upstream NAME], [route PATH-or-NAME]){hint}")
            if kind == "wsrelay" and name:
                raise self.error(section, None, "the [wsrelay] section takes no name")
            if kind != "wsrelay" and not name.strip():
                raise self.error(section, None, f"a [{kind}] section needs a name: [{kind} NAME]")
            sections[kind].append((section, name.strip()))

        glob = self.values(sections["wsrelay"][0][0], _global_keys(self.base)) if sections["wsrelay"] else \
            {k: (p(d) if d else None) for k, (p, d) in _global_keys(self.base).items()}
        certificates = {name: self.certificate(section, name) for section, name in sections["certificate"]}
        listeners = [
            Listener(name=f"listen {i + 1}", endpoint=endpoint, tls=None, redirect=None, redirect_port=None)
            for i, endpoint in enumerate(glob["listen"] or ())
        ]
        listeners += [self.listener(section, name, certificates) for section, name in sections["listener"]]
        if not listeners:
            raise self.error("wsrelay", "listen", "no listener: give 'listen = tcp:PORT' or a [listener NAME] section")
        upstreams = {name: self.upstream(section, name) for section, name in sections["upstream"]}
        routes = tuple(self.route(section, name, upstreams) for section, name in sections["route"])
        if not routes:
            raise self.error(None, None, "no [route ...] section: every request would get 404")
        seen: dict[tuple[str, bool, tuple[str, ...]], str] = {}
        for route in routes:
            match_key = (route.path, route.exact, tuple(sorted(route.hosts)))
            if match_key in seen:
                raise self.error(f"route {route.name}", "path",
                                 f"the same path and hosts as [route {seen[match_key]}]: one would never match")
            seen[match_key] = route.name
        # Groups that carry WebSocket routes default to least_conn: long-lived connections.
        ws_groups = {r.upstream for r in routes if r.websocket.enabled and r.redirect is None}
        upstreams = {
            name: up if up.balance_explicit else attrs.evolve(
                up, balance="least_conn" if name in ws_groups else "round_robin")
            for name, up in upstreams.items()
        }
        return Config(
            path=self.path,
            listeners=tuple(listeners),
            upstreams=MappingProxyType(upstreams),
            routes=routes,
            certificates=MappingProxyType(certificates),
            access_log=glob["access_log"],
            workers=glob["workers"],
            drain_timeout=glob["drain_timeout"],
            max_request_line=glob["max_request_line"],
            max_header_size=glob["max_header_size"],
        )

    def certificate(self, section: str, name: str) -> Certificate:
        v = self.values(section, _certificate_keys(self.base))
        return Certificate(name=name, cert_file=v["cert"], key_file=v["key"], password=v["password"],
                           hosts=v["hosts"] or ())

    def listener(self, section: str, name: str, certificates: Mapping[str, Certificate]) -> Listener:
        v = self.values(section, _listener_keys(self.base))
        tls = None
        if v["tls"]:
            names = v["certificates"] or ()
            if not names:
                raise self.error(section, "certificates", "a TLS listener needs at least one [certificate NAME]")
            for cert in names:
                if cert not in certificates:
                    raise self.error(section, "certificates", f"no [certificate {cert}] section"
                                     f" (defined: {', '.join(sorted(certificates)) or 'none'})")
            default = v["default_certificate"]
            if default is None and "default_certificate" not in {k.lower() for k in self.parser[section]}:
                default = names[0]
            if default is not None and default not in names:
                raise self.error(section, "default_certificate", f"{default!r} is not in 'certificates'")
            tls = ServerTLS(certificates=names, default_certificate=default, min_version=v["tls_min_version"],
                            ciphers=v["tls_ciphers"], hsts_max_age=int(v["hsts_max_age"]) if v["hsts_max_age"] else None)
        else:
            for key in ("certificates", "default_certificate", "hsts_max_age"):
                if key in {k.lower() for k in self.parser[section]} and v[key]:
                    raise self.error(section, key, "only applies with 'tls = on'")
        if v["redirect"] is not None and tls is not None:
            raise self.error(section, "redirect", "a TLS listener cannot redirect to https: it is https")
        return Listener(name=name, endpoint=v["endpoint"], tls=tls, redirect=v["redirect"],
                        redirect_port=v["redirect_port"])

    def upstream(self, section: str, name: str) -> Upstream:
        v = self.values(section, _upstream_keys(self.base))
        balance = v["balance"]
        sticky = v["sticky"] or None
        if balance in {"cookie", "header"} and not sticky:
            raise self.error(section, "sticky", f"balance = {balance} needs the {balance} name in 'sticky'")
        if sticky and balance not in {"cookie", "header"}:
            raise self.error(section, "sticky", "only applies with balance = cookie or header")
        if sticky and not re.match(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$", sticky):
            raise self.error(section, "sticky", f"{sticky!r} is not a valid cookie or header name")
        health = None
        if v["health_check"] is not None:
            hpath, websocket = v["health_check"]
            if v["health_timeout"] >= v["health_interval"]:
                raise self.error(section, "health_timeout", "must be shorter than health_interval")
            health = HealthCheck(path=hpath, websocket=websocket, interval=v["health_interval"],
                                 timeout=v["health_timeout"], rise=v["health_rise"], fall=v["health_fall"])
        return Upstream(
            name=name, servers=v["servers"], balance=balance or "round_robin", sticky=sticky,
            max_fails=v["max_fails"], fail_timeout=v["fail_timeout"], fail_statuses=v["fail_statuses"] or frozenset(),
            health=health, keepalive=v["keepalive"], tls_verify=v["tls_verify"], tls_ca=v["tls_ca"],
            tls_server_name=v["tls_server_name"] or None, balance_explicit=balance is not None,
        )

    def route(self, section: str, name: str, upstreams: Mapping[str, Upstream]) -> Route:
        v = self.values(section, _route_keys(self.base))
        if v["path"] is not None:
            path, exact = v["path"]
        else:
            try:
                path, exact = _route_path(name)
            except ValueError:
                raise self.error(section, "path", f"[route {name}] does not name a path: give 'path = /...'") from None
        upstream = v["upstream"]
        if v["redirect"] is None:
            if not upstream:
                raise self.error(section, "upstream", "is required (or 'redirect = 301')")
            if upstream not in upstreams:
                raise self.error(section, "upstream", f"no [upstream {upstream}] section"
                                 f" (defined: {', '.join(sorted(upstreams)) or 'none'})")
        if v["ws_ping_interval"] is not None and v["ws_ping_timeout"] >= v["ws_ping_interval"]:
            raise self.error(section, "ws_ping_timeout", "must be shorter than ws_ping_interval")
        if v["ws_ping_interval"] is not None and v["ws_ping_timeout"] < 1.0:
            # Autobahn's batched timers fire a sub-second ping timeout at once (checked on
            # autobahn 26.10): every connection would be dropped at its first ping.
            raise self.error(section, "ws_ping_timeout", "must be at least 1s")
        if v["ws_max_frame_size"] and v["ws_max_message_size"] and v["ws_max_frame_size"] > v["ws_max_message_size"]:
            raise self.error(section, "ws_max_frame_size", "is larger than ws_max_message_size")
        ws = WebSocketOptions(
            enabled=v["websocket"], mode=v["ws_mode"], ping_interval=v["ws_ping_interval"],
            ping_timeout=v["ws_ping_timeout"], idle_timeout=v["ws_idle_timeout"],
            max_message_size=v["ws_max_message_size"], max_frame_size=v["ws_max_frame_size"],
            allowed_origins=v["ws_allowed_origins"], handshake_timeout=v["ws_handshake_timeout"],
            compression=v["ws_compression"], upstream_compression=v["ws_upstream_compression"],
        )
        return Route(
            name=name, path=path, exact=exact, hosts=v["host"] or (), upstream=upstream or "",
            host_header=v["host_header"], max_body_size=v["max_body_size"], connect_timeout=v["connect_timeout"],
            read_timeout=v["read_timeout"], send_timeout=v["send_timeout"], retries=v["retries"],
            retry_timeout=v["retry_timeout"], redirect=v["redirect"], websocket=ws,
        )


def describe_keys() -> dict[str, Iterable[str]]:
    """The known keys of each section kind (for documentation tests)."""
    return {
        "wsrelay": _global_keys("."),
        "listener": _listener_keys("."),
        "certificate": _certificate_keys("."),
        "upstream": _upstream_keys("."),
        "route": _route_keys("."),
    }
