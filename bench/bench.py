#!/usr/bin/env python3
"""wsrelay benchmark: wsrelay against nginx (usual recipe and tuned) and a direct connection.

Run through ``sh bench/run.sh`` (which installs what this needs), or directly::

    bench/.venv/bin/python bench/bench.py [--quick] [--runs N] [--duration S] [--out DIR]

One run starts the upstreams once (a Node.js ``ws`` echo server and an nginx "origin" for HTTP,
both on the load generator's core), then, for each repetition, starts each proxy in turn on
core 0, measures every scenario against it and stops it:

* ``direct``       the load generator talks to the upstreams itself (no proxy);
* ``nginx``        nginx, usual WebSocket recipe, 1 worker, no upstream keep-alive;
* ``nginx-tuned``  nginx with upstream ``keepalive 32``, ``proxy_buffer_size 64k``,
  ``Connection ""`` for HTTP;
* ``wsrelay``      ``twistd -n --pidfile= wsrelay --config GENERATED.ini``, workers = 1: variants
  ``relay`` (route ``/ws/``, ws_mode = relay) and ``tunnel`` (route ``/tunnel/``); HTTP is
  measured once (it does not depend on ws_mode) and reported under ``relay``;
* ``wsrelay-w2``   the same with ``workers = 2`` (WebSocket throughput and HTTP);
* ``wsrelay-admin`` ``wsrelay`` with the admin listener on (``[admin] endpoint``, /metrics),
  variant ``relay-admin`` (WebSocket throughput and HTTP): its CPU per message against ``relay``
  in the same run is what the admin listener costs (README, Operations);
* ``wsrelay-alt``  (only with ``--twistd-alt PATH``) ``wsrelay`` run by another venv's twistd,
  variant ``relay-alt``: an A/B of two versions of wsrelay in one run (``relay`` / ``relay-alt``).

Scenarios: WebSocket echo throughput (64 B, 16 KiB, 1 MiB binary messages, several connections,
several messages in flight each), WebSocket round-trip latency (64 B, one message in flight per
connection, 1 and 100 connections), HTTP with wrk (100-byte GET, 1 MiB GET, 1 MiB POST, keep-alive
toward the proxy).  Then idle WebSocket memory: proxy RSS (summed over its processes) after 1,000
and 5,000 idle connections, minus RSS before, per connection.

The key figure is the proxy's CPU time (utime + stime of all its processes, from /proc) per 1,000
messages or requests.  Each figure is the median of ``--runs`` repetitions (min and max shown), and
ratios to nginx are the median of the per-repetition ratios (same repetition, so slow drift of a
shared machine cancels).  Results: ``<out>/<timestamp>.json`` (everything, raw runs included) and
``<out>/<timestamp>.txt`` (reStructuredText tables).

Every wait is bounded, and every process started here is stopped at the end (also on Ctrl-C or
an error): each runs in its own process group, which gets SIGTERM and then SIGKILL.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import queue
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import configs
import procstat
import report

REPO = os.path.dirname(HERE)
WSLOAD = os.path.join(HERE, "wsload.js")
UPSTREAM_JS = os.path.join(HERE, "upstream.js")
WRK_LUA = os.path.join(HERE, "wrk_report.lua")
MIB = 1024 * 1024


class BenchError(Exception):
    """A scenario or a process failed; the message says which and why."""


# ---------------------------------------------------------------------------------------------
# Scenarios


WS_THR = {
    # name: (message size, connections, messages in flight per connection)
    "ws_64B": (64, 8, 16),
    "ws_16KiB": (16 * 1024, 8, 4),
    "ws_1MiB": (MIB, 4, 2),
    # the client offers permessage-deflate (as browsers do) and compresses every message: relay
    # mode negotiates it on the client hop; nginx and tunnel mode pass the offer through to the
    # upstream, which refuses it (no target: a comparison, not the same work)
    "ws_64B_deflate": (64, 8, 16),
}
DEFLATE = {"ws_64B_deflate"}
WS_LAT = {
    # name: (message size, connections); one message in flight per connection
    "lat_1conn": (64, 1),
    "lat_100conn": (64, 100),
}
HTTP = {
    # name: (path, wrk connections, POST body bytes or 0 for GET, body bytes per request)
    "http_small": ("/small", 32, 0, len(configs.SMALL_BODY)),
    "http_1MiB_get": ("/1m", 8, 0, MIB),
    "http_1MiB_post": ("/sink", 8, MIB, MIB),
    # not run by default (--scenarios http_post_early): 1 MiB POST to an upstream (nginx
    # "return 200") that answers before it has read the body
    "http_post_early": ("/early", 8, MIB, MIB),
}
EXTRA_SCENARIOS = ["http_post_early"]
ALL_SCENARIOS = [s for s in list(WS_THR) + list(WS_LAT) + list(HTTP) if s not in EXTRA_SCENARIOS]
HTTP_ALL = list(HTTP)

# instance name -> (kind, workers, {variant: (WebSocket path, scenarios)})
_EVERY = ALL_SCENARIOS + EXTRA_SCENARIOS
INSTANCES: dict[str, tuple[str, int, dict[str, tuple[str, list[str]]]]] = {
    "direct": ("direct", 0, {"direct": ("/ws/echo", _EVERY)}),
    "nginx": ("nginx", 1, {"nginx": ("/ws/echo", _EVERY)}),
    "nginx-tuned": ("nginx-tuned", 1, {"nginx-tuned": ("/ws/echo", _EVERY)}),
    "wsrelay": ("wsrelay", 1, {
        "relay": ("/ws/echo", _EVERY),
        "tunnel": ("/tunnel/echo", list(WS_THR) + list(WS_LAT)),
    }),
    "wsrelay-w2": ("wsrelay", 2, {"relay-w2": ("/ws/echo", list(WS_THR) + HTTP_ALL)}),
    "wsrelay-admin": ("wsrelay-admin", 1, {"relay-admin": ("/ws/echo", list(WS_THR) + HTTP_ALL)}),
    "wsrelay-alt": ("wsrelay-alt", 1, {"relay-alt": ("/ws/echo", list(WS_THR) + HTTP_ALL)}),
}
# memory test: variant -> (instance kind, workers, WebSocket path)
MEMORY = {
    "nginx": ("nginx", 1, "/ws/echo"),
    "nginx-tuned": ("nginx-tuned", 1, "/ws/echo"),
    "relay": ("wsrelay", 1, "/ws/echo"),
    "tunnel": ("wsrelay", 1, "/tunnel/echo"),
    "relay-w2": ("wsrelay", 2, "/ws/echo"),
}
VARIANTS = ["direct", "nginx", "nginx-tuned", "relay", "tunnel", "relay-w2", "relay-admin", "relay-alt"]


# ---------------------------------------------------------------------------------------------
# Processes


class Proc:
    """A started process in its own process group; optionally its stdout lines in a queue."""

    def __init__(self, name: str, popen: subprocess.Popen, log_path: str | None) -> None:
        self.name = name
        self.popen = popen
        self.pid = popen.pid
        self.log_path = log_path
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.output: list[str] = []
        if popen.stdout is not None:
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for raw in self.popen.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            self.output.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def expect(self, prefix: str, timeout: float) -> str:
        """The next stdout line starting with ``prefix``; BenchError on FAIL, EOF or timeout."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"{self.name}: no '{prefix}' line within {timeout:.0f}s")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                rc = self.wait(5)
                raise BenchError(f"{self.name}: exited (status {rc}) before '{prefix}': "
                                 + " | ".join(self.output[-5:]))
            if line.startswith("FAIL"):
                raise BenchError(f"{self.name}: {line}")
            if line.startswith(prefix):
                return line

    def send(self, line: str) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write((line + "\n").encode())
        self.popen.stdin.flush()

    def alive(self) -> bool:
        return self.popen.poll() is None

    def wait(self, timeout: float) -> int | None:
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None


