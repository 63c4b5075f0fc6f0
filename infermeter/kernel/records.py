"""The data contracts metering owns: usage records and GPU samples.

A :class:`UsageRecord` is one finished or failed inference, produced by the collector
(or the gateway, for cache hits and managed upstreams). ``request_id`` is the idempotency key:
metering stores each id once. Records travel in batches, either as a plain JSON array of
record objects or as a CloudEvents JSON batch (``application/cloudevents-batch+json``) whose
events have type :data:`USAGE_EVENT_TYPE`, ``id`` = request id, ``subject`` = tenant and the
record in ``data``.

A :class:`GpuSample` is one reading of one GPU or MIG instance (NVML), keyed by
``(node, gpu_uuid, mig_uuid, ts)``.

Timestamps are timezone-aware UTC datetimes with microsecond precision; on the wire they are
RFC 3339 strings (``2026-11-24T13:45:57.123456Z``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from infermeter.kernel.errors import RecordError

USAGE_EVENT_TYPE = "infermeter.inference.v1"
GPU_SAMPLE_EVENT_TYPE = "infermeter.gpu_sample.v1"
STATUSES = frozenset({"ok", "error", "client_abort", "throttled", "cache_hit"})
UPSTREAM_KINDS = frozenset({"self_hosted", "managed"})
MAX_TAGS = 16
MAX_TAG_LEN = 128
MAX_INT = 2**63 - 1  # integers are stored as BIGINT


@dataclass(slots=True)
class UsageRecord:
    """One inference as metered: identity, timing and tokens."""

    request_id: str
    tenant: str
    model: str
    started_at: datetime
    finished_at: datetime
    status: str = "ok"
    api_key_id: str = ""
    pool: str = ""
    replica: str = ""
    endpoint: str = "/v1/chat/completions"
    stream: bool = False
    http_status: int = 200
    finish_reason: str | None = None
    first_token_at: datetime | None = None
    queue_s: float | None = None
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft_s: float | None = None
    itl_mean_s: float | None = None
    itl_p50_s: float | None = None
    itl_max_s: float | None = None
    e2e_s: float | None = None
    upstream: str = "self_hosted"
    tags: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (timestamps as RFC 3339 strings)."""
        out = dataclasses.asdict(self)
        for key in ("started_at", "finished_at", "first_token_at"):
            value = out[key]
            out[key] = format_ts(value) if value is not None else None
        return out

    @classmethod
    def from_json(cls, obj: Any) -> UsageRecord:
        """Validate and build a record; raises :class:`RecordError` naming the field."""
        return parse_usage_record(obj)


@dataclass(slots=True)
class GpuSample:
    """One telemetry reading of one GPU or MIG instance."""

    ts: datetime
    node: str
    gpu_uuid: str
    gpu_model: str
    mig_uuid: str = ""
    mig_profile: str = ""
    replica: str = ""
    util_pct: float = 0.0
    mem_used_bytes: int = 0
    mem_total_bytes: int = 0
    power_w: float = 0.0
    energy_j: float = 0.0
    temp_c: float = 0.0
    sm_clock_mhz: float = 0.0

    def key(self) -> tuple[str, str, str, datetime]:
        """The idempotency key of a sample."""
        return (self.node, self.gpu_uuid, self.mig_uuid, self.ts)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (timestamp as an RFC 3339 string)."""
        out = dataclasses.asdict(self)
        out["ts"] = format_ts(self.ts)
        return out

    @classmethod
    def from_json(cls, obj: Any) -> GpuSample:
        """Validate and build a sample; raises :class:`RecordError` naming the field."""
        return parse_gpu_sample(obj)


def format_ts(value: datetime) -> str:
    """RFC 3339 UTC with microseconds and a ``Z`` suffix."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_ts(value: Any, name: str) -> datetime:
    """Parse an RFC 3339 string (or epoch seconds) into an aware UTC datetime."""
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, int | float) and not isinstance(value, bool):
        try:
            dt = datetime.fromtimestamp(float(value), tz=UTC)
        except (OverflowError, OSError, ValueError) as exc:
            raise RecordError(name, f"epoch seconds out of range: {value!r}") from exc
    elif isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError as exc:
            raise RecordError(name, f"not an RFC 3339 timestamp: {value!r}") from exc
    else:
        raise RecordError(name, "must be an RFC 3339 timestamp string")
    if dt.tzinfo is None:
        raise RecordError(name, "timestamp must carry a timezone (use Z for UTC)")
    try:
        return dt.astimezone(UTC)
    except OverflowError as exc:  # e.g. 0001-01-01T00:00:00+01:00
        raise RecordError(name, "out of range once in UTC (years 1 to 9999)") from exc


def _str(obj: dict[str, Any], name: str, *, required: bool = False, default: str = "") -> str:
    value = obj.get(name)
    if value is None:
        if required:
            raise RecordError(name, "is required")
        return default
    if not isinstance(value, str):
        raise RecordError(name, "must be a string")
    if required and not value:
        raise RecordError(name, "must not be empty")
    if len(value) > 512:
        raise RecordError(name, "longer than 512 characters")
    return value


def _int(obj: dict[str, Any], name: str, default: int = 0) -> int:
    value = obj.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise RecordError(name, "must be an integer")
    if value < 0:
        raise RecordError(name, "must not be negative")
    if value > MAX_INT:
        raise RecordError(name, "exceeds 2^63-1")
    return value


