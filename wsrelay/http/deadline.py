"""A deadline per connection or exchange, on one lazily moved timer.

The call is made after the reactor has read what arrived (``wsrelay.timers``): a request, a
body's bytes or a response that came while wsrelay was held up past the deadline are not taken
for missing.

Deadlines are set far more often than they expire (every request, every body read), and a
Twisted ``DelayedCall`` costs a heap push to create and a reschedule to reset.  So setting a
deadline only records when it is due and what to call; one ``DelayedCall`` fires, re-schedules
itself if the deadline in force is later, and is moved earlier only when a new deadline is sooner.

The call is usually a bound method of the deadline's owner, which holds the deadline: a reference
cycle.  So a deadline lets go of its call when it is cleared, stopped or has fired, and an owner
that ends leaves nothing for CPython's cyclic garbage collector.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class Deadline:
    """At most one deadline in force: ``set`` replaces it, ``clear`` removes it, ``stop`` also
    drops the timer (the owner is ending: nothing of it is kept alive by the reactor)."""

    __slots__ = ("reactor", "timer", "due", "call", "kind")

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.timer: Any = None
        self.due: float | None = None
        self.call: Callable[[], object] | None = None
        self.kind = ""

    def set(self, seconds: float, call: Callable[[], object], kind: str = "") -> None:
        self.kind = kind
        self.call = call
        self.due = due = self.reactor.seconds() + seconds
        timer = self.timer
        if timer is None:
            self.timer = self.reactor.callLater(seconds, self._fired)
        elif timer.getTime() > due:
            timer.reset(seconds)

    def clear(self) -> None:
        self.due = None
        self.call = None
        self.kind = ""

    def stop(self) -> None:
        self.clear()
        timer, self.timer = self.timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _fired(self) -> None:
        self.timer = None
        due = self.due
        if due is None:
            return
        now = self.reactor.seconds()
        if now < due:
            self.timer = self.reactor.callLater(due - now, self._fired)
            return
        self.timer = self.reactor.callLater(0, self._judged)  # after this turn's reads

    def _judged(self) -> None:
        self.timer = None
        due, call = self.due, self.call
        if due is None or call is None:  # what was read settled it
            return
        now = self.reactor.seconds()
        if now < due:  # moved later meanwhile
            self.timer = self.reactor.callLater(due - now, self._fired)
            return
        self.due, self.call = None, None
        call()
