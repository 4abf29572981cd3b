"""The soak's memory probe: turn it on for the proxy (``enable``) and read what it wrote (``summary``).

The probe itself is ``sitecustomize.py`` here, which the proxy's Python imports at start-up when
this directory is on its ``PYTHONPATH``.
"""

from __future__ import annotations

import json
import os
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))


def enable(mode: str, out: str) -> str | None:
    """Set the environment the proxy inherits so that it probes itself into ``out``."""
    if mode == "off":
        return None
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (HERE, os.environ.get("PYTHONPATH")) if p)
    os.environ["WSRELAY_MEMPROBE"] = out
    if mode == "trace":
        os.environ["WSRELAY_MEMPROBE_TRACE"] = "1"
    return out


def load(path: str) -> list[dict[str, Any]]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def summary(path: str, warmup_s: float) -> str:
    """The memory figures at the end of the warm-up and at the end, and the types that grew."""
    try:
        rows = load(path)
    except OSError as e:
        return f"memprobe: nothing to read ({e})"
    if not rows:
        return "memprobe: no samples"
    start = min(rows, key=lambda r: abs(r["t"] - warmup_s))
    end = max((r for r in rows if r["rss_kib"]), key=lambda r: r["t"])
    keys = ("rss_kib", "brk_rss_kib", "anon_rss_kib", "py_blocks", "heap_kib", "used_kib", "free_kib", "mmap_kib")
    out = ["Memory probe (inside the proxy; KiB but py_blocks, the live blocks of Python's allocator):",
           f"  {'':<10}" + "".join(f"{k.replace('_kib', ''):>12}" for k in ("t",) + keys)]
    for label, r in (("warmed up", start), ("last", end)):
        out.append(f"  {label:<10}" + "".join(f"{r.get(k, ''):>12}" for k in ("t",) + keys))
    typed = [r for r in rows if "types" in r]
    if len(typed) >= 2:
        a = min(typed, key=lambda r: abs(r["t"] - warmup_s))
        b = typed[-1]
        ca, cb = dict(a["types"]), dict(b["types"])
        grew = sorted(((cb.get(k, 0) - ca.get(k, 0), k) for k in set(ca) | set(cb)), reverse=True)[:12]
        if "trims" in b:
            count, seconds, interval = b["trims"]
            out.append(f"  heap trims (memory_trim_interval {interval} s): {count} in {seconds * 1000:.1f} ms, "
                       f"{seconds * 1e6 / max(count, 1):.0f} us each")
        out.append(f"  objects the collector tracks: {a.get('objects')} at {a['t']} s, {b.get('objects')} at {b['t']} s; "
                   "most grown: " + ", ".join(f"{k} {d:+d}" for d, k in grew if d))
    return "\n".join(out)
