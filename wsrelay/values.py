"""Parsers for configuration values: each takes the raw INI string and returns the value or raises
``ValueError`` with a message for the user (``config.py`` adds the file, section and key).

Pure functions, no I/O (file names are made absolute, not opened).

Every value that later reaches the wire (host names, ``Host`` values, TLS server names, request
targets) is checked here for what the wire code needs and converted once to the form it sends:
ASCII, no control bytes, IDNA A-labels, IPv6 literals in their compressed lower-case form.  So
the rest of wsrelay can ``encode("ascii")`` a configured name and hand it to Twisted, OpenSSL or
service-identity without a check of its own (and a configuration that passes ``--check`` does
not fail at request time).
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable
from urllib.parse import unquote_to_bytes

import idna

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


def networks(text: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """Client networks: addresses or CIDR blocks (``127.0.0.1 10.0.0.0/8 ::1``)."""
    found = []
    for word in words(text):
        try:
            found.append(ipaddress.ip_network(word, strict=False))
        except ValueError:
            raise ValueError(f"{word!r} is not an IP address or network (examples: 127.0.0.1, 10.0.0.0/8, ::1)") from None
    return tuple(found)


def trusted_proxies(text: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """Networks of the proxies whose ``X-Forwarded-For`` / ``Forwarded`` name the client, or
    ``off`` for none."""
    if text.strip().lower() in _OFF:
        return ()
    return networks(text)


_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:r?/(s|m))?\s*$", re.IGNORECASE)


def request_rate(text: str) -> float:
    """``limit_req_rate``: requests per second (``10``, ``10r/s``, ``30r/m``, ``0.5``); ``off``: 0."""
    if text.strip().lower() in _OFF:
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
    if text.strip().lower() in _OFF - {"0"}:
        return 0
    return int_range(0, 1_000_000)(text)


def host_for_url(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def ip_literal(text: str) -> str | None:
    """The canonical form of an IP address (IPv6: compressed, lower-case, no brackets), or None
    if ``text`` is not one.  IPv6 may be written in brackets, IPv4 may not."""
    bracketed = text.startswith("[") and text.endswith("]")
    try:
        address = ipaddress.ip_address(text[1:-1] if bracketed else text)
    except ValueError:
        return None
    if bracketed and address.version != 6:
        return None
    return str(address)


def is_ip(text: str) -> bool:
    return ip_literal(text) is not None


# A host label as clients may send it in Host (RFC 3986 reg-name): letters, digits, '-' and '_'.
_LOOSE_LABEL = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$")


def host_name(text: str, *, underscore: bool = False) -> str:
    """A DNS host name in the ASCII form wsrelay sends and compares: lower-case, international
    labels as IDNA A-labels (``bücher.example`` -> ``xn--bcher-kva.example``), no trailing dot.

    By default the name must be one Twisted can resolve and OpenSSL and service-identity can use
    as a TLS server name (IDNA 2008, which Twisted applies: letters, digits and inner hyphens).
    ``underscore``: also take ASCII labels with ``_``, valid in a ``Host`` value but never
    resolved or verified by wsrelay.
    """
    value = text.strip()
    name = value[:-1] if value.endswith(".") else value
    if not name or any(ord(c) < 0x21 or ord(c) == 0x7F for c in name):
        raise ValueError(f"{text!r} is not a host name")
    try:
        ascii_name = idna.encode(name, uts46=True).decode("ascii")
        idna.encode(ascii_name)  # what Twisted does with it: must not fail at connect time
    except (idna.IDNAError, UnicodeError) as e:
        lowered = name.lower()
        if underscore and name.isascii() and all(
                _LOOSE_LABEL.match(label) and not label.startswith("xn--") for label in lowered.split(".")):
            ascii_name = lowered
        elif "_" in name and not underscore:
            raise ValueError(f"{text!r}: '_' is not allowed in a host name that is resolved or used as a"
                             " TLS server name (letters, digits and '-' only)") from None
        else:
            raise ValueError(f"{text!r} is not a valid host name ({e})") from None
    if re.fullmatch(r"[0-9.]+", ascii_name):
        raise ValueError(f"{text!r} is neither an IPv4 address nor a host name")
    return ascii_name


def server_host(text: str) -> str:
    """The host of an upstream server: an IP address (IPv6 in brackets) or a host name that
    Twisted can resolve and TLS can verify, in canonical ASCII form (IPv6 without brackets)."""
    ip = ip_literal(text)
    if ip is not None:
        return ip
    if text.startswith("["):
        raise ValueError(f"{text!r} is not an IPv6 address")
    return host_name(text)


def tls_server_name(text: str) -> str:
    """``tls_server_name``: the name sent as SNI and verified in the upstream's certificate."""
    value = text.strip()
    ip = ip_literal(value)
    if ip is not None:
        return ip
    if "*" in value or ":" in value or "/" in value:
        raise ValueError(f"{text!r} is not a host name (no wildcard, port or path)")
    return host_name(value)


