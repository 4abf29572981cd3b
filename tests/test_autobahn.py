"""The Autobahn testsuite (run by kosoku) through the real ``twistd -n wsrelay``.

- fuzzingclient against wsrelay in relay mode and in tunnel mode, in front of an Autobahn echo
  upstream: every case, compression included (by default a subset of 12.* and 13.*, see below);
- fuzzingserver as wsrelay's upstream, with an echoing Autobahn client in front, so wsrelay's
  client side (its upstream leg, with permessage-deflate toward the upstream) is tested too.

No case may fail; every NON-STRICT or INFORMATIONAL result must be listed, with its reason, in
docs/autobahn.rst.  wsrelay's own pings are off here: the case files record an unsolicited ping as
an unexpected event.

Every case runs, except by default the bulk of the compression cases.  Of the 18 cases in each
of the 12 groups of 12.* and 13.* (1000 compressed messages each, one group per offer and window
size), CI keeps six: payloads of 16 B, 64 B, 256 B, 1 KiB and 4 KiB, and 8 KiB in 256-byte
fragments.  These cross the window sizes the groups negotiate and compress a message across
frames; the twelve left out repeat that with larger payloads (8 KiB to 128 KiB), which only adds
volume, and would take the suite from minutes to half an hour on a 2-core machine (deflate in
three Python processes per message).  ``WSRELAY_AUTOBAHN_FULL=1`` runs all 517 cases;
docs/autobahn.rst records the last full run.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import ROOT, Process, RelayProcess

CONCURRENCY = 4
#: Every killAfter/closeAfter timer of the cases lasts this many times longer (see
#: tests/kosoku_run.py): their half-second kill timers were missed through two extra Python hops
#: on a loaded 2-core machine (6.11.3 and 6.11.4 UNCLEAN in tunnel mode).  This only gives a slow
#: peer more time; a wrong answer is still a failure, and nothing is ever run again.
TIMER_SCALE = 4
MODE_NAMES = ("relay", "tunnel", "server")
#: For quick local runs only, e.g. WSRELAY_AUTOBAHN_CASES="1.* 5.*" (case ids or globs).
SELECTED = os.environ.get("WSRELAY_AUTOBAHN_CASES", "").split()
FULL = os.environ.get("WSRELAY_AUTOBAHN_FULL") == "1"
#: For local runs: some of the modes, e.g. WSRELAY_AUTOBAHN_MODES="tunnel server".
MODES = os.environ.get("WSRELAY_AUTOBAHN_MODES", " ".join(MODE_NAMES)).replace(",", " ").split()
#: The compression cases left out unless FULL: 12.G.6-10 and 12.G.12-18, the same in 13.*.
BULK = [f"{family}.*.{n}" for family in (12, 13) for n in (*range(6, 11), *range(12, 19))]
SELECTION = ([arg for case in SELECTED for arg in ("-i", case)]
             + ([] if FULL or SELECTED else [arg for case in BULK for arg in ("-x", case)]))
ALL_CASES = 517
#: Seconds the three runs may take together (CI's subset: about two minutes on 2 cores), or each
#: mode in a full run (about ten minutes alone).
BOUND = 3600 if FULL else 1200
BULK_CASES = 12 * (5 + 7)  # twelve cases in each of the five 12.G and seven 13.G groups
BAD_BEHAVIOR = {"FAILED", "ERROR", "UNIMPLEMENTED"}
BAD_CLOSE = {"FAILED", "FAILED BY CLIENT", "UNCLEAN", "WRONG CODE"}


def kosoku(*args: str) -> list[str]:
    """The command that runs kosoku with ``args``, its cases' timers scaled by TIMER_SCALE."""
    return [sys.executable, "-m", "tests.kosoku_run", "--timer-scale", str(TIMER_SCALE), *args]


def selected_modes() -> list[str]:
    """The modes WSRELAY_AUTOBAHN_MODES picks; an unknown name or an empty choice is an error."""
    unknown = [m for m in MODES if m not in MODE_NAMES]
    assert not unknown, f"WSRELAY_AUTOBAHN_MODES: unknown mode(s) {unknown}; choose among {list(MODE_NAMES)}"
    assert MODES, f"WSRELAY_AUTOBAHN_MODES selects no mode; choose among {list(MODE_NAMES)}"
    return [m for m in MODE_NAMES if m in MODES]


