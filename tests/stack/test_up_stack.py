"""End to end: ``infermeter up`` itself, as a user runs it, with its demo traffic.

One real ``up`` process (every service a real child process on loopback, free ports from
``--base-port``, a temporary data directory) is started and left to run its demo traffic
until metering shows costs for every demo tenant. Checked while it runs: a throttled tenant,
a semantic-cache hit and an async job recorded by metering, and every service's /metrics
through promtool. Then Ctrl-C, and checked in the DuckDB file it leaves behind: every usage
record the traffic generator was answered for is stored (nothing lost in the shutdown).
The time from ``up`` to the first costs (as ``up`` prints it) is printed.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pytest

from infermeter.stack.demo_stack import TENANTS
from tests.conftest import REPO, free_port_range, promtool_check, vllm_promtool_findings
from tests.dashboards.cdp_browser import Browser

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


@dataclass
class Up:
    proc: subprocess.Popen[str]
    base: int
    data: Path
    started: float
    lines: list[str] = field(default_factory=list)

    def url(self, offset: int) -> str:
        return f"http://127.0.0.1:{self.base + offset}"

    @property
    def metering(self) -> str:
        return self.url(20)

    def output(self) -> str:
        return "".join(self.lines)

    def wait_line(self, pattern: str, timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            for line in list(self.lines):
                match = re.search(pattern, line)
                if match:
                    return match
            assert self.proc.poll() is None, f"up exited:\n{self.output()}"
            assert time.monotonic() < deadline, f"no {pattern!r} in:\n{self.output()}"
            time.sleep(0.2)


def start_up(cwd: Path, data: Path, *extra: str) -> Up:
    """``infermeter up`` as a child process on a free port range, its output collected."""
    base = free_port_range()
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERMETER")}
    argv = [sys.executable, "-m", "infermeter", "up", "--base-port", str(base),
            "--data-dir", str(data), *extra]  # fmt: skip
    proc = subprocess.Popen(
        argv, cwd=cwd, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    handle = Up(proc, base, data, time.monotonic())

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            handle.lines.append(line)

    threading.Thread(target=pump, daemon=True).start()
    return handle


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Callable[..., Up]]:
    """Start ``up`` runs; any still running at the end gets SIGTERM (then SIGKILL)."""
    runs: list[Up] = []

    def _launch(*extra: str) -> Up:
        runs.append(start_up(tmp_path, tmp_path / "data", *extra))
        return runs[-1]

    yield _launch
    for run in runs:
        if run.proc.poll() is None:
            run.proc.send_signal(signal.SIGTERM)
            try:
                run.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                run.proc.kill()
        print(run.output())


def read_token(data: Path) -> dict[str, str]:
    token = json.loads((data / "secrets.json").read_text())["read_token"]
    return {"authorization": f"Bearer {token}"}


def costs_by_tenant(up: Up) -> dict[str, float]:
    resp = httpx.get(
        f"{up.metering}/v1/reports/cost",
        params={"by": "tenant", "granularity": "total", "since": "1d"},
        headers=read_token(up.data),
        timeout=10,
    )
    assert resp.status_code == 200, resp.text
    return {row["tenant"]: row["total_usd"] for row in resp.json()["rows"]}


def traffic_stats(up: Up) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((up.data / "demo-traffic.json").read_text())
    return data["tenants"]


def metered(up: Up, request_id: str) -> dict[str, Any]:
    resp = httpx.get(
        f"{up.metering}/v1/requests/{request_id}", headers=read_token(up.data), timeout=10
    )
    assert resp.status_code == 200, f"{request_id}: {resp.text}"
    body: dict[str, Any] = resp.json()
    return body


def promtool_problems(up: Up) -> list[str]:
    """Every service's /metrics through promtool: what is wrong beyond the accepted lint."""
    vllm_names = vllm_promtool_findings()  # the simulator and collector reuse vLLM's names
    services = {"simulator-0": (0, vllm_names), "simulator-1": (1, vllm_names),
                "collector-0": (10, vllm_names), "collector-1": (11, vllm_names),
                "metering": (20, frozenset()), "throttle": (21, frozenset()),
                "gateway": (22, frozenset())}  # fmt: skip
    problems = []
    for name, (offset, allowed) in services.items():
        text = httpx.get(f"{up.url(offset)}/metrics", timeout=10).text
        code, findings = promtool_check(text)
        if code not in (0, 3):
            problems.append(f"{name}: promtool exit {code}: {findings}")
        elif not set(findings) <= allowed:
            problems.append(f"{name}: {sorted(set(findings) - allowed)}")
    return problems


def check_costs_page(up: Up) -> None:
    """The dashboards' Costs page, in headless Chromium, shows the demo tenants' costs."""
    browser = Browser(free_port_range(1))
    try:
        expect = ["Costs", "GPU cost (replicas)", *(t.name for t in TENANTS)]
        state = browser.load(f"{up.url(23)}/costs", expect, timeout=60)
        assert state["exceptions"] == 0, state["text"][:2000]
        browser.screenshot(REPO / "test-artifacts" / "up" / "costs.png")
    finally:
        browser.close()


