"""Where the Node.js peers of the tests live (tests/node/, installed by scripts/test.sh with
``npm ci``), and why they cannot run when they cannot."""

from __future__ import annotations

import shutil

from tests.support import ROOT

NODE_DIR = ROOT / "tests" / "node"


def node_missing() -> str | None:
    """Why the Node.js tests cannot run here (None when they can)."""
    if shutil.which("node") is None:
        return "node is not installed (Debian package nodejs; sh scripts/test.sh installs it)"
    if not (NODE_DIR / "node_modules" / ".package-lock.json").exists():
        return "tests/node/node_modules is missing (sh scripts/test.sh runs npm ci there)"
    return None
