"""Redis Streams job backend (``redis://host:port/db?prefix=name``): several gateways, one queue.

Keys (``P`` = prefix)::

    P:job:<id>        string   the job record (JSON), expires retention_s after the end
    P:events:<id>     stream   the job's event log; entry ids are the SSE event ids
    P:queue:<pool>    stream   pending jobs of a pool, consumer group ``workers``
    P:dead:<pool>     stream   jobs that failed max_attempts deliveries
    P:active:<tenant> set      ids of the tenant's jobs not yet finished (the per-tenant cap)

A job is accepted only once its record, its ``queued`` event, its queue entry and its place
in the tenant's active set are written by one Lua script (``lua/submit.lua``), so a gateway
restart after the 202 loses nothing; the script refuses the job (:class:`TooManyJobs`) when
the tenant already has ``max_per_tenant`` jobs queued or running, counted across every
gateway on the prefix. Saving a finished job takes it out of the set. Workers read with
XREADGROUP and XACK only after the job finished. A worker that dies leaves its entry
pending; once idle longer than ``claim_idle_s`` another worker takes it with XAUTOCLAIM
(live workers refresh their claim with XCLAIM ... JUSTID as a heartbeat). The delivery
count of the pending entry is the attempt number; past ``max_attempts`` the job is
dead-lettered and marked failed.
"""

from __future__ import annotations

import re
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from infermeter.serving.gateway.errors import QueueError, TooManyJobs
from infermeter.serving.gateway.jobs.model import TERMINAL, Delivery, Job, JobEvent

GROUP = "workers"
_EVENT_ID = re.compile(r"^\d+-\d+$")


def _script(name: str) -> str:
    return (
        resources.files("infermeter.serving.gateway.jobs")
        .joinpath("lua", f"{name}.lua")
        .read_text("utf-8")
    )


def split_uri(uri: str) -> tuple[str, str]:
    """Separate the ``prefix`` query parameter from a Redis URI."""
    parts = urlsplit(uri)
    query = parse_qs(parts.query)
    prefix = query.pop("prefix", ["infermeter:gateway"])[0]
    rest = urlencode({k: v[0] for k, v in query.items()})
    return urlunsplit((parts.scheme, parts.netloc, parts.path, rest, "")), prefix


