"""Per-client limits in memory, time moved with Clock.advance: token-bucket arithmetic and
Retry-After, per route and per client, expiry of idle buckets and the table's cap, limit_conn
counting (never below zero, uncounted once), the rate-limited refusal log, and the keys."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from wsrelay.config import ConfigError, parse
from wsrelay.gateway import Gateway
from wsrelay.limits import Buckets, Limits, RefusalLog


def check(limits: Limits, clock: Clock, client: str = "198.51.100.1", route: str = "/", *,
          conn: int = 0, rate: float = 0.0, burst: int = 1) -> tuple[str, int] | None:
    return limits.check(client, route, conn, rate, burst, clock.seconds())


def test_a_bucket_refills_at_its_rate() -> None:
    """rate 1/s, burst 2: two at once, the third refused with Retry-After 1 until a second passed."""
    limits, clock = Limits(), Clock()
    assert check(limits, clock, rate=1, burst=2) is None
    assert check(limits, clock, rate=1, burst=2) is None
    assert check(limits, clock, rate=1, burst=2) == ("limit_req", 1)
    clock.advance(0.5)
    assert check(limits, clock, rate=1, burst=2) == ("limit_req", 1)  # half a token: ceil(0.5 s)
    clock.advance(0.5)
    assert check(limits, clock, rate=1, burst=2) is None
    assert check(limits, clock, rate=1, burst=2) == ("limit_req", 1)
    clock.advance(60)  # never more than the burst
    assert [check(limits, clock, rate=1, burst=2) for _ in range(3)] == [None, None, ("limit_req", 1)]
    assert limits.refused_req == 4


def test_retry_after_is_the_wait_for_one_token() -> None:
    """A slow rate (12r/m): Retry-After is the whole seconds until the bucket holds one again."""
    limits, clock = Limits(), Clock()
    assert check(limits, clock, rate=0.2) is None
    assert check(limits, clock, rate=0.2) == ("limit_req", 5)
    clock.advance(3.5)
    assert check(limits, clock, rate=0.2) == ("limit_req", 2)
    clock.advance(1.5)
    assert check(limits, clock, rate=0.2) is None


def test_buckets_are_per_client_and_per_route() -> None:
    """One client's empty bucket neither limits another client nor the same client elsewhere."""
    limits, clock = Limits(), Clock()
    assert check(limits, clock, "a", "/login", rate=1) is None
    assert check(limits, clock, "a", "/login", rate=1) is not None
    assert check(limits, clock, "b", "/login", rate=1) is None
    assert check(limits, clock, "a", "/api", rate=1) is None


def test_idle_buckets_expire_as_requests_come() -> None:
    """A bucket that has refilled is dropped lazily by later requests (no timer): the table holds
    only clients seen within the refill time."""
    buckets, clock = Buckets(), Clock()
    for i in range(100):
        buckets.take(f"c{i}", clock.seconds(), 10.0, 5, 1000)
    assert len(buckets.table) == 100
    clock.advance(1.0)  # 0.5 s refills every one of them
    for i in range(60):
        buckets.take(f"new{i}", clock.seconds(), 10.0, 5, 1000)
    assert set(buckets.table) == {f"new{i}" for i in range(60)}  # two old ones go per request
    assert buckets.evicted == 0


def test_the_table_has_a_cap() -> None:
    """A flood of new addresses: the table stays at its cap, the least recently seen bucket goes
    (counted), and a client seen again keeps its state."""
    limits, clock = Limits(clients=50), Clock()
    assert check(limits, clock, "victim", rate=0.001) is None
    assert check(limits, clock, "victim", rate=0.001) is not None
    for i in range(1000):
        check(limits, clock, f"2001:db8::{i:x}", rate=0.001)
        if i % 10 == 0:
            assert check(limits, clock, "victim", rate=0.001) is not None  # still remembered
    assert len(limits.buckets["/"].table) == 50
    assert limits.evicted == 1000 + 1 - 50


def test_limit_conn_counts_what_is_in_progress() -> None:
    """At the limit, refused with Retry-After 1 and no token taken; the count goes back to zero
    (its entry gone) as things end, and never below."""
    limits, clock = Limits(), Clock()
    limits.opened("a")
    limits.opened("a")
    assert check(limits, clock, "a", conn=2, rate=1) == ("limit_conn", 1)
    assert check(limits, clock, "a", conn=3, rate=1) is None  # the token is there: none was taken
    assert check(limits, clock, "b", conn=2) is None
    limits.closed("a")
    assert check(limits, clock, "a", conn=2) is None
    limits.closed("a")
    limits.closed("a")
    limits.opened(None)  # no address: never counted
    assert limits.conns == {}
    limits.opened("a")
    assert limits.conns == {"a": 1}
    assert limits.refused_conn == 1