class Procs:
    """Starts processes (pinned with taskset) and stops them all, whatever happens."""

    def __init__(self, workdir: str) -> None:
        self.workdir = workdir
        self.live: list[Proc] = []

    def spawn(self, name: str, cmd: list[str], *, cpus: str | None, pipe: bool = False,
              stdin: bool = False, env: dict[str, str] | None = None) -> Proc:
        if cpus is not None:
            cmd = ["taskset", "-c", cpus] + cmd
        log_path = None if pipe else os.path.join(self.workdir, f"{name}.log")

        def start(out: Any) -> subprocess.Popen:
            return subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT if not pipe else None,
                stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                start_new_session=True, env=env, cwd=self.workdir,
            )

        if log_path is None:
            popen = start(subprocess.PIPE)
        else:
            with open(log_path, "ab") as out:
                popen = start(out)
        proc = Proc(name, popen, log_path)
        self.live.append(proc)
        return proc

    def stop(self, proc: Proc, timeout: float = 15.0, *, group_term: bool = True) -> int | None:
        """SIGTERM (to the group, or to the process only), wait, then SIGKILL the group."""
        if proc.alive():
            try:
                if group_term:
                    os.killpg(proc.pid, signal.SIGTERM)
                else:
                    os.kill(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            rc = proc.wait(timeout)
            if rc is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(5)
        # whatever is left in the group (a worker that outlived its master)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if proc in self.live:
            self.live.remove(proc)
        return proc.popen.returncode

    def stop_all(self) -> None:
        for proc in list(reversed(self.live)):
            self.stop(proc, timeout=5)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: Proc, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise BenchError(f"{proc.name} exited with status {proc.popen.returncode}: "
                             + tail(proc.log_path))
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"{proc.name}: port {port} not open within {timeout:.0f}s")


