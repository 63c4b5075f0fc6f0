"""SSE usage accounting (infermeter/kernel/sse_usage.py) against real vLLM streams
(tests/vllm_0_32_captures), in any chunking and any valid re-serialisation."""

from __future__ import annotations

import itertools
import json
import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from infermeter.kernel.sse_usage import SseUsageScanner, parse_body
from tests.conftest import VLLM_ARTIFACTS

CHAT = (VLLM_ARTIFACTS / "chat_stream.sse").read_bytes()
COMPLETION = (VLLM_ARTIFACTS / "completions_stream.sse").read_bytes()
ABORTED = (VLLM_ARTIFACTS / "completions_stream_client_abort.sse").read_bytes()
STREAMS = {"chat": CHAT, "completion": COMPLETION, "aborted": ABORTED}


def split(raw: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(raw) + 1) for c in cuts} | {0, len(raw)})
    return [raw[a:b] for a, b in itertools.pairwise(points) if b > a]


def run(
    raw: bytes, cuts: list[int], strip: bool = False, whole: bool = False
) -> tuple[SseUsageScanner, bytes, list[float]]:
    times: list[float] = []
    scanner = SseUsageScanner(times, strip_usage=strip, whole_frames=whole)
    out = b"".join(scanner.feed(chunk, float(i)) for i, chunk in enumerate(split(raw, cuts)))
    return scanner, out + scanner.flush(), times


def without_usage_frame(raw: bytes) -> bytes:
    frames = [f for f in raw.split(b"\n\n") if f and b'"choices":[]' not in f]
    return b"".join(f + b"\n\n" for f in frames)


def test_real_chat_stream_whole() -> None:
    scanner, out, times = run(CHAT, [])
    assert out == CHAT
    assert (scanner.usage.prompt_tokens, scanner.usage.completion_tokens) == (12, 8)
    assert len(times) == 8 == scanner.token_frames  # the role frame carries no token
    assert scanner.usage.finish_reason == "length" and scanner.done
    assert scanner.first_token_at == 0.0


def test_real_completion_stream_strip_mode_removes_only_the_usage_frame() -> None:
    scanner, out, times = run(COMPLETION, [], strip=True)
    assert out == without_usage_frame(COMPLETION)
    assert b'"usage"' not in out and out.endswith(b"data: [DONE]\n\n")
    assert (scanner.usage.prompt_tokens, scanner.usage.completion_tokens, len(times)) == (3, 8, 8)


def test_aborted_stream_counts_frames_without_usage() -> None:
    scanner, _out, times = run(ABORTED, [])
    expected = sum(1 for f in ABORTED.split(b"\n\n") if f.startswith(b"data: {"))
    assert len(times) == expected > 100
    assert not scanner.usage.reported and scanner.usage.completion_tokens is None


@settings(max_examples=150, deadline=None)
@given(
    cuts=st.lists(st.integers(min_value=0, max_value=5000), max_size=40),
    strip=st.booleans(),
    chat=st.booleans(),
)
def test_any_chunking_gives_the_same_accounting(cuts: list[int], strip: bool, chat: bool) -> None:
    raw = CHAT if chat else COMPLETION
    scanner, out, times = run(raw, cuts, strip)
    assert out == (without_usage_frame(raw) if strip else raw)
    assert scanner.usage.completion_tokens == 8 and len(times) == 8
    assert scanner.usage.prompt_tokens == (12 if chat else 3)
    assert times == sorted(times)


def shuffled_keys(value: Any, rng: random.Random) -> Any:
    if isinstance(value, dict):
        items = list(value.items())
        rng.shuffle(items)
        return {k: shuffled_keys(v, rng) for k, v in items}
    if isinstance(value, list):
        return [shuffled_keys(v, rng) for v in value]
    return value


def reserialise(raw: bytes, seed: int) -> bytes:
    """The same stream written another valid way: spaces, newlines (as several ``data:``
    lines), key order, ``\\u`` escapes, CRLF or LF, ``data:`` with or without a space."""
    rng = random.Random(seed)
    newline = rng.choice(["\n", "\r\n"])
    out = []
    for frame in raw.decode().split("\n\n"):
        if not frame:
            continue
        payload = frame.removeprefix("data: ")
        prefix = rng.choice(["data: ", "data:"])
        if payload == "[DONE]":
            out.append(prefix + payload)
            continue
        obj = shuffled_keys(json.loads(payload), rng)
        style = rng.randrange(4)
        if style == 0:
            text = json.dumps(obj, separators=(",", ":"), ensure_ascii=rng.random() < 0.5)
        elif style == 1:
            text = json.dumps(obj, separators=(", ", ": "), ensure_ascii=rng.random() < 0.5)
        elif style == 2:
            text = json.dumps(obj, separators=(" ,", " : "), ensure_ascii=True)
        else:
            text = json.dumps(obj, indent=rng.choice([1, 2, "\t"]))
        out.append(newline.join(prefix + line for line in text.split("\n")))
    return "".join(frame + newline + newline for frame in out).encode()


