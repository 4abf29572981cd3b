"""The soak's verdicts and summary (pure: no I/O): RSS, descriptors, log classes, message accounting.

Message accounting, per connection id, from the client's ``CC`` line (mixload.js) and the
upstream's ``UPC`` line (upstream.js count):

* both ends closed it cleanly (the client's close 1000 answered): every number must match,
  ``client sent = upstream received = upstream sent = client received`` (echo), or
  ``upstream sent = client received`` (push);
* a side was killed (the client reset it or was SIGKILLed, or the upstream was restarted): what
  one side received is at most what the other sent, and the difference is the messages in flight
  at that moment; for echo pairs it is at most ``WINDOW`` (the client never has more unanswered);
* in every case no message arrived out of order or damaged (``bad`` = 0 at both ends), and no
  connection is left open at the upstream once the clients are gone.
"""

from __future__ import annotations

import datetime as dt
import re
import statistics
from collections import Counter
from typing import Any

WINDOW = 4  # unanswered messages at most per echo pair (mixload.js "window")
GRACE_S = 15.0  # after an upstream restart: passive health's fail_timeout (10 s) and reconnects

_RECORD = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4}) \[([^\]]*)\] ?(.*)$")

# (pattern on the normalised message, reason, only inside an upstream restart window)
LOG_RULES: list[tuple[str, str, bool]] = [
    ((r"wsrelay listening on|wsrelay ready|wsrelay stopped|Loading |Starting factory|Stopping factory"
     r"|twistd N|reactor class|Server Shut Down|Received SIGTERM|Main loop terminated|\(TCP Port N Closed\)"
     r"|^\[\S*\] \S*Site starting on|first relayed pair|draining N open exchanges|workers? "
     r"|max_connections = auto: N client connections"),
     "start-up, first pair, stop", False),
    (r"route /ws/: client connection lost \(", "clients reset their pairs (RST) and victim processes are SIGKILLed",
     False),
    (r"route /ws/: upstream connection lost \(", "the upstream was killed (restart) under open pairs", True),
    (r"WebSocket upstream unreachable: Connection was refused|connect failed: Connection was refused",
     "the upstream was down (restart)", True),
    (r"no response: Connection to the other side was lost", "an upload in flight when the sink was killed", True),
    (r"upstream closed during the handshake", "a handshake in flight when the upstream was killed", True),
]


def normalise(message: str) -> str:
    message = re.sub(r"\b\d+\.\d+\.\d+\.\d+(:\d+)?\b", "ADDR", message)
    message = re.sub(r"\b[\w]+-\d+\b", "ID", message)
    return re.sub(r"\d+", "N", message)[:240]


def parse_log(text: str) -> list[tuple[float | None, str, list[str]]]:
    """twistd log records: (epoch seconds or None, '[namespace#level] message', lines)."""
    out: list[tuple[float | None, str, list[str]]] = []
    for line in text.splitlines():
        m = _RECORD.match(line)
        if m:
            when = dt.datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S%z").timestamp()
            out.append((when, f"[{m.group(2)}] {m.group(3)}", [line]))
        elif out:
            out[-1][2].append(line)
        elif line.strip():
            out.append((None, line, [line]))
    return out


def classify_log(text: str, t0: float, windows: list[tuple[float, float]]) -> list[dict[str, Any]]:
    """Every log record in a class: message template, count, expected or not and why."""
    classes: dict[str, dict[str, Any]] = {}
    for when, message, lines in parse_log(text):
        body = "\n".join(lines)
        key = normalise(message)
        if "Traceback" in body or "Unhandled" in body:
            key += " -> " + normalise([x.strip() for x in lines if x.strip()][-1])
        c = classes.setdefault(key, {"message": key, "count": 0, "outside_windows": 0, "example": lines[:12],
                                     "expected": None, "reason": ""})
        c["count"] += 1
        t = None if when is None else when - t0
        inside = t is not None and any(a - 1.5 <= t <= b + GRACE_S for a, b in windows)
        for pattern, reason, windowed in LOG_RULES:
            if "Traceback" not in body and re.search(pattern, key):
                c["reason"] = reason
                if windowed and not inside:
                    c["outside_windows"] += 1
                break
        else:
            c["reason"] = ""
    for c in classes.values():
        c["expected"] = bool(c["reason"]) and c["outside_windows"] == 0
    return sorted(classes.values(), key=lambda c: (c["expected"], -c["count"]))


