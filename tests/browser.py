"""Headless Chromium for tests, driven over the DevTools protocol (no browser download, no driver).

``Browser`` starts Debian's ``chromium`` with a fresh profile and a HOME of its own whose NSS
database (``$HOME/.pki/nssdb``, where Chromium on Linux reads locally added trust) trusts the
CAs given, and nothing else is relaxed: no ``--ignore-certificate-errors``.  It talks the DevTools
protocol over the WebSocket Chromium announces in ``DevToolsActivePort``, with the ``websockets``
package's synchronous client.  Every wait has a deadline; ``close()`` ends Chromium's process group.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from websockets.sync.client import ClientConnection, connect

from tests.support import poll_until

#: The flags this machine's closed network needs (no background connections), plus headless.
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--no-default-browser-check", "--disable-dev-shm-usage", "--hide-scrollbars",
]


def chromium_missing() -> str | None:
    """Why the browser tests cannot run here (None when they can)."""
    for tool, package in (("chromium", "chromium"), ("certutil", "libnss3-tools")):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian package {package}; sh scripts/test.sh installs it)"
    return None


class DevToolsError(AssertionError):
    """A DevTools command answered with an error."""


class Browser:
    """One headless Chromium with its own profile and trust store under ``directory``."""

    def __init__(self, directory: Path, trusted_cas: list[Path], width: int = 1100, height: int = 900) -> None:
        self.home = directory / "home"
        self.profile = directory / "profile"
        nssdb = self.home / ".pki" / "nssdb"
        nssdb.mkdir(parents=True)
        self.profile.mkdir()
        subprocess.run(["certutil", "-d", f"sql:{nssdb}", "-N", "--empty-password"], check=True,
                       capture_output=True, timeout=30)
        for i, ca in enumerate(trusted_cas):
            subprocess.run(["certutil", "-d", f"sql:{nssdb}", "-A", "-t", "C,,", "-n", f"wsrelay-test-{i}",
                            "-i", str(ca)], check=True, capture_output=True, timeout=30)
        env = dict(os.environ, HOME=str(self.home))
        self.log = (directory / "chromium.log").open("wb")
        self.process = subprocess.Popen(
            ["chromium", *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}", "--remote-debugging-port=0",
             f"--window-size={width},{height}", "about:blank"],
            env=env, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        active = self.profile / "DevToolsActivePort"
        if not poll_until(lambda: active.exists() and len(active.read_text().split()) >= 2 or
                          self.process.poll() is not None, timeout=30):
            self.close()
            raise AssertionError("Chromium did not announce its DevTools port within 30 s")
        if self.process.poll() is not None:
            raise AssertionError(f"Chromium exited ({self.process.returncode}): see {directory / 'chromium.log'}")
        port, path = active.read_text().split()[:2]
        self._stack = contextlib.ExitStack()
        self.ws: ClientConnection = self._stack.enter_context(
            connect(f"ws://127.0.0.1:{port}{path}", max_size=None, open_timeout=10))
        self._next = 0
        self.events: list[dict[str, Any]] = []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.page("Page.enable")
        self.page("Runtime.enable")

    def call(self, method: str, session: str | None = None, wait: float = 30.0, **params: Any) -> dict[str, Any]:
        """Send one DevTools command and return its result (events meanwhile go to ``events``)."""
        self._next += 1
        message: dict[str, Any] = {"id": self._next, "method": method, "params": params}
        if session is not None:
            message["sessionId"] = session
        self.ws.send(json.dumps(message))
        deadline = time.monotonic() + wait
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no answer to {method} within {wait} s")
            answer = json.loads(self.ws.recv(timeout=remaining))
            if answer.get("id") != self._next:
                self.events.append(answer)
                continue
            if "error" in answer:
                raise DevToolsError(f"{method}: {answer['error']}")
            return answer["result"]

    def page(self, method: str, wait: float = 30.0, **params: Any) -> dict[str, Any]:
        """A command to the page's session."""
        return self.call(method, self.session, wait, **params)

    def navigate(self, url: str) -> str | None:
        """Load ``url``; the network error text (``net::ERR_...``) if it failed, else None once
        the document is complete."""
        result = self.page("Page.navigate", url=url)
        if result.get("errorText"):
            return str(result["errorText"])
        self.wait_for("document.readyState === 'complete'")
        return None

    def evaluate(self, expression: str, timeout: float = 30.0) -> Any:
        """The value of ``expression`` in the page (promises awaited); AssertionError on an exception."""
        result = self.page("Runtime.evaluate", timeout + 5, expression=expression, awaitPromise=True,
                           returnByValue=True, timeout=int(timeout * 1000))
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise AssertionError(f"page exception: {details.get('exception', {}).get('description') or details}")
        return result["result"].get("value")

    def wait_for(self, condition: str, timeout: float = 15.0) -> None:
        """Wait in the page, without polling from here, until the JavaScript ``condition`` holds."""
        ok = self.evaluate(f"""new Promise((resolve) => {{
            const end = Date.now() + {int(timeout * 1000)};
            const check = () => {{
                let ok = false;
                try {{ ok = Boolean({condition}); }} catch (e) {{}}
                if (ok || Date.now() > end) resolve(ok); else setTimeout(check, 25);
            }};
            check();
        }})""", timeout + 5)
        if not ok:
            raise AssertionError(f"not true within {timeout} s in the page: {condition}")

    def screenshot(self, path: Path) -> Path:
        """Write a PNG of the page to ``path``."""
        data = self.page("Page.captureScreenshot", format="png", captureBeyondViewport=False)["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        """End Chromium (asked over DevTools, then its whole process group) and the connection."""
        try:
            if hasattr(self, "_stack"):
                try:
                    self.call("Browser.close", wait=5)
                except Exception:  # it may close the connection before it answers
                    pass
                self._stack.close()
                try:
                    self.process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
        finally:
            if self.process.poll() is None:
                try:
                    os.killpg(self.process.pid, signal.SIGTERM)
                    self.process.wait(timeout=10)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    try:
                        os.killpg(self.process.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    self.process.wait(timeout=5)
            self.log.close()
