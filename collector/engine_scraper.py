"""Reads the engine's ``/metrics`` on an interval, publishes signals, pushes them to throttle.

The scraper is a Prometheus custom collector: the collector's own ``/metrics`` shows the
latest derived signals (``infermeter_engine_*``), whether the last scrape worked, and the
reconciliation gap between the engine's token counters and what the collector metered since
it started (tokens the engine counted that no usage record carries, e.g. prompts of aborted
requests). When a throttle URL is configured every scrape ends with ``POST /v1/signals``;
failures there are counted and logged once, never raised.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator

import aiohttp
import orjson
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from infermeter.collector.engine_signals import (
    GENERATION_TOKENS,
    PROMPT_TOKENS,
    EngineSignals,
    SignalDeriver,
)
from infermeter.kernel.dependency_auth import AUTH_STATUSES, DependencyAuth
from infermeter.kernel.service_auth import auth_header

log = logging.getLogger(__name__)


class EngineScraper(Collector):
    """Scrape one engine; keep its latest signals ready for ``/metrics`` and throttle."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        metrics_url: str,
        deriver: SignalDeriver,
        *,
        interval_s: float = 5.0,
        timeout_s: float = 5.0,
        throttle_url: str = "",
        throttle_token: str = "",
        auth: DependencyAuth | None = None,
        metered_totals: Callable[[], dict[str, list[int]]] = dict,
        mono: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.session = session
        self.metrics_url = metrics_url
        self.deriver = deriver
        self.interval_s = interval_s
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.throttle_url = throttle_url.rstrip("/")
        self._push_headers = {"content-type": "application/json", **auth_header(throttle_token)}
        self._auth = auth
        self._metered_totals = metered_totals
        self._mono = mono
        self._wall = wall
        self.signals: list[EngineSignals] = []
        self.up = False
        self.scrape_failures = 0
        self.push_failures = 0
        self.pushes = 0
        self._baseline: dict[str, tuple[dict[str, float], list[int]]] = {}
        self._push_error = ""

    async def scrape_once(self) -> list[EngineSignals]:
        """Read the engine's exposition once and update the signals (empty on failure)."""
        try:
            async with self.session.get(self.metrics_url, timeout=self.timeout) as resp:
                text = await resp.text()
                if resp.status != 200:
                    raise aiohttp.ClientResponseError(
                        resp.request_info, (), status=resp.status, message=text[:200]
                    )
            self.signals = self.deriver.update(text, self._mono(), self._wall())
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            if self.up or self.scrape_failures == 0:
                log.warning("scraping %s failed: %s", self.metrics_url, exc)
            self.up = False
            self.scrape_failures += 1
            return []
        self.up = True
        metered = self._metered_totals()
        for model, totals in self.deriver.totals.items():
            if model not in self._baseline:
                self._baseline[model] = (dict(totals), list(metered.get(model, [0, 0])))
        return self.signals

    async def push(self) -> bool:
        """POST the latest signals to throttle; False (and counted) when that fails."""
        if not self.throttle_url or not self.signals:
            return False
        body = orjson.dumps([s.to_json() for s in self.signals])
        try:
            async with self.session.post(
                f"{self.throttle_url}/v1/signals",
                data=body,
                headers=self._push_headers,
                timeout=self.timeout,
            ) as resp:
                await resp.read()
                if resp.status in AUTH_STATUSES and self._auth is not None:
                    self._auth.refused("throttle", resp.status, "[collector] throttle_token")
                if resp.status >= 300:
                    raise aiohttp.ClientError(f"HTTP {resp.status}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.push_failures += 1
            if str(exc) != self._push_error:
                log.warning("pushing signals to %s failed: %s", self.throttle_url, exc)
            self._push_error = str(exc)
            return False
        self._push_error = ""
        self.pushes += 1
        if self._auth is not None:
            self._auth.accepted("throttle")
        return True

    async def run(self) -> None:
        """Scrape (and push) every ``interval_s`` until cancelled."""
        while True:
            if await self.scrape_once():
                await self.push()
            await asyncio.sleep(self.interval_s)

    def latest_json(self) -> list[dict[str, object]]:
        """The latest signals as the contract's JSON objects."""
        return [s.to_json() for s in self.signals]

    def unmetered_tokens(self) -> dict[tuple[str, str], float]:
        """Per (model, kind): engine counter increase minus tokens metered, since start."""
        metered = self._metered_totals()
        out: dict[tuple[str, str], float] = {}
        for model, (engine0, metered0) in self._baseline.items():
            now = self.deriver.totals.get(model, {})
            mine = metered.get(model, [0, 0])
            for i, (kind, name) in enumerate(
                (("prompt", PROMPT_TOKENS), ("generation", GENERATION_TOKENS))
            ):
                engine_delta = now.get(name, 0.0) - engine0.get(name, 0.0)
                out[(model, kind)] = engine_delta - (mine[i] - metered0[i])
        return out

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("infermeter_engine_up", "1 when the last engine scrape worked")
        up.add_metric([], 1.0 if self.up else 0.0)
        yield up
        failures = CounterMetricFamily(
            "infermeter_engine_scrape_failures", "Failed scrapes of the engine's /metrics"
        )
        failures.add_metric([], float(self.scrape_failures))
        yield failures
        pushes = CounterMetricFamily(
            "infermeter_collector_signal_push_failures", "Failed POST /v1/signals to throttle"
        )
        pushes.add_metric([], float(self.push_failures))
        yield pushes
        fields = (
            ("num_requests_running", "Requests running in the engine"),
            ("num_requests_waiting", "Requests waiting in the engine's queue"),
            ("kv_cache_usage_perc", "KV-cache usage (0-1)"),
            ("prompt_tokens_per_s", "Engine prompt tokens per second (counter delta)"),
            ("generation_tokens_per_s", "Engine generation tokens per second (counter delta)"),
            ("preemptions_per_s", "Engine preemptions per second (counter delta)"),
        )
        for attr, doc in fields:
            name = "infermeter_engine_" + attr.replace("_per_s", "_per_second")
            fam = GaugeMetricFamily(name, doc, labels=["model"])
            for sig in self.signals:
                fam.add_metric([sig.model], float(getattr(sig, attr)))
            yield fam
        # One gauge per quantile: a `quantile` label is reserved for summaries (promtool).
        for kind, doc in (("ttft", "time to first token"), ("itl", "inter-token latency")):
            for q in ("50", "95"):
                fam = GaugeMetricFamily(
                    f"infermeter_engine_{kind}_p{q}_seconds",
                    f"Engine {doc} p{q} over the last scrape interval (histogram deltas)",
                    labels=["model"],
                )
                for sig in self.signals:
                    value = getattr(sig, f"{kind}_p{q}_s")
                    if value is not None:
                        fam.add_metric([sig.model], float(value))
                yield fam
        gap = GaugeMetricFamily(
            "infermeter_engine_unmetered_tokens",
            "Engine token counter increase minus tokens in usage records since the collector "
            "started (in-flight requests and aborted prompts show here)",
            labels=["model", "kind"],
        )
        for (model, kind), value in sorted(self.unmetered_tokens().items()):
            gap.add_metric([model, kind], value)
        yield gap
