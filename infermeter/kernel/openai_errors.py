"""The OpenAI/vLLM error body, the one error shape every infermeter HTTP service answers.

``{"error": {"message": ..., "type": ..., "param": ..., "code": <http status>}}``: what the
official ``openai`` SDK parses into ``APIStatusError`` and what vLLM's OpenAI server sends.
``param`` names the offending field (or query parameter), ``None`` when no single one is at
fault. The arguments are always in this order: status, message, type, param.
:data:`ERROR_SCHEMA` is the body as JSON Schema, for every OpenAPI document that returns it.
"""

from __future__ import annotations

import json
from typing import Any

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "The OpenAI/vLLM error body",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"], "description": "the field at fault"},
                "code": {"type": ["integer", "string", "null"], "description": "HTTP status"},
            },
        }
    },
}


def error_object(status: int, message: str, type_: str, param: str | None = None) -> dict[str, Any]:
    """The error body as a JSON-ready dict."""
    return {"error": {"message": message, "type": type_, "param": param, "code": status}}


def error_body(status: int, message: str, type_: str, param: str | None = None) -> bytes:
    """The error body as compact UTF-8 JSON bytes."""
    text = json.dumps(
        error_object(status, message, type_, param), ensure_ascii=False, separators=(",", ":")
    )
    return text.encode()


def read_error(raw: bytes, fallback: str = "") -> tuple[str, str | None]:
    """``(message, param)`` of an error body as received; a body that is not this shape
    (plain text, ``{"error": "..."}``) gives its text (at most 300 characters) and no param."""
    text = raw[:300].decode("utf-8", "replace").strip() or fallback
    try:
        obj = json.loads(raw)
    except ValueError:
        return text, None
    err = obj.get("error") if isinstance(obj, dict) else None
    if isinstance(err, str) and err:
        return err, None
    if not isinstance(err, dict):
        return text, None
    message = err.get("message")
    param = err.get("param")
    field = param if isinstance(param, str) and param else None
    return (str(message) if message else text), field
