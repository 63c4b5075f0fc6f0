"""Job workers: take jobs from a pool's queue and run them through the inference pipeline.

Each pool gets ``job_concurrency`` workers. A job goes through the same cache / admit /
route / settle path as a synchronous request, streamed upstream so that token deltas reach
the job's event log as they are generated. A job over its tenant's limit is not failed: it
waits (``throttled`` event, status ``waiting``) for the throttle's ``Retry-After`` and asks
again, until its deadline. The queue entry is acknowledged only when the job has ended, so
a worker that dies mid-job leaves it to be redelivered (Redis backend); each delivery is a
new attempt with its own request id (``<job>.<attempt>``), and past ``max_attempts`` the job
is dead-lettered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from infermeter.serving.gateway.cache import CachedAnswer
from infermeter.serving.gateway.errors import GatewayError, QueueError, Throttled
from infermeter.serving.gateway.jobs.model import TERMINAL, Delivery, Job, JobBackend
from infermeter.serving.gateway.pipeline import CacheReply, Caller, Pipeline
from infermeter.serving.gateway.replay import json_body
from infermeter.serving.gateway.requests import parse_inference

log = logging.getLogger(__name__)


class JobRunner:
    """Run the workers of every pool until stopped."""

    def __init__(
        self,
        backend: JobBackend,
        pipeline: Pipeline,
        concurrency: dict[str, int],
        *,
        worker_name: str,
        max_throttle_wait_s: float = 5.0,
        heartbeat_s: float = 5.0,
        now: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.backend = backend
        self.pipeline = pipeline
        self._concurrency = concurrency
        self._name = worker_name
        self._max_wait = max_throttle_wait_s
        self._heartbeat_s = heartbeat_s
        self._now = now
        self._sleep = sleep
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    def start(self) -> None:
        """Start ``concurrency`` worker loops per pool."""
        loop = asyncio.get_running_loop()
        for pool, n in self._concurrency.items():
            for i in range(n):
                self._tasks.append(loop.create_task(self._loop(pool, f"{self._name}-{pool}-{i}")))

    async def stop(self) -> None:
        """Stop taking jobs; jobs in progress are abandoned to redelivery."""
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    async def _loop(self, pool: str, worker: str) -> None:
        while not self._stopping:
            try:
                delivery = await self.backend.claim(pool, worker, block_s=1.0)
            except QueueError as exc:
                log.warning("job queue unavailable: %s", exc)
                await self._sleep(1.0)
                continue
            if delivery is None:
                continue
            beat = asyncio.get_running_loop().create_task(self._beat(delivery, worker))
            try:
                await self.run(delivery)
            except QueueError as exc:
                log.warning("job %s: queue error, left for redelivery: %s", delivery.job_id, exc)
            finally:
                beat.cancel()

    async def _beat(self, delivery: Delivery, worker: str) -> None:
        while True:
            await asyncio.sleep(self._heartbeat_s)
            await self.backend.heartbeat(delivery, worker)

    async def run(self, delivery: Delivery) -> None:
        """Run one delivered job to its end and acknowledge it."""
        job = await self.backend.get(delivery.job_id)
        if job is None or job.status in TERMINAL:
            await self.backend.ack(delivery)
            return
        if delivery.attempt > self.backend.max_attempts > 1:
            await self._fail(job, f"gave up after {delivery.attempt - 1} deliveries")
            await self.backend.dead_letter(delivery, "max_attempts")
            return
        job.status = "running"
        job.attempts = delivery.attempt
        job.started_at = job.started_at or self._now()
        await self.backend.save(job)
        await self.backend.append(job.id, "started", {"attempt": delivery.attempt})
        try:
            await self._execute(job, delivery)
        except GatewayError as exc:
            await self._fail(job, str(exc))
        await self.backend.ack(delivery)

    async def _execute(self, job: Job, delivery: Delivery) -> None:
        req = parse_inference(job.endpoint, orjson.dumps({**job.request, "stream": True}))
        req.include_usage_requested = False
        caller = Caller(job.tenant, job.key_id, job.tier, job.tags)
        rid = f"{job.id}.{delivery.attempt}"
        pending: list[str] = []
        while True:
            try:
                begun = await self.pipeline.begin(
                    caller, req, request_id=rid, on_text=pending.append
                )
                break
            except Throttled as exc:
                remaining = job.deadline_at - self._now()
                if remaining <= 0:
                    await self._fail(job, f"still throttled at the deadline ({exc.reason})")
                    return
                wait = min(max(exc.retry_after_s, 0.05), self._max_wait, remaining)
                if job.status != "waiting":
                    job.status = "waiting"
                    await self.backend.save(job)
                await self.backend.append(
                    job.id, "throttled", {"reason": exc.reason, "retry_after_s": wait}
                )
                await self._sleep(wait)
        if job.status == "waiting":
            job.status = "running"
            await self.backend.save(job)
        if isinstance(begun, CacheReply):
            answer = begun.hit.answer
            await self.backend.append(job.id, "delta", {"text": answer.text})
            await self._succeed(job, req_answer(job, begun.req, answer, rid), answer)
            return
        flight = begun
        if flight.status >= 400:
            body = await flight.read()
            await self._fail(job, f"upstream answered {flight.status}: {body[:500].decode()}")
            return
        async for _ in flight.stream():
            if pending:
                text = "".join(pending)
                pending.clear()
                await self.backend.append(job.id, "delta", {"text": text})
        if pending:
            await self.backend.append(job.id, "delta", {"text": "".join(pending)})
        usage = flight.usage
        answer = CachedAnswer(
            flight.answer_text or "",
            usage.finish_reason,
            usage.prompt_tokens,
            usage.completion_tokens,
        )
        await self._succeed(job, req_answer(job, req, answer, rid), answer)

    async def _succeed(self, job: Job, result: dict[str, Any], answer: CachedAnswer) -> None:
        job.status = "succeeded"
        job.finished_at = self._now()
        job.result = result
        job.usage = {
            "prompt_tokens": answer.prompt_tokens,
            "completion_tokens": answer.completion_tokens,
            "total_tokens": answer.prompt_tokens + answer.completion_tokens,
        }
        job.cost_usd = await self.pipeline.metering.price(
            str(job.request.get("model")), answer.prompt_tokens, answer.completion_tokens
        )
        await self.backend.save(job)
        await self.backend.append(
            job.id, "done", {"result": result, "usage": job.usage, "cost_usd": job.cost_usd}
        )

    async def _fail(self, job: Job, error: str) -> None:
        job.status = "failed"
        job.finished_at = self._now()
        job.error = error
        await self.backend.save(job)
        await self.backend.append(job.id, "failed", {"error": error})


def req_answer(job: Job, req: Any, answer: CachedAnswer, rid: str) -> dict[str, Any]:
    """The job's result in the shape of a non-streamed response."""
    result: dict[str, Any] = orjson.loads(json_body(req, answer, rid))
    result["id"] = job.id
    return result