def selected_cases() -> list[str]:
    """The case ids the selection picks, as listed from kosoku's own case index."""
    blank = "WSRELAY_AUTOBAHN_CASES" in os.environ and not SELECTED
    assert not blank, "WSRELAY_AUTOBAHN_CASES is set but selects nothing (unset it to run the default cases)"
    listing = subprocess.run([sys.executable, "-m", "tests.kosoku_run", "--list", *SELECTION], cwd=ROOT,
                             capture_output=True, text=True, timeout=120)
    assert listing.returncode == 0, listing.stderr[-2000:]
    ids = listing.stdout.split()
    assert ids, f"the case selection {SELECTION} matches no case"
    if not SELECTED:
        assert len(ids) == (ALL_CASES if FULL else ALL_CASES - BULK_CASES), len(ids)
    return ids


def documented() -> dict[str, set[str]]:
    """Case ids documented as NON-STRICT or INFORMATIONAL in docs/autobahn.rst, per mode."""
    found: dict[str, set[str]] = {}
    mode = None
    for line in (ROOT / "docs" / "autobahn.rst").read_text().splitlines():
        m = re.match(r"^Mode: (\S+)", line)
        if m:
            mode = m.group(1)
            continue
        m = re.match(r"^- ``([\d.]+)``", line)
        if m and mode:
            found.setdefault(mode, set()).add(m.group(1))
    return found


def reports(outdir: Path) -> list[dict[str, Any]]:
    """kosoku's per-case JSON reports."""
    return [json.loads(f.read_text()) for f in sorted(outdir.glob("*_case_*.json"))]


def failing(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in results if r["behavior"] in BAD_BEHAVIOR or r["behaviorClose"] in BAD_CLOSE]


def outcome(r: dict[str, Any]) -> str:
    """One case's result as a line: what it got, how the connection ended, how long it took."""
    return (f"{r['id']}: {r['behavior']}/{r['behaviorClose']}, received {str(r.get('received'))[:120]}, "
            f"clean {r.get('wasClean')} ({r.get('wasNotCleanReason')}), close codes local "
            f"{r.get('localCloseCode')} remote {r.get('remoteCloseCode')}, {r.get('duration')} ms")


def judge(results: list[dict[str, Any]], exit_status: int, mode: str, expected: list[str]) -> None:
    """Every selected case reported once, none failed, every notable one documented, kosoku exited 0."""
    failed = [f"{r['id']}: {r['behavior']}/{r['behaviorClose']} {r['result']}" for r in failing(results)]
    assert not failed, f"{len(failed)} Autobahn cases failed in {mode} mode:\n" + "\n".join(failed[:40])
    notable = {r["id"] for r in results if r["behavior"] != "OK" or r["behaviorClose"] != "OK"}
    undocumented = notable - documented().get(mode, set())
    assert not undocumented, f"not listed in docs/autobahn.rst under 'Mode: {mode}': {sorted(undocumented)}\n" + \
        "\n".join(outcome(r) for r in results if r["id"] in undocumented)
    ids = sorted(r["id"] for r in results)
    assert len(results) == len(expected), f"{len(results)} cases reported in {mode} mode, not {len(expected)}"
    assert ids == sorted(expected), f"{mode} mode: reported cases differ from the selection: " \
        f"missing {sorted(set(expected) - set(ids))[:20]}, unexpected or repeated " \
        f"{sorted(set(i for i in ids if ids.count(i) > 1) | (set(ids) - set(expected)))[:20]}"
    assert exit_status == 0, f"kosoku exited with {exit_status} in {mode} mode"


# kosoku runs in processes of its own: it imports the Autobahn case files through a shim of
# Autobahn that must not meet the real Autobahn already imported by this test process.

