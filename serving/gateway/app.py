"""Wiring: build the gateway's ASGI app from its settings.

Everything that needs the event loop (the aiohttp session, background tasks) is created at
ASGI lifespan startup and closed at shutdown: the usage spool and its shipper (queued
records written to disk, shipped for up to ``shutdown_flush_s``, the rest kept), the signal
poller, the job workers (their jobs left for redelivery) and the job backend. Tests inject
the clock, the metrics registry and the embedder (to load the model once).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
from prometheus_client import CollectorRegistry, Gauge
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from infermeter.kernel.dependency_auth import DependencyAuth
from infermeter.kernel.tenancy import TenantResolver
from infermeter.serving.gateway.api import EXCEPTION_HANDLERS, ROUTES, GatewayApi
from infermeter.serving.gateway.cache import SemanticCache
from infermeter.serving.gateway.embeddings import Embedder
from infermeter.serving.gateway.errors import GatewayError
from infermeter.serving.gateway.front import PATHS, InferenceFront, with_request_id
from infermeter.serving.gateway.jobs.memory import MemoryJobs
from infermeter.serving.gateway.jobs.model import JobBackend
from infermeter.serving.gateway.jobs.redis_streams import RedisJobs
from infermeter.serving.gateway.jobs.worker import JobRunner
from infermeter.serving.gateway.metering_client import MeteringClient
from infermeter.serving.gateway.pipeline import Pipeline
from infermeter.serving.gateway.routing import Replica, Router
from infermeter.serving.gateway.settings import GatewaySettings
from infermeter.serving.gateway.signals import SignalPoller
from infermeter.serving.gateway.throttle_client import ThrottleClient
from infermeter.serving.gateway.upstreams import Managed, SelfHosted, Upstream


def job_backend(settings: GatewaySettings) -> JobBackend:
    """The job backend named by ``[gateway.jobs] queue`` (memory:// or redis://...)."""
    uri = settings.jobs.queue
    if uri.startswith("memory:"):
        return MemoryJobs(
            retention_s=settings.jobs.retention_s, max_per_tenant=settings.max_jobs_per_tenant
        )
    if uri.startswith(("redis://", "rediss://", "unix://")):
        return RedisJobs(
            uri,
            max_per_tenant=settings.max_jobs_per_tenant,
            max_attempts=settings.jobs.max_attempts,
            claim_idle_s=settings.jobs.claim_idle_s,
            retention_s=settings.jobs.retention_s,
        )
    raise GatewayError(f"[gateway.jobs] queue: unsupported URI scheme in {uri!r}")


def default_embedder(settings: GatewaySettings, session: aiohttp.ClientSession) -> Embedder:
    """The embedder chosen by ``[gateway.cache] backend``."""
    if settings.cache.backend == "http":
        from infermeter.serving.gateway.embeddings.remote import HttpEmbedder

        return HttpEmbedder(
            session,
            settings.cache.embeddings_url,
            settings.cache.embeddings_model,
            truncate_prompt_tokens=settings.cache.embeddings_truncate_tokens,
        )
    from infermeter.serving.gateway.embeddings.local import LocalEmbedder

    return LocalEmbedder()


def _outstanding(replica: Replica) -> Callable[[], float]:
    return lambda: float(replica.outstanding)


log = logging.getLogger(__name__)


class GatewayApp:
    """The gateway as an ASGI application."""

    def __init__(
        self,
        settings: GatewaySettings,
        resolver: TenantResolver,
        *,
        shared_secret: str = "",
        registry: CollectorRegistry | None = None,
        embedder: Embedder | None = None,
        jobs: JobBackend | None = None,
        run_workers: bool = True,
        now: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.resolver = resolver
        self.registry = registry if registry is not None else CollectorRegistry()
        self.dependency_auth = DependencyAuth("gateway", self.registry, log)
        self._secret = shared_secret
        self._embedder = embedder
        self._run_workers = run_workers
        self._now = now
        self._mono = monotonic
        self.jobs = jobs if jobs is not None else job_backend(settings)
        self.routers: dict[str, Router] = {}
        self.api: GatewayApi | None = None
        self.front: InferenceFront | None = None
        self.pipeline: Pipeline | None = None
        self.runner: JobRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._poller: SignalPoller | None = None
        self.closing = asyncio.Event()
        self._starlette = Starlette(
            routes=self._routes(), lifespan=self._lifespan, exception_handlers=EXCEPTION_HANDLERS
        )

    def _routes(self) -> list[Route]:
        def bound(name: str) -> Callable[[Request], Any]:
            async def handler(request: Request) -> Response:
                assert self.api is not None, "lifespan startup did not run"
                result: Response = await getattr(self.api, name)(request)
                return result

            return handler

        return [Route(path, bound(name), methods=[method]) for path, name, method in ROUTES]

    def _pools(self, session: aiohttp.ClientSession) -> dict[str, Upstream]:
        s = self.settings
        pools: dict[str, Upstream] = {}
        for model, pool in s.models.items():
            name = pool.pool or model
            if pool.upstream == "managed":
                pools[model] = Managed(
                    name,
                    pool.base_url,
                    pool.api_key_env,
                    session,
                    connect_timeout_s=s.connect_timeout_s,
                    read_timeout_s=s.read_timeout_s,
                    upstream_model=pool.upstream_model,
                )
                continue
            router = self.routers.get(name)
            if router is None:
                replicas = [
                    Replica(
                        name=r.name or r.url.split("//", 1)[-1].rstrip("/"),
                        url=r.url.rstrip("/"),
                        signals_url=r.signals_url or r.url.rstrip("/") + "/v1/signals",
                    )
                    for r in pool.replicas
                ]
                router = Router(replicas, max_age_s=s.signal_max_age_s, now=self._mono)
                self.routers[name] = router
            pools[model] = SelfHosted(
                name,
                router,
                session,
                connect_timeout_s=s.connect_timeout_s,
                read_timeout_s=s.read_timeout_s,
                connect_retries=s.connect_retries,
                upstream_model=pool.upstream_model,
            )
        return pools

    def _gauges(self) -> None:
        outstanding = Gauge(
            "infermeter_gateway_outstanding_requests",
            "Requests in flight to each replica",
            ["pool", "replica"],
            registry=self.registry,
        )
        for pool, router in self.routers.items():
            for replica in router.replicas:
                outstanding.labels(pool, replica.name).set_function(_outstanding(replica))

    async def startup(self) -> None:
        """Create the session, the pipeline and the background tasks."""
        s = self.settings
        # Idle upstream connections are dropped well before uvicorn's 5 s keep-alive closes
        # them: a POST on a connection the server is closing cannot be safely re-sent.
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=2.0)
        session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        self._session = session
        throttle = ThrottleClient(
            session,
            s.throttle_url,
            timeout_s=s.throttle_timeout_s,
            failure_mode=s.throttle_failure_mode,
            registry=self.registry,
            auth=self.dependency_auth,
            token=s.throttle_token,
        )
        metering = MeteringClient(
            session,
            s.metering_url,
            s.metering_token,
            registry=self.registry,
            spool_dir=s.spool_dir,
            spool_max_bytes=s.spool_max_bytes,
            flush_interval_s=s.metering_flush_s,
            auth=self.dependency_auth,
        )
        cache = None
        if s.cache.enabled:
            embedder = self._embedder or default_embedder(s, session)
            cache = SemanticCache(s.cache, embedder, registry=self.registry, now=self._mono)
        pools = self._pools(session)
        self._gauges()
        self.pipeline = Pipeline(
            pools,
            throttle,
            metering,
            cache,
            shared_secret=self._secret,
            default_max_tokens=s.default_max_tokens,
            registry=self.registry,
            now=self._now,
        )
        self.api = GatewayApi(
            self.pipeline,
            self.resolver,
            self.jobs,
            registry=self.registry,
            job_deadline_s=s.jobs.deadline_s,
            readiness=self.readiness,
            readiness_details=metering.details,
            closing=self.closing,
            now=self._now,
        )
        self.front = InferenceFront(self.pipeline, self.resolver, self.registry)
        metering.start()
        replicas = [r for router in self.routers.values() for r in router.replicas]
        self._poller = SignalPoller(session, replicas, interval_s=s.signal_poll_s)
        self._poller.start()
        if self._run_workers:
            concurrency: dict[str, int] = {}
            for model, pool in s.models.items():
                name = pool.pool or model
                concurrency[name] = max(concurrency.get(name, 0), pool.job_concurrency)
            self.runner = JobRunner(
                self.jobs,
                self.pipeline,
                concurrency,
                worker_name=f"{socket.gethostname()}-{os.getpid()}",
                max_throttle_wait_s=s.jobs.max_throttle_wait_s,
                heartbeat_s=max(0.05, s.jobs.claim_idle_s / 3),
                now=self._now,
            )
            self.runner.start()

    def begin_shutdown(self) -> None:
        """The server is stopping: end open event streams (clients resume with
        ``Last-Event-ID``) so that only real requests in flight hold the stop up."""
        self.closing.set()

    async def shutdown(self) -> None:
        """Stop workers and pollers, flush usage records, close connections."""
        self.closing.set()
        if self.runner is not None:
            await self.runner.stop()
        if self._poller is not None:
            await self._poller.stop()
        if self.pipeline is not None:
            await self.pipeline.drain()
            await self.pipeline.metering.stop(self.settings.shutdown_flush_s)
        await self.jobs.close()
        if self._session is not None:
            await self._session.close()

    async def readiness(self) -> dict[str, str]:
        """What is not reachable: the throttle, metering, the job backend; a disk refusing
        the usage spool."""
        problems: dict[str, str] = {}
        assert self._session is not None
        for name, url in (("throttle", self.settings.throttle_url),
                          ("metering", self.settings.metering_url)):  # fmt: skip
            if not url:
                continue
            try:
                async with self._session.get(
                    url.rstrip("/") + "/healthz", timeout=aiohttp.ClientTimeout(total=2)
                ) as resp:
                    if resp.status != 200:
                        problems[name] = f"HTTP {resp.status}"
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                problems[name] = f"unreachable: {type(exc).__name__}"
        if self.pipeline is not None and "throttle" not in problems:
            await self.pipeline.throttle.probe_auth()
        problems.update(self.dependency_auth.problems())
        if self.pipeline is not None:
            problems.update(self.pipeline.metering.problems())
        try:
            await self.jobs.get("readiness-probe")
        except GatewayError as exc:
            problems["jobs"] = str(exc)
        return problems

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        await self.startup()
        try:
            yield
        finally:
            await self.shutdown()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self._starlette(scope, receive, send)
            return
        send = with_request_id(scope, send)
        if scope["path"] in PATHS:
            assert self.front is not None, "lifespan startup did not run"
            await self.front(scope, receive, send)
            return
        await self._starlette(scope, receive, send)
