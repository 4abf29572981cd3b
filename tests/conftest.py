"""Shared pytest fixtures: real processes that are always cleaned up."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support import RelayProcess, UpstreamProcess, write_config


@pytest.fixture
def demo_upstream(tmp_path: Path) -> Iterator[UpstreamProcess]:
    """The demo upstream on 127.0.0.1 (port chosen by the OS)."""
    upstream = UpstreamProcess(tmp_path)
    try:
        yield upstream
    finally:
        upstream.stop()


@pytest.fixture
def start_relay(tmp_path: Path) -> Iterator[Callable[..., RelayProcess]]:
    """``start_relay(config_text, **kw)``: a real ``twistd -n wsrelay``, stopped after the test."""
    started: list[RelayProcess] = []

    def start(text: str, *, name: str = "relay.ini", **kwargs: object) -> RelayProcess:
        path = write_config(tmp_path, text, name)
        relay = RelayProcess(path, **kwargs)  # type: ignore[arg-type]
        started.append(relay)
        return relay

    try:
        yield start
    finally:
        for relay in started:
            relay.stop()