async def run_client(address: str, outdir: Path) -> tuple[list[dict[str, Any]], int]:
    """kosoku in fuzzingclient mode against ``address`` (host:port/path): reports and exit status."""
    proc = await asyncio.create_subprocess_exec(
        *kosoku("-m", "fuzzingclient", address, "-o", str(outdir), "-p", str(CONCURRENCY), *SELECTION),
        cwd=str(ROOT), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    results = reports(outdir)
    assert results, f"kosoku wrote no reports (exit {proc.returncode}): {err.decode(errors='replace')[-2000:]}"
    assert proc.returncode is not None
    return results, proc.returncode


async def run_server_mode(start_relay: Callable[..., RelayProcess],
                          outdir: Path) -> tuple[list[dict[str, Any]], int]:
    """kosoku's fuzzingserver as wsrelay's upstream, driven by an echoing client in front:
    reports and kosoku's exit status."""
    server = await asyncio.create_subprocess_exec(
        *kosoku("-m", "fuzzingserver", "127.0.0.1:0", "-o", str(outdir), *SELECTION),
        cwd=str(ROOT), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    testee = None
    try:
        assert server.stdout is not None
        line = await asyncio.wait_for(server.stdout.readline(), 30)
        m = re.search(rb"listening on ws://127\.0\.0\.1:(\d+)", line)
        assert m, line
        relay = start_relay(relay_config(int(m.group(1)), "ws_upstream_compression = on\n"), name="server.ini")
        testee = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.autobahn_testee", f"ws://127.0.0.1:{relay.port}", "wsrelay",
            str(CONCURRENCY),
            cwd=str(ROOT), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        _, err = await testee.communicate()
        assert testee.returncode == 0, err.decode(errors="replace")[-2000:]
        out, _ = await asyncio.wait_for(server.communicate(), 60)
        results = reports(outdir)
        assert results, f"kosoku wrote no reports (exit {server.returncode}): {out.decode(errors='replace')[-2000:]}"
        assert server.returncode is not None
        return results, server.returncode
    finally:
        for proc in (testee, server):
            if proc is not None and proc.returncode is None:
                proc.kill()
                await proc.wait()


@pytest.fixture
def echo_upstream(tmp_path: Path) -> Iterator[int]:
    echo = Process([sys.executable, "-m", "tests.autobahn_echo"], ROOT)
    try:
        yield int(echo.output.wait_for(r"echo listening on (\d+)").group(1))
    finally:
        echo.stop()


def relay_config(upstream_port: int, extra: str = "") -> str:
    return f"""
[wsrelay]
listen = tcp:0:interface=127.0.0.1
access_log = off
[upstream up]
servers = 127.0.0.1:{upstream_port}
[route /]
upstream = up
ws_ping_interval = off
ws_max_message_size = 20M
ws_max_frame_size = 20M
{extra}
[route /tunnel]
upstream = up
ws_mode = tunnel
"""


def test_autobahn_testsuite_relay_tunnel_and_client_side(echo_upstream: int, tmp_path: Path,
                                                          start_relay: Callable[..., RelayProcess]) -> None:
    """Every Autobahn case passes in relay mode, in tunnel mode, and against wsrelay's client side.

    CI's subset runs the three modes concurrently (each with its own wsrelay process) to keep the
    suite short, and every case must pass under that load: a case that fails is a failure, never
    run again.  A full run goes one mode at a time: three modes of the long compression cases at
    once starve a 2-core machine, and kosoku fails a case that takes over its deadline.
    """
    modes = selected_modes()
    expected = selected_cases()
    relay = start_relay(relay_config(echo_upstream))
    runs = {
        "relay": lambda out: run_client(f"127.0.0.1:{relay.port}/", out),
        "tunnel": lambda out: run_client(f"127.0.0.1:{relay.port}/tunnel", out),
        "server": lambda out: run_server_mode(start_relay, out),
    }

    async def all_modes() -> list[tuple[list[dict[str, Any]], int]]:
        if FULL:
            return [await asyncio.wait_for(runs[mode](tmp_path / mode), timeout=BOUND) for mode in modes]
        return await asyncio.wait_for(asyncio.gather(*(runs[mode](tmp_path / mode) for mode in modes)),
                                      timeout=BOUND)

    errors = []
    for (results, exit_status), mode in zip(asyncio.run(all_modes()), modes):
        try:
            judge(results, exit_status, mode, expected)
        except AssertionError as e:
            errors.append(str(e))
    if "relay" in modes:
        # Which path the relayed pairs took: the lean one, permessage-deflate included (wsrelay
        # logs a route's first pair on each path).
        logged = "\n".join(relay.output.lines)
        if "first relayed pair on the lean path" not in logged:
            errors.append("relay mode: no pair took the lean path")
        if "first relayed pair on the autobahn path" in logged:
            errors.append("relay mode: a pair stayed on Autobahn's legs")
    if errors:  # what wsrelay said meanwhile (warnings, aborts, errors: access_log is off)
        errors.append("wsrelay's log (relay and tunnel modes), last 60 lines:\n" + "\n".join(relay.output.lines[-60:]))
    assert not errors, "\n\n".join(errors)
