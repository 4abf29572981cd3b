"""Memory probe for the soak: where a wsrelay process's resident memory goes, sampled from inside.

Not part of wsrelay.  ``bench/soak.py --memprobe`` puts this directory first on the proxy's
``PYTHONPATH``, so Python imports this file at start-up (``sitecustomize``); it does nothing unless
``WSRELAY_MEMPROBE`` names an output file.  Then a daemon thread appends one JSON line every
``WSRELAY_MEMPROBE_EVERY`` seconds (default 10):

* ``rss_kib``: VmRSS, and by kind of mapping: ``brk_rss_kib`` (glibc's main heap),
  ``anon_rss_kib`` (Python's object arenas, mmapped blocks, thread arenas), ``file_rss_kib``,
  ``other_rss_kib``; ``py_blocks``: ``sys.getallocatedblocks()`` (live objects of Python's own
  allocator);
* glibc's view (``mallinfo2``): ``heap_kib`` (the main and thread arenas, from brk and mmap),
  ``used_kib`` (allocated in them), ``free_kib`` (free in them: fragmentation, or memory not yet
  given back), ``mmap_kib`` (large blocks mapped one by one), ``top_kib`` (free at the heap's top,
  releasable by trimming);
* every ``WSRELAY_MEMPROBE_TYPES_EVERY`` seconds (default 60): the number of live objects per
  type that the garbage collector tracks, the 40 most numerous, and ``trims``: wsrelay's heap
  trims so far, the seconds they took, and ``memory_trim_interval``.

With ``WSRELAY_MEMPROBE_TRACE=1`` the process also runs ``tracemalloc`` (one frame) and each types
sample carries the 25 source lines holding the most memory (slow: a bench of its own).
"""

from __future__ import annotations

import os
import sys

_OUT = os.environ.get("WSRELAY_MEMPROBE")


def _start(out: str) -> None:
    import collections
    import ctypes
    import gc
    import json
    import threading
    import time

    every = float(os.environ.get("WSRELAY_MEMPROBE_EVERY", "10"))
    types_every = float(os.environ.get("WSRELAY_MEMPROBE_TYPES_EVERY", "60"))
    trace = os.environ.get("WSRELAY_MEMPROBE_TRACE") == "1"
    if trace:
        import tracemalloc
        tracemalloc.start(1)

    class Mallinfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
            "fordblks", "keepcost")]

    libc = ctypes.CDLL(None)
    mallinfo2 = getattr(libc, "mallinfo2", None)
    if mallinfo2 is not None:
        mallinfo2.restype = Mallinfo2

    def rss_kib() -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def rss_by_kind() -> dict:
        """Resident KiB by kind of mapping (/proc/self/smaps): glibc's main heap ([heap], brk),
        anonymous mappings (Python's 1 MiB object arenas, glibc's mmapped blocks and thread
        arenas), files (code and libraries), the rest (stacks, vdso)."""
        kinds = {"brk": 0, "anon": 0, "file": 0, "other": 0}
        kind = "other"
        with open("/proc/self/smaps") as f:
            for line in f:
                first = line.split(None, 6)
                if len(first) >= 5 and "-" in first[0] and first[0][0] in "0123456789abcdef" and not line[0].isupper():
                    name = first[5].strip() if len(first) > 5 else ""
                    kind = ("brk" if name == "[heap]" else "anon" if not name
                            else "other" if name.startswith("[") else "file")
                elif line.startswith("Rss:"):
                    kinds[kind] += int(line.split()[1])
        return {f"{k}_rss_kib": v for k, v in kinds.items()}

    def sample(t0: float, with_types: bool) -> dict:
        s = {"t": round(time.time() - t0, 1), "rss_kib": rss_kib(), "py_blocks": sys.getallocatedblocks(),
             "gc_counts": gc.get_count()}
        s.update(rss_by_kind())
        if mallinfo2 is not None:
            m = mallinfo2()
            s.update(heap_kib=m.arena // 1024, used_kib=m.uordblks // 1024, free_kib=m.fordblks // 1024,
                     mmap_kib=m.hblkhd // 1024, top_kib=m.keepcost // 1024)
        if with_types:
            objects = gc.get_objects()
            counts = collections.Counter(type(o).__name__ for o in objects)
            for o in objects:  # wsrelay.memory's trimmer: how many trims, and their time
                if type(o).__name__ == "HeapTrimmer":
                    s["trims"] = [o.trims, round(o.seconds, 6), o.interval]
            del objects
            s["types"] = counts.most_common(40)
            s["objects"] = sum(counts.values())
            if trace:
                snap = tracemalloc.take_snapshot()
                s["traced_kib"] = tracemalloc.get_traced_memory()[0] // 1024
                s["lines"] = [[str(st.traceback[0]), st.size // 1024, st.count]
                              for st in snap.statistics("lineno")[:25]]
        return s

    def run() -> None:
        t0 = time.time()
        next_types = 0.0
        while True:
            now = time.time() - t0
            with_types = now >= next_types
            if with_types:
                next_types += types_every
            line = json.dumps(sample(t0, with_types))
            with open(out, "a") as f:
                f.write(line + "\n")
            time.sleep(every)

    threading.Thread(target=run, name="memprobe", daemon=True).start()


if _OUT and any(arg == "wsrelay" for arg in sys.argv):
    _start(_OUT)
