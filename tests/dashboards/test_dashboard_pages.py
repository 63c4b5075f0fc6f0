"""Every page under Streamlit's AppTest against the REAL metering and throttle services
(seeded through their APIs): no exception, and the numbers shown are those the services
compute. Also: services down, and an empty store, give clear messages, never a traceback."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from streamlit.testing.v1 import AppTest

from infermeter.dashboards import ui
from infermeter.metering.api import create_app as metering_app
from infermeter.metering.service import MeteringService
from infermeter.metering.settings import MeteringSettings
from tests.conftest import free_port
from tests.dashboards.dashboard_helpers import INGEST, READ, THROTTLE_API, Stack

APP = str(Path(__file__).resolve().parents[2] / "dashboards" / "app.py")
PAGES = (
    "views/fleet.py",
    "views/costs.py",
    "views/tenants.py",
    "views/capacity.py",
    "views/lookup.py",
)


def metering_get(stack: Stack, path: str, **params: str) -> Any:
    res = httpx.get(
        f"{stack.metering_url}{path}",
        params={"since": "24h", **params},
        headers={"Authorization": f"Bearer {READ}"},
        timeout=10,
    )
    assert res.status_code == 200, res.text
    return res.json()


def page(name: str, errors_expected: bool = False) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=30)
    at.run()
    if name != PAGES[0]:
        at.switch_page(name).run()
    assert not at.exception, [e.value for e in at.exception]
    if not errors_expected:
        assert not at.error, [e.value for e in at.error]
    return at


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def frames_with(at: AppTest, column: str) -> list[Any]:
    return [d.value for d in at.dataframe if column in d.value.columns]


def test_fleet_shows_metered_throughput_latency_and_gpus(dashboard_env: Stack) -> None:
    at = page(PAGES[0])
    rows = metering_get(dashboard_env, "/v1/reports/latency", granularity="hour")["rows"]
    shown = metrics(at)
    assert shown["Requests"] == f"{sum(r['requests'] for r in rows):,}"
    worst = max(r["ttft_s"]["p95"] for r in rows)
    assert shown["Worst TTFT p95"] == f"{worst * 1000:,.0f} ms"
    gpu = frames_with(at, "util_pct_mean")[0]
    assert set(gpu["device"]) == {"GPU-0000", "GPU-1111/MIG-aaaa"}
    assert set(gpu["mig_profile"]) == {"", "3g.40gb"}
    pools = frames_with(at, "pool")
    assert pools and set(pools[0]["pool"]) == {"chat"}
    engine = frames_with(at, "num_requests_waiting")[0]
    assert engine["num_requests_waiting"].iloc[0] == pytest.approx(10.5)  # mean of 10 and 11
    per = metering_get(dashboard_env, "/v1/reports/latency", granularity="hour", by="replica")
    shown_per = next(f for f in frames_with(at, "ttft_p95_s") if "replica" in f.columns)
    assert set(shown_per["replica"]) == {r["replica"] for r in per["rows"]}
    assert len(set(shown_per["replica"])) > 1
    assert not at.error and not at.warning


def test_costs_match_metering(dashboard_env: Stack) -> None:
    at = page(PAGES[1])
    cost = metering_get(dashboard_env, "/v1/reports/cost", by="tenant", granularity="day")
    totals = cost["totals"]
    shown = metrics(at)
    assert shown["GPU cost (replicas)"] == ui.usd(totals["replica_cost_usd"])
    assert shown["Allocated to requests"] == ui.usd(totals["allocated_usd"])
    assert shown["Idle"] == ui.usd(totals["idle_usd"])
    assert totals["replica_cost_usd"] > 0 and totals["idle_usd"] > 0
    tokens = sum(r["prompt_tokens"] + r["completion_tokens"] for r in cost["rows"])
    usd = sum(r["total_usd"] for r in cost["rows"])
    assert shown["Effective $ / M tokens"] == ui.usd(usd * 1e6 / tokens, 4)
    saved = metering_get(dashboard_env, "/v1/reports/cache-savings")["total_saved_usd"]
    assert saved > 0 and shown["Cache savings"] == ui.usd(saved)
    by_feature = frames_with(at, "feature")[0]
    assert set(by_feature["feature"]) == {"chat", "search", "summarize"}
    idle = frames_with(at, "idle_fraction")[0].set_index("replica")
    assert idle.loc["chat-0", "utilization"] < idle.loc["chat-1", "utilization"]
    bvb = frames_with(at, "self_hosted_usd")[0]
    assert "cheapest_managed" in bvb.columns and bvb["requests"].sum() > 0
    assert len(at.get("download_button")) == len(at.dataframe)


def throttle_get(stack: Stack, path: str, **params: str) -> Any:
    res = httpx.get(
        f"{stack.throttle_url}{path}",
        params=params,
        headers={"Authorization": f"Bearer {THROTTLE_API}"},
        timeout=10,
    )
    assert res.status_code == 200, res.text
    return res.json()


def test_tenants_show_budgets_throttle_decisions_and_fair_share(dashboard_env: Stack) -> None:
    at = page(PAGES[2])
    shown = metrics(at)
    listed = throttle_get(dashboard_env, "/v1/tenants")["tenants"]
    spend = metering_get(dashboard_env, "/v1/reports/cost", by="tenant", granularity="total")
    metering_names = {r["tenant"] for r in spend["rows"]}
    names = metering_names | {t["tenant"] for t in listed}
    assert shown["Tenants"] == f"{len(names)}" and len(names) == 3
    acme = metering_get(dashboard_env, "/v1/budgets/acme")["daily"]
    assert acme["will_exceed"]
    overrun = acme["projected_usd"] - acme["limit_usd"]
    shown_overrun = [
        float(m.group(1).replace(",", ""))
        for w in at.warning
        if (m := re.search(r"acme is projected to exceed its budget by \$([\d,.]+)", w.value))
    ]
    # the projection moves with the clock between the page's call and ours: cents apart at most
    assert shown_overrun and shown_overrun[0] == pytest.approx(overrun, abs=0.02)
    table = frames_with(at, "projected_overrun_usd")[0].set_index("tenant")
    assert table.loc["acme", "tier"] == "pro" and table.loc["globex", "tier"] == "free"
    assert table.loc["acme", "daily_limit_usd"] == 0.05
    assert table.loc["acme", "known_to"] == "metering + throttle"  # acme is in the policy
    assert any("Fair-share mode" in w.value and "chat" in w.value for w in at.warning)

    # decisions over time: what throttle's decision log holds for the range, by reason
    since = at.caption[0].value.split(" → ")[0]
    answers = {
        t["tenant"]: throttle_get(
            dashboard_env,
            f"/v1/tenants/{t['tenant']}/decisions",
            since=f"{since}:00Z".replace(" ", "T"),
        )
        for t in listed
        if t["recent"]
    }
    counts = frames_with(at, "denied_share")[0].set_index("tenant")
    for tenant, answer in answers.items():
        expected = answer["counts"]
        assert counts.loc[tenant, "allowed"] == expected.get("allow", 0), tenant
        assert counts.loc[tenant, "decisions"] == sum(expected.values()), tenant
        for reason, n in expected.items():
            if reason != "allow":
                assert counts.loc[tenant, f"deny: {reason}"] == n, (tenant, reason)
    assert counts.loc["globex", "denied"] > 0 and counts.loc["acme", "denied"] == 0
    total = sum(len(a["decisions"]) for a in answers.values())
    assert shown["Decisions in range"] == f"{total:,}"
    log = frames_with(at, "outcome")[0]
    assert len(log) == total and log["ts"].nunique() > 12  # spread over the seeded hours
    at.selectbox(key="decisions-tenant").set_value("globex").run()
    assert not at.exception
    log = frames_with(at, "outcome")[0]
    assert set(log["tenant"]) == {"globex"} and len(log) == len(answers["globex"]["decisions"])

    scrape = httpx.get(f"{dashboard_env.throttle_url}/metrics").text
    denied = sum(
        float(line.rsplit(" ", 1)[1])
        for line in scrape.splitlines()
        if line.startswith('infermeter_throttle_decisions_total{decision="deny"')
    )
    assert denied >= 1 and metrics(at)["Refused since throttle start"] == f"{int(denied):,}"


def test_capacity_shows_autoscale_and_rightsizing(dashboard_env: Stack) -> None:
    at = page(PAGES[3])
    keda = httpx.get(
        f"{dashboard_env.throttle_url}/v1/autoscale/chat",
        headers={"Authorization": f"Bearer {THROTTLE_API}"},
    ).json()
    shown = metrics(at)
    label = f"chat (driven by {keda['driver']})"
    assert shown[label] == f"{keda['desired_replicas']} desired"
    assert keda["desired_replicas"] > keda["current_replicas"] == 2
    signals = frames_with(at, "drives")[0]
    assert signals[signals["drives"]]["signal"].tolist() == [keda["driver"]]
    advice = frames_with(at, "advice")[0].set_index("replica")
    assert advice.loc["chat-0", "advice"] in ("right_size", "quantize")
    assert advice.loc["chat-0", "saving_usd_per_day"] > 0
    assert shown["Possible saving"].startswith("$")
    quant = frames_with(at, "cheapest_fitting_profile")[0]
    assert set(quant["quantization"]) == {"bf16", "fp8", "awq-int4"}


def test_request_lookup_shows_cost_breakdown(dashboard_env: Stack) -> None:
    at = page(PAGES[4])
    assert any("Enter a request id" in i.value for i in at.info)
    request_id = dashboard_env.load.records[20].request_id
    at.text_input(key="request_id").set_value(request_id).run()
    assert not at.exception
    found = metering_get(dashboard_env, f"/v1/requests/{request_id}")
    shown = metrics(at)
    assert found["cost_usd"] > 0 and shown["Cost"] == ui.usd(found["cost_usd"], 6)
    assert shown["Prompt tokens"] == f"{found['record']['prompt_tokens']:,}"
    windows = frames_with(at, "window_start")[0]
    assert windows["cost_usd"].sum() == pytest.approx(found["cost_usd"], abs=1e-6)
    at.text_input(key="request_id").set_value("no-such-request").run()
    assert any("no request 'no-such-request'" in i.value for i in at.info)


def test_time_range_picker_changes_the_query(dashboard_env: Stack) -> None:
    at = page(PAGES[0])
    assert "per minute" not in at.caption[0].value
    at.selectbox(key="range").set_value("Last 1 hour").run()
    assert not at.exception and "per minute" in at.caption[0].value
    at.selectbox(key="range").set_value("Custom").run()
    assert not at.exception and "00:00" in at.caption[0].value
    at.selectbox(key="range").set_value("Last 24 hours")
    at.selectbox(key="refresh").set_value("10 s").run()  # the page body becomes a fragment
    assert not at.exception and metrics(at)["Requests"] != "0"


@pytest.mark.parametrize("name", PAGES)
def test_services_down_show_a_message(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("INFERMETER_CONFIG", raising=False)
    monkeypatch.setenv("INFERMETER__DASHBOARD__METERING_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("INFERMETER__DASHBOARD__THROTTLE_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("INFERMETER__DASHBOARD__REFRESH_S", "0")
    at = page(name)
    if name.endswith("lookup.py"):
        at.text_input(key="request_id").set_value("req-1").run()
        assert not at.exception
    messages = [w.value for w in at.warning]
    assert messages and all("is not reachable at http://127.0.0.1:" in m for m in messages)
    assert any(
        "infermeter metering serve" in m or "infermeter throttle serve" in m for m in messages
    )
    assert not at.error


def test_empty_store_and_bad_token(
    serve: Callable[..., Any], monkeypatch: pytest.MonkeyPatch, dashboard_env: Stack
) -> None:
    settings = MeteringSettings(
        storage="duckdb:///:memory:", ingest_token=INGEST, read_token=READ, allocate_every_s=0
    )
    service = MeteringService(settings)
    try:
        empty = serve(metering_app(service, start_loop=False))
        monkeypatch.setenv("INFERMETER__DASHBOARD__METERING_URL", empty.url)
        for name in PAGES[:4]:
            at = page(name)
            assert not at.error, name
            # the seeded throttle still has pool chat under pressure: that warning only
            assert all("Fair-share mode" in w.value for w in at.warning), name
            assert at.info, name
        at = page(PAGES[1])
        assert any("No allocated cost in this range yet" in i.value for i in at.info)
        monkeypatch.setenv("INFERMETER__DASHBOARD__READ_TOKEN", "wrong")
        at = page(PAGES[1], errors_expected=True)
        assert any("metering answered 401" in e.value for e in at.error)
    finally:
        service.stop()
    assert THROTTLE_API  # the throttle of dashboard_env stays reachable throughout


def test_invalid_configuration_is_named_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("INFERMETER_CONFIG", raising=False)
    monkeypatch.setenv("INFERMETER__DASHBOARD__TIMEOUT_S", "-1")
    at = page(PAGES[0], errors_expected=True)
    assert any(
        "Invalid configuration" in e.value and "dashboard.timeout_s" in e.value for e in at.error
    ), [e.value for e in at.error]


def test_unexpected_error_is_one_line_not_a_traceback() -> None:
    def script() -> None:
        from infermeter.dashboards import ui

        def broken(ctx: object) -> None:
            raise KeyError("rows")

        ui.guarded(None, broken)  # type: ignore[arg-type]

    at = AppTest.from_function(script).run()
    assert not at.exception
    assert "could not be drawn (KeyError: 'rows')" in at.error[0].value
