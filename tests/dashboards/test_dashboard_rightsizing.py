"""Right-sizing advice from measured load against the simulator's performance model."""

from __future__ import annotations

import pytest

from infermeter.capacity.perf_model import PerformanceModel
from infermeter.capacity.profiles import resolve_gpu, resolve_model, resolve_quantization
from infermeter.dashboards.rightsizing import (
    ReplicaLoad,
    advise,
    advise_all,
    engine_load,
    gpu_profile_name,
    loads_from_reports,
    price_fraction,
    quantization_savings,
)


def load(**overrides: object) -> ReplicaLoad:
    base: dict[str, object] = dict(
        replica="r1",
        model="llama-3.1-8b",
        gpu_model="NVIDIA H100 80GB HBM3",
        utilization=0.1,
        cost_usd_per_day=165.12,
        peak_prompt_tokens_per_s=200.0,
        peak_completion_tokens_per_s=50.0,
        mean_prompt_tokens=800,
        mean_completion_tokens=200,
    )
    return ReplicaLoad(**{**base, **overrides})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "profile"),
    [
        ("NVIDIA H100 80GB HBM3", "h100-sxm"),
        ("NVIDIA H100 PCIe", "h100-pcie"),
        ("NVIDIA H200", "h200"),
        ("NVIDIA A100-SXM4-80GB", "a100-80gb"),
        ("NVIDIA A100-SXM4-40GB", "a100-40gb"),
        ("NVIDIA L40S", "l40s"),
        ("NVIDIA L4", "l4"),
        ("h100-sxm", "h100-sxm"),
        ("Tesla T4", None),
    ],
)
def test_gpu_names_map_to_simulator_profiles(name: str, profile: str | None) -> None:
    assert gpu_profile_name(name) == profile


def test_price_fraction_follows_the_larger_of_compute_and_memory_share() -> None:
    assert price_fraction(resolve_gpu("h100-sxm")) == 1.0
    assert price_fraction(resolve_gpu("h100-sxm:3g.40gb")) == pytest.approx(0.5)  # 4/8 > 3/7
    assert price_fraction(resolve_gpu("h100-sxm:1g.10gb")) == pytest.approx(1 / 7)
    assert price_fraction(resolve_gpu("h100-sxm:4g.40gb")) == pytest.approx(4 / 7)


def test_engine_load_is_linear_in_the_measured_rate() -> None:
    pm = PerformanceModel(
        resolve_gpu("h100-sxm"), resolve_model("llama-3.1-8b"), resolve_quantization("bf16")
    )
    one = engine_load(pm, load())
    double = engine_load(
        pm, load(peak_prompt_tokens_per_s=400.0, peak_completion_tokens_per_s=100.0)
    )
    assert double == pytest.approx(2 * one)
    slice_pm = PerformanceModel(
        resolve_gpu("h100-sxm:3g.40gb"), resolve_model("llama-3.1-8b"), resolve_quantization("bf16")
    )
    assert engine_load(slice_pm, load()) > one  # a slice has less compute and bandwidth


def test_idle_whole_gpu_gets_a_smaller_mig_profile_with_same_weights() -> None:
    advice = advise(load(), headroom=0.7)
    same = [o for o in advice.options if o.quantization == "bf16" and o.fits]
    assert advice.kind in ("right_size", "quantize")
    cheapest_same = min(o.price_fraction for o in same)
    assert cheapest_same < 1.0
    assert advice.saving_usd_per_day >= 165.12 * (1 - cheapest_same) - 1e-6
    assert advice.saving_usd_per_day == pytest.approx(165.12 * advice.saving_fraction)
    assert "busy only 10%" in advice.message
    row = advice.row()
    assert row["replica"] == "r1" and row["saving_pct"] > 0


def test_bf16_8b_model_never_advised_onto_a_slice_too_small_for_its_weights() -> None:
    advice = advise(load(), headroom=0.7)
    profiles = {(o.profile, o.quantization) for o in advice.options}
    assert ("1g.10gb", "bf16") not in profiles  # 16 GB of weights do not fit in 10 GB
    assert ("1g.10gb", "awq-int4") in profiles


