"""Property-based fuzzing of the SSE usage scanner (infermeter/kernel/sse_usage.py).

Random OpenAI-style streams (chat or completion; role frame, token frames with any text, a
finish reason, continuous or final usage, errors, ``[DONE]``, comments and keep-alives, any
JSON spacing, key order and escaping, several ``data:`` lines per event, CRLF or LF) are cut
into chunks anywhere (inside multi-byte characters, inside ``data:``, between the two newlines
of a blank line) and scanned; the result must equal a plain reference parse of the whole body
(split on blank lines, ``json.loads`` of each event's data). Random bytes must never raise,
and the bytes held between chunks stay bounded.
"""

from __future__ import annotations

import itertools
import json
import random
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from infermeter.kernel.sse_usage import _MAX_TAIL, SseUsageScanner, StreamUsage
from tests.kernel.test_sse_usage import shuffled_keys

FUZZ = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Model text: multi-byte UTF-8, quotes, backslashes, newlines and text that looks like the
# markers the scanner looks for ("usage": {, [DONE], "role":, data:, blank lines).
TEXT = st.one_of(
    st.text(max_size=12),
    st.sampled_from(
        [
            "",
            "é",
            "日本語",
            "🦙🦙",
            '"usage": {"prompt_tokens": 99}',
            '"finish_reason": "stop"',
            "[DONE]",
            '"role": "assistant"',
            '"error": 1',
            "\n\ndata: [DONE]\n\n",
            "\\",
            '\\"',
            "\r\n",
        ]
    ),
)
COUNT = st.integers(0, 2**31)


@dataclass(frozen=True, slots=True)
class Event:
    """One event of a generated stream: its JSON object (None: ``[DONE]``; a str: a comment)."""

    obj: dict[str, Any] | str | None
    comment_first: bool = False  # a comment line inside the event, before its data lines


@st.composite
def usage_objects(draw: st.DrawFn) -> dict[str, Any]:
    usage: dict[str, Any] = {"prompt_tokens": draw(COUNT), "completion_tokens": draw(COUNT)}
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    if draw(st.booleans()):
        usage["prompt_tokens_details"] = {"cached_tokens": draw(COUNT)}
    if draw(st.integers(0, 9)) == 0:  # a server's odd value: not a count, must be ignored
        usage["prompt_tokens"] = draw(st.sampled_from([None, -1, "7", 1.5, True]))
    return usage


