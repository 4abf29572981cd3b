"""The sticky cookie key (balance = cookie): from sticky_secret_file, sticky_secret or the
machine id, stable across restarts, the same for every process that shares it, and checked at
load like every other file a configuration names."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from wsrelay import config
from wsrelay.config import ConfigError
from wsrelay.sticky import load_key

BASE = """
[wsrelay]
listen = tcp:0
{globals}
[upstream g]
servers = 127.0.0.1:1
balance = cookie
sticky = srv
[route /]
upstream = g
"""


def write(tmp_path: Path, globals_: str = "", name: str = "relay.ini") -> config.Config:
    path = tmp_path / name
    path.write_text(BASE.format(globals=globals_))
    path.chmod(0o600)
    return config.load(str(path))


def secret_file(tmp_path: Path, content: bytes, name: str = "sticky.key", mode: int = 0o600) -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    path.chmod(mode)
    return path


def test_secret_file_gives_the_same_key_everywhere(tmp_path: Path) -> None:
    """The same secret gives the same key whatever the config's path or the machine (fleet nodes),
    at every load (restarts, workers); trailing white space does not count; another secret gives
    another key."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    secret_file(a, b"0123456789abcdef0123\n")
    secret_file(b, b"0123456789abcdef0123")
    node_a = load_key(write(a, "sticky_secret_file = sticky.key"), machine_id_files=[str(secret_file(a, b"m1", "mid"))])
    node_b = load_key(write(b, "sticky_secret_file = sticky.key"), machine_id_files=[str(secret_file(b, b"m2", "mid"))])
    assert node_a.key == node_b.key and len(node_a.key) == 32
    assert node_a.warnings == ()
    again = load_key(write(a, "sticky_secret_file = sticky.key"))
    assert again.key == node_a.key
    secret_file(a, b"another secret, long enough")
    assert load_key(write(a, "sticky_secret_file = sticky.key")).key != node_a.key
    inline = load_key(write(a, "sticky_secret = 0123456789abcdef0123"))
    assert inline.key == node_a.key  # the same secret given inline


def test_default_key_comes_from_the_machine_id_and_config_path(tmp_path: Path) -> None:
    """Without a secret: stable for one machine id and config path (restarts, workers), different
    for another machine or another configuration file; never the same for every installation."""
    mid = secret_file(tmp_path, b"5f1c0e6b1f9a4c7e9a3d2b1c0d9e8f7a\n", "machine-id")
    cfg = write(tmp_path)
    first = load_key(cfg, machine_id_files=[str(mid)])
    assert first.source == "machine-id" and first.warnings == ()
    assert load_key(config.load(cfg.path), machine_id_files=[str(mid)]).key == first.key
    other_machine = secret_file(tmp_path, b"0a9b8c7d6e5f40312233445566778899\n", "other-id")
    assert load_key(cfg, machine_id_files=[str(other_machine)]).key != first.key
    assert load_key(write(tmp_path, name="other.ini"), machine_id_files=[str(mid)]).key != first.key
    no_id = load_key(cfg, machine_id_files=[str(tmp_path / "none")])
    assert no_id.source == "host name" and no_id.key != first.key
    assert "no readable" in no_id.warnings[0] and "sticky_secret_file" in no_id.warnings[0]


@pytest.mark.parametrize("content, words", [
    (None, "cannot be read (No such file or directory)"),
    (b"", "is empty"),
    (b" \n", "is empty"),
    (b"short\n", "holds 5 bytes: at least 16"),
])
def test_unusable_secret_file_is_a_config_error(tmp_path: Path, content: bytes | None, words: str) -> None:
    """A missing, empty or too short sticky_secret_file: one ConfigError naming [wsrelay]
    sticky_secret_file and the file (so start-up, --check and reload refuse it)."""
    from wsrelay.service import check

    if content is not None:
        secret_file(tmp_path, content)
    cfg = write(tmp_path, "sticky_secret_file = sticky.key")
    for attempt in (lambda: load_key(cfg), lambda: check(cfg)):
        with pytest.raises(ConfigError) as info:
            attempt()
        error = info.value
        assert (error.path, error.section, error.key) == (cfg.path, "wsrelay", "sticky_secret_file")
        assert f"{tmp_path / 'sticky.key'}: {words}" in str(error), str(error)


@pytest.mark.parametrize("globals_, key, words", [
    ("sticky_secret = short", "sticky_secret", "too short"),
    ("sticky_secret = 0123456789abcdef\nsticky_secret_file = x", "sticky_secret_file", "not both"),
])
def test_secret_settings_are_checked_when_parsed(tmp_path: Path, globals_: str, key: str, words: str) -> None:
    """A short sticky_secret, or both settings at once, is refused by the parser."""
    with pytest.raises(ConfigError) as info:
        write(tmp_path, globals_)
    assert (info.value.section, info.value.key) == ("wsrelay", key)
    assert words in str(info.value)


def test_secrets_others_can_read_get_a_warning(tmp_path: Path) -> None:
    """A secret file, or a config file holding sticky_secret, that its group or others can read:
    one warning naming the file and its mode, also from --check's check()."""
    from wsrelay.service import check

    key = secret_file(tmp_path, b"0123456789abcdef0123", mode=0o644)
    cfg = write(tmp_path, "sticky_secret_file = sticky.key")
    assert load_key(cfg).warnings == (f"sticky_secret_file {key} is accessible to its group or others"
                                      " (mode 0644): chmod 600 it",)
    assert check(cfg) == list(load_key(cfg).warnings)
    key.chmod(0o600)
    assert load_key(cfg).warnings == () and check(cfg) == []
    inline = write(tmp_path, "sticky_secret = 0123456789abcdef0123")
    os.chmod(inline.path, 0o640)
    assert "sticky_secret is set in" in load_key(inline).warnings[0] and "mode 0640" in load_key(inline).warnings[0]
