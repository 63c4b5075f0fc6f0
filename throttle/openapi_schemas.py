"""JSON Schemas of what the throttle reads and answers, for its OpenAPI document.

The request bodies are the authorities themselves: the pydantic models
:class:`~infermeter.throttle.gateway_http.AdmitBody` and ``SettleBody``, the policy document
(:class:`~infermeter.throttle.policy.PolicyDocument`) and the engine-signal contract
(:data:`infermeter.kernel.engine_signals.SIGNAL_NAMES`, validated by
:func:`infermeter.throttle.signals.parse_signal`). The answers are those built in
``throttle/api.py`` and ``throttle/gateway_http.py``. A number that may be unbounded
(an unlimited rate, a budget of 0) is sent as ``null`` and typed ``["number", "null"]``.
Objects list the keys always present; more may be added.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from infermeter.kernel.engine_signals import SIGNAL_NAMES
from infermeter.kernel.openapi import ref
from infermeter.throttle.gateway_http import AdmitBody, SettleBody
from infermeter.throttle.policy import PolicyDocument
from infermeter.throttle.signals import MAX_NAME, MAX_SIGNAL

Schema = dict[str, Any]
REF_TEMPLATE = "#/components/schemas/{model}"

STR: Schema = {"type": "string"}
INT: Schema = {"type": "integer"}
NUM: Schema = {"type": "number"}
NUM_OR_NULL: Schema = {"type": ["number", "null"]}
INT_OR_NULL: Schema = {"type": ["integer", "null"]}
BOOL: Schema = {"type": "boolean"}


def obj(required: dict[str, Schema], optional: dict[str, Schema] | None = None) -> Schema:
    """An object whose ``required`` keys are always there (others may be added later)."""
    return {
        "type": "object",
        "required": sorted(required),
        "properties": {**required, **(optional or {})},
    }


def array(items: Schema) -> Schema:
    return {"type": "array", "items": items}


def model_schemas(*models: type[BaseModel]) -> dict[str, Schema]:
    """Each model's JSON Schema under its class name, nested models hoisted beside it (their
    references point into ``#/components/schemas``)."""
    out: dict[str, Schema] = {}
    for model in models:
        schema = model.model_json_schema(ref_template=REF_TEMPLATE)
        out.update(schema.pop("$defs", {}))
        out[model.__name__] = schema
    return out