def _host_pattern(host: str) -> str:
    if host == "*":
        raise ValueError("'*' matches every host: leave 'host' out instead")
    ip = ip_literal(host)
    if ip is not None:
        return ip  # the form routing.normalize_host gives a Host header's IP literal
    wildcard = host.startswith("*.")
    try:
        name = host_name(host[2:] if wildcard else host, underscore=True)
    except ValueError:
        raise ValueError(f"{host!r} is not a host name, '*.domain' wildcard or IP address") from None
    return "*." + name if wildcard else name


def host_patterns(text: str) -> tuple[str, ...]:
    """Host names, ``*.domain`` wildcards and IP addresses, as compared with a normalised
    ``Host`` or SNI name: lower-case ASCII (A-labels), IPv6 compressed and without brackets."""
    return tuple(_host_pattern(h) for h in words(text))


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
    """Origins as browsers serialise them (RFC 6454): scheme://host[:port], the host in ASCII."""
    listed = words(text)
    if not listed:
        raise ValueError("give '*' or one or more origins such as https://example.com")
    if "*" in listed:
        if len(listed) > 1:
            raise ValueError("'*' allows every origin: do not list others beside it")
        return ("*",)
    result = []
    for origin in listed:
        m = re.match(r"^(https?)://(\[[^\]/]*\]|[^:/\[\]]+)(:\d{1,5})?$", origin, re.IGNORECASE)
        if not m:
            raise ValueError(f"{origin!r} is not an origin (scheme://host[:port], no path)")
        ip = ip_literal(m.group(2))
        try:
            host = host_for_url(ip) if ip is not None else host_name(m.group(2), underscore=True)
        except ValueError as e:
            raise ValueError(f"{origin!r}: {e}") from None
        result.append(f"{m.group(1).lower()}://{host}{m.group(3) or ''}")
    return tuple(result)


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
    if value.lower() in _OFF:
        return None
    websocket = False
    m = re.match(r"^(ws|http):(/.*)$", value, re.IGNORECASE)
    if m:
        websocket = m.group(1).lower() == "ws"
        value = m.group(2)
    return request_target(value), websocket


def host_header(text: str) -> str | None:
    """``pass``, ``upstream``, or a fixed host[:port] (international names as A-labels)."""
    value = text.strip()
    if value.lower() in {"pass", "$host", "$http_host"}:
        return None
    if value.lower() in {"upstream", "$upstream", "$proxy_host"}:
        return "$upstream"
    m = re.match(r"^(\[[^\]]*\]|[^:\[\]]+)(?::(\d{1,5}))?$", value)
    if not m or (m.group(2) is not None and not 1 <= int(m.group(2)) <= 65535):
        raise ValueError(f"{text!r} is not 'pass', 'upstream' or a host[:port]")
    ip = ip_literal(m.group(1))
    if ip is None and m.group(1).startswith("["):
        raise ValueError(f"{text!r}: {m.group(1)!r} is not an IPv6 address")
    try:
        host = host_for_url(ip) if ip is not None else host_name(m.group(1), underscore=True)
    except ValueError as e:
        raise ValueError(f"{text!r} is not 'pass', 'upstream' or a host[:port]: {e}") from None
    return host + (f":{m.group(2)}" if m.group(2) else "")


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
