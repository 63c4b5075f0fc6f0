"""The pure JSON → table functions the pages use."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import pandas as pd
import pytest

from infermeter.dashboards.client import Sample
from infermeter.dashboards.frames.base import pivot
from infermeter.dashboards.frames.capacity import autoscale_frames, engine_frame
from infermeter.dashboards.frames.costs import (
    buy_vs_build_frame,
    cache_frame,
    cost_frame,
    cost_totals,
    effective_usd_per_mtok,
    idle_frame,
)
from infermeter.dashboards.frames.fleet import (
    gpu_frame,
    gpu_summary,
    latency_frame,
    latency_totals,
    replica_load_frame,
)
from infermeter.dashboards.frames.lookup import request_summary, request_windows
from infermeter.dashboards.frames.tenants import (
    DECISION_COLUMNS,
    decision_counts,
    decision_log_frame,
    decisions_frame,
    decisions_over_time,
    tenant_frame,
    usage_from_listing,
)

COST = {
    "by": "tenant",
    "granularity": "day",
    "rows": [
        {
            "bucket": "2026-11-23T00:00:00.000000Z",
            "tenant": "acme",
            "cost_usd": 1.0,
            "idle_share_usd": 0.0,
            "total_usd": 1.0,
            "requests": 10,
            "prompt_tokens": 400_000,
            "cached_prompt_tokens": 0,
            "completion_tokens": 100_000,
            "usd_per_mtok": 2.0,
            "gpu_seconds": 10.0,
            "kwh": 0.01,
        },
        {
            "bucket": "2026-11-24T00:00:00.000000Z",
            "tenant": "acme",
            "cost_usd": 3.0,
            "idle_share_usd": 0.0,
            "total_usd": 3.0,
            "requests": 30,
            "prompt_tokens": 500_000,
            "cached_prompt_tokens": 0,
            "completion_tokens": 0,
            "usd_per_mtok": 6.0,
            "gpu_seconds": 30.0,
            "kwh": 0.03,
        },
        {
            "bucket": "2026-11-24T00:00:00.000000Z",
            "tenant": "globex",
            "cost_usd": 0.5,
            "idle_share_usd": 0.0,
            "total_usd": 0.5,
            "requests": 1,
            "prompt_tokens": 0,
            "cached_prompt_tokens": 0,
            "completion_tokens": 0,
            "usd_per_mtok": None,
            "gpu_seconds": 1.0,
            "kwh": 0.0,
        },
    ],
}


def test_cost_frame_and_totals_rank_by_spend_with_dollars_per_mtok() -> None:
    frame = cost_frame(COST)
    assert list(frame.columns)[:2] == ["bucket", "tenant"]
    assert str(frame["bucket"].dtype).startswith("datetime64")
    totals = cost_totals(frame, "tenant")
    assert totals["tenant"].tolist() == ["acme", "globex"]
    acme = totals.iloc[0]
    assert acme["total_usd"] == 4.0 and acme["tokens"] == 1_000_000
    assert acme["usd_per_mtok"] == 4.0
    assert pd.isna(totals.iloc[1]["usd_per_mtok"])
    assert effective_usd_per_mtok(COST) == 4.5


def test_empty_reports_give_empty_frames_with_columns() -> None:
    for fn in (
        cost_frame,
        latency_frame,
        gpu_frame,
        cache_frame,
        idle_frame,
        buy_vs_build_frame,
    ):
        frame = fn({"rows": []})
        assert frame.empty and len(frame.columns) > 0, fn.__name__
    assert cost_totals(cost_frame({"by": "tenant", "rows": []}), "tenant").empty
    assert effective_usd_per_mtok({"rows": []}) is None
    assert latency_totals(latency_frame({"rows": []}), 3600)["requests"] == 0


def test_latency_frame_flattens_percentiles_and_rates() -> None:
    report = {
        "granularity": "minute",
        "rows": [
            {
                "bucket": "2026-11-24T10:00:00.000000Z",
                "requests": 120,
                "errors": 1,
                "client_aborts": 2,
                "ttft_s": {"p50": 0.1, "p95": 0.4, "p99": 0.9},
                "e2e_s": {"p50": 1, "p95": 2, "p99": 3},
                "itl_s": {"p50": 0.01, "p95": 0.02},
                "queue_s": {"p50": None, "p95": None},
                "output_tokens_per_s": 50.0,
                "prompt_tokens_per_s": 100.0,
            },
            {
                "bucket": "2026-11-24T10:01:00.000000Z",
                "requests": 60,
                "errors": 0,
                "client_aborts": 0,
                "ttft_s": {"p50": 0.1, "p95": 0.2, "p99": 0.3},
                "e2e_s": {"p50": 1, "p95": 5, "p99": 6},
                "itl_s": {"p50": 0.01, "p95": 0.02},
                "queue_s": {"p50": None, "p95": None},
                "output_tokens_per_s": 10.0,
                "prompt_tokens_per_s": 20.0,
            },
        ],
    }
    frame = latency_frame(report)
    assert frame["requests_per_s"].tolist() == [2.0, 1.0]
    assert frame["ttft_p99_s"].tolist() == [0.9, 0.3]
    totals = latency_totals(frame, seconds=120)
    assert totals == {
        "requests": 180,
        "requests_per_s": 1.5,
        "output_tokens_per_s": 30.0,
        "ttft_p95_s_worst": 0.4,
        "e2e_p95_s_worst": 5.0,
    }


def test_gpu_frame_names_mig_slices_and_converts_units() -> None:
    report = {
        "rows": [
            {
                "bucket": "2026-11-24T10:00:00Z",
                "replica": "r1",
                "gpu_uuid": "GPU-1",
                "mig_uuid": "MIG-a",
                "gpu_model": "H100",
                "mig_profile": "3g.40gb",
                "util_pct": 50.0,
                "mem_used_bytes": 10 * 2**30,
                "mem_total_bytes": 40 * 2**30,
                "power_w": 200.0,
                "energy_j": 3.6e6,
                "temp_c": 50.0,
                "samples": 4,
            },
            {
                "bucket": "2026-11-24T10:01:00Z",
                "replica": "r1",
                "gpu_uuid": "GPU-1",
                "mig_uuid": "MIG-a",
                "gpu_model": "H100",
                "mig_profile": "3g.40gb",
                "util_pct": 70.0,
                "mem_used_bytes": 20 * 2**30,
                "mem_total_bytes": 40 * 2**30,
                "power_w": 300.0,
                "energy_j": 1.8e6,
                "temp_c": 50.0,
                "samples": 4,
            },
        ]
    }
    frame = gpu_frame(report)
    assert frame["device"].tolist() == ["GPU-1/MIG-a"] * 2
    assert frame["mem_used_gib"].tolist() == [10.0, 20.0]
    summary = gpu_summary(frame).iloc[0]
    assert summary["util_pct_mean"] == 60.0 and summary["mem_used_gib_max"] == 20.0
    assert summary["energy_kwh"] == 1.5
    wide = pivot(frame, "bucket", "device", "util_pct")
    assert list(wide.columns) == ["GPU-1/MIG-a"]


def test_idle_frame_sums_buckets_per_replica() -> None:
    report = {
        "by": "replica",
        "rows": [
            {
                "replica": "r1",
                "cost_usd": 2.0,
                "allocated_usd": 0.5,
                "idle_usd": 1.5,
                "busy_s": 30,
                "provisioned_s": 60,
                "gpu_seconds": 60,
                "kwh": 0.1,
            },
            {
                "replica": "r1",
                "cost_usd": 2.0,
                "allocated_usd": 0.5,
                "idle_usd": 1.5,
                "busy_s": 0,
                "provisioned_s": 60,
                "gpu_seconds": 60,
                "kwh": 0.1,
            },
        ],
    }
    row = idle_frame(report).iloc[0]
    assert row["cost_usd"] == 4.0 and row["idle_usd"] == 3.0
    assert row["utilization"] == 0.25 and row["idle_fraction"] == 0.75


def test_buy_vs_build_finds_the_cheapest_managed_api() -> None:
    report = {
        "managed_prices": {"a": {}, "b": {}},
        "rows": [
            {
                "model": "m",
                "tenant": "t1",
                "requests": 1,
                "prompt_tokens": 10,
                "completion_tokens": 5,
                "self_hosted_usd": 1.0,
                "self_hosted_with_idle_usd": 2.0,
                "managed_usd": {"a": 5.0, "b": 3.0},
            },
            {
                "model": "m",
                "tenant": "t2",
                "requests": 1,
                "prompt_tokens": 10,
                "completion_tokens": 5,
                "self_hosted_usd": 1.0,
                "self_hosted_with_idle_usd": 2.0,
                "managed_usd": {"a": 5.0, "b": 3.0},
            },
        ],
    }
    row = buy_vs_build_frame(report).iloc[0]
    assert row["requests"] == 2 and row["managed:b"] == 6.0
    assert row["cheapest_managed"] == "b" and row["saving_vs_cheapest_usd"] == 2.0


def test_tenant_frame_joins_spend_budgets_and_live_limits() -> None:
    spend = cost_totals(cost_frame(COST), "tenant")
    budgets = [
        {
            "tenant": "acme",
            "daily": {
                "limit_usd": 5.0,
                "spent_usd": 4.0,
                "projected_usd": 7.5,
                "will_exceed": True,
            },
            "monthly": {
                "limit_usd": None,
                "spent_usd": 4.0,
                "projected_usd": 100.0,
                "will_exceed": False,
            },
        },
        {
            "tenant": "quiet",
            "daily": {
                "limit_usd": 1.0,
                "spent_usd": 0.0,
                "projected_usd": 0.0,
                "will_exceed": False,
            },
            "monthly": {},
        },
    ]
    usage = {
        "acme": {
            "tier": "pro",
            "rate": {"remaining": 9.5},
            "weight": 2.0,
            "concurrency": {"limit": 100, "in_flight": 3},
            "fair_share": {"chat": 0.123456},
        }
    }
    table = tenant_frame(spend, budgets, usage).set_index("tenant")
    assert list(table.index) == ["acme", "globex", "quiet"]
    assert table.loc["acme", "projected_overrun_usd"] == 2.5
    assert bool(table.loc["acme", "daily_will_exceed"]) is True
    assert table.loc["quiet", "projected_overrun_usd"] == 0.0
    assert table.loc["acme", "fair_share"] == "chat=0.1235" and table.loc["acme", "in_flight"] == 3


def test_decisions_and_engine_frames_from_samples() -> None:
    samples = [
        Sample("infermeter_throttle_decisions_total", {"decision": "allow", "reason": "none"}, 6),
        Sample("infermeter_throttle_decisions_total", {"decision": "deny", "reason": "rate"}, 2),
        Sample("infermeter_throttle_decisions_created", {"decision": "deny"}, 1e9),
        Sample("infermeter_throttle_pool_signal", {"pool": "p", "signal": "kv"}, 0.5),
    ]
    decisions = decisions_frame(samples)
    assert decisions["count"].tolist() == [6, 2] and decisions["share"].tolist() == [0.75, 0.25]
    assert engine_frame(samples).to_dict("records") == [{"pool": "p", "signal": "kv", "value": 0.5}]


def test_autoscale_frames_flag_the_driving_signal() -> None:
    pools = [
        {
            "pool": "chat",
            "desired_replicas": 4,
            "current_replicas": 2,
            "raw_desired_replicas": 4,
            "driver": "num_requests_waiting",
            "pressure": True,
            "saturated": ["queue"],
            "signals": {
                "num_requests_waiting": {"observed": 10, "target": 5, "ratio": 2, "desired": 4},
                "kv_cache_usage_perc": {"observed": 0.4, "target": 0.8, "ratio": 0.5, "desired": 1},
            },
        }
    ]
    summary, signals = autoscale_frames(pools)
    assert summary.iloc[0]["change"] == 2 and summary.iloc[0]["saturated"] == "queue"
    assert signals[signals["drives"]]["signal"].tolist() == ["num_requests_waiting"]


def test_request_summary_and_windows() -> None:
    found = {
        "request_id": "r",
        "cost_usd": 0.002,
        "allocated": True,
        "gpu_seconds": 1.0,
        "kwh": 0.0001,
        "record": {
            "tenant": "t",
            "model": "m",
            "prompt_tokens": 1500,
            "completion_tokens": 500,
            "ttft_s": 0.2,
        },
        "windows": [
            {
                "window_start": "2026-11-24T10:00:00.000000Z",
                "replica": "r1",
                "cost_usd": 0.002,
                "work": 1.0,
                "prefill_tokens": 1500,
                "decode_tokens": 500,
                "gpu_seconds": 1.0,
                "energy_j": 360.0,
            }
        ],
    }
    summary = request_summary(found)
    assert summary["usd_per_mtok"] == 1.0 and summary["ttft_s"] == 0.2
    windows = request_windows(found)
    csv = windows.to_csv(index=False)
    assert pd.read_csv(io.StringIO(csv))["cost_usd"].tolist() == [0.002]


@pytest.mark.parametrize("granularity", ["hour", "day"])
def test_replica_load_frame_rates_per_bucket(granularity: str) -> None:
    seconds = {"hour": 3600, "day": 86400}[granularity]
    report = {
        "granularity": granularity,
        "rows": [
            {
                "bucket": "2026-11-24T10:00:00Z",
                "replica": "r1",
                "requests": seconds,
                "prompt_tokens": seconds * 3,
                "completion_tokens": seconds,
            }
        ],
    }
    row = replica_load_frame(report).iloc[0]
    assert row["requests_per_s"] == 1.0 and row["tokens_per_s"] == 4.0


def test_rates_of_the_ranges_partial_buckets_count_only_the_covered_seconds() -> None:
    clip = (
        datetime(2026, 11, 24, 9, 30, tzinfo=UTC),
        datetime(2026, 11, 24, 11, 15, tzinfo=UTC),  # the 11:00 hour is 15 minutes old
    )
    rows = [
        {"bucket": f"2026-11-24T{h}:00:00Z", "requests": 900, "output_tokens_per_s": 1.0}
        for h in ("09", "10", "11")
    ]
    frame = latency_frame({"granularity": "hour", "rows": rows}, clip)
    assert frame["bucket_s"].tolist() == [1800.0, 3600.0, 900.0]
    assert frame["requests_per_s"].tolist() == [0.5, 0.25, 1.0]
    assert frame["output_tokens_per_s"].tolist() == [2.0, 1.0, 4.0]
    # the headline rate is still every request over the whole range
    assert latency_totals(frame, 6300)["requests_per_s"] == round(2700 / 6300, 6)
    load = {
        "granularity": "hour",
        "rows": [
            {"bucket": "2026-11-24T11:00:00Z", "pool": "chat", "requests": 90,
             "prompt_tokens": 900, "completion_tokens": 0},
        ],
    }  # fmt: skip
    row = replica_load_frame(load, "pool", clip).iloc[0]
    assert row["requests_per_s"] == 0.1 and row["tokens_per_s"] == 1.0 and row["pool"] == "chat"
    assert replica_load_frame(load, "pool").iloc[0]["tokens_per_s"] == 0.25


def decisions_answer(tenant: str, entries: list[tuple[float, str, str]]) -> dict[str, object]:
    return {
        "tenant": tenant,
        "decisions": [
            {"ts": ts, "decision": d, "reason": r, "cost": 0.001} for ts, d, r in entries
        ],
    }


def test_decision_log_over_time_and_counts_by_reason() -> None:
    t0 = datetime(2026, 11, 24, 10, 0, tzinfo=UTC).timestamp()
    bodies = [
        decisions_answer("globex", [(t0 + 5, "allow", "none"), (t0 + 6, "deny", "rate"),
                                    (t0 + 70, "deny", "rate"), (t0 + 71, "deny", "concurrency")]),
        decisions_answer("acme", [(t0 + 1, "allow", "none"), (t0 + 65, "allow", "none")]),
        decisions_answer("initech", []),
    ]  # fmt: skip
    log = decision_log_frame(bodies)
    assert log["tenant"].tolist() == ["acme", "globex", "globex", "acme", "globex", "globex"]
    assert log["outcome"].tolist()[:3] == ["allow", "allow", "deny: rate"]
    assert str(log["ts"].dt.tz) == "UTC"
    wide = decisions_over_time(log, "minute")
    assert wide.columns.tolist() == ["allow", "deny: concurrency", "deny: rate"]
    assert wide.to_dict("list") == {
        "allow": [2, 1],
        "deny: concurrency": [0, 1],
        "deny: rate": [1, 1],
    }
    assert decisions_over_time(log, "hour")["deny: rate"].tolist() == [2]
    clip = (
        datetime(2026, 11, 24, 9, 58, 30, tzinfo=UTC),
        datetime(2026, 11, 24, 10, 3, tzinfo=UTC),
    )
    filled = decisions_over_time(log, "minute", clip)
    assert [t.minute for t in filled.index] == [58, 59, 0, 1, 2]  # every bucket of the range
    assert filled["allow"].tolist() == [0, 0, 2, 1, 0]
    assert decisions_over_time(log.iloc[:0], "minute", clip).shape == (5, 0)
    counts = decision_counts(log).set_index("tenant")
    assert counts.index.tolist() == ["globex", "acme"]  # the busiest denier first
    assert counts.loc["globex"].to_dict() == {
        "decisions": 4,
        "allowed": 1,
        "denied": 3,
        "denied_share": 0.75,
        "deny: concurrency": 1,
        "deny: rate": 2,
    }
    assert counts.loc["acme", "denied"] == 0 and counts.loc["acme", "deny: rate"] == 0


def test_decision_frames_are_empty_without_decisions() -> None:
    log = decision_log_frame([decisions_answer("acme", [])])
    assert log.empty and list(log.columns) == list(DECISION_COLUMNS)
    assert decisions_over_time(log, "minute").empty
    counts = decision_counts(log)
    assert counts.empty and "denied_share" in counts.columns
    only_denied = decision_log_frame([decisions_answer("x", [(1.0, "deny", "")])])
    assert only_denied["outcome"].tolist() == ["deny: unspecified"]
    assert decision_counts(only_denied).iloc[0]["allowed"] == 0


def test_tenant_list_merges_metering_and_throttle() -> None:
    spend = pd.DataFrame(
        {"tenant": ["acme", "metered-only"], "total_usd": [2.0, 1.0], "requests": [3, 1],
         "tokens": [30, 10]}
    )  # fmt: skip
    daily = {"limit_usd": 5.0, "spent_usd": 1.0, "projected_usd": 6.0, "will_exceed": True}
    budgets = [{"tenant": "budgeted", "daily": daily}]
    listing = [
        {"tenant": "acme", "tier": "pro", "weight": 2.0, "in_policy": True,
         "usage": {"rate_remaining": 9.5, "in_flight": 1, "concurrency_limit": 100,
                   "fair_share": {"chat": 0.25}}, "recent": None},
        {"tenant": "throttled-only", "tier": "free", "weight": 1.0, "in_policy": False,
         "usage": {"rate_remaining": 0.0, "in_flight": 0, "concurrency_limit": 2,
                   "fair_share": {}}, "recent": {"decisions": 3, "allowed": 1, "denied": 2,
                                                 "last_ts": 1.0}},
    ]  # fmt: skip
    usage = {u["tenant"]: u for u in map(usage_from_listing, listing)}
    table = tenant_frame(spend, budgets, usage, list(usage)).set_index("tenant")
    assert table["known_to"].to_dict() == {
        "acme": "metering + throttle",
        "metered-only": "metering",
        "budgeted": "metering",
        "throttled-only": "throttle",
    }
    assert table.loc["acme", "tier"] == "pro" and table.loc["acme", "fair_share"] == "chat=0.25"
    assert table.loc["acme", "concurrency_limit"] == 100 and table.loc["acme", "in_flight"] == 1
    assert table.loc["throttled-only", "rate_remaining"] == 0.0
    assert table.loc["budgeted", "projected_overrun_usd"] == 1.0
