"""A reconnect storm in memory: how much of it is CPython's cyclic garbage collector.

Opens PAIRS relayed pairs through wsrelay's site and gateway on the in-memory harness of
``tests/test_cycles.py`` (socket-like transports, no sockets), then reconnects every one of them,
BATCH at a time: a batch of clients gone without a close (their upstreams answer wsrelay's 1001
and close) while as many new handshakes come in, wait for their upstreams and open.  The collector
runs as in a process (thresholds as given); ``gc.callbacks`` times each collection.  Prints, per
storm, the CPU time per reconnect, the collector's share of it, and the collections by generation
with the time each took.  ``--garbage``: the collector off instead, and the cyclic garbage and
tracked objects each reconnect adds.

Usage, from the repository root::

    .venv/bin/python bench/gcstorm.py [--pairs 5000] [--batch 200] [--storms 2]
                                      [--threshold 700,10,10] [--garbage] [--wsrelay DIR]

``--wsrelay DIR``: wsrelay imported from another checkout (a worktree of the base commit), the
harness from this one.  The harness's own objects (peers, transports, pumps) are about half of
what a pair holds here, so the shares are not a process's; compare runs with each other.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from typing import Any

from cycles import prefer_checkout  # bench/cycles.py: --wsrelay

prefer_checkout(sys.argv)

from tests.test_cycles import Peer, SocketHarness, Upstream  # noqa: E402
from tests.test_websocket import frame, handshake  # noqa: E402


class CollectorClock:
    """Collections by generation, and the CPU time they took (a ``gc.callbacks`` entry)."""

    def __init__(self) -> None:
        self.reset()
        self.began = 0.0

    def reset(self) -> None:
        self.counts = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self.began = time.process_time()
        else:
            self.counts[info["generation"]] += 1
            self.seconds[info["generation"]] += time.process_time() - self.began


class Storm:
    """Pairs opened and dropped a batch at a time; each pair is ``(client, upstream, pumps)``."""

    def __init__(self, batch: int) -> None:
        self.h = SocketHarness()
        self.batch = batch

    def run(self, pumps: list[Any]) -> None:
        """Move the bytes of these connections only (a batch's, not every pair's)."""
        self.h.pumps = pumps
        self.h.settle()
        self.h.pumps = []

    def open(self, n: int) -> list[Any]:
        h, opened = self.h, []
        for start in range(0, n, self.batch):
            batch = []
            for _ in range(min(self.batch, n - start)):
                client = Peer()
                h.connect_client(client)
                client.transport.write(handshake())
                batch.append((client, Upstream(), [h.pumps[-1]]))
            self.run([b[2][0] for b in batch])  # every handshake waits for its upstream
            attempts = h.clock.tcpClients[:]
            h.clock.tcpClients.clear()
            h.clock.connectors.clear()
            for (_, upstream, pumps), attempt in zip(batch, attempts):
                h.clock.tcpClients.append(attempt)
                h.accept_raw(upstream)
                pumps.append(h.pumps.pop())
                h.clock.tcpClients.clear()
            self.run([p for b in batch for p in b[2]])
            opened += batch
        h.log.clear()
        return opened

    def drop(self, batch: list[Any]) -> None:
        for client, _, _ in batch:
            client.transport.loseConnection()
        self.run([p for b in batch for p in b[2]])
        for _, upstream, _ in batch:
            upstream.transport.write(frame(8, b"\x03\xe9", mask=False))
            upstream.transport.loseConnection()
        self.run([p for b in batch for p in b[2]])

    def reconnect(self, pairs: list[Any]) -> list[Any]:
        new: list[Any] = []
        for start in range(0, len(pairs), self.batch):
            self.drop(pairs[start:start + self.batch])
            new += self.open(min(self.batch, len(pairs) - start))
        assert len(self.h.gateway.live) == len(new)
        return new


def garbage_since(tracked: int, n: int) -> tuple[float, float]:
    """Per reconnect (``n``), the objects of cyclic garbage and the GC-tracked objects added since
    there were ``tracked``; the collector was off and is turned on again."""
    added = len(gc.get_objects()) - tracked
    gc.set_debug(gc.DEBUG_SAVEALL)
    gc.collect()
    found = len(gc.garbage)
    gc.set_debug(0)
    gc.garbage.clear()
    gc.collect()  # what was saved is garbage again
    gc.enable()
    return found / n, added / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=200, help="handshakes in flight at a time")
    parser.add_argument("--storms", type=int, default=2)
    parser.add_argument("--threshold", default="700,10,10", help="gc.set_threshold's three values")
    parser.add_argument("--garbage", action="store_true", help="collector off: count the cyclic garbage")
    parser.add_argument("--wsrelay", metavar="DIR", help="import wsrelay from this checkout")
    args = parser.parse_args()
    import wsrelay

    gc.set_threshold(*(int(x) for x in args.threshold.split(",")))
    storm = Storm(args.batch)
    pairs = storm.open(args.pairs)
    gc.collect()
    print(f"wsrelay from {os.path.dirname(os.path.dirname(os.path.abspath(wsrelay.__file__)))}: "
          f"{args.pairs} pairs, thresholds {gc.get_threshold()}, {len(gc.get_objects())} tracked objects")
    clock = CollectorClock()
    gc.callbacks.append(clock)
    for i in range(1, args.storms + 1):
        clock.reset()
        if args.garbage:
            gc.disable()
            tracked = len(gc.get_objects())
        began = time.process_time()
        pairs = storm.reconnect(pairs)  # the old pairs are let go here
        total, n, spent = time.process_time() - began, len(pairs), sum(clock.seconds)
        if args.garbage:
            garbage, added = garbage_since(tracked, n)
            print(f"storm {i}, collector off: {garbage:.1f} objects of cyclic garbage and {added:.1f} tracked"
                  f" objects added per reconnect")
            continue
        each = [round(s / c * 1000, 1) if c else 0 for s, c in zip(clock.seconds, clock.counts)]
        print(f"storm {i}: {total / n * 1000:.3f} ms CPU per reconnect, collector {spent / n * 1000:.3f} ms"
              f" ({spent / total:.0%}); collections by generation {clock.counts}, ms each {each}")
    gc.callbacks.remove(clock)


if __name__ == "__main__":
    main()
