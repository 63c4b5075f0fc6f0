"""Token accounting of an OpenAI-compatible server-sent-event stream, chunk by chunk.

One scanner for every service on the request path (the collector sidecar, the gateway). Per
chunk it does a few C-level byte searches and no per-frame Python work: it counts ``data:``
frames (each frame is one generation step: vLLM and OpenAI send one event per step, and a
step whose text the detokenizer holds back arrives with empty text) and subtracts the frames
that carry no token. Those are found by *key markers*: a JSON key is a quoted name followed
by optional whitespace and a colon, and a raw double quote never occurs inside a JSON string
value, so text the model writes cannot fake one, and a value such as a logprobs token
``"usage"`` (followed by a comma, not a colon) is not taken for a key. Only a frame holding a
marker is JSON-parsed and read structurally: the usage object (normally the last frame), the
usage-only frame (``choices`` empty), the finish reason, the chat role frame before the first
token, error frames, and ``[DONE]``. So the scan is exact on any valid serialisation (spaces
and newlines inside JSON, any key order, escapes, CRLF framing, ``data:`` with or without a
space, chunk boundaries anywhere) and stays cheap on vLLM's compact form.

Forwarding: by default every chunk goes to the client unchanged, as received. With
``whole_frames`` (or ``strip_usage``, which implies it) complete frames are forwarded when
their blank line arrives, and ``strip_usage`` cuts the usage-only frame (the caller injected
``stream_options.include_usage`` on the client's behalf). ``on_text`` receives the text of
every token frame (for a semantic cache); it parses every frame, so it costs more.
:func:`parse_body` reads the same facts from a non-streamed JSON body.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

_MAX_TAIL = 4 * 1024 * 1024  # a "frame" this long without a blank line is not SSE: stop holding
# Key markers: (literal, pattern). The literal is looked for first (C memmem); the pattern,
# which starts with it, is run only over chunks that hold it.
_MARKERS = (
    (b'"usage"', re.compile(rb'"usage"\s*:\s*\{')),
    (b'"finish_reason"', re.compile(rb'"finish_reason"\s*:\s*"')),
    (b'"error"', re.compile(rb'"error"\s*:')),
    (b"[DONE]", re.compile(rb"\[DONE\]")),
)
_NO_FINISH = b'"finish_reason":null'  # vLLM's compact form on every frame but the last
_ROLE = re.compile(rb'"role"\s*:')
_DONE = re.compile(rb"data:[ \t]*\[DONE\][ \t]*$")


@dataclass(slots=True)
class StreamUsage:
    """What a response said about its tokens (``None``: not reported)."""

    prompt_tokens: int | None = None
    cached_prompt_tokens: int = 0
    completion_tokens: int | None = None
    finish_reason: str | None = None

    @property
    def reported(self) -> bool:
        """Whether the server sent a usage object."""
        return self.prompt_tokens is not None or self.completion_tokens is not None

    def apply(self, usage: dict[str, Any]) -> None:
        """Copy prompt / cached / completion tokens from an OpenAI ``usage`` object."""
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if _count(prompt):
            self.prompt_tokens = prompt
        if _count(completion):
            self.completion_tokens = completion
        details = usage.get("prompt_tokens_details")
        if isinstance(details, dict) and _count(details.get("cached_tokens")):
            self.cached_prompt_tokens = details["cached_tokens"]


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class SseUsageScanner:
    """Scan one event stream; :meth:`feed` returns the bytes to forward to the client."""

    __slots__ = (
        "_on_text",
        "_tail",
        "done",
        "error",
        "first_token_at",
        "strip_usage",
        "token_frames",
        "token_times",
        "usage",
        "whole_frames",
    )

    def __init__(
        self,
        token_times: list[float] | None = None,
        *,
        strip_usage: bool = False,
        whole_frames: bool = False,
        on_text: Callable[[str], None] | None = None,
    ) -> None:
        self.token_times = token_times  # appended at `now` once per token frame, if given
        self.strip_usage = strip_usage
        self.whole_frames = whole_frames or strip_usage
        self._on_text = on_text
        self.usage = StreamUsage()
        self.token_frames = 0
        self.first_token_at: float | None = None
        self.done = False
        self.error = False
        self._tail = b""

    def feed(self, chunk: bytes, now: float) -> bytes:
        """Account for ``chunk`` (received at ``now``) and return what the client gets."""
        data = self._tail + chunk if self._tail else chunk
        if b"\r" in data:
            data = data.replace(b"\r\n", b"\n")  # CRLF framing: account on a normalised copy
        end = data.rfind(b"\n\n")
        if end < 0:
            if len(data) >= _MAX_TAIL:  # no SSE framing after megabytes: stop holding
                self._tail = b""
                return data if self.whole_frames else chunk
            self._tail = data
            return b"" if self.whole_frames else chunk
        cut = end + 2
        complete = data[:cut] if cut < len(data) else data
        self._tail = data[cut:] if cut < len(data) else b""
        out = self._account(complete, now)
        return out if self.whole_frames else chunk

    def flush(self, now: float = 0.0) -> bytes:
        """Bytes still held at the end of the stream (an unterminated last frame)."""
        tail, self._tail = self._tail, b""
        if not tail:
            return b""
        out = self._account(tail + b"\n\n", now)
        return out[:-2] if self.whole_frames else b""

    def _account(self, frames: bytes, now: float) -> bytes:
        """Account for whole frames; returns them, less the usage-only frame in strip mode."""
        n = frames.count(b"\n\ndata:") + frames.startswith(b"data:")
        if frames.count(b"\n\n") != n:  # an event opening with a comment or another field
            n = _data_events(frames)
        if not n:
            return frames
        if self._on_text is not None:
            return self._account_each(frames, now)
        if (
            self.token_frames
            and b'"usage"' not in frames
            and b"[DONE]" not in frames
            and b'"error"' not in frames
            and frames.count(b'"finish_reason"') == frames.count(_NO_FINISH)
        ):  # token frames only (vLLM mid-stream): nothing to parse
            self._tokens(n, now)
            return frames
        # In stream order (a later usage object or finish reason wins), then cut backwards
        # (cutting keeps the earlier offsets).
        kinds = [
            (span, self._inspect(frames[span[0] : span[1]])) for span in self._marked_frames(frames)
        ]
        for (start, stop), kind in reversed(kinds):
            if kind == "usage_only" and self.strip_usage:
                frames = frames[:start] + frames[stop:]
        self._tokens(n - sum(kind not in ("token", "none") for _, kind in kinds), now)
        return frames

    def _account_each(self, frames: bytes, now: float) -> bytes:
        """The slow path: parse every frame (the caller wants each token's text)."""
        out = []
        for frame in frames.split(b"\n\n"):
            if not frame:
                continue
            kind = self._inspect(frame + b"\n\n", text=True)
            if kind == "token":
                self._tokens(1, now)
            if not (kind == "usage_only" and self.strip_usage):
                out.append(frame + b"\n\n")
        return b"".join(out)

    def _tokens(self, count: int, now: float) -> None:
        if count <= 0:
            return
        if self.first_token_at is None:
            self.first_token_at = now
        self.token_frames += count
        if self.token_times is not None:
            if count == 1:
                self.token_times.append(now)
            else:
                self.token_times.extend([now] * count)

    def _marked_frames(self, frames: bytes) -> list[tuple[int, int]]:
        """``(start, stop)`` of each frame holding a key marker or ``[DONE]``, in order."""
        hits: list[int] = []
        for literal, pattern in _MARKERS:
            if literal not in frames:
                continue
            if literal == b'"finish_reason"' and frames.count(literal) == frames.count(_NO_FINISH):
                continue  # every finish reason is a compact null
            hits.extend(m.start() for m in pattern.finditer(frames))
        if not self.token_frames:  # the chat role frame precedes the first token
            hits.extend(m.start() for m in _ROLE.finditer(frames))
        spans: dict[int, int] = {}
        for at in sorted(hits):
            start = frames.rfind(b"\n\n", 0, at)
            start = 0 if start < 0 else start + 2
            if start not in spans:
                stop = frames.find(b"\n\n", at)
                spans[start] = len(frames) if stop < 0 else stop + 2
        return sorted(spans.items())

    def _inspect(self, frame: bytes, text: bool = False) -> str:
        """Classify one frame: ``token``, ``usage_only``, ``role``, ``error``, ``done``,
        ``other`` (data, but no token) or ``none`` (no data line: a comment or a keep-alive);
        reads usage, finish reason and text on the way."""
        payload = _payload(frame)
        if payload is None:
            return "none"
        if _DONE.match(payload):
            self.done = True
            return "done"
        try:
            obj = orjson.loads(payload[5:])
        except orjson.JSONDecodeError:
            return "token"
        if not isinstance(obj, dict):
            return "token"
        if "error" in obj and "choices" not in obj:
            self.error = True
            return "error"
        if isinstance(obj.get("usage"), dict):
            self.usage.apply(obj["usage"])
        choices = obj.get("choices")
        if isinstance(choices, list) and not choices:
            return "usage_only" if "usage" in obj else "other"
        first = choices[0] if isinstance(choices, list) and isinstance(choices[0], dict) else {}
        reason = first.get("finish_reason")
        if isinstance(reason, str):
            self.usage.finish_reason = reason
        delta = first.get("delta")
        if not self.token_frames and isinstance(delta, dict) and _role_only(delta, reason):
            return "role"
        if text and self._on_text is not None:
            value = delta.get("content") if isinstance(delta, dict) else first.get("text")
            if isinstance(value, str) and value:
                self._on_text(value)
        return "token"


def _data_events(frames: bytes) -> int:
    """How many events of ``frames`` hold a ``data:`` line (SSE lets an event open with a
    comment, ``event:`` or ``id:`` line; comment-only events are keep-alives)."""
    return sum(1 for f in frames.split(b"\n\n") if f.startswith(b"data:") or b"\ndata:" in f)


def _payload(frame: bytes) -> bytes | None:
    """The frame's ``data:`` line(s) joined (SSE allows several), or None."""
    lines = [line for line in frame.split(b"\n") if line.startswith(b"data:")]
    if not lines:
        return None
    if len(lines) == 1:
        return lines[0].rstrip()
    return b"data:" + b"\n".join(line[5:].removeprefix(b" ") for line in lines)


def _role_only(delta: dict[str, Any], reason: Any) -> bool:
    """A chat delta announcing the role with no text and no tool call (no token)."""
    return (
        "role" in delta
        and not delta.get("content")
        and not delta.get("tool_calls")
        and not delta.get("reasoning_content")
        and reason is None
    )


@dataclass(slots=True)
class BodyUsage:
    """Usage and the first choice of a non-streamed chat or completion response."""

    usage: StreamUsage
    text: str | None = None


def parse_body(body: bytes) -> BodyUsage:
    """Read usage, finish reason and the first choice's text from a JSON response body."""
    usage = StreamUsage()
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return BodyUsage(usage)
    if not isinstance(obj, dict):
        return BodyUsage(usage)
    if isinstance(obj.get("usage"), dict):
        usage.apply(obj["usage"])
    choices = obj.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return BodyUsage(usage)
    first = choices[0]
    reason = first.get("finish_reason")
    usage.finish_reason = reason if isinstance(reason, str) else None
    message = first.get("message")
    text = message.get("content") if isinstance(message, dict) else first.get("text")
    return BodyUsage(usage, text if isinstance(text, str) else None)
