"""Parse and check OpenAI-compatible inference requests before they go anywhere.

Only what the gateway needs is read (model, stream, limits, the text for the cache and an
estimate of the prompt size for admission); the body is forwarded unchanged except for
``stream_options.include_usage`` on streams (so usage can be settled) and the model name
when a managed upstream calls it differently. Bad input raises :class:`RequestError` naming
the field, which the API turns into a 400.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson

from infermeter.serving.gateway.errors import RequestError

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
EMBEDDINGS = "/v1/embeddings"
ENDPOINTS = (CHAT, COMPLETIONS, EMBEDDINGS)
# Request fields that change the answer; they are part of the cache key.
ANSWER_FIELDS = (
    "max_tokens",
    "max_completion_tokens",
    "stop",
    "top_p",
    "top_k",
    "seed",
    "n",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "logit_bias",
    "response_format",
    "tools",
    "tool_choice",
    "suffix",
    "echo",
    "logprobs",
    "top_logprobs",
    "guided_json",
    "guided_regex",
    "guided_choice",
    "structured_outputs",
)


@dataclass(slots=True)
class InferenceRequest:
    """A parsed chat or completion request."""

    endpoint: str
    body: dict[str, Any]
    model: str
    stream: bool
    max_tokens: int | None
    temperature: float | None
    prompt_chars: int
    query_text: str  # what the semantic cache embeds: the last user turn or the prompt
    context_key: str  # hash of everything else that shapes the answer
    include_usage_requested: bool

    def upstream_body(self, model: str | None = None) -> bytes:
        """The body to forward: usage requested on streams, model renamed if asked."""
        body = self.body
        if (self.stream and not self.include_usage_requested) or model:
            body = dict(body)
            if self.stream and not self.include_usage_requested:
                options = dict(body.get("stream_options") or {})
                options["include_usage"] = True
                body["stream_options"] = options
            if model:
                body["model"] = model
        return orjson.dumps(body)


def _text_of(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    if isinstance(content, list):
        parts = []
        for i, part in enumerate(content):
            if not isinstance(part, dict):
                raise RequestError("content parts must be objects", f"{where}[{i}]")
            if part.get("type") == "text" and isinstance(part.get("text"), str):
                parts.append(part["text"])
            else:
                parts.append(orjson.dumps(part).decode())
        return "\n".join(parts)
    raise RequestError("must be a string or a list of content parts", where)


def _number(body: dict[str, Any], name: str) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RequestError(f"'{name}' must be a number", name)
    return float(value)


def parse_inference(endpoint: str, raw: bytes) -> InferenceRequest:
    """Parse a request body for ``endpoint`` (chat or completions)."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise RequestError(f"request body is not valid JSON: {exc}", None) from exc
    if not isinstance(body, dict):
        raise RequestError("request body must be a JSON object", None)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise RequestError("'model' is required and must be a string", "model")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestError("'stream' must be a boolean", "stream")
    max_tokens_raw = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens_raw is not None and (
        isinstance(max_tokens_raw, bool)
        or not isinstance(max_tokens_raw, int)
        or max_tokens_raw < 1
    ):
        raise RequestError("'max_tokens' must be a positive integer", "max_tokens")
    temperature = _number(body, "temperature")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise RequestError("'stream_options' must be an object", "stream_options")
    include_usage = bool(options and options.get("include_usage"))

    context: dict[str, Any] = {k: body[k] for k in ANSWER_FIELDS if k in body}
    if endpoint == CHAT:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise RequestError("'messages' must be a non-empty array", "messages")
        texts: list[tuple[str, str]] = []
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                raise RequestError("each message needs a string 'role'", f"messages[{i}]")
            texts.append(
                (message["role"], _text_of(message.get("content"), f"messages[{i}].content"))
            )
        prompt_chars = sum(len(t) for _, t in texts)
        last_user = max((i for i, (role, _) in enumerate(texts) if role == "user"), default=-1)
        query = texts[last_user][1] if last_user >= 0 else ""
        # System prompt and every other turn are part of the key, not of the embedding.
        context["messages"] = [t for i, t in enumerate(texts) if i != last_user]
    elif endpoint == COMPLETIONS:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and all(isinstance(p, str) for p in prompt) and prompt:
            query = "\n".join(prompt) if len(prompt) == 1 else ""
            prompt_chars = sum(len(p) for p in prompt)
            context["prompts"] = len(prompt)
        elif isinstance(prompt, str):
            query, prompt_chars = prompt, len(prompt)
        else:
            raise RequestError("'prompt' must be a string or an array of strings", "prompt")
    elif endpoint == EMBEDDINGS:
        items = body.get("input")
        if isinstance(items, str):
            items = [items]
        if not isinstance(items, list) or not items:
            raise RequestError("'input' must be a string or a non-empty array", "input")
        prompt_chars = sum(len(i) if isinstance(i, str) else len(str(i)) for i in items)
        query = ""  # embeddings are never served from the semantic cache
        if stream:
            raise RequestError("embeddings cannot be streamed", "stream")
    else:
        raise RequestError(f"unsupported endpoint {endpoint}", None)
    context["endpoint"] = endpoint
    context_key = hashlib.sha256(orjson.dumps(context, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return InferenceRequest(
        endpoint=endpoint,
        body=body,
        model=model,
        stream=stream,
        max_tokens=max_tokens_raw,
        temperature=temperature,
        prompt_chars=prompt_chars,
        query_text=query,
        context_key=context_key,
        include_usage_requested=include_usage,
    )
