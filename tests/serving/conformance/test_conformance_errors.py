"""Error responses: same status, body structure, ``type`` and ``param`` as real vLLM 0.32."""

from __future__ import annotations

import pytest

from tests.serving.conformance.conformance_reference import capture_json, shape_diff

PATHS = {"completions": "/v1/completions", "chat": "/v1/chat/completions"}
PAYLOADS = {
    "completions": {"prompt": "hello"},
    "chat": {"messages": [{"role": "user", "content": "hello"}]},
}
ERROR_KEYS = {"message", "type", "param", "code"}


def _check_error(resp, status: int, error_type: str, capture: str) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/json"
    body = resp.json()
    assert shape_diff(body, capture_json(capture)) == []
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == ERROR_KEYS
    assert error["type"] == error_type
    assert error["code"] == status
    assert isinstance(error["message"], str) and error["message"]
    return error


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
@pytest.mark.parametrize("stream", [False, True])
def test_unknown_model_is_404(engine, client, endpoint, stream):
    body = {"model": "no-such-model", "max_tokens": 4, "stream": stream, **PAYLOADS[endpoint]}
    error = _check_error(
        client.post(PATHS[endpoint], json=body), 404, "NotFoundError", "error_404_model.json"
    )
    assert error["param"] == "model"
    assert "no-such-model" in error["message"]
    assert engine.served_model in error["message"]


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
@pytest.mark.parametrize("stream", [False, True])
def test_max_tokens_over_context_is_400(engine, client, endpoint, stream):
    too_many = engine.max_model_len + 1
    body = {"model": engine.served_model, "max_tokens": too_many, "stream": stream}
    resp = client.post(PATHS[endpoint], json={**body, **PAYLOADS[endpoint]})
    error = _check_error(resp, 400, "BadRequestError", "error_400_max_tokens.json")
    assert error["param"] == "max_tokens"
    assert str(too_many) in error["message"]
    assert str(engine.max_model_len) in error["message"]


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_malformed_json_is_400(client, endpoint):
    raw = b'{"model": "tiny-llama", "prompt": '
    resp = client.post(PATHS[endpoint], content=raw, headers={"content-type": "application/json"})
    error = _check_error(resp, 400, "Bad Request", "error_400_malformed_json.json")
    # vLLM names the JSON location of the decode error: body.<character offset>
    assert error["param"] == f"body.{len(raw)}"


def test_prompt_longer_than_context_is_400(engine, client):
    body = {"model": engine.served_model, "prompt": "hello world " * 400, "max_tokens": 4}
    resp = client.post("/v1/completions", json=body)
    error = _check_error(resp, 400, "BadRequestError", "error_400_max_tokens.json")
    assert error["param"] == "input_tokens"
    assert str(engine.max_model_len) in error["message"]
