"""Async jobs: the job record, its events, and the backend interface queues implement.

A job is accepted (``queued``), picked by a worker (``running``), may wait for the throttle
(``waiting``) and ends ``succeeded`` or ``failed``. Every step appends an event to the job's
event log (``queued``, ``started``, ``throttled``, ``delta``, ``done``, ``failed``); event ids
increase, so a client reconnecting with ``Last-Event-ID`` gets exactly the events after it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

TERMINAL = frozenset({"succeeded", "failed"})
EVENT_TYPES = frozenset({"queued", "started", "throttled", "delta", "done", "failed"})


@dataclass(slots=True)
class Job:
    """One async job and what is known of its outcome."""

    id: str
    pool: str
    tenant: str
    endpoint: str
    request: dict[str, Any]
    created_at: float
    deadline_at: float
    key_id: str = ""
    tier: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    status: str = "queued"
    attempts: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    result: dict[str, Any] | None = None
    usage: dict[str, int] | None = None
    cost_usd: float | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The stored form."""
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Job:
        """Rebuild from the stored form."""
        return cls(**obj)

    def public(self) -> dict[str, Any]:
        """What ``GET /v1/jobs/{id}`` shows."""
        return {
            "id": self.id,
            "object": "job",
            "status": self.status,
            "model": self.request.get("model"),
            "endpoint": self.endpoint,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "attempts": self.attempts,
            "result": self.result,
            "usage": self.usage,
            "cost_usd": self.cost_usd,
            "error": self.error,
            "status_url": f"/v1/jobs/{self.id}",
            "events_url": f"/v1/jobs/{self.id}/events",
        }


@dataclass(frozen=True, slots=True)
class JobEvent:
    """One entry of a job's event log."""

    id: str
    type: str
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Delivery:
    """A job handed to a worker: ``attempt`` counts deliveries (1 = first)."""

    job_id: str
    pool: str
    handle: str
    attempt: int


class JobBackend(Protocol):
    """Job records, per-pool queues and per-job event logs (memory or Redis)."""

    async def submit(self, job: Job) -> None:
        """Store the job, log ``queued`` and enqueue it, atomically; raise
        :class:`~infermeter.serving.gateway.errors.TooManyJobs` instead when the tenant
        already has ``max_per_tenant`` jobs queued or running (saving a job with a terminal
        status frees its place)."""
        ...

    @property
    def max_per_tenant(self) -> int:
        """Jobs one tenant may have queued or running."""
        ...

    async def active(self, tenant: str) -> int:
        """How many of the tenant's jobs count against ``max_per_tenant``."""
        ...

    async def claim(self, pool: str, worker: str, block_s: float) -> Delivery | None:
        """The next job of ``pool`` for ``worker`` (a redelivery first), or None."""
        ...

    async def heartbeat(self, delivery: Delivery, worker: str) -> None:
        """Tell the queue the worker is still on the job (so it is not reclaimed)."""
        ...

    async def ack(self, delivery: Delivery) -> None:
        """The job is finished: remove it from the queue."""
        ...

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Move a job that failed too many deliveries out of the queue."""
        ...

    @property
    def max_attempts(self) -> int:
        """Deliveries before a job is dead-lettered."""
        ...

    async def get(self, job_id: str) -> Job | None:
        """The job record."""
        ...

    async def save(self, job: Job) -> None:
        """Overwrite the job record."""
        ...

    async def append(self, job_id: str, type_: str, data: dict[str, Any]) -> str:
        """Append an event; returns its id."""
        ...

    def valid_event_id(self, value: str) -> bool:
        """Whether ``value`` has the form of this backend's event ids."""
        ...

    async def events(self, job_id: str, after: str | None, block_s: float) -> list[JobEvent]:
        """Events after ``after`` (all when None), waiting up to ``block_s`` for one."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...
