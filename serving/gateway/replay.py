"""Replay a cached answer in the shape the client asked for (JSON body or SSE stream)."""

from __future__ import annotations

import time
from typing import Any

import orjson

from infermeter.serving.gateway.cache import CachedAnswer
from infermeter.serving.gateway.requests import CHAT, InferenceRequest


def _usage(answer: CachedAnswer) -> dict[str, int]:
    return {
        "prompt_tokens": answer.prompt_tokens,
        "completion_tokens": answer.completion_tokens,
        "total_tokens": answer.prompt_tokens + answer.completion_tokens,
    }


def json_body(req: InferenceRequest, answer: CachedAnswer, request_id: str) -> bytes:
    """A non-streamed chat or completion response carrying the cached answer."""
    created = int(time.time())
    choice: dict[str, Any]
    if req.endpoint == CHAT:
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": answer.text},
            "finish_reason": answer.finish_reason,
        }
        obj = "chat.completion"
        prefix = "chatcmpl-"
    else:
        choice = {"index": 0, "text": answer.text, "finish_reason": answer.finish_reason}
        obj = "text_completion"
        prefix = "cmpl-"
    return orjson.dumps(
        {
            "id": prefix + request_id,
            "object": obj,
            "created": created,
            "model": req.model,
            "choices": [choice],
            "usage": _usage(answer),
        }
    )


def sse_events(req: InferenceRequest, answer: CachedAnswer, request_id: str) -> list[bytes]:
    """The server-sent events of a streamed response carrying the cached answer."""
    created = int(time.time())
    chat = req.endpoint == CHAT
    base = {
        "id": ("chatcmpl-" if chat else "cmpl-") + request_id,
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": created,
        "model": req.model,
    }

    def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        return b"data: " + orjson.dumps({**base, "choices": choices, **extra}) + b"\n\n"

    if chat:
        chunks = [
            event([{"index": 0, "delta": {"role": "assistant", "content": ""}}]),
            event([{"index": 0, "delta": {"content": answer.text}, "finish_reason": None}]),
            event([{"index": 0, "delta": {}, "finish_reason": answer.finish_reason}]),
        ]
    else:
        chunks = [
            event([{"index": 0, "text": answer.text, "finish_reason": None}]),
            event([{"index": 0, "text": "", "finish_reason": answer.finish_reason}]),
        ]
    if req.include_usage_requested:
        chunks.append(event([], usage=_usage(answer)))
    chunks.append(b"data: [DONE]\n\n")
    return chunks
