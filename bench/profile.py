#!/usr/bin/env python3
"""Profile wsrelay (relay mode, workers = 1) with py-spy under two of the benchmark's loads.

    bench/.venv/bin/python bench/profile.py --py-spy /path/to/py-spy [--duration 20]

Starts the same upstreams and the same generated wsrelay configuration as bench.py (pinned the
same way), then, for "WebSocket 64 B throughput" (route /ws/, relay mode) and "HTTP small GET"
(wrk), runs the load and ``py-spy record -p PID -f raw -d DURATION`` at the same time.  Writes the
raw py-spy output and ``<out>/profile-<timestamp>.txt``: the top self-time entries (function,
file; line numbers merged) and self time per package.  py-spy needs ptrace rights (root, or
``kernel.yama.ptrace_scope = 0``); it is not installed by run.sh: ``pip install py-spy`` into any
venv and pass its path.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import os
import re
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import bench


def parse_raw(text: str) -> tuple[int, collections.Counter[str], collections.Counter[str]]:
    """py-spy raw (collapsed stacks) -> total samples, self samples per function, per package."""
    total = 0
    by_func: collections.Counter[str] = collections.Counter()
    by_pkg: collections.Counter[str] = collections.Counter()
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        leaf = stack.split(";")[-1]
        m = re.match(r"^(.*) \((.*?)(?::\d+)?\)$", leaf)
        func, path = (m.group(1), m.group(2)) if m else (leaf, "?")
        short = path.split("site-packages/")[-1]
        if "/wsrelay/" in short:
            short = "wsrelay/" + short.split("/wsrelay/")[-1]
        by_func[f"{func} ({short})"] += n
        parts = short.split("/")
        pkg = "/".join(parts[:2]) if parts[0] in ("twisted", "autobahn", "wsrelay") and len(parts) > 2 else parts[0]
        if pkg.endswith(".py") and "/" not in pkg:
            pkg = "stdlib " + pkg
        by_pkg[pkg] += n
    return total, by_func, by_pkg


def render(name: str, total: int, by_func: collections.Counter[str], by_pkg: collections.Counter[str],
           top: int) -> str:
    lines = [name, "-" * len(name), "", f"{total} samples (active only).", ""]
    rows = [[str(i + 1), f"{100.0 * n / total:.1f}", f[:110]] for i, (f, n) in enumerate(by_func.most_common(top))]
    lines.append(bench.report.table(["#", "self %", "function (file)"], rows))
    rows = [[p, f"{100.0 * n / total:.1f}"] for p, n in by_pkg.most_common(12)]
    lines.append(bench.report.table(["package / module", "self %"], rows))
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--py-spy", default="py-spy")
    p.add_argument("--duration", type=int, default=20)
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    own = p.parse_args(argv)
    args = bench.parse_args(["--runs", "1", "--duration", str(own.duration), "--out", own.out])
    os.sched_setaffinity(0, {int(c) for c in args.load_cpus.split(",")})
    bench.raise_nofile()
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    workdir = tempfile.mkdtemp(prefix="wsrelay-profile-")
    procs = bench.Procs(workdir)
    b = bench.Bench(args, workdir, procs)
    sections = []
    os.makedirs(own.out, exist_ok=True)
    try:
        b.start_upstreams()
        port = b.start_proxy("wsrelay", 1)
        pid = b.proxy.pid
        ws_url, http = b.base_urls(port, "/ws/echo")
        length = own.duration + 4
        size, conns, window = bench.WS_THR["ws_64B"]
        loads = {
            "ws_64B": [args.node, bench.WSLOAD, json.dumps({
                "mode": "thr", "url": ws_url, "size": size, "conns": conns, "window": window,
                "warmup": 1, "duration": length})],
            "ws_1MiB": [args.node, bench.WSLOAD, json.dumps({
                "mode": "thr", "url": ws_url, "size": bench.WS_THR["ws_1MiB"][0], "conns": bench.WS_THR["ws_1MiB"][1],
                "window": bench.WS_THR["ws_1MiB"][2], "warmup": 1, "duration": length})],
            "http_small": [args.wrk, "-t1", f"-c{bench.HTTP['http_small'][1]}", f"-d{length + 1}s",
                           "--timeout", "10s", "-s", bench.WRK_LUA, http["/small"]],
        }
        for name, cmd in loads.items():
            print(f"[{time.strftime('%H:%M:%S')}] profiling wsrelay (pid {pid}) under {name}", flush=True)
            load = procs.spawn(f"load-{name}", cmd, cpus=args.load_cpus, pipe=True)
            time.sleep(2.0)
            raw = os.path.join(own.out, f"profile-{stamp}-{name}.raw.txt")
            spy = subprocess.run(["taskset", "-c", args.load_cpus, own.py_spy, "record", "-p", str(pid),
                                  "-f", "raw", "-d", str(own.duration), "-o", raw],
                                 capture_output=True, text=True, timeout=own.duration + 60, check=False)
            if spy.returncode != 0:
                print(spy.stdout + spy.stderr, file=sys.stderr)
                raise bench.BenchError(f"py-spy failed with status {spy.returncode}")
            load.wait(length + 30)
            procs.stop(load)
            with open(raw) as f:
                total, by_func, by_pkg = parse_raw(f.read())
            sections.append(render(f"wsrelay relay mode, {name}", total, by_func, by_pkg, own.top))
            print(sections[-1], flush=True)
        b.stop_proxy("wsrelay (profile)")
    except bench.BenchError as e:
        print(f"profile: {e}", file=sys.stderr)
        return 1
    finally:
        procs.stop_all()
    path = os.path.join(own.out, f"profile-{stamp}.txt")
    with open(path, "w") as f:
        f.write("\n\n".join(sections))
        if b.problems:
            f.write("\nProblems: " + "; ".join(f"[{x['where']}] {x['what']}" for x in b.problems) + "\n")
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
