"""Budgets: burn rate, projection, and the webhook alert to a real loopback receiver."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI, Request

from infermeter.kernel.records import UsageRecord
from infermeter.metering.api import create_app
from infermeter.metering.service import MeteringService
from infermeter.metering.settings import BudgetSettings, MeteringSettings, ReplicaSettings
from tests.conftest import ManualClock, ServerThread, promtool_check
from tests.metering.conftest import T0


class Receiver:
    """A real HTTP webhook receiver that records what it is sent."""

    def __init__(self, status: int = 200) -> None:
        self.received: list[dict[str, Any]] = []
        self.status = status
        self.app = FastAPI()

        @self.app.post("/hook")
        async def hook(request: Request) -> Any:
            self.received.append(await request.json())
            from fastapi.responses import JSONResponse

            return JSONResponse({"ok": True}, status_code=self.status)


def busy_traffic(n: int, start_offset_min: int = 0) -> bytes:
    records = []
    for i in range(n):
        start = T0 + timedelta(minutes=start_offset_min, seconds=i * 20)
        records.append(
            UsageRecord(
                f"b-{start_offset_min}-{i}",
                "acme",
                "llama",
                start,
                start + timedelta(seconds=18),
                replica="r1",
                prompt_tokens=1000,
                completion_tokens=500,
            ).to_json()
        )
    return orjson.dumps(records)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(start=(T0 + timedelta(hours=1, minutes=5)).timestamp())


@pytest.fixture
def receiver(serve: Callable[..., ServerThread]) -> Iterator[tuple[Receiver, str]]:
    rec = Receiver()
    server = serve(rec.app)
    yield rec, f"{server.url}/hook"


def make_service(clock: ManualClock, webhook: str, daily: float) -> MeteringService:
    settings = MeteringSettings(
        storage="duckdb:///:memory:",
        replicas={"r1": ReplicaSettings(gpu="h100-sxm")},
        budgets={"acme": BudgetSettings(daily_usd=daily, monthly_usd=1000.0)},
        alert_webhook=webhook,
        allocate_every_s=0,
        allocation_lag_s=60,
    )
    return MeteringService(settings, now=clock)


def test_projected_overrun_alerts_once_via_webhook_and_gauge(
    clock: ManualClock, receiver: tuple[Receiver, str], serve: Callable[..., ServerThread]
) -> None:
    rec, hook = receiver
    service = make_service(clock, hook, daily=2.0)
    try:
        # 90% busy for the last hour on a $6.88/h GPU: ~$6/h burn, far over $2/day
        service.ingestor.usage(busy_traffic(180))
        service.tick()
        state = service.budgets.state("acme")
        daily = state["daily"]
        assert daily["spent_usd"] == pytest.approx(6.88 * 0.9, rel=0.02)
        # trailing hour 00:05-01:05 holds 55 minutes of the traffic
        assert daily["burn_usd_per_hour"] == pytest.approx(6.88 * 0.9 * 55 / 60, rel=0.02)
        expected_proj = daily["spent_usd"] + daily["burn_usd_per_hour"] * (24 - 1 - 5 / 60)
        assert daily["projected_usd"] == pytest.approx(expected_proj, rel=0.01)
        assert daily["will_exceed"] is True
        assert state["monthly"]["will_exceed"] is False
        assert len(rec.received) == 1
        alert = rec.received[0]
        assert (alert["tenant"], alert["period"], alert["type"]) == (
            "acme",
            "daily",
            "infermeter.budget.will_exceed",
        )
        service.tick()
        assert len(rec.received) == 1  # once per tenant, period and period start
        url = serve(create_app(service, start_loop=False)).url
        text = httpx.get(f"{url}/metrics").text
        assert 'infermeter_metering_budget_will_exceed{period="daily",tenant="acme"} 1.0' in text
        assert 'infermeter_metering_budget_alerts_total{result="delivered"} 1.0' in text
        assert promtool_check(text)[0] == 0
    finally:
        service.stop()


def test_within_budget_sends_nothing(clock: ManualClock, receiver: tuple[Receiver, str]) -> None:
    rec, hook = receiver
    service = make_service(clock, hook, daily=500.0)
    try:
        service.ingestor.usage(busy_traffic(30))
        service.tick()
        assert service.budgets.state("acme")["daily"]["will_exceed"] is False
        assert rec.received == []
    finally:
        service.stop()


def test_failed_delivery_is_retried(clock: ManualClock, serve: Callable[..., ServerThread]) -> None:
    rec = Receiver(status=503)
    hook = f"{serve(rec.app).url}/hook"
    service = make_service(clock, hook, daily=1.0)
    try:
        service.ingestor.usage(busy_traffic(180))
        service.tick()
        assert len(rec.received) == 1 and service.budgets.alerts_failed == 1
        rec.status = 200
        service.budgets.check()
        assert len(rec.received) == 2 and service.budgets.alerts_sent == 1
    finally:
        service.stop()
