#!/usr/bin/env python3
"""wsrelay soak: mixed traffic through one worker for ``--minutes`` (default 10), sampled every 10 s.

Run through ``sh bench/run.sh soak [options]`` (which installs what this needs), or directly::

    bench/.venv/bin/python bench/soak.py [--minutes 10] [--out DIR]

What runs (the processes and configuration of ``bench.py``: wsrelay with ``workers = 1`` on
core 0; load generator and upstreams on core 1):

* ``mixload.js`` (main): long-lived echo pairs sending numbered messages (16 B to 1 MiB), short
  pairs opening and closing (0.5-10 s each), slow readers (``push`` pairs the upstream fills
  as fast as they read, which is slowly: back-pressure), a long pair reset (RST, no close) every
  few seconds, GET ``/small`` and uploads (POST ``/sink``, 16 KiB to 2 MiB bodies);
* ``mixload.js`` (victims): a second process with echo pairs, killed with SIGKILL every minute
  (its connections vanish at once, without a close) and started again;
* ``upstream.js count`` (WebSocket echo, push and POST sink, counting every message per
  connection) and the nginx origin (GET): both restarted twice, at a third and two thirds of the
  run (SIGTERM: the Node.js upstream exits without closing its connections);
* every 10 s: wsrelay's RSS, open descriptors (``/proc/PID/fd``) and CPU, the two cores' busy time
  and the load average (the machine is shared).

At the end: load stopped, pairs closed, then the descriptors are watched until they are back to
the baseline read before the load (bounded: pooled upstream connections close after 50 s idle).
The verdicts (``soakreport.py``): RSS growth after the warm-up (a fifth of the run) under 5 %;
descriptors back to the baseline; every log record classified (expected, with the reason, or
not); every message accounted for, per connection, at both ends.  Results:
``<out>/soak-<timestamp>.json`` (samples, verdicts, log classes, accounting totals) and ``.txt``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import threading
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import memprobe
import procstat
import soakreport

import bench

MIXLOAD = os.path.join(HERE, "mixload.js")

# the main load generator's pace (options of mixload.js)
MAIN_LOAD = {"pairs": 300, "push": 4, "churn": 10, "vanish": 3, "gets": 100, "uploads": 3, "rate": 3,
             "window": soakreport.WINDOW}
VICTIM_LOAD = {"pairs": 20, "rate": 10, "window": soakreport.WINDOW}


class Soak(bench.Bench):
    """The soak run: reuses bench.Bench for the proxy (start, stop, log) and the origin."""

    def __init__(self, args: argparse.Namespace, workdir: str, procs: bench.Procs) -> None:
        super().__init__(args, workdir, procs)
        self.client_lines: list[dict[str, Any]] = []
        self.upstream_lines: list[dict[str, Any]] = []
        self.errors: list[dict[str, Any]] = []
        self.samples: list[dict[str, Any]] = []
        self.restarts: list[dict[str, float]] = []
        self.kills: list[float] = []
        self.ends: list[dict[str, Any]] = []
        self.t0 = time.time()
        self.lock = threading.Lock()

    # -- upstreams -------------------------------------------------------------------------------

    def start_upstreams(self) -> None:
        super().start_upstreams()  # the origin nginx, and a plain upstream.js we replace
        plain = self.upstreams[1]
        self.procs.stop(plain, timeout=5)
        self.ws_proc = self.start_counting_upstream()
        self.upstreams = [self.upstreams[0], self.ws_proc]

    def start_counting_upstream(self) -> bench.Proc:
        proc = self.procs.spawn("upstream-count", [self.args.node, bench.UPSTREAM_JS, str(self.ws_port), "count"],
                                cpus=self.load_cpus, pipe=True)
        proc.expect("LISTENING", 15)
        self.follow(proc, {"UPC ": self.upstream_lines})
        return proc

    def follow(self, proc: bench.Proc, prefixes: dict[str, list[dict[str, Any]]]) -> None:
        """Collect ``PREFIX <json>`` lines of a process's stdout into lists, in a thread."""
        def run() -> None:
            while True:
                line = proc.lines.get()
                if line is None:
                    return
                for prefix, into in prefixes.items():
                    if line.startswith(prefix):
                        with self.lock:
                            into.append(json.loads(line[len(prefix):]))
        threading.Thread(target=run, daemon=True).start()

    def restart_upstreams(self) -> None:
        """SIGTERM both upstreams (the Node.js one exits without closing), start them again."""
        t0 = time.time()
        print(f"[{time.strftime('%H:%M:%S')}] restarting the upstreams", flush=True)
        self.procs.stop(self.ws_proc, timeout=10)
        origin = self.upstreams[0]
        self.procs.stop(origin, timeout=10)
        conf = os.path.join(self.workdir, "origin.conf")
        origin = self.procs.spawn("origin-nginx", self.nginx_cmd(conf), cpus=self.load_cpus)
        bench.wait_port(self.origin_port, origin, 15)
        self.ws_proc = self.start_counting_upstream()
        self.upstreams = [origin, self.ws_proc]
        self.restarts.append({"start": t0, "end": time.time()})

    # -- load ------------------------------------------------------------------------------------

    def start_load(self, name: str, load: dict[str, Any], port: int) -> bench.Proc:
        opts = dict(load, ws=f"ws://127.0.0.1:{port}/ws/soak", http=f"http://127.0.0.1:{port}",
                    prefix=name, guard=self.args.minutes * 60 + 600)
        proc = self.procs.spawn(name, [self.args.node, MIXLOAD, json.dumps(opts)], cpus=self.load_cpus,
                                pipe=True, stdin=True)
        proc.expect("STARTED", 15)
        self.follow(proc, {"CC ": self.client_lines, "ERR ": self.errors, "END ": self.ends})
        return proc

    def sample(self, phase: str, last: dict[str, Any] | None) -> dict[str, Any]:
        pids = procstat.tree(self.proxy_roots())
        mine = procstat.tree([os.getpid()])
        now = time.time()
        s: dict[str, Any] = {
            "t": round(now - self.t0, 1), "phase": phase, "rss_kib": procstat.rss_bytes(pids) // 1024,
            "fds": procstat.fd_count(pids), "proxy_cpu_s": procstat.cpu_seconds(pids),
            "bench_cpu": {p: procstat.cpu_seconds([p]) for p in mine if p not in pids},
            "cores": procstat.core_times(), "loadavg": bench.read_text("/proc/loadavg").split()[:3],
        }
        if last is not None:
            wall = max(now - self.t0 - last["t"], 1e-9)
            s["proxy_cpu_pct"] = round(100 * (s["proxy_cpu_s"] - last["proxy_cpu_s"]) / wall, 1)
            # others: every core's busy time minus what this run's processes used
            busy = sum(b for b, _ in s["cores"].values()) - sum(b for b, _ in last["cores"].values())
            # this run's processes: the proxy, and the others' CPU since the last sample (a process
            # that ended in between is not counted: the others' share is if anything too high)
            bench_cpu = sum(v - last["bench_cpu"].get(p, 0.0) for p, v in s["bench_cpu"].items())
            ours = (s["proxy_cpu_s"] - last["proxy_cpu_s"]) + bench_cpu
            s["bench_cpu_pct"] = round(100 * bench_cpu / wall, 1)
            s["busy_pct"] = round(100 * busy / procstat.CLK_TCK / wall, 1)
            s["others_pct"] = round(max(s["busy_pct"] - 100 * ours / wall, 0), 1)
        return s

    def record(self, s: dict[str, Any]) -> None:
        keep = {k: v for k, v in s.items() if k not in ("cores", "proxy_cpu_s", "bench_cpu")}
        self.samples.append(keep)
        print(f"  t={s['t']:6.0f}s {s['phase']:<7} rss {s['rss_kib'] / 1024:6.1f} MiB  fds {s['fds']:5d}  "
              f"cpu {s.get('proxy_cpu_pct', 0):5.1f} %  load side {s.get('bench_cpu_pct', 0):5.1f} %  others {s.get('others_pct', 0):5.1f} %  "
              f"load {' '.join(s['loadavg'])}  ended {self.client_count()}", flush=True)

    def scan_log(self, label: str, path: str | None) -> None:
        """Not here: soakreport.classify_log classifies every record of the log."""

    def client_count(self) -> int:
        with self.lock:
            return len(self.client_lines)

    # -- the run ---------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        a = self.args
        self.start_upstreams()
        port = self.start_proxy("wsrelay", 1)
        time.sleep(1.0)
        self.t0 = time.time()
        base = self.sample("base", None)
        self.record(base)
        total = a.minutes * 60.0
        restart_at = [total / 3, 2 * total / 3]
        kill_every = min(60.0, total / 3)
        main = self.start_load("main", MAIN_LOAD, port)
        victim = self.start_load("victim1", VICTIM_LOAD, port)
        victims = 1
        next_kill = kill_every * 0.75
        next_sample = a.interval
        last = base
        while True:
            now = time.time() - self.t0
            if now >= total:
                break
            if restart_at and now >= restart_at[0]:
                restart_at.pop(0)
                self.restart_upstreams()
            if now >= next_kill:
                self.kill(victim)
                victims += 1
                victim = self.start_load(f"victim{victims}", VICTIM_LOAD, port)
                next_kill += kill_every
            if now >= next_sample:
                last = self.sample("load", last)
                self.record(last)
                next_sample += a.interval
            self.check_proxy()
            if not main.alive():
                raise bench.BenchError("mixload main exited: " + " | ".join(main.output[-5:]))
            time.sleep(0.2)
        # the end: the last victim vanishes, the main load closes every pair and reports
        self.kill(victim)
        main.send("stop")
        if main.wait(90) is None:
            self.problem("soak", "mixload main did not end within 90 s of stop")
        deadline = time.monotonic() + 5
        while not self.ends and time.monotonic() < deadline:
            time.sleep(0.05)
        end_load = time.time() - self.t0
        last = self.sample("stopped", last)
        self.record(last)
        drained = self.wait_fds(base["fds"], last)
        # the upstream's still-open connections (none expected) come out as "killed" records
        with self.lock:
            known = len(self.upstream_lines)
        self.procs.stop(self.ws_proc, timeout=10)
        time.sleep(0.5)
        with self.lock:
            left = [u["id"] for u in self.upstream_lines[known:]]
        return {"base": base, "end_load_s": end_load, "drain": drained, "victims": victims, "left_open": left}

    def kill(self, proc: bench.Proc) -> None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        self.kills.append(time.time())
        self.procs.stop(proc, timeout=1)

    def wait_fds(self, base: int, last: dict[str, Any]) -> dict[str, Any]:
        """Sample every second until the descriptors are back to ``base`` (at most 75 s)."""
        t0 = time.monotonic()
        fds = last["fds"]
        while time.monotonic() - t0 < 75:
            fds = procstat.fd_count(procstat.tree(self.proxy_roots()))
            if fds <= base:
                break
            time.sleep(1.0)
        s = self.sample("drained", last)
        self.record(s)
        return {"base_fds": base, "end_fds": s["fds"], "seconds": round(time.monotonic() - t0, 1),
                "rss_kib": s["rss_kib"]}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0, help="length of the load (default 10; 1 checks the harness)")
    p.add_argument("--interval", type=float, default=10.0, help="seconds between samples (default 10)")
    p.add_argument("--memprobe", choices=("off", "on", "trace"), default="off",
                   help="sample the proxy's memory from inside (memprobe/sitecustomize.py): on, or trace "
                        "(tracemalloc too, slow); results in soak-<timestamp>-memprobe.jsonl")
    bench.add_common_args(p)
    args = p.parse_args(argv)
    if args.no_pin or len(os.sched_getaffinity(0)) < 2:
        args.proxy_cpus = args.load_cpus = None
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    for tool in (args.twistd, args.nginx, args.node):
        if not (os.path.exists(tool) or shutil.which(tool)):
            print(f"soak: {tool} not found (run sh bench/run.sh soak, which installs it)", file=sys.stderr)
            return 2
    stamp, workdir, _ = bench.prepare(args, "soak")
    probe = memprobe.enable(args.memprobe, os.path.join(args.out, f"soak-{stamp}-memprobe.jsonl"))
    procs = bench.Procs(workdir)
    soak = Soak(args, workdir, procs)
    info = bench.meta(args)
    print(f"wsrelay soak {stamp}: {args.minutes:g} min, samples every {args.interval:g} s, wsrelay on cores "
          f"{args.proxy_cpus}, load and upstreams on {args.load_cpus}; work dir {workdir}", flush=True)
    status = 0
    run: dict[str, Any] = {}
    log_text = ""
    try:
        run = soak.run()
    except KeyboardInterrupt:
        print("soak: interrupted, stopping everything", flush=True)
        status = 130
    except bench.BenchError as e:
        soak.problem("soak", str(e))
        status = 1
    finally:
        proxy = soak.proxy
        soak.stop_proxy("soak")
        if proxy is not None and proxy.log_path and os.path.exists(proxy.log_path):
            log_text = bench.read_text(proxy.log_path)
        procs.stop_all()
        logs = os.path.join(args.out, f"soak-{stamp}-logs")
        bench.keep_logs(workdir, logs)
    info["loadavg_end"] = bench.read_text("/proc/loadavg").split()[:3]
    data = soakreport.summarise(
        meta=info, run=run, samples=soak.samples, restarts=[{k: v - soak.t0 for k, v in r.items()} for r in soak.restarts],
        kills=[k - soak.t0 for k in soak.kills], client=soak.client_lines, upstream=soak.upstream_lines,
        errors=[dict(e, t=e["t"] / 1000 - soak.t0) for e in soak.errors], ends=soak.ends, log_text=log_text, t0=soak.t0,
        problems=soak.problems, minutes=args.minutes)
    json_path = os.path.join(args.out, f"soak-{stamp}.json")
    with open(json_path, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
    text = soakreport.render(data)
    with open(os.path.join(args.out, f"soak-{stamp}.txt"), "w") as f:
        f.write(text)
    print()
    print(text)
    if probe:
        text = memprobe.summary(probe, warmup_s=args.minutes * 60 / 5)
        print(text)
        with open(os.path.join(args.out, f"soak-{stamp}.txt"), "a") as f:
            f.write("\n" + text)
    print(f"results: {json_path} and .txt; logs: {logs}/")
    if status == 0 and not data["verdicts"]["all_held"]:
        status = 1
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
