"""Headless Chromium for the tests, driven over the DevTools protocol through a pipe (--remote-debugging-pipe:
JSON messages ended by a NUL byte on the browser's fds 3 and 4), so nothing beyond Debian's `chromium` package
is needed: open a page, wait until it shows the text a person would look for, read it, take a screenshot.

    with Chromium(tmp_path) as page:
        text = page.open("http://127.0.0.1:5000/#/experiments/1/runs", until=["sweep-quickstart"])
        page.click("button[aria-label=Close]")
        page.screenshot(tmp_path / "page.png")
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path

import pytest

INSTALL = "apt-get install -y chromium (Debian/Ubuntu; .ci/run does it where it is missing)"


def chromium_binary() -> str:
    """The Chromium to test with; the test fails, saying how to install it, where there is none."""
    found = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
    if not found:
        pytest.fail(f"the MLflow UI test needs a headless Chromium and none is on PATH: {INSTALL}", pytrace=False)
    return found


class Chromium:
    """One headless Chromium with one page (a fresh profile each time: no remembered UI state)."""

    def __init__(self, tmp: Path, width: int = 1500, height: int = 1100):
        self.tmp, self.width, self.height = Path(tmp), width, height
        self.proc: subprocess.Popen | None = None
        self._id = 0
        self._buf = b""

    def __enter__(self) -> Chromium:
        to_browser, self._write_end = os.pipe()  # the browser reads commands on its fd 3
        self._read_end, from_browser = os.pipe()  # and writes replies and events on its fd 4
        # moved above 4 first: a pipe end that already is fd 3 or 4 would be overwritten, or kept close-on-exec
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (to_browser, from_browser)]
        for fd in (to_browser, from_browser):
            os.close(fd)

        def fds_3_and_4():
            os.dup2(high[0], 3)  # inheritable, as os.dup2 makes them
            os.dup2(high[1], 4)

        self.proc = subprocess.Popen(
            [
                chromium_binary(),
                "--headless",
                "--remote-debugging-pipe",
                "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",  # offline: no update, sync or safe-browsing requests
                "--disable-component-update",
                f"--user-data-dir={self.tmp / 'chromium-profile'}",
                f"--window-size={self.width},{self.height}",
                "about:blank",
            ],
            preexec_fn=fds_3_and_4,
            close_fds=False,  # closing runs after preexec_fn and would close 3 and 4 again
            stdout=subprocess.DEVNULL,
            stderr=open(self.tmp / "chromium.log", "wb"),
        )
        for fd in high:
            os.close(fd)
        target = self._send("Target.createTarget", url="about:blank")["targetId"]
        self._session = self._send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime"):
            self.send(f"{domain}.enable")
        self.send(
            "Emulation.setDeviceMetricsOverride",
            width=self.width,
            height=self.height,
            deviceScaleFactor=1,
            mobile=False,
        )
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        for fd in (self._write_end, self._read_end):
            try:
                os.close(fd)
            except OSError:
                pass

    # ------------------------------------------------------------------ the protocol
    def _send(self, method: str, session: str | None = None, timeout: float = 60, **params) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params, **({"sessionId": session} if session else {})}
        os.write(self._write_end, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" not in self._buf:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self._read_end], [], [], left)[0]:
                    raise TimeoutError(f"Chromium did not answer {method} within {timeout:.0f}s")
                chunk = os.read(self._read_end, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"Chromium exited: {(self.tmp / 'chromium.log').read_text()[-2000:]}")
                self._buf += chunk
            raw, self._buf = self._buf.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._id:  # anything else is an event: not needed here
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def send(self, method: str, **params) -> dict:
        """A command to the page."""
        return self._send(method, self._session, **params)

    def js(self, expression: str):
        """The value of a JavaScript expression in the page (awaited if it is a promise)."""
        out = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in out:
            raise RuntimeError(f"{expression[:80]}: {out['exceptionDetails']}")
        return out["result"].get("value")

    # ------------------------------------------------------------------ what a person does
    def open(self, url: str, until: list[str], timeout: float = 90) -> str:
        """Go to `url` and wait until the page's visible text holds every string of `until`; that text."""
        self.send("Page.navigate", url=url)
        return self.wait_for(until, timeout)

    def wait_for(self, until: list[str], timeout: float = 90) -> str:
        """The page's visible text, once it holds every string of `until` (the page renders as data arrives)."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.text()
            if all(s in text for s in until):
                return text
            if time.monotonic() > deadline:
                missing = [s for s in until if s not in text]
                raise AssertionError(f"the page never showed {missing} in {timeout:.0f}s; it shows:\n{text[:3000]}")
            time.sleep(0.25)

    def wait_js(self, expression: str, what: str, timeout: float = 60):
        """The value of `expression` once it is truthy."""
        deadline = time.monotonic() + timeout
        while not (value := self.js(expression)):
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not within {timeout:.0f}s")
            time.sleep(0.25)
        return value

    def text(self) -> str:
        return self.js("document.body ? document.body.innerText : ''") or ""

    def click(self, selector: str) -> bool:
        """Click the first element `selector` matches; False when there is none."""
        return bool(
            self.js(
                f"(() => {{ const e = document.querySelector({json.dumps(selector)}); e && e.click(); return !!e; }})()"
            )
        )

    def screenshot(self, path: Path) -> Path:
        """A PNG of the window (the MLflow UI scrolls inside it: make the window as tall as the page needs)."""
        shot = self.send("Page.captureScreenshot", format="png")
        Path(path).write_bytes(base64.b64decode(shot["data"]))
        return Path(path)
