"""Giving the C heap's free memory back to the operating system (glibc's ``malloc_trim``).

Messages, request bodies and socket reads pass through buffers of every size, and glibc's malloc
keeps what they leave free inside its heaps: it gives back by itself only the free top of the main
heap.  A long-running process's resident memory then creeps up toward the high-water mark of that
fragmentation while what is in use stays flat (``bench/soak.py --memprobe`` shows both).  Every
``memory_trim_interval`` (default 10 s), ``malloc_trim(0)`` hands the whole free pages of every
arena back (``madvise``), so resident memory follows what is in use.  HAProxy trims the same way
(its ``no-memory-trimming`` turns that off; here ``memory_trim_interval = off``).

A trim walks the free lists and gives back what was freed since the last one: 1-2 ms for the
heap of a process relaying a few hundred busy pairs (the soak's numbers are in bench/README.rst,
"Where the RSS growth goes"), 0.02 % of a core at the default interval.  Where the C library has
no ``malloc_trim`` (not glibc) nothing runs.

CPython's cyclic collector keeps its default thresholds: a larger third one (full collections
rarer) cut a reconnect storm's CPU by a quarter but let Twisted's cycle of each closed upstream
connection pile up between full collections: in the soak RSS then grew 13 % in ten minutes
(bench/README.rst, "Reference cycles").
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.task import LoopingCall


def find_malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library has none."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


class HeapTrimmer(Service):
    """Trim the C heap every ``interval`` seconds (None: never) on ``clock``, while running."""

    def __init__(self, clock: Any, interval: float | None,
                 trim: Callable[[int], int] | None | bool = True,
                 timer: Callable[[], float] = time.perf_counter) -> None:
        """``trim``: the function to call (True: glibc's, found at start; None: there is none);
        ``timer``: what times each trim (the reactor's clock does not move during one)."""
        self.clock = clock
        self.interval = interval
        self._trim = find_malloc_trim() if trim is True else trim
        self._timer = timer
        self._loop: LoopingCall | None = None
        self.trims = 0  # how many ran (wsrelay_memory_trims_total)
        self.released = 0  # how many gave memory back
        self.seconds = 0.0  # time spent in them (wsrelay_memory_trim_seconds_total)

    @property
    def available(self) -> bool:
        return self._trim is not None

    @property
    def active(self) -> bool:
        return self._loop is not None

    def configure(self, interval: float | None) -> None:
        """A reloaded ``memory_trim_interval``: the next trim is a new interval away."""
        if interval == self.interval:
            return
        self.interval = interval
        if self.running:
            self._stop()
            self._start()

    def startService(self) -> None:
        super().startService()
        self._start()

    def stopService(self) -> Any:
        self._stop()
        return super().stopService()

    def trim(self) -> None:
        if self._trim is None:
            return
        start = self._timer()
        released = self._trim(0)
        self.seconds += self._timer() - start
        self.trims += 1
        self.released += bool(released)

    def _start(self) -> None:
        if self._trim is None or not self.interval:
            return
        self._loop = LoopingCall(self.trim)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=False)

    def _stop(self) -> None:
        if self._loop is not None:
            if self._loop.running:
                self._loop.stop()
            self._loop = None
