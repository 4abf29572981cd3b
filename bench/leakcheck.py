"""What stays allocated after relayed WebSocket pairs and HTTP requests end, in memory.

Runs wsrelay's gateway and site on the test suite's in-memory harness (tests/test_websocket.py:
a fake clock, iosim connections, Autobahn peers), opens and closes ROUNDS relayed pairs (a
message each way, a clean close) and as many HTTP requests on fresh connections, once to warm
up and once under tracemalloc, and prints what grew between the two snapshots, by allocation
site.  The harness's own records (the memory reactor's connection lists, the access log it
keeps, its pumps) are emptied between rounds, so what remains is what wsrelay (or a library
under it) keeps.  Usage, from the repository root::

    .venv/bin/python bench/leakcheck.py [ROUNDS]     (default 1000; about a minute)

It complements the soak (``soak.py``), whose RSS also moves with the allocator's arenas.
"""

from __future__ import annotations

import gc
import os
import sys
import tracemalloc

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.test_security import HTTPUpstream, get  # noqa: E402
from tests.test_websocket import Harness, open_pair  # noqa: E402


def rounds(h: Harness, n: int) -> None:
    for _ in range(n):
        client, _ = open_pair(h)
        client.sendMessage(b"hello")
        h.settle()
        client.sendClose(1000)
        h.advance(0.2)
        before = h.attempts()
        raw = h.raw_client(get(b"/x"))
        h.clock.advance(0)
        if h.attempts() > before:  # else a pooled upstream connection took it
            h.accept_raw(HTTPUpstream())
        h.advance(0.1)
        raw.transport.loseConnection()
        h.settle()
    for kept in (h.pumps, h.upstreams, h.clock.tcpClients, h.clock.connectors, h.log):
        kept.clear()  # the harness's records, not wsrelay's
    gc.collect()


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    h = Harness()
    rounds(h, n // 5)
    tracemalloc.start(10)
    before = tracemalloc.take_snapshot()
    rounds(h, n)
    after = tracemalloc.take_snapshot()
    grown = [s for s in after.compare_to(before, "traceback") if s.size_diff > 0]
    print(f"{n} pairs and {n} requests: live exchanges {len(h.gateway.live)}, channels {len(h.site.channels)}, "
          f"grown {sum(s.size_diff for s in grown) / 1024:.1f} KiB in {sum(s.count_diff for s in grown)} blocks")
    for stat in grown[:8]:
        print(f"  +{stat.size_diff / 1024:.1f} KiB in {stat.count_diff} blocks, allocated at:")
        for line in stat.traceback.format()[-6:]:
            print("     ", line)


if __name__ == "__main__":
    main()
