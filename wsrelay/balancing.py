"""Choosing an upstream server, and the per-server state that choice needs.  Pure: takes a clock.

Rules (a server is *available* when it is healthy, not passively down, and under ``max_conns``):

1. Primary servers first; ``backup`` servers only when no primary is available.
2. Per group ``balance``:

   - ``round_robin``: nginx's smooth weighted round-robin (each pick adds every server's weight to
     its current value and takes the largest, which then loses the total);
   - ``least_conn``: fewest active exchanges per unit of weight (open WebSocket relays and
     in-flight HTTP requests both count), ties broken round-robin.  The default for groups that
     carry WebSocket routes: long-lived connections must spread by load, not by arrival;
   - ``ip_hash``: a stable hash of the client address (IPv4: its first three octets, as nginx;
     IPv6: the whole address) ranks the servers; the first available one is taken.  A request
     with no client address (``client_ip`` None: a ``unix:`` listener) is balanced round-robin;
   - ``header``: rendezvous hashing of the value of the ``sticky`` header, so adding a server
     moves only the clients it now wins; requests without the header fall back to least_conn;
   - ``cookie``: HAProxy-style insert.  The response carries ``Set-Cookie: <sticky>=<server id>``
     (``HttpOnly; SameSite=Lax``, and ``Secure`` when the request came over TLS; the id is an
     HMAC of the server's address under the installation's sticky key, see ``sticky.py``, so it
     does not reveal the address); requests that carry a valid id go to that server while it is
     available, others are balanced least_conn.
     This is the mode for Socket.IO and SignalR: their long-polling requests must reach the server
     that holds the session, which an IP hash cannot guarantee behind NAT or mobile networks.

3. Passive health, like nginx: ``max_fails`` failures within ``fail_timeout`` seconds take a server
   out for ``fail_timeout``; then it gets traffic again.  A failure is a connect error, a connect
   or read timeout, or a response status in ``fail_statuses`` (reported by the proxy through
   ``Lease.failure``).  ``max_fails = 0`` turns passive health off.  The only server of a group
   is never taken out (as nginx): failures are counted, but it keeps its traffic.
4. Active health (``healthcheck.py``) marks servers up or down through :meth:`Balancer.mark_health`.
5. When passive health has taken out every server an exchange could use, the one that failed
   longest ago is tried (a success brings it back at once) rather than refusing every request for
   ``fail_timeout``.  When nothing can be tried at all (every server excluded by the exchange's
   earlier attempts, down by active checks or at ``max_conns``), :class:`NoServerAvailable` (503
   with ``Retry-After``: the seconds until the first passively-down server returns, at least 1)
   is raised at once.

State is keyed by (group name, ``Server.key``) and survives :meth:`Balancer.configure`, so a
reload keeps connection counts and health; servers added by a reload are eligible at once; a
removed server's state is dropped when its last lease is released.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import os
from collections import Counter, deque
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import attrs

from wsrelay import sticky
from wsrelay.config import Server, Upstream
from wsrelay.errors import BadGateway, ServiceUnavailable


class NoServerAvailable(ServiceUnavailable):
    """Every server of a group is down, excluded or at max_conns."""


class GroupRemoved(BadGateway):
    """A reload removed the group while an exchange of it was under way (a retry, say)."""


def failure_cause(reason: str) -> str:
    """The metrics label of a failure's reason: ``connect timeout`` -> ``connect_timeout``, and
    ``status 503`` -> ``status`` (the statuses are the group's ``fail_statuses``)."""
    return "status" if reason.startswith("status ") else reason.replace(" ", "_").replace("-", "_")


def _hash(*parts: str) -> int:
    return int.from_bytes(hashlib.blake2b("\0".join(parts).encode("utf-8"), digest_size=8).digest(), "big")


@attrs.define
class ServerState:
    """Mutable state of one server of one group."""

    server: Server
    active: int = 0
    served: int = 0
    failures: deque[float] = attrs.field(factory=deque)  # within fail_timeout, for max_fails
    failed: int = 0  # every failure since start (or since the server was added)
    causes: Counter[str] = attrs.field(factory=Counter)  # failed, by cause (failure_cause)
    retries: int = 0  # attempts that failed here and were tried again on another server
    down_until: float = 0.0
    healthy: bool = True  # active health checks
    current_weight: int = 0  # smooth weighted round-robin
    retired: bool = False  # removed by a reload, kept until its last lease is released


class Lease:
    """One request or one relayed WebSocket on one server, from acquire to release."""

    def __init__(self, balancer: Balancer, group: str, state: ServerState, upstream: Upstream,
                 cookie: tuple[str, str] | None) -> None:
        self._balancer = balancer
        self._group = group
        self._state = state
        self._upstream = upstream
        self._cookie = cookie  # (name, server id) when the client needs a sticky cookie
        self._released = False
        self.server = state.server

    def success(self) -> None:
        """The upstream answered (with a status not in fail_statuses).  A server tried while
        passive health had it out (every server was) is back in service at once."""
        state = self._state
        state.served += 1
        if state.down_until:
            state.down_until = 0.0
            state.failures.clear()

    def failure(self, reason: str) -> None:
        """The attempt failed: connect error, timeout, or a status in fail_statuses."""
        self._balancer._record_failure(self._upstream, self._state, reason)

    def retried(self) -> None:
        """The failed attempt is tried again on another server (counted against this one)."""
        self._state.retries += 1

    def release(self) -> None:
        """The exchange is over (idempotent)."""
        if self._released:
            return
        self._released = True
        self._state.active -= 1
        if self._state.retired and self._state.active == 0:
            self._balancer._forget(self._group, self._state)

    def set_cookie(self, secure: bool) -> bytes | None:
        """For balance = cookie: the Set-Cookie value to add to the response, if the client needs
        one.  ``secure``: the request came over TLS (the cookie then gets ``Secure``)."""
        if self._cookie is None:
            return None
        return sticky.set_cookie(*self._cookie, secure=secure)


class Balancer:
    """Server choice and state for every upstream group of one process."""

    def __init__(self, clock: Any, sticky_key: bytes | None = None) -> None:
        """``sticky_key``: the key of sticky cookie ids (``sticky.load_key``); None: a random
        one, valid in this process only."""
        self.clock = clock
        self.sticky_key = sticky_key if sticky_key is not None else os.urandom(32)
        self._ids: dict[str, str] = {}  # Server.key -> sticky id under sticky_key
        self.upstreams: dict[str, Upstream] = {}
        self.states: dict[str, dict[str, ServerState]] = {}
        self.retired: dict[str, list[ServerState]] = {}
        self._rr_tiebreak: dict[str, int] = {}

    # -- configuration ----------------------------------------------------------------------

    def configure(self, upstreams: Mapping[str, Upstream], sticky_key: bytes | None = None) -> None:
        """Use ``upstreams`` (and ``sticky_key``, if given) from now on, keeping the state of
        servers that stay."""
        if sticky_key is not None:
            self.sticky_key = sticky_key
        self._ids = {}
        new_states: dict[str, dict[str, ServerState]] = {}
        for name, upstream in upstreams.items():
            old = self.states.get(name, {})
            group: dict[str, ServerState] = {}
            retired = {state.server.key: state for state in self.retired.get(name, [])}
            for server in upstream.servers:
                state = old.get(server.key)
                if state is None and server.key in retired:  # removed, then back before it drained
                    state = retired[server.key]
                    state.retired = False
                    self.retired[name].remove(state)
                if state is None:
                    state = ServerState(server)
                else:
                    state.server = server  # weight, max_conns, backup may have changed
                group[server.key] = state
            new_states[name] = group
        for name, group in self.states.items():
            for key, state in group.items():
                if key not in new_states.get(name, {}) and state.active > 0:
                    state.retired = True
                    self.retired.setdefault(name, []).append(state)
        self.states = new_states
        self.upstreams = dict(upstreams)

    def _forget(self, group: str, state: ServerState) -> None:
        retired = self.retired.get(group, [])
        if state in retired:
            retired.remove(state)

    # -- health -----------------------------------------------------------------------------

    def mark_health(self, group: str, server_key: str, healthy: bool) -> None:
        """The active health check's verdict changed.  A server it brings back up is back for
        requests at once, even if passive health had also taken it out (as in HAProxy)."""
        state = self.states.get(group, {}).get(server_key)
        if state is not None:
            state.healthy = healthy
            if healthy:
                state.down_until = 0.0
                state.failures.clear()

    def _record_failure(self, upstream: Upstream, state: ServerState, reason: str) -> None:
        state.failed += 1
        state.causes[failure_cause(reason)] += 1
        if upstream.max_fails == 0:
            return
        now = self.clock.seconds()
        failures = state.failures
        failures.append(now)
        while failures and failures[0] <= now - upstream.fail_timeout:
            failures.popleft()
        if len(failures) >= upstream.max_fails and len(upstream.servers) > 1:
            # As nginx: the only server of a group is never taken out; that would turn one bad
            # response into fail_timeout seconds of 503 for every request.
            state.down_until = now + upstream.fail_timeout
            failures.clear()

    def _available(self, state: ServerState, now: float) -> bool:
        server = state.server
        return (state.healthy and state.down_until <= now
                and (server.max_conns == 0 or state.active < server.max_conns))

    # -- choice -----------------------------------------------------------------------------

    def acquire(self, group: str, *, client_ip: str | None, headers: Sequence[tuple[bytes, bytes]] = (),
                exclude: Collection[str] = ()) -> Lease:
        """Pick a server of ``group`` for one exchange; raise NoServerAvailable if none can take it
        (GroupRemoved if a reload removed the group meanwhile).

        ``client_ip``: the client's address, or None when there is none (a ``unix:`` listener)."""
        upstream = self.upstreams.get(group)
        if upstream is None:
            raise GroupRemoved(f"upstream {group} was removed by a reload")
        states = self.states[group]
        now = self.clock.seconds()
        primaries: list[ServerState] = []
        backups: list[ServerState] = []
        for s in states.values():  # one pass: this runs for every request (see _available)
            server = s.server
            if (s.healthy and s.down_until <= now and (server.max_conns == 0 or s.active < server.max_conns)
                    and (not exclude or server.key not in exclude)):
                (backups if server.backup else primaries).append(s)
        pool = primaries or backups
        if not pool:
            pool = self._least_recently_failed(states, exclude, now)
        if not pool:
            raise self._none_available(group, states, now)
        cookie: tuple[str, str] | None = None
        chosen: ServerState | None = None
        if upstream.balance == "cookie":
            assert upstream.sticky is not None
            wanted = _cookie(headers, upstream.sticky.encode("ascii"))
            if wanted is not None:
                chosen = next((s for s in pool if self.server_id(s.server).encode("ascii") == wanted), None)
            if chosen is None:
                chosen = self._least_conn(group, pool)
                cookie = (upstream.sticky, self.server_id(chosen.server))
        elif upstream.balance == "header":
            assert upstream.sticky is not None
            value = _header(headers, upstream.sticky.encode("ascii"))
            if value is None:
                chosen = self._least_conn(group, pool)
            else:
                text = value.decode("latin-1")
                chosen = max(pool, key=lambda s: _rendezvous(text, s.server))
        elif upstream.balance == "ip_hash" and client_ip is not None:
            chosen = self._ip_hash(client_ip, states, pool)
        elif upstream.balance == "least_conn":
            chosen = self._least_conn(group, pool)
        else:
            chosen = self._round_robin(pool)
        chosen.active += 1
        return Lease(self, group, chosen, upstream, cookie)

    def server_id(self, server: Server) -> str:
        """The sticky cookie id of ``server`` under this balancer's key."""
        sid = self._ids.get(server.key)
        if sid is None:
            sid = self._ids[server.key] = sticky.server_id(self.sticky_key, server)
        return sid

    def _round_robin(self, pool: list[ServerState]) -> ServerState:
        total = 0
        best: ServerState | None = None
        for state in pool:
            state.current_weight += state.server.weight
            total += state.server.weight
            if best is None or state.current_weight > best.current_weight:
                best = state
        assert best is not None
        best.current_weight -= total
        return best

    def _least_conn(self, group: str, pool: list[ServerState]) -> ServerState:
        if len(pool) == 1:
            return pool[0]
        lowest = min(s.active / s.server.weight for s in pool)
        tied = [s for s in pool if s.active / s.server.weight == lowest]
        if len(tied) == 1:
            return tied[0]
        return self._round_robin(tied)

    def _ip_hash(self, client_ip: str, states: Mapping[str, ServerState], pool: list[ServerState]) -> ServerState:
        try:
            address = ipaddress.ip_address(client_ip)
            key = ".".join(client_ip.split(".")[:3]) if address.version == 4 else address.exploded
        except ValueError:
            key = client_ip
        # Rank every configured server (not only available ones) so a server's clients return
        # to it when it comes back; take the first available in that order.
        order = sorted(states.values(), key=lambda s: _rendezvous(key, s.server), reverse=True)
        available = {id(s) for s in pool}
        return next(s for s in order if id(s) in available)

    def _least_recently_failed(self, states: Mapping[str, ServerState], exclude: Collection[str],
                               now: float) -> list[ServerState]:
        """When passive health has taken out every server this exchange could use, the one that
        failed longest ago (its down_until is the earliest): a try costs one connection, where 503
        would refuse every request until fail_timeout ends.  Servers down by active health checks,
        at max_conns or excluded (already tried by this exchange) are never chosen this way."""
        down = [s for s in states.values()
                if s.server.key not in exclude and s.down_until > now and s.healthy
                and (s.server.max_conns == 0 or s.active < s.server.max_conns)]
        if not down:
            return []
        return [min(down, key=lambda s: s.down_until)]

    def _none_available(self, group: str, states: Mapping[str, ServerState], now: float) -> NoServerAvailable:
        returning = [s.down_until - now for s in states.values() if s.down_until > now]
        retry_after = max(1, int(min(returning) + 0.999)) if returning else 1
        return NoServerAvailable(
            f"no server of upstream {group} is available", headers={b"Retry-After": str(retry_after).encode("ascii")}
        )

    # -- observation ------------------------------------------------------------------------

    def snapshot(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Per group, per server: active, served, failed (in all), recent failures (those that count
        toward max_fails), health, down_until (clock time); servers a reload removed appear with
        ``retired`` until their last connection ends."""
        now = self.clock.seconds()
        return {
            group: {
                key: {
                    "active": s.active,
                    "served": s.served,
                    "failed": s.failed,
                    "failed_by_cause": dict(s.causes),
                    "retries": s.retries,
                    "failures": len(s.failures),
                    "healthy": s.healthy,
                    "down": s.down_until > now,
                    "down_until": s.down_until if s.down_until > now else None,
                    "backup": s.server.backup,
                    "weight": s.server.weight,
                    "retired": s.retired,
                }
                for key, s in [*states.items(), *((r.server.key, r) for r in self.retired.get(group, []))]
            }
            for group, states in self.states.items()
        }


def _rendezvous(key: str, server: Server) -> float:
    """Weighted rendezvous score of ``server`` for ``key`` (highest wins)."""
    h = (_hash(key, server.key) + 1) / float(2**64 + 1)
    return -server.weight / math.log(h)


def _header(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    name = name.lower()
    for key, value in headers:
        if key.lower() == name:
            return value.strip()
    return None


def _cookie(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for key, value in headers:
        if key.lower() == b"cookie":
            for part in value.split(b";"):
                k, _, v = part.strip().partition(b"=")
                if k == name:
                    return v.strip()
    return None
