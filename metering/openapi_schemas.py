"""JSON Schemas of what the metering API reads and answers, for its OpenAPI document.

The record schemas mirror the wire form of :mod:`infermeter.kernel.records` (the parsers there
are the authority: ``tests/metering/test_openapi_fuzz.py`` checks the two name the same
fields); the answers are those of ``metering/reports.py``, ``rate_reports.py``, ``series.py``,
``budgets.py`` and ``service.py``. Objects list the keys always present; more may be added.
"""

from __future__ import annotations

from typing import Any

from infermeter.kernel.openapi import ref
from infermeter.kernel.records import (
    GPU_SAMPLE_EVENT_TYPE,
    MAX_INT,
    MAX_TAG_LEN,
    MAX_TAGS,
    STATUSES,
    UPSTREAM_KINDS,
    USAGE_EVENT_TYPE,
)

Schema = dict[str, Any]

STR: Schema = {"type": "string"}
TEXT: Schema = {"type": "string", "maxLength": 512}
NAME: Schema = {"type": "string", "minLength": 1, "maxLength": 512}
INT: Schema = {"type": "integer"}
COUNT: Schema = {"type": "integer", "minimum": 0, "maximum": MAX_INT}
NUM: Schema = {"type": "number"}
AMOUNT: Schema = {"type": "number", "minimum": 0}
NUM_OR_NULL: Schema = {"type": ["number", "null"]}
BOOL: Schema = {"type": "boolean"}
TIME: Schema = {"type": "string", "format": "date-time"}
TIME_OR_NULL: Schema = {"type": ["string", "null"], "format": "date-time"}


def obj(required: dict[str, Schema], optional: dict[str, Schema] | None = None) -> Schema:
    """An object whose ``required`` keys are always there (others may be added later)."""
    return {
        "type": "object",
        "required": sorted(required),
        "properties": {**required, **(optional or {})},
    }


def array(items: Schema) -> Schema:
    return {"type": "array", "items": items}


TAGS: Schema = {
    "type": "object",
    "maxProperties": MAX_TAGS,
    "propertyNames": {"maxLength": MAX_TAG_LEN},
    "additionalProperties": {"type": "string", "maxLength": MAX_TAG_LEN},
}

USAGE_RECORD: Schema = obj(
    {"request_id": NAME, "tenant": NAME, "model": NAME, "started_at": TIME, "finished_at": TIME},
    {
        "status": {"type": "string", "enum": sorted(STATUSES), "default": "ok"},
        "api_key_id": TEXT,
        "pool": TEXT,
        "replica": TEXT,
        "endpoint": TEXT,
        "stream": BOOL,
        "http_status": {"type": "integer", "minimum": 100, "maximum": 599},
        "finish_reason": {"type": ["string", "null"]},
        "first_token_at": TIME_OR_NULL,
        "queue_s": {"type": ["number", "null"], "minimum": 0},
        "prompt_tokens": COUNT,
        "cached_prompt_tokens": {**COUNT, "description": "at most prompt_tokens"},
        "completion_tokens": COUNT,
        "ttft_s": {"type": ["number", "null"], "minimum": 0},
        "itl_mean_s": {"type": ["number", "null"], "minimum": 0},
        "itl_p50_s": {"type": ["number", "null"], "minimum": 0},
        "itl_max_s": {"type": ["number", "null"], "minimum": 0},
        "e2e_s": {"type": ["number", "null"], "minimum": 0},
        "upstream": {"type": "string", "enum": sorted(UPSTREAM_KINDS)},
        "tags": TAGS,
    },
)
USAGE_RECORD["description"] = "One finished or failed inference (finished_at >= started_at)"

GPU_SAMPLE: Schema = obj(
    {"ts": TIME, "node": NAME, "gpu_uuid": NAME, "gpu_model": NAME},
    {
        "mig_uuid": TEXT,
        "mig_profile": TEXT,
        "replica": TEXT,
        "util_pct": {"type": "number", "minimum": 0, "maximum": 100},
        "mem_used_bytes": COUNT,
        "mem_total_bytes": COUNT,
        "power_w": AMOUNT,
        "energy_j": {**AMOUNT, "description": "NVML energy counter (monotonic)"},
        "temp_c": AMOUNT,
        "sm_clock_mhz": AMOUNT,
    },
)


