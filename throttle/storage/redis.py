"""Redis state (``redis://host:port/db?prefix=NAME&timeout_ms=250``) shared by throttle replicas.

Each decision is one round trip: one Lua script per atomic operation (``lua/*.lua``, KEYS
and ARGV documented at the top of each), registered once with ``register_script`` and run
with EVALSHA. Every key of the deployment starts with the hash tag ``{prefix}`` so that all
keys of one decision share a slot on Redis Cluster. Times come from the injected clock
(``now`` in ARGV), never from Redis; TTLs are relative so a test clock works too.
"""

from __future__ import annotations

import asyncio
import json
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from infermeter.throttle.errors import StorageError, StorageUnavailable
from infermeter.throttle.storage.base import (
    Capabilities,
    Decision,
    ReserveRequest,
    Settlement,
    SettleUsage,
    Usage,
    UsageRequest,
)
from infermeter.throttle.storage.memory_ledger import FORGET_FACTOR

DEFAULT_PREFIX = "infermeter:throttle"
SIGNALS_TTL_S = 3600
# every decision is a round trip to the server, whose state every replica shares; an
# unreachable server raises StorageUnavailable (FailoverStorage is what degrades)
CAPABILITIES = Capabilities(in_process_decisions=False, shared_state=True)


def _script(name: str) -> str:
    return (
        resources.files("infermeter.throttle.storage")
        .joinpath("lua", f"{name}.lua")
        .read_text("utf-8")
    )


def _f(x: float) -> str:
    return repr(float(x))


def split_uri(uri: str) -> tuple[str, str, float]:
    """``(redis url for the client, key prefix, timeout seconds)`` from a storage URI."""
    parts = urlsplit(uri)
    query = parse_qs(parts.query)
    prefix = query.pop("prefix", [DEFAULT_PREFIX])[0]
    timeout_ms = float(query.pop("timeout_ms", ["250"])[0])
    rest = urlencode({k: v[0] for k, v in query.items()})
    return urlunsplit(parts._replace(query=rest)), prefix, timeout_ms / 1000.0


