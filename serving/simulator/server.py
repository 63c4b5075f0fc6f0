"""The simulator's HTTP server: a raw ASGI app (no framework on the streaming path).

Routes as vLLM's OpenAI server: ``GET /health``, ``/metrics``, ``/version``, ``/v1/models``,
``POST /v1/completions``, ``/v1/chat/completions`` (streaming or not) and ``/tokenize``;
``GET /openapi.json`` is :mod:`openapi`'s document, which also decides 404 and 405. Each generation
request becomes a :class:`SimRequest` in the one :class:`Engine`; the engine loop wakes the
handler when the request has new tokens and the handler writes every pending chunk in one
``send``. A client that disconnects aborts its request (its KV is freed, the tokens already
generated stay counted, as in vLLM). :class:`RequestError` becomes an HTTP status here only.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
import zlib
from collections.abc import Callable
from typing import Any

import orjson
from prometheus_client import generate_latest

from infermeter.kernel.asgi import BodyTooLarge, Receive, Scope, Send, read_body
from infermeter.kernel.openai_errors import error_body
from infermeter.kernel.openapi import (
    allowed_methods,
    document_bytes,
    method_not_allowed,
    not_found,
)
from infermeter.serving.simulator.engine import FINISHED, Engine, SimRequest
from infermeter.serving.simulator.errors import RequestError
from infermeter.serving.simulator.ledger import StepLedger
from infermeter.serving.simulator.loop import EngineLoop, Sleep, model_clock
from infermeter.serving.simulator.metrics import CONTENT_TYPE, VllmMetrics
from infermeter.serving.simulator.openapi import simulator_openapi
from infermeter.serving.simulator.responses import (
    DONE,
    VLLM_VERSION,
    ChunkWriter,
    completion_body,
    models_body,
    new_id,
)
from infermeter.serving.simulator.settings import (
    SimulatorSettings,
    build_profile,
    cache_config_labels,
)
from infermeter.serving.simulator.text import (
    CompletionPlan,
    OutputLength,
    block_hashes,
    plan_completion,
)
from infermeter.serving.simulator.validation import ParsedRequest, parse_request

JSON_HEADERS = [(b"content-type", b"application/json"), (b"vary", b"Origin")]
SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"vary", b"Origin")]
FAST_MODE_LOOKAHEAD = 32  # tokens a stream may run ahead of its client at time scale 0
MAX_BODY_BYTES = 32 * 1024 * 1024  # a longer request body is 413 naming the limit
INSTRUMENTED = {"/v1/models", "/v1/completions", "/v1/chat/completions", "/version"}


class _Wakeup:
    """Wakes one handler when its request has progress (no lost wake-ups)."""

    __slots__ = ("_dirty", "_waiter")

    def __init__(self) -> None:
        self._dirty = False
        self._waiter: asyncio.Future[None] | None = None

    def notify(self) -> None:
        self._dirty = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self) -> None:
        if not self._dirty:
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
            self._waiter = None
        self._dirty = False


class SimulatorApp:
    """ASGI application of one simulated vLLM replica."""

    def __init__(
        self,
        settings: SimulatorSettings,
        *,
        sleep: Sleep = asyncio.sleep,
        wall: Callable[[], float] = time.monotonic,
        epoch: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.profile = build_profile(settings)
        perf = self.profile.perf
        self.served = settings.served_name
        self.max_model_len = self.profile.max_model_len
        self.epoch = epoch
        self.wall = wall
        self.metrics = VllmMetrics(
            self.served,
            cache_config=cache_config_labels(settings, perf, self.max_model_len),
            simulator_labels={
                "simulator": "true",
                "gpu": perf.gpu.model_name,
                "mig_profile": perf.gpu.mig_profile,
                "model_profile": perf.model.name,
                "quantization": perf.quantization.name,
                "tensor_parallel_size": str(perf.tp),
                "replica": settings.replica,
            },
        )
        self.engine = Engine(
            perf,
            self.metrics,
            max_num_seqs=settings.max_num_seqs,
            max_num_batched_tokens=settings.max_num_batched_tokens,
            clock=model_clock(settings.time_scale, wall),
            lookahead=FAST_MODE_LOOKAHEAD if settings.time_scale == 0 else None,
            prefix_caching=settings.enable_prefix_caching,
            ledger=StepLedger(settings.ledger, perf) if settings.ledger else None,
        )
        self.loop = EngineLoop(self.engine, time_scale=settings.time_scale, sleep=sleep, wall=wall)
        self.rng = random.Random(settings.seed)
        self.length = OutputLength(settings.output_tokens_median, settings.output_tokens_sigma)
        self.created = int(epoch())
        self.openapi = simulator_openapi(self.served, self.max_model_len)
        self.openapi_bytes = document_bytes(self.openapi)

    # -- ASGI ---------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(receive, send)
            return
        if kind != "http":
            return
        self.loop.start()
        path = scope["path"]
        method = scope["method"]
        started = self.wall()
        status, request_bytes, response_bytes = 200, 0, 0
        try:
            allow = allowed_methods(self.openapi, path)
            if allow is None:
                status = 404
                await not_found(send, path)
            elif method not in allow:
                status = 405
                await method_not_allowed(send, allow)
            elif path in ("/v1/completions", "/v1/chat/completions", "/tokenize"):
                try:
                    raw = await read_body(receive, MAX_BODY_BYTES)
                except BodyTooLarge as exc:
                    status = 413
                    message = f"request body larger than {exc.limit} bytes (the limit)"
                    await _respond(
                        send, 413, JSON_HEADERS, error_body(413, message, "BadRequestError", "body")
                    )
                    return
                except ConnectionResetError:
                    status = 499  # the client left before sending its whole request
                    return
                request_bytes = len(raw)
                if path == "/tokenize":
                    status = await self._tokenize(raw, send)
                else:
                    status, response_bytes = await self._generate(
                        raw, path == "/v1/chat/completions", receive, send, _client_id(scope)
                    )
            elif path == "/health":
                await send({"type": "http.response.start", "status": 200, "headers": []})
                await send({"type": "http.response.body", "body": b""})
            elif path == "/metrics":
                body = generate_latest(self.metrics.registry)
                headers = [(b"content-type", CONTENT_TYPE.encode()), (b"vary", b"Origin")]
                await _respond(send, 200, headers, body)
            elif path == "/v1/models":
                body = models_body(
                    self.served, self.settings.model, self.max_model_len, self.created
                )
                response_bytes = len(body)
                await _respond(send, 200, JSON_HEADERS, body)
            elif path == "/version":
                body = b'{"version":"' + VLLM_VERSION.encode() + b'"}'
                response_bytes = len(body)
                await _respond(send, 200, JSON_HEADERS, body)
            else:  # /openapi.json
                await _respond(send, 200, JSON_HEADERS, self.openapi_bytes)
        finally:
            if path in INSTRUMENTED:
                self.metrics.http.observe(
                    path, method, status, request_bytes, response_bytes, self.wall() - started
                )

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.loop.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.loop.stop()
                if self.engine.ledger is not None:
                    self.engine.ledger.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _plain(self, send: Send, status: int, body: bytes) -> int:
        await _respond(send, status, JSON_HEADERS, body)
        return status

    async def _tokenize(self, raw: bytes, send: Send) -> int:
        """vLLM's ``POST /tokenize``: the prompt's token count as a completion would see it."""
        try:
            body = orjson.loads(raw)
            if not isinstance(body, dict):
                raise orjson.JSONDecodeError("not an object", "", 0)
        except orjson.JSONDecodeError:
            return await self._plain(
                send, 400, error_body(400, "invalid JSON body", "BadRequestError", "body")
            )
        query = {**body, "max_tokens": 1, "stream": False}
        query.pop("stream_options", None)
        try:
            parsed = parse_request(
                orjson.dumps(query), chat="messages" in body, served_model=self.served,
                max_model_len=self.max_model_len,
            )  # fmt: skip
        except RequestError as exc:
            err = error_body(exc.status, exc.message, exc.error_type, exc.param)
            return await self._plain(send, exc.status, err)
        ids = [zlib.crc32(unit.encode()) % 32000 for unit in parsed.prompt_units]
        ids = ids[: parsed.prompt_tokens] + [0] * (parsed.prompt_tokens - len(ids))
        out = {"count": parsed.prompt_tokens, "max_model_len": self.max_model_len,
               "tokens": ids, "token_strs": None}  # fmt: skip
        return await self._plain(send, 200, orjson.dumps(out))

    # -- generation ---------------------------------------------------------------------
    def _plan(self, parsed: ParsedRequest) -> CompletionPlan:
        if parsed.seed is not None:
            rng = random.Random(parsed.seed)
        elif parsed.temperature == 0:
            digest = hashlib.blake2b(parsed.prompt_key, digest_size=8).digest()
            rng = random.Random(int.from_bytes(digest, "big") ^ self.settings.seed)
        else:
            rng = random.Random(self.rng.getrandbits(64))
        return plan_completion(
            rng,
            parsed.max_tokens,
            ignore_eos=parsed.ignore_eos,
            stop=parsed.stop,
            length=self.length,
        )

    async def _generate(
        self, raw: bytes, chat: bool, receive: Receive, send: Send, client_id: str | None = None
    ) -> tuple[int, int]:
        try:
            parsed = parse_request(
                raw, chat=chat, served_model=self.served, max_model_len=self.max_model_len
            )
        except RequestError as exc:
            body = error_body(exc.status, exc.message, exc.error_type, exc.param)
            await _respond(send, exc.status, JSON_HEADERS, body)
            return exc.status, len(body)
        plan = self._plan(parsed)
        wakeup = _Wakeup()
        hashes = (
            block_hashes(parsed.prompt_units, self.settings.block_size)
            if self.settings.enable_prefix_caching
            else []
        )
        req = SimRequest(
            new_id(chat),
            parsed.prompt_tokens,
            plan,
            parsed.max_tokens,
            wakeup.notify,
            hashes,
            streaming=parsed.stream,
        )
        if client_id:
            req.ledger_key = client_id
        created = int(self.epoch())
        watcher = asyncio.get_running_loop().create_task(_watch_disconnect(receive, wakeup))
        self.engine.add(req)
        self.loop.wake()
        try:
            if parsed.stream:
                await self._stream(req, parsed, created, wakeup, watcher, send)
                return 200, 0
            while req.status != FINISHED:
                await wakeup.wait()
                if watcher.done():
                    self.engine.abort(req)
                    return 200, 0
            body = completion_body(
                req.request_id,
                created,
                self.served,
                chat=chat,
                text=plan.full_text(),
                finish_reason=plan.finish_reason,
                stop_reason=plan.stop_reason,
                prompt_tokens=req.prompt_tokens,
                completion_tokens=req.num_output,
                cached_tokens=(
                    req.cached_tokens if self.settings.enable_prompt_tokens_details else None
                ),
                token_ids=[plan.token_id(i) for i in range(req.num_output)]
                if parsed.return_token_ids
                else None,
            )
            await _respond(send, 200, JSON_HEADERS, body)
            return 200, len(body)
        finally:
            watcher.cancel()

    async def _stream(
        self,
        req: SimRequest,
        parsed: ParsedRequest,
        created: int,
        wakeup: _Wakeup,
        watcher: asyncio.Task[None],
        send: Send,
    ) -> None:
        writer = ChunkWriter(
            req.request_id,
            created,
            self.served,
            chat=parsed.chat,
            prompt_tokens=req.prompt_tokens,
            continuous_usage=parsed.continuous_usage,
            token_ids=parsed.return_token_ids,
        )
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        plan = req.plan
        paced = self.engine.lookahead is not None
        if paced:
            req.delivered = 0
        last = req.target - 1
        sent = 0
        chat = parsed.chat
        while True:
            await wakeup.wait()
            if watcher.done():
                self.engine.abort(req)
                return
            upto = req.num_output
            parts: list[bytes] = []
            if sent == 0 and upto and chat:
                parts.append(writer.role())
            for i in range(sent, upto):
                if i == last:
                    parts.append(
                        writer.final(
                            plan.json_text(i),
                            plan.finish_reason,
                            plan.stop_reason,
                            i + 1,
                            plan.token_id(i),
                        )
                    )
                elif not chat or plan.pieces[i] >= 0:
                    parts.append(writer.token(plan.json_text(i), i + 1, plan.token_id(i)))
            sent = upto
            if paced:  # fast mode: the engine may be holding this stream back
                req.delivered = upto
                self.loop.wake()
            if req.status == FINISHED:
                if parsed.include_usage:
                    if self.settings.enable_prompt_tokens_details:
                        writer.cached_tokens = req.cached_tokens
                    parts.append(writer.usage_chunk(req.num_output))
                parts.append(DONE)
                await send({"type": "http.response.body", "body": b"".join(parts)})
                return
            if parts:
                await send(
                    {"type": "http.response.body", "body": b"".join(parts), "more_body": True}
                )


async def _watch_disconnect(receive: Receive, wakeup: _Wakeup) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            wakeup.notify()
            return


async def _respond(
    send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def create_app(settings: SimulatorSettings, **kwargs: Any) -> SimulatorApp:
    """The ASGI app for ``settings`` (raises ProfileError when it cannot run)."""
    return SimulatorApp(settings, **kwargs)


def _client_id(scope: Scope) -> str | None:
    """The request id a metering proxy in front of the simulator put on the request."""
    for name, value in scope["headers"]:
        if name == b"x-infermeter-request-id":
            return value.decode("latin-1")
    return None
