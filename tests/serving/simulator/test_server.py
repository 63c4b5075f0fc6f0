"""The simulator over real loopback HTTP, compared with captured real vLLM 0.32 output."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from infermeter.serving.simulator.server import MAX_BODY_BYTES, create_app
from infermeter.serving.simulator.settings import SimulatorSettings
from tests.conftest import VLLM_ARTIFACTS, promtool_check

MODEL = "tiny-llama"


@pytest.fixture
def start(serve: Callable[..., Any]) -> Callable[..., httpx.Client]:
    clients: list[httpx.Client] = []

    def _start(**overrides: Any) -> httpx.Client:
        options = {"served_model_name": MODEL, "max_model_len": 512, "time_scale": 0}
        settings = SimulatorSettings(**{**options, **overrides})
        server = serve(create_app(settings))
        client = httpx.Client(base_url=server.url, timeout=10)
        clients.append(client)
        return client

    yield _start
    for client in clients:
        client.close()


@pytest.fixture
def client(start: Callable[..., httpx.Client]) -> httpx.Client:
    return start()


def artifact(name: str) -> str:
    return (VLLM_ARTIFACTS / name).read_text(encoding="utf-8")


def key_order(value: Any) -> Any:
    """The keys of every object, in order, recursively (lists through their first element)."""
    if isinstance(value, dict):
        return [(k, key_order(v)) for k, v in value.items()]
    if isinstance(value, list) and value:
        return [key_order(value[0])]
    return None


def sse_events(raw: str) -> list[str]:
    assert raw.endswith("\n\n")
    events = raw[:-2].split("\n\n")
    assert all(e.startswith("data: ") and "\n" not in e for e in events)
    return [e[len("data: ") :] for e in events]


def metric(client: httpx.Client, name: str, **labels: str) -> float:
    text = client.get("/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    raise AssertionError(f"{name} {labels} not exposed")


def test_health_version_and_models(client: httpx.Client) -> None:
    health = client.get("/health")
    assert health.status_code == 200 and health.content == b""
    assert client.get("/version").json() == {"version": "0.32.0"}
    models = client.get("/v1/models")
    assert models.headers["content-type"] == "application/json"
    body = models.json()
    assert key_order(body) == key_order(json.loads(artifact("models.json")))
    card = body["data"][0]
    assert card["id"] == MODEL and card["max_model_len"] == 512
    assert card["owned_by"] == "infermeter-simulator"


@pytest.mark.parametrize(
    ("path", "payload", "capture", "id_re"),
    [
        ("/v1/completions", {"prompt": "Hello world"}, "completions_nonstream.json", r"cmpl-"),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "Hi"}]},
            "chat_nonstream.json",
            r"chatcmpl-",
        ),
    ],
)
def test_non_streaming_bodies_have_vllm_fields_in_vllm_order(
    client: httpx.Client,
    path: str,
    payload: dict[str, Any],
    capture: str,
    id_re: str,
) -> None:
    resp = client.post(path, json={"model": MODEL, "max_tokens": 16, "ignore_eos": True, **payload})
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "application/json"
    body = resp.json()
    reference = json.loads(artifact(capture))
    assert key_order(body) == key_order(reference)
    assert re.fullmatch(id_re + r"[0-9a-f]{16}", body["id"])
    assert body["system_fingerprint"] == reference["system_fingerprint"]
    usage = body["usage"]
    assert usage["completion_tokens"] == 16
    assert usage["total_tokens"] == usage["prompt_tokens"] + 16
    assert body["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize(
    ("path", "payload", "capture"),
    [
        ("/v1/completions", {"prompt": "Hello"}, "completions_stream.sse"),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "Hi"}]},
            "chat_stream.sse",
        ),
    ],
)
def test_streams_have_vllm_chunks_usage_and_done(
    client: httpx.Client, path: str, payload: dict[str, Any], capture: str
) -> None:
    body = {
        "model": MODEL,
        "max_tokens": 8,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
        **payload,
    }
    with client.stream("POST", path, json=body) as resp:
        assert resp.headers["content-type"] == "text/event-stream; charset=utf-8"
        raw = resp.read().decode()
    ours, real = sse_events(raw), sse_events(artifact(capture))
    assert ours[-1] == real[-1] == "[DONE]"
    assert len(ours) == len(real)  # same number of chunks for 8 tokens
    for mine, theirs in zip(ours[:-1], real[:-1], strict=True):
        assert key_order(json.loads(mine)) == key_order(json.loads(theirs))
    chunks = [json.loads(e) for e in ours[:-1]]
    assert len({c["id"] for c in chunks}) == 1
    usage_chunk = chunks[-1]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["completion_tokens"] == 8
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"


def test_no_usage_chunk_unless_asked_and_continuous_usage(client: httpx.Client) -> None:
    body = {"model": MODEL, "prompt": "Hi", "max_tokens": 4, "ignore_eos": True, "stream": True}
    plain = [json.loads(e) for e in sse_events(client.post("/v1/completions", json=body).text)[:-1]]
    assert all(c["choices"] and "usage" not in c for c in plain)
    body["stream_options"] = {"include_usage": True, "continuous_usage_stats": True}
    chunks = [
        json.loads(e) for e in sse_events(client.post("/v1/completions", json=body).text)[:-1]
    ]
    assert [c["usage"]["completion_tokens"] for c in chunks] == [1, 2, 3, 4, 4]


def test_stop_strings_and_end_of_sequence(start: Callable[..., httpx.Client]) -> None:
    client = start(output_tokens_median=3, output_tokens_sigma=0.1)
    body = {"model": MODEL, "prompt": "Hi", "max_tokens": 50}
    eos = client.post("/v1/completions", json=body).json()
    assert eos["choices"][0]["finish_reason"] == "stop"
    assert eos["usage"]["completion_tokens"] < 50
    assert metric(client, "vllm:request_success_total", finished_reason="stop") == 1
    full = client.post(
        "/v1/completions", json={**body, "ignore_eos": True, "seed": 1, "max_tokens": 40}
    ).json()["choices"][0]["text"]
    word = full.split()[5]
    cut = client.post(
        "/v1/completions",
        json={**body, "ignore_eos": True, "seed": 1, "max_tokens": 40, "stop": [word]},
    ).json()["choices"][0]
    assert cut["finish_reason"] == "stop" and cut["stop_reason"] == word
    assert cut["text"] == full[: full.index(word)]


def test_seed_and_greedy_decoding_are_deterministic(client: httpx.Client) -> None:
    def text(**extra: Any) -> str:
        body = {"model": MODEL, "prompt": "Same prompt", "max_tokens": 12, "ignore_eos": True}
        return client.post("/v1/completions", json={**body, **extra}).json()["choices"][0]["text"]

    assert text(seed=5) == text(seed=5) != text(seed=6)
    assert text(temperature=0) == text(temperature=0)


def error(resp: httpx.Response) -> dict[str, Any]:
    assert resp.headers["content-type"] == "application/json"
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == resp.status_code
    return body["error"]


def test_errors_match_vllm_for_the_same_mistakes(client: httpx.Client) -> None:
    nope = client.post("/v1/completions", json={"model": "nope", "prompt": "x"})
    assert nope.status_code == 404
    assert nope.content == artifact("error_404_model.json").encode()
    too_long = client.post(
        "/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 5000}
    )
    assert too_long.status_code == 400
    assert too_long.content == artifact("error_400_max_tokens.json").encode()
    malformed = client.post("/v1/chat/completions", content=b'{"model": ')
    assert malformed.status_code == 400
    assert error(malformed)["param"] == "body.10" and error(malformed)["type"] == "Bad Request"
    missing = client.post("/v1/completions", json={"model": MODEL})
    assert missing.status_code == 400 and error(missing)["param"] == "body.prompt"
    cases = [
        ({"prompt": "x", "n": 2}, "n"),
        ({"prompt": "x", "max_tokens": "ten"}, "max_tokens"),
        ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "x", "temperature": -1}, "temperature"),
        ({"prompt": "x", "stream_options": {"include_usage": True}}, "stream_options"),
        ({"prompt": "x", "stop": 3}, "stop"),
        ({"prompt": "word " * 600}, "input_tokens"),
        ({"prompt": "word " * 300, "max_tokens": 300}, "max_tokens"),
    ]
    for payload, param in cases:
        resp = client.post("/v1/completions", json={"model": MODEL, **payload})
        assert resp.status_code == 400, payload
        assert error(resp)["param"] == param, payload
    chat = client.post("/v1/chat/completions", json={"model": MODEL, "messages": "hi"})
    assert chat.status_code == 400 and error(chat)["param"] == "messages"
    assert client.get("/v1/nothing").status_code == 404
    assert client.get("/v1/completions").status_code == 405


def families(text: str) -> dict[str, Any]:
    out = {}
    for family in text_string_to_metric_families(text):
        if not (family.name.startswith("vllm:") or family.name.startswith("http_")):
            continue
        labels = {k for s in family.samples for k in s.labels if k != "le"}
        buckets = sorted({s.labels["le"] for s in family.samples if "le" in s.labels})
        out[family.name] = (family.type, labels, buckets)
    return out


def test_metrics_before_any_request_match_vllm(client: httpx.Client) -> None:
    resp = client.get("/metrics")
    assert resp.headers["content-type"] == "text/plain; version=1.0.0; charset=utf-8"
    ours = families(resp.text)
    real = families(artifact("metrics_before_any_request.txt"))
    assert ours.keys() == real.keys()
    for name, (kind, labels, buckets) in real.items():
        assert ours[name][0] == kind, name
        assert ours[name][2] == buckets, name
        if name != "vllm:cache_config_info":
            assert ours[name][1] == labels, name
    assert ours["vllm:cache_config_info"][1] == real["vllm:cache_config_info"][1]
    # every vLLM series is present at zero before the first request, as in vLLM
    zero = [
        line for line in resp.text.splitlines()
        if line.startswith("vllm:request_success_total") or line.startswith("vllm:num_requests")
    ]  # fmt: skip
    assert len(zero) == 9 and all(line.endswith(" 0.0") for line in zero)


def test_simulator_declares_itself(client: httpx.Client) -> None:
    assert metric(client, "infermeter_simulator_info", simulator="true", gpu="h100-sxm") == 1


def test_metrics_counters_move_with_requests(client: httpx.Client) -> None:
    body = {"model": MODEL, "prompt": "Count me", "max_tokens": 6, "ignore_eos": True}
    first = client.post("/v1/completions", json=body).json()
    client.post("/v1/completions", json={**body, "stream": True}).read()
    assert metric(client, "vllm:request_success_total", finished_reason="length") == 2
    assert metric(client, "vllm:generation_tokens_total") == 12
    assert metric(client, "vllm:prompt_tokens_total") == 2 * first["usage"]["prompt_tokens"]
    assert metric(client, "vllm:e2e_request_latency_seconds_count") == 2
    assert metric(client, "vllm:time_to_first_token_seconds_count") == 2
    assert metric(client, "vllm:inter_token_latency_seconds_count") == 10
    assert metric(client, "vllm:estimated_flops_per_gpu_total") > 0
    assert metric(client, "vllm:kv_cache_usage_perc") == 0
    assert (
        metric(
            client, "http_requests_total", handler="/v1/completions", status="2xx", method="POST"
        )
        == 2
    )


def test_promtool_accepts_the_exposition(client: httpx.Client) -> None:
    client.post("/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 3})
    code, findings = promtool_check(client.get("/metrics").text)
    assert code != 1, findings
    _, real = promtool_check(artifact("metrics_after_load.txt"))
    assert set(findings) <= set(real)
    assert not [f for f in findings if "infermeter_" in f]


def test_client_disconnect_aborts_like_vllm(start: Callable[..., httpx.Client]) -> None:
    # 10x faster than real time: 400 tokens take ~0.26 s, the client leaves after 3
    client = start(time_scale=0.1)
    body = {
        "model": MODEL, "prompt": "abort me", "max_tokens": 400, "ignore_eos": True,
        "stream": True,
    }  # fmt: skip
    received = 0
    with client.stream("POST", "/v1/completions", json=body) as resp:
        for line in resp.iter_lines():
            received += line.startswith("data: {")
            if received >= 3:
                break
    deadline = time.monotonic() + 5
    while metric(client, "vllm:num_requests_running") != 0:
        assert time.monotonic() < deadline, "aborted request still running"
        time.sleep(0.02)
    generated = metric(client, "vllm:generation_tokens_total")
    assert 3 <= generated < 400
    assert metric(client, "vllm:time_to_first_token_seconds_count") == 1
    assert metric(client, "vllm:prompt_tokens_total") > 0
    for reason in ("length", "stop", "abort"):
        assert metric(client, "vllm:request_success_total", finished_reason=reason) == 0
    assert metric(client, "vllm:e2e_request_latency_seconds_count") == 0
    assert metric(client, "vllm:kv_cache_usage_perc") == 0


async def test_queueing_shows_in_metrics_under_load(start: Callable[..., httpx.Client]) -> None:
    # 2 sequences at a time, 1/20 of real time: 6 concurrent streams must queue
    client = start(max_num_seqs=2, time_scale=0.05)
    body = {
        "model": MODEL,
        "prompt": "queue",
        "max_tokens": 400,
        "ignore_eos": True,
        "stream": True,
    }
    waiting_seen: list[float] = []
    async with httpx.AsyncClient(base_url=str(client.base_url), timeout=30) as aclient:

        async def one() -> str:
            resp = await aclient.post("/v1/completions", json=body)
            return resp.text

        async def watch() -> None:
            for _ in range(100):
                text = (await aclient.get("/metrics")).text
                for family in text_string_to_metric_families(text):
                    if family.name == "vllm:num_requests_waiting":
                        waiting_seen.append(family.samples[0].value)
                if waiting_seen and waiting_seen[-1] > 0:
                    return
                await asyncio.sleep(0.01)

        results = await asyncio.gather(watch(), *(one() for _ in range(6)))
    assert max(waiting_seen) > 0
    assert all(r.endswith("data: [DONE]\n\n") for r in results[1:])
    assert metric(client, "vllm:request_queue_time_seconds_count") == 6
    assert metric(client, "vllm:request_queue_time_seconds_sum") > 0


def test_repeated_prompt_prefix_hits_the_prefix_cache(start: Callable[..., httpx.Client]) -> None:
    client = start()
    system = {"role": "system", "content": "Answer in one short sentence, politely. " * 30}
    for question in ("What is a GPU?", "What is a token?"):
        messages = [system, {"role": "user", "content": question}]
        body = {"model": MODEL, "messages": messages, "max_tokens": 3}
        assert client.post("/v1/chat/completions", json=body).status_code == 200
    hits = metric(client, "vllm:prefix_cache_hits_total")
    assert hits > 0 and hits % 16 == 0
    assert metric(client, "vllm:prefix_cache_queries_total") == metric(
        client, "vllm:prompt_tokens_total"
    )
    assert metric(client, "vllm:prompt_tokens_cached_total") == hits
    off = start(enable_prefix_caching=False)
    for _ in range(2):
        off.post("/v1/chat/completions", json={"model": MODEL, "messages": [system]})
    assert metric(off, "vllm:prefix_cache_hits_total") == 0


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions", "/tokenize"])
def test_an_oversized_body_is_413_naming_the_limit(
    start: Callable[..., httpx.Client], path: str
) -> None:
    client = start()
    answer = client.post(path, content=b'{"prompt": "' + b"a" * MAX_BODY_BYTES + b'"}')
    assert answer.status_code == 413, answer.text
    error = answer.json()["error"]
    assert error["param"] == "body" and str(MAX_BODY_BYTES) in error["message"]
    assert client.get("/health").status_code == 200  # the server is fine afterwards
