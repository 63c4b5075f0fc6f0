"""Headless Chromium driven over the DevTools protocol (no extra browser driver): load a
page, wait until its text is rendered (Streamlit draws client-side), read it, screenshot it."""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from websockets.sync.client import ClientConnection, connect

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--mute-audio",
)
# What the page holds once Streamlit is done: no "running" widget, no skeletons.
STATE_JS = """(() => {
  const q = (s) => document.querySelectorAll(s).length;
  return JSON.stringify({
    text: document.body ? document.body.innerText : "",
    exceptions: q('[data-testid="stException"]'),
    dialogs: q('[role="dialog"]'),
    url: location.href,
    running: q('[data-testid="stStatusWidget"]') + q('[data-testid="stSkeleton"]'),
    app: q('[data-testid="stApp"]'),
  });
})()"""


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    raise RuntimeError("chromium not installed: run ./dev.sh test (apt package chromium)")


class Browser:
    """One headless Chromium with one tab, closed by :meth:`close`."""

    def __init__(self, port: int, width: int = 1440, height: int = 1800) -> None:
        self.profile = tempfile.mkdtemp(prefix="infermeter-chromium-")
        self.proc = subprocess.Popen(
            [
                chromium(),
                *FLAGS,
                f"--user-data-dir={self.profile}",
                f"--remote-debugging-port={port}",
                f"--window-size={width},{height}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        ws_url = self._tab_url(f"http://127.0.0.1:{port}")
        self.ws: ClientConnection = connect(
            ws_url, max_size=1 << 26, open_timeout=10, proxy=None
        ).__enter__()
        self._ids = itertools.count(1)
        self.call("Page.enable")
        self.call(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )

    @staticmethod
    def _tab_url(base: str) -> str:
        deadline = time.monotonic() + 20
        while True:
            try:
                tabs = httpx.get(f"{base}/json/list", timeout=1).json()
                pages = [t for t in tabs if t.get("type") == "page"]
                if pages:
                    return str(pages[0]["webSocketDebuggerUrl"])
            except (httpx.HTTPError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("chromium's DevTools endpoint did not come up")
            time.sleep(0.1)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        msg_id = next(self._ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=30))
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return dict(msg.get("result", {}))

    def state(self) -> dict[str, Any]:
        result = self.call("Runtime.evaluate", expression=STATE_JS, returnByValue=True)
        return dict(json.loads(result["result"]["value"]))

    def load(self, url: str, expect: list[str], timeout: float = 45.0) -> dict[str, Any]:
        """Navigate and wait until every ``expect`` text is shown and nothing is running."""
        self.call("Page.navigate", url=url)
        deadline = time.monotonic() + timeout
        state: dict[str, Any] = {}
        while time.monotonic() < deadline:
            state = self.state()
            done = state["app"] and not state["running"]
            if (done and all(text in state["text"] for text in expect)) or state["exceptions"]:
                time.sleep(0.3)  # let charts finish their layout before the screenshot
                return self.state()
            time.sleep(0.2)
        missing = [t for t in expect if t not in state.get("text", "")]
        raise TimeoutError(
            f"{url}: not rendered in {timeout}s; missing {missing}; running elements "
            f"{state.get('running')}; text: {state.get('text', '')[:500]!r}"
        )

    def screenshot(self, path: Path) -> None:
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=False)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data["data"]))

    def close(self) -> None:
        try:
            self.ws.close()
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
            shutil.rmtree(self.profile, ignore_errors=True)
