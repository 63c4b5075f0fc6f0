"""Response shapes, SSE framing and usage accounting: each engine against real vLLM 0.32."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.serving.conformance.conformance_reference import (
    ID_PATTERNS,
    SseStream,
    capture_json,
    capture_text,
    chunk_text,
    parse_sse,
    shape_diff,
)

PROMPT = "def fibonacci(n):\n    return"
MESSAGES = [{"role": "user", "content": "Write one line about the sea."}]
MAX_TOKENS = 12
ENDPOINTS = {
    "completions": ("/v1/completions", {"prompt": PROMPT}),
    "chat": ("/v1/chat/completions", {"messages": MESSAGES}),
}


def _body(engine_model: str, endpoint: str, **extra: Any) -> dict[str, Any]:
    base = {"model": engine_model, "max_tokens": MAX_TOKENS, "ignore_eos": True, "seed": 7}
    return {**base, **ENDPOINTS[endpoint][1], **extra}


def _stream(client: httpx.Client, endpoint: str, body: dict[str, Any]) -> SseStream:
    with client.stream("POST", ENDPOINTS[endpoint][0], json={**body, "stream": True}) as resp:
        assert resp.status_code == 200, resp.read()
        assert resp.headers["content-type"].startswith("text/event-stream")
        raw = resp.read().decode("utf-8")
    return parse_sse(raw)


def test_health_is_an_empty_200(client):
    resp = client.get("/health")
    assert resp.status_code == 200
    assert resp.content == b""


def test_models_list_has_vllm_shape(engine, client):
    resp = client.get("/v1/models")
    assert resp.status_code == 200
    body = resp.json()
    assert shape_diff(body, capture_json("models.json")) == []
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == [engine.served_model]
    card = body["data"][0]
    assert card["object"] == "model"
    assert card["max_model_len"] == engine.max_model_len


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_non_streaming_response_has_vllm_shape(engine, client, endpoint):
    resp = client.post(ENDPOINTS[endpoint][0], json=_body(engine.served_model, endpoint))
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "application/json"
    body = resp.json()
    reference = capture_json(f"{endpoint}_nonstream.json")
    assert shape_diff(body, reference) == []
    assert body["object"] == reference["object"]
    assert ID_PATTERNS[body["object"]].match(body["id"]), body["id"]
    assert body["model"] == engine.served_model
    assert len(body["choices"]) == 1
    choice = body["choices"][0]
    assert choice["index"] == 0
    assert choice["finish_reason"] == "length"
    if endpoint == "chat":
        assert choice["message"]["role"] == "assistant"
        assert isinstance(choice["message"]["content"], str)
    usage = body["usage"]
    assert usage["completion_tokens"] == MAX_TOKENS
    assert usage["prompt_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_stream_framing_and_chunk_shapes(engine, client, endpoint):
    body = _body(engine.served_model, endpoint, stream_options={"include_usage": True})
    stream = _stream(client, endpoint, body)
    assert stream.framing_errors == []
    reference = parse_sse(capture_text(f"{endpoint}_stream.sse"))
    assert reference.framing_errors == []

    # every chunk: same id, object, model; the usage chunk last, with no choices
    ids = {c["id"] for c in stream.chunks}
    assert len(ids) == 1
    expected_object = reference.chunks[0]["object"]
    assert {c["object"] for c in stream.chunks} == {expected_object}
    assert ID_PATTERNS["chat.completion" if endpoint == "chat" else expected_object].match(
        ids.pop()
    )
    assert {c["model"] for c in stream.chunks} == {engine.served_model}
    assert stream.usage_chunks == [stream.chunks[-1]]
    assert stream.chunks[-1]["choices"] == []

    # chunk shapes, position by position: first, content chunks, last content, usage
    ref_first, ref_middle, ref_last, ref_usage = (
        reference.chunks[0],
        reference.chunks[1],
        reference.chunks[-2],
        reference.chunks[-1],
    )
    content = stream.chunks[:-1]
    assert shape_diff(content[0], ref_first) == []
    for chunk in content[1:-1]:
        assert shape_diff(chunk, ref_middle) == []
    assert shape_diff(content[-1], ref_last) == []
    assert shape_diff(stream.chunks[-1], ref_usage) == []
    assert [c["choices"][0]["finish_reason"] for c in content[:-1]] == [None] * (len(content) - 1)
    assert content[-1]["choices"][0]["finish_reason"] == "length"
    if endpoint == "chat":
        assert content[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_stream_usage_matches_streamed_tokens(engine, client, endpoint):
    body = _body(engine.served_model, endpoint, stream_options={"include_usage": True})
    stream = _stream(client, endpoint, body)
    usage = stream.chunks[-1]["usage"]
    assert set(usage) == {"prompt_tokens", "completion_tokens", "total_tokens"}
    assert usage["completion_tokens"] == MAX_TOKENS
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    # one chunk per generated token (vLLM may merge tokens into one chunk when the client
    # lags, never split one); chat adds a leading role-only chunk
    token_chunks = stream.choice_chunks[1:] if endpoint == "chat" else stream.choice_chunks
    assert 1 <= len(token_chunks) <= usage["completion_tokens"]
    assert "".join(chunk_text(c) for c in token_chunks)


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_streamed_token_ids_add_up_to_usage(engine, client, endpoint):
    """With ``return_token_ids`` every chunk lists its tokens: their count is the usage."""
    body = _body(
        engine.served_model,
        endpoint,
        stream_options={"include_usage": True},
        return_token_ids=True,
    )
    stream = _stream(client, endpoint, body)
    usage = stream.chunks[-1]["usage"]
    streamed = sum(len(c["choices"][0].get("token_ids") or []) for c in stream.choice_chunks)
    assert streamed == usage["completion_tokens"] == MAX_TOKENS


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_stream_without_include_usage_sends_no_usage(engine, client, endpoint):
    stream = _stream(client, endpoint, _body(engine.served_model, endpoint))
    assert stream.framing_errors == []
    assert stream.usage_chunks == []
    assert all(c["choices"] for c in stream.chunks)
    assert stream.chunks[-1]["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_prompt_tokens_are_consistent(engine, client, endpoint):
    path = ENDPOINTS[endpoint][0]
    plain = client.post(path, json=_body(engine.served_model, endpoint)).json()["usage"]
    again = client.post(path, json=_body(engine.served_model, endpoint, seed=8)).json()["usage"]
    streamed = _stream(
        client,
        endpoint,
        _body(engine.served_model, endpoint, stream_options={"include_usage": True}),
    ).chunks[-1]["usage"]
    assert plain["prompt_tokens"] == again["prompt_tokens"] == streamed["prompt_tokens"]
    longer = (
        {"prompt": PROMPT * 4}
        if endpoint == "completions"
        else {"messages": [{"role": "user", "content": MESSAGES[0]["content"] * 4}]}
    )
    more = client.post(path, json={**_body(engine.served_model, endpoint), **longer}).json()
    assert more["usage"]["prompt_tokens"] > plain["prompt_tokens"]


def test_chat_template_adds_prompt_tokens(engine, client):
    text = MESSAGES[0]["content"]
    as_completion = client.post(
        "/v1/completions", json={**_body(engine.served_model, "completions"), "prompt": text}
    ).json()
    as_chat = client.post("/v1/chat/completions", json=_body(engine.served_model, "chat")).json()
    assert as_chat["usage"]["prompt_tokens"] > as_completion["usage"]["prompt_tokens"]


def test_completion_tokens_never_exceed_max_tokens(engine, client):
    """Without ``ignore_eos`` generation may stop early, never late."""
    for seed in range(3):
        body = {"model": engine.served_model, "prompt": PROMPT, "max_tokens": 6, "seed": seed}
        choice_usage = client.post("/v1/completions", json=body).json()
        assert 1 <= choice_usage["usage"]["completion_tokens"] <= 6
        assert choice_usage["choices"][0]["finish_reason"] in {"length", "stop"}