class RedisJobs:
    """Job records, queues and event logs in Redis."""

    def __init__(
        self,
        uri: str,
        *,
        max_attempts: int = 3,
        claim_idle_s: float = 30.0,
        retention_s: float = 86_400.0,
        max_per_tenant: int = 100,
    ) -> None:
        url, self.prefix = split_uri(uri)
        self._r = aioredis.Redis.from_url(url)
        self._submit = self._r.register_script(_script("submit"))
        self.max_per_tenant = max_per_tenant
        self._max_attempts = max_attempts
        self._idle_ms = int(claim_idle_s * 1000)
        self._retention = int(retention_s)
        self._groups: set[str] = set()

    def _k(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    async def _group(self, pool: str) -> str:
        key = self._k("queue", pool)
        if key not in self._groups:
            try:
                await self._r.xgroup_create(key, GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
            self._groups.add(key)
        return key

    async def submit(self, job: Job) -> None:
        """Record, ``queued`` event, queue entry and active-set member in one script;
        :class:`TooManyJobs` when the tenant is at ``max_per_tenant``."""
        try:
            queue = await self._group(job.pool)
            accepted = await self._submit(
                keys=[
                    self._k("active", job.tenant),
                    self._k("job", job.id),
                    self._k("events", job.id),
                    queue,
                ],
                args=[
                    job.id,
                    orjson.dumps(job.to_json()),
                    orjson.dumps({"id": job.id}),
                    self.max_per_tenant,
                    self._k("job", ""),
                ],
            )
        except RedisError as exc:
            raise QueueError(f"cannot enqueue job: {exc}") from exc
        if not int(accepted):
            raise TooManyJobs(job.tenant, self.max_per_tenant)

    async def active(self, tenant: str) -> int:
        """How many of the tenant's jobs are counted as queued or running."""
        try:
            return int(await self._r.scard(self._k("active", tenant)))
        except RedisError as exc:
            raise QueueError(f"cannot count jobs: {exc}") from exc

    async def claim(self, pool: str, worker: str, block_s: float) -> Delivery | None:
        """A job abandoned by a dead worker first, else a new one."""
        try:
            queue = await self._group(pool)
            # [next id, claimed entries(, deleted ids on Redis >= 7)]
            claimed = (
                await self._r.xautoclaim(
                    queue, GROUP, worker, self._idle_ms, start_id="0-0", count=1
                )
            )[1]
            if claimed:
                entry_id, fields = claimed[0]
                return await self._delivery(queue, pool, entry_id, fields)
            read = await self._r.xreadgroup(
                GROUP, worker, {queue: ">"}, count=1, block=max(1, int(block_s * 1000))
            )
        except RedisError as exc:
            raise QueueError(f"cannot read the job queue: {exc}") from exc
        if not read:
            return None
        entry_id, fields = read[0][1][0]
        return await self._delivery(queue, pool, entry_id, fields)

    async def _delivery(
        self, queue: str, pool: str, entry_id: bytes, fields: dict[bytes, bytes]
    ) -> Delivery:
        pending = await self._r.xpending_range(queue, GROUP, min=entry_id, max=entry_id, count=1)
        attempt = int(pending[0]["times_delivered"]) if pending else 1
        job_id = fields[b"job"].decode()
        return Delivery(job_id, pool, entry_id.decode(), attempt)

    async def heartbeat(self, delivery: Delivery, worker: str) -> None:
        """Reset the entry's idle time without counting a new delivery."""
        queue = self._k("queue", delivery.pool)
        try:
            await self._r.xclaim(queue, GROUP, worker, 0, [delivery.handle], justid=True)
        except RedisError:
            return

    async def ack(self, delivery: Delivery) -> None:
        """Acknowledge and drop the entry; the job record starts its retention."""
        queue = self._k("queue", delivery.pool)
        try:
            async with self._r.pipeline(transaction=True) as pipe:
                pipe.xack(queue, GROUP, delivery.handle)
                pipe.xdel(queue, delivery.handle)
                pipe.expire(self._k("job", delivery.job_id), self._retention)
                pipe.expire(self._k("events", delivery.job_id), self._retention)
                await pipe.execute()
        except RedisError as exc:
            raise QueueError(f"cannot acknowledge job: {exc}") from exc

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Move the entry to the pool's dead-letter stream."""
        queue = self._k("queue", delivery.pool)
        try:
            async with self._r.pipeline(transaction=True) as pipe:
                pipe.xadd(
                    self._k("dead", delivery.pool),
                    {"job": delivery.job_id, "attempts": delivery.attempt, "reason": reason},
                )
                pipe.xack(queue, GROUP, delivery.handle)
                pipe.xdel(queue, delivery.handle)
                pipe.expire(self._k("job", delivery.job_id), self._retention)
                pipe.expire(self._k("events", delivery.job_id), self._retention)
                await pipe.execute()
        except RedisError as exc:
            raise QueueError(f"cannot dead-letter job: {exc}") from exc

    @property
    def max_attempts(self) -> int:
        """Deliveries before a job is dead-lettered."""
        return self._max_attempts

    async def get(self, job_id: str) -> Job | None:
        """The job record."""
        try:
            raw = await self._r.get(self._k("job", job_id))
        except RedisError as exc:
            raise QueueError(f"cannot read job: {exc}") from exc
        return Job.from_json(orjson.loads(raw)) if raw else None

    async def save(self, job: Job) -> None:
        """Overwrite the job record (keeping its expiry if any); a finished job leaves its
        tenant's active set."""
        try:
            async with self._r.pipeline(transaction=True) as pipe:
                pipe.set(self._k("job", job.id), orjson.dumps(job.to_json()), keepttl=True)
                if job.status in TERMINAL:
                    pipe.srem(self._k("active", job.tenant), job.id)
                await pipe.execute()
        except RedisError as exc:
            raise QueueError(f"cannot write job: {exc}") from exc

    async def append(self, job_id: str, type_: str, data: dict[str, Any]) -> str:
        """XADD to the job's event stream."""
        try:
            entry = await self._r.xadd(
                self._k("events", job_id), {"type": type_, "data": orjson.dumps(data)}
            )
        except RedisError as exc:
            raise QueueError(f"cannot append job event: {exc}") from exc
        return entry.decode() if isinstance(entry, bytes) else str(entry)

    def valid_event_id(self, value: str) -> bool:
        """Whether ``value`` is a stream entry id (``<ms>-<seq>``)."""
        return bool(_EVENT_ID.match(value))

    async def events(self, job_id: str, after: str | None, block_s: float) -> list[JobEvent]:
        """XREAD after ``after`` (blocking up to ``block_s``)."""
        key = self._k("events", job_id)
        try:
            got = await self._r.xread(
                {key: after or "0-0"},
                block=int(block_s * 1000) if block_s > 0 else None,
            )
        except RedisError as exc:
            raise QueueError(f"cannot read job events: {exc}") from exc
        if not got:
            return []
        return [
            JobEvent(eid.decode(), fields[b"type"].decode(), orjson.loads(fields[b"data"]))
            for eid, fields in got[0][1]
        ]

    async def dead_letters(self, pool: str) -> list[dict[str, str]]:
        """Entries of the pool's dead-letter stream (for operators and tests)."""
        rows = await self._r.xrange(self._k("dead", pool))
        return [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in rows]

    async def close(self) -> None:
        """Close the connection pool."""
        await self._r.aclose()  # type: ignore[attr-defined]