def tail(path: str | None, n: int = 8) -> str:
    if not path or not os.path.exists(path):
        return ""
    with open(path, errors="replace") as f:
        return " | ".join(f.read().splitlines()[-n:])


def wait4_deadline(proc: Proc, timeout: float) -> tuple[int | None, float]:
    """Reap ``proc`` (bounded); return its exit status and its own CPU seconds (rusage)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid == proc.pid:
            proc.popen.returncode = os.waitstatus_to_exitcode(status)
            return proc.popen.returncode, usage.ru_utime + usage.ru_stime
        time.sleep(0.02)
    return None, 0.0


# ---------------------------------------------------------------------------------------------
# The bench


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: str, procs: Procs) -> None:
        self.args = args
        self.workdir = workdir
        self.procs = procs
        self.proxy_cpus = args.proxy_cpus
        self.load_cpus = args.load_cpus
        self.nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self.problems: list[dict[str, Any]] = []
        self.notes: list[dict[str, Any]] = []
        self.runs: dict[str, dict[str, list[dict[str, Any]]]] = {v: {} for v in VARIANTS}
        self.memory: dict[str, list[dict[str, Any]]] = {}
        self.upstream_roots: list[int] = []
        self.proxy: Proc | None = None
        self.proxy_kind = ""

    def problem(self, where: str, what: str, lines: list[str] | None = None) -> None:
        item = {"where": where, "what": what, "lines": lines or []}
        self.problems.append(item)
        print(f"  PROBLEM [{where}] {what}", flush=True)
        for line in (lines or [])[:5]:
            print(f"      {line}", flush=True)

    # -- upstreams (load generator's core) ----------------------------------------------------

    def start_upstreams(self) -> None:
        www = os.path.join(self.workdir, "www")
        os.makedirs(www, exist_ok=True)
        with open(os.path.join(www, "small"), "wb") as f:
            f.write(configs.SMALL_BODY)
        with open(os.path.join(www, "1m"), "wb") as f:
            f.write(os.urandom(MIB))
        self.origin_port = free_port()
        conf = os.path.join(self.workdir, "origin.conf")
        with open(conf, "w") as f:
            f.write(configs.origin_nginx(self.workdir, self.origin_port, www, self.nofile))
        origin = self.procs.spawn("origin-nginx", self.nginx_cmd(conf), cpus=self.load_cpus)
        wait_port(self.origin_port, origin, 15)
        ws = self.procs.spawn("upstream-node", [self.args.node, UPSTREAM_JS, "0"],
                              cpus=self.load_cpus, pipe=True)
        self.ws_port = int(ws.expect("LISTENING", 15).split()[1])
        self.upstreams = [origin, ws]
        self.upstream_roots = [origin.pid, ws.pid]
        print(f"upstreams: nginx origin (HTTP) on 127.0.0.1:{self.origin_port}, "
              f"Node.js ws echo on 127.0.0.1:{self.ws_port}, cores {self.load_cpus}", flush=True)

    def check_upstreams(self) -> None:
        for p in self.upstreams:
            if not p.alive():
                raise BenchError(f"upstream {p.name} died (status {p.popen.returncode}): "
                                 + tail(p.log_path))

    def nginx_cmd(self, conf: str) -> list[str]:
        return [self.args.nginx, "-p", self.workdir, "-e", os.path.join(self.workdir, "nginx-start.log"),
                "-c", conf]

    # -- proxies (core 0) ---------------------------------------------------------------------

    def start_proxy(self, kind: str, workers: int) -> int:
        """Start a proxy of this kind; return the port clients use."""
        self.proxy_kind = kind
        if kind == "direct":
            self.proxy = None
            return 0
        port = free_port()
        stamp = f"{kind}-w{workers}-{int(time.time() * 1000) % 10**8}"
        if kind.startswith("nginx"):
            conf = os.path.join(self.workdir, f"{stamp}.conf")
            with open(conf, "w") as f:
                f.write(self.nginx_conf(kind, stamp, port, workers))
            proc = self.procs.spawn(stamp, self.nginx_cmd(conf), cpus=self.proxy_cpus)
            self.proxy = proc
            proc.error_log = os.path.join(self.workdir, f"{stamp}-error.log")  # type: ignore[attr-defined]
            wait_port(port, proc, 15)
            time.sleep(0.2)  # let the worker start
            return port
        ini = os.path.join(self.workdir, f"{stamp}.ini")
        with open(ini, "w") as f:
            f.write(self.wsrelay_conf(port, workers, kind, stamp))
        twistd = self.args.twistd_alt if kind == "wsrelay-alt" else self.args.twistd
        cmd = [twistd, "-n", "--pidfile=", "wsrelay", "--config", ini]
        proc = self.procs.spawn(stamp, cmd, cpus=self.proxy_cpus)
        self.proxy = proc
        proc.error_log = proc.log_path  # type: ignore[attr-defined]
        want = f"wsrelay listening on http://127.0.0.1:{port}/"
        deadline = time.monotonic() + 30
        while True:
            if not proc.alive():
                raise BenchError(f"wsrelay exited with status {proc.popen.returncode}: " + tail(proc.log_path))
            with open(proc.log_path, errors="replace") as f:
                ready = sum(1 for line in f if want in line)
            if ready >= workers:
                break
            if time.monotonic() > deadline:
                raise BenchError(f"wsrelay: {ready} of {workers} processes listening after 30s: "
                                 + tail(proc.log_path))
            time.sleep(0.1)
        return port

    def nginx_conf(self, kind: str, stamp: str, port: int, workers: int) -> str:
        """The configuration of nginx as the proxy under test (storm.py has its own)."""
        return configs.proxy_nginx(self.workdir, stamp, port, self.origin_port, self.ws_port,
                                   tuned=kind == "nginx-tuned", connections=self.nginx_connections(),
                                   nofile=self.nofile)

    def nginx_connections(self) -> int:
        return max(min(self.nofile - 100, 60000), 1024)

    def wsrelay_conf(self, port: int, workers: int, kind: str = "wsrelay", stamp: str = "wsrelay") -> str:
        """The configuration of wsrelay as the proxy under test (storm.py has its own): with the
        admin listener for ``wsrelay-admin``, and the access log ``--wsrelay-access-log`` asks for."""
        log = self.args.wsrelay_access_log
        access_log = None if log == "off" else (os.path.join(self.workdir, f"{stamp}-access.log"), log)
        return configs.wsrelay_ini(port, self.origin_port, self.ws_port, workers=workers,
                                   admin=kind == "wsrelay-admin", access_log=access_log)

    def stop_proxy(self, label: str) -> None:
        proc = self.proxy
        self.proxy = None
        if proc is None:
            return
        was_alive = proc.alive()
        # wsrelay: SIGTERM to the master only (it stops its workers); nginx: to the group
        rc = self.procs.stop(proc, timeout=20, group_term=not self.proxy_kind.startswith("wsrelay"))
        if not was_alive:
            self.problem(label, f"proxy had exited by itself (status {rc})", tail(proc.log_path, 20).split(" | "))
        elif rc not in (0, -signal.SIGTERM, None) and self.proxy_kind.startswith("wsrelay"):
            # twistd re-raises the signal that stopped it, hence -15 is a clean stop
            self.problem(label, f"wsrelay exit status {rc} after SIGTERM", tail(proc.log_path, 10).split(" | "))
        elif rc is None:
            self.problem(label, "proxy did not stop within 20 s of SIGTERM (killed)")
        self.scan_log(label, getattr(proc, "error_log", None))

    def scan_log(self, label: str, path: str | None) -> None:
        """Report warnings, errors and tracebacks in the proxy's log, grouped by message."""
        if not path or not os.path.exists(path):
            return
        with open(path, errors="replace") as f:
            groups = report.log_findings(f.read())
        for (level, message), (count, example) in groups.items():
            if level == "note":
                self.notes.append({"where": label, "what": f"{count} x {message}"})
                continue
            self.problem(label, f"{count} log record(s): {message}", example)

    def proxy_roots(self) -> list[int]:
        return [self.proxy.pid] if self.proxy is not None else []

    def check_proxy(self) -> None:
        if self.proxy is not None and not self.proxy.alive():
            raise BenchError(f"proxy {self.proxy.name} exited (status {self.proxy.popen.returncode}): "
                             + tail(self.proxy.log_path, 10))

    # -- scenarios ------------------------------------------------------------------------------

    def base_urls(self, port: int, ws_path: str) -> tuple[str, dict[str, str]]:
        """The WebSocket URL and {HTTP path: URL} for a proxy on ``port`` (0: direct)."""
        if port == 0:
            http = {"/small": f"http://127.0.0.1:{self.origin_port}/small",
                    "/1m": f"http://127.0.0.1:{self.origin_port}/1m",
                    "/early": f"http://127.0.0.1:{self.origin_port}/early",
                    "/sink": f"http://127.0.0.1:{self.ws_port}/sink"}
            return f"ws://127.0.0.1:{self.ws_port}{ws_path}", http
        return (f"ws://127.0.0.1:{port}{ws_path}",
                {p: f"http://127.0.0.1:{port}{p}" for p in ("/small", "/1m", "/sink", "/early")})

    def run_ws(self, scenario: str, url: str) -> dict[str, Any]:
        a = self.args
        if scenario in WS_THR:
            size, conns, window = WS_THR[scenario]
            opts = {"mode": "thr", "url": url, "size": size, "conns": conns, "window": window,
                    "deflate": scenario in DEFLATE}
        else:
            size, conns = WS_LAT[scenario]
            opts = {"mode": "lat", "url": url, "size": size, "conns": conns}
        opts.update(warmup=a.warmup, duration=a.duration)
        client = self.procs.spawn(f"wsload-{scenario}", [a.node, WSLOAD, json.dumps(opts)],
                                  cpus=self.load_cpus, pipe=True)
        try:
            probe = procstat.Probe({"proxy": self.proxy_roots(), "loadgen": [client.pid],
                                    "upstream": self.upstream_roots})
            client.expect("START", a.warmup + 40)
            s0 = probe.snap()
            line = client.expect("END", a.duration + 40)
            s1 = probe.snap()
            res = json.loads(line[4:])
            if client.wait(20) is None:
                self.problem(scenario, "WebSocket client did not finish closing within 20 s")
        finally:
            self.procs.stop(client, timeout=5)
        d = procstat.Probe.delta(s0, s1)
        out = self.figures(d, count=res["msgs"], elapsed=res["elapsed"], payload=size)
        for k in ("p50_us", "p99_us", "p90_us", "max_us"):
            if k in res:
                out[k] = res[k]
        for k in ("errors", "unexpected_closes", "bad_echoes"):
            if res.get(k):
                out[k] = res[k]
                self.problem(scenario, f"client saw {res[k]} {k.replace('_', ' ')}",
                             [f"close codes: {res.get('close_codes')}", f"first error: {res.get('first_error')}"])
        return out

    def run_http(self, scenario: str, urls: dict[str, str]) -> dict[str, Any]:
        a = self.args
        path, conns, post, body = HTTP[scenario]
        env = dict(os.environ, WRK_POST_BYTES=str(post))
        url = urls[path]

        def wrk(seconds: int) -> Proc:
            return self.procs.spawn(f"wrk-{scenario}", [
                a.wrk, "-t1", f"-c{conns}", f"-d{seconds}s", "--timeout", "10s", "-s", WRK_LUA, url,
            ], cpus=self.load_cpus, pipe=True, env=env)

        warm = wrk(max(1, round(a.warmup)))
        if warm.wait(a.warmup + 30) is None:
            self.procs.stop(warm)
            raise BenchError(f"{scenario}: wrk warm-up did not end")
        self.procs.stop(warm)
        probe = procstat.Probe({"proxy": self.proxy_roots(), "upstream": self.upstream_roots})
        s0 = probe.snap()
        proc = wrk(int(a.duration))
        try:
            rc, wrk_cpu = wait4_deadline(proc, a.duration + 40)
            s1 = probe.snap()
            if rc is None:
                raise BenchError(f"{scenario}: wrk did not end within {a.duration + 40:.0f}s")
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and not any(x.startswith("WRKJSON") for x in proc.output):
                time.sleep(0.02)
        finally:
            self.procs.stop(proc, timeout=5)
        lines = [x for x in proc.output if x.startswith("WRKJSON")]
        if rc != 0 or not lines:
            raise BenchError(f"{scenario}: wrk failed (status {rc}): " + " | ".join(proc.output[-6:]))
        res = json.loads(lines[0][8:])
        d = procstat.Probe.delta(s0, s1)
        d["loadgen_cpu_s"] = wrk_cpu
        d["loadgen_cpu_pct"] = 100.0 * wrk_cpu / d["wall_s"]
        out = self.figures(d, count=res["requests"], elapsed=res["duration_us"] / 1e6, payload=body)
        out["p50_us"] = res["p50_us"]
        out["p99_us"] = res["p99_us"]
        errs = {k: res[k] for k in ("connect_err", "read_err", "write_err", "status_err", "timeout_err") if res[k]}
        if errs:
            out["errors"] = errs
            self.problem(scenario, f"wrk errors {errs} in {res['requests']} requests")
        return out

    def figures(self, d: dict[str, float], *, count: int, elapsed: float, payload: int) -> dict[str, Any]:
        out: dict[str, Any] = {
            "count": count,
            "elapsed_s": elapsed,
            "rate_per_s": count / elapsed if elapsed else 0.0,
            "mb_per_s": count * payload / elapsed / 1e6 if elapsed else 0.0,
        }
        out.update({k: v for k, v in d.items()})
        if self.proxy is not None and count:
            out["cpu_ms_per_1k"] = d["proxy_cpu_s"] * 1000.0 / (count / 1000.0)
        return out

    # -- memory -----------------------------------------------------------------------------------

    def run_memory(self, label: str, url: str, counts: list[int]) -> dict[str, Any]:
        roots = self.proxy_roots()
        # warm up: open and close some connections so one-time allocations are not counted
        warm = self.procs.spawn("idle-warm", [self.args.node, WSLOAD, json.dumps(
            {"mode": "idle", "url": url, "count": 50, "guard": 120})], cpus=self.load_cpus, pipe=True, stdin=True)
        try:
            warm.expect("OPEN", 60)
            warm.send("close")
            warm.wait(20)
        finally:
            self.procs.stop(warm, timeout=5)
        time.sleep(1.0)
        base = procstat.rss_bytes(procstat.tree(roots))
        out: dict[str, Any] = {"base_rss_kib": base / 1024}
        client = self.procs.spawn("idle", [self.args.node, WSLOAD, json.dumps(
            {"mode": "idle", "url": url, "count": counts[0], "parallel": 100, "guard": 600})],
            cpus=self.load_cpus, pipe=True, stdin=True)
        try:
            opened = 0
            for i, n in enumerate(counts):
                if i:
                    client.send(f"add {n - counts[i - 1]}")
                t0 = time.monotonic()
                info = json.loads(client.expect("OPEN", 300)[5:])
                out[f"open_s_{n}"] = time.monotonic() - t0
                opened = info["open"]
                if opened != n or info["failed"]:
                    self.problem(label, f"{opened} of {n} idle WebSockets open, {info['failed']} failed",
                                 [f"first error: {info.get('first_error')}"])
                time.sleep(1.5)
                pids = procstat.tree(roots)
                rss = procstat.rss_bytes(pids)
                out[f"rss_kib_{n}"] = rss / 1024
                out[f"kib_per_conn_{n}"] = (rss - base) / max(opened, 1) / 1024
                out[f"processes_{n}"] = len(pids)
            client.send("close")
            client.wait(60)
        finally:
            self.procs.stop(client, timeout=5)
        return out

    # -- the plan ---------------------------------------------------------------------------------

    def run_instance(self, name: str, rep: int) -> None:
        kind, workers, variants = INSTANCES[name]
        label = f"{name} (run {rep + 1})"
        print(f"[{time.strftime('%H:%M:%S')}] {label}", flush=True)
        try:
            port = self.start_proxy(kind, workers)
        except BenchError as e:
            self.problem(label, f"could not start: {e}")
            self.stop_proxy(label)
            return
        try:
            for variant, (ws_path, scenarios) in variants.items():
                ws_url, http_base = self.base_urls(port, ws_path)
                for scenario in scenarios:
                    if scenario not in self.args.scenarios:
                        continue
                    self.check_upstreams()
                    self.check_proxy()
                    try:
                        if scenario in HTTP:
                            res = self.run_http(scenario, http_base)
                        else:
                            res = self.run_ws(scenario, ws_url)
                    except BenchError as e:
                        self.problem(f"{variant} {scenario} (run {rep + 1})", str(e))
                        continue
                    res["run"] = rep
                    self.runs[variant].setdefault(scenario, []).append(res)
                    print("    " + report.one_line(variant, scenario, res), flush=True)
        except BenchError as e:
            self.problem(label, str(e))
        finally:
            self.stop_proxy(label)

    def run_memory_variant(self, variant: str, rep: int) -> None:
        kind, workers, ws_path = MEMORY[variant]
        label = f"memory {variant} (run {rep + 1})"
        print(f"[{time.strftime('%H:%M:%S')}] {label}", flush=True)
        try:
            port = self.start_proxy(kind, workers)
            url, _ = self.base_urls(port, ws_path)
            res = self.run_memory(label, url, self.args.idle_counts)
            res["run"] = rep
            self.memory.setdefault(variant, []).append(res)
            print("    " + ", ".join(f"{k}={v:.1f}" for k, v in res.items() if k.startswith(("kib_per", "base"))),
                  flush=True)
        except BenchError as e:
            self.problem(label, str(e))
        finally:
            self.stop_proxy(label)


