"""Upstream choice and per-server state, with a fake clock: every balancing mode, passive and
active health, backups, max_conns, and state carried across reloads."""

from __future__ import annotations

from collections import Counter

import pytest
from twisted.internet.task import Clock

from wsrelay import config
from wsrelay.balancing import Balancer, NoServerAvailable


def groups(servers: str, extra: str = "") -> dict[str, config.Upstream]:
    return dict(config.parse(f"""
[wsrelay]
listen = tcp:0
[upstream g]
servers = {servers}
{extra}
[route /]
upstream = g
websocket = off
""").upstreams)


def balancer(servers: str, extra: str = "") -> tuple[Balancer, Clock]:
    clock = Clock()
    b = Balancer(clock)
    b.configure(groups(servers, extra))
    return b, clock


def picks(b: Balancer, n: int, **kw: object) -> list[int]:
    out = []
    for _ in range(n):
        lease = b.acquire("g", client_ip="10.0.0.1", **kw)  # type: ignore[arg-type]
        out.append(lease.server.port)
        lease.release()
    return out


def test_weighted_round_robin_is_smooth_and_exact() -> None:
    """Weights 5:1:1 give exactly 5/1/1 per cycle of 7, interleaved (nginx's smooth WRR)."""
    b, _ = balancer("127.0.0.1:1 weight=5  127.0.0.1:2  127.0.0.1:3", "balance = round_robin")
    cycle = picks(b, 7)
    assert Counter(cycle) == {1: 5, 2: 1, 3: 1}
    assert cycle == [1, 1, 2, 1, 3, 1, 1]  # smooth: the heavy server is not picked 5 times in a row
    assert picks(b, 7) == cycle


def test_least_conn_counts_open_leases_per_weight() -> None:
    """least_conn picks the fewest active per unit of weight; releases make room again."""
    b, _ = balancer("127.0.0.1:1 weight=2  127.0.0.1:2", "balance = least_conn")
    held = [b.acquire("g", client_ip="x") for _ in range(6)]
    assert Counter(l.server.port for l in held) == {1: 4, 2: 2}
    for lease in [l for l in held if l.server.port == 1][:3]:
        lease.release()
    assert b.acquire("g", client_ip="x").server.port == 1


def test_ip_hash_is_stable_and_fails_over() -> None:
    """ip_hash keeps a client (same /24) on one server, moves it while that server is down, and back."""
    b, clock = balancer("127.0.0.1:1 127.0.0.1:2 127.0.0.1:3", "balance = ip_hash\nmax_fails = 1\nfail_timeout = 10s")
    first = b.acquire("g", client_ip="192.0.2.10")
    home = first.server.port
    first.release()
    assert {b.acquire("g", client_ip="192.0.2.99").server.port for _ in range(5)} == {home}
    spread = {b.acquire("g", client_ip=f"198.51.{i}.1").server.port for i in range(60)}
    assert spread == {1, 2, 3}
    lease = b.acquire("g", client_ip="192.0.2.10")
    lease.failure("connect refused")
    lease.release()
    assert b.acquire("g", client_ip="192.0.2.10").server.port != home
    clock.advance(10)
    assert b.acquire("g", client_ip="192.0.2.10").server.port == home


def test_cookie_sticky_inserts_honours_and_falls_back() -> None:
    """cookie mode sets an opaque id cookie, honours it, and re-pins the client if that server is down."""
    b, _ = balancer("127.0.0.1:1 127.0.0.1:2", "balance = cookie\nsticky = srv\nmax_fails = 1")
    lease = b.acquire("g", client_ip="x")
    cookie = lease.set_cookie(secure=False)
    assert cookie is not None and cookie.startswith(b"srv=") and b"127.0.0.1" not in cookie
    value = cookie.split(b";")[0].split(b"=")[1]
    assert value == b.server_id(lease.server).encode()
    headers = [(b"Cookie", b"a=b; srv=" + value)]
    for _ in range(5):
        again = b.acquire("g", client_ip="y", headers=headers)
        assert again.server == lease.server and again.set_cookie(secure=False) is None
    again.failure("timeout")
    moved = b.acquire("g", client_ip="y", headers=headers)
    assert moved.server != lease.server and moved.set_cookie(secure=True) is not None


