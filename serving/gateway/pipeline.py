"""The path every inference takes: cache, admit, route, forward, settle, meter.

:meth:`Pipeline.begin` returns either a :class:`CacheReply` (served from the semantic cache,
metered as ``cache_hit`` with the cost it saved) or a :class:`Flight` (an admitted request
with its upstream response open). A flight's body is consumed once, as a stream
(:meth:`Flight.stream`) or whole (:meth:`Flight.read`); when it ends, completes or is
aborted, :meth:`Flight.finish` runs off the response path: it settles the throttle's
reservation with the real usage (tokens seen so far on an abort), stores the answer in the
cache, and meters managed-API calls (self-hosted calls are metered by the collector).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
from prometheus_client import CollectorRegistry, Histogram

from infermeter.kernel.records import UsageRecord
from infermeter.kernel.request_ids import new_request_id
from infermeter.kernel.sse_usage import SseUsageScanner, StreamUsage, parse_body
from infermeter.kernel.tenancy import KEY_ID_HEADER, SECRET_HEADER, TAGS_HEADER, TENANT_HEADER
from infermeter.serving.gateway.cache import CachedAnswer, Hit, Lookup, SemanticCache
from infermeter.serving.gateway.errors import ModelNotFound, Throttled, UpstreamError
from infermeter.serving.gateway.metering_client import MeteringClient
from infermeter.serving.gateway.requests import EMBEDDINGS, InferenceRequest
from infermeter.serving.gateway.throttle_client import Admission, AdmitRequest, ThrottleClient
from infermeter.serving.gateway.upstreams import Upstream, UpstreamResponse

REQUEST_ID_HEADER = "x-infermeter-request-id"
CHARS_PER_TOKEN = 4


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is asking, as the gateway established it."""

    tenant: str
    key_id: str = ""
    tier: str = ""
    tags: Mapping[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class CacheReply:
    """A request answered from the cache."""

    req: InferenceRequest
    hit: Hit
    request_id: str


@dataclass(slots=True)
class Usage:
    """The token counts the gateway settles with the throttle, caches and meters."""

    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None

    @classmethod
    def of(cls, seen: StreamUsage) -> Usage:
        """Counts from what the upstream reported (0 where it reported nothing)."""
        return cls(
            seen.prompt_tokens or 0,
            seen.cached_prompt_tokens,
            seen.completion_tokens or 0,
            seen.finish_reason,
        )


def _ts(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=UTC)


class Pipeline:
    """Wires cache, throttle, upstreams and metering for one gateway process."""

    def __init__(
        self,
        pools: Mapping[str, Upstream],
        throttle: ThrottleClient,
        metering: MeteringClient,
        cache: SemanticCache | None,
        *,
        shared_secret: str,
        default_max_tokens: int,
        registry: CollectorRegistry,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.pools = dict(pools)
        self.overhead = Histogram(
            "infermeter_gateway_overhead_seconds",
            "Gateway time before the upstream call: auth, parsing, cache lookup, admission",
            ["pool"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=registry,
        )
        self.throttle = throttle
        self.metering = metering
        self.cache = cache
        self._secret = shared_secret
        self._default_max_tokens = default_max_tokens
        self._now = now
        self._background: set[asyncio.Task[Any]] = set()

    def upstream_for(self, model: str) -> Upstream:
        """The upstream serving ``model`` (404 when none)."""
        upstream = self.pools.get(model)
        if upstream is None:
            raise ModelNotFound(model)
        return upstream

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run ``coro`` in the background, holding a reference until it ends."""
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def drain(self) -> None:
        """Wait for background settles and metering submissions."""
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)

    def _headers(self, caller: Caller, request_id: str) -> dict[str, str]:
        headers = {
            "content-type": "application/json",
            TENANT_HEADER: caller.tenant,
            REQUEST_ID_HEADER: request_id,
        }
        if self._secret:
            headers[SECRET_HEADER] = self._secret
        if caller.key_id:
            headers[KEY_ID_HEADER] = caller.key_id
        if caller.tags:
            headers[TAGS_HEADER] = ",".join(f"{k}={v}" for k, v in caller.tags.items())
        return headers

    async def begin(
        self,
        caller: Caller,
        req: InferenceRequest,
        *,
        request_id: str | None = None,
        on_text: Callable[[str], None] | None = None,
    ) -> CacheReply | Flight:
        """Serve from the cache, or admit and open the upstream response."""
        t0 = time.perf_counter()
        upstream = self.upstream_for(req.model)
        rid = request_id or new_request_id()
        started = self._now()
        lookup: Lookup | None = None
        if self.cache is not None:
            lookup = await self.cache.lookup(caller.tenant, req)
            if lookup.hit is not None:
                self.spawn(self._meter_hit(caller, req, lookup.hit, rid, upstream, started))
                return CacheReply(req, lookup.hit, rid)
        max_tokens = 0 if req.endpoint == EMBEDDINGS else req.max_tokens or self._default_max_tokens
        try:
            admission = await self.throttle.admit(
                AdmitRequest(
                    tenant=caller.tenant,
                    model=req.model,
                    pool=upstream.pool,
                    request_id=rid,
                    prompt_chars=req.prompt_chars,
                    max_tokens=max_tokens,
                )
            )
        except Throttled:
            self.spawn(self._meter_throttled(caller, req, rid, upstream, started))
            raise
        model = getattr(upstream, "upstream_model", "") or None
        overhead = time.perf_counter() - t0
        self.overhead.labels(upstream.pool).observe(overhead)
        try:
            resp = await upstream.send(
                req.endpoint, req.upstream_body(model), self._headers(caller, rid)
            )
        except UpstreamError:
            self.spawn(self._settle(admission, Usage(), "error"))
            raise
        flight = Flight(self, caller, req, upstream, admission, lookup, resp, rid, started, on_text)
        flight.overhead_s = overhead
        return flight

    async def _settle(self, admission: Admission, usage: Usage, status: str) -> None:
        await self.throttle.settle(
            admission,
            prompt_tokens=usage.prompt_tokens,
            cached_prompt_tokens=usage.cached_prompt_tokens,
            completion_tokens=usage.completion_tokens,
            status=status,
        )

    def record(
        self,
        caller: Caller,
        req: InferenceRequest,
        rid: str,
        upstream: Upstream,
        started: float,
        **fields: Any,
    ) -> UsageRecord:
        """A gateway-made usage record for this request."""
        finished = self._now()
        tags = dict(caller.tags)
        tags.update(fields.pop("extra_tags", {}))
        return UsageRecord(
            request_id=rid,
            tenant=caller.tenant,
            model=req.model,
            started_at=_ts(started),
            finished_at=_ts(max(finished, started)),
            api_key_id=caller.key_id,
            pool=upstream.pool,
            endpoint=req.endpoint,
            stream=req.stream,
            e2e_s=max(0.0, finished - started),
            upstream=upstream.kind,
            tags=tags,
            **fields,
        )

    async def _meter_hit(
        self,
        caller: Caller,
        req: InferenceRequest,
        hit: Hit,
        rid: str,
        upstream: Upstream,
        started: float,
    ) -> None:
        answer = hit.answer
        saved = await self.metering.price(req.model, answer.prompt_tokens, answer.completion_tokens)
        extra = {"cache_similarity": f"{hit.similarity:.4f}"}
        if saved is not None:
            extra["saved_usd"] = f"{saved:.8f}"
        self.metering.submit(
            self.record(
                caller,
                req,
                rid,
                upstream,
                started,
                status="cache_hit",
                replica="cache",
                finish_reason=answer.finish_reason,
                prompt_tokens=answer.prompt_tokens,
                completion_tokens=answer.completion_tokens,
                extra_tags=extra,
            )
        )

    async def _meter_throttled(
        self, caller: Caller, req: InferenceRequest, rid: str, upstream: Upstream, started: float
    ) -> None:
        self.metering.submit(
            self.record(caller, req, rid, upstream, started, status="throttled", http_status=429)
        )


class Flight:
    """An admitted request whose upstream response is open."""

    def __init__(
        self,
        pipeline: Pipeline,
        caller: Caller,
        req: InferenceRequest,
        upstream: Upstream,
        admission: Admission,
        lookup: Lookup | None,
        resp: UpstreamResponse,
        request_id: str,
        started: float,
        on_text: Callable[[str], None] | None = None,
    ) -> None:
        self._p = pipeline
        self.caller = caller
        self.req = req
        self.upstream = upstream
        self.admission = admission
        self.lookup = lookup
        self.resp = resp
        self.request_id = request_id
        self.started = started
        self.status = resp.status
        self.headers = resp.headers
        capture = lookup is not None and lookup.eligible
        self._parts: list[str] = []
        self._on_text = on_text
        self.tap = SseUsageScanner(
            strip_usage=req.stream and not req.include_usage_requested,
            whole_frames=True,
            on_text=self._text if capture or on_text is not None else None,
        )
        self.usage = Usage()
        self.answer_text: str | None = None
        self.overhead_s = 0.0
        self._finished = False

    async def stream(self) -> AsyncGenerator[bytes, None]:
        """Pass the upstream body through as it arrives; finish when it ends or is aborted."""
        outcome = "client_abort"
        try:
            async for chunk in self.resp.chunks():
                out = self.tap.feed(chunk, self._p._now())
                if out:
                    yield out
            rest = self.tap.flush(self._p._now())
            if rest:
                yield rest
            outcome = "ok" if self.status < 400 else "error"
        except (aiohttp.ClientError, TimeoutError, OSError):
            outcome = "error"
        finally:
            if outcome == "ok" or outcome == "error":
                self.resp.release()
            else:
                self.resp.close()
            self.usage = self._stream_usage()
            self.answer_text = "".join(self._parts)
            reason = self.tap.usage.finish_reason
            self._p.spawn(self.finish(outcome, self.usage, self.answer_text, reason))

    async def read(self) -> bytes:
        """The whole upstream body; finishing is scheduled before returning."""
        try:
            body = await self.resp.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self.resp.close()
            self._p.spawn(self.finish("error", Usage(), None, None))
            raise UpstreamError(f"upstream failed while reading the response: {exc}") from exc
        self.resp.release()
        parsed = parse_body(body)
        usage = self.usage = Usage.of(parsed.usage)
        outcome = "ok" if self.status < 400 else "error"
        self.answer_text = parsed.text
        self._p.spawn(self.finish(outcome, usage, parsed.text, usage.finish_reason))
        return body

    def _text(self, text: str) -> None:
        self._parts.append(text)
        if self._on_text is not None:
            self._on_text(text)

    def _stream_usage(self) -> Usage:
        usage = Usage.of(self.tap.usage)
        if not self.tap.usage.reported:
            # Aborted or cut before the final usage: count what was seen.
            usage.prompt_tokens = self.req.prompt_chars // CHARS_PER_TOKEN
            usage.completion_tokens = self.tap.token_frames
        return usage

    async def finish(
        self, outcome: str, usage: Usage, text: str | None, finish_reason: str | None
    ) -> None:
        """Settle, cache and meter; runs once, off the response path."""
        if self._finished:
            return
        self._finished = True
        await self._p._settle(self.admission, usage, outcome)
        if (
            outcome == "ok"
            and self.status == 200
            and self._p.cache is not None
            and self.lookup is not None
            and text is not None
            and finish_reason in ("stop", "length")
        ):
            self._p.cache.store(
                self.lookup,
                self.req.query_text,
                CachedAnswer(text, finish_reason, usage.prompt_tokens, usage.completion_tokens),
            )
        if self.upstream.kind == "managed":
            first = self.tap.first_token_at
            self._p.metering.submit(
                self._p.record(
                    self.caller,
                    self.req,
                    self.request_id,
                    self.upstream,
                    self.started,
                    status=outcome,
                    http_status=self.status,
                    replica="managed",
                    finish_reason=finish_reason,
                    first_token_at=_ts(first) if first is not None else None,
                    ttft_s=(first - self.started) if first is not None else None,
                    prompt_tokens=usage.prompt_tokens,
                    cached_prompt_tokens=min(usage.cached_prompt_tokens, usage.prompt_tokens),
                    completion_tokens=usage.completion_tokens,
                )
            )
