"""A plain (not editable) install into a fresh venv makes twistd list the plugin.

The editable install the rest of the suite runs from is the other half of issue 2's point 1;
this one checks that ``pip install .`` installs ``twisted/plugins/wsrelay_plugin.py`` where
Twisted's plugin scan finds it, without an ``__init__.py`` that would replace Twisted's own.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support import ROOT


def test_plain_install_into_a_fresh_venv(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(ROOT)],
                   check=True, timeout=900, cwd=tmp_path)
    listing = subprocess.run([str(venv / "bin" / "twistd"), "--help"], capture_output=True, text=True,
                             timeout=60, cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    commands = {line.split()[0] for line in listing.stdout.splitlines() if line.startswith("    ")}
    assert {"wsrelay", "web"} <= commands  # ours, and Twisted's own plugins still found
    usage = subprocess.run([str(venv / "bin" / "twistd"), "wsrelay", "--help"], capture_output=True,
                           text=True, timeout=60, cwd=tmp_path)
    assert usage.returncode == 0 and "--config" in usage.stdout and "--check" in usage.stdout
    plugins = next(venv.glob("lib/python*/site-packages/twisted/plugins"))
    assert (plugins / "wsrelay_plugin.py").is_file()
    assert "twisted" in (plugins / "__init__.py").read_text()  # Twisted's, not replaced
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import wsrelay; print(wsrelay.__file__)"],
                           capture_output=True, text=True, timeout=60, cwd=tmp_path, check=True).stdout
    assert where.startswith(str(venv))  # the installed copy, not this checkout
