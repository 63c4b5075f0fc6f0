"""The simulator's OpenAPI document: the vLLM routes it answers, served at ``GET /openapi.json``.

No credentials (vLLM's server has none by default). Request bodies are described as
:mod:`validation` checks them: ``model`` is the served name (any other is 404, worded as
vLLM words it), ``n`` is 1, prompts are one string or one list of token ids, and a prompt
plus ``max_tokens`` must fit ``max_model_len``; unknown fields pass, as in vLLM. Every
error is the OpenAI error body, unknown paths (404) and wrong methods (405, with ``Allow``)
included: vLLM's FastAPI answers those two with ``{"detail": ...}``; the simulator keeps the
one error shape of every infermeter service instead.
"""

from __future__ import annotations

from infermeter.kernel.openai_schemas import (
    RESPONSE_SCHEMAS,
    chat_request,
    completion_request,
    inference_ok,
)
from infermeter.kernel.openapi import (
    Schema,
    document,
    error,
    json_response,
    metrics_path,
    openapi_path,
    operation,
    ref,
    response,
)

TOKENIZED: Schema = {
    "type": "object",
    "required": ["count", "max_model_len", "tokens"],
    "properties": {
        "count": {"type": "integer"},
        "max_model_len": {"type": "integer"},
        "tokens": {"type": "array", "items": {"type": "integer"}},
        "token_strs": {"type": ["array", "null"]},
    },
}
VERSION: Schema = {
    "type": "object",
    "required": ["version"],
    "properties": {"version": {"type": "string"}},
}
_PROMPT: Schema = {
    "description": "one string or one list of token ids (a batch of one of them)",
    "anyOf": [
        {"type": "string"},
        {"type": "array", "minItems": 1, "items": {"type": "integer", "minimum": 0}},
        {"type": "array", "minItems": 1, "maxItems": 1, "items": {"type": "string"}},
    ],
}
_TEXT_PART: Schema = {
    "type": "object",
    "required": ["type"],
    "properties": {"type": {"const": "text"}, "text": {"type": "string"}},
}
_MESSAGES: Schema = {
    "type": "array",
    "minItems": 1,
    "items": {
        "type": "object",
        "required": ["role"],
        "properties": {
            "role": {"type": "string"},
            "content": {
                "anyOf": [{"type": ["string", "null"]}, {"type": "array", "items": _TEXT_PART}]
            },
        },
    },
}


def _fields(served: str, max_model_len: int) -> dict[str, Schema | None]:
    tokens: Schema = {"type": ["integer", "null"], "minimum": 1, "maximum": max_model_len}
    return {
        "model": {"enum": [served, None], "description": "the served model name"},
        "n": {"enum": [1, None], "description": "one choice per request"},
        "temperature": {"type": ["number", "null"], "minimum": 0},
        "max_tokens": tokens,
        "ignore_eos": {"type": ["boolean", "null"]},
        "return_token_ids": {"type": ["boolean", "null"]},
        "logprobs": {"enum": [False, None], "description": "not simulated"},
        "stream_options": {
            "type": ["object", "null"],
            "description": "only with `stream: true`",
            "properties": {
                "include_usage": {"type": ["boolean", "null"]},
                "continuous_usage_stats": {"type": ["boolean", "null"]},
            },
        },
    }


def _errors(*, not_found: bool = True) -> dict[str, Schema]:
    out = {
        "400": error(
            "Invalid request; `error.param` names the field (`body.<field>` for a missing "
            "field or malformed JSON, `input_tokens` for a prompt over `max_model_len`)"
        ),
        "413": error("The request body is larger than the limit (32 MiB); `param` is `body`"),
    }
    if not_found:
        out["404"] = error("The model is not the one served here")
    return out


def _generate(op_id: str, summary: str, body: str, result: str) -> Schema:
    return operation(
        op_id,
        summary,
        {"200": inference_ok(result), **_errors()},
        body=ref(body),
        security=[],
        tags=["inference"],
        description="Timed by the performance model; a client that disconnects aborts the "
        "request (its tokens so far stay counted, as in vLLM).",
    )


def _get(op_id: str, summary: str, ok: Schema) -> Schema:
    return operation(op_id, summary, {"200": ok}, security=[], tags=["vllm"])


def simulator_openapi(served: str, max_model_len: int, version: str = "1") -> Schema:
    """The simulator's OpenAPI 3.1 document for one served model."""
    fields = _fields(served, max_model_len)
    chat_fields = {**fields, "messages": _MESSAGES, "max_completion_tokens": fields["max_tokens"]}
    paths: dict[str, Schema] = {
        "/v1/completions": {
            "post": _generate("completion", "Text completion", "CompletionRequest", "Completion")
        },
        "/v1/chat/completions": {
            "post": _generate("chat", "Chat completion", "ChatRequest", "ChatCompletion")
        },
        "/tokenize": {
            "post": operation(
                "tokenize",
                "Count a prompt's tokens as a completion would (vLLM's /tokenize)",
                {"200": json_response("The token count", ref("Tokenized")), **_errors()},
                body={"anyOf": [ref("CompletionRequest"), ref("ChatRequest")]},
                security=[],
                tags=["vllm"],
            )
        },
        "/v1/models": {
            "get": _get("models", "The served model", json_response("Models", ref("ModelList")))
        },
        "/version": {
            "get": _get(
                "version", "vLLM version imitated", json_response("The version", ref("Version"))
            )
        },
        "/health": {"get": _get("health", "Alive (an empty 200, as vLLM)", response("Alive"))},
        **metrics_path("vLLM's metric families (`vllm:` names), labelled as a simulator"),
        **openapi_path(),
    }
    schemas = {
        **RESPONSE_SCHEMAS,
        "CompletionRequest": completion_request({**fields, "prompt": _PROMPT}, ("prompt",)),
        "ChatRequest": chat_request(chat_fields, ("messages",)),
        "Tokenized": TOKENIZED,
        "Version": VERSION,
    }
    return document(
        "infermeter simulator",
        version,
        "A vLLM-compatible server whose timings come from a performance model of continuous "
        "batching on a named GPU (docs/simulator.md).",
        paths,
        schemas,
    )
