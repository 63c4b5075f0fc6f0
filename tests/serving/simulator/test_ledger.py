"""The simulator's ground-truth ledger (serving/simulator/ledger.py): each step's modelled GPU
time split over its requests by the roofline's binding resource, summed exactly."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import httpx
import pytest

from infermeter.serving.simulator.engine import Engine, SimRequest
from infermeter.serving.simulator.ledger import StepLedger, read_ledger, split_ns
from infermeter.serving.simulator.server import create_app
from infermeter.serving.simulator.settings import SimulatorSettings
from infermeter.serving.simulator.text import block_hashes, plan_completion, text_units
from tests.serving.simulator.simulator_helpers import h100_llama8b, make_engine
from tests.serving.simulator.test_engine import small_kv_model


def request(prompt: int, tokens: int, rid: str, seed: int = 0) -> SimRequest:
    plan = plan_completion(random.Random(seed), tokens, ignore_eos=True)
    return SimRequest(rid, prompt, plan, tokens)


def with_ledger(engine: Engine, path: Path) -> Engine:
    engine.ledger = StepLedger(path, engine.perf)
    return engine


def run_all(engine: Engine) -> None:
    while engine.has_work():
        engine.step()
    assert engine.ledger is not None
    engine.ledger.close()


def test_split_is_exact_and_proportional() -> None:
    parts = split_ns(1_000_000_007, [1.0, 2.0, 3.0, 1e-9])
    assert sum(parts) == 1_000_000_007 and all(p >= 0 for p in parts)
    assert parts[1] == pytest.approx(2 * parts[0], abs=2)
    assert split_ns(10, [0.0, 0.0]) == [5, 5]


def test_requests_sum_to_busy_and_busy_plus_idle_is_wall(tmp_path: Path) -> None:
    engine = with_ledger(make_engine(), tmp_path / "ledger.jsonl")
    for i in range(12):
        engine.add(request(100 + 300 * i, 40 + 20 * i, f"r{i}", seed=i))
        engine.step()
    run_all(engine)
    totals = read_ledger(tmp_path / "ledger.jsonl")
    assert totals.steps == engine.steps
    assert sum(totals.request_ns.values()) == totals.busy_ns  # exactly, in nanoseconds
    assert totals.busy_ns + totals.idle_ns == totals.wall_ns and totals.idle_ns >= 0
    assert set(totals.request_ns) == {f"r{i}" for i in range(12)}
    assert totals.busy_ns == pytest.approx(engine.time * 1e9, abs=engine.steps)


def test_long_prompts_cost_more_in_a_compute_bound_step(tmp_path: Path) -> None:
    engine = with_ledger(make_engine(), tmp_path / "l.jsonl")
    engine.add(request(4000, 1, "long"))
    engine.add(request(100, 1, "short"))
    step = engine.step()
    assert step is not None
    assert (
        step.cost.flops / engine.perf._compute_rate
        > step.cost.read_bytes / engine.perf._memory_rate
    )
    run_all(engine)
    ns = read_ledger(tmp_path / "l.jsonl").request_ns
    assert ns["long"] > 35 * ns["short"]  # ~40x the tokens, plus attention over them


def test_memory_bound_decode_charges_context_read(tmp_path: Path) -> None:
    perf = h100_llama8b()
    shares = perf.step_shares([1, 1], [100.0, 16000.0], [100, 16000])
    cost = perf.step(2, 16100.0, 16100)
    assert sum(shares) == pytest.approx(cost.seconds, rel=1e-12)
    per_token_weights = perf.weight_bytes / 2
    expected = (per_token_weights + perf.kv_bytes_per_token * 16000) / (
        per_token_weights + perf.kv_bytes_per_token * 100
    )
    overhead = perf.efficiency.step_overhead_s / 2
    assert (shares[1] - overhead) / (shares[0] - overhead) == pytest.approx(expected, rel=1e-9)


def test_preemption_recompute_is_charged_to_the_preempted_request(tmp_path: Path) -> None:
    engine = with_ledger(make_engine(small_kv_model(640)), tmp_path / "p.jsonl")
    reqs = [request(100, 200, f"r{i}", seed=i) for i in range(4)]
    for r in reqs:
        engine.add(r)
    run_all(engine)
    ns = read_ledger(tmp_path / "p.jsonl").request_ns
    preempted = [r for r in reqs if r.preemptions]
    calm = [r for r in reqs if not r.preemptions]
    assert preempted and calm
    assert min(ns[r.request_id] for r in preempted) > max(ns[r.request_id] for r in calm)


def test_prefix_cache_hit_is_charged_less(tmp_path: Path) -> None:
    system = text_units("You are a careful assistant for billing questions. " * 120)
    engine = with_ledger(make_engine(), tmp_path / "c.jsonl")
    for rid, question in (("first", "What did A spend?"), ("second", "And B, last week?")):
        units = ["<bos>", *system, *text_units(question)]
        plan = plan_completion(random.Random(1), 4, ignore_eos=True)
        engine.add(SimRequest(rid, len(units), plan, 4, block_hashes=block_hashes(units, 16)))
        while engine.has_work():
            engine.step()
    assert engine.ledger is not None
    engine.ledger.close()
    ns = read_ledger(tmp_path / "c.jsonl").request_ns
    assert ns["second"] < ns["first"] / 2  # its prefill skipped the cached system prompt


def test_server_option_writes_the_ledger_under_the_clients_request_id(tmp_path: Path) -> None:
    path = tmp_path / "server.jsonl"
    app = create_app(SimulatorSettings(time_scale=0.0, ledger=str(path)))
    off = create_app(SimulatorSettings(time_scale=0.0))
    assert off.engine.ledger is None
    transport = httpx.ASGITransport(app=app)

    async def go() -> None:
        async with httpx.AsyncClient(transport=transport, base_url="http://sim") as client:
            body = {"model": app.served, "prompt": "hello", "max_tokens": 5}
            resp = await client.post(
                "/v1/completions", json=body, headers={"x-infermeter-request-id": "abc"}
            )
            assert resp.status_code == 200
        assert app.engine.ledger is not None
        app.engine.ledger.close()

    asyncio.run(go())
    totals = read_ledger(path)
    assert set(totals.request_ns) == {"abc"} and totals.request_ns["abc"] == totals.busy_ns > 0