def _float(obj: dict[str, Any], name: str, *, optional: bool = True) -> float | None:
    value = obj.get(name)
    if value is None:
        if optional:
            return None
        raise RecordError(name, "is required")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RecordError(name, "must be a number")
    try:
        number = float(value)
    except OverflowError as exc:  # an integer past the largest double
        raise RecordError(name, "must be a finite non-negative number") from exc
    if number < 0 or not math.isfinite(number):
        raise RecordError(name, "must be a finite non-negative number")
    return number


def _tags(obj: dict[str, Any]) -> dict[str, str]:
    tags = obj.get("tags") or {}
    if not isinstance(tags, dict):
        raise RecordError("tags", "must be an object of string values")
    if len(tags) > MAX_TAGS:
        raise RecordError("tags", f"more than {MAX_TAGS} tags")
    for key, value in tags.items():
        if not isinstance(value, str) or len(key) > MAX_TAG_LEN or len(value) > MAX_TAG_LEN:
            raise RecordError(f"tags.{key}", f"must be a string of at most {MAX_TAG_LEN} chars")
    return dict(tags)


def parse_usage_record(obj: Any) -> UsageRecord:
    """Validate one usage record object (wire form) and build the dataclass."""
    if not isinstance(obj, dict):
        raise RecordError("record", "must be a JSON object")
    status = _str(obj, "status", default="ok")
    if status not in STATUSES:
        raise RecordError("status", f"must be one of {sorted(STATUSES)}")
    upstream = _str(obj, "upstream", default="self_hosted")
    if upstream not in UPSTREAM_KINDS:
        raise RecordError("upstream", f"must be one of {sorted(UPSTREAM_KINDS)}")
    stream = obj.get("stream")
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise RecordError("stream", "must be a boolean")
    started = parse_ts(obj.get("started_at"), "started_at")
    finished = parse_ts(obj.get("finished_at"), "finished_at")
    if finished < started:
        raise RecordError("finished_at", "is before started_at")
    first_raw = obj.get("first_token_at")
    first = parse_ts(first_raw, "first_token_at") if first_raw is not None else None
    prompt = _int(obj, "prompt_tokens")
    cached = _int(obj, "cached_prompt_tokens")
    if cached > prompt:
        raise RecordError("cached_prompt_tokens", "exceeds prompt_tokens")
    http_status = _int(obj, "http_status", 200)
    if not 100 <= http_status <= 599:
        raise RecordError("http_status", "must be an HTTP status code")
    finish_reason = obj.get("finish_reason")
    if finish_reason is not None and not isinstance(finish_reason, str):
        raise RecordError("finish_reason", "must be a string or null")
    return UsageRecord(
        request_id=_str(obj, "request_id", required=True),
        tenant=_str(obj, "tenant", required=True),
        model=_str(obj, "model", required=True),
        started_at=started,
        finished_at=finished,
        status=status,
        api_key_id=_str(obj, "api_key_id"),
        pool=_str(obj, "pool"),
        replica=_str(obj, "replica"),
        endpoint=_str(obj, "endpoint", default="/v1/chat/completions"),
        stream=stream,
        http_status=http_status,
        finish_reason=finish_reason,
        first_token_at=first,
        queue_s=_float(obj, "queue_s"),
        prompt_tokens=prompt,
        cached_prompt_tokens=cached,
        completion_tokens=_int(obj, "completion_tokens"),
        ttft_s=_float(obj, "ttft_s"),
        itl_mean_s=_float(obj, "itl_mean_s"),
        itl_p50_s=_float(obj, "itl_p50_s"),
        itl_max_s=_float(obj, "itl_max_s"),
        e2e_s=_float(obj, "e2e_s"),
        upstream=upstream,
        tags=_tags(obj),
    )


def parse_gpu_sample(obj: Any) -> GpuSample:
    """Validate one GPU sample object (wire form) and build the dataclass."""
    if not isinstance(obj, dict):
        raise RecordError("sample", "must be a JSON object")

    def num(name: str) -> float:
        value = _float(obj, name)
        return 0.0 if value is None else value

    util = num("util_pct")
    if util > 100.0:
        raise RecordError("util_pct", "must be between 0 and 100")
    return GpuSample(
        ts=parse_ts(obj.get("ts"), "ts"),
        node=_str(obj, "node", required=True),
        gpu_uuid=_str(obj, "gpu_uuid", required=True),
        gpu_model=_str(obj, "gpu_model", required=True),
        mig_uuid=_str(obj, "mig_uuid"),
        mig_profile=_str(obj, "mig_profile"),
        replica=_str(obj, "replica"),
        util_pct=util,
        mem_used_bytes=_int(obj, "mem_used_bytes"),
        mem_total_bytes=_int(obj, "mem_total_bytes"),
        power_w=num("power_w"),
        energy_j=num("energy_j"),
        temp_c=num("temp_c"),
        sm_clock_mhz=num("sm_clock_mhz"),
    )


def cloudevent(record: UsageRecord, source: str) -> dict[str, Any]:
    """Wrap a usage record in a CloudEvents 1.0 JSON envelope."""
    return {
        "specversion": "1.0",
        "id": record.request_id,
        "source": source,
        "type": USAGE_EVENT_TYPE,
        "subject": record.tenant,
        "time": format_ts(record.finished_at),
        "datacontenttype": "application/json",
        "data": record.to_json(),
    }


def unwrap_event(obj: Any) -> Any:
    """The record object inside a CloudEvents envelope, or ``obj`` itself if it is bare."""
    if isinstance(obj, dict) and obj.get("specversion") is not None:
        if obj.get("type") not in (USAGE_EVENT_TYPE, GPU_SAMPLE_EVENT_TYPE):
            raise RecordError("type", f"unsupported CloudEvents type {obj.get('type')!r}")
        return obj.get("data")
    return obj