def test_quantization_is_suggested_only_when_it_saves_more() -> None:
    no_quant = advise(load(), headroom=0.7)
    rows = {r["quantization"]: r for r in quantization_savings(load(), headroom=0.7)}
    assert rows["awq-int4"]["cheapest_fitting_profile"] == "1g.10gb"
    assert rows["awq-int4"]["saving_usd_per_day"] >= rows["bf16"]["saving_usd_per_day"]
    if no_quant.kind == "quantize":
        assert no_quant.recommended.endswith("(awq-int4)")
        assert "Check output quality" in no_quant.message


def test_overloaded_replica_is_told_to_scale_not_shrink() -> None:
    heavy = load(
        utilization=0.95, peak_prompt_tokens_per_s=60000.0, peak_completion_tokens_per_s=20000.0
    )
    advice = advise(heavy)
    assert advice.kind == "over_capacity"
    assert advice.saving_usd_per_day == 0.0
    assert "add replicas" in advice.message


def test_right_sized_slice_is_left_alone() -> None:
    busy = load(
        gpu_model="NVIDIA H100 80GB HBM3",
        mig_profile="1g.20gb",
        utilization=0.8,
        peak_prompt_tokens_per_s=20.0,
        peak_completion_tokens_per_s=400.0,
    )
    advice = advise(busy, headroom=0.7)
    assert advice.kind in ("ok", "over_capacity", "quantize")
    assert advice.saving_usd_per_day >= 0.0


def test_unknown_model_or_gpu_is_said_plainly() -> None:
    advice = advise(load(model="my-private-model"))
    assert advice.kind == "idle" and "No performance profile for model" in advice.message
    assert advise(load(gpu_model="Tesla T4", utilization=0.9)).kind == "unknown"
    assert quantization_savings(load(model="my-private-model")) == []
    odd = advise(load(mig_profile="5g.50gb", utilization=0.9))  # not an H100 profile
    assert odd.kind == "unknown" and "no MIG profile '5g.50gb'" in odd.message
    assert quantization_savings(load(mig_profile="5g.50gb")) == []


def test_loads_from_reports_builds_peak_and_cost_per_day() -> None:
    idle = {
        "by": "replica",
        "rows": [
            {"replica": "a", "cost_usd": 10.0, "busy_s": 360.0, "provisioned_s": 3600.0},
            {"replica": "b", "cost_usd": 5.0, "busy_s": 3000.0, "provisioned_s": 3600.0},
        ],
    }
    gpu = {
        "rows": [
            {"replica": "a", "gpu_model": "NVIDIA H100 80GB HBM3", "mig_profile": ""},
            {"replica": "b", "gpu_model": "NVIDIA H100 80GB HBM3", "mig_profile": "3g.40gb"},
            {"replica": "", "gpu_model": "NVIDIA L4", "mig_profile": ""},
        ]
    }
    hourly = {
        "llama-3.1-8b": {
            "rows": [
                {"replica": "a", "requests": 10, "prompt_tokens": 3600, "completion_tokens": 7200},
                {"replica": "a", "requests": 30, "prompt_tokens": 36000, "completion_tokens": 3600},
                {"replica": "b", "requests": 5, "prompt_tokens": 100, "completion_tokens": 100},
                {"replica": "c", "requests": 5, "prompt_tokens": 100, "completion_tokens": 100},
            ]
        }
    }
    loads = {x.replica: x for x in loads_from_reports(idle, gpu, hourly, days=0.5)}
    assert set(loads) == {"a", "b"}  # c has no GPU samples naming it
    a = loads["a"]
    assert a.peak_prompt_tokens_per_s == 10.0 and a.peak_completion_tokens_per_s == 1.0
    assert a.mean_prompt_tokens == pytest.approx(39600 / 40)
    assert a.utilization == pytest.approx(0.1) and a.cost_usd_per_day == 20.0
    assert loads["b"].mig_profile == "3g.40gb"
    ordered = advise_all(loads.values())
    assert [x.saving_usd_per_day for x in ordered] == sorted(
        (x.saving_usd_per_day for x in ordered), reverse=True
    )