def test_header_sticky_is_rendezvous_stable_when_servers_are_added() -> None:
    """header mode maps a value to one server; adding a server moves only clients it now wins."""
    b, _ = balancer("127.0.0.1:1 127.0.0.1:2 127.0.0.1:3", "balance = header\nsticky = X-Session")
    before = {f"s{i}": b.acquire("g", client_ip="x", headers=[(b"x-session", f"s{i}".encode())]).server.port
              for i in range(200)}
    b.configure(groups("127.0.0.1:1 127.0.0.1:2 127.0.0.1:3 127.0.0.1:4", "balance = header\nsticky = X-Session"))
    after = {f"s{i}": b.acquire("g", client_ip="x", headers=[(b"x-session", f"s{i}".encode())]).server.port
             for i in range(200)}
    moved = [k for k in before if before[k] != after[k]]
    assert all(after[k] == 4 for k in moved)
    assert 20 < len(moved) < 90  # about a quarter of the clients
    no_header = b.acquire("g", client_ip="x")
    assert no_header.server.port in {1, 2, 3, 4}


def test_backup_only_when_primaries_unavailable() -> None:
    """A backup server takes traffic only while no primary server can."""
    b, clock = balancer("127.0.0.1:1  127.0.0.1:2 backup", "max_fails = 1\nfail_timeout = 5s")
    assert set(picks(b, 4)) == {1}
    lease = b.acquire("g", client_ip="x")
    lease.failure("refused")
    lease.release()
    assert set(picks(b, 3)) == {2}
    clock.advance(5)
    assert set(picks(b, 3)) == {1}


def test_max_conns_is_respected() -> None:
    """A server at max_conns is skipped; with every server full the answer is 503 at once."""
    b, _ = balancer("127.0.0.1:1 max_conns=1  127.0.0.1:2 max_conns=1")
    a, c = b.acquire("g", client_ip="x"), b.acquire("g", client_ip="x")
    assert {a.server.port, c.server.port} == {1, 2}
    with pytest.raises(NoServerAvailable):
        b.acquire("g", client_ip="x")
    a.release()
    assert b.acquire("g", client_ip="x").server == a.server


def test_passive_health_window_and_recovery() -> None:
    """max_fails failures within fail_timeout take a server out for fail_timeout; older ones don't count."""
    b, clock = balancer("127.0.0.1:1 127.0.0.1:2", "balance = round_robin\nmax_fails = 2\nfail_timeout = 10s")
    one = next(l for l in (b.acquire("g", client_ip="x") for _ in range(2)) if l.server.port == 1)
    one.failure("timeout")
    clock.advance(11)  # the first failure ages out
    one.failure("timeout")
    assert 1 in picks(b, 4)
    one.failure("refused")  # two within 10 s
    assert set(picks(b, 4)) == {2}
    assert b.snapshot()["g"]["http://127.0.0.1:1"]["down"] is True
    clock.advance(10)
    assert set(picks(b, 4)) == {1, 2}


def test_every_server_down_tries_the_one_that_failed_longest_ago() -> None:
    """With every server taken out by passive health, a request still goes to the server that
    failed longest ago (not 503 for fail_timeout); a retry of that exchange gets the other one;
    only when nothing is left to try is the answer 503, with Retry-After until the first returns."""
    b, clock = balancer("127.0.0.1:1 127.0.0.1:2", "max_fails = 1\nfail_timeout = 30s")
    for _ in range(2):
        lease = b.acquire("g", client_ip="x")
        lease.failure("refused")
        lease.release()
        clock.advance(4)
    assert all(s["down"] for s in b.snapshot()["g"].values())
    first = b.acquire("g", client_ip="x")
    assert first.server.port == 1  # down since t=0: failed longest ago
    first.release()
    assert b.acquire("g", client_ip="x", exclude={"http://127.0.0.1:1"}).server.port == 2
    with pytest.raises(NoServerAvailable) as info:
        b.acquire("g", client_ip="x", exclude={"http://127.0.0.1:1", "http://127.0.0.1:2"})
    assert info.value.status == 503
    assert info.value.headers == {b"Retry-After": b"22"}


def test_a_server_tried_while_down_is_back_on_success() -> None:
    """Every server down: the one tried answers, so it is in service again at once."""
    b, _ = balancer("127.0.0.1:1 127.0.0.1:2", "max_fails = 1\nfail_timeout = 30s")
    for port in (1, 2):
        b.acquire("g", client_ip="x", exclude={f"http://127.0.0.1:{3 - port}"}).failure("refused")
    lease = b.acquire("g", client_ip="x")
    lease.success()
    lease.release()
    snap = b.snapshot()["g"]
    assert snap[lease.server.key]["down"] is False
    assert [s["down"] for k, s in snap.items() if k != lease.server.key] == [True]


def test_servers_down_by_active_health_are_never_tried() -> None:
    """The fallback to a passively-down server never picks one the active check marked down."""
    b, _ = balancer("127.0.0.1:1 127.0.0.1:2", "max_fails = 1")
    b.acquire("g", client_ip="x", exclude={"http://127.0.0.1:2"}).failure("refused")
    b.mark_health("g", "http://127.0.0.1:2", False)
    assert picks(b, 3) == [1, 1, 1]
    b.mark_health("g", "http://127.0.0.1:1", False)
    with pytest.raises(NoServerAvailable):
        b.acquire("g", client_ip="x")