@st.composite
def streams(draw: st.DrawFn) -> list[Event]:
    chat = draw(st.booleans())
    continuous = draw(st.booleans())  # vLLM's continuous_usage_stats: usage on every frame
    head = {"id": "cmpl-1", "object": "chat.completion.chunk" if chat else "text_completion"}
    head["created"] = 1795474677
    head["model"] = draw(st.sampled_from(["tiny", "m\u00e9", "usage"]))
    events: list[Event] = []

    def comment(odds: int = 3) -> None:
        if draw(st.integers(0, odds)) == 0:
            text = draw(st.sampled_from(["", " keep-alive", "x" * 5000, '"usage": {', '"role":']))
            events.append(Event(text))

    def frame(choice: dict[str, Any], usage: dict[str, Any] | None = None) -> None:
        obj = dict(head, choices=[choice])
        if continuous:
            obj["usage"] = usage if usage is not None else draw(usage_objects())
        elif draw(st.booleans()):
            obj["usage"] = None
        events.append(Event(obj, comment_first=draw(st.integers(0, 7)) == 0))

    comment(odds=1)  # a proxy's long preamble, then the role frame in the same chunk
    if chat and draw(st.booleans()):
        frame({"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None})
    for i in range(draw(st.integers(0, 8))):
        comment()
        text = draw(TEXT)
        last = draw(st.sampled_from([None, None, None, "stop", "length"]))
        if chat:
            delta: dict[str, Any] = {"content": text}
            if i == 0 and text and draw(st.booleans()):
                delta["role"] = "assistant"  # role and first text in one frame: a token
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": last}
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": last}
        if draw(st.booleans()):
            choice["stop_reason"] = None
        frame(choice)
    comment()
    if draw(st.integers(0, 5)) == 0:
        events.append(Event({"error": {"message": draw(TEXT), "code": 500}}))
    if draw(st.booleans()):
        events.append(Event(dict(head, choices=[], usage=draw(usage_objects()))))
    comment()
    if draw(st.booleans()):
        events.append(Event(None))
    return events


def serialise(events: list[Event], seed: int) -> bytes:
    """The events as one SSE body, written in one of many valid ways (seeded)."""
    rng = random.Random(seed)
    nl = rng.choice(["\n", "\r\n"])
    blocks = []
    for event in events:
        prefix = rng.choice(["data: ", "data:"])
        if isinstance(event.obj, str):
            blocks.append(":" + event.obj)
            continue
        if event.obj is None:
            blocks.append(prefix + rng.choice(["[DONE]", "[DONE] "]))
            continue
        obj = shuffled_keys(event.obj, rng)
        style = rng.randrange(4)
        if style == 0:
            text = json.dumps(obj, separators=(",", ":"), ensure_ascii=rng.random() < 0.5)
        elif style == 1:
            text = json.dumps(obj, separators=(", ", ": "), ensure_ascii=rng.random() < 0.5)
        elif style == 2:
            text = json.dumps(obj, separators=(" ,", " :\t"), ensure_ascii=False)
        else:
            text = json.dumps(obj, indent=rng.choice([1, 2, "\t"]), ensure_ascii=False)
        lines = [prefix + line for line in text.split("\n")]
        if event.comment_first:
            lines.insert(0, ": note")
        blocks.append(nl.join(lines))
    return "".join(block + nl + nl for block in blocks).encode()


@dataclass(slots=True)
class Reference:
    usage: StreamUsage
    tokens: int
    done: bool
    error: bool
    usage_only: list[bytes]  # the usage-only events, as LF-normalised blocks


def _count(value: Any) -> bool:
    return type(value) is int and value >= 0


def reference(body: bytes) -> Reference:
    """The plain parse: split the whole body on blank lines, json.loads each event's data."""
    usage = StreamUsage()
    ref = Reference(usage, 0, False, False, [])
    for block in body.replace(b"\r\n", b"\n").split(b"\n\n"):
        lines = [line[5:] for line in block.split(b"\n") if line.startswith(b"data:")]
        if not lines:
            continue
        payload = b"\n".join(line.removeprefix(b" ") for line in lines)
        if payload.strip() == b"[DONE]":
            ref.done = True
            continue
        obj = json.loads(payload)
        if "error" in obj and "choices" not in obj:
            ref.error = True
            continue
        if isinstance(obj.get("usage"), dict):
            u = obj["usage"]
            if _count(u.get("prompt_tokens")):
                usage.prompt_tokens = u["prompt_tokens"]
            if _count(u.get("completion_tokens")):
                usage.completion_tokens = u["completion_tokens"]
            cached = (u.get("prompt_tokens_details") or {}).get("cached_tokens")
            if _count(cached):
                usage.cached_prompt_tokens = cached
        if not obj["choices"]:
            ref.usage_only.append(block)
            continue
        choice = obj["choices"][0]
        if isinstance(choice.get("finish_reason"), str):
            usage.finish_reason = choice["finish_reason"]
        delta = choice.get("delta") or {}
        if not ref.tokens and "role" in delta and not delta.get("content"):
            continue  # the chat role frame: no token
        ref.tokens += 1
    return ref


def interesting_offsets(body: bytes) -> list[int]:
    """Cut points a plain random cut rarely hits: inside ``data:``, between the two newlines
    of a blank line (and between CR and LF), inside multi-byte characters."""
    points: list[int] = []
    for needle in (b"data:", b"\n\n", b"\r\n", b'"usage"', b"[DONE]"):
        at = body.find(needle)
        while at >= 0:
            points.extend(range(at + 1, at + len(needle)))
            at = body.find(needle, at + 1)
    points.extend(i for i, byte in enumerate(body) if byte >= 0x80)
    return points


def chunks(body: bytes, cuts: list[int], picks: list[int]) -> list[bytes]:
    special = interesting_offsets(body)
    extra = [special[p % len(special)] for p in picks] if special else []
    points = sorted({c % (len(body) + 1) for c in cuts} | set(extra) | {0, len(body)})
    return [body[a:b] for a, b in itertools.pairwise(points) if b > a]


def scan(
    parts: list[bytes], **kwargs: Any
) -> tuple[SseUsageScanner, bytes, list[float], list[str]]:
    times: list[float] = []
    texts: list[str] = []
    if kwargs.pop("text", False):
        kwargs["on_text"] = texts.append
    scanner = SseUsageScanner(times, **kwargs)
    out = b"".join(scanner.feed(part, float(i)) for i, part in enumerate(parts))
    return scanner, out + scanner.flush(float(len(parts))), times, texts


CUTS = st.lists(st.integers(0, 1 << 20), max_size=30)
PICKS = st.lists(st.integers(0, 1 << 20), max_size=12)


@FUZZ
@given(events=streams(), seed=st.integers(0, 2**32 - 1), cuts=CUTS, picks=PICKS)
def test_scanner_equals_the_reference_parse(
    events: list[Event], seed: int, cuts: list[int], picks: list[int]
) -> None:
    body = serialise(events, seed)
    note(repr(body[:3000]))
    ref = reference(body)
    parts = chunks(body, cuts, picks)
    scanner, out, times, _ = scan(parts)
    assert out == body  # forwarded exactly as received
    assert scanner.usage == ref.usage
    assert scanner.token_frames == len(times) == ref.tokens
    assert (scanner.done, scanner.error) == (ref.done, ref.error)
    assert times == sorted(times)
    assert scanner.first_token_at == (times[0] if times else None)


@FUZZ
@given(events=streams(), seed=st.integers(0, 2**32 - 1), cuts=CUTS, picks=PICKS)
def test_strip_and_text_modes_equal_the_reference_parse(
    events: list[Event], seed: int, cuts: list[int], picks: list[int]
) -> None:
    body = serialise(events, seed)
    note(repr(body[:3000]))
    ref = reference(body)
    parts = chunks(body, cuts, picks)
    lf = body.replace(b"\r\n", b"\n")
    kept = b"".join(b + b"\n\n" for b in lf.split(b"\n\n") if b and b not in ref.usage_only)
    for kwargs in ({"strip_usage": True}, {"strip_usage": True, "text": True}):
        scanner, out, times, _ = scan(parts, **kwargs)
        assert out == kept, kwargs
        assert scanner.usage == ref.usage, kwargs
        assert scanner.token_frames == len(times) == ref.tokens, kwargs
        assert (scanner.done, scanner.error) == (ref.done, ref.error), kwargs
    scanner, out, _, _ = scan(parts, whole_frames=True)
    assert out == lf and scanner.token_frames == ref.tokens


# Garbage: random bytes, and random sequences of SSE-looking fragments (which reach the JSON
# and classification paths that random bytes almost never reach).
FRAGMENTS = st.sampled_from(
    [
        b"data:",
        b"data: ",
        b"\n",
        b"\r\n",
        b"\r",
        b"\n\n",
        b"{",
        b"}",
        b"[",
        b"]",
        b'"usage"',
        b'"usage": {"prompt_tokens": 1}',
        b'"usage":null',
        b'"choices":[]',
        b'"choices":[1]',
        b'"choices":[{"delta":{"role":"x"}}]',
        b'"finish_reason":',
        b'"finish_reason":null',
        b'"finish_reason":"stop"',
        b'"error":',
        b'"role":',
        b"[DONE]",
        b":",
        b",",
        b'"',
        b"\\",
        b"\xff\xfe",
        b"\xe6\x97",
        b"1e999",
        b"-1",
        b"null",
    ]
)
GARBAGE = st.one_of(
    st.binary(max_size=2000),
    st.lists(st.one_of(FRAGMENTS, st.binary(max_size=8)), max_size=120).map(b"".join),
)


@FUZZ
@given(body=GARBAGE, cuts=CUTS, mode=st.integers(0, 3))
def test_garbage_never_raises(body: bytes, cuts: list[int], mode: int) -> None:
    kwargs = [{}, {"whole_frames": True}, {"strip_usage": True}, {"text": True}][mode]
    parts = chunks(body, cuts, [])
    scanner, out, times, texts = scan(parts, **kwargs)
    assert scanner.token_frames == len(times) >= 0
    assert all(isinstance(t, str) for t in texts)
    if not kwargs:
        assert out == body  # whatever it is, it is forwarded unchanged
    assert scanner._tail == b""  # flushed


@settings(max_examples=8, deadline=None, derandomize=True)
@given(
    block=st.binary(min_size=1, max_size=64).filter(lambda b: b"\n" not in b and b"\r" not in b),
    chunk=st.sampled_from([16384, 65536, 1 << 20]),
    whole=st.booleans(),
)
def test_held_bytes_stay_bounded_and_accounting_recovers(
    block: bytes, chunk: int, whole: bool
) -> None:
    """Megabytes without a blank line are not held past the bound; a valid stream after them
    is accounted for exactly."""
    scanner = SseUsageScanner(whole_frames=whole)
    junk = (block * (9 * _MAX_TAIL // (4 * len(block)) + 1))[: 9 * _MAX_TAIL // 4]
    forwarded = 0
    for at in range(0, len(junk), chunk):
        forwarded += len(scanner.feed(junk[at : at + chunk], 0.0))
        assert len(scanner._tail) < _MAX_TAIL + chunk
    stream = (
        b'\n\ndata: {"choices":[{"index":0,"text":"a","finish_reason":null}]}\n\n'
        b'data: {"choices":[{"index":0,"text":"b","finish_reason":"stop"}]}\n\n'
        b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}\n\n'
        b"data: [DONE]\n\n"
    )
    forwarded += len(scanner.feed(stream, 1.0)) + len(scanner.flush(2.0))
    assert forwarded == len(junk) + len(stream)  # nothing lost, nothing duplicated
    assert scanner.token_frames == 2 and scanner.done
    assert (scanner.usage.prompt_tokens, scanner.usage.completion_tokens) == (3, 2)
    assert scanner.usage.finish_reason == "stop"
