"""Route choice, in memory: host and path precedence, exact routes, normalisation."""

from __future__ import annotations

import random

import pytest

from wsrelay import config, routing
from wsrelay.errors import BadRequest
from wsrelay.routing import Router, normalize_host, normalize_path

ROUTES = """
[wsrelay]
listen = tcp:0
[upstream u]
servers = 127.0.0.1:1
[route /]
upstream = u
[route /chat/]
upstream = u
[route /chat/admin/]
upstream = u
[route =/chat/exact]
upstream = u
[route wild]
path = /
host = *.example.com
upstream = u
[route deeper-wild]
path = /
host = *.eu.example.com
upstream = u
[route exact-host]
path = /
host = www.example.com
upstream = u
"""


@pytest.fixture(scope="module")
def router() -> Router:
    return Router(config.parse(ROUTES).routes)


@pytest.mark.parametrize("host, path, name", [
    (None, "/", "/"),
    (None, "/chat/x", "/chat/"),
    (None, "/chat/admin/users", "/chat/admin/"),  # the longest prefix wins
    (None, "/chat/exact", "=/chat/exact"),  # exact beats every prefix
    (None, "/chat/exact/more", "/chat/"),
    ("api.example.com", "/chat/x", "wild"),  # any host-specific route beats host-less ones
    ("a.eu.example.com", "/", "deeper-wild"),  # the longer wildcard wins
    ("www.example.com", "/chat/", "exact-host"),  # an exact host beats wildcards
    ("example.com", "/chat/x", "/chat/"),  # *.example.com does not match the bare domain
    ("other.test", "/chat/x", "/chat/"),
])
def test_most_specific_route_wins(router: Router, host: str | None, path: str, name: str) -> None:
    """Host first (exact > longer wildcard > any), then path (exact > longest prefix)."""
    route = router.match(host, path)
    assert route is not None and route.name == name


def test_no_route_is_none() -> None:
    """A request no route matches gets None (the site answers 404)."""
    cfg = config.parse(ROUTES.replace("[route /]\nupstream = u\n", ""))
    assert Router(cfg.routes).match(None, "/elsewhere") is None


@pytest.mark.parametrize("raw, path", [
    (b"/a/b?q=1", "/a/b"),
    (b"/a//b/./c/", "/a/b/c/"),
    (b"/chat/../admin", "/admin"),
    (b"/%63hat/x", "/chat/x"),  # percent-decoded before matching
    (b"/a/b/..", "/a/"),
    (b"/", "/"),
])
def test_normalize_path(raw: bytes, path: str) -> None:
    """Paths are matched decoded, with dot-segments resolved and slashes merged."""
    assert normalize_path(raw) == path


def test_normal_paths_take_the_short_way_to_the_same_answer() -> None:
    """The shortcut for paths that need no work gives exactly what the full normalisation gives."""
    rng = random.Random(7)
    pieces = [b"/", b"a", b"b.c", b".", b"..", b"-", b"%41", b"%2F", b"~", b"\xe9"]
    shortcut = 0
    for _ in range(5000):
        raw = b"/" + b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 8)))
        try:
            expected: str | type[BadRequest] = routing._normalize(raw)
        except BadRequest:
            expected = BadRequest
        try:
            got: str | type[BadRequest] = normalize_path(raw + b"?q=/../%00")
        except BadRequest:
            got = BadRequest
        assert got == expected, raw
        shortcut += b"%" not in raw and b"/." not in raw and b"//" not in raw
    assert shortcut > 500  # both ways were exercised


@pytest.mark.parametrize("raw", [b"/../etc/passwd", b"/a/%2e%2e/%2e%2e/x", b"http://example.com/", b"*", b"/a%00b"])
def test_bad_paths_are_400(raw: bytes) -> None:
    """Targets that climb above the root, are not origin-form or hold NUL are refused with 400."""
    with pytest.raises(BadRequest):
        normalize_path(raw)


@pytest.mark.parametrize("raw, host", [
    (b"Example.COM", "example.com"), (b"example.com:8080", "example.com"), (b"example.com.", "example.com"),
    (b"[::1]:443", "::1"), (None, None),
])
def test_normalize_host(raw: bytes | None, host: str | None) -> None:
    """Host values are compared lower-case, without port or trailing dot."""
    assert normalize_host(raw) == host


@pytest.mark.parametrize("pattern", ["::1", "[::1]", "[0:0::1]", "0:0:0:0:0:0:0:1"])
@pytest.mark.parametrize("host", [b"[::1]", b"[::1]:8080", b"[0:0::1]:80", b"[0000:0::0:1]", b"::1"])
def test_ipv6_route_host_matches_every_spelling(pattern: str, host: bytes) -> None:
    """host = ::1 or [::1] on a route matches a Host of [::1], [::1]:8080 or [0:0::1]:80: both
    sides are normalised to the compressed form without brackets."""
    cfg = config.parse(f"[wsrelay]\nlisten = tcp:0\n[upstream u]\nservers = 127.0.0.1:1\n"
                       f"[route /]\nupstream = u\n[route v6]\npath = /\nhost = {pattern}\nupstream = u\n")
    route = Router(cfg.routes).match(normalize_host(host), "/")
    assert route is not None and route.name == "v6"
    assert Router(cfg.routes).match(normalize_host(b"[::2]:80"), "/").name == "/"  # type: ignore[union-attr]


def test_ipv4_route_host_matches_with_and_without_port() -> None:
    """An IPv4 route host matches the Host with or without a port; a bracketed non-IPv6 Host
    matches no IP route."""
    cfg = config.parse("[wsrelay]\nlisten = tcp:0\n[upstream u]\nservers = 127.0.0.1:1\n"
                       "[route v4]\npath = /\nhost = 192.0.2.1\nupstream = u\n")
    router = Router(cfg.routes)
    assert router.match(normalize_host(b"192.0.2.1:80"), "/") is not None
    assert router.match(normalize_host(b"192.0.2.1"), "/") is not None
    assert router.match(normalize_host(b"[192.0.2.1]"), "/") is None
