"""Read usage and answers out of OpenAI-compatible responses, as they pass through.

:class:`StreamTap` sees a server-sent-event stream chunk by chunk. It forwards whole events
at once (no other buffering), records when the first token came, counts content events
(the completion tokens so far if the client aborts), takes the final ``usage`` and, when
asked, assembles the answer text for the semantic cache. When the gateway itself added
``stream_options.include_usage`` the usage-only event is dropped so the client sees exactly
what it asked for. :func:`body_usage` does the same for a non-streamed JSON body.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

# A chunk holding one of these needs its events parsed (usage, finish reason, end, or an
# event whose text is not a plain token); any other chunk is only counted.
_PARSE_MARKERS = (b'"usage"', b'"finish_reason":"', b'"finish_reason": "', b"[DONE]", b"error")


@dataclass(slots=True)
class Usage:
    """Token counts of one response."""

    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None
    reported: bool = False  # the upstream sent a usage object


@dataclass(slots=True)
class Answer:
    """The first choice of a response, enough to replay it from the cache."""

    text: str = ""
    finish_reason: str | None = None
    parts: list[str] = field(default_factory=list)


def _usage_from(obj: dict[str, Any], usage: Usage) -> None:
    raw = obj.get("usage")
    if not isinstance(raw, dict):
        return
    usage.reported = True
    usage.prompt_tokens = _int(raw.get("prompt_tokens"))
    usage.completion_tokens = _int(raw.get("completion_tokens"))
    details = raw.get("prompt_tokens_details")
    if isinstance(details, dict):
        usage.cached_prompt_tokens = _int(details.get("cached_tokens"))


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


class StreamTap:
    """Watch an SSE stream of chat or completion chunks on its way to the client."""

    def __init__(
        self,
        *,
        drop_usage_event: bool,
        capture: bool,
        on_text: Callable[[str], None] | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        self._buf = b""
        self._drop_usage = drop_usage_event
        self._capture = capture
        self._now = now
        self._on_text = on_text
        self._scan_only = not capture and on_text is None
        self.usage = Usage()
        self.answer = Answer()
        self.content_events = 0
        self.first_token_at: float | None = None
        self.done = False

    def feed(self, chunk: bytes) -> bytes:
        """Take raw bytes from upstream; return the bytes to send to the client now."""
        data = self._buf + chunk if self._buf else chunk
        end = data.rfind(b"\n\n")
        if end < 0:
            self._buf = data
            return b""
        complete, self._buf = data[: end + 2], data[end + 2 :]
        if self._scan_only and not any(m in complete for m in _PARSE_MARKERS):
            # Token events only: count them with C-level scans, no per-event work.
            events = complete.count(b"\n\n")
            empty = complete.count(b'"content":""') + complete.count(b'"text":""')
            self.content_events += events - empty
            if self.first_token_at is None and self.content_events:
                self.first_token_at = self._now()
            return complete
        if not self._drop_usage:
            for event in complete.split(b"\n\n"):
                if event:
                    self._inspect(event)
            return complete
        out = []
        for event in complete.split(b"\n\n"):
            if event and self._inspect(event):
                out.append(event + b"\n\n")
        return b"".join(out)

    def flush(self) -> bytes:
        """Whatever trailing bytes are left when the upstream closes."""
        rest, self._buf = self._buf, b""
        return rest

    def _inspect(self, event: bytes) -> bool:
        """Account one event; returns whether it should reach the client."""
        payload = None
        for line in event.split(b"\n"):
            if line.startswith(b"data:"):
                payload = line[5:].strip()
        if payload is None:
            return True
        if payload == b"[DONE]":
            self.done = True
            return True
        if not self._capture and self._on_text is None and not self._needs_parse(payload):
            return True
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return True
        if not isinstance(obj, dict):
            return True
        choices = obj.get("choices")
        if isinstance(choices, list) and choices:
            first = choices[0]
            if isinstance(first, dict):
                self._choice(first)
        if obj.get("usage") is not None:
            _usage_from(obj, self.usage)
            if self._drop_usage and not choices:
                return False
        return True

    def _needs_parse(self, payload: bytes) -> bool:
        """Cheap scan of a token event: count it; parse only usage and finish events."""
        if b'"usage":{' in payload or b'"usage": {' in payload:
            return True
        if b'"finish_reason":"' in payload or b'"finish_reason": "' in payload:
            return True
        for key in (b'"content":"', b'"text":"'):
            at = payload.find(key)
            if at >= 0 and payload[at + len(key) : at + len(key) + 1] != b'"':
                self.content_events += 1
                if self.first_token_at is None:
                    self.first_token_at = self._now()
                break
        return False

    def _choice(self, choice: dict[str, Any]) -> None:
        delta = choice.get("delta")
        text = delta.get("content") if isinstance(delta, dict) else choice.get("text")
        if isinstance(text, str) and text:
            self.content_events += 1
            if self.first_token_at is None:
                self.first_token_at = self._now()
            if self._capture:
                self.answer.parts.append(text)
            if self._on_text is not None:
                self._on_text(text)
        reason = choice.get("finish_reason")
        if isinstance(reason, str):
            self.answer.finish_reason = reason
            self.usage.finish_reason = reason

    def final_answer(self) -> Answer:
        """The assembled first choice (text joined)."""
        self.answer.text = "".join(self.answer.parts)
        return self.answer


def body_usage(body: bytes) -> tuple[Usage, Answer | None]:
    """Usage and first-choice answer of a non-streamed chat or completion response."""
    usage = Usage()
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return usage, None
    if not isinstance(obj, dict):
        return usage, None
    _usage_from(obj, usage)
    choices = obj.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return usage, None
    first = choices[0]
    message = first.get("message")
    text = message.get("content") if isinstance(message, dict) else first.get("text")
    reason = first.get("finish_reason")
    usage.finish_reason = reason if isinstance(reason, str) else None
    if not isinstance(text, str):
        return usage, None
    return usage, Answer(text=text, finish_reason=usage.finish_reason)
