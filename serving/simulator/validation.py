"""Validation of /v1/completions and /v1/chat/completions bodies, as vLLM 0.32 validates.

Error messages for the same mistakes match vLLM's wording where it was captured (unknown
model, ``max_tokens`` over ``max_model_len``, malformed JSON as FastAPI reports it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import orjson

from infermeter.serving.simulator.errors import ModelNotFound, RequestError
from infermeter.serving.simulator.text import chat_prompt_units, completion_prompt_units


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
    prompt_units: list[str] = field(default_factory=list)  # approximate tokens, for prefix caching
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


def _prompt_units_completion(body: dict[str, Any]) -> list[str]:
    prompt = body.get("prompt")
    if prompt is None:
        raise validation_error("missing", "body.prompt", "Field required", body)
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, str):
        return completion_prompt_units(prompt)
    if isinstance(prompt, list) and prompt and all(type(t) is int for t in prompt):
        return completion_prompt_units(prompt)
    if isinstance(prompt, list) and len(prompt) > 1:
        raise RequestError("batched prompts are not supported by the simulator", param="prompt")
    raise RequestError(
        "prompt must be a string, a list of token ids, or a list of one of those", param="prompt"
    )


def _prompt_units_chat(body: dict[str, Any]) -> list[str]:
    messages = body.get("messages")
    if messages is None:
        raise validation_error("missing", "body.messages", "Field required", body)
    if not isinstance(messages, list) or not messages:
        raise RequestError("messages must be a non-empty list", param="messages")
    turns: list[tuple[str, str]] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise RequestError(f"messages[{i}] must be an object with a role", param="messages")
        content = message.get("content")
        role = message["role"]
        if content is None or isinstance(content, str):
            turns.append((role, content or ""))
        elif isinstance(content, list):
            texts = []
            for part in content:
                if not isinstance(part, dict) or part.get("type") != "text":
                    raise RequestError(
                        f"messages[{i}].content: only text parts are supported by the simulator",
                        param="messages",
                    )
                texts.append(str(part.get("text", "")))
            turns.append((role, "".join(texts)))
        else:
            raise RequestError(
                f"messages[{i}].content must be a string or a list of parts", param="messages"
            )
    return chat_prompt_units(turns)


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
    units = _prompt_units_chat(body) if chat else _prompt_units_completion(body)
    prompt_tokens = len(units)
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
        prompt_units=units,
        prompt_key=orjson.dumps(key_source, option=orjson.OPT_SORT_KEYS),
    )
