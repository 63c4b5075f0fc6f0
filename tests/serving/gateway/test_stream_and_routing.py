"""Replica choice on real vLLM output (stream accounting: tests/kernel/test_sse_usage.py)."""

from __future__ import annotations

from infermeter.serving.gateway.routing import (
    KV_SATURATED,
    Replica,
    ReplicaLoad,
    Router,
    parse_engine_gauges,
)
from infermeter.serving.gateway.signals import signals_from_json
from tests.conftest import VLLM_ARTIFACTS

ARTIFACTS = VLLM_ARTIFACTS
CAPTURES = VLLM_ARTIFACTS


def _artifact(name: str) -> bytes:
    for folder in (CAPTURES, ARTIFACTS):
        if (folder / name).exists():
            return (folder / name).read_bytes()
    raise FileNotFoundError(name)


def test_engine_gauges_from_real_vllm_metrics() -> None:
    text = _artifact("metrics_final_after_abort_and_errors.txt").decode()
    # The real exposition with the gauges set to known values (lines otherwise untouched).
    text = text.replace(
        'vllm:num_requests_waiting{engine="0",model_name="tiny-llama"} 0.0',
        'vllm:num_requests_waiting{engine="0",model_name="tiny-llama"} 7.0',
    ).replace(
        'vllm:kv_cache_usage_perc{engine="0",model_name="tiny-llama"} 0.0',
        'vllm:kv_cache_usage_perc{engine="0",model_name="tiny-llama"} 0.83',
    )
    sig = parse_engine_gauges(text, ts=1.0)
    assert (sig.waiting, sig.kv_cache_usage, sig.ts) == (7.0, 0.83, 1.0)
    assert sig.running == 0.0


def _router(now: list[float]) -> Router:
    replicas = [Replica(n, f"http://{n}", f"http://{n}/v1/signals") for n in ("a", "b", "c")]
    return Router(replicas, max_age_s=5.0, now=lambda: now[0])


def test_least_outstanding_wins_and_ties_rotate() -> None:
    now = [100.0]
    router = _router(now)
    a, b, c = router.replicas
    a.outstanding, b.outstanding, c.outstanding = 3, 1, 2
    assert router.pick() is b
    assert router.pick(frozenset({"b"})) is c
    a.outstanding = b.outstanding = c.outstanding = 0
    assert {router.pick().name for _ in range(3)} == {"a", "b", "c"}  # type: ignore[union-attr]
    assert router.pick(frozenset({"a", "b", "c"})) is None


def test_fresh_signals_refine_and_stale_ones_are_ignored() -> None:
    now = [100.0]
    router = _router(now)
    a, b, c = router.replicas
    a.signals = ReplicaLoad(ts=99.0, waiting=10)
    b.signals = ReplicaLoad(ts=99.0, waiting=0, kv_cache_usage=KV_SATURATED)
    c.signals = ReplicaLoad(ts=99.0, waiting=2)
    c.outstanding = 1
    assert router.pick() is c  # a is queued, b's KV cache is full
    now[0] = 200.0  # every reading is stale now: plain least-outstanding
    picks = {router.pick().name for _ in range(4)}  # type: ignore[union-attr]
    assert picks == {"a", "b"}


def test_signals_from_collector_json_age_by_their_timestamp() -> None:
    payload = [
        {"ts": 990.0, "num_requests_waiting": 2, "num_requests_running": 3,
         "kv_cache_usage_perc": 0.4},
        {"ts": 995.0, "num_requests_waiting": 1, "kv_cache_usage_perc": 0.7},
    ]  # fmt: skip
    sig = signals_from_json(payload, received_mono=50.0, wall_now=1000.0)
    assert sig is not None
    assert (sig.waiting, sig.running, sig.kv_cache_usage) == (3.0, 3.0, 0.7)
    assert sig.ts == 40.0  # the older reading decides the age
    assert signals_from_json([], 1.0, 1.0) is None
