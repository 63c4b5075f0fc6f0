"""Bounded streaming load client for the collector overhead benchmark (loopback only).

Run as a process of its own: ``python collector_load_client.py URL CONCURRENCY COUNT MAX_S
[stream|whole]``; prints one JSON summary line. Each worker sends chat completions back to
back until COUNT requests finished or MAX_S elapsed. Per request it records time to first
content frame, end-to-end time (until the response ends) and, for streams, the gaps between
content frames as the client reads them.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import aiohttp

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop ships with uvicorn[standard]
    uvloop = None  # type: ignore[assignment]

MAX_TOKENS = 32


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(url: str, concurrency: int, count: int, max_s: float, stream: bool) -> dict[str, Any]:
    body = json.dumps(
        {
            "model": "bench",
            "messages": [{"role": "user", "content": "Say something about benchmarks."}],
            "max_tokens": MAX_TOKENS,
            "stream": stream,
            "ignore_eos": True,
        }
    ).encode()
    headers = {"content-type": "application/json", "authorization": "Bearer sk-bench"}
    ttft: list[float] = []
    e2e: list[float] = []
    gaps: list[float] = []
    errors: dict[str, int] = {}
    done = 0
    started = time.perf_counter()
    deadline = started + max_s
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=max(60.0, max_s * 2))
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker() -> None:
            nonlocal done
            while done < count and time.perf_counter() < deadline:
                done += 1
                t0 = time.perf_counter()
                first = last = None
                try:
                    async with session.post(url, data=body, headers=headers) as resp:
                        if resp.status != 200:
                            errors[str(resp.status)] = errors.get(str(resp.status), 0) + 1
                            await resp.read()
                            continue
                        if stream:
                            async for chunk in resp.content.iter_any():
                                if b'"content":"' in chunk.replace(b'"content":""', b""):
                                    now = time.perf_counter()
                                    if first is None:
                                        first = now
                                    elif last is not None:
                                        gaps.append(now - last)
                                    last = now
                        else:
                            await resp.read()
                            first = time.perf_counter()
                except (aiohttp.ClientError, TimeoutError) as exc:
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                    continue
                end = time.perf_counter()
                e2e.append(end - t0)
                if first is not None:
                    ttft.append(first - t0)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    ms = 1000.0
    return {
        "ok": len(e2e),
        "errors": errors,
        "elapsed_s": elapsed,
        "rps": len(e2e) / elapsed if elapsed else 0.0,
        "ttft_p50_ms": (pct(ttft, 0.5) or 0) * ms,
        "ttft_p99_ms": (pct(ttft, 0.99) or 0) * ms,
        "e2e_p50_ms": (pct(e2e, 0.5) or 0) * ms,
        "e2e_p99_ms": (pct(e2e, 0.99) or 0) * ms,
        "itl_p50_ms": (pct(gaps, 0.5) or 0) * ms,
        "itl_p99_ms": (pct(gaps, 0.99) or 0) * ms,
    }


def main() -> None:
    url, concurrency, count, max_s = (
        sys.argv[1],
        int(sys.argv[2]),
        int(sys.argv[3]),
        float(sys.argv[4]),
    )
    stream = (sys.argv[5] if len(sys.argv) > 5 else "stream") == "stream"
    if uvloop is not None:
        uvloop.install()
    print(json.dumps(asyncio.run(run(url, concurrency, count, max_s, stream))))


if __name__ == "__main__":
    main()
