"""What the proxy fills in per request, and how it becomes a usage record.

The request path only appends to a :class:`RequestRecord` (monotonic timestamps, counters,
the usage numbers the engine reported). Intervals, inter-token statistics and wall-clock
timestamps are derived once, off the request path, by :func:`to_usage_record`.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field
from datetime import UTC, datetime

from infermeter.kernel.records import UsageRecord


@dataclass(slots=True, eq=False)
class RequestRecord:
    """One proxied inference as observed by the collector (mutable, filled on the path)."""

    request_id: str
    endpoint: str
    started_wall: float  # time.time() at arrival
    started_mono: float  # time.perf_counter() at arrival
    tenant: str = "anonymous"
    api_key_id: str = ""
    model: str = ""
    stream: bool = False
    tags: dict[str, str] = field(default_factory=dict)
    status: str = "ok"
    http_status: int = 200
    finish_reason: str | None = None
    token_times: list[float] = field(default_factory=list)  # perf_counter of content frames
    finished_mono: float = 0.0
    prompt_tokens: int | None = None  # from the engine's usage; None when it never came
    cached_prompt_tokens: int = 0
    completion_tokens: int | None = None
    overhead_s: float = 0.0  # time the collector itself spent on this request
    body: bytes = b""  # the request as the client sent it (to count an aborted prompt)
    durable: asyncio.Future[None] | None = None  # set when the record is on disk (durable ack)

    @property
    def observed_tokens(self) -> int:
        """Completion tokens counted from the stream (content frames seen so far)."""
        return len(self.token_times)


def _percentile_50(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[mid]
    return (ordered[mid - 1] + ordered[mid]) / 2.0


def inter_token_gaps(token_times: list[float]) -> list[float]:
    """Gaps between consecutive content frames, in seconds."""
    return [b - a for a, b in itertools.pairwise(token_times)]


def to_usage_record(rec: RequestRecord, *, pool: str, replica: str) -> UsageRecord:
    """Derive the metering contract's record from what the proxy observed."""

    def wall(mono: float) -> datetime:
        return datetime.fromtimestamp(rec.started_wall + (mono - rec.started_mono), tz=UTC)

    finished = rec.finished_mono or rec.started_mono
    first_token_at: datetime | None = None
    ttft: float | None = None
    itl_mean = itl_p50 = itl_max = None
    if rec.stream and rec.token_times:
        first = rec.token_times[0]
        first_token_at = wall(first)
        ttft = max(0.0, first - rec.started_mono)
        gaps = inter_token_gaps(rec.token_times)
        if gaps:
            itl_mean = sum(gaps) / len(gaps)
            itl_p50 = _percentile_50(gaps)
            itl_max = max(gaps)
    completion = rec.completion_tokens
    if completion is None:
        completion = rec.observed_tokens
    prompt = rec.prompt_tokens or 0
    return UsageRecord(
        request_id=rec.request_id,
        tenant=rec.tenant,
        model=rec.model or "unknown",
        started_at=datetime.fromtimestamp(rec.started_wall, tz=UTC),
        finished_at=wall(finished),
        status=rec.status,
        api_key_id=rec.api_key_id,
        pool=pool,
        replica=replica,
        endpoint=rec.endpoint,
        stream=rec.stream,
        http_status=rec.http_status,
        finish_reason=rec.finish_reason,
        first_token_at=first_token_at,
        prompt_tokens=prompt,
        cached_prompt_tokens=min(rec.cached_prompt_tokens, prompt),
        completion_tokens=completion,
        ttft_s=ttft,
        itl_mean_s=itl_mean,
        itl_p50_s=itl_p50,
        itl_max_s=itl_max,
        e2e_s=max(0.0, finished - rec.started_mono),
        tags=dict(rec.tags),
    )