def account(client: list[dict[str, Any]], upstream: list[dict[str, Any]], left_open: set[str]) -> dict[str, Any]:
    """Match both ends' records by connection id and check every message (module docstring)."""
    ups = {u["id"]: u for u in upstream}
    cls = {c["id"]: c for c in client}
    t: Counter[str] = Counter()
    wrong: list[dict[str, Any]] = []

    def fail(what: str, c: dict[str, Any] | None, u: dict[str, Any] | None) -> None:
        t["wrong"] += 1
        if len(wrong) < 20:
            wrong.append({"what": what, "client": c, "upstream": u})

    for cid in sorted(set(ups) | set(cls)):
        c, u = cls.get(cid), ups.get(cid)
        t["bad"] += (c or {}).get("bad", 0) + (u or {}).get("bad", 0)
        if (c or {}).get("bad") or (u or {}).get("bad"):
            fail("message out of order or damaged", c, u)
        if cid in left_open:
            fail("still open at the upstream after every client had gone", c, u)
        if u is not None:
            t["stalls"] += u.get("stalls", 0)
        if c is None:  # a victim process's connection: only the upstream's side is known
            t["victim_pairs"] += 1
            t["victim_msgs_upstream"] += u["recv"]
            continue
        t["client_" + c["end"]] += 1
        t["sent"] += c["sent"] if c["kind"] != "push" else (u or {}).get("sent", 0)
        t["received"] += c["recv"]
        if u is None:
            if c["end"] == "refused":
                continue
            fail("no record at the upstream", c, u)
            continue
        echo = c["kind"] != "push"
        if c["end"] == "clean" and u["end"] == "closed":
            t["clean"] += 1
            same = (c["sent"] == u["recv"] == u["sent"] == c["recv"]) if echo else (u["sent"] == c["recv"])
            if not same:
                fail("clean close, but the counts differ", c, u)
            continue
        t["killed_pairs"] += 1
        to_up = c["sent"] - u["recv"] if echo else 0
        to_client = u["sent"] - c["recv"]
        if to_up < 0 or to_client < 0 or (u["recv"] > c["sent"] if echo else u["recv"] > 0):
            fail("a side received more than the other sent", c, u)
        elif echo and c["sent"] - c["recv"] > WINDOW:
            fail(f"more than {WINDOW} echo messages missing", c, u)
        t["in_flight"] += max(to_up, 0) + max(to_client, 0)
        if c["end"] == "stuck" or (c["end"].startswith("closing-") and u["end"] != "killed"):
            fail(f"client end {c['end']}", c, u)
        if c["end"] == "peer" and u["end"] != "killed":
            fail("the proxy closed a pair whose upstream was not killed", c, u)
    return {"totals": dict(t), "wrong": wrong, "connections": len(set(ups) | set(cls))}