def test_the_only_server_of_a_group_is_never_taken_out() -> None:
    """As nginx: a group of one server keeps it in service whatever its failures (they are
    counted), so one bad response is not fail_timeout seconds of 503."""
    b, _ = balancer("127.0.0.1:1", "max_fails = 1\nfail_timeout = 30s")
    for _ in range(5):
        lease = b.acquire("g", client_ip="x")
        lease.failure("read timeout")
        lease.release()
    snap = b.snapshot()["g"]["http://127.0.0.1:1"]
    assert snap["down"] is False and snap["failed"] == 5
    assert picks(b, 2) == [1, 1]


def test_active_health_marks() -> None:
    """A server marked down by active checks is skipped until marked up."""
    b, _ = balancer("127.0.0.1:1 127.0.0.1:2")
    b.mark_health("g", "http://127.0.0.1:1", False)
    assert set(picks(b, 4)) == {2}
    b.mark_health("g", "http://127.0.0.1:1", True)
    assert set(picks(b, 4)) == {1, 2}


def test_server_brought_back_by_health_checks_is_out_of_passive_down_too() -> None:
    """Passive health took the server out for fail_timeout; the active check saw it down, then up:
    it takes requests again at once."""
    b, clock = balancer("127.0.0.1:1 127.0.0.1:2")
    b.acquire("g", client_ip="x", exclude={"http://127.0.0.1:2"}).failure("connect error")
    b.mark_health("g", "http://127.0.0.1:1", False)
    assert b.snapshot()["g"]["http://127.0.0.1:1"]["down"] is True
    clock.advance(1)
    b.mark_health("g", "http://127.0.0.1:1", True)
    snap = b.snapshot()["g"]["http://127.0.0.1:1"]
    assert snap["down"] is False and snap["healthy"] is True and snap["failures"] == 0
    assert {b.acquire("g", client_ip="x").server.port for _ in range(4)} == {1, 2}


def test_max_fails_zero_disables_passive_health() -> None:
    """max_fails = 0: failures never take a server out."""
    b, _ = balancer("127.0.0.1:1", "max_fails = 0")
    lease = b.acquire("g", client_ip="x")
    for _ in range(10):
        lease.failure("refused")
    assert picks(b, 1) == [1]


def test_reload_keeps_counts_and_health_and_adds_servers_at_once() -> None:
    """A reload neither forgets live leases nor health; a new server gets the next connections."""
    b, _ = balancer("127.0.0.1:1 127.0.0.1:2", "balance = least_conn")
    held = [b.acquire("g", client_ip="x") for _ in range(4)]
    b.mark_health("g", "http://127.0.0.1:2", False)
    b.configure(groups("127.0.0.1:1 127.0.0.1:2 127.0.0.1:3", "balance = least_conn"))
    snap = b.snapshot()["g"]
    assert snap["http://127.0.0.1:1"]["active"] == 2 and snap["http://127.0.0.1:2"]["healthy"] is False
    assert [b.acquire("g", client_ip="x").server.port for _ in range(2)] == [3, 3]
    for lease in held:
        lease.release()


def test_removed_server_lease_releases_cleanly() -> None:
    """A lease on a server removed by a reload releases without error, and the server is gone."""
    b, _ = balancer("127.0.0.1:1 127.0.0.1:2", "balance = round_robin")
    leases = [b.acquire("g", client_ip="x") for _ in range(2)]
    b.configure(groups("127.0.0.1:1", "balance = round_robin"))
    for lease in leases:
        lease.success()
        lease.release()
        lease.release()  # idempotent
    assert list(b.snapshot()["g"]) == ["http://127.0.0.1:1"]
    assert b.snapshot()["g"]["http://127.0.0.1:1"]["active"] == 0
    assert b.retired == {"g": []}


def test_removed_server_stays_visible_until_drained_and_keeps_its_count_if_readded() -> None:
    """A server a reload removed shows in snapshot as retired while it carries connections; added
    back before it drained, it keeps its count (least_conn does not overload it)."""
    b, _ = balancer("127.0.0.1:1 127.0.0.1:2", "balance = least_conn")
    held = [b.acquire("g", client_ip="x") for _ in range(4)]
    b.configure(groups("127.0.0.1:1", "balance = least_conn"))
    snap = b.snapshot()["g"]
    assert snap["http://127.0.0.1:2"]["retired"] is True and snap["http://127.0.0.1:2"]["active"] == 2
    assert snap["http://127.0.0.1:1"]["retired"] is False
    b.configure(groups("127.0.0.1:1 127.0.0.1:2", "balance = least_conn"))
    snap = b.snapshot()["g"]
    assert snap["http://127.0.0.1:2"]["retired"] is False and snap["http://127.0.0.1:2"]["active"] == 2
    assert b.retired == {"g": []}
    for lease in held:
        lease.release()
    assert {key: s["active"] for key, s in b.snapshot()["g"].items()} == {
        "http://127.0.0.1:1": 0, "http://127.0.0.1:2": 0}


