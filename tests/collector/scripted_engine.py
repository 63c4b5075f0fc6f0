"""A small vLLM-shaped engine for collector tests: a real ASGI app served on loopback.

It speaks the OpenAI routes with vLLM 0.32's exact frame and error shapes (see
tests/vllm_0_32_captures) and can be told, per request, to misbehave: ``x-test-die-after: N``
drops the connection after N content frames, ``x-test-hang`` never answers, and
``x-test-delay-ms`` spaces the frames, ``x-test-spaced-json`` writes them as many
OpenAI-compatible servers other than vLLM do (``"usage": {`` with spaces). It records
what it received and which streams the client (the collector) abandoned.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

MODEL = "tiny-llama"
MAX_MODEL_LEN = 512
WORDS = ["ding", " node", "BY", "seconds", "po", " ABC", "speci", "can", " os", "255"]


class EngineDied(Exception):
    """Raised inside the app to make uvicorn drop the connection mid-response."""


def prompt_tokens(body: dict[str, Any]) -> int:
    if "messages" in body:
        return sum(len(str(m.get("content", "")).split()) + 4 for m in body["messages"])
    prompt = body.get("prompt", "")
    return max(1, len(str(prompt).split()))


class ScriptedEngine:
    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.disconnected: list[int] = []  # frames sent before the client went away
        self.metrics_text = "# TYPE vllm:num_requests_running gauge\n"

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        path = scope["path"]
        self.requests.append((path, headers, body))
        if path == "/health":
            await self._send(send, 200, b"", "text/plain")
        elif path == "/metrics":
            await self._send(send, 200, self.metrics_text.encode(), "text/plain; version=0.0.4")
        elif path == "/v1/models":
            query = scope.get("query_string", b"").decode()
            data = {"object": "list", "data": [{"id": MODEL, "object": "model"}], "q": query}
            await self._send(send, 200, json.dumps(data).encode(), extra=[(b"x-engine", b"yes")])
        elif path in ("/v1/chat/completions", "/v1/completions"):
            await self._generate(path, headers, body, receive, send)
        else:
            await self._send(send, 404, b'{"detail":"Not Found"}')

    @staticmethod
    async def _send(
        send: Any, status: int, body: bytes, ctype: str = "application/json", extra: Any = ()
    ) -> None:
        headers = [
            (b"content-type", ctype.encode()),
            (b"content-length", b"%d" % len(body)),
            *extra,
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _error(self, send: Any, status: int, message: str, param: str | None) -> None:
        kind = "BadRequestError" if status == 400 else "NotFoundError"
        err = {"error": {"message": message, "type": kind, "param": param, "code": status}}
        await self._send(send, status, json.dumps(err).encode())

    async def _generate(
        self, path: str, headers: dict[str, str], raw: bytes, receive: Any, send: Any
    ) -> None:
        if "x-test-hang" in headers:  # answer nothing until the client gives up
            while (await receive())["type"] != "http.disconnect":
                pass
            return
        try:
            body = json.loads(raw)
        except ValueError:
            await self._error(send, 400, "Expecting value: line 1 column 1 (char 0)", None)
            return
        if body.get("model") != MODEL:
            msg = f"The model `{body.get('model')}` does not exist. Valid aliases: {MODEL}."
            await self._error(send, 404, msg, "model")
            return
        n = body.get("max_tokens", 8)
        if not isinstance(n, int) or n > MAX_MODEL_LEN:
            msg = f"max_tokens={n} cannot be greater than max_model_len={MAX_MODEL_LEN}."
            await self._error(send, 400, msg, "max_tokens")
            return
        chat = path == "/v1/chat/completions"
        usage = {"prompt_tokens": prompt_tokens(body), "total_tokens": 0, "completion_tokens": n}
        usage["total_tokens"] = usage["prompt_tokens"] + n
        words = [WORDS[i % len(WORDS)] for i in range(n)]
        if not body.get("stream"):
            if chat:
                choice = {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(words)},
                    "finish_reason": "length",
                }
            else:
                choice = {"index": 0, "text": "".join(words), "finish_reason": "length"}
            out = {
                "id": "cmpl-x",
                "object": "chat.completion" if chat else "text_completion",
                "model": MODEL,
                "choices": [choice],
                "usage": usage,
            }
            await self._send(send, 200, json.dumps(out, separators=(",", ":")).encode())
            return
        await self._stream(headers, body, chat, words, usage, receive, send)

    async def _stream(
        self,
        headers: dict[str, str],
        body: dict[str, Any],
        chat: bool,
        words: list[str],
        usage: dict[str, int],
        receive: Any,
        send: Any,
    ) -> None:
        delay = float(headers.get("x-test-delay-ms", "0")) / 1000
        die_after = int(headers.get("x-test-die-after", "-1"))
        separators = (", ", ": ") if "x-test-spaced-json" in headers else (",", ":")
        gone = asyncio.Event()

        async def watch() -> None:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                gone.set()

        watcher = asyncio.create_task(watch())
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream; charset=utf-8")],
            }
        )
        obj = "chat.completion.chunk" if chat else "text_completion"

        def frame(choice: dict[str, Any] | None, extra: dict[str, Any] | None = None) -> bytes:
            data: dict[str, Any] = {
                "id": "chatcmpl-1",
                "object": obj,
                "created": 1,
                "model": MODEL,
                "choices": [choice] if choice else [],
            }
            data.update(extra or {})
            return b"data: " + json.dumps(data, separators=separators).encode() + b"\n\n"

        def content(text: str, finish: str | None) -> dict[str, Any]:
            if chat:
                return {
                    "index": 0,
                    "delta": {"content": text},
                    "logprobs": None,
                    "finish_reason": finish,
                }
            return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}

        if chat:  # vLLM's role frame precedes the first token; completions have none
            first = content("", None)
            first["delta"] = {"role": "assistant", "content": ""}
            await send({"type": "http.response.body", "body": frame(first), "more_body": True})
        sent = 0
        for i, word in enumerate(words):
            if delay:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(gone.wait(), delay)
            if gone.is_set():
                self.disconnected.append(sent)
                return
            if sent == die_after:
                raise EngineDied("scripted engine death")
            finish = "length" if i == len(words) - 1 else None
            await send(
                {
                    "type": "http.response.body",
                    "body": frame(content(word, finish)),
                    "more_body": True,
                }
            )
            sent += 1  # noqa: SIM113 - also read after an early return
        options = body.get("stream_options") or {}
        if options.get("include_usage"):
            await send(
                {
                    "type": "http.response.body",
                    "body": frame(None, {"usage": usage}),
                    "more_body": True,
                }
            )
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})
        watcher.cancel()
