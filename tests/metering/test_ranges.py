"""Ranges end at now: no idle or busy time after the injected clock's now is billed, the open
window is provisional until it closes, and bad ranges are 422 naming ``since`` / ``until``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest

from infermeter.kernel.price_catalog import Catalog
from infermeter.kernel.records import UsageRecord
from infermeter.metering.allocation import Allocator
from infermeter.metering.api import create_app
from infermeter.metering.service import MeteringService
from infermeter.metering.settings import MeteringSettings, ReplicaSettings
from infermeter.metering.store import Store
from tests.conftest import ManualClock, ServerThread
from tests.metering.conftest import T0, ingest

T = T0.replace(tzinfo=None)
INGEST = {"Authorization": "Bearer ingest-secret"}
REPLICAS = {"r1": ReplicaSettings(gpu="h100-sxm", pool="gpu", model="llama", since=T)}


def window_micro(catalog: Catalog) -> int:
    """What one 60 s window of the replica costs, in micro-dollars (as allocation rounds)."""
    per_s = catalog.usd_per_hour("h100-sxm") / 3600.0
    return round(per_s * 60 * catalog.overhead_multiplier * 1e6)


def record(i: int, start: datetime, seconds: float = 2.0) -> UsageRecord:
    return UsageRecord(
        f"rng-{i}",
        "acme",
        "llama",
        start,
        start + timedelta(seconds=seconds),
        replica="r1",
        prompt_tokens=300,
        completion_tokens=40,
        first_token_at=start + timedelta(milliseconds=200),
    )


def make_service(clock: ManualClock, store: Store | None = None, **kw: Any) -> MeteringService:
    settings = MeteringSettings(
        storage="duckdb:///:memory:",
        ingest_token="ingest-secret",
        replicas=REPLICAS,
        allocate_every_s=0,
        **kw,
    )
    return MeteringService(settings, store=store, now=clock)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(start=(T0 + timedelta(minutes=30)).timestamp())


@pytest.fixture
def service(clock: ManualClock) -> Iterator[MeteringService]:
    svc = make_service(clock)
    yield svc
    svc.stop()


def test_until_in_the_future_bills_only_elapsed_time(
    service: MeteringService, catalog: Catalog
) -> None:
    """A fresh store, ``until`` an hour past now: idle is the 30 elapsed minutes, exactly."""
    result = service.allocate(T, T + timedelta(minutes=90))
    assert result.range_end == T + timedelta(minutes=30)
    assert result.clamped and result.replica_windows == 30
    assert result.idle_micro == result.cost_micro == 30 * window_micro(catalog)
    body = result.to_json()
    assert body["clamped"] is True and body["provisional"] is True
    assert body["open_window_start"] == "2026-11-02T00:30:00Z"
    idle = service.reports.idle("replica", T, T + timedelta(minutes=90), "total")
    assert round(idle["totals"]["idle_usd"] * 1e6) == 30 * window_micro(catalog)
    assert idle["until"] == "2026-11-02T00:30:00.000000Z"
    # a later default run does not extend to the end of the hour
    again = service.allocate()
    assert again.range_end <= T + timedelta(minutes=30)
    assert service.reports.idle("replica", T, T + timedelta(hours=2), "total")["totals"][
        "idle_usd"
    ] == pytest.approx(30 * window_micro(catalog) / 1e6, abs=1e-9)


def test_allocated_plus_idle_is_the_bill_up_to_now(
    service: MeteringService, clock: ManualClock, catalog: Catalog
) -> None:
    clock.advance(20)  # now = 00:30:20, inside the open window 00:30-00:31
    records = [record(i, T + timedelta(minutes=1, seconds=7 * i)) for i in range(100)]
    records.append(record(100, T + timedelta(minutes=30, seconds=2)))  # in the open window
    ingest(service.ingestor, records)
    result = service.allocate(T, T + timedelta(hours=1))
    bill = 30 * window_micro(catalog)
    assert result.range_end == T + timedelta(minutes=30)
    assert result.cost_micro == bill and 0 < result.idle_micro < bill
    report = service.reports.cost("tenant", T, T + timedelta(hours=1), "total")
    totals = report["totals"]
    assert round(totals["replica_cost_usd"] * 1e6) == bill
    assert round((totals["allocated_usd"] + totals["idle_usd"]) * 1e6) == bill
    assert report["until"] == "2026-11-02T00:30:20.000000Z"
    # the request in the open window is not billed yet
    assert report["rows"][0]["requests"] == 100
    assert report["provisional"] is True
    assert report["provisional_since"] == "2026-11-02T00:30:00.000000Z"


def test_open_window_is_provisional_until_it_closes_and_the_loop_allocates_it(
    service: MeteringService, clock: ManualClock, catalog: Catalog
) -> None:
    """The background loop's step (tick) allocates up to now minus allocation_lag_s (120 s);
    the hour that contains now is provisional until a run after it closes."""
    clock.advance(20)
    ingest(service.ingestor, [record(i, T + timedelta(minutes=i)) for i in range(30)])
    service.tick()
    hour = (T, T + timedelta(hours=1))
    first = service.reports.cost("tenant", *hour, "hour")
    assert first["provisional"] is True
    assert [r["provisional"] for r in first["rows"]] == [True]
    assert first["provisional_since"] == "2026-11-02T00:28:00.000000Z"  # now - lag
    assert all(r["provisional"] for r in service.reports.idle("replica", *hour, "hour")["rows"])

    clock.advance(30 * 60)  # 01:00:20: the hour has closed, but the lag still covers it
    ingest(service.ingestor, [record(i, T + timedelta(minutes=i)) for i in range(30, 59)])
    service.tick()
    assert service.reports.cost("tenant", *hour, "hour")["provisional"] is True

    clock.advance(120)  # 01:02:20: past the lag, the next run makes the hour final
    service.tick()
    final = service.reports.cost("tenant", *hour, "hour")
    assert final["provisional"] is False and final["provisional_since"] >= iso(hour[1])
    assert [r["provisional"] for r in final["rows"]] == [False]
    assert final["rows"][0]["requests"] == 59
    idle = service.reports.idle("replica", *hour, "hour")
    assert [r["provisional"] for r in idle["rows"]] == [False]
    assert round(idle["rows"][0]["cost_usd"] * 1e6) == 60 * window_micro(catalog)
    total = final["totals"]
    assert round((total["allocated_usd"] + total["idle_usd"]) * 1e6) == 60 * window_micro(catalog)


def test_rows_an_earlier_release_billed_for_the_future_are_removed(
    store: Store, catalog: Catalog
) -> None:
    """Results written past now (by a release that did not clamp) are deleted by the first
    run that reaches the open window; the hour and day rollups are rebuilt without them."""
    late = ManualClock(start=(T0 + timedelta(hours=3)).timestamp())
    Allocator(store, catalog, replicas=REPLICAS, now=late).run(T, T + timedelta(hours=2))
    clock = ManualClock(start=(T0 + timedelta(minutes=30)).timestamp())
    svc = make_service(clock, store=store)
    result = svc.allocate(T, T + timedelta(minutes=30))
    assert result.range_end == T + timedelta(minutes=30)
    cur = store.cursor()
    try:
        row = cur.execute("SELECT count(*), max(window_start) FROM replica_window").fetchone()
    finally:
        cur.close()
    assert row == (30, T + timedelta(minutes=29))
    clock.advance(3 * 3600)  # look back from later: nothing past 00:30 is billed
    idle = svc.reports.idle("replica", T, T + timedelta(hours=3), "day")
    assert round(idle["totals"]["cost_usd"] * 1e6) == 30 * window_micro(catalog)


def iso(value: datetime) -> str:
    return value.isoformat(timespec="microseconds") + "Z"


@pytest.fixture
def url(service: MeteringService, serve: Callable[..., ServerThread]) -> str:
    return serve(create_app(service)).url


@pytest.mark.parametrize(
    ("path", "params", "param"),
    [
        ("/v1/reports/cost", {"since": "whenever"}, "since"),
        ("/v1/reports/cost", {"until": "2026-13-45"}, "until"),
        ("/v1/reports/cost", {"since": "2026-11-02T01:00:00Z", "until": "2026-11-02"}, "until"),
        ("/v1/reports/idle", {"since": "99999999999999d"}, "since"),
        ("/v1/reports/idle", {"since": "1h", "until": "2h"}, "until"),
        ("/v1/reports/latency", {"until": "soon"}, "until"),
        ("/v1/reports/buy-vs-build", {"since": "now", "until": "now"}, "until"),
        ("/v1/export/focus", {"since": "yesterday-ish"}, "since"),
    ],
)
def test_bad_ranges_are_422_naming_the_field(
    url: str, path: str, params: dict[str, str], param: str
) -> None:
    r = httpx.get(f"{url}{path}", params=params, headers=INGEST)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["param"] == param and error["code"] == 422
    assert error["type"] == "invalid_request_error" and param in error["message"]


def test_allocate_over_http_clamps_and_refuses_inverted_ranges(url: str) -> None:
    r = httpx.post(
        f"{url}/v1/admin/allocate",
        params={"since": "2026-11-02T00:00:00Z", "until": "2026-11-02T01:30:00Z"},
        headers=INGEST,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["range_end"] == "2026-11-02T00:30:00Z" and body["clamped"] is True
    r = httpx.post(
        f"{url}/v1/admin/allocate",
        params={"since": "2026-11-02T01:00:00Z", "until": "2026-11-02T00:00:00Z"},
        headers=INGEST,
    )
    assert r.status_code == 422 and r.json()["error"]["param"] == "until"
    r = httpx.post(f"{url}/v1/admin/allocate", params={"until": "x"}, headers=INGEST)
    assert r.status_code == 422 and r.json()["error"]["param"] == "until"
    # a range of 1,900 years was a window row per replica per minute: 24 GB, then killed
    r = httpx.post(f"{url}/v1/admin/allocate", params={"since": "100000w"}, headers=INGEST)
    assert r.status_code == 422 and r.json()["error"]["param"] == "since", r.text
    assert "max_allocate_days" in r.json()["error"]["message"]
    report = httpx.get(
        f"{url}/v1/reports/cost",
        params={"since": "2026-11-02", "until": "2026-11-03"},
        headers=INGEST,
    ).json()
    assert report["until"] == "2026-11-02T00:30:00.000000Z" and report["provisional"] is True
    assert report["provisional_since"] == "2026-11-02T00:30:00.000000Z"
