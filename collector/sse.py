"""Cheap accounting of an OpenAI/vLLM server-sent-event stream, chunk by chunk.

Per chunk the scanner does a handful of C-level byte searches and no per-frame Python work:
it counts frames (two newlines each: JSON escapes newlines, and vLLM and OpenAI send one
``data:`` line per event) and subtracts those that carry no token, found by markers that
contain raw double quotes and so can never occur inside a JSON string value: the chat role
frame vLLM sends before the first token, the usage-only frame (``"choices":[]``), ``[DONE]``
and error frames (the last three only in the last 4 KiB of a chunk, where a stream ends).
Every other frame is one generation step (vLLM sends one per engine step; a step whose text the
detokenizer holds back, e.g. half a UTF-8 character, arrives with empty text). Only the frame
holding ``"usage":{`` is JSON-parsed (normally the last one); ``finish_reason`` is read with a
byte search. Nothing is tokenised.

When the collector injected ``stream_options.include_usage`` on the client's behalf
(``strip_usage``), the usage-only frame is cut from the bytes the client receives; then
complete frames are forwarded as soon as their blank line arrives (an SSE client cannot act
on a partial frame anyway). Otherwise every chunk is forwarded unchanged, as received.
"""

from __future__ import annotations

from typing import Any

import orjson

_TAIL_WINDOW = 4096  # usage, [DONE] and error frames end a stream: look for them here
_ERROR = b'data: {"error"'
_USAGE = b'"usage":{'
_USAGE_ONLY = b'"choices":[]'
_ROLE_FRAMES = (
    b'"delta":{"role":"assistant","content":""}',
    b'"delta":{"role":"assistant"}',
    b'"delta":{"role":"assistant","content":null}',
)
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
        if end < 0 and b"\r\n\r\n" in data:
            data = data.replace(b"\r\n", b"\n")  # CRLF framing: account on a normalised copy
            end = data.rfind(b"\n\n")
        if end < 0:
            if len(data) >= _MAX_TAIL:  # no SSE framing after megabytes: stop holding
                self._tail = b""
                return data if self.strip_usage else chunk
            self._tail = data
            return b"" if self.strip_usage else chunk
        cut = end + 2
        complete = data[:cut] if cut < len(data) else data
        self._tail = data[cut:] if cut < len(data) else b""
        out = self._account(complete, now)
        return out if self.strip_usage else chunk

    def flush(self) -> bytes:
        """Bytes still held at the end of the stream (an unterminated last frame)."""
        tail, self._tail = self._tail, b""
        if not tail:
            return b""
        out = self._account(tail + b"\n\n", 0.0)
        return out[:-2] if self.strip_usage else b""

    def _account(self, frames: bytes, now: float) -> bytes:
        """Account for whole frames; returns them, less the usage-only frame in strip mode."""
        # One ``data:`` line per event (vLLM, OpenAI): two newlines per frame. Each pass over
        # the bytes costs ~0.4 ns/byte, so only the frame count scans the whole chunk; the
        # frames that close a stream (usage, [DONE], error) are looked for in its tail only.
        n = frames.count(b"\n") // 2
        if not n:
            return frames
        skip = 0
        if not self.token_times:  # the chat role frame precedes the first token
            head = frames[:512]
            if b'"role":"assistant"' in head and any(m in head for m in _ROLE_FRAMES):
                skip += 1
        window = max(0, len(frames) - _TAIL_WINDOW)
        done = frames.endswith(b"data: [DONE]\n\n")
        if done:
            self.done = True
            skip += 1
        # an error frame ends a failed stream (then [DONE] in vLLM); chunks are small
        # mid-stream, so only a long chunk that does not end the stream skips this search
        if (done or not window) and frames.find(_ERROR, window) >= 0:
            self.error = True
            skip += 1
        at = frames.rfind(_USAGE, window)  # backwards: the usage frame sits at the very end
        if at >= 0:
            frames, usage_only = self._usage(frames, at)
            skip += usage_only
        tokens = n - skip
        if tokens > 0:
            if tokens == 1:
                self.token_times.append(now)
            else:
                self.token_times.extend([now] * tokens)
        at = frames.rfind(_FINISH, window)
        if at >= 0:
            start = at + len(_FINISH)
            stop = frames.find(b'"', start)
            if stop > start:
                self.finish_reason = frames[start:stop].decode("utf-8", "replace")
        return frames

    def _usage(self, frames: bytes, pos: int) -> tuple[bytes, int]:
        """Read the (last, cumulative) usage at ``pos``; cut a usage-only frame in strip mode."""
        start = frames.rfind(b"\n\n", 0, pos)
        start = 0 if start < 0 else start + 2
        stop = frames.find(b"\n\n", pos)
        stop = len(frames) if stop < 0 else stop + 2
        frame = frames[start:stop]
        try:
            obj = orjson.loads(frame[frame.find(b"{") :])
        except orjson.JSONDecodeError:
            obj = None
        if isinstance(obj, dict) and isinstance(obj.get("usage"), dict):
            apply_usage(self, obj["usage"])
        if _USAGE_ONLY not in frame:
            return frames, 0
        if self.strip_usage:
            frames = frames[:start] + frames[stop:]
        return frames, 1


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