COST = obj({"cost": NUM, "unit": STR})
NAME: Schema = {"type": "string", "minLength": 1, "maxLength": MAX_NAME}
SIGNAL: Schema = {
    "type": "object",
    "description": "One replica's engine signals (docs/api-contracts.md); unknown keys are "
    "ignored. `ts` (epoch seconds, default now) must be within `max_signal_skew_s` of the "
    "throttle's clock.",
    "required": ["pool", "replica"],
    "properties": {
        "pool": NAME,
        "replica": NAME,
        "model": STR,
        "ts": NUM,
        **{
            name: {
                "type": ["number", "null"],
                "minimum": 0,
                "maximum": 1 if name == "kv_cache_usage_perc" else MAX_SIGNAL,
            }
            for name in SIGNAL_NAMES
        },
    },
}
ADMIT_COMMON: dict[str, Schema] = {
    "estimate": ref("Cost"),
    "tenant": STR,
    "pool": STR,
    "tier": STR,
    "pressure": BOOL,
}
ADMIT_ALLOWED = obj(
    {
        "allowed": {"const": True},
        "reservation_id": STR,
        "lease_expires_at": NUM,
        **ADMIT_COMMON,
    }
)
ADMIT_DENIED = obj(
    {
        "allowed": {"const": False},
        "reason": {
            "type": "string",
            "description": "rate | concurrency | budget | fair_share | unavailable",
        },
        "detail": {"type": ["string", "null"], "description": "daily | monthly for a budget"},
        "retry_after_s": NUM_OR_NULL,
        **ADMIT_COMMON,
    }
)
SETTLED = obj(
    {
        "settled": BOOL,
        "duplicate": BOOL,
        "reservation_id": STR,
        "tenant": STR,
        "estimate": ref("Cost"),
        "actual": ref("Cost"),
        "delta": ref("Cost"),
    }
)
FAIR_COUNTERS: Schema = {"type": "object", "additionalProperties": NUM}
BUDGET = obj({"limit": NUM_OR_NULL, "spent": NUM, "remaining": NUM_OR_NULL, "unit": STR})
TENANT_USAGE = obj(
    {
        "tenant": STR,
        "tier": STR,
        "unit": STR,
        "rate": obj(
            {"per_s": NUM_OR_NULL, "burst": NUM_OR_NULL, "remaining": NUM_OR_NULL, "reset_s": NUM}
        ),
        "concurrency": obj({"limit": INT_OR_NULL, "in_flight": INT}),
        "daily": BUDGET,
        "monthly": BUDGET,
        "weight": NUM,
        "fair_share": FAIR_COUNTERS,
    }
)
TENANT_SUMMARY = obj(
    {
        "tenant": STR,
        "tier": STR,
        "weight": NUM,
        "in_policy": BOOL,
        "usage": obj(
            {
                "rate_remaining": NUM_OR_NULL,
                "rate_reset_s": NUM,
                "in_flight": INT,
                "concurrency_limit": INT_OR_NULL,
                "daily_spent": NUM,
                "daily_limit": NUM_OR_NULL,
                "monthly_spent": NUM,
                "monthly_limit": NUM_OR_NULL,
                "fair_share": FAIR_COUNTERS,
            }
        ),
        "recent": {
            "oneOf": [
                {"type": "null"},
                obj({"decisions": INT, "allowed": INT, "denied": INT, "last_ts": NUM}),
            ]
        },
    }
)
TENANTS = obj(
    {
        "tenants": array(ref("TenantSummary")),
        "total": INT,
        "truncated": BOOL,
        "unit": STR,
        "as_of": NUM,
    }
)
DECISIONS = obj(
    {
        "tenant": STR,
        "since": NUM,
        "unit": STR,
        "scope": {"const": "replica"},
        "decisions": array(
            obj(
                {
                    "ts": NUM,
                    "decision": {"enum": ["allow", "deny"]},
                    "reason": STR,
                    "cost": NUM,
                }
            )
        ),
        "counts": {"type": "object", "additionalProperties": INT},
    }
)
AUTOSCALE = obj(
    {
        "pool": STR,
        "desired_replicas": INT,
        "current_replicas": INT,
        "raw_desired_replicas": INT,
        "driver": STR,
        "pressure": BOOL,
        "saturated": array(STR),
        "signals": {
            "type": "object",
            "additionalProperties": obj(
                {"observed": NUM, "target": NUM, "ratio": NUM, "desired": INT}
            ),
        },
        "evaluated_at": NUM,
    }
)
POLICY_STATE = obj(
    {
        "version": INT,
        "source": STR,
        "policy": {"type": "object", "description": "the policy document in force"},
    }
)
READY = obj(
    {
        "status": {"enum": ["ready", "degraded"]},
        "problems": {"type": "object", "additionalProperties": STR},
        "storage": STR,
        "policy_version": INT,
    }
)

SCHEMAS: dict[str, Schema] = {
    **model_schemas(AdmitBody, SettleBody, PolicyDocument),
    "Cost": COST,
    "Signal": SIGNAL,
    "Signals": {"oneOf": [ref("Signal"), array(ref("Signal"))]},
    "SignalsAccepted": obj({"accepted": INT, "pools": array(STR)}),
    "AdmitAllowed": ADMIT_ALLOWED,
    "AdmitDenied": ADMIT_DENIED,
    "Settled": SETTLED,
    "TenantUsage": TENANT_USAGE,
    "TenantSummary": TENANT_SUMMARY,
    "Tenants": TENANTS,
    "Decisions": DECISIONS,
    "Autoscale": AUTOSCALE,
    "AutoscaleAll": obj({"pools": array(ref("Autoscale"))}),
    "PolicyState": POLICY_STATE,
    "PolicyApplied": obj({"version": INT, "applied": {"const": True}}),
    "Ready": READY,
}
