"""The Autobahn testsuite (run by kosoku) through the real ``twistd -n wsrelay``.

- fuzzingclient against wsrelay in relay mode and in tunnel mode, in front of an Autobahn echo
  upstream: every case, compression included;
- fuzzingserver as wsrelay's upstream, with an echoing Autobahn client in front, so wsrelay's
  client side (its upstream leg, with permessage-deflate toward the upstream) is tested too.

No case may fail; every NON-STRICT or INFORMATIONAL result must be listed, with its reason, in
docs/autobahn.rst.  wsrelay's own pings are off here: the case files record an unsolicited ping as
an unexpected event.
"""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kosoku
import pytest

from tests.support import ROOT, Process, RelayProcess

CONCURRENCY = 4
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


def judge(results: list[Any], mode: str) -> None:
    failed = [f"{r.case_id}: {r.behavior.value}/{r.behavior_close.value} {r.result}"
              for r in results if r.behavior.value in BAD_BEHAVIOR or r.behavior_close.value in BAD_CLOSE]
    assert not failed, f"{len(failed)} Autobahn cases failed in {mode} mode:\n" + "\n".join(failed[:40])
    notable = {r.case_id for r in results if r.behavior.value != "OK" or r.behavior_close.value != "OK"}
    undocumented = notable - documented().get(mode, set())
    assert not undocumented, f"not listed in docs/autobahn.rst under 'Mode: {mode}': {sorted(undocumented)}"
    assert len(results) > 500  # the whole suite ran


async def run_client(url: str) -> list[Any]:
    try:
        return await kosoku.run_fuzzingclient(url, concurrency=CONCURRENCY)
    except kosoku.FailureError as e:
        return list(e.results)


async def run_server_mode(start_relay: Callable[..., RelayProcess]) -> list[Any]:
    """kosoku's fuzzingserver as wsrelay's upstream, driven by an echoing client in front."""
    async with kosoku.run_fuzzingserver(port=0) as server:
        relay = start_relay(relay_config(server.port, "ws_upstream_compression = on\n"), name="server.ini")
        testee = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.autobahn_testee", f"ws://127.0.0.1:{relay.port}", "wsrelay",
            cwd=str(ROOT), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        try:
            try:
                results = await server.get_result()
            except kosoku.FailureError as e:
                results = list(e.results)
            _, err = await asyncio.wait_for(testee.communicate(), timeout=60)
            assert testee.returncode == 0, err.decode(errors="replace")[-2000:]
            return results
        finally:
            if testee.returncode is None:
                testee.kill()
                await testee.wait()


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


def test_autobahn_testsuite_relay_tunnel_and_client_side(echo_upstream: int,
                                                          start_relay: Callable[..., RelayProcess]) -> None:
    """Every Autobahn case passes in relay mode, in tunnel mode, and against wsrelay's client side.

    The three runs go concurrently (each has its own wsrelay process) to keep the suite short.
    """
    relay = start_relay(relay_config(echo_upstream))

    async def all_modes() -> list[list[Any]]:
        return await asyncio.wait_for(asyncio.gather(
            run_client(f"ws://127.0.0.1:{relay.port}/"),
            run_client(f"ws://127.0.0.1:{relay.port}/tunnel"),
            run_server_mode(start_relay),
        ), timeout=1800)

    relay_results, tunnel_results, server_results = asyncio.run(all_modes())
    errors = []
    for results, mode in ((relay_results, "relay"), (tunnel_results, "tunnel"), (server_results, "server")):
        try:
            judge(results, mode)
        except AssertionError as e:
            errors.append(str(e))
    assert not errors, "\n\n".join(errors)
