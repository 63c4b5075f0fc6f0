"""The app factory: wires policy, storage, pricing, signals, metrics and the HTTP routes.

Nothing here decides anything; :func:`create_app` only builds a :class:`Runtime` and starts
its background loops (policy reload, storage probe, pool refresh, metering rates) in the
app's lifespan.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from infermeter.kernel.openapi import serve_built
from infermeter.kernel.tenancy import TenantResolver
from infermeter.throttle.api import build_router, install_error_handlers
from infermeter.throttle.auth import ThrottleAuth
from infermeter.throttle.decision_log import DecisionLog
from infermeter.throttle.errors import StorageError
from infermeter.throttle.gateway_http import FastPath, GatewayHandlers
from infermeter.throttle.metering_rates import MeteringRates
from infermeter.throttle.metrics import ThrottleCollector
from infermeter.throttle.openapi import build
from infermeter.throttle.policy import Policy
from infermeter.throttle.policy_source import PolicyManager
from infermeter.throttle.service import Throttle
from infermeter.throttle.settings import ThrottleSettings
from infermeter.throttle.signals import PoolMonitor, SignalLimits
from infermeter.throttle.storage import from_uri, with_failover
from infermeter.throttle.storage.base import Storage
from infermeter.throttle.storage.failover import FailoverStorage

log = logging.getLogger(__name__)


class Runtime:
    """Everything one throttle process holds."""

    def __init__(
        self,
        settings: ThrottleSettings,
        resolver: TenantResolver | None = None,
        now: Callable[[], float] = time.time,
        storage: Storage | None = None,
        policy: Policy | None = None,
    ) -> None:
        self.settings = settings
        self.now = now
        self.resolver = resolver or TenantResolver()
        base = storage if storage is not None else from_uri(settings.storage)
        self.storage = with_failover(base, now, fail_closed=settings.fail_closed)
        self.policies = PolicyManager(
            self.storage, settings.policy_file, settings.reload_interval_s
        )
        if policy is not None:
            self.policies.current = policy
        elif settings.policy_file:
            self.policies.load_file()
        self.auth = ThrottleAuth.from_settings(settings)
        limits = SignalLimits(
            max_skew_s=settings.max_signal_skew_s,
            max_pools=settings.max_pools,
            max_replicas_per_pool=settings.max_replicas_per_pool,
            evict_after_s=settings.evict_after_s,
        )
        self.monitor = PoolMonitor(self.policy, self.storage, now, limits)
        self.throttle = Throttle(self.policies.current, self.storage, now, self.monitor.pressure)
        self.throttle.recorder = DecisionLog(
            settings.decision_log_tenants, settings.decision_log_entries
        )
        self.policies.subscribe(self.throttle.set_policy)
        self.rates: MeteringRates | None = None
        if settings.metering_url:
            self.rates = MeteringRates(
                self.throttle.pricer,
                settings.metering_url,
                settings.metering_token,
                lambda: self.policy().unit,
                now,
                interval_s=settings.rates_refresh_s,
                timeout_s=settings.rates_timeout_s,
            )
        self.registry = CollectorRegistry()
        self.registry.register(
            ThrottleCollector(self.throttle, self.monitor, self.policies, self.storage, self.rates)
        )

    def policy(self) -> Policy:
        return self.policies.current

    def problems(self) -> dict[str, str]:
        """What is not reachable (empty when ready)."""
        out: dict[str, str] = {}
        if isinstance(self.storage, FailoverStorage) and self.storage.degraded:
            mode = "refusing (fail-closed)" if self.storage.fail_closed else "deciding locally"
            out["storage"] = f"{self.storage.name} unreachable, {mode}: {self.storage.last_error}"
        return out

    async def probe_loop(self) -> None:
        storage = self.storage
        while isinstance(storage, FailoverStorage):
            await asyncio.sleep(self.settings.probe_interval_s)
            await storage.probe()

    async def refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.signals_refresh_s)
            try:
                await self.monitor.refresh_all()
            except StorageError as exc:
                log.warning("pool refresh: %s", exc)

    async def evict_loop(self) -> None:
        """Forget idle tenants' state every tenth of ``tenant_idle_s`` (at most a minute)."""
        idle_s = self.settings.tenant_idle_s
        while True:
            await asyncio.sleep(min(60.0, idle_s / 10))
            try:
                await self.throttle.evict_idle(idle_s)
            except StorageError as exc:
                log.warning("tenant eviction: %s", exc)

    async def start(self) -> list[asyncio.Task[None]]:
        """Publish the startup policy and start the background loops."""
        try:
            await self.policies.publish_initial()
        except StorageError as exc:
            log.warning("could not publish the policy to storage: %s", exc)
        loops: list[Coroutine[Any, Any, None]] = [
            self.policies.run(),
            self.probe_loop(),
            self.refresh_loop(),
            self.evict_loop(),
        ]
        if self.rates is not None:
            loops.append(self.rates.run())
        return [asyncio.create_task(loop) for loop in loops]


def create_app(runtime: Runtime, background: bool = True) -> FastPath:
    """The ASGI app of one runtime: the gateway fast path in front of the FastAPI app.

    ``background=False`` leaves the loops (reload, probe, refresh, rates) to the caller.
    """
    return FastPath(
        build_api(runtime, background),
        GatewayHandlers(runtime),
        max_body_bytes=runtime.settings.max_body_bytes,
    )


def build_api(runtime: Runtime, background: bool = True) -> FastAPI:
    """The FastAPI app (every route, the OpenAPI document, the lifespan loops)."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        tasks = await runtime.start() if background else []
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await runtime.storage.close()

    app = FastAPI(
        title="infermeter throttle",
        version="1",
        description=(
            "Compute-priced admission (reserve, then settle), fair share under pressure, "
            "header-only checks for nginx/Envoy, and autoscale signals for KEDA."
        ),
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.include_router(build_router(runtime))
    serve_built(app, build)
    app.state.runtime = runtime
    return app
