"""Medians, ratios, targets and the reStructuredText summary of a bench run (pure: no I/O)."""

from __future__ import annotations

import re
import statistics
from typing import Any

_TWISTED = re.compile(r"^\d{4}-\d\d-\d\dT\S+ \[([^\]]*)\] ?(.*)$")
_NGINX = re.compile(r"^\d{4}/\d\d/\d\d \S+ \[(\w+)\] \d+#\d+: (?:\*\d+ )?(.*?)(?:, client: .*)?$")
# nginx warnings that are its normal way of working (disk buffering of large bodies)
_NGINX_NOTES = ("buffered to a temporary file",)


def log_findings(text: str) -> dict[tuple[str, str], tuple[int, list[str]]]:
    """Warnings, errors and tracebacks in a twistd or nginx log, grouped: (level, message) ->
    (count, the first record's lines).  Level "note" marks nginx's routine disk buffering."""
    records: list[list[str]] = []
    for line in text.splitlines():
        if records and (line.startswith("\t") or not line.strip()
                        or not (_TWISTED.match(line) or _NGINX.match(line))):
            records[-1].append(line)
        else:
            records.append([line])
    out: dict[tuple[str, str], tuple[int, list[str]]] = {}
    for rec in records:
        head = rec[0]
        body = "\n".join(rec)
        level, message = "", head
        if m := _TWISTED.match(head):
            namespace, message = m.groups()
            level = namespace.rsplit("#", 1)[1] if "#" in namespace else "info"
            message = f"[{namespace.split('#')[0]}] {message}"
        elif m := _NGINX.match(head):
            level, message = m.groups()
            if any(n in message for n in _NGINX_NOTES):
                level = "note"
                message = re.sub(r" /\S+", " <file>", message)
        if "Traceback" in body or "Unhandled" in body:
            level = "error" if level in ("", "info", "debug") else level
            last = [x.strip() for x in rec if x.strip()][-1]
            message = f"{message} -> {last}"
        if level not in ("warn", "warning", "error", "critical", "crit", "alert", "emerg", "note"):
            continue
        message = re.sub(r"\d{4,}", "N", message)[:300]
        count, example = out.get((level, message), (0, rec[:14]))
        out[(level, message)] = (count + 1, example)
    return out

PROXIES = ["nginx", "nginx-tuned", "relay", "tunnel", "relay-w2", "relay-admin", "relay-alt"]
ALL = ["direct"] + PROXIES
SCENARIOS = ["ws_64B", "ws_16KiB", "ws_1MiB", "ws_64B_deflate", "lat_1conn", "lat_100conn",
             "http_small", "http_1MiB_get", "http_1MiB_post", "http_post_early"]
METRICS = ["cpu_ms_per_1k", "rate_per_s", "mb_per_s", "p50_us", "p99_us", "proxy_cpu_pct",
           "loadgen_cpu_pct", "upstream_cpu_pct", "cpu0_busy_pct", "cpu1_busy_pct"]

# (label, variant, scenario or memory key, limit): ratios are to nginx (usual recipe), same run
TARGETS = [  # issue 11
    ("relay 64 B CPU/msg vs nginx", "relay", "ws_64B", 1.6),
    ("relay 16 KiB CPU/msg vs nginx", "relay", "ws_16KiB", 1.1),
    ("relay 1 MiB CPU/msg vs nginx", "relay", "ws_1MiB", 1.1),
    ("tunnel 64 B CPU/msg vs nginx", "tunnel", "ws_64B", 1.0),
    ("tunnel 16 KiB CPU/msg vs nginx", "tunnel", "ws_16KiB", 1.0),
    ("tunnel 1 MiB CPU/msg vs nginx", "tunnel", "ws_1MiB", 1.0),
    ("HTTP small GET CPU/req vs nginx", "relay", "http_small", 1.5),
    ("HTTP 1 MiB GET CPU/req vs nginx", "relay", "http_1MiB_get", 1.2),
    ("HTTP 1 MiB POST CPU/req vs nginx", "relay", "http_1MiB_post", 1.2),
]
MEMORY_TARGETS = [("relay idle KiB/conn", "relay", 8.0), ("tunnel idle KiB/conn", "tunnel", 4.0)]


