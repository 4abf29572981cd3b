"""The admin listener through the real process: health, readiness (and its 503s), status,
Prometheus metrics, the allow list, and that no proxied route reaches it."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
import websockets

from tests.support import RelayProcess, UpstreamProcess

ADMIN = re.compile(r"wsrelay admin listening on (\S+)")


def config(upstream_port: int, admin_extra: str = "", upstream_extra: str = "") -> str:
    return f"""
[wsrelay]
listen = tcp:0:interface=127.0.0.1
access_log = off
drain_timeout = 10s
[admin]
endpoint = tcp:0:interface=127.0.0.1
{admin_extra}
[upstream demo]
servers = 127.0.0.1:{upstream_port}
{upstream_extra}
[route /]
upstream = demo
"""


def fetch(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.headers.get("content-type", ""), response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("content-type", ""), e.read()


def admin_url(relay: RelayProcess) -> str:
    return relay.output.wait_for(ADMIN).group(1).rstrip("/")


@pytest.fixture
def demo(tmp_path: Path):  # type: ignore[no-untyped-def]
    up = UpstreamProcess(tmp_path)
    try:
        yield up
    finally:
        up.stop()


def test_health_readiness_status_and_metrics(demo: UpstreamProcess, start_relay: Callable[..., RelayProcess]) -> None:
    """/healthz 200; /readyz 200 and JSON once serving; /status names the configuration and the
    server; /metrics is the Prometheus text format with the process collector and wsrelay's
    families, and counts an open WebSocket pair."""
    relay = start_relay(config(demo.port))
    base = admin_url(relay)
    relay.output.wait_for("wsrelay ready")
    assert fetch(base + "/healthz")[::2] == (200, b"ok\n")
    code, ctype, body = fetch(base + "/readyz")
    assert (code, ctype) == (200, "application/json")
    assert json.loads(body) == {"ready": True, "listening": True, "draining": False, "groups_down": []}
    status = json.loads(fetch(base + "/status")[2])
    assert status["config"]["path"].endswith("relay.ini")
    assert status["upstreams"]["demo"][f"http://127.0.0.1:{demo.port}"]["healthy"] is True

    async def with_a_pair() -> bytes:
        async with websockets.connect(f"ws://127.0.0.1:{relay.port}/ws/echo") as ws:
            await ws.send("hi")
            assert await ws.recv() == "hi"
            return await asyncio.to_thread(lambda: fetch(base + "/metrics")[2])

    code, ctype, _ = fetch(base + "/metrics")
    assert code == 200 and ctype.startswith("text/plain; version=")
    metrics = asyncio.run(asyncio.wait_for(with_a_pair(), 30)).decode()
    assert "process_resident_memory_bytes " in metrics
    assert f'wsrelay_upstream_server_up{{server="http://127.0.0.1:{demo.port}",upstream="demo"}} 1.0' in metrics
    assert 'wsrelay_websocket_pairs_open{mode="relay",route="/"} 1.0' in metrics
    assert re.search(r'wsrelay_websocket_messages_total\{direction="in",hop="client",route="/"\} 1\.0', metrics)
    assert 'wsrelay_reloads_total{result="ok"} 0.0' in metrics
    assert 'wsrelay_limit_refusals_total{limit="limit_conn"} 0.0' in metrics
    assert re.search(r"^wsrelay_client_connections [1-9]", metrics, re.M)  # the pair's client, at least
    assert re.search(r"^wsrelay_memory_trims_total \d", metrics, re.M)  # glibc here (wsrelay.memory)
    assert re.search(r"^wsrelay_memory_trim_seconds_total \d", metrics, re.M)


def test_readiness_names_a_group_without_a_server_and_a_drain(
        demo: UpstreamProcess, start_relay: Callable[..., RelayProcess]) -> None:
    """/readyz is 503 naming the group whose servers the active check took out; and 503 with
    draining while a stop drains open pairs, while /healthz stays 200."""
    relay = start_relay(config(demo.port, upstream_extra="health_check = /nothing-here\nhealth_interval = 200ms\n"
                                                        "health_fall = 1\nhealth_timeout = 150ms"))
    base = admin_url(relay)
    relay.output.wait_for(r"health check.*down|down.*health", timeout=15)
    code, _, body = fetch(base + "/readyz")
    assert code == 503 and json.loads(body)["groups_down"] == ["demo"]

    # Two pairs closed over 10 s: the second stays open for 5 s of the drain.
    relay2 = start_relay(config(demo.port).replace("drain_timeout", "ws_drain_spread = 10s\ndrain_timeout"),
                         name="drain.ini")
    base2 = admin_url(relay2)
    relay2.output.wait_for("wsrelay ready")

    async def drain() -> tuple[int, bytes, int]:
        url = f"ws://127.0.0.1:{relay2.port}/ws/echo"
        async with websockets.connect(url) as ws, websockets.connect(url) as ws2:
            for w in (ws, ws2):
                await w.send("x")
                await w.recv()
            relay2.signal(signal.SIGTERM)
            await asyncio.to_thread(relay2.output.wait_for, "draining 2 open exchanges")
            code, _, body = await asyncio.to_thread(fetch, base2 + "/readyz")
            healthz = (await asyncio.to_thread(fetch, base2 + "/healthz"))[0]
            return code, body, healthz

    code, body, healthz = asyncio.run(asyncio.wait_for(drain(), 30))
    assert code == 503 and json.loads(body)["draining"] is True and healthz == 200


def test_allow_list_and_no_route_to_the_admin_pages(demo: UpstreamProcess,
                                                    start_relay: Callable[..., RelayProcess]) -> None:
    """With allow = 10.0.0.0/8 a client from 127.0.0.1 gets 403 on every page; /metrics on a
    proxied listener is the upstream's business, never wsrelay's metrics."""
    relay = start_relay(config(demo.port, admin_extra="allow = 10.0.0.0/8"))
    base = admin_url(relay)
    for page in ("/", "/healthz", "/readyz", "/status", "/metrics"):
        assert fetch(base + page)[0] == 403, page
    code, _, body = fetch(f"http://127.0.0.1:{relay.port}/metrics")
    assert b"process_resident_memory_bytes" not in body and b"wsrelay_" not in body


def test_log_format_json_writes_one_object_per_line(demo: UpstreamProcess, tmp_path: Path) -> None:
    """log_format = json: every line wsrelay writes is a JSON object with time, level, namespace
    and message, and an event's plain fields (a refused request's status and client) as keys."""
    from tests.support import write_config

    path = write_config(tmp_path, config(demo.port).replace("access_log = off", "access_log = off\nlog_format = json"))
    relay = RelayProcess(path, wait=False)
    try:
        line = relay.output.wait_for(r'"message": "wsrelay listening on ')
        record = json.loads(line.string)
        port = int(record["message"].split("wsrelay listening on ")[1].split()[0].rstrip("/").rsplit(":", 1)[1])
        assert set(record) >= {"time", "level", "namespace", "message"} and record["level"] == "info"
        assert fetch(f"http://127.0.0.1:{port}/a%zz")[0] == 400
        refused = json.loads(relay.output.wait_for(r'"status": 400').string)
        assert refused["client"] == "127.0.0.1" and "malformed percent-encoding" in refused["detail"]
        relay.output.wait_for("wsrelay ready")
        for text in relay.output.lines:
            json.loads(text)  # nothing else on stdout
    finally:
        relay.stop()