def read_text(path: str) -> str:
    with open(path, errors="replace") as f:
        return f.read()


def meta(args: argparse.Namespace) -> dict[str, Any]:
    def cmd_out(cmd: list[str]) -> str:
        try:
            p = subprocess.run(cmd, capture_output=True, timeout=10, text=True, check=False)
            return (p.stdout + p.stderr).strip().splitlines()[0] if (p.stdout + p.stderr).strip() else ""
        except (OSError, subprocess.TimeoutExpired):
            return "?"

    from importlib import metadata
    versions = {}
    for pkg in ("wsrelay", "Twisted", "autobahn", "txaio"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = "?"
    return {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "host": platform.node(),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "cpu_model": next((line.split(":", 1)[1].strip() for line in read_text("/proc/cpuinfo").splitlines()
                           if line.startswith("model name")), "?"),
        "python": platform.python_version(),
        "nginx": cmd_out([args.nginx, "-v"]),
        "node": cmd_out([args.node, "--version"]),
        "wrk": cmd_out([args.wrk, "-v"]),
        "git": cmd_out(["git", "-C", REPO, "rev-parse", "--short", "HEAD"]),
        "versions": versions,
        "loadavg_start": read_text("/proc/loadavg").split()[:3],
        "args": {k: _repo_relative(v) for k, v in vars(args).items()},
    }


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: 1 repetition, short windows, fewer idle conns")
    p.add_argument("--runs", type=int, help="repetitions (default 3; --quick: 1)")
    p.add_argument("--duration", type=int, help="measured seconds per scenario (default 2; --quick: 1)")
    p.add_argument("--warmup", type=float, help="warm-up seconds before each window (default 1)")
    p.add_argument("--memory-runs", type=int, help="repetitions of the idle-memory test (default 2; --quick: 1)")
    p.add_argument("--idle-counts", help="idle WebSockets for the memory test (default 1000,5000; --quick: 200,1000)")
    p.add_argument("--only", help="comma-separated instances: " + ",".join(INSTANCES))
    p.add_argument("--scenarios", help="comma-separated scenarios (default: all but the extra ones): "
                   + ",".join(ALL_SCENARIOS + EXTRA_SCENARIOS))
    p.add_argument("--no-memory", action="store_true", help="skip the idle-memory test")
    add_common_args(p)
    args = p.parse_args(argv)
    q = args.quick
    args.runs = args.runs or (1 if q else 3)
    args.duration = args.duration or (1 if q else 2)
    args.warmup = args.warmup if args.warmup is not None else (0.5 if q else 1.0)
    args.memory_runs = args.memory_runs or (1 if q else 2)
    args.idle_counts = [int(x) for x in (args.idle_counts or ("200,1000" if q else "1000,5000")).split(",")]
    args.only = args.only.split(",") if args.only else [n for n in INSTANCES if n != "wsrelay-alt"]
    if args.twistd_alt and "wsrelay-alt" not in args.only:
        args.only.append("wsrelay-alt")
    if "wsrelay-alt" in args.only and not args.twistd_alt:
        p.error("instance wsrelay-alt needs --twistd-alt PATH")
    args.scenarios = args.scenarios.split(",") if args.scenarios else ALL_SCENARIOS
    for name in args.only:
        if name not in INSTANCES:
            p.error(f"unknown instance {name!r}")
    for name in args.scenarios:
        if name not in ALL_SCENARIOS + EXTRA_SCENARIOS:
            p.error(f"unknown scenario {name!r}")
    if args.no_pin:
        args.proxy_cpus = args.load_cpus = None
    return args


def add_common_args(p: argparse.ArgumentParser) -> None:
    """Options of every harness here (bench.py, soak.py, storm.py): results, pinning, programs."""
    p.add_argument("--out", default=os.path.join(HERE, "results"), help="results directory")
    p.add_argument("--proxy-cpus", default="0", help="taskset CPU list for the proxy (default 0)")
    p.add_argument("--load-cpus", default="1", help="taskset CPU list for load generator and upstreams (default 1)")
    p.add_argument("--no-pin", action="store_true", help="do not pin processes with taskset")
    p.add_argument("--twistd", default=os.path.join(os.path.dirname(sys.executable), "twistd"))
    p.add_argument("--twistd-alt", help="another venv's twistd, run as instance wsrelay-alt (variant relay-alt)")
    p.add_argument("--wsrelay-access-log", choices=("off", "combined", "json"), default="off",
                   help="wsrelay's access log: off (default, as nginx's), or a file in that format")
    p.add_argument("--nginx", default=shutil.which("nginx") or "/usr/sbin/nginx")
    p.add_argument("--node", default=shutil.which("node") or "node")
    p.add_argument("--wrk", default=shutil.which("wrk") or "wrk")


def prepare(args: argparse.Namespace, name: str) -> tuple[str, str, int]:
    """Pin the harness to the load cores, raise the open-file limit, turn SIGTERM into
    KeyboardInterrupt, make the results directory: (timestamp, work directory, open-file limit)."""
    if args.load_cpus is not None:
        os.sched_setaffinity(0, {int(c) for c in args.load_cpus.split(",")})  # the harness too
    nofile = raise_nofile()

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    os.makedirs(args.out, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return stamp, tempfile.mkdtemp(prefix=f"wsrelay-{name}-"), nofile


def keep_logs(workdir: str, logs: str) -> None:
    """Copy the logs and configurations of a work directory to ``logs``, then remove it."""
    try:
        os.makedirs(logs, exist_ok=True)
        for fn in os.listdir(workdir):
            if fn.endswith((".log", ".conf", ".ini")):
                shutil.copy(os.path.join(workdir, fn), logs)
        shutil.rmtree(workdir, ignore_errors=True)
    except OSError as e:
        print(f"bench: could not keep logs: {e}", flush=True)


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for want in (65536, hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (max(want, soft), max(want, hard)))
            break
        except (ValueError, OSError):
            continue
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _repo_relative(value: Any) -> Any:
    """A path inside the repository as a path relative to it (results name no machine's paths)."""
    if isinstance(value, str) and os.path.isabs(value) and value.startswith(REPO + os.sep):
        return os.path.relpath(value, REPO)
    return value


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    for tool in (args.twistd, args.nginx, args.node, args.wrk, *([args.twistd_alt] if args.twistd_alt else [])):
        if not (os.path.exists(tool) or shutil.which(tool)):
            print(f"bench: {tool} not found (run sh bench/run.sh, which installs it)", file=sys.stderr)
            return 2
    if not os.path.isdir(os.path.join(HERE, "node_modules", "ws")):
        print("bench: bench/node_modules/ws missing (run sh bench/run.sh)", file=sys.stderr)
        return 2
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2 and not args.no_pin:
        print("bench: fewer than 2 CPUs available: not pinning (figures will be less clean)", flush=True)
        args.proxy_cpus = args.load_cpus = None
    stamp, workdir, nofile = prepare(args, "bench")
    need = 2 * max(args.idle_counts) + 200
    if nofile < need:
        print(f"bench: open-file limit {nofile} < {need}: lowering idle counts", flush=True)
        args.idle_counts = [min(n, (nofile - 200) // 2) for n in args.idle_counts]
    procs = Procs(workdir)
    bench = Bench(args, workdir, procs)
    info = meta(args)
    print(f"wsrelay bench {stamp}: {args.runs} run(s) x {args.duration}s windows, proxy on cores "
          f"{args.proxy_cpus}, load generator + upstreams on cores {args.load_cpus}; "
          f"open-file limit {nofile}; work dir {workdir}", flush=True)
    started = time.monotonic()
    status = 0
    try:
        bench.start_upstreams()
        names = [n for n in INSTANCES if n in args.only]
        for rep in range(args.runs):
            # rotate the order each repetition so slow drift on a shared machine spreads evenly
            order = names[rep % len(names):] + names[:rep % len(names)]
            for name in order:
                bench.run_instance(name, rep)
        if not args.no_memory:
            mem_variants = [v for v, (kind, w, _) in MEMORY.items()
                            if any(INSTANCES[n][0] == kind and INSTANCES[n][1] == w for n in args.only)]
            for rep in range(args.memory_runs):
                for variant in mem_variants:
                    bench.run_memory_variant(variant, rep)
    except KeyboardInterrupt:
        print("bench: interrupted, stopping everything", flush=True)
        status = 130
    except BenchError as e:
        bench.problem("bench", str(e))
        status = 1
    finally:
        procs.stop_all()
        info["elapsed_s"] = time.monotonic() - started
        info["loadavg_end"] = read_text("/proc/loadavg").split()[:3]
        logs = os.path.join(args.out, f"{stamp}-logs")
        keep_logs(workdir, logs)
    summary = report.summarise(bench.runs, bench.memory)
    data = {"meta": info, "summary": summary, "problems": bench.problems, "notes": bench.notes,
            "runs": bench.runs, "memory": bench.memory}
    json_path = os.path.join(args.out, f"{stamp}.json")
    with open(json_path, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
    text = report.render(data)
    txt_path = os.path.join(args.out, f"{stamp}.txt")
    with open(txt_path, "w") as f:
        f.write(text)
    print()
    print(text)
    print(f"results: {json_path}\n         {txt_path}\n         {logs}/ (proxy logs and configs)")
    print(f"elapsed: {info['elapsed_s']:.0f}s")
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
