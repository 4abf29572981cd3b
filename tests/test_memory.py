"""Giving the C heap's free pages back (wsrelay.memory): the timer on a Clock, the key in the
configuration and on reload, and glibc's malloc_trim really lowering resident memory."""

from __future__ import annotations

import platform

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock

from wsrelay.config import ConfigError, parse
from wsrelay.memory import HeapTrimmer, find_malloc_trim
from wsrelay.service import RelayService

CONFIG = """
[wsrelay]
listen = tcp:0:interface=127.0.0.1
access_log = off
{trim}
[upstream up]
servers = 127.0.0.1:9
[route /]
upstream = up
"""

GLIBC = platform.libc_ver()[0] == "glibc"


class Trims:
    """A stand-in for malloc_trim: records the clock's time of each call."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.at: list[float] = []

    def __call__(self, pad: int) -> int:
        assert pad == 0  # keep nothing in reserve at the heap's top
        self.at.append(self.clock.seconds())
        return 1


def test_trims_every_interval_while_running_and_never_after() -> None:
    clock = Clock()
    trims = Trims(clock)
    heap = HeapTrimmer(clock, 10.0, trims)
    clock.advance(30)
    assert trims.at == []  # not before it is started
    heap.startService()
    assert heap.active and trims.at == []  # not at once: the first a whole interval later
    clock.advance(9.9)
    assert trims.at == []
    clock.advance(0.1)
    clock.advance(10)
    clock.advance(10)
    assert trims.at == [40.0, 50.0, 60.0] and heap.trims == heap.released == 3
    assert heap.seconds > 0  # timed with a real timer (the Clock stands still during a trim)
    heap.stopService()
    clock.advance(100)
    assert trims.at == [40.0, 50.0, 60.0] and not heap.active and not clock.getDelayedCalls()


def test_a_reload_sets_a_new_interval_or_turns_it_off() -> None:
    clock = Clock()
    trims = Trims(clock)
    heap = HeapTrimmer(clock, 10.0, trims)
    heap.startService()
    clock.advance(5)
    heap.configure(2.0)  # the next one is a new interval away
    clock.advance(2)
    clock.advance(2)
    assert trims.at == [7.0, 9.0]
    clock.advance(1)
    heap.configure(2.0)  # unchanged: the rhythm is kept
    clock.advance(1)
    assert trims.at == [7.0, 9.0, 11.0]
    heap.configure(None)
    clock.advance(60)
    assert not heap.active and not clock.getDelayedCalls()
    count = len(trims.at)
    heap.configure(30.0)
    clock.advance(30)
    assert len(trims.at) == count + 1


def test_nothing_runs_without_malloc_trim_or_with_it_off() -> None:
    clock = Clock()
    for heap in (HeapTrimmer(clock, 10.0, None), HeapTrimmer(clock, None, Trims(clock))):
        heap.startService()
        clock.advance(60)
        assert not heap.active and heap.trims == 0 and not clock.getDelayedCalls()
        heap.trim()  # on demand: nothing without malloc_trim, a trim with it
        assert heap.trims == (1 if heap.available else 0)
        heap.stopService()


@pytest.mark.parametrize("text, value", [("", 10.0), ("memory_trim_interval = 30s", 30.0),
                                         ("memory_trim_interval = off", None), ("memory_trim_interval = 1h", 3600.0)])
def test_the_key_and_its_default(text: str, value: float | None) -> None:
    assert parse(CONFIG.format(trim=text)).memory_trim_interval == value


@pytest.mark.parametrize("text", ["500ms", "2h", "often"])
def test_a_bad_interval_names_the_key(text: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse(CONFIG.format(trim=f"memory_trim_interval = {text}"))
    assert "memory_trim_interval" in str(e.value) and "[wsrelay]" in str(e.value)


def test_the_service_runs_one_and_a_reload_reaches_it() -> None:
    reactor = MemoryReactorClock()
    service = RelayService(parse(CONFIG.format(trim="memory_trim_interval = 20s")), reactor)
    assert service.heap.parent is service and service.heap.interval == 20.0
    for listener in service.config.listeners:  # as if listening (a memory reactor's ports cannot be watched)
        key = (listener.name, listener.endpoint)
        service.ports[key], service.sites[key] = object(), _Site()
    service.loader = lambda path: parse(CONFIG.format(trim="memory_trim_interval = off"))
    assert service.reload()
    assert service.heap.interval is None


class _Site:
    def use(self, listener: object) -> None:
        pass


@pytest.mark.skipif(not GLIBC, reason="malloc_trim is glibc's")
def test_malloc_trim_gives_freed_heap_pages_back() -> None:
    """64 MiB of 64 KiB buffers (below the mmap threshold: carved from the heap), interleaved with
    small blocks that stay, then freed: still resident, and one trim gives their pages back.

    glibc gives the free top of its heap back by itself when it passes M_TRIM_THRESHOLD; where the
    buffers end up at the top depends on what earlier tests left, so that is turned off for the
    test (and set back): the freed pages then stay until malloc_trim, wherever they are."""
    import ctypes

    trim = find_malloc_trim()
    assert trim is not None
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    m_trim_threshold = -1  # malloc.h
    assert mallopt(m_trim_threshold, 1 << 30) == 1
    try:
        trim(0)
        kept, freed = [], []
        for i in range(1024):
            freed.append(bytearray(64 * 1024))  # bytearray(n) is written (zeroed): resident
            kept.append(bytes(600 + i % 7))  # > 512 bytes: from malloc, not Python's small-object arenas
        high = _rss_kib()
        del freed
        before = _rss_kib()
        assert before > high - 16 * 1024, (high, before)  # freed, but still resident
        assert trim(0) == 1
        after = _rss_kib()
        assert after < before - 32 * 1024, (high, before, after)
        assert len(kept) == 1024
    finally:
        mallopt(m_trim_threshold, 128 * 1024)  # glibc's default


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")