def summarise(*, meta: dict[str, Any], run: dict[str, Any], samples: list[dict[str, Any]],
              restarts: list[dict[str, float]], kills: list[float], client: list[dict[str, Any]],
              upstream: list[dict[str, Any]], errors: list[dict[str, Any]], ends: list[dict[str, Any]],
              log_text: str, t0: float, problems: list[dict[str, Any]], minutes: float) -> dict[str, Any]:
    windows = [(r["start"], r["end"]) for r in restarts]
    load = [s for s in samples if s["phase"] == "load"]
    warm = minutes * 60 / 5
    after = [s for s in load if s["t"] >= warm] or load[-1:]
    rss: dict[str, Any] = {}
    if after:
        first, last = after[0]["rss_kib"], after[-1]["rss_kib"]
        rss = {"after_warmup_kib": first, "end_of_load_kib": last, "max_kib": max(s["rss_kib"] for s in after),
               "growth_pct": round(100.0 * (last - first) / first, 2) if first else None,
               "base_kib": samples[0]["rss_kib"] if samples else None}
        if len(after) >= 6:
            head = statistics.median(s["rss_kib"] for s in after[:3])
            tail = statistics.median(s["rss_kib"] for s in after[-3:])
            rss["growth_median3_pct"] = round(100.0 * (tail - head) / head, 2)
        # the verdict's: the median of the first and of the last minute after the warm-up (six
        # samples each), so that the sawtooth of memory_trim_interval (RSS falls at each trim and
        # climbs back until the next) does not decide it by the phase of one sample
        n = min(6, len(after) // 2)
        if n:
            head = statistics.median(s["rss_kib"] for s in after[:n])
            tail = statistics.median(s["rss_kib"] for s in after[-n:])
            rss["growth_minute_pct"] = round(100.0 * (tail - head) / head, 2)
            rss["min_kib"] = min(s["rss_kib"] for s in after)
    accounting = account(client, upstream, set(run.get("left_open", [])))
    err_classes: Counter[str] = Counter()
    err_outside: list[dict[str, Any]] = []
    for e in errors:
        inside = any(a - 1.5 <= e["t"] <= b + GRACE_S for a, b in windows)
        detail = re.sub(r"\d{4,}", "N", e["detail"])
        err_classes[f"{e['what']}: {detail} ({'restart' if inside else 'OUTSIDE restarts'})"] += 1
        if not inside:
            err_outside.append(e)
    logs = classify_log(log_text, t0, windows)
    drain = run.get("drain", {})
    cpu = [s.get("proxy_cpu_pct", 0.0) for s in load]
    others = [s.get("others_pct", 0.0) for s in load]
    growth = rss.get("growth_minute_pct", rss.get("growth_pct"))
    verdicts = {
        "rss_growth_under_5pct": growth is not None and growth < 5.0,
        "fds_back_to_baseline": bool(drain) and drain["end_fds"] <= drain["base_fds"],
        "no_unexpected_log_record": all(c["expected"] for c in logs),
        "no_error_outside_restarts": not err_outside,
        "every_message_accounted_for": accounting["totals"].get("wrong", 0) == 0 and bool(client),
        "harness_ran_clean": not problems and bool(run),
    }
    verdicts["all_held"] = all(verdicts.values())
    return {
        "meta": meta, "minutes": minutes, "run": run, "samples": samples, "restarts": restarts, "kills": kills,
        "rss": rss, "cpu_pct": {"median": statistics.median(cpu) if cpu else None, "max": max(cpu, default=None)},
        "others_pct": {"median": statistics.median(others) if others else None, "max": max(others, default=None)},
        "accounting": accounting, "load_totals": ends[0] if ends else {},
        "errors": dict(err_classes), "errors_outside_restarts": err_outside[:20], "log_classes": logs,
        "problems": problems, "verdicts": verdicts,
    }


def render(d: dict[str, Any]) -> str:
    m, rss, acc, lt = d["meta"], d["rss"], d["accounting"]["totals"], d["load_totals"]
    drain = d["run"].get("drain", {})
    lines = [
        (f"wsrelay soak, {d['minutes']:g} min, {m.get('date')} (git {m.get('git')}); "
        f"{m.get('cpus')} x {m.get('cpu_model')}; load average {' '.join(m.get('loadavg_start', []))} at start, "
        f"{' '.join(m.get('loadavg_end', []))} at end"),
        "",
        "Verdicts: " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in d["verdicts"].items()),
        "",
        (f"RSS: {rss.get('base_kib', 0) / 1024:.1f} MiB before the load, {rss.get('after_warmup_kib', 0) / 1024:.1f} "
        f"after the warm-up, {rss.get('end_of_load_kib', 0) / 1024:.1f} at the end of the load "
        f"(growth {rss.get('growth_pct')} %, medians of 3 samples: {rss.get('growth_median3_pct')} %, medians of "
        f"the first and last minute: {rss.get('growth_minute_pct')} %, the verdict's), "
        f"min {rss.get('min_kib', 0) / 1024:.1f}, max {rss.get('max_kib', 0) / 1024:.1f}"),
        (f"Descriptors: {drain.get('base_fds')} before the load, {drain.get('end_fds')} at the end "
        f"({drain.get('seconds')} s after the load stopped)"),
        (f"wsrelay CPU: median {d['cpu_pct']['median']} %, max {d['cpu_pct']['max']} % of a core; other processes on "
        f"the machine: median {d['others_pct']['median']} %, max {d['others_pct']['max']} % (of 200 %)"),
        "Upstreams restarted at " + ", ".join(f"{r['start']:.0f} s" for r in d["restarts"])
        + "; victim load generators killed at " + ", ".join(f"{k:.0f}" for k in d["kills"]) + " s",
        "",
        (f"Load: {lt.get('opened', 0)} pairs opened, {lt.get('msgs_sent', 0)} echo messages sent, "
        f"{lt.get('gets', 0)} GETs and {lt.get('uploads', 0)} uploads ({lt.get('upload_bytes', 0) / 2**20:.0f} MiB) "
        f"answered right, {lt.get('vanished', 0)} pairs reset by their client, {lt.get('http_errors', 0)} HTTP errors, "
        f"{lt.get('ws_refused', 0)} handshakes refused"),
        (f"Accounting over {d['accounting']['connections']} connections: {acc.get('sent', 0)} messages sent, "
        f"{acc.get('received', 0)} received; {acc.get('clean', 0)} pairs closed cleanly (counts equal), "
        f"{acc.get('killed_pairs', 0)} with a side killed ({acc.get('in_flight', 0)} messages in flight then), "
        f"{acc.get('victim_pairs', 0)} of SIGKILLed clients; back-pressure waits at the upstream: "
        f"{acc.get('stalls', 0)}; out of order or damaged: {acc.get('bad', 0)}; wrong: {acc.get('wrong', 0)}"),
        "",
        "Client-side errors: " + ("; ".join(f"{n} x {k}" for k, n in sorted(d["errors"].items())) or "none"),
        "",
        "wsrelay log records:",
    ]
    for c in d["log_classes"]:
        mark = "expected" if c["expected"] else "UNEXPECTED"
        lines.append(f"  {c['count']:6d} x {c['message'][:150]}  [{mark}{': ' + c['reason'] if c['reason'] else ''}"
                     f"{', ' + str(c['outside_windows']) + ' outside restart windows' if c['outside_windows'] else ''}]")
    for w in d["accounting"]["wrong"][:10]:
        lines.append(f"WRONG: {w['what']}: client {w['client']} upstream {w['upstream']}")
    for p in d["problems"]:
        lines.append(f"PROBLEM [{p['where']}] {p['what']}")
    lines += ["", "Samples (every 10 s):", "     t  phase    RSS MiB    fds  CPU %  load side %  others %  load average"]
    for s in d["samples"]:
        lines.append(f"{s['t']:6.0f}  {s['phase']:<7} {s['rss_kib'] / 1024:8.1f} {s['fds']:6d} "
                     f"{s.get('proxy_cpu_pct', 0):6.1f} {s.get('bench_cpu_pct', 0):12.1f} {s.get('others_pct', 0):9.1f}  "
                     f"{' '.join(s['loadavg'])}")
    return "\n".join(lines) + "\n"
