"""The running app (``infermeter dashboard``, i.e. ``streamlit run``, headless) in headless
Chromium: every page renders its numbers with no exception element; screenshots are saved
under test-artifacts/dashboards/ (and refreshed in docs/screenshots/ with
INFERMETER_UPDATE_SCREENSHOTS=1)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import REPO, free_port
from tests.dashboards.cdp_browser import Browser
from tests.dashboards.dashboard_helpers import READ, THROTTLE_API, Stack, push_signals

ARTIFACTS = REPO / "test-artifacts" / "dashboards"
DOCS = REPO / "docs" / "screenshots"


@pytest.fixture(scope="module")
def dashboard(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERMETER")}
    cmd = [
        sys.executable,
        "-m",
        "infermeter.dashboards",
        "--port",
        str(port),
        "--metering-url",
        stack.metering_url,
        "--throttle-url",
        stack.throttle_url,
        "--read-token",
        READ,
        "--throttle-token",
        THROTTLE_API,
        "--refresh-s",
        "0",
    ]
    log_path = tmp_path_factory.mktemp("dashboard") / "streamlit.log"
    log = log_path.open("w")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 45
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"dashboard exited {proc.returncode}: {log_path.read_text()}")
            try:
                if httpx.get(f"{url}/_stcore/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("streamlit did not answer /_stcore/health")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        log.close()


def test_every_page_renders_in_chromium(dashboard: str, stack: Stack) -> None:
    first = stack.load.records[10].request_id
    cost = httpx.get(
        f"{stack.metering_url}/v1/reports/cost",
        params={"by": "tenant", "granularity": "total", "since": "24h"},
        headers={"Authorization": f"Bearer {READ}"},
    ).json()
    replica_cost = f"${cost['totals']['replica_cost_usd']:,.2f}"
    requests = sum(r["requests"] for r in cost["rows"])
    fleet = ["Fleet", "Output tokens/s", f"{requests:,}", "GPUs and MIG slices"]
    # (screenshot name, path, texts, where the browser ends up). A non-default page comes
    # first: this is the first session of the process, the one Streamlit would run as a legacy
    # multipage app (and answer "Page not found") if a pages/ folder sat beside app.py.
    pages = [
        ("costs", "costs", ["Costs", "GPU cost (replicas)", replica_cost,
                            "Self-hosted vs managed"]),
        ("tenants", "tenants", ["Tenants", "acme", "Throttle decisions", "projected to exceed"]),
        ("capacity", "capacity", ["Capacity", "chat (driven by", "Right-sizing advice",
                                  "Possible saving"]),
        ("lookup", f"lookup?request_id={first}", ["Request lookup", first,
                                                   "Cost per allocation window"]),
        ("fleet", "fleet", fleet),
        ("", "", fleet),  # the app's root moves to /fleet
    ]  # fmt: skip
    update_docs = os.environ.get("INFERMETER_UPDATE_SCREENSHOTS") == "1"
    push_signals(stack.throttle_url)
    browser = Browser(free_port())
    try:
        for name, path, expect in pages:
            # Page.navigate is a fresh load of the page's own URL (as typed or bookmarked),
            # not a click in the sidebar: Streamlit resolves the path on the server.
            state = browser.load(f"{dashboard}/{path}", expect)
            where = f"/{path}: {state['text'][:600]}"
            assert state["exceptions"] == 0, f"/{path}: exception shown:\n{state['text'][:2000]}"
            assert "Traceback" not in state["text"], where
            assert "Page not found" not in state["text"], where
            assert state["dialogs"] == 0, f"/{path}: a dialog is open over the page"
            if not path:
                assert state["url"] == f"{dashboard}/fleet", state["url"]
            if not name:
                continue
            shot = ARTIFACTS / f"{name}.png"
            browser.screenshot(shot)
            assert shot.stat().st_size > 20_000, f"{name}: screenshot looks blank"
            if update_docs:
                DOCS.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(shot, DOCS / f"dashboard-{name}.png")
    finally:
        browser.close()
