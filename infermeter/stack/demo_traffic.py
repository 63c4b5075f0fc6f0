"""Demo traffic through the gateway: ``python -m serving.demo_traffic`` (started by ``up``).

Each demo tenant runs its habit (:mod:`infermeter.stack.demo_habits`) with its own API key against
the gateway on loopback, at a bounded overall rate and with a bounded number of requests in
flight. Everything sent and received is counted per tenant and written as JSON to
``--stats`` every couple of seconds and at exit: statuses, 429s, cache hits, jobs, and the
request ids of the responses metering should hold (the most recent 20,000 per tenant), so a
test can check none is lost.
SIGTERM or Ctrl-C stops new requests, lets those in flight finish for ``--drain`` seconds,
cancels the rest (the collector meters those as client aborts) and writes the stats.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import os
import signal
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from infermeter.kernel.errors import ConfigError
from infermeter.stack.demo_habits import HABITS, Request, Sizing, tenant_rng
from infermeter.stack.demo_stack import TENANTS

TENANT_NAMES = tuple(t.name for t in TENANTS)
MAX_IDS = 20_000


@dataclass
class TenantStats:
    """What one tenant sent and got back."""

    sent: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    throttled: int = 0
    cache_hits: int = 0
    errors: int = 0
    jobs_submitted: int = 0
    jobs_done: int = 0
    jobs_failed: int = 0
    # request ids, the most recent MAX_IDS of each kind (a long demo stays small)
    metered_ids: deque[str] = field(default_factory=lambda: deque(maxlen=MAX_IDS))
    throttled_ids: deque[str] = field(default_factory=lambda: deque(maxlen=MAX_IDS))
    cache_hit_ids: deque[str] = field(default_factory=lambda: deque(maxlen=MAX_IDS))
    job_ids: deque[str] = field(default_factory=lambda: deque(maxlen=MAX_IDS))  # <job>.<attempt>

    def to_json(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "statuses": dict(self.statuses),
            "throttled": self.throttled,
            "cache_hits": self.cache_hits,
            "errors": self.errors,
            "jobs_submitted": self.jobs_submitted,
            "jobs_done": self.jobs_done,
            "jobs_failed": self.jobs_failed,
            "metered_ids": list(self.metered_ids),
            "throttled_ids": list(self.throttled_ids),
            "cache_hit_ids": list(self.cache_hit_ids),
            "job_ids": list(self.job_ids),
        }


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def require_loopback(url: str) -> str:
    """The gateway URL, refused unless it points at this machine's loopback."""
    host = urlsplit(url).hostname or ""
    if not is_loopback(host):
        raise ConfigError(f"demo traffic only targets loopback, not {host!r}", field="--gateway")
    return url.rstrip("/")