def test_snapshot_reports_served_and_failures() -> None:
    """snapshot shows active, served, failures in all and recent failures per server."""
    b, _ = balancer("127.0.0.1:1 127.0.0.1:2")
    lease = b.acquire("g", client_ip="x", exclude={"http://127.0.0.1:2"})
    lease.success()
    lease.failure("read timeout")
    snap = b.snapshot()["g"]["http://127.0.0.1:1"]
    assert (snap["active"], snap["served"], snap["failures"]) == (1, 1, 0)  # max_fails=1: counted, then down
    assert snap["failed"] == 1 and snap["down"] is True
    lease.failure("read timeout")
    assert b.snapshot()["g"]["http://127.0.0.1:1"]["failed"] == 2


def test_exclude_skips_tried_servers() -> None:
    """A retry excludes servers already tried."""
    b, _ = balancer("127.0.0.1:1 127.0.0.1:2")
    assert {b.acquire("g", client_ip="x", exclude={"http://127.0.0.1:1"}).server.port for _ in range(3)} == {2}
    with pytest.raises(NoServerAvailable):
        b.acquire("g", client_ip="x", exclude={"http://127.0.0.1:1", "http://127.0.0.1:2"})


def test_ip_hash_without_client_address_falls_back_to_round_robin() -> None:
    """ip_hash with no client address (client_ip None, a unix: listener) spreads requests
    round-robin instead of pinning them all to one server or failing."""
    b, _ = balancer("127.0.0.1:1 weight=2  127.0.0.1:2  127.0.0.1:3", "balance = ip_hash")
    ports = []
    for _ in range(8):
        lease = b.acquire("g", client_ip=None)
        ports.append(lease.server.port)
        lease.release()
    assert ports == [1, 2, 3, 1] * 2  # smooth weighted round-robin, as balance = round_robin
    assert len({b.acquire("g", client_ip="192.0.2.7").server.port for _ in range(4)}) == 1  # addresses still hash


def test_cookie_attributes_follow_the_request_scheme() -> None:
    """The sticky cookie is HttpOnly, SameSite=Lax and Path=/ always, and Secure exactly when the
    request came over TLS."""
    b, _ = balancer("127.0.0.1:1", "balance = cookie\nsticky = srv")
    lease = b.acquire("g", client_ip="x")
    value = b.server_id(lease.server)
    assert lease.set_cookie(secure=False) == f"srv={value}; Path=/; HttpOnly; SameSite=Lax".encode()
    assert lease.set_cookie(secure=True) == f"srv={value}; Path=/; HttpOnly; SameSite=Lax; Secure".encode()


def test_cookie_ids_are_keyed() -> None:
    """A sticky id is an HMAC under the balancer's key: processes with the same key (workers,
    fleet nodes) honour each other's cookies; without the key, hashing the address (as the old
    unsalted id did) finds nothing."""
    import hashlib

    ups = groups("10.0.0.1:80 10.0.0.2:80", "balance = cookie\nsticky = srv")
    one, other, stranger = Balancer(Clock(), b"k" * 32), Balancer(Clock(), b"k" * 32), Balancer(Clock(), b"x" * 32)
    for b in (one, other, stranger):
        b.configure(ups)
    lease = one.acquire("g", client_ip="x")
    cookie = lease.set_cookie(secure=True)
    assert cookie is not None
    value = cookie.split(b";")[0].split(b"=", 1)[1].decode()
    assert len(value) == 32 and int(value, 16) >= 0
    for server in ups["g"].servers:
        for text in (server.key, server.hostport, server.host):
            for digest in (hashlib.sha256(text.encode()).hexdigest(), hashlib.md5(text.encode()).hexdigest()):
                assert value not in digest
    headers = [(b"Cookie", b"srv=" + value.encode())]
    for _ in range(3):  # the other process with the same key honours it, whatever least_conn says
        again = other.acquire("g", client_ip="y", headers=headers)
        assert again.server == lease.server and again.set_cookie(secure=True) is None
    assert stranger.server_id(lease.server) != value
    assert stranger.acquire("g", client_ip="y", headers=headers).set_cookie(secure=True) is not None
    one.configure(ups, b"z" * 32)  # a reload with a new key: new ids
    assert one.server_id(lease.server) != value
