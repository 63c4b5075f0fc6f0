"""Wiring: the collector's ASGI app (own endpoints + proxy) and its background tasks.

Own endpoints: ``GET /metrics`` (the collector's Prometheus exposition; the engine's own is
scraped, not proxied), ``GET /healthz``, ``GET /readyz`` (engine reachable),
``GET /v1/signals`` (the latest engine signals, the body throttle receives) and
``GET /openapi.json`` (:mod:`~infermeter.collector.openapi`; another method on these paths
is a 405 with ``Allow``). Every other path goes to :class:`~infermeter.collector.proxy.Proxy`.
Background tasks: the record pipeline, the usage and GPU shippers, the engine scraper and
the NVML sampler, all started by the ASGI lifespan and stopped (records drained to the
spool) at shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp
import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from infermeter.collector.engine_scraper import EngineScraper
from infermeter.collector.engine_signals import SignalDeriver
from infermeter.collector.gpu import NvmlSampler, dcgm_exposition, load_nvml
from infermeter.collector.openapi import collector_openapi
from infermeter.collector.otel import GenAiTelemetry
from infermeter.collector.pipeline import RecordExporter, RecordPipeline
from infermeter.collector.prompt_tokens import PromptCounter
from infermeter.collector.proxy import Proxy
from infermeter.collector.proxy_wire import send_json
from infermeter.collector.request_metrics import RequestMetrics
from infermeter.collector.settings import CollectorSettings
from infermeter.kernel.asgi import BodyTooLarge, Message, Receive, Scope, Send, read_body
from infermeter.kernel.dependency_auth import DependencyAuth
from infermeter.kernel.metering_client import MeteringClient
from infermeter.kernel.metering_wire import GPU_SAMPLES_PATH, USAGE_PATH
from infermeter.kernel.openapi import allowed_methods, document_bytes, method_not_allowed
from infermeter.kernel.spool import Spool
from infermeter.kernel.spool_shipper import Shipper, ShipperMetrics
from infermeter.kernel.supervision import supervised
from infermeter.kernel.tenancy import TenantResolver

log = logging.getLogger(__name__)
MAX_GET_BODY = 64 * 1024  # a GET of our own routes carries no body worth reading
# The collector's own routes (GET and HEAD only); every other path is the engine's.
OWN_PATHS = frozenset({"/metrics", "/healthz", "/readyz", "/v1/signals", "/openapi.json"})
_NO_NVML = object()


def _depth(spool: Spool) -> float:
    return float(spool.depth_bytes)


def _pending(spool: Spool) -> float:
    return float(spool.pending)


class _Hooks:
    def __init__(self, metrics: RequestMetrics) -> None:
        self.untrusted_tenant = metrics.untrusted_tenant.inc
        self.client_request_id = metrics.client_request_ids.inc
        self._errors = {
            k: metrics.upstream_errors.labels(k) for k in ("connect", "timeout", "midstream")
        }

    def upstream_error(self, kind: str) -> None:
        self._errors[kind].inc()


class CollectorApp:
    """The collector service as one ASGI application."""

    def __init__(
        self,
        settings: CollectorSettings,
        resolver: TenantResolver | None = None,
        *,
        registry: CollectorRegistry | None = None,
        nvml: ModuleType | object | None = _NO_NVML,
        telemetry: GenAiTelemetry | object | None = _NO_NVML,
        environ: Mapping[str, str] | None = None,
        exporters: Sequence[RecordExporter] = (),
        wall: Callable[[], float] = time.time,
        mono: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.settings = s = settings
        self._wall, self._mono = wall, mono  # the clocks request records are timed with
        self.extra_exporters = list(exporters)
        self.resolver = resolver or TenantResolver()
        self.registry = registry or CollectorRegistry()
        self.metrics = RequestMetrics(
            self.registry, s.tenant_label_limit, model_limit=s.model_label_limit
        )
        self.replica = s.replica_name()
        self.openapi = collector_openapi(s.metered_paths, s.max_tags_bytes)
        self.openapi_bytes = document_bytes(self.openapi)
        env = os.environ if environ is None else environ
        if telemetry is _NO_NVML:
            telemetry = GenAiTelemetry.from_environment(env)
        self.telemetry: GenAiTelemetry | None = telemetry  # type: ignore[assignment]
        self.shipper_metrics = ShipperMetrics(self.registry, "collector")
        self.dependency_auth = DependencyAuth("collector", self.registry, log)
        self.task_restarts = Counter(
            "infermeter_collector_task_restarts",
            "Background tasks restarted after a failure (records, scraper, shippers, nvml)",
            ["task"],
            registry=self.registry,
        )
        self.usage_spool: Spool | None = None
        self.gpu_spool: Spool | None = None
        near_full = Gauge(
            "infermeter_collector_spool_near_full",
            "1 when a spool passed its warning fraction (metering unreachable for long)",
            ["kind"],
            registry=self.registry,
        )
        if s.metering_url:
            root = Path(s.spool_dir)
            self.usage_spool = self._spool(root / "usage", near_full.labels("usage"))
            self.gpu_spool = self._spool(root / "gpu-samples", near_full.labels("gpu_samples"))
            self._spool_gauges()
        self.sampler = NvmlSampler(
            load_nvml() if nvml is _NO_NVML else nvml,  # type: ignore[arg-type]
            node=s.node,
            replica=self.replica,
            engine_pid=s.engine_pid,
        )
        self.registry.register(self.sampler)
        self.scraper: EngineScraper | None = None
        self.pipeline: RecordPipeline | None = None
        self.proxy: Proxy | None = None
        self.usage_shipper: Shipper | None = None
        self.gpu_shipper: Shipper | None = None
        self._sessions: list[aiohttp.ClientSession] = []
        self._tasks: list[asyncio.Task[Any]] = []

    def _spool(self, path: Path, near: Any) -> Spool:
        s = self.settings
        return Spool(
            path,
            max_bytes=s.spool_max_bytes,
            segment_bytes=s.spool_segment_bytes,
            warn_fraction=s.spool_warn_fraction,
            on_near_full=lambda depth, cap: near.set(1),
            owner="collector",
        )

    def _spool_gauges(self) -> None:
        depth = Gauge(
            "infermeter_collector_spool_bytes",
            "Bytes in the on-disk spool not yet acknowledged by metering",
            ["kind"],
            registry=self.registry,
        )
        records = Gauge(
            "infermeter_collector_spool_records",
            "Payloads in the on-disk spool not yet acknowledged by metering",
            ["kind"],
            registry=self.registry,
        )
        cap = Gauge(
            "infermeter_collector_spool_capacity_bytes",
            "Size limit of the on-disk spool",
            ["kind"],
            registry=self.registry,
        )
        for kind, spool in (("usage", self.usage_spool), ("gpu_samples", self.gpu_spool)):
            assert spool is not None
            depth.labels(kind).set_function(functools.partial(_depth, spool))
            records.labels(kind).set_function(functools.partial(_pending, spool))
            cap.labels(kind).set(spool.max_bytes)

    # -- lifecycle ---------------------------------------------------------------------------

    async def startup(self) -> None:
        s = self.settings
        proxy_session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=s.upstream_connections, force_close=False),
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=s.connect_timeout_s, sock_read=s.read_timeout_s
            ),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
        )
        bg_session = aiohttp.ClientSession(auto_decompress=True)
        self._sessions = [proxy_session, bg_session]
        exporters: list[RecordExporter] = [self.telemetry] if self.telemetry else []
        exporters.extend(self.extra_exporters)
        if s.metering_url:
            assert self.usage_spool is not None and self.gpu_spool is not None
            common: dict[str, Any] = {
                "batch_size": s.batch_size,
                "batch_interval_s": s.batch_interval_s,
                "retry_initial_s": s.retry_initial_s,
                "retry_max_s": s.retry_max_s,
                "timeout_s": s.ship_timeout_s,
            }
            client = MeteringClient(
                s.metering_url,
                s.ingest_token,
                session=bg_session,
                timeout_s=s.ship_timeout_s,
                attempts=1,
            )
            common["auth"] = self.dependency_auth
            common["token_setting"] = "[collector] ingest_token"
            self.usage_shipper = Shipper(
                self.usage_spool, client, USAGE_PATH, "usage", self.shipper_metrics, **common
            )
            self.gpu_shipper = Shipper(
                self.gpu_spool, client, GPU_SAMPLES_PATH, "gpu_samples", self.shipper_metrics,
                **common,
            )  # fmt: skip
        self.pipeline = RecordPipeline(
            self.metrics,
            pool=s.pool,
            replica=self.replica,
            maxsize=s.record_queue_size,
            spool=self.usage_spool,
            shipper=self.usage_shipper,
            exporters=exporters,
            durable_ack=s.durable_ack,
            prompt_counter=PromptCounter(bg_session, s.upstream),
        )
        self.proxy = Proxy(
            proxy_session,
            s.upstream,
            self.resolver,
            self.pipeline,
            _Hooks(self.metrics),
            metered_paths=s.metered_paths,
            force_usage=s.force_usage,
            overhead_header=s.overhead_header,
            max_tags_bytes=s.max_tags_bytes,
            max_body_bytes=s.max_body_bytes,
            wall=self._wall,
            mono=self._mono,
        )
        self.scraper = EngineScraper(
            bg_session,
            s.upstream.rstrip("/") + s.engine_metrics_path,
            SignalDeriver(s.pool, self.replica),
            interval_s=s.scrape_interval_s,
            throttle_url=s.throttle_url,
            throttle_token=s.throttle_token,
            auth=self.dependency_auth,
            metered_totals=lambda: self.metrics.totals,
        )
        self.registry.register(self.scraper)
        if s.nvml:
            self.sampler.start()
        loops: dict[str, Callable[[], Awaitable[None]]] = {
            "records": self.pipeline.run,
            "scraper": self.scraper.run,
        }
        for shipper in (self.usage_shipper, self.gpu_shipper):
            if shipper is not None:
                loops[shipper.kind] = shipper.run
        if self.sampler.up:
            loops["nvml"] = self._gpu_loop
        restart = self.task_restarts.labels
        self._tasks = [
            asyncio.create_task(
                supervised(name, loop, on_restart=lambda n: restart(n).inc(), log=log), name=name
            )
            for name, loop in loops.items()
        ]

    async def _gpu_loop(self) -> None:
        while True:
            samples = await asyncio.to_thread(self.sampler.sample)
            if samples and self.gpu_spool is not None and self.gpu_shipper is not None:
                lines = [orjson.dumps(x.to_json()) for x in samples]
                try:
                    await asyncio.to_thread(self.gpu_spool.append, lines)
                    self.gpu_shipper.notify()
                except Exception as exc:
                    self.metrics.records_dropped.labels("gpu_spool_full").inc(len(lines))
                    log.error("GPU samples not kept: %s", exc)
            await asyncio.sleep(self.settings.gpu_interval_s)

    async def shutdown(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.pipeline is not None:
            await self.pipeline.drain()
        for shipper in (self.usage_shipper, self.gpu_shipper):
            if shipper is not None and shipper.spool.pending:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(shipper.drain(), 2.0)
        for spool in (self.usage_spool, self.gpu_spool):
            if spool is not None:
                spool.close()
        if self.telemetry is not None:
            await asyncio.to_thread(self.telemetry.shutdown)
        for session in self._sessions:
            await session.close()

    # -- ASGI --------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(receive, send)
            return
        if kind == "http" and scope["path"] in OWN_PATHS:
            path = scope["path"]
            allow = allowed_methods(self.openapi, path) or ()
            if scope["method"] not in allow:
                await method_not_allowed(send, allow)
                return
            if path == "/metrics":
                await self._metrics(send)
                return
            try:
                await read_body(receive, MAX_GET_BODY)
            except (ConnectionResetError, BodyTooLarge):
                return
            await self._own(path, send)
            return
        assert self.proxy is not None, "lifespan startup did not run"
        await self.proxy(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message: Message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    log.exception("collector startup failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _metrics(self, send: Send) -> None:
        body = dcgm_exposition(await asyncio.to_thread(generate_latest, self.registry))
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", CONTENT_TYPE_LATEST.encode())]})  # fmt: skip
        await send({"type": "http.response.body", "body": body, "more_body": False})

    async def _own(self, path: str, send: Send) -> None:
        if path == "/openapi.json":
            await send_json(send, 200, self.openapi_bytes)
            return
        if path == "/healthz":
            await send_json(send, 200, b'{"status":"ok"}')
            return
        if path == "/v1/signals":
            signals = self.scraper.latest_json() if self.scraper else []
            await send_json(send, 200, orjson.dumps(signals))
            return
        problems: dict[str, str] = {}
        assert self.proxy is not None
        try:
            async with self.proxy.session.get(
                self.settings.upstream.rstrip("/") + "/health",
                timeout=aiohttp.ClientTimeout(total=2),
            ) as resp:
                if resp.status != 200:
                    problems["upstream"] = f"HTTP {resp.status}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            problems["upstream"] = f"unreachable: {type(exc).__name__}"
        problems.update(self.dependency_auth.problems())
        spool_error = self.pipeline.spool_error if self.pipeline is not None else ""
        if self.usage_shipper is not None and self.usage_shipper.ack_error:
            spool_error = spool_error or self.usage_shipper.ack_error
        if spool_error:
            held = self.pipeline.held if self.pipeline is not None else 0
            problems["spool"] = f"{spool_error} ({held} records held in memory)"
        body: dict[str, Any] = {"status": "ready" if not problems else "not ready"}
        if problems:
            body["problems"] = problems
        if self.usage_shipper is not None:
            # metering being down does not stop the proxy (records spool): informational only
            body["metering"] = self.usage_shipper.last_error or "ok"
            body["spool_records"] = self.usage_shipper.spool.pending
        await send_json(send, 503 if problems else 200, orjson.dumps(body))
