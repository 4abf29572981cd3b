"""INI text to a validated :class:`Config`: sections, keys, cross-checks.

Invariants: nothing here touches sockets, files other than the one being parsed, or the reactor.
Every problem is a :class:`ConfigError` that names the file, the section and the key; a
configuration that parses is complete (every route's upstream exists, every listener's
certificates exist, every value is in range), so the rest of wsrelay never re-validates it.
"""

from __future__ import annotations

import configparser
import difflib
import math
import os
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import attrs

from wsrelay.config import paths
from wsrelay.config.keys import (
    _SECTION_KINDS,
    _UNNAMED,
    _admin_keys,
    _certificate_keys,
    _global_keys,
    _Key,
    _listener_keys,
    _route_keys,
    _upstream_keys,
)
from wsrelay.config.model import (
    Admin,
    Certificate,
    Config,
    ConfigError,
    HealthCheck,
    Listener,
    Route,
    ServerTLS,
    Upstream,
    WebSocketOptions,
)

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
        glob["trusted_proxies"] = glob["trusted_proxies"] or ()
        certificates = {name: self.certificate(section, name) for section, name in sections["certificate"]}
        listeners = [
            Listener(name=f"listen {i + 1}", endpoint=endpoint, tls=None, redirect=None, redirect_port=None,
                     underscores_in_headers=glob["underscores_in_headers"], trusted_proxies=glob["trusted_proxies"])
            for i, endpoint in enumerate(glob["listen"] or ())
        ]
        listeners += [self.listener(section, name, certificates, glob["underscores_in_headers"],
                                    glob["trusted_proxies"]) for section, name in sections["listener"]]
        if not listeners:
            raise self.error("wsrelay", "listen", "no listener: give 'listen = tcp:PORT' or a [listener NAME] section")
        if glob["sticky_secret"] is not None and glob["sticky_secret_file"] is not None:
            raise self.error("wsrelay", "sticky_secret_file", "give sticky_secret or sticky_secret_file, not both")
        if glob["workers"] > 1 and any(l.endpoint.lower().startswith("systemd:") for l in listeners):
            raise self.error("wsrelay", "workers", "socket-activated (systemd:) listeners take one process:"
                             " run one wsrelay@N service per core instead (README, systemd)")
        upstreams = {name: self.upstream(section, name) for section, name in sections["upstream"]}
        routes = tuple(self.route(section, name, upstreams, glob) for section, name in sections["route"])
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
            limit_req_clients=glob["limit_req_clients"],
            ws_drain_spread=glob["ws_drain_spread"],
            memory_trim_interval=glob["memory_trim_interval"],
            reuse_port=glob["reuse_port"],
            max_connections=glob["max_connections"],
            access_log_format=glob["access_log_format"],
            trust_request_id=glob["trust_request_id"],
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
                 underscores_in_headers: bool = False, trusted_proxies: tuple[Any, ...] = ()) -> Listener:
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
        trusted = v["trusted_proxies"]
        return Listener(name=name, endpoint=v["endpoint"], tls=tls, redirect=v["redirect"],
                        redirect_port=v["redirect_port"], proxy_protocol=v["proxy_protocol"],
                        underscores_in_headers=underscores_in_headers if underscores is None else underscores,
                        trusted_proxies=trusted_proxies if trusted is None else trusted)

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

    def route(self, section: str, name: str, upstreams: Mapping[str, Upstream],
              glob: Mapping[str, Any] | None = None) -> Route:
        v = self.values(section, _route_keys(self.base))
        limits = self.route_limits(section, v, glob or {})
        if v["path"] is not None:
            path, exact = v["path"]
        else:
            try:
                path, exact = paths.route_path(name)
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
        rate, burst = v["ws_max_message_rate"], v["ws_message_burst"]
        if rate is not None and v["ws_mode"] == "tunnel":
            raise self.error(section, "ws_max_message_rate", "only applies with ws_mode = relay (a tunnel reads no messages)")
        if burst is not None and rate is None:
            raise self.error(section, "ws_message_burst", "only applies with ws_max_message_rate")
        ws = WebSocketOptions(
            enabled=v["websocket"], mode=v["ws_mode"], ping_interval=v["ws_ping_interval"],
            ping_timeout=v["ws_ping_timeout"], idle_timeout=v["ws_idle_timeout"],
            max_message_size=v["ws_max_message_size"], max_frame_size=v["ws_max_frame_size"],
            allowed_origins=v["ws_allowed_origins"], handshake_timeout=v["ws_handshake_timeout"],
            compression=v["ws_compression"], upstream_compression=v["ws_upstream_compression"],
            require_origin=v["ws_require_origin"], max_message_rate=rate,
            message_burst=burst or max(1, math.ceil(rate or 0)),  # default: one second's worth
        )
        return Route(
            name=name, path=path, exact=exact, hosts=v["host"] or (), upstream=upstream or "",
            host_header=v["host_header"], max_body_size=v["max_body_size"], connect_timeout=v["connect_timeout"],
            read_timeout=v["read_timeout"], send_timeout=v["send_timeout"], retries=v["retries"],
            retry_timeout=v["retry_timeout"], redirect=v["redirect"], websocket=ws,
            forwarded=v["forwarded"], pass_headers=v["pass_headers"] or frozenset(), **limits,
        )

    def route_limits(self, section: str, v: Mapping[str, Any], glob: Mapping[str, Any]) -> dict[str, Any]:
        """A route's limit_conn, limit_req_rate and limit_req_burst: its own, else [wsrelay]'s; the
        burst defaults to one second's worth of the rate."""
        def pick(key: str) -> Any:
            return v[key] if v[key] is not None else glob.get(key)

        rate = pick("limit_req_rate") or 0.0
        burst = pick("limit_req_burst")
        if v["limit_req_burst"] is not None and not rate:
            raise self.error(section, "limit_req_burst", "only applies with a limit_req_rate")
        return {"limit_conn": pick("limit_conn") or 0, "limit_req_rate": rate,
                "limit_req_burst": burst if burst is not None else max(1, math.ceil(rate))}