class RedisStorage:
    """All throttle state in one Redis (or one slot of a Redis Cluster)."""

    name = "redis"

    def __init__(self, uri: str) -> None:
        url, prefix, timeout = split_uri(uri)
        self.prefix = prefix
        self._tag = "{" + prefix + "}"
        self._client = aioredis.Redis.from_url(
            url,
            decode_responses=True,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            max_connections=256,
            health_check_interval=30,
            # one attempt: when Redis is down the failover decides locally at once, rather
            # than after redis-py's default retries with backoff
            retry=Retry(NoBackoff(), 0),
        )
        self._reserve = self._client.register_script(_script("reserve"))
        self._settle = self._client.register_script(_script("settle"))
        self._usage = self._client.register_script(_script("usage"))
        self._put_policy = self._client.register_script(_script("put_policy"))
        self._recommend = self._client.register_script(_script("recommend"))

    @property
    def capabilities(self) -> Capabilities:
        return CAPABILITIES

    def key(self, *parts: str) -> str:
        """A key of this deployment: ``{prefix}:part:part``."""
        return ":".join((self._tag, *parts))

    async def _call(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        try:
            try:
                return await self._evalsha(script.sha, keys, args)
            except NoScriptError:
                return await script(keys=keys, args=args)  # loads the script, runs it
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise StorageUnavailable(f"redis unreachable: {exc}") from exc
        except RedisError as exc:
            raise StorageError(f"redis error: {exc}") from exc

    async def _evalsha(self, sha: str, keys: list[str], args: list[Any]) -> Any:
        """EVALSHA with the command packed here: redis-py's generic packer spends ~0.3 ms of
        CPU per 30-argument call on this machine, more than the rest of a decision."""
        parts = [b"EVALSHA", sha.encode(), b"%d" % len(keys)]
        parts += [k.encode() for k in keys]
        parts += [a.encode() if isinstance(a, str) else str(a).encode() for a in args]
        payload = b"".join(
            [b"*%d\r\n" % len(parts), *(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)]
        )
        pool = self._client.connection_pool
        conn = await pool.get_connection()
        try:
            await conn.send_packed_command(payload, check_health=False)
            return await conn.read_response()
        except (RedisConnectionError, RedisTimeoutError, OSError, asyncio.CancelledError):
            await conn.disconnect()
            raise
        finally:
            await pool.release(conn)

    async def _do(self, coro: Any) -> Any:
        try:
            return await coro
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise StorageUnavailable(f"redis unreachable: {exc}") from exc
        except RedisError as exc:
            raise StorageError(f"redis error: {exc}") from exc

    async def reserve(self, r: ReserveRequest) -> Decision:
        keys = [
            self.key("tat", r.tenant),
            self.key("leases", r.tenant),
            self.key("spend", r.tenant, "d", r.day_key),
            self.key("spend", r.tenant, "m", r.month_key),
            self.key("fair", r.pool),
            self.key("seen", r.pool),
            self.key("res", r.reservation_id),
            self.key("inflight", r.pool),
            self.key("backlog", r.pool),
            self.key("pleases", r.pool),
        ]
        fair = r.fair
        args = [
            _f(r.now),
            _f(r.cost),
            _f(r.rate_per_s),
            _f(r.burst),
            r.concurrency,
            _f(r.lease_expires_at),
            _f(r.record_expires_at),
            _f(r.daily_budget),
            _f(r.day_end),
            _f(r.monthly_budget),
            _f(r.month_end),
            r.tenant,
            _f(r.weight),
            "1" if fair.pressure else "0",
            _f(fair.slack),
            _f(fair.max_lead),
            _f(fair.active_window_s),
            _f(fair.retry_s),
            r.pool,
            r.reservation_id,
            _f(FORGET_FACTOR),
            _f(r.prompt_price),
            _f(r.completion_price),
            _f(r.cached_factor),
            self._tag,
        ]
        out = await self._call(self._reserve, keys, args)
        return Decision(
            allowed=out[0] == "1",
            reason=out[1],
            retry_after_s=float(out[2]),
            remaining=float(out[3]),
            reset_s=float(out[4]),
            in_flight=int(out[5]),
            day_spent=float(out[6]),
            month_spent=float(out[7]),
            fair_counter=float(out[8]),
            fair_floor=float(out[9]) if out[9] != "" else None,
            detail=out[10],
        )

    async def settle(self, reservation_id: str, used: SettleUsage, now: float) -> Settlement | None:
        args = [
            used.prompt_tokens,
            used.cached_prompt_tokens,
            used.completion_tokens,
            _f(now),
            reservation_id,
        ]
        out = await self._call(self._settle, [self.key("res", reservation_id)], args)
        if not out:
            return None
        return Settlement(
            reservation_id, out[0], out[1], float(out[2]), float(out[3]), out[4] == "1"
        )

    async def has_reservation(self, reservation_id: str) -> bool:
        return bool(await self._do(self._client.exists(self.key("res", reservation_id))))

    async def usage(self, q: UsageRequest) -> Usage:
        keys = [
            self.key("tat", q.tenant),
            self.key("leases", q.tenant),
            self.key("spend", q.tenant, "d", q.day_key),
            self.key("spend", q.tenant, "m", q.month_key),
            *(self.key("fair", pool) for pool in q.pools),
        ]
        out = await self._call(
            self._usage, keys, [_f(q.now), _f(q.rate_per_s), _f(q.burst), q.tenant]
        )
        counters = {pool: float(v) for pool, v in zip(q.pools, out[5:], strict=True) if v != ""}
        return Usage(
            float(out[0]), float(out[1]), int(out[2]), float(out[3]), float(out[4]), counters
        )

    async def put_signal(self, pool: str, replica: str, payload: dict[str, Any], ts: float) -> None:
        body = json.dumps({"_ts": ts, **payload})
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.hset(self.key("signals", pool), replica, body)
            pipe.expire(self.key("signals", pool), SIGNALS_TTL_S)
            pipe.sadd(self.key("pools"), pool)
            await self._do(pipe.execute())

    async def signals(self, pool: str, since: float) -> list[dict[str, Any]]:
        raw: dict[str, str] = await self._do(self._client.hgetall(self.key("signals", pool)))
        fresh: list[dict[str, Any]] = []
        stale: list[str] = []
        for replica, body in raw.items():
            payload = json.loads(body)
            ts = float(payload.pop("_ts", 0.0))
            (fresh.append(payload) if ts >= since else stale.append(replica))
        if stale:
            await self._do(self._client.hdel(self.key("signals", pool), *stale))
        return fresh

    async def pools(self) -> list[str]:
        members: set[str] = await self._do(self._client.smembers(self.key("pools")))
        return sorted(members)

    async def forget_pool(self, pool: str) -> None:
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.srem(self.key("pools"), pool)
            pipe.delete(self.key("signals", pool), self.key("history", pool))
            await self._do(pipe.execute())

    async def evict_idle(self, now: float, idle_s: float) -> int:
        return 0  # every tenant key carries its own TTL (reserve.lua)

    async def record_recommendation(
        self, pool: str, ts: float, value: int, keep_s: float
    ) -> list[tuple[float, int]]:
        out = await self._call(
            self._recommend, [self.key("history", pool)], [_f(ts), value, _f(keep_s)]
        )
        return [(float(out[i + 1]), int(out[i].rsplit(":", 1)[1])) for i in range(0, len(out), 2)]

    async def put_policy(self, text: str) -> int:
        return int(await self._call(self._put_policy, [self.key("policy")], [text]))

    async def get_policy(self) -> tuple[int, str] | None:
        raw = await self._do(self._client.hmget(self.key("policy"), "version", "text"))
        if raw[0] is None or raw[1] is None:
            return None
        return int(raw[0]), str(raw[1])

    async def ping(self) -> None:
        await self._do(self._client.ping())

    async def clear(self) -> int:
        """Delete every key of this prefix (tests, ``throttle reset``); returns how many."""
        deleted = 0
        async for key in self._client.scan_iter(match=f"{self._tag}:*", count=500):
            deleted += int(await self._do(self._client.delete(key)))
        return deleted

    async def close(self) -> None:
        await self._client.aclose()  # type: ignore[attr-defined]
