"""JSON Schemas of the OpenAI-compatible API, for the OpenAPI documents that carry it.

The gateway, the collector and the simulator all answer ``/v1/completions``,
``/v1/chat/completions``, ``/v1/embeddings`` and ``/v1/models``; their documents take the
request and response schemas from here, defined once. Requests are permissive where
OpenAI and vLLM are (unknown fields pass: vLLM has many of its own) and a service narrows the
fields it validates itself by passing its own field schemas to the request builders (the
gateway insists on ``model``, the simulator on ``n == 1``). Responses name only the fields
every OpenAI-compatible server sends, so a vLLM, the simulator or a managed API all conform.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from infermeter.kernel.openapi import JSON, SSE, Schema, ref, response

INTEGER_OR_NULL: Schema = {"type": ["integer", "null"]}
POSITIVE_OR_NULL: Schema = {"type": ["integer", "null"], "minimum": 1}
NUMBER_OR_NULL: Schema = {"type": ["number", "null"]}
OBJECT_OR_NULL: Schema = {"type": ["object", "null"]}
STRINGS: Schema = {"type": "array", "items": {"type": "string"}}

CONTENT: Schema = {
    "description": "a string, null, or a list of content parts (objects with a `type`)",
    "anyOf": [{"type": ["string", "null"]}, {"type": "array", "items": {"type": "object"}}],
}
MESSAGE: Schema = {
    "type": "object",
    "required": ["role"],
    "properties": {"role": {"type": "string"}, "content": CONTENT},
}
# Fields both chat and completions share, as OpenAI types them.
SAMPLING_FIELDS: dict[str, Schema] = {
    "model": {"type": "string", "minLength": 1, "description": "the model to use"},
    "stream": {"type": "boolean", "description": "answer as server-sent events"},
    "stream_options": {
        "type": ["object", "null"],
        "properties": {"include_usage": {"type": ["boolean", "null"]}},
    },
    "max_tokens": POSITIVE_OR_NULL,
    "temperature": NUMBER_OR_NULL,
    "top_p": NUMBER_OR_NULL,
    "n": POSITIVE_OR_NULL,
    "seed": INTEGER_OR_NULL,
    "stop": {"anyOf": [{"type": ["string", "null"]}, STRINGS]},
    "user": {"type": ["string", "null"]},
}
CHAT_FIELDS: dict[str, Schema] = {
    **SAMPLING_FIELDS,
    "messages": {"type": "array", "minItems": 1, "items": MESSAGE},
    "max_completion_tokens": POSITIVE_OR_NULL,
}
COMPLETION_FIELDS: dict[str, Schema] = {
    **SAMPLING_FIELDS,
    "prompt": {
        "description": "a string, a list of strings, or token ids",
        "anyOf": [
            {"type": "string"},
            {"type": "array", "minItems": 1, "items": {"type": "string"}},
            {"type": "array", "minItems": 1, "items": {"type": "integer"}},
        ],
    },
}
EMBEDDING_FIELDS: dict[str, Schema] = {
    "model": SAMPLING_FIELDS["model"],
    "input": {
        "anyOf": [{"type": "string"}, {"type": "array", "minItems": 1}],
        "description": "a string or a non-empty list of strings (or token ids)",
    },
    "encoding_format": {"type": ["string", "null"]},
    "dimensions": POSITIVE_OR_NULL,
    "user": {"type": ["string", "null"]},
}

USAGE: Schema = {
    "type": "object",
    "required": ["prompt_tokens", "total_tokens"],
    "properties": {
        "prompt_tokens": {"type": "integer"},
        "completion_tokens": {"type": ["integer", "null"]},
        "total_tokens": {"type": "integer"},
        "prompt_tokens_details": OBJECT_OR_NULL,
    },
}
_CHOICES: Schema = {"type": "array", "items": {"type": "object", "required": ["index"]}}
_RESULT: Schema = {
    "id": {"type": "string"},
    "created": {"type": "integer"},
    "model": {"type": "string"},
    "choices": _CHOICES,
    "usage": {"anyOf": [ref("Usage"), {"type": "null"}]},
}
COMPLETION: Schema = {
    "type": "object",
    "required": ["id", "object", "created", "model", "choices"],
    "properties": {"object": {"const": "text_completion"}, **_RESULT},
}
CHAT_COMPLETION: Schema = {
    "type": "object",
    "required": ["id", "object", "created", "model", "choices"],
    "properties": {"object": {"const": "chat.completion"}, **_RESULT},
}
EMBEDDINGS: Schema = {
    "type": "object",
    "required": ["object", "data", "model"],
    "properties": {
        "object": {"const": "list"},
        "model": {"type": "string"},
        "data": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["index", "embedding"],
                "properties": {
                    "index": {"type": "integer"},
                    "embedding": {
                        "anyOf": [
                            {"type": "array", "items": {"type": "number"}},
                            {"type": "string"},
                        ],
                    },
                },
            },
        },
        "usage": ref("Usage"),
    },
}
MODEL: Schema = {
    "type": "object",
    "required": ["id", "object"],
    "properties": {
        "id": {"type": "string"},
        "object": {"const": "model"},
        "created": {"type": "integer"},
        "owned_by": {"type": "string"},
    },
}
MODEL_LIST: Schema = {
    "type": "object",
    "required": ["object", "data"],
    "properties": {"object": {"const": "list"}, "data": {"type": "array", "items": ref("Model")}},
}
RESPONSE_SCHEMAS: dict[str, Schema] = {
    "Usage": USAGE,
    "Completion": COMPLETION,
    "ChatCompletion": CHAT_COMPLETION,
    "Embeddings": EMBEDDINGS,
    "Model": MODEL,
    "ModelList": MODEL_LIST,
}
# OpenAPI 3.1 has the schema of a ``text/event-stream`` describe each event.
SSE_STREAM: Schema = {
    "type": "object",
    "description": "One server-sent event: a chunk as JSON (the usage chunk last when "
    "`stream_options.include_usage` asked for it), then `[DONE]`",
    "required": ["data"],
    "properties": {
        "event": {"const": "message"},
        "data": {"type": "string", "pattern": r"^(\[DONE\]|\{.*\})$"},
    },
}


def request_schema(
    fields: Mapping[str, Schema],
    required: Sequence[str],
    overrides: Mapping[str, Schema | None] | None = None,
) -> Schema:
    """An open request object: ``fields`` with ``overrides`` applied (None drops a field)."""
    props = dict(fields)
    for name, schema in (overrides or {}).items():
        if schema is None:
            props.pop(name, None)
        else:
            props[name] = schema
    return {"type": "object", "required": list(required), "properties": props}


def chat_request(
    overrides: Mapping[str, Schema | None] | None = None,
    required: Sequence[str] = ("model", "messages"),
) -> Schema:
    """The body of ``POST /v1/chat/completions``."""
    return request_schema(CHAT_FIELDS, required, overrides)


def completion_request(
    overrides: Mapping[str, Schema | None] | None = None,
    required: Sequence[str] = ("model", "prompt"),
) -> Schema:
    """The body of ``POST /v1/completions``."""
    return request_schema(COMPLETION_FIELDS, required, overrides)


def embedding_request(
    overrides: Mapping[str, Schema | None] | None = None,
    required: Sequence[str] = ("model", "input"),
) -> Schema:
    """The body of ``POST /v1/embeddings``."""
    return request_schema(EMBEDDING_FIELDS, required, overrides)


def inference_ok(result: str, headers: Mapping[str, Schema] | None = None) -> Schema:
    """The 200 of a chat or completion route: ``result`` (a schema name) as JSON, or an event
    stream when the request asked for one."""
    return response(
        "The result (an event stream when `stream` is true)",
        {JSON: ref(result), SSE: SSE_STREAM},
        headers,
    )
