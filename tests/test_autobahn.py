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
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import ROOT, Process, RelayProcess

CONCURRENCY = 4
#: For quick local runs only, e.g. WSRELAY_AUTOBAHN_CASES="1.* 5.*".
SELECTED = os.environ.get("WSRELAY_AUTOBAHN_CASES", "").split()
FULL = os.environ.get("WSRELAY_AUTOBAHN_FULL") == "1"
#: For local runs: some of the modes, e.g. WSRELAY_AUTOBAHN_MODES="tunnel server".
MODES = os.environ.get("WSRELAY_AUTOBAHN_MODES", "relay tunnel server").replace(",", " ").split()
#: The compression cases left out unless FULL: 12.G.6-10 and 12.G.12-18, the same in 13.*.
BULK = [f"{family}.*.{n}" for family in (12, 13) for n in (*range(6, 11), *range(12, 19))]
SELECTION = ([arg for case in SELECTED for arg in ("-i", case)]
             + ([] if FULL or SELECTED else [arg for case in BULK for arg in ("-x", case)]))
ALL_CASES = 517
#: Seconds the three runs may take together (CI's subset: about two minutes on 2 cores), or each
#: mode in a full run (about ten minutes alone).
BOUND = 3600 if FULL else 1200
BULK_CASES = 12 * (5 + 7)  # twelve cases in each of the five 12.G and seven 13.G groups
KOSOKU = str(Path(sys.executable).with_name("kosoku"))
BAD_BEHAVIOR = {"FAILED", "ERROR", "UNIMPLEMENTED"}
BAD_CLOSE = {"FAILED", "FAILED BY CLIENT", "UNCLEAN", "WRONG CODE"}


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


def judge(results: list[dict[str, Any]], mode: str) -> None:
    failed = [f"{r['id']}: {r['behavior']}/{r['behaviorClose']} {r['result']}" for r in failing(results)]
    assert not failed, f"{len(failed)} Autobahn cases failed in {mode} mode:\n" + "\n".join(failed[:40])
    notable = {r["id"] for r in results if r["behavior"] != "OK" or r["behaviorClose"] != "OK"}
    undocumented = notable - documented().get(mode, set())
    assert not undocumented, f"not listed in docs/autobahn.rst under 'Mode: {mode}': {sorted(undocumented)}"
    if not SELECTED:
        expected = ALL_CASES if FULL else ALL_CASES - BULK_CASES
        assert len(results) == expected, f"{len(results)} cases reported in {mode} mode, not {expected}"


# kosoku runs in processes of its own: it imports the Autobahn case files through a shim of
# Autobahn that must not meet the real Autobahn already imported by this test process.

async def run_client(address: str, outdir: Path, selection: list[str] = SELECTION,
                     parallel: int = CONCURRENCY) -> list[dict[str, Any]]:
    """kosoku in fuzzingclient mode against ``address`` (host:port/path)."""
    proc = await asyncio.create_subprocess_exec(
        KOSOKU, "-m", "fuzzingclient", address, "-o", str(outdir), "-p", str(parallel), *selection,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    results = reports(outdir)
    assert results, f"kosoku wrote no reports (exit {proc.returncode}): {err.decode(errors='replace')[-2000:]}"
    return results


async def run_server_mode(start_relay: Callable[..., RelayProcess], outdir: Path,
                          selection: list[str] = SELECTION, parallel: int = CONCURRENCY) -> list[dict[str, Any]]:
    """kosoku's fuzzingserver as wsrelay's upstream, driven by an echoing client in front."""
    server = await asyncio.create_subprocess_exec(
        KOSOKU, "-m", "fuzzingserver", "127.0.0.1:0", "-o", str(outdir), *selection,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    testee = None
    try:
        assert server.stdout is not None
        line = await asyncio.wait_for(server.stdout.readline(), 30)
        m = re.search(rb"listening on ws://127\.0\.0\.1:(\d+)", line)
        assert m, line
        relay = start_relay(relay_config(int(m.group(1)), "ws_upstream_compression = on\n"), name="server.ini")
        testee = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.autobahn_testee", f"ws://127.0.0.1:{relay.port}", "wsrelay",
            str(parallel),
            cwd=str(ROOT), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        _, err = await testee.communicate()
        assert testee.returncode == 0, err.decode(errors="replace")[-2000:]
        await asyncio.wait_for(server.communicate(), 60)
        return reports(outdir)
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
    suite short.  A full run goes one mode at a time: three modes of the long compression cases at
    once starve a 2-core machine, and kosoku fails a case that takes over 60 seconds.
    """
    relay = start_relay(relay_config(echo_upstream))
    runs = {
        "relay": lambda out, *more: run_client(f"127.0.0.1:{relay.port}/", out, *more),
        "tunnel": lambda out, *more: run_client(f"127.0.0.1:{relay.port}/tunnel", out, *more),
        "server": lambda out, *more: run_server_mode(start_relay, out, *more),
    }
    modes = [mode for mode in runs if mode in MODES]

    async def all_modes() -> list[list[dict[str, Any]]]:
        if FULL:
            return [await asyncio.wait_for(runs[mode](tmp_path / mode), timeout=BOUND) for mode in modes]
        return await asyncio.wait_for(asyncio.gather(*(runs[mode](tmp_path / mode) for mode in modes)),
                                      timeout=BOUND)

    async def alone(mode: str, ids: list[str]) -> list[dict[str, Any]]:
        selection = [arg for case in ids for arg in ("-i", case)]
        return await asyncio.wait_for(runs[mode](tmp_path / f"{mode}-alone", selection, 1), timeout=600)

    errors = []
    for results, mode in zip(asyncio.run(all_modes()), modes):
        # Cases are timed (kosoku gives up on a case after a deadline, and some close a connection
        # half a second after their last message): one that fails while the two cores run every
        # mode at once runs again alone, and must pass then.  Each such case is reported.
        again = sorted({r["id"] for r in failing(results)})
        if again and len(again) <= 10:
            warnings.warn(f"Autobahn {mode} mode: {', '.join(again)} failed under load, run again alone")
            rerun = asyncio.run(alone(mode, again))
            results = [r for r in results if r["id"] not in again] + rerun
        try:
            judge(results, mode)
        except AssertionError as e:
            errors.append(str(e))
    assert not errors, "\n\n".join(errors)
