"""Throttle decision throughput and latency: in process, over HTTP, over HTTP with Redis.

Run: ``./dev.sh bench -k throttle`` (or ``.venv/bin/python -m pytest -o addopts="" -s
tests/benchmarks/test_throttle_decisions.py``). Prints figures; asserts nothing about speed.
The HTTP load client is ``wrk`` (Debian package ``wrk``) when installed, else a bounded
aiohttp client; every target is on 127.0.0.1 and every run is bounded in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from infermeter.throttle.algorithms import budgets, fairshare, gcra
from infermeter.throttle.algorithms.fairshare import FairParams
from infermeter.throttle.policy import load_policy_text
from infermeter.throttle.service import AdmitRequest, Throttle
from infermeter.throttle.storage.memory import MemoryStorage
from infermeter.throttle.storage.redis import RedisStorage
from tests.conftest import REPO

POLICY = """
default_tier = "t"
lease_s = 5
[tiers.t]
rate = 600000
per_s = 60
burst = 100000
concurrency = 0
daily_budget = 1.0e12
[models."m"]
prompt = 1.0e-6
completion = 2.0e-6
"""
TENANTS = 1000
HTTP_SECONDS = 8

ADMIT_LUA = """
local n = 0
request = function()
  n = n + 1
  local body = string.format(
    '{"tenant":"t%d","model":"m","prompt_tokens":512,"max_tokens":256}', n % 1000)
  return wrk.format("POST", "/v1/admit", {["Content-Type"] = "application/json"}, body)
end
"""

MIX_LUA = """
local n = 0
local pending = {}
request = function()
  local id = table.remove(pending)
  local h = {["Content-Type"] = "application/json"}
  if id then
    return wrk.format("POST", "/v1/settle", h, '{"reservation_id":"' .. id ..
      '","prompt_tokens":512,"cached_prompt_tokens":0,"completion_tokens":100}')
  end
  n = n + 1
  return wrk.format("POST", "/v1/admit", h, string.format(
    '{"tenant":"t%d","model":"m","prompt_tokens":512,"max_tokens":256}', n % 1000))
end
response = function(status, headers, body)
  if string.find(body, '"allowed":true', 1, true) then
    table.insert(pending, string.match(body, '"reservation_id":"([^"]+)"'))
  end
end
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _quantiles(samples_ns: list[int]) -> tuple[float, float]:
    ordered = sorted(samples_ns)
    return ordered[len(ordered) // 2] / 1000, ordered[int(len(ordered) * 0.99)] / 1000


def _load() -> str:
    return "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


async def _in_process(throttle: Throttle, n: int) -> tuple[float, float, float]:
    requests = [
        AdmitRequest(tenant=f"t{i}", model="m", max_tokens=256, prompt_tokens=512)
        for i in range(TENANTS)
    ]
    samples: list[int] = []
    clock = time.perf_counter_ns
    busy = 0
    began = time.perf_counter()
    cpu = time.thread_time()
    for i in range(n):
        start = clock()
        result = await throttle.admit(requests[i % TENANTS])
        took = clock() - start
        samples.append(took)
        busy += took
        if result.allowed:
            await throttle.settle(result.reservation_id, 512, 0, 100)
    wall = time.perf_counter() - began
    cpu = time.thread_time() - cpu
    p50, p99 = _quantiles(samples)
    print(
        f"[throttle]   {n / wall:,.0f} admit+settle pairs/s wall clock, "
        f"{n / cpu:,.0f} pairs per CPU-second"
    )
    return n / (busy / 1e9), p50, p99


async def _admit_only(throttle: Throttle, n: int = 100_000) -> float:
    requests = [
        AdmitRequest(tenant=f"t{i}", model="m", max_tokens=256, prompt_tokens=512)
        for i in range(TENANTS)
    ]
    cpu = time.thread_time()
    for i in range(n):
        await throttle.admit(requests[i % TENANTS])
    return n / (time.thread_time() - cpu)


def test_throttle_algorithms_alone() -> None:
    """The pure arithmetic (no storage bookkeeping): GCRA + budget + fair-share check."""
    fair = FairParams(True, 1.0, 2.0, 30.0, 1.0)
    tat = now = 1_800_000_000.0
    n = 300_000
    cpu = time.thread_time()
    for _ in range(n):
        result = gcra.check(tat, now, 0.5, 100.0, 50.0)
        if result.allowed and budgets.fits(1.0, 0.5, 10.0) and fairshare.admits(1.0, 0.5, fair):
            tat = result.tat
        now += 0.001
    rate = n / (time.thread_time() - cpu)
    print(f"\n[throttle] algorithms alone: {rate:,.0f} decisions per CPU-second ({_load()})")


def test_throttle_in_process() -> None:
    policy = load_policy_text(POLICY)
    print(f"\n[throttle] in process ({_load()}, {os.cpu_count()} cpus)")
    for round_ in range(3):
        memory = Throttle(policy, MemoryStorage(), time.time)
        rate, p50, p99 = asyncio.run(_in_process(memory, 100_000))
        print(
            f"[throttle] memory   round {round_}: {rate:,.0f} decisions/s "
            f"p50 {p50:.1f} us p99 {p99:.1f} us"
        )
    print(
        f"[throttle] memory admit only (leases lapse after lease_s): "
        f"{asyncio.run(_admit_only(Throttle(policy, MemoryStorage(), time.time))):,.0f} "
        "decisions per CPU-second"
    )

    async def on_redis() -> tuple[float, float, float]:
        store = RedisStorage(
            f"redis://127.0.0.1:6379/0?prefix=bench:{uuid.uuid4().hex[:8]}&timeout_ms=2000"
        )
        try:
            return await _in_process(Throttle(policy, store, time.time), 10_000)
        finally:
            await store.clear()
            await store.close()

    rate, p50, p99 = asyncio.run(on_redis())
    print(
        f"[throttle] redis (one caller, sequential): {rate:,.0f} decisions/s "
        f"p50 {p50:.1f} us p99 {p99:.1f} us"
    )


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(POLICY)
    return path


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def _serve(policy: Path, storage: str) -> Iterator[tuple[str, int]]:
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "infermeter.throttle",
            "serve",
            "--policy",
            str(policy),
            "--port",
            str(port),
            "--storage",
            storage,
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(f"{url}/healthz", timeout=1)
            break
        except httpx.HTTPError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                err = proc.stderr.read() if proc.stderr else b""
                raise RuntimeError(f"throttle did not start: {err!r}") from None
            time.sleep(0.1)
    try:
        yield url, proc.pid
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


_UNIT = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _wrk(url: str, script: str, connections: int, tmp: Path) -> tuple[float, float, float, int]:
    lua = tmp / f"load-{uuid.uuid4().hex[:6]}.lua"
    lua.write_text(script)
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{HTTP_SECONDS}s", "--latency", "-s", str(lua), url],
        capture_output=True,
        text=True,
        timeout=HTTP_SECONDS + 30,
        check=True,
    ).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]

    def pct(p: str) -> float:
        value, unit = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
        return float(value) * _UNIT[unit]

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return rate, pct("50"), pct("99"), int(errors.group(1)) if errors else 0


