"""The HTTP API over a real uvicorn server on loopback."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import httpx
import orjson
import pytest

from infermeter.kernel.records import UsageRecord
from infermeter.metering.api import create_app
from infermeter.metering.service import MeteringService
from infermeter.metering.settings import BudgetSettings, MeteringSettings, ReplicaSettings
from tests.conftest import ManualClock, ServerThread, promtool_check
from tests.metering.conftest import T0

INGEST = {"Authorization": "Bearer ingest-secret"}
READ = {"Authorization": "Bearer read-secret"}


def usage(i: int, tenant: str = "acme", **kw: Any) -> dict[str, Any]:
    start = T0 + timedelta(minutes=1, seconds=i * 3)
    fields: dict[str, Any] = {
        "replica": "r1",
        "prompt_tokens": 400,
        "completion_tokens": 60,
        "first_token_at": start + timedelta(milliseconds=300),
        "tags": {"feature": "chat"},
    }
    fields.update(kw)
    return UsageRecord(
        f"api-{i}", tenant, "llama", start, start + timedelta(seconds=2), **fields
    ).to_json()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(start=(T0 + timedelta(hours=2)).timestamp())


@pytest.fixture
def service(clock: ManualClock) -> Iterator[MeteringService]:
    settings = MeteringSettings(
        storage="duckdb:///:memory:",
        ingest_token="ingest-secret",
        read_token="read-secret",
        replicas={"r1": ReplicaSettings(gpu="h100-sxm", pool="gpu", model="llama")},
        budgets={"acme": BudgetSettings(daily_usd=0.5)},
        allocate_every_s=0,
    )
    svc = MeteringService(settings, now=clock)
    yield svc
    svc.stop()


@pytest.fixture
def url(service: MeteringService, serve: Callable[..., ServerThread]) -> str:
    return serve(create_app(service)).url


def test_ingest_requires_the_ingest_token(url: str) -> None:
    body = orjson.dumps([usage(0)])
    assert httpx.post(f"{url}/v1/usage", content=body).status_code == 401
    r = httpx.post(f"{url}/v1/usage", content=body, headers=READ)
    assert r.status_code == 401 and r.json()["error"]["type"] == "unauthorized"
    assert httpx.post(f"{url}/v1/usage", content=body, headers=INGEST).status_code == 200
    assert httpx.get(f"{url}/v1/rates").status_code == 401
    assert httpx.get(f"{url}/v1/rates", headers=READ).status_code == 200
    assert httpx.get(f"{url}/v1/rates", headers=INGEST).status_code == 200


def test_batch_response_and_idempotency_over_http(url: str) -> None:
    records = [usage(i) for i in range(5)]
    records[2]["completion_tokens"] = "many"
    r = httpx.post(f"{url}/v1/usage", content=orjson.dumps(records), headers=INGEST)
    assert r.status_code == 200
    assert r.json() == {
        "accepted": 4,
        "duplicates": 0,
        "conflicts": 0,
        "rejected": [{"index": 2, "field": "completion_tokens", "error": "must be an integer"}],
    }
    again = httpx.post(f"{url}/v1/usage", content=orjson.dumps(records), headers=INGEST).json()
    assert (again["accepted"], again["duplicates"], again["conflicts"]) == (0, 4, 0)


def test_a_reused_id_with_other_content_is_a_conflict_not_a_silent_drop(
    url: str, service: MeteringService
) -> None:
    first = [usage(i) for i in range(3)]
    assert httpx.post(f"{url}/v1/usage", json=first, headers=INGEST).json()["accepted"] == 3
    reused = [usage(0, tenant="mallory"), usage(1), usage(2, completion_tokens=999)]
    reply = httpx.post(f"{url}/v1/usage", json=reused, headers=INGEST).json()
    assert (reply["accepted"], reply["duplicates"], reply["conflicts"]) == (0, 3, 2)
    letters = (
        service.store.cursor()
        .execute("SELECT field, error, payload FROM dead_letter ORDER BY id")
        .fetchall()
    )
    assert len(letters) == 2 and all(f == "request_id" for f, _, _ in letters)
    assert "conflict" in letters[0][1] and "mallory" in letters[0][2]
    # in one batch: the same id twice for two different requests
    batch = [usage(10), usage(10, completion_tokens=7), usage(11), usage(11)]
    reply = httpx.post(f"{url}/v1/usage", json=batch, headers=INGEST).json()
    assert (reply["accepted"], reply["duplicates"], reply["conflicts"]) == (2, 2, 1)
    metrics = httpx.get(f"{url}/metrics", headers=READ).text
    assert 'infermeter_metering_records_conflict_total{kind="usage"} 3.0' in metrics


def test_unreadable_body_is_400_naming_the_field(url: str) -> None:
    r = httpx.post(f"{url}/v1/usage", content=b"{oops", headers=INGEST)
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "body" and r.json()["error"]["code"] == 400
    r = httpx.get(f"{url}/v1/reports/cost", params={"by": "colour"}, headers=READ)
    assert r.status_code == 400 and r.json()["error"]["param"] == "by"
    # a bad time range is 422 (tests/metering/test_ranges.py)
    r = httpx.get(f"{url}/v1/reports/cost", params={"since": "whenever"}, headers=READ)
    assert r.status_code == 422 and r.json()["error"]["param"] == "since"


def test_reports_after_allocation(url: str) -> None:
    records = [usage(i, tenant="acme" if i % 2 else "globex") for i in range(40)]
    records.append(usage(99, status="cache_hit", replica=""))
    assert (
        httpx.post(f"{url}/v1/usage", content=orjson.dumps(records), headers=INGEST).json()[
            "accepted"
        ]
        == 41
    )
    samples = [
        {
            "ts": (T0 + timedelta(minutes=m)).isoformat(),
            "node": "n1",
            "gpu_uuid": "GPU-1",
            "gpu_model": "NVIDIA H100 80GB HBM3",
            "replica": "r1",
            "util_pct": 70.0,
            "energy_j": m * 24000.0,
            "power_w": 400.0,
        }
        for m in range(60)
    ]
    assert (
        httpx.post(f"{url}/v1/gpu-samples", content=orjson.dumps(samples), headers=INGEST).json()[
            "accepted"
        ]
        == 60
    )
    alloc = httpx.post(
        f"{url}/v1/admin/allocate",
        headers=INGEST,
        params={"since": T0.isoformat(), "until": (T0 + timedelta(hours=1)).isoformat()},
    )
    assert alloc.status_code == 200, alloc.text
    summary = alloc.json()
    assert summary["replica_windows"] == 60 and summary["cost_usd"] == pytest.approx(6.88, abs=0.01)
    window = {"since": T0.isoformat(), "until": (T0 + timedelta(hours=1)).isoformat()}

    cost = httpx.get(
        f"{url}/v1/reports/cost",
        params={**window, "by": "tenant", "granularity": "hour"},
        headers=READ,
    ).json()
    tenants = {r["tenant"]: r for r in cost["rows"]}
    assert set(tenants) == {"acme", "globex"}
    assert tenants["acme"]["requests"] == 20 and tenants["acme"]["usd_per_mtok"] > 0
    totals = cost["totals"]
    assert totals["allocated_usd"] + totals["idle_usd"] == pytest.approx(
        totals["replica_cost_usd"], abs=1e-5
    )

    one = httpx.get(f"{url}/v1/requests/api-3", headers=READ).json()
    assert one["allocated"] and one["cost_usd"] > 0 and one["record"]["tenant"] == "acme"
    assert httpx.get(f"{url}/v1/requests/nope", headers=READ).status_code == 404

    idle = httpx.get(f"{url}/v1/reports/idle", params={**window, "by": "pool"}, headers=READ).json()
    assert idle["rows"][0]["pool"] == "gpu" and idle["totals"]["idle_usd"] > 6.0

    bvb = httpx.get(f"{url}/v1/reports/buy-vs-build", params=window, headers=READ).json()
    assert {r["tenant"] for r in bvb["rows"]} == {"acme", "globex"}
    assert "openai/gpt-4o" in bvb["rows"][0]["managed_usd"]

    lat = httpx.get(
        f"{url}/v1/reports/latency", params={**window, "granularity": "hour"}, headers=READ
    ).json()
    assert lat["rows"][0]["requests"] == 40 and lat["rows"][0]["ttft_s"]["p50"] == pytest.approx(
        0.3
    )

    gpu = httpx.get(
        f"{url}/v1/reports/gpu", params={**window, "granularity": "hour"}, headers=READ
    ).json()
    assert gpu["rows"][0]["samples"] == 60 and gpu["rows"][0]["util_pct"] == pytest.approx(70.0)

    rates = httpx.get(f"{url}/v1/rates", headers=READ).json()
    assert rates["models"]["llama"]["usd_per_gpu_second"] == pytest.approx(6.88 / 3600, rel=1e-3)
    assert rates["models"]["llama"]["usd_per_completion_token"] > 0

    saved = httpx.get(f"{url}/v1/reports/cache-savings", params=window, headers=READ).json()
    assert saved["rows"][0]["hits"] == 1 and saved["total_saved_usd"] > 0

    calib = httpx.get(f"{url}/v1/calibration", headers=READ).json()
    assert calib["latest"][0]["model"] == "llama"

    budget = httpx.get(f"{url}/v1/budgets/acme", headers=READ).json()
    assert budget["tenant"] == "acme" and budget["daily"]["limit_usd"] == 0.5
    assert budget["monthly"]["limit_usd"] is None

    focus = httpx.get(f"{url}/v1/export/focus", params={**window, "format": "csv"}, headers=READ)
    assert focus.status_code == 200 and focus.text.startswith('"AvailabilityZone"')


def test_metrics_are_promtool_clean_and_count_ingest(url: str) -> None:
    bad = [usage(1), {"request_id": "x"}]
    httpx.post(f"{url}/v1/usage", content=orjson.dumps(bad), headers=INGEST)
    text = httpx.get(f"{url}/metrics").text
    assert 'infermeter_metering_records_received_total{kind="usage"} 2.0' in text
    assert 'infermeter_metering_records_dead_lettered_total{kind="usage"} 1.0' in text
    assert "infermeter_metering_db_size_bytes" in text
    code, findings = promtool_check(text)
    assert code == 0, findings


def test_healthz_and_readyz(url: str) -> None:
    assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{url}/readyz").json()["status"] == "ready"


def test_background_tick_allocates_history_after_start(clock: ManualClock) -> None:
    settings = MeteringSettings(
        storage="duckdb:///:memory:",
        replicas={"r1": ReplicaSettings(gpu="l4")},
        allocate_every_s=0,
        reallocate_s=600,
    )
    svc = MeteringService(settings, now=clock)
    try:
        # records from two hours before "now", older than reallocate_s
        svc.ingestor.usage(orjson.dumps([usage(i) for i in range(5)]))
        svc.tick()
        cur = svc.store.connection
        assert cur.execute("SELECT sum(requests) FROM cost_hourly").fetchone() == (5,)
        assert all(svc.reports.request(usage(i)["request_id"])["allocated"] for i in range(5))
        assert svc.allocation_state.runs == 1
    finally:
        svc.stop()


def test_oversized_body_is_413(clock: ManualClock, serve: Callable[..., ServerThread]) -> None:
    settings = MeteringSettings(
        storage="duckdb:///:memory:", max_body_bytes=2048, allocate_every_s=0
    )
    svc = MeteringService(settings, now=clock)
    try:
        url = serve(create_app(svc)).url
        r = httpx.post(f"{url}/v1/usage", content=orjson.dumps([usage(i) for i in range(20)]))
        assert r.status_code == 413 and r.json()["error"]["param"] == "body"
    finally:
        svc.stop()


def test_a_non_ascii_or_malformed_token_is_401_never_500(url: str) -> None:
    for raw in ("Bearer çà-token".encode(), b"Bearer \xff\xfe", b"Basic abc", b"Bearer"):
        r = httpx.get(f"{url}/v1/rates", headers={"authorization": raw})
        assert r.status_code == 401, (raw, r.text)
        assert r.json()["error"]["type"] == "unauthorized"


def test_admin_has_its_own_scope(clock: ManualClock, serve: Callable[..., ServerThread]) -> None:
    settings = MeteringSettings(
        storage="duckdb:///:memory:",
        ingest_token="ingest-secret",
        read_token="read-secret",
        admin_token="admin-secret",
        allocate_every_s=0,
    )
    svc = MeteringService(settings, now=clock)
    try:
        base = serve(create_app(svc)).url
        for headers in ({}, INGEST, READ):
            r = httpx.post(f"{base}/v1/admin/check-budgets", headers=headers)
            assert r.status_code == 401 and "admin" in r.json()["error"]["message"]
        ok = httpx.post(
            f"{base}/v1/admin/check-budgets", headers={"Authorization": "Bearer admin-secret"}
        )
        assert ok.status_code == 200, ok.text
    finally:
        svc.stop()