class DemoTraffic:
    """Runs every tenant's habit until stopped; counts what happens."""

    def __init__(
        self,
        gateway: str,
        api_keys: dict[str, str],
        sizing: Sizing,
        *,
        seed: int = 0,
        concurrency: int = 16,
        tenants: tuple[str, ...] = TENANT_NAMES,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.gateway = require_loopback(gateway)
        self.api_keys = api_keys
        self.sizing = sizing
        self.seed = seed
        self.concurrency = concurrency
        self.habits = {t.name: t.habit for t in TENANTS if t.name in tenants}
        self.stats = {name: TenantStats() for name in self.habits}
        self.started_at = time.time()
        self._transport = transport
        self._slots = asyncio.Semaphore(concurrency)
        self._inflight: set[asyncio.Task[None]] = set()

    def to_json(self) -> dict[str, Any]:
        return {
            "gateway": self.gateway,
            "seed": self.seed,
            "started_at": self.started_at,
            "tenants": {name: s.to_json() for name, s in self.stats.items()},
        }

    def summary(self) -> str:
        total = sum(s.sent for s in self.stats.values())
        throttled = sum(s.throttled for s in self.stats.values())
        hits = sum(s.cache_hits for s in self.stats.values())
        jobs = sum(s.jobs_done for s in self.stats.values())
        errors = sum(s.errors for s in self.stats.values())
        return (
            f"demo traffic: {total} requests, {throttled} throttled (429), {hits} cache hits, "
            f"{jobs} jobs done, {errors} transport errors"
        )

    async def run(self, stop: asyncio.Event, drain_s: float = 5.0) -> None:
        """Send traffic until ``stop`` is set, then drain for ``drain_s`` and cancel."""
        async with httpx.AsyncClient(
            base_url=self.gateway,
            timeout=httpx.Timeout(120.0, connect=5.0),
            limits=httpx.Limits(max_connections=self.concurrency * 2),
            transport=self._transport,
        ) as client:
            loops = [asyncio.create_task(self._tenant(client, name, stop)) for name in self.habits]
            await stop.wait()
            await asyncio.gather(*loops, return_exceptions=True)
            if self._inflight:
                await asyncio.wait(set(self._inflight), timeout=drain_s)
            for task in list(self._inflight):
                task.cancel()
            if self._inflight:
                await asyncio.gather(*self._inflight, return_exceptions=True)

    async def _tenant(self, client: httpx.AsyncClient, name: str, stop: asyncio.Event) -> None:
        rng = tenant_rng(self.seed, name)
        habit = HABITS[self.habits[name]]
        first = True
        while not stop.is_set():
            action = habit(rng, self.sizing)
            delay = min(action.delay_s, 1.0) if first else min(action.delay_s, 30.0)
            first = False
            try:
                await asyncio.wait_for(stop.wait(), timeout=delay)
                return
            except TimeoutError:
                pass
            if len(self._inflight) >= self.concurrency * 4:
                continue  # the gateway is slower than the demo's pace: skip, do not pile up
            for request in action.requests:
                self._spawn(self._send(client, name, request))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    def _headers(self, tenant: str, request: Request) -> dict[str, str]:
        headers = {"authorization": f"Bearer {self.api_keys[tenant]}"}
        if request.tags:
            headers["x-infermeter-tags"] = request.tags
        return headers

    async def _send(self, client: httpx.AsyncClient, tenant: str, request: Request) -> None:
        stats = self.stats[tenant]
        async with self._slots:
            stats.sent += 1
            try:
                if request.kind == "job":
                    await self._job(client, tenant, request)
                elif request.stream:
                    async with client.stream(
                        "POST",
                        "/v1/chat/completions",
                        json=request.body,
                        headers=self._headers(tenant, request),
                    ) as resp:
                        self._count(stats, resp)
                        async for _ in resp.aiter_raw():
                            pass
                else:
                    resp = await client.post(
                        "/v1/chat/completions",
                        json=request.body,
                        headers=self._headers(tenant, request),
                    )
                    self._count(stats, resp)
            except httpx.HTTPError:
                stats.errors += 1

    @staticmethod
    def _count(stats: TenantStats, resp: httpx.Response) -> None:
        stats.statuses[str(resp.status_code)] += 1
        rid = resp.headers.get("x-infermeter-request-id", "")
        if resp.status_code == 429:
            stats.throttled += 1
            if rid:
                stats.throttled_ids.append(rid)
        if resp.headers.get("x-infermeter-cache") == "hit":
            stats.cache_hits += 1
            if rid:
                stats.cache_hit_ids.append(rid)
        if rid and resp.status_code in (200, 429):
            stats.metered_ids.append(rid)

    async def _job(self, client: httpx.AsyncClient, tenant: str, request: Request) -> None:
        stats = self.stats[tenant]
        headers = self._headers(tenant, request)
        accepted = await client.post("/v1/jobs", json=request.body, headers=headers)
        stats.statuses[str(accepted.status_code)] += 1
        if accepted.status_code != 202:
            return
        job = accepted.json()
        stats.jobs_submitted += 1
        attempt, event = 0, ""
        async with client.stream("GET", job["events_url"], headers=headers) as resp:
            async for line in resp.aiter_lines():
                if line.startswith("event: "):
                    event = line[7:].strip()
                elif line.startswith("data: ") and event == "started":
                    attempt = int(json.loads(line[6:]).get("attempt", attempt + 1))
                elif line.startswith("data: ") and event in ("done", "failed"):
                    break
        if event == "done":
            stats.jobs_done += 1
            stats.job_ids.append(f"{job['id']}.{attempt}")
            stats.metered_ids.append(f"{job['id']}.{attempt}")
        elif event == "failed":
            stats.jobs_failed += 1


def write_stats(path: Path, data: dict[str, Any]) -> None:
    """Replace ``path`` atomically with ``data`` as JSON."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
    os.replace(tmp, path)


async def _report(
    traffic: DemoTraffic, stats: Path | None, stop: asyncio.Event, every_s: float = 2.0
) -> None:
    last_print = 0.0
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=every_s)
        if stats is not None:
            write_stats(stats, traffic.to_json())
        if time.monotonic() - last_print >= 10.0:
            print(traffic.summary(), flush=True)
            last_print = time.monotonic()
        if stop.is_set():
            return


async def serve(traffic: DemoTraffic, stats: Path | None, drain_s: float) -> None:
    """Run until SIGTERM/SIGINT, then drain and write the final stats."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reporter = asyncio.create_task(_report(traffic, stats, stop))
    await traffic.run(stop, drain_s)
    await reporter
    if stats is not None:
        write_stats(stats, traffic.to_json())
    print(f"{traffic.summary()} (stopped)", flush=True)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m serving.demo_traffic",
        description="Demo tenants' traffic through an infermeter gateway on loopback "
        "(started by `infermeter up`; stops on SIGTERM or Ctrl-C).",
    )
    p.add_argument("--gateway", required=True, help="gateway base URL (loopback only)")
    p.add_argument("--model", required=True, help="model name the gateway routes")
    p.add_argument(
        "--keys", required=True, type=Path, help="JSON file with api_keys: {tenant: key}"
    )
    p.add_argument("--stats", type=Path, default=None, help="write counts here as JSON")
    p.add_argument("--seed", type=int, default=0, help="seed of every tenant's habit [0]")
    p.add_argument("--rate", type=float, default=3.0, help="average requests per second [3]")
    p.add_argument("--concurrency", type=int, default=16, help="most requests in flight [16]")
    p.add_argument(
        "--max-model-len", type=int, default=8192, help="engine context; sizes prompts [8192]"
    )
    p.add_argument("--drain", type=float, default=5.0, help="seconds to finish in flight [5]")
    return p


def main(argv: list[str] | None = None, *, now: Callable[[], float] = time.time) -> int:
    args = parser().parse_args(argv)
    try:
        keys = json.loads(args.keys.read_text(encoding="utf-8"))["api_keys"]
        traffic = DemoTraffic(
            args.gateway,
            keys,
            Sizing(args.model, args.max_model_len, args.rate),
            seed=args.seed,
            concurrency=args.concurrency,
        )
    except (OSError, ValueError, KeyError, ConfigError) as exc:
        print(f"demo traffic: error: {exc}", file=sys.stderr)
        return 2
    traffic.started_at = now()
    print(f"demo traffic: {len(traffic.habits)} tenants -> {traffic.gateway}", flush=True)
    asyncio.run(serve(traffic, args.stats, args.drain))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
