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
import os
import re
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any

import attrs

from wsrelay import values as V

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
    host: str  # ASCII: a host name in A-labels, or an IP address (IPv6 compressed, no brackets)
    port: int
    weight: int = 1
    max_conns: int = 0  # 0: unlimited
    backup: bool = False
    # Computed once (they are asked for on every request): not part of equality or repr.
    _key: str = attrs.field(init=False, eq=False, repr=False, default="")
    _hostport: str = attrs.field(init=False, eq=False, repr=False, default="")

    def __attrs_post_init__(self) -> None:
        hostport = f"{V.host_for_url(self.host)}:{self.port}"
        object.__setattr__(self, "_hostport", hostport)
        object.__setattr__(self, "_key", f"{self.scheme}://{hostport}")

    @property
    def key(self) -> str:
        """Identity of the server across reloads (health and connection counts follow it)."""
        return self._key

    @property
    def tls(self) -> bool:
        return self.scheme == "https"

    @property
    def hostport(self) -> str:
        return self._hostport


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
    max_response_header_size: int = 65536  # a response head (status line and fields) larger: 502


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
    allowed_origins: tuple[str, ...]  # ("*",): any Origin; requests with none pass unless require_origin
    handshake_timeout: float
    compression: bool  # permessage-deflate toward clients
    upstream_compression: bool  # permessage-deflate toward upstreams
    require_origin: bool = False  # True: with allowed_origins set, a handshake without Origin gets 403


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
    forwarded: bool = True  # send wsrelay's own RFC 7239 Forwarded (the client's is never passed)
    pass_headers: frozenset[bytes] = frozenset()  # lower-case names of headers.SPOOFABLE let through


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
    underscores_in_headers: bool = False  # False: header names with '_' are dropped (nginx's default)
    proxy_protocol: bool = False  # connections start with a PROXY protocol header (v1 or v2)


@attrs.frozen
class Admin:
    """The admin listener ([admin]): health, readiness, status and metrics."""

    endpoint: str
    allow: tuple[Any, ...]  # ipaddress networks; empty: any client


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
    sticky_secret: str | None = attrs.field(default=None, repr=False)  # None: sticky_secret_file or derived
    sticky_secret_file: str | None = None  # read by wsrelay.sticky.load_key at load
    client_header_timeout: float = 60.0  # the whole request head, from its first byte
    client_body_timeout: float = 60.0  # between two reads of a request body
    keepalive_timeout: float = 75.0  # an idle client connection between requests
    admin: Admin | None = None  # None: no admin listener
    log_format: str = "text"  # wsrelay's own log lines: text (twistd's) or json


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
    host, port = V.server_host(m.group(1)), int(m.group(2))  # ASCII: A-labels, canonical IPv6
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
# Which keys each kind of section takes, with their parsers and defaults (as text, parsed the
# same way as user input so the defaults shown in etc/relay.ini are the real ones).

_Key = tuple[Callable[[str], Any], str | None]  # parser, default text (None: required)


def _global_keys(base: str) -> dict[str, _Key]:
    return {
        "listen": (V.endpoints, ""),
        "access_log": (V.access_log(base), "-"),
        "workers": (V.workers, "1"),
        "drain_timeout": (V.parse_duration, "10s"),
        "max_request_line": (V.parse_size, "8K"),
        "max_header_size": (V.parse_size, "16K"),
        "log_format": (V.choice("text", "json"), "text"),
        "underscores_in_headers": (V.parse_bool, "off"),
        "client_header_timeout": (V.parse_duration, "60s"),
        "client_body_timeout": (V.parse_duration, "60s"),
        "keepalive_timeout": (V.parse_duration, "75s"),
        "sticky_secret": (V.secret, ""),
        "sticky_secret_file": (V.file_path(base), ""),
    }


def _listener_keys(base: str) -> dict[str, _Key]:
    return {
        "endpoint": (V.endpoint, None),
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
    }


def _certificate_keys(base: str) -> dict[str, _Key]:
    return {
        "cert": (V.file_path(base), None),
        "key": (V.file_path(base), None),
        "password": (V.password, ""),
        "hosts": (V.host_patterns, ""),
    }


def _upstream_keys(base: str) -> dict[str, _Key]:
    return {
        "servers": (_servers, None),
        "balance": (V.choice("round_robin", "least_conn", "ip_hash", "cookie", "header"), ""),
        "sticky": (lambda t: t.strip(), ""),
        "max_fails": (V.int_range(0, 1000), "1"),
        "fail_timeout": (V.parse_duration, "10s"),
        "fail_statuses": (V.status_set, "off"),
        "health_check": (V.health_check, "off"),
        "health_interval": (V.parse_duration, "5s"),
        "health_timeout": (V.parse_duration, "2s"),
        "health_rise": (V.int_range(1, 100), "2"),
        "health_fall": (V.int_range(1, 100), "3"),
        "keepalive": (V.int_range(0, 10_000), "16"),
        "max_response_header_size": (V.parse_size, "64K"),
        "tls_verify": (V.parse_bool, "on"),
        "tls_ca": (V.file_path(base), ""),
        "tls_server_name": (V.tls_server_name, ""),
    }


def _admin_keys(base: str) -> dict[str, _Key]:
    return {
        "endpoint": (lambda t: None if t.strip().lower() in {"", "off", "none"} else V.endpoint(t), "off"),
        "allow": (V.networks, ""),
    }


