"""Headless Chromium driven through its DevTools protocol (CDP) over a loopback WebSocket; stdlib only.

Chromium is started with the flags of tests/test_web.py plus a DevTools port on 127.0.0.1, a fresh profile, and every
non-loopback host unresolvable and proxied to a closed local port, so a page (ComfyUI's front end asks the internet
for release notes and the like) reaches nothing beyond this machine.
"""

from __future__ import annotations

import base64
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from loopback import WebSocket, request_json

ISOLATION_FLAGS = [
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost",
    "--proxy-server=http://127.0.0.1:9",  # loopback is never proxied; anything else meets a closed port
    "--window-size=1400,900",
]


class Browser:
    """One headless Chromium with one page; `evaluate` runs JavaScript in it, `click` presses the mouse there."""

    def __init__(self, chromium: str, flags: list[str], profile: Path, timeout: float = 60) -> None:
        self.process = subprocess.Popen([chromium, *flags, *ISOLATION_FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                        start_new_session=True)  # its own process group: close() ends all of it
        self.log: list[str] = []
        self._endpoint: int | None = None
        self._listening = threading.Event()
        threading.Thread(target=self._drain, daemon=True).start()  # also: a full stderr pipe would stall Chromium
        if not self._listening.wait(timeout) or self._endpoint is None:
            self._stop()
            raise RuntimeError("Chromium did not start:\n" + "".join(self.log[-40:]))
        endpoint = self._endpoint
        pages = [t for t in request_json(f"http://127.0.0.1:{endpoint}/json/list") if t["type"] == "page"]
        self.socket = WebSocket(pages[0]["webSocketDebuggerUrl"], timeout=timeout)
        self._next_id = 0

    def _drain(self) -> None:
        """Keep Chromium's stderr; note the DevTools port it announces (or that it exited without one)."""
        for line in self.process.stderr:
            self.log.append(line)
            found = re.search(r"DevTools listening on ws://127\.0\.0\.1:(\d+)/", line)
            if found and self._endpoint is None:
                self._endpoint = int(found.group(1))
                self._listening.set()
        self._listening.set()

    def call(self, method: str, **params: Any) -> dict:
        """One CDP command; its result (no domain is enabled for events, so anything else that arrives is dropped)."""
        self._next_id += 1
        self.socket.send({"id": self._next_id, "method": method, "params": params})
        while True:
            message = self.socket.receive()
            if message.get("id") == self._next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def evaluate(self, expression: str) -> Any:
        """Evaluate JavaScript in the page (promises awaited); its value, or an error with the page's exception."""
        result = self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise RuntimeError(f"page error: {details.get('exception', {}).get('description') or details}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60, what: str = "") -> Any:
        """Poll a JavaScript expression until it is truthy; its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what or expression}")
            time.sleep(0.25)

    def click(self, x: float, y: float) -> None:
        """A real left click at viewport coordinates (mouse moved there, pressed, released)."""
        self.call("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def click_element(self, selector_js: str, what: str, timeout: float = 30) -> None:
        """Wait for the element a JavaScript expression finds, scroll it into view, click its centre."""
        box = self.wait_for(
            f"(() => {{ const e = {selector_js}; if (!e) return null; e.scrollIntoView({{block: 'center'}});"
            "const r = e.getBoundingClientRect(); return r.width && r.height ? [r.x + r.width / 2, r.y + r.height / 2]"
            " : null; })()", timeout, what)
        self.click(*box)

    def screenshot(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))
        return path

    def _stop(self) -> None:
        """SIGTERM to Chromium's process group (its helpers too), SIGKILL if it has not exited within 20 s."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=20)

    def close(self) -> None:
        try:
            self.socket.close()
        finally:
            self._stop()