def test_up_runs_the_demo_until_every_tenant_has_costs_and_stops_without_loss_then_reuses_it(
    launch: Callable[..., Up],
) -> None:
    up = launch("--traffic-seed", "7")
    ready = up.wait_line(r"all (\d+) services running after ([\d.]+) s", timeout=90)
    assert ready.group(1) == "9"
    table = up.output()
    for offset, name in ((0, "simulator-0"), (10, "collector-0"), (20, "metering"),
                         (21, "throttle"), (22, "gateway"), (23, "dashboards")):  # fmt: skip
        assert re.search(rf"{name}\s+{up.url(offset)}\s", table), name
    assert "sk-demo-initech-" in table and "a100-80gb:3g.40gb" in table

    first = up.wait_line(r"first costs visible ([\d.]+) s after start", timeout=90)
    deadline = time.monotonic() + 60
    while True:
        costs = costs_by_tenant(up)
        if all(costs.get(t.name, 0) > 0 for t in TENANTS):
            break
        assert time.monotonic() < deadline, f"not every tenant has costs: {costs}"
        time.sleep(1)

    stats = traffic_stats(up)
    assert stats["initech"]["throttled"] > 0, stats["initech"]
    assert stats["acme"]["throttled"] == 0 and stats["globex"]["throttled"] == 0
    hit = stats["hooli"]["cache_hit_ids"][0]
    assert metered(up, hit)["record"]["status"] == "cache_hit"
    job = stats["umbrella"]["job_ids"][0]
    record = metered(up, job)["record"]
    assert record["tenant"] == "umbrella" and record["status"] == "ok", record
    problems = promtool_problems(up)  # asserted last, so that the rest is checked too
    check_costs_page(up)

    up.proc.send_signal(signal.SIGINT)  # Ctrl-C
    assert up.proc.wait(timeout=60) == 0, up.output()
    out = up.output()
    assert out.rstrip().splitlines()[-1].lstrip().startswith("stopped  metering"), out

    stats = traffic_stats(up)  # final: written by the generator as it stopped
    sent = {rid for s in stats.values() for rid in s["metered_ids"]}
    db = duckdb.connect(str(up.data / "metering.duckdb"), read_only=True)
    try:
        stored = {row[0] for row in db.execute("SELECT request_id FROM usage").fetchall()}
        throttled = db.execute(
            "SELECT count(*) FROM usage WHERE tenant = 'initech' AND status = 'throttled'"
        ).fetchone()
    finally:
        db.close()
    assert sent and sent <= stored, f"lost {len(sent - stored)} of {len(sent)} records"
    assert throttled is not None and throttled[0] >= stats["initech"]["throttled"]
    took = time.monotonic() - up.started
    print(
        f"\nup: services ready after {ready.group(2)} s; first costs visible "
        f"{first.group(1)} s after start; {len(sent)} usage records sent, all stored; "
        f"test {took:.1f} s"
    )

    # a second `up` on the same data directory: same keys, the stored costs still there
    key = json.loads((up.data / "secrets.json").read_text())["api_keys"]["acme"]
    again = launch("--no-traffic")
    second = again.wait_line(r"all 8 services running after ([\d.]+) s", timeout=90)
    assert key in again.output()
    assert all(costs_by_tenant(again).get(t.name, 0) > 0 for t in TENANTS)
    body = {"model": "meta-llama/Llama-3.1-8B-Instruct", "max_tokens": 8,
            "messages": [{"role": "user", "content": "Hello again"}]}  # fmt: skip
    answer = httpx.post(f"{again.url(22)}/v1/chat/completions", json=body,
                        headers={"authorization": f"Bearer {key}"}, timeout=30)  # fmt: skip
    assert answer.status_code == 200, answer.text
    again.proc.send_signal(signal.SIGINT)
    assert again.proc.wait(timeout=60) == 0
    took = time.monotonic() - up.started
    print(f"second up ready after {second.group(1)} s; test {took:.1f} s")
    assert not problems, problems


@pytest.mark.vllm
@pytest.mark.timeout(600)
def test_up_with_real_vllm_cpu_build_serves_and_meters_a_demo_tenant(
    launch: Callable[..., Up],
) -> None:
    from infermeter.serving.errors import EngineNotInstalled
    from infermeter.serving.vllm import cpu as vllm_cpu

    try:
        vllm_cpu.require_install()
    except EngineNotInstalled as exc:
        pytest.fail(f"real vLLM (CPU build) is needed: {exc} (bash serving/vllm/cpu/setup.sh)")
    up = launch("--engine", "vllm", "--no-traffic", "--vllm-gpus", "l4")
    ready = up.wait_line(r"all 6 services running after ([\d.]+) s", timeout=480)
    assert "real vLLM (CPU build, tiny model), priced as l4" in up.output()
    key = json.loads((up.data / "secrets.json").read_text())["api_keys"]["globex"]
    body = {"model": "tiny-llama", "max_tokens": 16, "stream": True,
            "messages": [{"role": "user", "content": "Summarise: sales grew."}]}  # fmt: skip
    with httpx.stream("POST", f"{up.url(22)}/v1/chat/completions", json=body, timeout=120,
                      headers={"authorization": f"Bearer {key}"}) as resp:  # fmt: skip
        assert resp.status_code == 200
        text = "".join(resp.iter_text())
        rid = resp.headers["x-infermeter-request-id"]
    assert text.rstrip().endswith("data: [DONE]")
    deadline = time.monotonic() + 30
    while (
        httpx.get(f"{up.metering}/v1/requests/{rid}", headers=read_token(up.data)).status_code
        != 200
    ):
        assert time.monotonic() < deadline, "the request never reached metering"
        time.sleep(0.5)
    record = metered(up, rid)["record"]
    assert record["tenant"] == "globex" and record["replica"] == "vllm-0", record
    assert 0 < record["completion_tokens"] <= 16
    up.proc.send_signal(signal.SIGINT)
    assert up.proc.wait(timeout=90) == 0, up.output()
    print(f"\nup --engine vllm: ready after {ready.group(1)} s")
