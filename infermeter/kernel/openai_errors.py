"""The OpenAI/vLLM error body, the one error shape every infermeter HTTP service answers.

``{"error": {"message": ..., "type": ..., "param": ..., "code": <http status>}}``: what the
official ``openai`` SDK parses into ``APIStatusError`` and what vLLM's OpenAI server sends.
``param`` names the offending field (or query parameter), ``None`` when no single one is at
fault. The arguments are always in this order: status, message, type, param.
"""

from __future__ import annotations

import json
from typing import Any


def error_object(status: int, message: str, type_: str, param: str | None = None) -> dict[str, Any]:
    """The error body as a JSON-ready dict."""
    return {"error": {"message": message, "type": type_, "param": param, "code": status}}


def error_body(status: int, message: str, type_: str, param: str | None = None) -> bytes:
    """The error body as compact UTF-8 JSON bytes."""
    text = json.dumps(
        error_object(status, message, type_, param), ensure_ascii=False, separators=(",", ":")
    )
    return text.encode()
