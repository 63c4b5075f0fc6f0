"""Simulator throughput: concurrent streams and streamed chunks per second on loopback.

Run: ``./dev.sh bench -k simulator`` (or ``.venv/bin/pytest tests/benchmarks/
test_simulator_throughput.py -s``). The simulator runs as its own process (as in a load
test), the client is a bounded aiohttp load generator in this process; both share the
machine's cores. Figures are printed, never asserted against a time budget.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import REPO, free_port, wait_http


@dataclass
class LoadResult:
    streams: int
    requests: int
    chunks: int
    tokens: int
    wall_s: float
    peak_concurrent: int
    errors: int

    @property
    def chunks_per_s(self) -> float:
        return self.chunks / self.wall_s

    def line(self, label: str) -> str:
        return (
            f"{label}: {self.streams} concurrent streams, {self.requests} requests, "
            f"{self.chunks} chunks in {self.wall_s:.2f} s = {self.chunks_per_s:,.0f} chunks/s, "
            f"peak {self.peak_concurrent} open streams, {self.errors} errors"
        )


async def run_load(url: str, streams: int, requests_per_stream: int, max_tokens: int) -> LoadResult:
    """``streams`` workers, each sending ``requests_per_stream`` streaming requests in turn."""
    chunks = tokens = errors = 0
    open_now = peak = 0
    body = {
        "model": "sim",
        "prompt": "Measure the simulator under a bounded load test on loopback.",
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal chunks, tokens, errors, open_now, peak
        for _ in range(requests_per_stream):
            async with session.post(f"{url}/v1/completions", json=body) as resp:
                if resp.status != 200:
                    errors += 1
                    continue
                open_now += 1
                peak = max(peak, open_now)
                tail = b""
                async for data in resp.content.iter_any():
                    chunks += data.count(b"data: ")
                    tail = (tail + data)[-64:]
                open_now -= 1
                if not tail.endswith(b"data: [DONE]\n\n"):
                    errors += 1
                tokens += max_tokens

    connector = aiohttp.TCPConnector(limit=streams)
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(streams)))
        wall = time.perf_counter() - start
    return LoadResult(streams, streams * requests_per_stream, chunks, tokens, wall, peak, errors)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(url: str, pid: int, streams: int, requests: int, tokens: int, label: str) -> LoadResult:
    server_before, client_before = cpu_seconds(pid), time.process_time()
    result = asyncio.run(run_load(url, streams, requests_per_stream=requests, max_tokens=tokens))
    server = cpu_seconds(pid) - server_before
    client = time.process_time() - client_before
    print(
        f"\n{result.line(label)}\n  CPU: simulator {server:.2f} s "
        f"({server / result.chunks * 1e6:.1f} us/chunk, {result.chunks / max(server, 1e-9):,.0f} "
        f"chunks per simulator CPU-second), load generator {client:.2f} s, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    return result


@pytest.fixture
def simulator(request: pytest.FixtureRequest) -> Iterator[tuple[str, int]]:
    time_scale = getattr(request, "param", "0")
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "infermeter", "engine", "simulate", "--port", str(port),
            "--served-model-name", "sim", "--max-num-seqs", "1024", "--max-model-len", "4096",
            "--time-scale", time_scale,
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    try:
        wait_http(f"http://127.0.0.1:{port}/health")
        yield f"http://127.0.0.1:{port}", proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=15)


@pytest.mark.parametrize("simulator", ["0"], indirect=True)
@pytest.mark.parametrize("streams", [300, 500])
def test_fast_mode_throughput(simulator: tuple[str, int], streams: int) -> None:
    """Time scale 0: the simulator as fast as it can go (the load generator shares the CPU)."""
    label = f"time-scale 0, max_tokens 128, {streams} streams"
    result = measure(*simulator, streams, 3, 128, label)
    assert result.errors == 0
    assert result.peak_concurrent >= streams * 0.9


@pytest.mark.parametrize("simulator", ["1"], indirect=True)
def test_real_time_throughput(simulator: tuple[str, int]) -> None:
    """Time scale 1: Llama-3.1-8B bf16 on one H100 as modelled, 300 concurrent streams."""
    label = "time-scale 1 (H100, llama-3.1-8b), max_tokens 256, 300 streams"
    result = measure(*simulator, 300, 1, 256, label)
    assert result.errors == 0
