"""The pure-ASGI proxy: forwards every route to the engine and meters inference requests.

Nothing on the request path but forwarding bytes, finding SSE frames and filling a
:class:`~infermeter.collector.record.RequestRecord`; the record is handed to a sink (a bounded queue
drained by a background task) when the response ends. Status codes, headers and bodies pass
through unchanged, with three documented exceptions: hop-by-hop headers, the gateway secret
(never forwarded upstream) and, for streams whose client did not ask for usage, the
usage-only frame the collector requested on its behalf (``force_usage``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from typing import Protocol

import aiohttp
import orjson

from infermeter.collector.errors import RequestError
from infermeter.collector.proxy_wire import (
    DisconnectWatch,
    forward_headers,
    response_headers,
    send_json,
)
from infermeter.collector.record import RequestRecord
from infermeter.kernel.asgi import BodyTooLarge, Receive, Scope, Send, read_body
from infermeter.kernel.openai_errors import error_body
from infermeter.kernel.request_ids import new_request_id
from infermeter.kernel.sse_usage import SseUsageScanner, StreamUsage, parse_body
from infermeter.kernel.tenancy import (
    TAGS_HEADER,
    MemoisedResolver,
    TenantResolver,
)

REQUEST_ID_HEADER = "x-infermeter-request-id"
CLIENT_REQUEST_ID_TAG = "client_request_id"  # an untrusted caller's own id, kept as a tag
OVERHEAD_HEADER = b"x-infermeter-overhead-ms"
USAGE_STREAM_PATHS = frozenset({"/v1/chat/completions", "/v1/completions"})
MAX_REQUEST_ID = 128
_DURABLE_WAIT_S = 5.0
_DONE_FRAME = b"data: [DONE]\n\n"


class RecordSink(Protocol):
    """Where finished records go (the background pipeline)."""

    def submit(self, rec: RequestRecord) -> None: ...


class ProxyHooks(Protocol):
    """Counters the proxy bumps directly (cheap, no I/O)."""

    def untrusted_tenant(self) -> None: ...

    def client_request_id(self) -> None: ...

    def upstream_error(self, kind: str) -> None: ...


class Proxy:
    """ASGI app that forwards to ``upstream`` through an injected aiohttp session."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        upstream: str,
        resolver: TenantResolver,
        sink: RecordSink,
        hooks: ProxyHooks,
        *,
        metered_paths: Iterable[str],
        force_usage: bool = True,
        overhead_header: bool = True,
        max_tags_bytes: int = 512,
        max_body_bytes: int = 32 * 1024 * 1024,
        wall: Callable[[], float] = time.time,
        mono: Callable[[], float] = time.perf_counter,
        new_id: Callable[[], str] | None = None,
    ) -> None:
        self.session = session
        self.upstream = upstream.rstrip("/")
        self.resolver = resolver
        self.sink = sink
        self.hooks = hooks
        self.metered_paths = frozenset(metered_paths)
        self.force_usage = force_usage
        self.overhead_header = overhead_header
        self.max_tags_bytes = max_tags_bytes
        self.max_body_bytes = max_body_bytes
        self.wall = wall
        self.mono = mono
        self.new_id = new_id or (lambda: new_request_id(wall))
        self._attribute = MemoisedResolver(resolver).resolve

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1003})
            return
        t0 = self.mono()
        try:
            body = await read_body(receive, self.max_body_bytes)
        except ConnectionResetError:
            return
        except BodyTooLarge as exc:
            message = f"request body larger than the collector's limit of {exc.limit} bytes"
            await send_json(send, 413, error_body(413, message, "BadRequestError", "body"))
            return
        path: str = scope["path"]
        if scope["method"] == "POST" and path in self.metered_paths:
            await self._metered(scope, receive, send, body, t0)
        else:
            await self._passthrough(scope, receive, send, body)

    # -- helpers -----------------------------------------------------------------------------

    def _url(self, scope: Scope) -> str:
        raw = scope.get("raw_path") or scope["path"].encode()
        query = scope.get("query_string") or b""
        url = self.upstream + raw.decode("latin-1")
        return f"{url}?{query.decode('latin-1')}" if query else url

    async def _upstream_failure(
        self,
        send: Send,
        exc: BaseException,
        rec: RequestRecord | None,
        extra: list[tuple[bytes, bytes]],
    ) -> None:
        if isinstance(exc, asyncio.TimeoutError):
            status, kind, type_ = 504, "timeout", "UpstreamTimeout"
            message = "the inference engine did not answer in time"
        else:
            status, kind, type_ = 502, "connect", "UpstreamUnavailable"
            message = f"the inference engine is unreachable: {type(exc).__name__}"
        self.hooks.upstream_error(kind)
        if rec is not None:
            rec.status = "error"
            rec.http_status = status
            rec.finished_mono = self.mono()
            self.sink.submit(rec)
        await send_json(send, status, error_body(status, message, type_), extra)

    # -- untouched routes --------------------------------------------------------------------

    async def _passthrough(self, scope: Scope, receive: Receive, send: Send, body: bytes) -> None:
        headers, _ = forward_headers(scope)
        try:
            resp = await self.session.request(
                scope["method"], self._url(scope), headers=headers, data=body or None,
                allow_redirects=False,
            )  # fmt: skip
        except (TimeoutError, aiohttp.ClientError) as exc:
            await self._upstream_failure(send, exc, None, [])
            return
        try:
            out = response_headers(resp, drop_length=False)
            await send({"type": "http.response.start", "status": resp.status, "headers": out})
            async for chunk in resp.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except (TimeoutError, aiohttp.ClientError):
            self.hooks.upstream_error("midstream")
        finally:
            resp.release()

    # -- inference routes --------------------------------------------------------------------

    def _prepare(
        self, scope: Scope, body: bytes, t0: float
    ) -> tuple[RequestRecord, list[tuple[str, str]], bytes, bool]:
        headers, lower = forward_headers(scope)
        request_id = lower.get(REQUEST_ID_HEADER)
        if request_id is not None and (not request_id or len(request_id) > MAX_REQUEST_ID):
            raise RequestError(REQUEST_ID_HEADER, f"must be 1..{MAX_REQUEST_ID} characters")
        tags_raw = lower.get(TAGS_HEADER)
        if tags_raw is not None and len(tags_raw) > self.max_tags_bytes:
            raise RequestError(TAGS_HEADER, f"longer than {self.max_tags_bytes} bytes")
        who = self._attribute(lower)
        if who.untrusted_header:
            self.hooks.untrusted_tenant()
        tags = who.tags
        if request_id is not None and not who.trusted:
            # Metering de-duplicates on the id: a client choosing it could send many requests
            # under one and pay for one. Only the gateway (shared secret) names the id; a
            # client's is kept as a tag and the request gets an id of ours.
            tags = {**tags, CLIENT_REQUEST_ID_TAG: request_id}
            headers = [(k, v) for k, v in headers if k.lower() != REQUEST_ID_HEADER]
            request_id = None
            self.hooks.client_request_id()
        if request_id is None:
            request_id = self.new_id()
            headers.append((REQUEST_ID_HEADER, request_id))
        rec = RequestRecord(
            request_id=request_id,
            endpoint=scope["path"],
            started_wall=self.wall(),
            started_mono=t0,
            tenant=who.tenant,
            api_key_id=who.key_id,
            tags=tags,
            body=body,
        )
        strip = False
        try:
            payload = orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            payload = None
        if isinstance(payload, dict):
            model = payload.get("model")
            if isinstance(model, str):
                rec.model = model
            rec.stream = payload.get("stream") is True
            if rec.stream and self.force_usage and scope["path"] in USAGE_STREAM_PATHS:
                options = payload.get("stream_options")
                if options is None or (
                    isinstance(options, dict) and options.get("include_usage") is not True
                ):
                    payload["stream_options"] = {**(options or {}), "include_usage": True}
                    body = orjson.dumps(payload)
                    strip = True
        return rec, headers, body, strip

    async def _metered(
        self, scope: Scope, receive: Receive, send: Send, body: bytes, t0: float
    ) -> None:
        t_body = self.mono()  # overhead counts our own work, not the client's upload
        try:
            rec, headers, body, strip = self._prepare(scope, body, t0)
        except RequestError as exc:
            await send_json(
                send, exc.status, error_body(exc.status, exc.message, "BadRequestError", exc.field)
            )
            return
        ident = [(REQUEST_ID_HEADER.encode(), rec.request_id.encode())]
        watch = DisconnectWatch(receive, asyncio.current_task())
        if not rec.stream:
            watch.start()  # a stream starts watching once it outlives its first chunk
        rec.overhead_s = self.mono() - t_body
        try:
            try:
                resp = await self.session.request(
                    "POST", self._url(scope), headers=headers, data=body, allow_redirects=False
                )
            except asyncio.CancelledError:
                if not watch.aborted:
                    raise
                self._finish_abort(rec)
                return
            except (TimeoutError, aiohttp.ClientError) as exc:
                await self._upstream_failure(send, exc, rec, ident)
                return
            watch.resp = resp
            try:
                await self._respond(resp, rec, send, strip, ident, watch)
            finally:
                resp.release()
        finally:
            watch.stop()

    def _finish_abort(self, rec: RequestRecord) -> None:
        rec.status = "client_abort"
        rec.http_status = 499
        rec.finished_mono = self.mono()
        self.sink.submit(rec)

    def _overhead_headers(
        self, rec: RequestRecord, ident: list[tuple[bytes, bytes]]
    ) -> list[tuple[bytes, bytes]]:
        if not self.overhead_header:
            return ident
        return [*ident, (OVERHEAD_HEADER, f"{rec.overhead_s * 1000:.3f}".encode())]

    async def _respond(
        self,
        resp: aiohttp.ClientResponse,
        rec: RequestRecord,
        send: Send,
        strip: bool,
        ident: list[tuple[bytes, bytes]],
        watch: DisconnectWatch,
    ) -> None:
        mono = self.mono
        t_headers = mono()
        rec.http_status = resp.status
        if resp.status >= 400:
            rec.status = "error"
        content_type = resp.headers.get("content-type", "")
        streaming = rec.stream and content_type.startswith("text/event-stream")
        if not streaming:
            await self._respond_whole(resp, rec, send, ident, t_headers, watch)
            return
        scanner = SseUsageScanner(rec.token_times, strip_usage=strip)
        out = response_headers(resp, drop_length=True)
        rec.overhead_s += mono() - t_headers
        out.extend(self._overhead_headers(rec, ident))
        await send({"type": "http.response.start", "status": resp.status, "headers": out})
        ended = False
        try:
            async for chunk in resp.content.iter_any():
                t = mono()
                data = scanner.feed(chunk, t)
                rec.overhead_s += mono() - t
                if watch.aborted:
                    break
                if scanner.done and not ended:
                    # [DONE] seen: the stream is over for the client; account, then end it
                    ended = True
                    self._collect(rec, scanner.usage)
                    rec.finished_mono = t
                    self.sink.submit(rec)
                    if rec.durable is not None and data.endswith(_DONE_FRAME):
                        # the tokens go now; only the end of the stream waits for the disk
                        head = data[: -len(_DONE_FRAME)]
                        if head:
                            await send({"type": "http.response.body", "body": head,
                                        "more_body": True})  # fmt: skip
                        data = _DONE_FRAME
                        await self._await_durable(rec)
                    await send({"type": "http.response.body", "body": data, "more_body": False})
                elif data and not ended:
                    await send({"type": "http.response.body", "body": data, "more_body": True})
                    watch.start()
            tail = scanner.flush()
        except (TimeoutError, aiohttp.ClientError) as exc:
            if ended:
                return
            self._collect(rec, scanner.usage)
            if watch.aborted:
                self._finish_abort(rec)
                return
            await self._midstream_failure(rec, send, exc)
            return
        if ended:
            return
        self._collect(rec, scanner.usage)
        if watch.aborted:
            self._finish_abort(rec)
            return
        if scanner.error:
            rec.status = "error"
        rec.finished_mono = mono()
        self.sink.submit(rec)
        await self._await_durable(rec)
        await send({"type": "http.response.body", "body": tail, "more_body": False})

    @staticmethod
    def _collect(rec: RequestRecord, usage: StreamUsage) -> None:
        rec.prompt_tokens = usage.prompt_tokens
        rec.cached_prompt_tokens = usage.cached_prompt_tokens
        rec.completion_tokens = usage.completion_tokens
        rec.finish_reason = usage.finish_reason

    async def _midstream_failure(self, rec: RequestRecord, send: Send, exc: BaseException) -> None:
        self.hooks.upstream_error("midstream")
        rec.status = "error"
        rec.http_status = 504 if isinstance(exc, asyncio.TimeoutError) else 502
        rec.finished_mono = self.mono()
        self.sink.submit(rec)
        frame = b"data: " + error_body(
            rec.http_status, "the inference engine stopped mid-stream", "UpstreamError"
        ) + b"\n\n"  # fmt: skip
        await send({"type": "http.response.body", "body": frame, "more_body": False})

    async def _respond_whole(
        self,
        resp: aiohttp.ClientResponse,
        rec: RequestRecord,
        send: Send,
        ident: list[tuple[bytes, bytes]],
        t_headers: float,
        watch: DisconnectWatch,
    ) -> None:
        try:
            body = await resp.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            if watch.aborted:
                self._finish_abort(rec)
                return
            await self._upstream_failure(send, exc, rec, ident)
            return
        t = self.mono()
        if rec.stream and resp.status < 400:
            # asked to stream but the engine answered with a body: count it as one step
            rec.token_times.append(t)
        self._collect(rec, parse_body(body).usage)
        rec.finished_mono = t
        out = response_headers(resp, drop_length=False)
        rec.overhead_s += self.mono() - t_headers
        out.extend(self._overhead_headers(rec, ident))
        self.sink.submit(rec)
        await self._await_durable(rec)
        await send({"type": "http.response.start", "status": resp.status, "headers": out})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    @staticmethod
    async def _await_durable(rec: RequestRecord) -> None:
        if rec.durable is None or rec.durable.done():
            return
        try:
            await asyncio.wait_for(asyncio.shield(rec.durable), _DURABLE_WAIT_S)
        except TimeoutError:
            return
