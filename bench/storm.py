#!/usr/bin/env python3
"""wsrelay capacity and reconnect storm: N idle relayed pairs, 1 % active, then every client at once.

Run through ``sh bench/run.sh storm [options]`` (which installs what this needs), or directly::

    bench/.venv/bin/python bench/storm.py [--pairs 9500] [--only direct,nginx,wsrelay] [--workers 1]
                                          [--twistd-alt OTHER_VENV/bin/twistd]

For each proxy in turn (``direct``: no proxy, the load side's own limit; ``nginx``: the usual
WebSocket recipe; ``wsrelay``: relay mode; ``wsrelay-alt``: the same with ``--twistd-alt``'s
wsrelay, for an A/B of two versions in one run; all with ``--workers`` processes and a listen
backlog of 4096, configs.py):

1. ``--generators`` load generators (``wsload.js`` mode ``storm``), each from its own loopback
   source address (127.0.0.10, .11, ...), open ``--pairs`` WebSockets in all, at most 100
   handshakes at a time each, through the proxy to ``--upstreams`` Node.js echo servers
   (``upstream.js``, round robin), so that no process needs more than its descriptor limit and no
   source address runs out of ports;
2. they hold them ``--hold`` seconds, ``--active`` of them (1 %) sending a 64-byte message each
   second; the proxy's RSS and descriptors are read (KiB per pair);
3. the storm: every generator is told at the same moment to drop all its connections (socket
   destroyed, as when a deploy cuts them) and open them all again at once; a failed attempt is
   retried after 100-300 ms.  Measured: the time until all N are open again, handshakes per
   second, failed attempts by kind, p50/p99 of the per-client reconnect time; then, after a few
   seconds, the proxy's descriptors (the old pairs must be gone: about 2 per pair) and the
   upstreams' (1 per pair);
4. ``--storms`` storms (default 2), then every connection is closed and the proxy stopped; its
   log is scanned (warnings, errors, tracebacks).

Proxy on core 0 (``--proxy-cpus``), generators and upstreams on core 1, as ``bench.py``; with
``--workers 2`` pin nothing (``--no-pin``).  Results: ``<out>/storm-<timestamp>.json`` and ``.txt``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import configs
import procstat

import bench


class Storm(bench.Bench):
    def __init__(self, args: argparse.Namespace, workdir: str, procs: bench.Procs) -> None:
        super().__init__(args, workdir, procs)
        self.results: dict[str, dict[str, Any]] = {}

    def start_upstreams(self) -> None:
        self.ws_ports: list[int] = []
        self.upstreams = []
        for i in range(self.args.upstreams):
            proc = self.procs.spawn(f"upstream-{i}", [self.args.node, bench.UPSTREAM_JS, "0"],
                                    cpus=self.load_cpus, pipe=True)
            self.ws_ports.append(int(proc.expect("LISTENING", 15).split()[1]))
            self.upstreams.append(proc)
        self.upstream_roots = [p.pid for p in self.upstreams]
        self.origin_port = self.ws_port = 0  # no HTTP origin here

    def nginx_conf(self, kind: str, stamp: str, port: int, workers: int) -> str:
        return configs.storm_nginx(self.workdir, stamp, port, self.ws_ports, workers=workers,
                                   connections=self.nginx_connections(), nofile=self.nofile)

    def wsrelay_conf(self, port: int, workers: int, kind: str = "wsrelay", stamp: str = "wsrelay") -> str:
        return configs.storm_wsrelay_ini(port, self.ws_ports, workers=workers)

    def state(self) -> dict[str, Any]:
        pids = procstat.tree(self.proxy_roots())
        return {"rss_kib": procstat.rss_bytes(pids) // 1024, "fds": procstat.fd_count(pids),
                "cpu_s": procstat.cpu_seconds(pids), "processes": len(pids),
                "upstream_fds": procstat.fd_count(procstat.tree(self.upstream_roots)),
                "loadavg": bench.read_text("/proc/loadavg").split()[:3]}

    def run_proxy(self, name: str) -> None:
        a = self.args
        label = f"{name} ({a.pairs} pairs, workers {a.workers})"
        print(f"[{time.strftime('%H:%M:%S')}] {label}", flush=True)
        out: dict[str, Any] = {"pairs": a.pairs, "workers": a.workers}
        self.results[name] = out
        gens: list[bench.Proc] = []
        try:
            port = self.start_proxy(name, a.workers)
            time.sleep(1.0)
            if name == "direct":
                urls = [f"ws://127.0.0.1:{self.ws_ports[i % len(self.ws_ports)]}/ws/echo" for i in range(a.generators)]
            else:
                urls = [f"ws://127.0.0.1:{port}/ws/echo"] * a.generators
            base = self.state()
            out["base"] = base
            share = [a.pairs // a.generators + (1 if i < a.pairs % a.generators else 0) for i in range(a.generators)]
            t0 = time.monotonic()
            for i, n in enumerate(share):
                opts = {"mode": "storm", "url": urls[i], "count": n, "parallel": 100, "local": f"127.0.0.{10 + i}",
                        "active": round(n * a.active), "guard": 3600}
                gens.append(self.procs.spawn(f"storm-gen{i}", [a.node, bench.WSLOAD, json.dumps(opts)],
                                             cpus=self.load_cpus, pipe=True, stdin=True))
            opened = [json.loads(g.expect("OPEN", 600)[5:]) for g in gens]
            out["open_s"] = round(time.monotonic() - t0, 2)
            out["open_errors"] = merge([o["errors"] for o in opened])
            out["opened"] = sum(o["open"] for o in opened)
            time.sleep(a.hold)
            held = self.state()
            out["held"] = held
            out["kib_per_pair"] = round((held["rss_kib"] - base["rss_kib"]) / max(out["opened"], 1), 2)
            print(f"  {out['opened']} of {a.pairs} open in {out['open_s']} s; RSS {held['rss_kib'] / 1024:.1f} MiB "
                  f"({out['kib_per_pair']} KiB/pair), fds {held['fds']}, upstream fds {held['upstream_fds']}",
                  flush=True)
            if out["opened"] != a.pairs:
                self.problem(label, f"only {out['opened']} of {a.pairs} pairs open", [json.dumps(out["open_errors"])])
            out["storms"] = [self.storm(label, gens) for _ in range(a.storms)]
            for g in gens:
                g.send("count")
            counts = [json.loads(g.expect("COUNT", 60)[6:]) for g in gens]
            echo = merge([c["echo"] for c in counts])
            out["active_echo"] = echo
            if echo.get("bad") or echo.get("sent", 0) - echo.get("back", 0) > len(gens) * round(a.pairs * a.active / a.generators) + 1:
                self.problem(label, f"active pairs: {echo}")
            for g in gens:
                g.send("close")
            for g in gens:
                g.wait(60)
        except bench.BenchError as e:
            self.problem(label, str(e))
        finally:
            for g in gens:
                self.procs.stop(g, timeout=5)
            self.stop_proxy(label)

    def storm(self, label: str, gens: list[bench.Proc]) -> dict[str, Any]:
        before = self.state()
        t0 = time.monotonic()
        for g in gens:
            g.send("storm")
        # wait for every generator's STORMED (bounded), reading the proxy's descriptors meanwhile
        got: dict[int, dict[str, Any]] = {}
        timeline: list[tuple[float, int]] = []
        while len(got) < len(gens) and time.monotonic() - t0 < self.args.storm_timeout:
            timeline.append((round(time.monotonic() - t0, 1), procstat.fd_count(procstat.tree(self.proxy_roots()))))
            for i, g in enumerate(gens):
                if i not in got:
                    try:
                        got[i] = json.loads(g.expect("STORMED", 0.5)[8:])
                    except bench.BenchError as e:
                        if "no 'STORMED' line within" not in str(e):
                            raise
        if len(got) < len(gens):
            for g in gens:
                g.send("count")
            now = [json.loads(g.expect("COUNT", 60)[6:]) for g in gens]
            res = {"completed": False, "timeout_s": self.args.storm_timeout, "open": sum(c["open"] for c in now),
                   "attempts": sum(c["attempts"] for c in now), "errors": merge([c["errors"] for c in now]),
                   "timeline": timeline}
            res["failed_attempts"] = sum(res["errors"].values())
            self.problem(label, f"storm: only {res['open']} of {self.args.pairs} open again after "
                         f"{self.args.storm_timeout:g} s; failed attempts {res['errors']}")
            return res
        done = list(got.values())
        start = min(d["start"] for d in done)
        end = max(d["end"] for d in done)
        seconds = (end - start) / 1000
        errors = merge([d["errors"] for d in done])
        n = sum(d["open"] for d in done)
        time.sleep(self.args.settle)
        after = self.state()
        res = {
            "seconds": round(seconds, 3), "open": n, "handshakes_per_s": round(n / seconds, 1) if seconds else None,
            "attempts": sum(d["attempts"] for d in done), "errors": errors, "failed_attempts": sum(errors.values()),
            "p50_ms": statistics.median(d["p50_ms"] for d in done), "p99_ms": max(d["p99_ms"] for d in done),
            "proxy_cpu_s": round(after["cpu_s"] - before["cpu_s"], 2), "fds_after": after["fds"],
            "upstream_fds_after": after["upstream_fds"], "rss_kib_after": after["rss_kib"],
            "per_generator_ms": [d["end"] - d["start"] for d in done], "loadavg": after["loadavg"],
            "completed": True, "timeline": timeline,
        }
        print(f"  storm: {n} open again in {seconds:.2f} s ({res['handshakes_per_s']}/s), failed attempts "
              f"{res['failed_attempts']} {errors}, p50 {res['p50_ms']} ms p99 {res['p99_ms']} ms; after "
              f"{self.args.settle:g} s: fds {after['fds']}, upstream fds {after['upstream_fds']}, "
              f"RSS {after['rss_kib'] / 1024:.1f} MiB", flush=True)
        return res


def merge(dicts: list[dict[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = out.get(k, 0) + v
    return out


def render(data: dict[str, Any]) -> str:
    m, a = data["meta"], data["meta"]["args"]
    lines = [(f"wsrelay reconnect storm, {a['pairs']} pairs, workers {a['workers']}, {a['generators']} generators, "
             f"{a['upstreams']} upstreams, {m['date']} (git {m['git']}); load average "
             f"{' '.join(m['loadavg_start'])} at start, {' '.join(m['loadavg_end'])} at end"), "",
             ("proxy       opened  open s  RSS MiB  KiB/pair  fds held | storm s  handshakes/s  failed  p50 ms  p99 ms"
             "  CPU s  CPU ms/reconnect  fds after  upstream fds")]
    for name, r in data["results"].items():
        first = (f"{name:<11} {r['opened']:6d} {r['open_s']:7.2f} {r['held']['rss_kib'] / 1024:8.1f} "
                 f"{r['kib_per_pair']:9.2f} {r['held']['fds']:9d}") if r.get("storms") else ""
        blank = " " * len(first)
        for i, s in enumerate(r.get("storms", [])):
            head = first if i == 0 else blank
            if not s.get("completed", True):
                lines.append(f"{head} | not all open again within {s['timeout_s']:g} s: {s['open']} open, "
                             f"{s['failed_attempts']} failed attempts {s['errors']}")
                continue
            lines.append(f"{head} | {s['seconds']:7.2f} {s['handshakes_per_s'] or 0:13.0f} {s['failed_attempts']:7d} "
                         f"{s['p50_ms']:7.0f} {s['p99_ms']:7.0f} {s['proxy_cpu_s']:6.1f} "
                         f"{1000 * s['proxy_cpu_s'] / max(s['open'], 1):17.3f} {s['fds_after']:10d} "
                         f"{s['upstream_fds_after']:13d}")
            if s["errors"]:
                lines.append(f"{blank}   failed attempts: {s['errors']}")
    for p in data["problems"]:
        lines.append(f"PROBLEM [{p['where']}] {p['what']}")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=int, default=9500, help="idle pairs (default 9500: the descriptor limit "
                   "of 20,000 holds two per pair in one process)")
    p.add_argument("--only", default="direct,nginx,wsrelay",
                   help="proxies, in order (direct, nginx, wsrelay, wsrelay-alt: --twistd-alt's)")
    p.add_argument("--workers", type=int, default=1, help="proxy processes (default 1)")
    p.add_argument("--generators", type=int, default=4, help="load generator processes (default 4)")
    p.add_argument("--upstreams", type=int, default=2, help="echo upstream processes (default 2)")
    p.add_argument("--active", type=float, default=0.01, help="share of pairs sending a message a second (0.01)")
    p.add_argument("--hold", type=float, default=10.0, help="seconds to hold the pairs before the storms")
    p.add_argument("--storms", type=int, default=2, help="storms per proxy (default 2)")
    p.add_argument("--settle", type=float, default=5.0, help="seconds after a storm before reading descriptors")
    p.add_argument("--storm-timeout", type=float, default=300.0, help="seconds a storm may take (default 300)")
    bench.add_common_args(p)
    args = p.parse_args(argv)
    args.only = args.only.split(",")
    if args.twistd_alt and "wsrelay-alt" not in args.only:
        args.only.append("wsrelay-alt")
    if "wsrelay-alt" in args.only and not args.twistd_alt:
        p.error("instance wsrelay-alt needs --twistd-alt PATH")
    for name in args.only:
        if name not in ("direct", "nginx", "wsrelay", "wsrelay-alt"):
            p.error(f"unknown proxy {name!r}")
    if args.no_pin or len(os.sched_getaffinity(0)) < 2:
        args.proxy_cpus = args.load_cpus = None
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    stamp, workdir, nofile = bench.prepare(args, "storm")
    per_proxy = 2 * args.pairs // args.workers + 100
    if nofile < per_proxy:
        print(f"storm: open-file limit {nofile} < {per_proxy} ({args.pairs} pairs over {args.workers} "
              f"worker(s) take 2 descriptors each)", file=sys.stderr)
        shutil.rmtree(workdir, ignore_errors=True)
        return 2
    procs = bench.Procs(workdir)
    storm = Storm(args, workdir, procs)
    info = bench.meta(args)
    print(f"wsrelay storm {stamp}: {args.pairs} pairs, {', '.join(args.only)}; open-file limit {nofile}", flush=True)
    status = 0
    try:
        storm.start_upstreams()
        for name in args.only:
            storm.check_upstreams()
            storm.run_proxy(name)
    except KeyboardInterrupt:
        status = 130
    except bench.BenchError as e:
        storm.problem("storm", str(e))
        status = 1
    finally:
        procs.stop_all()
        bench.keep_logs(workdir, os.path.join(args.out, f"storm-{stamp}-logs"))
    info["loadavg_end"] = bench.read_text("/proc/loadavg").split()[:3]
    data = {"meta": info, "results": storm.results, "problems": storm.problems, "notes": storm.notes}
    with open(os.path.join(args.out, f"storm-{stamp}.json"), "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
    text = render(data)
    with open(os.path.join(args.out, f"storm-{stamp}.txt"), "w") as f:
        f.write(text)
    print()
    print(text)
    return status or (1 if storm.problems else 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
