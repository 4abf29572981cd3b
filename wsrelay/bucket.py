"""A token bucket: ``rate`` events per second, up to ``burst`` at once.  Pure arithmetic: the time
is passed in (the caller's ``reactor.seconds()``), nothing here reads a clock or does I/O.

It is kept as GCRA (the generic cell rate algorithm, ITU-T I.371): one float, the theoretical
arrival time of the next event, instead of a token count and a last-refill time, so an event that
conforms costs a comparison and an addition.  A bucket that has been idle long enough holds
``burst`` tokens; each event takes one; tokens come back at ``rate`` per second.
"""

from __future__ import annotations


class TokenBucket:
    """``take(now)`` is True while the events so far stay within ``rate`` per second with bursts of
    up to ``burst``; an event refused takes nothing."""

    __slots__ = ("rate", "burst", "interval", "tolerance", "tat")

    def __init__(self, rate: float, burst: int) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a token bucket needs a positive rate and a burst of at least 1")
        self.rate = rate
        self.burst = burst
        self.interval = 1.0 / rate  # the time one token takes to come back
        self.tolerance = (burst - 1) * self.interval
        self.tat = float("-inf")  # when the bucket is full again (theoretical arrival time)

    def take(self, now: float) -> bool:
        """One event at ``now``: True if it conforms (a token is taken), False if over the rate."""
        tat = self.tat
        if tat < now:
            tat = now
        elif tat - now > self.tolerance:
            return False
        self.tat = tat + self.interval
        return True

    def full(self, now: float) -> bool:
        """Whether every token has come back (the bucket says no more than a new one would)."""
        return self.tat <= now

    def retry_after(self, now: float) -> float:
        """Seconds until ``take`` would succeed again (0.0 if it would now)."""
        return max(0.0, self.tat - self.tolerance - now)


class Throttle:
    """For log lines about a flood: at most one every ``every`` seconds; ``allow(now)`` returns how
    many were held back since the last one let through, or None if this one is held back too."""

    __slots__ = ("bucket", "held")

    def __init__(self, every: float) -> None:
        self.bucket = TokenBucket(1.0 / every, 1)
        self.held = 0

    def allow(self, now: float) -> int | None:
        if not self.bucket.take(now):
            self.held += 1
            return None
        held, self.held = self.held, 0
        return held
