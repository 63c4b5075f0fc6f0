"""Cheap accounting of an OpenAI/vLLM server-sent-event stream, chunk by chunk.

Per chunk the scanner only looks for frame boundaries and a few byte patterns: every frame
with a choice is one generation step (vLLM sends one per engine step; a step whose text the
detokenizer holds back, e.g. half a UTF-8 character, arrives with empty text), except the
chat role frame that precedes the first token. Only frames that mention
``"usage"`` are JSON-parsed (normally just the last one), and ``finish_reason`` is read with a
byte search. No frame is decoded otherwise and nothing is tokenised.

When the collector injected ``stream_options.include_usage`` on the client's behalf
(``strip_usage``), the usage-only frame (``"choices":[]``) is removed from the bytes the
client receives; then complete frames are forwarded as soon as their blank line arrives (an
SSE client cannot act on a partial frame anyway). Otherwise every chunk is forwarded
unchanged, as received.
"""

from __future__ import annotations

from typing import Any

import orjson

_DATA = b"data:"
_DONE = b"[DONE]"
_ROLE = b'"role":"'
_CONTENT = b'"content":'
_NO_CONTENT = (b'"content":""', b'"content":null')
_FINISH = b'"finish_reason":"'
_MAX_TAIL = 4 * 1024 * 1024  # a "frame" this long without a blank line is not SSE; stop holding


class SseScanner:
    """Scan one event stream; :meth:`feed` returns the bytes to forward to the client."""

    __slots__ = (
        "_tail",
        "cached_prompt_tokens",
        "completion_tokens",
        "done",
        "error",
        "finish_reason",
        "prompt_tokens",
        "strip_usage",
        "token_times",
    )

    def __init__(self, token_times: list[float], *, strip_usage: bool = False) -> None:
        self.token_times = token_times
        self.strip_usage = strip_usage
        self.prompt_tokens: int | None = None
        self.cached_prompt_tokens = 0
        self.completion_tokens: int | None = None
        self.finish_reason: str | None = None
        self.done = False
        self.error = False
        self._tail = b""

    def feed(self, chunk: bytes, now: float) -> bytes:
        """Account for ``chunk`` (received at ``now``) and return what the client gets."""
        data = self._tail + chunk if self._tail else chunk
        end = data.rfind(b"\n\n")
        crlf = False
        if end < 0 and b"\r\n\r\n" in data:
            crlf = True
            end = data.rfind(b"\r\n\r\n")
        if end < 0:
            if len(data) >= _MAX_TAIL:  # no SSE framing after megabytes: stop holding
                self._tail = b""
                return data if self.strip_usage else chunk
            self._tail = data
            return b"" if self.strip_usage else chunk
        sep = b"\r\n\r\n" if crlf else b"\n\n"
        cut = end + len(sep)
        complete = data[:cut]
        self._tail = data[cut:]
        dropped = False
        kept: list[bytes] = []
        for frame in complete.split(sep):
            if not frame:
                continue
            if self._frame(frame, now):
                dropped = True
            elif self.strip_usage:
                kept.append(frame)
        if not self.strip_usage:
            return chunk
        if not dropped:
            return complete
        return b"".join(f + sep for f in kept)

    def flush(self) -> bytes:
        """Bytes still held at the end of the stream (an unterminated last frame)."""
        tail, self._tail = self._tail, b""
        if tail:
            self._frame(tail, 0.0)
        return tail if self.strip_usage else b""

    def _frame(self, frame: bytes, now: float) -> bool:
        """Account for one frame; True when it must be dropped from the client's copy."""
        at = frame.find(_DATA)
        if at < 0:
            return False  # comment / event-only frame
        payload = frame[at + 5 :].lstrip()
        if payload.startswith(_DONE):
            self.done = True
            return False
        if payload.startswith(b'{"error"'):
            self.error = True
            return False
        if b'"usage"' in payload:
            usage_only = self._usage(payload)
            if usage_only:
                return self.strip_usage
        if b'"choices":[{' in payload and not _role_only(payload):
            self.token_times.append(now)
        if _FINISH in payload:
            start = payload.find(_FINISH) + len(_FINISH)
            stop = payload.find(b'"', start)
            if stop > start:
                self.finish_reason = payload[start:stop].decode("utf-8", "replace")
        return False

    def _usage(self, payload: bytes) -> bool:
        """Read a usage object; True when the frame carries nothing but usage."""
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return False
        if not isinstance(obj, dict):
            return False
        usage = obj.get("usage")
        if isinstance(usage, dict):
            apply_usage(self, usage)
        return isinstance(usage, dict) and not obj.get("choices")


def _role_only(payload: bytes) -> bool:
    """The chat role frame vLLM sends before the first token (carries no token)."""
    if _ROLE not in payload:
        return False
    return _CONTENT not in payload or any(m in payload for m in _NO_CONTENT)


def apply_usage(target: Any, usage: dict[str, Any]) -> None:
    """Copy prompt / cached / completion tokens from an OpenAI ``usage`` object."""
    prompt = usage.get("prompt_tokens")
    if isinstance(prompt, int):
        target.prompt_tokens = prompt
    completion = usage.get("completion_tokens")
    if isinstance(completion, int):
        target.completion_tokens = completion
    details = usage.get("prompt_tokens_details")
    if isinstance(details, dict):
        cached = details.get("cached_tokens")
        if isinstance(cached, int):
            target.cached_prompt_tokens = cached


def parse_body_usage(body: bytes, target: Any) -> str | None:
    """Read usage (and finish_reason) from a non-streamed JSON response body."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(obj, dict):
        return None
    usage = obj.get("usage")
    if isinstance(usage, dict):
        apply_usage(target, usage)
    choices = obj.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        reason = choices[0].get("finish_reason")
        return reason if isinstance(reason, str) else None
    return None
