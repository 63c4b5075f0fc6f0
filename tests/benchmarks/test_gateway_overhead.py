"""Benchmark: the gateway's own added latency, and the latency of a semantic-cache hit.

Run: ``./dev.sh bench -k gateway`` (prints the tables; no timed asserts).

Every server is its own process on 127.0.0.1 (simulator with ``--time-scale 0``, so the
engine answers as fast as it can; a collector in front of it; the gateway through the real
CLI; a bare aiohttp passthrough built here as the yardstick). The load client is aiohttp in
this process. Added latency = end-to-end time through a front minus through the collector
alone, measured in the same run, interleaved in rounds so drift hits all paths alike;
"ratio" compares it with the bare passthrough's (the FIELD.md yardstick: <= 1.5).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest

from infermeter.kernel.tenancy import hash_key
from tests.conftest import REPO

MODEL = "bench-model"
KEY = "sk-bench"
ROUNDS = 6
PIDS: dict[str, int] = {}  # front URL -> process id, for CPU accounting


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


PASSTHROUGH = textwrap.dedent(
    """
    import sys
    import aiohttp
    from aiohttp import web

    UPSTREAM = sys.argv[2]

    async def session(app):
        app["s"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        yield
        await app["s"].close()

    async def proxy(request):
        body = await request.read()
        async with request.app["s"].post(
            UPSTREAM + request.path, data=body, headers={"content-type": "application/json"}
        ) as up:
            resp = web.StreamResponse(status=up.status)
            resp.content_type = up.content_type
            await resp.prepare(request)
            async for chunk in up.content.iter_any():
                await resp.write(chunk)
            await resp.write_eof()
            return resp

    app = web.Application()
    app.cleanup_ctx.append(session)
    app.router.add_post("/v1/chat/completions", proxy)
    app.router.add_get("/health", lambda r: web.Response(text="ok"))
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
    """
)


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"{proc.args} exited"
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise TimeoutError(url)


@pytest.fixture(scope="module")
def fronts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    work = tmp_path_factory.mktemp("gw-bench")
    procs: list[subprocess.Popen[bytes]] = []
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERMETER")}
    empty = work / "empty.toml"
    empty.write_text("")

    def spawn(argv: list[str], health: str) -> str:
        proc = subprocess.Popen(
            argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        procs.append(proc)
        _wait(health, proc)
        url = health.rsplit("/", 1)[0]
        PIDS[url] = proc.pid
        return url

    py = sys.executable
    try:
        p = _port()
        sim = spawn(
            [py, "-m", "infermeter", "engine", "simulate", "--config", str(empty), "--port", str(p),
             "--served-model-name", MODEL, "--time-scale", "0", "--output-tokens-median", "1000"],
            f"http://127.0.0.1:{p}/health",
        )  # fmt: skip
        p = _port()
        collector = spawn(
            [py, "-m", "infermeter.collector", "--config", str(empty), "--upstream", sim, "--port",
            str(p),
             "--no-nvml", "--no-durable-ack"],
            f"http://127.0.0.1:{p}/healthz",
        )  # fmt: skip
        p = _port()
        bare = spawn([py, "-c", PASSTHROUGH, str(p), collector], f"http://127.0.0.1:{p}/health")
        p = _port()
        tp = _port()
        config = work / "gateway.toml"
        config.write_text(
            textwrap.dedent(
                f"""
                [tenancy]
                shared_secret = "bench-secret"
                [tenancy.keys."{hash_key(KEY)}"]
                tenant = "bench"
                key_id = "bench-key"
                [gateway]
                port = {p}
                signal_poll_s = 1.0
                [gateway.cache]
                enabled = true
                [gateway.models."{MODEL}"]
                replicas = [{{ url = "{collector}" }}]
                [throttle]
                port = {tp}
                """
            )
        )
        gateway = spawn(
            [py, "-m", "infermeter", "gateway", "--config", str(config)],
            f"http://127.0.0.1:{p}/healthz",
        )
        policy = work / "policy.toml"
        policy.write_text(
            'unit = "usd"\ndefault_tier = "pro"\n[tiers.pro]\nrate = 1000000.0\n'
            "per_s = 60\nburst = 1000000.0\n"
        )
        throttle = spawn(
            [
                py,
                "-m",
                "infermeter.throttle",
                "serve",
                "--config",
                str(config),
                "--policy",
                str(policy),
            ],
            f"http://127.0.0.1:{tp}/healthz",
        )
        p2 = _port()
        gateway_throttled = spawn(
            [py, "-m", "infermeter", "gateway", "--config", str(config), "--port", str(p2),
             "--throttle-url", throttle],
            f"http://127.0.0.1:{p2}/healthz",
        )  # fmt: skip
        yield {
            "collector only": collector,
            "bare aiohttp passthrough": bare,
            "gateway": gateway,
            "gateway + throttle": gateway_throttled,
        }
    finally:
        for proc in reversed(procs):
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _body(stream: bool, i: int, temperature: float = 1.0) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"Request number {i}: say something."}],
        "max_tokens": 32,
        "temperature": temperature,
        "stream": stream,
        "ignore_eos": True,
    }


async def _one(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> float:
    start = time.perf_counter()
    async with session.post(
        url + "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {KEY}"}
    ) as resp:
        async for _ in resp.content.iter_any():
            pass
        assert resp.status == 200, resp.status
    return time.perf_counter() - start


async def _load(url: str, stream: bool, concurrency: int, total: int) -> list[float]:
    latencies: list[float] = []
    queue = list(range(total))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def worker() -> None:
            while queue:
                i = queue.pop()
                latencies.append(await _one(session, url, _body(stream, i)))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000.0


def test_gateway_added_latency(fronts: dict[str, str]) -> None:
    scenarios = [("non-stream", False, 1, 240), ("stream", True, 1, 180), ("stream", True, 32, 768)]
    print("\nGateway added latency, ms. p50/p99 over all requests; +p50 = median over rounds of")
    print("(front p50 - collector-only p50) within the round (robust to drift on a shared host);")
    print("cpu = CPU ms the front process itself spent per request (robust to load)")
    print(f"{'scenario':<16}{'front':<28}{'p50':>8}{'p99':>8}{'+p50':>8}{'ratio':>7}{'cpu':>7}")
    for label, stream, conc, total in scenarios:
        results: dict[str, list[float]] = {name: [] for name in fronts}
        added: dict[str, list[float]] = {name: [] for name in fronts}
        cpu: dict[str, float] = dict.fromkeys(fronts, 0.0)
        asyncio.run(_load(fronts["gateway"], stream, conc, 40))  # warm every path
        for _ in range(ROUNDS):
            p50s = {}
            for name, url in fronts.items():
                before = _cpu_s(PIDS[url])
                lat = asyncio.run(_load(url, stream, conc, total // ROUNDS))
                cpu[name] += _cpu_s(PIDS[url]) - before
                results[name] += lat
                p50s[name] = _pct(lat, 0.5)
            for name in fronts:
                added[name].append(p50s[name] - p50s["collector only"])
        bare = statistics.median(added["bare aiohttp passthrough"])
        for name, lat in results.items():
            plus = statistics.median(added[name])
            ratio = plus / bare if bare > 0 else float("nan")
            print(
                f"{label + f' c={conc}':<16}{name:<28}{_pct(lat, 0.5):>8.2f}"
                f"{_pct(lat, 0.99):>8.2f}{plus:>8.2f}{ratio:>7.2f}"
                f"{cpu[name] * 1000 / len(lat):>7.2f}"
            )


def test_cache_hit_latency(fronts: dict[str, str]) -> None:
    url = fronts["gateway"]

    async def run() -> tuple[list[float], list[float]]:
        async with aiohttp.ClientSession() as session:
            primer = _body(False, 0, temperature=0.0)
            primer["messages"][0]["content"] = "How do I rotate my API keys?"
            await _one(session, url, primer)
            await asyncio.sleep(0.5)  # the store happens off the response path
            hits, misses = [], []
            for i in range(100):
                body = _body(False, i, temperature=0.0)
                body["messages"][0]["content"] = "How can I rotate my API keys?"
                hits.append(await _one(session, url, body))
                miss = _body(False, i, temperature=0.0)
                miss["messages"][0]["content"] = f"Explain topic number {i} in detail."
                misses.append(await _one(session, url, miss))
            return hits, misses

    hits, misses = asyncio.run(run())
    print("\nSemantic cache (gateway, non-stream, 32 max tokens, sequential, ms)")
    print(f"cache hit (paraphrase)    p50 {_pct(hits, 0.5):.2f}  p99 {_pct(hits, 0.99):.2f}")
    print(f"miss -> engine (+embed)   p50 {_pct(misses, 0.5):.2f}  p99 {_pct(misses, 0.99):.2f}")
    print(f"mean hit {statistics.mean(hits) * 1000:.2f} ms over {len(hits)} requests")
