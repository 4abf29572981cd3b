"""The token bucket and the log throttle (pure arithmetic, time passed in)."""

from __future__ import annotations

import pytest

from wsrelay.bucket import Throttle, TokenBucket


def test_bucket_allows_a_burst_then_the_rate() -> None:
    """A full bucket takes ``burst`` events at once, then one per 1/rate seconds; a refused event
    takes nothing, and ``retry_after`` says when the next one would pass."""
    bucket = TokenBucket(2.0, 3)
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.retry_after(100.0) == pytest.approx(0.5)
    assert not bucket.take(100.49)
    assert bucket.take(100.5) and not bucket.take(100.5)
    assert bucket.take(110.0) and bucket.take(110.0) and bucket.take(110.0) and not bucket.take(110.0)


def test_throttle_lets_one_line_through_per_interval_and_counts_the_rest() -> None:
    """At most one line per interval; the next one let through says how many were held back."""
    throttle = Throttle(10.0)
    assert throttle.allow(0.0) == 0
    assert throttle.allow(1.0) is None and throttle.allow(9.9) is None
    assert throttle.allow(10.0) == 2
