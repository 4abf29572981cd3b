"""Parsers for configuration values that name hosts: IP addresses, host names, ``*.domain``
patterns, origins, ``Host`` values, client networks.  Pure functions, no I/O; each raises
``ValueError`` with a message for the user, as in :mod:`wsrelay.config.values`.

Every value that later reaches the wire (host names, ``Host`` values, TLS server names) is checked
here for what the wire code needs and converted once to the form it sends: ASCII, no control bytes,
IDNA A-labels, IPv6 literals in their compressed lower-case form.  So the rest of wsrelay can
``encode("ascii")`` a configured name and hand it to Twisted, OpenSSL or service-identity without a
check of its own (and a configuration that passes ``--check`` does not fail at request time).
"""

from __future__ import annotations

import ipaddress
import re

import idna

from wsrelay.config.values import OFF, words


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
    if text.strip().lower() in OFF:
        return ()
    return networks(text)
