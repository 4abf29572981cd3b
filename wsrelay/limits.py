"""Per-client limits: ``limit_conn`` (exchanges and pairs in progress) and ``limit_req`` (a token
bucket per route), and the rate-limited log of refusals.

Pure: no I/O, no reactor; the time is passed in (``reactor.seconds()`` in wsrelay, a ``Clock``
in tests).  Every table is bounded:

- connection counts hold only clients with something in progress (an entry goes at zero), so
  they are bounded by the open connections;
- each route's buckets are kept in least-recently-seen order; a bucket that has refilled
  completely says no more than no bucket at all, so the oldest ones are dropped as they fill
  (lazily, a few per request: no timer); past ``clients`` buckets the least recently seen is
  dropped even if not full (nginx's limit_req does the same when its zone is full): a flood of
  new addresses costs the quietest clients their history (they start over with a full bucket),
  never memory;
- the refusal log remembers at most ``LOG_CLIENTS`` clients.

The counters (``refused_conn``, ``refused_req``, ``evicted``) are plain integers for the admin
listener's metrics to read at scrape time.
"""

from __future__ import annotations

import math

from wsrelay.bucket import Throttle, TokenBucket

#: Seconds between two log lines about one client's refusals.
LOG_INTERVAL = 10.0
#: Clients whose refusals the log remembers.
LOG_CLIENTS = 10_000
#: Full buckets dropped per request, at most (amortised expiry).
_EXPIRE_PER_CALL = 2


class Buckets:
    """One route's token buckets (:class:`wsrelay.bucket.TokenBucket`), per client address, in
    least-recently-seen order (a dict keeps insertion order; a bucket is re-inserted when used).
    A reload that changes the route's rate or burst starts its clients' buckets anew."""

    __slots__ = ("table", "evicted")

    def __init__(self) -> None:
        self.table: dict[str, TokenBucket] = {}
        self.evicted = 0

    def take(self, client: str, now: float, rate: float, burst: int, cap: int) -> float:
        """Take a token from ``client``'s bucket: 0.0 if there was one, else the seconds until
        there is (nothing is taken then)."""
        table = self.table
        bucket = table.pop(client, None)
        if bucket is None or bucket.rate != rate or bucket.burst != burst:
            bucket = TokenBucket(rate, burst)
        wait = 0.0 if bucket.take(now) else bucket.retry_after(now)
        table[client] = bucket
        for _ in range(_EXPIRE_PER_CALL):  # the oldest, if it has refilled: forget it
            oldest = next(iter(table))
            if oldest == client or not table[oldest].full(now):
                break
            del table[oldest]
        while len(table) > cap:
            del table[next(iter(table))]
            self.evicted += 1
        return wait


class RefusalLog:
    """Whether a refusal of a client gets a log line: one per client per ``interval`` (a
    :class:`wsrelay.bucket.Throttle` each); the next line says how many were refused without one."""

    __slots__ = ("interval", "clients", "seen")

    def __init__(self, interval: float = LOG_INTERVAL, clients: int = LOG_CLIENTS) -> None:
        self.interval = interval
        self.clients = clients
        self.seen: dict[str, Throttle] = {}  # least recently refused first

    def note(self, client: str, now: float) -> int | None:
        """None: no line now (counted); else write a line, saying this many went unlogged before it."""
        seen = self.seen
        throttle = seen.pop(client, None) or Throttle(self.interval)
        seen[client] = throttle
        while len(seen) > self.clients:
            del seen[next(iter(seen))]
        return throttle.allow(now)


class Limits:
    """The limits of one wsrelay process; outlives reloads (counts and buckets carry over)."""

    def __init__(self, clients: int = 100_000) -> None:
        self.clients = clients  # the most buckets per route
        self.conns: dict[str, int] = {}
        self.buckets: dict[str, Buckets] = {}  # per route name
        self.log = RefusalLog()
        self.refused_conn = 0
        self.refused_req = 0
        self._evicted_gone = 0  # evictions counted by tables since dropped

    @property
    def evicted(self) -> int:
        """Buckets dropped at the cap (not full yet), since start."""
        return self._evicted_gone + sum(b.evicted for b in self.buckets.values())

    def configure(self, clients: int, routes: set[str]) -> None:
        """A new configuration: its cap, and only its routes' buckets kept."""
        self.clients = clients
        for name in [n for n in self.buckets if n not in routes]:
            self._evicted_gone += self.buckets.pop(name).evicted

    # -- limit_conn ---------------------------------------------------------------------------

    def opened(self, client: str | None) -> None:
        """An exchange or pair of ``client`` is in progress."""
        if client is not None:
            conns = self.conns
            conns[client] = conns.get(client, 0) + 1

    def closed(self, client: str | None) -> None:
        """It has ended (called once per :meth:`opened`)."""
        if client is not None:
            conns = self.conns
            count = conns.get(client, 0) - 1
            if count > 0:
                conns[client] = count
            else:
                conns.pop(client, None)

    # -- the check ------------------------------------------------------------------------------

    def check(self, client: str, route: str, limit_conn: int, rate: float, burst: int,
              now: float) -> tuple[str, int] | None:
        """None if ``client`` may start a request on ``route`` now; else which limit refuses it
        (``"limit_conn"`` or ``"limit_req"``) and the seconds to put in ``Retry-After``.

        ``limit_conn`` first, so a request it refuses takes no token.
        """
        if limit_conn and self.conns.get(client, 0) >= limit_conn:
            self.refused_conn += 1
            return "limit_conn", 1
        if rate:
            buckets = self.buckets.get(route)
            if buckets is None:
                buckets = self.buckets[route] = Buckets()
            wait = buckets.take(client, now, rate, burst, self.clients)
            if wait:
                self.refused_req += 1
                return "limit_req", max(1, math.ceil(wait))
        return None