@settings(max_examples=200, deadline=None)
@given(
    name=st.sampled_from(sorted(STREAMS)),
    seed=st.integers(0, 2**32 - 1),
    cuts=st.lists(st.integers(min_value=0, max_value=200_000), max_size=60),
    strip=st.booleans(),
)
def test_any_valid_serialisation_gives_the_same_accounting(
    name: str, seed: int, cuts: list[int], strip: bool
) -> None:
    original, _, original_times = run(STREAMS[name], [])
    raw = reserialise(STREAMS[name], seed)
    scanner, out, times = run(raw, cuts, strip)
    assert scanner.usage == original.usage
    assert len(times) == len(original_times) == scanner.token_frames
    assert (scanner.done, scanner.error) == (original.done, original.error)
    if not strip:
        assert out == raw  # forwarded exactly as received
    else:
        lf = raw.replace(b"\r\n", b"\n")
        kept = [f for f in lf.split(b"\n\n") if f and not _usage_only(f)]
        assert out == b"".join(f + b"\n\n" for f in kept)


def _usage_only(frame: bytes) -> bool:
    payload = b"".join(line[5:] for line in frame.split(b"\n"))
    if payload.strip() == b"[DONE]":
        return False
    obj = json.loads(payload)
    return obj.get("choices") == [] and "usage" in obj


def test_one_byte_at_a_time_on_spaced_json() -> None:
    raw = reserialise(CHAT, 7).replace(b'"usage":', b'"usage"  :  ')
    scanner, out, times = run(raw, list(range(len(raw))))
    assert out == raw and len(times) == 8
    assert (scanner.usage.prompt_tokens, scanner.usage.finish_reason) == (12, "length")


def test_content_cannot_fake_a_marker() -> None:
    text = 'here: \\"usage\\": {\\"prompt_tokens\\": 99}, \\"finish_reason\\": \\"x\\", [DONE]'
    frames = (
        b'data: {"choices":[{"index":0,"delta":{"content":"' + text.encode() + b'"},'
        b'"logprobs":{"content":[{"token":"usage","logprob":-1.0}]},"finish_reason":null}]}\n\n'
    )
    scanner, _out, times = run(frames, [])
    assert len(times) == 1 and not scanner.usage.reported
    assert scanner.usage.finish_reason is None and not scanner.done


def test_error_frame_and_crlf_frames() -> None:
    times: list[float] = []
    scanner = SseUsageScanner(times)
    raw = (
        b'data: {"choices":[{"index":0,"text":"a"}]}\r\n\r\ndata: {"error":{"message":"x"}}\r\n\r\n'
    )
    assert scanner.feed(raw, 1.0) == raw
    assert len(times) == 1 and scanner.error


def test_text_of_each_token_frame_for_the_cache() -> None:
    parts: list[str] = []
    scanner = SseUsageScanner(strip_usage=True, on_text=parts.append)
    out = b"".join(scanner.feed(CHAT[i : i + 50], 1.0) for i in range(0, len(CHAT), 50))
    out += scanner.flush()
    texts = [
        json.loads(line[6:])["choices"][0]["delta"].get("content", "")
        for line in CHAT.split(b"\n")
        if line.startswith(b"data: {") and b'"choices":[]' not in line
    ]
    assert "".join(parts) == "".join(texts) and scanner.token_frames == 8
    assert out == without_usage_frame(CHAT)


def test_non_stream_body_usage() -> None:
    body = (VLLM_ARTIFACTS / "chat_nonstream.json").read_bytes()
    parsed = parse_body(body)
    usage = json.loads(body)["usage"]
    assert parsed.usage.finish_reason == "length"
    assert (parsed.usage.prompt_tokens, parsed.usage.completion_tokens) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
    )
    assert parsed.text is not None and parsed.text.startswith("classdirect")
    cached = (
        b'{"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 1,'
        b' "prompt_tokens_details": {"cached_tokens": 4}}}'
    )
    assert parse_body(cached).usage.cached_prompt_tokens == 4
    assert not parse_body(b"not json").usage.reported