def stats(values: list[float]) -> dict[str, float] | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def summarise(runs: dict[str, dict[str, list[dict[str, Any]]]],
              memory: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    out: dict[str, Any] = {"figures": {}, "ratios": {}, "memory": {}, "targets": []}
    for variant, scen in runs.items():
        for scenario, items in scen.items():
            out["figures"].setdefault(variant, {})[scenario] = {
                m: s for m in METRICS if (s := stats([r.get(m) for r in items])) is not None}
    for variant in PROXIES:
        # relay-admin / relay: the admin listener's cost; relay / relay-alt: an A/B of two versions
        for ref in ("nginx", "nginx-tuned", *(("relay",) if variant == "relay-admin" else ()),
                    *(("relay-alt",) if variant == "relay" else ())):
            if variant == ref:
                continue
            for scenario in SCENARIOS:
                mine = {r["run"]: r.get("cpu_ms_per_1k") for r in runs.get(variant, {}).get(scenario, [])}
                base = {r["run"]: r.get("cpu_ms_per_1k") for r in runs.get(ref, {}).get(scenario, [])}
                ratios = [mine[k] / base[k] for k in mine if k in base and mine[k] and base[k]]
                s = stats(ratios)
                if s:
                    out["ratios"].setdefault(variant, {}).setdefault(ref, {})[scenario] = s
    for variant, items in memory.items():
        keys = sorted({k for r in items for k in r if k != "run"})
        out["memory"][variant] = {k: s for k in keys if (s := stats([r.get(k) for r in items]))}
    for label, variant, scenario, limit in TARGETS:
        s = out["ratios"].get(variant, {}).get("nginx", {}).get(scenario)
        out["targets"].append({"target": label, "limit": limit,
                               "measured": s["median"] if s else None,
                               "met": (s["median"] <= limit) if s else None})
    for label, variant, limit in MEMORY_TARGETS:
        m = out["memory"].get(variant, {})
        key = max((k for k in m if k.startswith("kib_per_conn_")), key=lambda k: int(k.rsplit("_", 1)[1]),
                  default=None)
        val = m[key]["median"] if key else None
        out["targets"].append({"target": f"{label} ({key.rsplit('_', 1)[1] if key else '?'} conns)",
                               "limit": limit, "measured": val,
                               "met": (val <= limit) if val is not None else None})
    return out


def num(x: float | None) -> str:
    if x is None:
        return "-"
    ax = abs(x)
    if ax >= 1000:
        return f"{x:,.0f}"
    if ax >= 100:
        return f"{x:.0f}"
    if ax >= 10:
        return f"{x:.1f}"
    if ax >= 1:
        return f"{x:.2f}"
    return f"{x:.3f}"


def kilo(x: float) -> str:
    """Compact counts: 69062 -> 69.1k, 541 -> 541."""
    return f"{x / 1000:.1f}k" if abs(x) >= 10000 else (f"{x / 1000:.2f}k" if abs(x) >= 1000 else f"{x:.0f}")


def cell(s: dict[str, float] | None, scale: float = 1.0, ratio: bool = False, fmt: Any = None) -> str:
    if not s:
        return "-"
    if ratio:
        fmt = fmt or (lambda x: f"{x:.2f}")
    fmt = fmt or num
    suffix = "x" if ratio else ""
    med, lo, hi = s["median"] * scale, s["min"] * scale, s["max"] * scale
    if s.get("n", 1) == 1:
        return f"{fmt(med)}{suffix}"
    return f"{fmt(med)}{suffix} ({fmt(lo)}-{fmt(hi)})"


def table(headers: list[str], rows: list[list[str]]) -> str:
    rows = [[c if c else "-" for c in r] for r in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows)]
    sep = "  ".join("=" * w for w in widths)

    def line(cells: list[str]) -> str:
        return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()

    return "\n".join([sep, line(headers), sep] + [line(r) for r in rows] + [sep]) + "\n"


def bound_of(proxy: float, load: float, other0: float, other1: float) -> str:
    """What limited a scenario, from CPU percentages of one window (100 = one core)."""
    if proxy >= 90:
        return "proxy"
    if load >= 90:
        return "load side"
    if other0 >= 15 or other1 >= 15:
        return "shared"
    return "latency"


def one_line(variant: str, scenario: str, r: dict[str, Any]) -> str:
    parts = [f"{variant:11s} {scenario:15s}", f"{r['rate_per_s']:10.0f}/s", f"{r['mb_per_s']:8.1f} MB/s"]
    if "cpu_ms_per_1k" in r:
        parts.append(f"proxy {r['cpu_ms_per_1k']:8.2f} ms/1k ({r['proxy_cpu_pct']:3.0f}% CPU)")
    if "p50_us" in r:
        parts.append(f"p50 {r['p50_us'] / 1000:.2f} ms p99 {r['p99_us'] / 1000:.2f} ms")
    parts.append(f"loadgen {r.get('loadgen_cpu_pct', 0):3.0f}% upstream {r.get('upstream_cpu_pct', 0):3.0f}%")
    return "  ".join(parts)