def test_the_gateway_uncounts_an_exchange_once() -> None:
    """Whatever ends an exchange or a pair, and however often its end is reported, it is
    uncounted once; and only what was counted."""
    cfg = parse("[wsrelay]\nlisten = tcp:0\n[upstream a]\nservers = 127.0.0.1:1\n[route /]\nupstream = a\n")
    gateway = Gateway(Clock(), cfg)

    class Live:
        def __init__(self, client_ip: str | None) -> None:
            self.client_ip = client_ip

        def shutdown(self) -> None:
            pass

    first, second = Live("a"), Live("a")
    gateway.opened(first)
    gateway.opened(second)
    assert gateway.limits.conns == {"a": 2}
    gateway.closed(first)
    gateway.closed(first)
    gateway.closed(Live("a"))
    assert gateway.limits.conns == {"a": 1}
    gateway.closed(second)
    assert gateway.limits.conns == {} and not gateway.live


def test_the_refusal_log_says_how_many_went_unlogged() -> None:
    """One line per client per interval; the next says how many refusals had none; bounded."""
    log, clock = RefusalLog(interval=10, clients=3), Clock()
    assert log.note("a", clock.seconds()) == 0
    assert [log.note("a", clock.seconds()) for _ in range(3)] == [None] * 3
    assert log.note("b", clock.seconds()) == 0
    clock.advance(10)
    assert log.note("a", clock.seconds()) == 3
    for client in "cdefg":
        log.note(client, clock.seconds())
    assert len(log.seen) == 3


def config(route: str = "", glob: str = "") -> str:
    return f"""
[wsrelay]
listen = tcp:0
{glob}
[upstream a]
servers = 127.0.0.1:1
[route /]
upstream = a
[route /login]
upstream = a
{route}
"""


def test_route_limits_default_to_the_global_ones() -> None:
    """[wsrelay] sets every route's limits; a route's own value replaces it, off turns it off;
    the burst defaults to one second's worth (at least 1)."""
    cfg = parse(config(glob="limit_conn = 4\nlimit_req_rate = 30r/m", route="limit_req_rate = 5\nlimit_conn = off"))
    assert [(r.limit_conn, r.limit_req_rate, r.limit_req_burst, r.limited) for r in cfg.routes] == [
        (4, 0.5, 1, True), (0, 5.0, 5, True)]
    cfg = parse(config(glob="limit_req_burst = 7", route="limit_req_rate = 2.5r/s"))
    assert [(r.limit_req_rate, r.limit_req_burst, r.limited) for r in cfg.routes] == [(0.0, 7, False), (2.5, 7, True)]
    assert parse(config()).limit_req_clients == 100_000


@pytest.mark.parametrize("route, glob, where", [
    ("limit_req_rate = fast", "", "[route /login] limit_req_rate"),
    ("limit_req_rate = 0r/s", "", "[route /login] limit_req_rate"),
    ("limit_req_burst = 3", "", "[route /login] limit_req_burst"),
    ("limit_conn = -1", "", "[route /login] limit_conn"),
    ("", "limit_req_clients = 0", "[wsrelay] limit_req_clients"),
])
def test_bad_limits_name_file_section_and_key(route: str, glob: str, where: str) -> None:
    """A bad limit stops the load with the file, the section and the key."""
    with pytest.raises(ConfigError) as caught:
        parse(config(route, glob), "relay.ini")
    assert str(caught.value).startswith(f"relay.ini: {where}: ")


def test_a_reload_keeps_counts_and_the_buckets_of_routes_that_stay() -> None:
    """Counts and buckets outlive a reload; a removed route's buckets go, the new cap applies."""
    text = config(route="limit_req_rate = 1", glob="limit_conn = 2")
    clock = Clock()
    gateway = Gateway(clock, parse(text))
    limits = gateway.limits
    limits.opened("a")
    assert limits.check("a", "/login", 2, 1.0, 1, clock.seconds()) is None
    assert limits.check("a", "/", 0, 1.0, 1, clock.seconds()) is None
    gateway.apply(parse(config(route="limit_req_rate = 1", glob="limit_req_clients = 7").replace(
        "[route /]", "[route /other]")))
    assert set(limits.buckets) == {"/login"} and limits.conns == {"a": 1} and limits.clients == 7
    assert limits.check("a", "/login", 2, 1.0, 1, clock.seconds()) == ("limit_req", 1)
