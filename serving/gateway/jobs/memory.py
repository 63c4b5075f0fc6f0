"""In-process job backend (``memory://``): the embedded default, one gateway process.

Jobs, queues and event logs live in this process; a restart loses them, which is why
several replicas or restart safety need the Redis backend. Event ids are decimal integers.
Finished jobs are forgotten after ``retention_s``. A tenant with ``max_per_tenant`` jobs
queued or running gets :class:`~infermeter.serving.gateway.errors.TooManyJobs` on submit.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from infermeter.serving.gateway.errors import TooManyJobs
from infermeter.serving.gateway.jobs.model import TERMINAL, Delivery, Job, JobEvent


class MemoryJobs:
    """Queues as asyncio queues, events as lists with a condition to wait on."""

    def __init__(
        self,
        *,
        retention_s: float = 86_400.0,
        max_per_tenant: int = 100,
        now: Callable[[], float] = time.time,
    ) -> None:
        self._jobs: dict[str, Job] = {}
        self._events: dict[str, list[JobEvent]] = {}
        self._queues: defaultdict[str, asyncio.Queue[str]] = defaultdict(asyncio.Queue)
        self._changed: dict[str, asyncio.Condition] = {}
        self._attempts: dict[str, int] = {}
        self._active: defaultdict[str, set[str]] = defaultdict(set)  # tenant -> unfinished ids
        self.max_per_tenant = max_per_tenant
        self._retention = retention_s
        self._now = now

    async def submit(self, job: Job) -> None:
        """Store, log ``queued`` and enqueue; refused when the tenant is at its cap."""
        self._expire()
        active = self._active[job.tenant]
        if len(active) >= self.max_per_tenant:
            raise TooManyJobs(job.tenant, self.max_per_tenant)
        active.add(job.id)
        self._jobs[job.id] = Job.from_json(job.to_json())
        self._events[job.id] = []
        self._changed[job.id] = asyncio.Condition()
        await self.append(job.id, "queued", {"id": job.id})
        self._queues[job.pool].put_nowait(job.id)

    async def claim(self, pool: str, worker: str, block_s: float) -> Delivery | None:
        """The next queued job of ``pool``."""
        try:
            job_id = await asyncio.wait_for(self._queues[pool].get(), timeout=block_s)
        except TimeoutError:
            return None
        attempt = self._attempts.get(job_id, 0) + 1
        self._attempts[job_id] = attempt
        return Delivery(job_id, pool, job_id, attempt)

    async def heartbeat(self, delivery: Delivery, worker: str) -> None:
        """Nothing to do: a job of this process dies with it."""

    async def ack(self, delivery: Delivery) -> None:
        """Forget the delivery count."""
        self._attempts.pop(delivery.job_id, None)

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Nothing is redelivered in process: only forget the delivery."""
        self._attempts.pop(delivery.job_id, None)

    @property
    def max_attempts(self) -> int:
        """In process a job is delivered once."""
        return 1

    async def get(self, job_id: str) -> Job | None:
        """A copy of the job record."""
        job = self._jobs.get(job_id)
        return Job.from_json(job.to_json()) if job is not None else None

    async def save(self, job: Job) -> None:
        """Overwrite the job record; a finished job stops counting against its tenant."""
        self._jobs[job.id] = Job.from_json(job.to_json())
        if job.status in TERMINAL:
            self._forget_active(job.tenant, job.id)

    async def active(self, tenant: str) -> int:
        """How many of the tenant's jobs are queued or running."""
        return len(self._active.get(tenant, ()))

    def _forget_active(self, tenant: str, job_id: str) -> None:
        ids = self._active.get(tenant)
        if ids is not None:
            ids.discard(job_id)
            if not ids:
                del self._active[tenant]

    async def append(self, job_id: str, type_: str, data: dict[str, Any]) -> str:
        """Append an event and wake readers."""
        log = self._events[job_id]
        event = JobEvent(str(len(log) + 1), type_, data)
        log.append(event)
        cond = self._changed[job_id]
        async with cond:
            cond.notify_all()
        return event.id

    def valid_event_id(self, value: str) -> bool:
        """Whether ``value`` is an event id of this backend (a decimal integer)."""
        return value.isdigit()

    async def events(self, job_id: str, after: str | None, block_s: float) -> list[JobEvent]:
        """Events after ``after``; waits up to ``block_s`` when there are none yet."""
        log = self._events.get(job_id)
        if log is None:  # unknown or expired: nothing will come, but never spin a reader
            await asyncio.sleep(block_s)
            return []
        start = int(after) if after and after.isdigit() else 0
        if len(log) <= start and block_s > 0:
            cond = self._changed[job_id]
            async with cond:
                try:
                    await asyncio.wait_for(cond.wait_for(lambda: len(log) > start), timeout=block_s)
                except TimeoutError:
                    return []
        return log[start:]

    async def close(self) -> None:
        """Nothing to release."""

    def _expire(self) -> None:
        cutoff = self._now() - self._retention
        stale = [
            j.id
            for j in self._jobs.values()
            if j.status in TERMINAL and (j.finished_at or j.created_at) < cutoff
        ]
        for job_id in stale:
            self._jobs.pop(job_id, None)
            self._events.pop(job_id, None)
            self._changed.pop(job_id, None)