SCEN_LABEL = {
    "ws_64B": "WS 64 B", "ws_16KiB": "WS 16 KiB", "ws_1MiB": "WS 1 MiB", "ws_64B_deflate": "WS 64 B deflate",
    "lat_1conn": "WS lat 1 conn", "lat_100conn": "WS lat 100 conn",
    "http_small": "HTTP small GET", "http_1MiB_get": "HTTP 1 MiB GET", "http_1MiB_post": "HTTP 1 MiB POST",
    "http_post_early": "HTTP POST early",
}


def render(data: dict[str, Any]) -> str:
    meta, summ, problems = data["meta"], data["summary"], data["problems"]
    fig, rat, mem = summ["figures"], summ["ratios"], summ["memory"]
    present = {s for v in fig.values() for s in v}
    SCEN = [s for s in SCENARIOS if s in present]
    a = meta["args"]
    out: list[str] = []
    title = f"wsrelay benchmark {meta['date']} (git {meta['git']})"
    out += [title, "=" * len(title), ""]
    out.append(f"{meta['cpus']} x {meta['cpu_model']}, Linux {meta['kernel']}; {meta['nginx']}; "
               f"node {meta['node']}; Python {meta['python']}, Twisted {meta['versions'].get('Twisted')}, "
               f"autobahn {meta['versions'].get('autobahn')}.")
    out.append(f"{a['runs']} run(s), {a['duration']} s measured after {a['warmup']} s warm-up per "
               f"scenario; proxy pinned to cores {a['proxy_cpus']}, load generator and upstreams to "
               f"cores {a['load_cpus']}; load average {' '.join(meta['loadavg_start'])} at start, "
               f"{' '.join(meta.get('loadavg_end', ['?']))} at end; {meta.get('elapsed_s', 0):.0f} s in all.")
    out.append("Cells: median (min-max) over the runs.  Ratios: median of the per-run ratios.")
    out.append("")

    def section(name: str) -> None:
        out.extend([name, "-" * len(name), ""])

    section("Proxy CPU per 1,000 messages or requests (ms)")
    rows = []
    for s in SCEN:
        rows.append([SCEN_LABEL[s]] + [cell(fig.get(v, {}).get(s, {}).get("cpu_ms_per_1k")) for v in PROXIES])
    out.append(table(["scenario"] + PROXIES, rows))
    out.append("A WebSocket message is one echo: it crosses the proxy twice (client to upstream and back).")
    out.append("")

    section("Ratios of proxy CPU per message/request")
    pairs = [("nginx-tuned", "nginx"), ("relay", "nginx"), ("relay", "nginx-tuned"), ("tunnel", "nginx"),
             ("tunnel", "nginx-tuned"), ("relay-w2", "nginx"), ("relay-w2", "nginx-tuned"),
             ("relay-admin", "relay"), ("relay", "relay-alt")]
    rows = []
    for s in SCEN:
        rows.append([SCEN_LABEL[s]] + [cell(rat.get(v, {}).get(ref, {}).get(s), ratio=True) for v, ref in pairs])
    short = {"nginx": "nginx", "nginx-tuned": "tuned", "relay": "relay", "tunnel": "tunnel", "relay-w2": "w2",
             "relay-admin": "admin", "relay-alt": "alt"}
    out.append(table(["scenario"] + [f"{short[v]}/{short[ref]}" for v, ref in pairs], rows))

    section("Targets (ratio to nginx usual recipe, same run)")
    rows = []
    for t in summ["targets"]:
        verdict = "n/a" if t["met"] is None else ("met" if t["met"] else "MISSED")
        unit = "" if "idle" in t["target"] else "x"
        value = "-" if t["measured"] is None else (f"{t['measured']:.1f}" if not unit else f"{t['measured']:.2f}x")
        rows.append([t["target"], f"<= {t['limit']}{unit}", value, verdict])
    out.append(table(["target", "limit", "measured", "verdict"], rows))

    section("Throughput: messages or requests per second")
    rows = []
    for s in SCEN:
        rows.append([SCEN_LABEL[s]] + [cell(fig.get(v, {}).get(s, {}).get("rate_per_s"), fmt=kilo) for v in ALL])
    out.append(table(["scenario"] + ALL, rows))
    out.append("Payload MB/s (one way, median): " + "; ".join(
        f"{SCEN_LABEL[s]}: " + ", ".join(f"{v} {num(fig[v][s]['mb_per_s']['median'])}" for v in ALL
                                         if s in fig.get(v, {}))
        for s in ("ws_16KiB", "ws_1MiB", "http_1MiB_get", "http_1MiB_post")) + ".")
    out.append("")

    section("Latency p50 / p99 (ms)")
    rows = []
    for s in [x for x in SCEN if x.startswith(("lat", "http"))]:
        row = [SCEN_LABEL[s]]
        for v in ALL:
            f = fig.get(v, {}).get(s)
            row.append(f"{num(f['p50_us']['median'] / 1000)} / {num(f['p99_us']['median'] / 1000)}"
                       if f and "p50_us" in f else "-")
        rows.append(row)
    out.append(table(["scenario"] + ALL, rows))
    out.append("WS latency: closed loop, one 64 B message in flight per connection.  HTTP: wrk's "
               "latency distribution under the load of the throughput test.")
    out.append("")

    section("Idle WebSocket memory (proxy RSS increase per connection, KiB)")
    counts = sorted({int(k.rsplit("_", 1)[1]) for m in mem.values() for k in m if k.startswith("kib_per_conn_")})
    rows = []
    for v in PROXIES:
        m = mem.get(v)
        if not m:
            continue
        rows.append([v, cell(m.get("base_rss_kib"), scale=1 / 1024)]
                    + [cell(m.get(f"kib_per_conn_{n}")) for n in counts]
                    + [cell(m.get(f"open_s_{counts[-1]}"))] if counts else [])
    if rows:
        out.append(table(["proxy", "RSS before (MiB)"] + [f"KiB/conn at {n}" for n in counts]
                         + [f"s to open {counts[-1]}"], rows))

    section("Load check (medians): is the load generator the bottleneck?")
    rows = []
    for v in ALL:
        for s in SCEN:
            f = fig.get(v, {}).get(s)
            if not f:
                continue

            p, lg, up, c0, c1 = (f[k]["median"] if k in f else 0.0 for k in (
                "proxy_cpu_pct", "loadgen_cpu_pct", "upstream_cpu_pct", "cpu0_busy_pct", "cpu1_busy_pct"))
            other0, other1 = max(c0 - p, 0.0), max(c1 - lg - up, 0.0)
            rows.append([v, SCEN_LABEL[s], num(p), num(lg), num(up), num(other0), num(other1),
                         bound_of(p, lg + up, other0, other1)])
    out.append(table(["variant", "scenario", "proxy %", "loadgen %", "upstream %", "others core0 %",
                      "others core1 %", "limit"], rows))
    out.append("proxy/loadgen/upstream %: CPU time of those processes over the measured window "
               "(100 = one core).  others: the rest of that core's busy time (/proc/stat): other "
               "tenants of the machine, and kernel work such as loopback softirqs.  limit: "
               "'proxy' = the proxy used >= 90 % of its core; 'load side' = load generator plus "
               "upstream used >= 90 % of theirs (then that proxy's throughput is a lower bound, "
               "its CPU per message is still valid); 'shared' = other processes took >= 15 % of "
               "a core; 'latency' = nobody saturated (closed-loop round trips).")
    out.append("")

    rows = []
    for s in SCEN:
        d = fig.get("direct", {}).get(s, {}).get("rate_per_s")
        best = max(((fig[v][s]["rate_per_s"]["median"], v) for v in PROXIES if s in fig.get(v, {})), default=None)
        if d and best:
            rows.append([SCEN_LABEL[s], kilo(d["median"]), f"{kilo(best[0])} ({best[1]})",
                         f"{d['median'] / best[0]:.2f}"])
    if rows:
        out.append("Direct connection against the fastest proxy (medians, per second):")
        out.append("")
        out.append(table(["scenario", "direct", "fastest proxied", "direct / fastest"], rows))

    section("Problems seen")
    if not problems:
        out.append("None: no client errors, no wrk errors, no warnings or errors in the proxy logs.")
    for p in problems:
        out.append(f"- [{p['where']}] {p['what']}")
        if p["lines"]:
            out.append("")
            out.append("  ::")
            out.append("")
            for line in p["lines"][:14]:
                out.append(f"    {line[:220]}")
            out.append("")
    notes = data.get("notes") or []
    if notes:
        total: dict[tuple[str, str], int] = {}
        for n in notes:
            count, _, what = n["what"].partition(" x ")
            key = (n["where"].split(" (")[0], what)
            total[key] = total.get(key, 0) + int(count)
        out.append("")
        out.append("Notes (routine, not problems): " + "; ".join(
            f"{where}: {count} x {what}" for (where, what), count in total.items()) + ".")
    out.append("")
    return "\n".join(out)
