"""The engine-signal contract: one replica's load, as collectors push it to the throttle.

``POST /v1/signals`` on the throttle takes one :class:`EngineSignals` object per replica and
model (or a list of them); ``GET /v1/signals`` on a collector answers the same list, which is
what the gateway's router polls. The collector derives the values from vLLM's ``/metrics``
(gauges as read, rates from counter deltas, quantiles from histogram deltas); the throttle
validates each numeric field of :data:`SIGNAL_NAMES` and scales pools on them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass(slots=True)
class EngineSignals:
    """One replica's signals for one model (the ``POST /v1/signals`` body)."""

    pool: str
    replica: str
    model: str
    ts: float  # epoch seconds of the scrape the values come from
    num_requests_running: float = 0.0
    num_requests_waiting: float = 0.0
    kv_cache_usage_perc: float = 0.0  # a fraction in [0, 1]
    prompt_tokens_per_s: float = 0.0
    generation_tokens_per_s: float = 0.0
    ttft_p50_s: float | None = None
    ttft_p95_s: float | None = None
    itl_p50_s: float | None = None
    itl_p95_s: float | None = None
    preemptions_per_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


IDENTITY_FIELDS = ("pool", "replica", "model", "ts")
# The numeric signals, in the contract's order: what the throttle validates and scales on.
SIGNAL_NAMES: tuple[str, ...] = tuple(
    f.name for f in fields(EngineSignals) if f.name not in IDENTITY_FIELDS
)