def cloud_event(event_type: str, record: str) -> Schema:
    """A CloudEvents 1.0 JSON envelope carrying one record in ``data``."""
    return obj(
        {
            "specversion": {"type": "string", "const": "1.0"},
            "type": {"type": "string", "const": event_type},
            "data": ref(record),
        },
        {"id": STR, "source": STR, "subject": STR, "time": TIME, "datacontenttype": STR},
    )


BATCH_RESULT: Schema = obj(
    {
        "accepted": COUNT,
        "duplicates": COUNT,
        "conflicts": {**COUNT, "description": "reused ids with other content (dead-lettered)"},
        "rejected": array(obj({"index": INT, "field": STR, "error": STR})),
    }
)

CALIBRATION: Schema = obj(
    {
        "model": STR,
        "prefill_s_per_token": NUM,
        "decode_s_per_token": NUM,
        "windows": INT,
        "source": STR,
        "r2": NUM_OR_NULL,
        "rmse_s": NUM_OR_NULL,
    }
)

ALLOCATION_RUN: Schema = obj(
    {
        "range_start": TIME_OR_NULL,
        "range_end": TIME_OR_NULL,
        "clamped": BOOL,
        "provisional": BOOL,
        "replica_windows": INT,
        "request_windows": INT,
        "unpriced_requests": INT,
        "cost_usd": NUM,
        "idle_usd": NUM,
        "duration_s": NUM,
        "calibrations": array(CALIBRATION),
    },
    {"open_window_start": TIME_OR_NULL, "context_weights": {"type": "object"}},
)