def _route_keys(base: str) -> dict[str, _Key]:
    return {
        "path": (V.route_path, ""),
        "host": (V.host_patterns, ""),
        "upstream": (lambda t: t.strip(), ""),
        "host_header": (V.host_header, "pass"),
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
        "ws_allowed_origins": (V.origins, "*"),
        "ws_require_origin": (V.parse_bool, "off"),
        "ws_handshake_timeout": (V.parse_duration, "10s"),
        "ws_compression": (V.parse_bool, "on"),
        "ws_upstream_compression": (V.parse_bool, "off"),
    }


_SECTION_KINDS = ("wsrelay", "admin", "listener", "certificate", "upstream", "route")
_UNNAMED = ("wsrelay", "admin")


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
                raise self.error(section, None, f"unknown section (known: [wsrelay], [admin], [listener NAME], "
                                 f"[certificate NAME], [upstream NAME], [route PATH-or-NAME]){hint}")
            if kind in _UNNAMED and name:
                raise self.error(section, None, f"the [{kind}] section takes no name")
            if kind not in _UNNAMED and not name.strip():
                raise self.error(section, None, f"a [{kind}] section needs a name: [{kind} NAME]")
            sections[kind].append((section, name.strip()))

        glob = self.values(sections["wsrelay"][0][0], _global_keys(self.base)) if sections["wsrelay"] else \
            {k: (p(d) if d else None) for k, (p, d) in _global_keys(self.base).items()}
        certificates = {name: self.certificate(section, name) for section, name in sections["certificate"]}
        listeners = [
            Listener(name=f"listen {i + 1}", endpoint=endpoint, tls=None, redirect=None, redirect_port=None,
                     underscores_in_headers=glob["underscores_in_headers"])
            for i, endpoint in enumerate(glob["listen"] or ())
        ]
        listeners += [self.listener(section, name, certificates, glob["underscores_in_headers"])
                      for section, name in sections["listener"]]
        if not listeners:
            raise self.error("wsrelay", "listen", "no listener: give 'listen = tcp:PORT' or a [listener NAME] section")
        if glob["sticky_secret"] is not None and glob["sticky_secret_file"] is not None:
            raise self.error("wsrelay", "sticky_secret_file", "give sticky_secret or sticky_secret_file, not both")
        if glob["workers"] > 1 and any(l.endpoint.lower().startswith("systemd:") for l in listeners):
            raise self.error("wsrelay", "workers", "socket-activated (systemd:) listeners take one process:"
                             " run one wsrelay@N service per core instead (README, systemd)")
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
            sticky_secret=glob["sticky_secret"],
            sticky_secret_file=glob["sticky_secret_file"],
            client_header_timeout=glob["client_header_timeout"],
            client_body_timeout=glob["client_body_timeout"],
            keepalive_timeout=glob["keepalive_timeout"],
            admin=self.admin(sections["admin"], listeners),
            log_format=glob["log_format"],
        )

    def admin(self, sections: list[tuple[str, str]], listeners: list[Listener]) -> Admin | None:
        if not sections:
            return None
        section = sections[0][0]
        v = self.values(section, _admin_keys(self.base))
        if v["endpoint"] is None:
            if v["allow"]:
                raise self.error(section, "allow", "only applies with an endpoint")
            return None
        any_port = re.match(r"tcp6?:0(:|$)", v["endpoint"], re.IGNORECASE)  # tcp:0: each gets its own
        if not any_port and any(l.endpoint == v["endpoint"] for l in listeners):
            raise self.error(section, "endpoint", "is a proxied listener's endpoint: the admin listener needs its own")
        return Admin(endpoint=v["endpoint"], allow=v["allow"] or ())

    def certificate(self, section: str, name: str) -> Certificate:
        v = self.values(section, _certificate_keys(self.base))
        return Certificate(name=name, cert_file=v["cert"], key_file=v["key"], password=v["password"],
                           hosts=v["hosts"] or ())

    def listener(self, section: str, name: str, certificates: Mapping[str, Certificate],
                 underscores_in_headers: bool = False) -> Listener:
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
        underscores = v["underscores_in_headers"]
        return Listener(name=name, endpoint=v["endpoint"], tls=tls, redirect=v["redirect"],
                        redirect_port=v["redirect_port"], proxy_protocol=v["proxy_protocol"],
                        underscores_in_headers=underscores_in_headers if underscores is None else underscores)

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
        if v["max_response_header_size"] < 1024:
            raise self.error(section, "max_response_header_size", "must be at least 1K")
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
            max_response_header_size=v["max_response_header_size"],
        )

    def route(self, section: str, name: str, upstreams: Mapping[str, Upstream]) -> Route:
        v = self.values(section, _route_keys(self.base))
        if v["path"] is not None:
            path, exact = v["path"]
        else:
            try:
                path, exact = V.route_path(name)
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
            require_origin=v["ws_require_origin"],
        )
        return Route(
            name=name, path=path, exact=exact, hosts=v["host"] or (), upstream=upstream or "",
            host_header=v["host_header"], max_body_size=v["max_body_size"], connect_timeout=v["connect_timeout"],
            read_timeout=v["read_timeout"], send_timeout=v["send_timeout"], retries=v["retries"],
            retry_timeout=v["retry_timeout"], redirect=v["redirect"], websocket=ws,
            forwarded=v["forwarded"], pass_headers=v["pass_headers"] or frozenset(),
        )


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