async def _aiohttp_load(url: str, connections: int) -> tuple[float, float, float, int]:
    import aiohttp

    samples: list[int] = []
    errors = 0
    stop = time.monotonic() + HTTP_SECONDS

    async def worker(k: int, session: aiohttp.ClientSession) -> None:
        nonlocal errors
        n = 0
        while time.monotonic() < stop:
            n += 1
            body = {
                "tenant": f"t{(k * 7919 + n) % TENANTS}",
                "model": "m",
                "prompt_tokens": 512,
                "max_tokens": 256,
            }
            start = time.perf_counter_ns()
            async with session.post(f"{url}/v1/admit", json=body) as response:
                await response.read()
                errors += response.status >= 300
            samples.append(time.perf_counter_ns() - start)

    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:
        began = time.monotonic()
        await asyncio.gather(*(worker(k, session) for k in range(connections)))
        elapsed = time.monotonic() - began
    p50, p99 = _quantiles(samples)
    return len(samples) / elapsed, p50 / 1000, p99 / 1000, errors


def _http_report(label: str, url: str, pid: int, tmp: Path) -> None:
    print(f"\n[throttle] {label} ({_load()})")
    for connections in (4, 8, 16):
        if shutil.which("wrk"):
            runs = [("admit", ADMIT_LUA), ("admit+settle", MIX_LUA)]
            for name, script in runs:
                cpu = _cpu_seconds(pid)
                rate, p50, p99, errors = _wrk(url, script, connections, tmp)
                per_cpu = rate * HTTP_SECONDS / max(_cpu_seconds(pid) - cpu, 1e-9)
                print(
                    f"[throttle] {label} wrk c={connections} {name}: {rate:,.0f} req/s "
                    f"p50 {p50:.2f} ms p99 {p99:.2f} ms non-2xx {errors}; "
                    f"{per_cpu:,.0f} req per server CPU-second ({_load()})"
                )
        else:
            rate, p50, p99, errors = asyncio.run(_aiohttp_load(url, connections))
            print(
                f"[throttle] {label} aiohttp c={connections} admit: {rate:,.0f} req/s "
                f"p50 {p50:.2f} ms p99 {p99:.2f} ms non-2xx {errors}"
            )


def test_throttle_http_memory(policy_file: Path, tmp_path: Path) -> None:
    with _serve(policy_file, "memory://") as (url, pid):
        _http_report("http memory://", url, pid, tmp_path)


def test_throttle_http_redis(policy_file: Path, tmp_path: Path) -> None:
    prefix = f"bench:{uuid.uuid4().hex[:8]}"
    uri = f"redis://127.0.0.1:6379/0?prefix={prefix}&timeout_ms=2000"
    try:
        with _serve(policy_file, uri) as (url, pid):
            _http_report("http redis://", url, pid, tmp_path)
    finally:
        store = RedisStorage(uri)
        asyncio.run(_clear(store))


async def _clear(store: RedisStorage) -> None:
    await store.clear()
    await store.close()