_PROVISIONAL = {"provisional": BOOL, "provisional_since": TIME_OR_NULL}
_RANGE = {"since": TIME, "until": TIME}
_SPEND = {"cost_usd": NUM, "gpu_seconds": NUM, "kwh": NUM}
IDLE_ROW: Schema = obj(
    {
        "bucket": TIME,
        **_SPEND,
        "allocated_usd": NUM,
        "idle_usd": NUM,
        "utilization": NUM_OR_NULL,
        "busy_s": NUM,
        "provisioned_s": NUM,
    },
    {"replica": STR, "pool": STR, "provisional": BOOL},
)
COST_ROW: Schema = obj(
    {
        "bucket": TIME,
        **_SPEND,
        "idle_share_usd": NUM,
        "total_usd": NUM,
        "requests": INT,
        "prompt_tokens": INT,
        "cached_prompt_tokens": INT,
        "completion_tokens": INT,
        "usd_per_mtok": NUM_OR_NULL,
    },
    {"provisional": BOOL},
)
COST_REPORT: Schema = obj(
    {
        "by": STR,
        "granularity": STR,
        **_RANGE,
        **_PROVISIONAL,
        "share_idle": BOOL,
        "rows": array(COST_ROW),
        "idle": array(IDLE_ROW),
        "totals": obj(
            {"allocated_usd": NUM, "idle_shared_usd": NUM, "idle_usd": NUM, "replica_cost_usd": NUM}
        ),
    }
)
IDLE_REPORT: Schema = obj(
    {
        "by": STR,
        "granularity": STR,
        **_RANGE,
        **_PROVISIONAL,
        "rows": array(IDLE_ROW),
        "totals": obj({"cost_usd": NUM, "idle_usd": NUM}),
    }
)
BUY_VS_BUILD: Schema = obj(
    {
        **_RANGE,
        **_PROVISIONAL,
        "rows": array(
            obj(
                {
                    "model": STR,
                    "tenant": STR,
                    "requests": INT,
                    "prompt_tokens": INT,
                    "completion_tokens": INT,
                    "self_hosted_usd": NUM,
                    "self_hosted_with_idle_usd": NUM,
                    "managed_usd": {"type": "object", "additionalProperties": NUM},
                }
            )
        ),
        "managed_prices": {
            "type": "object",
            "additionalProperties": obj({"input_per_mtok": NUM, "output_per_mtok": NUM}),
        },
    }
)
_QUANTILES = {"type": "object", "additionalProperties": NUM_OR_NULL}
LATENCY_REPORT: Schema = obj(
    {
        "granularity": STR,
        "by": STR,
        "rows": array(
            obj(
                {
                    "bucket": TIME,
                    "requests": INT,
                    "errors": INT,
                    "client_aborts": INT,
                    "ttft_s": _QUANTILES,
                    "e2e_s": _QUANTILES,
                    "itl_s": _QUANTILES,
                    "queue_s": _QUANTILES,
                    "tokens_per_s_per_request_p50": NUM_OR_NULL,
                    "output_tokens_per_s": NUM_OR_NULL,
                    "prompt_tokens_per_s": NUM_OR_NULL,
                },
                {"pool": STR, "replica": STR},
            )
        ),
    }
)
GPU_REPORT: Schema = obj(
    {
        "granularity": STR,
        "rows": array(
            obj(
                {
                    "bucket": TIME,
                    "replica": STR,
                    "gpu_uuid": STR,
                    "mig_uuid": STR,
                    "gpu_model": STR,
                    "mig_profile": STR,
                    "util_pct": NUM_OR_NULL,
                    "mem_used_bytes": NUM_OR_NULL,
                    "mem_total_bytes": NUM_OR_NULL,
                    "power_w": NUM_OR_NULL,
                    "energy_j": NUM_OR_NULL,
                    "temp_c": NUM_OR_NULL,
                    "samples": INT,
                }
            )
        ),
    }
)
CACHE_SAVINGS: Schema = obj(
    {
        "rows": array(
            obj(
                {
                    "tenant": STR,
                    "model": STR,
                    "hits": INT,
                    "prompt_tokens": INT,
                    "completion_tokens": INT,
                    "saved_usd": NUM_OR_NULL,
                }
            )
        ),
        "total_saved_usd": NUM,
    }
)
CALIBRATIONS: Schema = obj(
    {
        "latest": array(CALIBRATION),
        "history": array(obj({"model": STR, "computed_at": TIME, "windows": INT, "source": STR})),
    }
)
_RATE = obj(
    {
        "usd_per_prompt_token": NUM,
        "usd_per_completion_token": NUM,
        "usd_per_gpu_second": NUM,
        "calibration": STR,
    }
)
RATES: Schema = obj(
    {"models": {"type": "object", "additionalProperties": _RATE}, "default": _RATE, "as_of": TIME}
)
_PERIOD = obj(
    {
        "limit_usd": NUM_OR_NULL,
        "spent_usd": NUM,
        "projected_usd": NUM,
        "burn_usd_per_hour": NUM,
        "will_exceed": BOOL,
        "remaining_usd": NUM_OR_NULL,
        "period_start": TIME,
        "period_end": TIME,
    }
)
BUDGET_STATE: Schema = obj(
    {
        "tenant": STR,
        "as_of": TIME,
        "allocated_until": TIME_OR_NULL,
        "daily": _PERIOD,
        "monthly": _PERIOD,
    }
)
REQUEST_COST: Schema = obj(
    {
        "request_id": STR,
        "record": {"type": "object", "required": ["request_id", "tenant", "model"]},
        "allocated": BOOL,
        "stale": BOOL,
        "cost_usd": NUM_OR_NULL,
        "gpu_seconds": NUM_OR_NULL,
        "kwh": NUM_OR_NULL,
        "windows": array(obj({"window_start": TIME, "replica": STR, "cost_usd": NUM})),
    }
)

SCHEMAS: dict[str, Schema] = {
    "UsageRecord": USAGE_RECORD,
    "GpuSample": GPU_SAMPLE,
    "UsageEvent": cloud_event(USAGE_EVENT_TYPE, "UsageRecord"),
    "GpuSampleEvent": cloud_event(GPU_SAMPLE_EVENT_TYPE, "GpuSample"),
    "BatchResult": BATCH_RESULT,
    "AllocationRun": ALLOCATION_RUN,
    "BudgetAlerts": obj({"alerts": array({"type": "object"})}),
    "CostReport": COST_REPORT,
    "IdleReport": IDLE_REPORT,
    "BuyVsBuild": BUY_VS_BUILD,
    "LatencyReport": LATENCY_REPORT,
    "GpuReport": GPU_REPORT,
    "CacheSavings": CACHE_SAVINGS,
    "Calibrations": CALIBRATIONS,
    "Rates": RATES,
    "BudgetState": BUDGET_STATE,
    "Budgets": obj({"tenants": array(ref("BudgetState"))}),
    "RequestCost": REQUEST_COST,
}
