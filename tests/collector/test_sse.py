"""SSE accounting against real vLLM streams (tests/vllm_0_32_captures), in any chunking."""

from __future__ import annotations

import itertools
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from infermeter.collector.sse import SseScanner, parse_body_usage
from tests.conftest import VLLM_ARTIFACTS as ARTIFACTS

CHAT = (ARTIFACTS / "chat_stream.sse").read_bytes()
COMPLETION = (ARTIFACTS / "completions_stream.sse").read_bytes()
ABORTED = (ARTIFACTS / "completions_stream_client_abort.sse").read_bytes()


def split(raw: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(raw) + 1) for c in cuts} | {0, len(raw)})
    return [raw[a:b] for a, b in itertools.pairwise(points) if b > a]


def run(raw: bytes, cuts: list[int], strip: bool) -> tuple[SseScanner, bytes, list[float]]:
    times: list[float] = []
    scanner = SseScanner(times, strip_usage=strip)
    out = b"".join(scanner.feed(chunk, float(i)) for i, chunk in enumerate(split(raw, cuts)))
    return scanner, out + scanner.flush(), times


def without_usage_frame(raw: bytes) -> bytes:
    frames = [f for f in raw.split(b"\n\n") if f and b'"choices":[]' not in f]
    return b"".join(f + b"\n\n" for f in frames)


def test_real_chat_stream_whole() -> None:
    scanner, out, times = run(CHAT, [], strip=False)
    assert out == CHAT
    assert (scanner.prompt_tokens, scanner.completion_tokens) == (12, 8)
    assert len(times) == 8  # the role frame carries no token
    assert scanner.finish_reason == "length" and scanner.done


def test_real_completion_stream_strip_mode_removes_only_the_usage_frame() -> None:
    scanner, out, times = run(COMPLETION, [], strip=True)
    assert out == without_usage_frame(COMPLETION)
    assert b'"usage"' not in out and out.endswith(b"data: [DONE]\n\n")
    assert (scanner.prompt_tokens, scanner.completion_tokens, len(times)) == (3, 8, 8)


def test_aborted_stream_counts_frames_without_usage() -> None:
    scanner, _out, times = run(ABORTED, [], strip=False)
    expected = sum(1 for f in ABORTED.split(b"\n\n") if f.startswith(b"data: {"))
    assert len(times) == expected > 100
    assert scanner.prompt_tokens is None and scanner.completion_tokens is None


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
    assert scanner.completion_tokens == 8 and len(times) == 8
    assert scanner.prompt_tokens == (12 if chat else 3)
    assert times == sorted(times)


def test_error_frame_and_crlf_frames() -> None:
    times: list[float] = []
    scanner = SseScanner(times)
    raw = (
        b'data: {"choices":[{"index":0,"text":"a"}]}\r\n\r\ndata: {"error":{"message":"x"}}\r\n\r\n'
    )
    assert scanner.feed(raw, 1.0) == raw
    assert len(times) == 1 and scanner.error


def test_non_stream_body_usage() -> None:
    body = (ARTIFACTS / "chat_nonstream.json").read_bytes()

    class Target:
        prompt_tokens = completion_tokens = None
        cached_prompt_tokens = 0

    target = Target()
    assert parse_body_usage(body, target) == "length"
    usage = json.loads(body)["usage"]
    assert (target.prompt_tokens, target.completion_tokens) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
    )
    cached = (
        b'{"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":1,'
        b'"prompt_tokens_details":{"cached_tokens":4}}}'
    )
    parse_body_usage(cached, target)
    assert target.cached_prompt_tokens == 4
    assert parse_body_usage(b"not json", target) is None
