"""Right-sizing advice computed from measured load and the simulator's performance model.

For each replica, the measured peak load (prompt and completion tokens per second in its
busiest hour) is set against the capacity of every MIG profile of its GPU (and the whole
GPU), with its current weights and quantized, as computed by
:class:`infermeter.capacity.perf_model.PerformanceModel` from the published GPU and model data
sheets in :mod:`infermeter.capacity.profiles`. A profile *fits* when the peak needs at most
``headroom`` of its engine time; the advice is the cheapest profile that fits, priced as the
share of the GPU it holds (``max(compute slices / 7, memory slices / 8)``, the catalog's
rule). Savings are in USD per day at the replica's measured cost.

Engine time needed per second of load::

    load = prompt_tokens_per_s / prefill_rate + completion_tokens_per_s / decode_rate

with ``prefill_rate`` the tokens/s of prefilling the mean prompt and ``decode_rate`` the
tokens/s of a decode step whose batch is what the KV cache holds at the mean context
(capped at ``max_batch``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from infermeter.capacity.errors import ProfileError
from infermeter.capacity.perf_model import PerformanceModel
from infermeter.capacity.profiles import (
    GPUS,
    GpuProfile,
    ModelProfile,
    resolve_gpu,
    resolve_model,
    resolve_quantization,
)

HEADROOM = 0.7
IDLE_UTILIZATION = 0.3
MAX_BATCH = 256
QUANTIZATIONS = ("fp8", "awq-int4")

# NVML device names → simulator GPU profiles (first match wins; order matters).
_GPU_NAMES = (
    (re.compile(r"h200"), "h200"),
    (re.compile(r"h100.*(pcie|nvl)"), "h100-pcie"),
    (re.compile(r"h100"), "h100-sxm"),
    (re.compile(r"a100.*80"), "a100-80gb"),
    (re.compile(r"a100"), "a100-40gb"),
    (re.compile(r"l40s"), "l40s"),
    (re.compile(r"\bl4\b"), "l4"),
)


def gpu_profile_name(gpu_model: str) -> str | None:
    """The simulator profile of an NVML device name (``NVIDIA H100 80GB HBM3`` →
    ``h100-sxm``), or of a profile name itself; None when unknown."""
    name = gpu_model.strip().lower()
    if name in GPUS:
        return name
    for pattern, profile in _GPU_NAMES:
        if pattern.search(name):
            return profile
    return None


def price_fraction(gpu: GpuProfile) -> float:
    """Share of the whole GPU's price a profile holds (1.0 for the whole GPU)."""
    if not gpu.mig_profile:
        return 1.0
    return max(gpu.compute_fraction, gpu.memory_fraction)


@dataclass(frozen=True)
class ReplicaLoad:
    """What was measured for one replica over the chosen range."""

    replica: str
    model: str
    gpu_model: str
    mig_profile: str = ""
    quantization: str = "bf16"
    utilization: float | None = None
    cost_usd_per_day: float = 0.0
    peak_prompt_tokens_per_s: float = 0.0
    peak_completion_tokens_per_s: float = 0.0
    mean_prompt_tokens: float = 512.0
    mean_completion_tokens: float = 128.0


@dataclass(frozen=True)
class Option:
    """One (profile, quantization) the replica could run on."""

    profile: str
    quantization: str
    price_fraction: float
    load: float
    fits: bool


@dataclass
class Advice:
    """The advice for one replica."""

    replica: str
    kind: str  # right_size | quantize | ok | over_capacity | idle | unknown
    message: str
    current: str = ""
    recommended: str = ""
    current_load: float | None = None
    recommended_load: float | None = None
    saving_usd_per_day: float = 0.0
    saving_fraction: float = 0.0
    options: list[Option] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        return {
            "replica": self.replica,
            "advice": self.kind,
            "current": self.current,
            "recommended": self.recommended,
            "peak_load_now": _round(self.current_load),
            "peak_load_after": _round(self.recommended_load),
            "saving_usd_per_day": round(self.saving_usd_per_day, 4),
            "saving_pct": round(100 * self.saving_fraction, 1),
            "why": self.message,
        }


def _pct(value: float | None) -> str:
    """A load as a percentage, with a decimal below 10% (so a light load never reads 0%)."""
    if value is None:
        return "?%"
    return f"{100 * value:.1f}%" if value < 0.1 else f"{100 * value:.0f}%"


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def engine_load(pm: PerformanceModel, load: ReplicaLoad) -> float:
    """Fraction of engine time the replica's peak load needs on ``pm``."""
    prompt = max(1, int(load.mean_prompt_tokens))
    context = max(1, int(load.mean_prompt_tokens + load.mean_completion_tokens / 2))
    batch = max(1, min(MAX_BATCH, pm.kv_capacity_tokens // context))
    decode_rate = batch / pm.decode_step_s(batch, context)
    chunk = min(prompt, 8192)
    prefill_rate = chunk / pm.prefill_s(chunk)
    return load.peak_prompt_tokens_per_s / prefill_rate + (
        load.peak_completion_tokens_per_s / decode_rate
    )


def _profiles(base: str) -> list[GpuProfile]:
    whole = resolve_gpu(base)
    slices = [resolve_gpu(f"{base}:{mig}") for mig in whole.mig_profiles]
    return [s for s in slices if price_fraction(s) < 1.0] + [whole]


def options(
    load: ReplicaLoad, model: ModelProfile, base: str, headroom: float = HEADROOM
) -> list[Option]:
    """Every profile of the replica's GPU × {current, quantized} weights that holds the
    model, with the engine load the measured peak would put on it."""
    out = []
    quants = dict.fromkeys([load.quantization, *QUANTIZATIONS])
    for gpu in _profiles(base):
        for qname in quants:
            try:
                pm = PerformanceModel(gpu, model, resolve_quantization(qname))
            except ProfileError:
                continue  # the weights (and a minimal KV cache) do not fit
            used = engine_load(pm, load)
            label = gpu.mig_profile or f"{base} (whole GPU)"
            out.append(Option(label, qname, price_fraction(gpu), used, used <= headroom))
    return out


def advise(load: ReplicaLoad, headroom: float = HEADROOM) -> Advice:
    """The cheapest fitting profile for one replica (same weights first), and why."""
    base = gpu_profile_name(load.gpu_model)
    current_label = f"{load.mig_profile or 'whole GPU'} ({load.quantization})"
    idle_note = ""
    if load.utilization is not None and load.utilization < IDLE_UTILIZATION:
        idle_note = f"busy only {100 * load.utilization:.0f}% of the time. "
    try:
        model = resolve_model(load.model)
    except ProfileError:
        model = None
    if base is None or model is None:
        missing = f"GPU {load.gpu_model!r}" if base is None else f"model {load.model!r}"
        return Advice(
            load.replica,
            "idle" if idle_note else "unknown",
            f"{idle_note}No performance profile for {missing}: capacity cannot be estimated.",
            current_label,
        )
    try:
        current_gpu = resolve_gpu(f"{base}:{load.mig_profile}" if load.mig_profile else base)
    except ProfileError as exc:
        return Advice(load.replica, "unknown", f"{idle_note}{exc}.", current_label)
    current_frac = price_fraction(current_gpu)
    opts = options(load, model, base, headroom)
    now = next(
        (
            o
            for o in opts
            if o.quantization == load.quantization
            and math.isclose(o.price_fraction, current_frac)
            and (o.profile == load.mig_profile or not load.mig_profile)
        ),
        None,
    )
    advice = Advice(load.replica, "ok", "", current_label, options=opts)
    advice.current_load = now.load if now else None
    fitting = [o for o in opts if o.fits]
    if not fitting:
        advice.kind = "over_capacity"
        advice.message = (
            f"{idle_note}Peak load exceeds {100 * headroom:.0f}% of every profile of {base}: "
            "add replicas (see the autoscale signals) rather than shrink."
        )
        return advice
    same = [o for o in fitting if o.quantization == load.quantization]
    best_same = min(same, key=lambda o: o.price_fraction) if same else None
    best_any = min(fitting, key=lambda o: (o.price_fraction, o.quantization != load.quantization))
    best = best_same
    if best is None or best_any.price_fraction < best.price_fraction - 1e-9:
        best = best_any
    ratio = best.price_fraction / current_frac
    if ratio >= 1.0 - 1e-9:
        over = advice.current_load is not None and advice.current_load > headroom
        advice.kind = "over_capacity" if over else ("idle" if idle_note else "ok")
        if over:
            fix = f"{best.profile} ({best.quantization}) holds it at {_pct(best.load)}"
            tail = f"{fix}, or add replicas (see the autoscale signals)."
        else:
            tail = "no smaller profile holds the model at this load."
        advice.message = (
            f"{idle_note}Peak needs {_pct(advice.current_load)} of the current profile; {tail}"
        )
        if over:
            advice.recommended = f"{best.profile} ({best.quantization})"
            advice.recommended_load = best.load
        return advice
    advice.kind = "right_size" if best.quantization == load.quantization else "quantize"
    advice.recommended = f"{best.profile} ({best.quantization})"
    advice.recommended_load = best.load
    advice.saving_fraction = 1.0 - ratio
    advice.saving_usd_per_day = load.cost_usd_per_day * (1.0 - ratio)
    how = (
        f"{best.profile} holds it"
        if advice.kind == "right_size"
        else f"quantized to {best.quantization}, {best.profile} holds it"
    )
    advice.message = (
        f"{idle_note}Peak needs {_pct(advice.current_load)} of the current "
        f"profile; {how} at {_pct(best.load)} of its capacity "
        f"(≤ {100 * headroom:.0f}% headroom) for {100 * ratio:.0f}% of the price."
        + (" Check output quality before quantizing." if advice.kind == "quantize" else "")
    )
    return advice


def quantization_savings(load: ReplicaLoad, headroom: float = HEADROOM) -> list[dict[str, Any]]:
    """Per quantization: the cheapest profile that holds the measured peak and the saving."""
    base = gpu_profile_name(load.gpu_model)
    try:
        model = resolve_model(load.model)
    except ProfileError:
        return []
    if base is None:
        return []
    try:
        current = resolve_gpu(f"{base}:{load.mig_profile}" if load.mig_profile else base)
    except ProfileError:
        return []
    current_frac = price_fraction(current)
    rows = []
    for qname in dict.fromkeys([load.quantization, *QUANTIZATIONS]):
        fitting = [o for o in options(load, model, base, headroom) if o.quantization == qname]
        best = min((o for o in fitting if o.fits), key=lambda o: o.price_fraction, default=None)
        saving = 1.0 - best.price_fraction / current_frac if best else 0.0
        rows.append(
            {
                "replica": load.replica,
                "model": load.model,
                "quantization": qname,
                "cheapest_fitting_profile": best.profile if best else "none fits",
                "peak_load": round(best.load, 4) if best else None,
                "saving_usd_per_day": round(max(saving, 0.0) * load.cost_usd_per_day, 4),
            }
        )
    return rows


def loads_from_reports(
    idle: Mapping[str, Any],
    gpu: Mapping[str, Any],
    hourly_by_model: Mapping[str, Mapping[str, Any]],
    days: float,
    quantization: str = "bf16",
) -> list[ReplicaLoad]:
    """Build each replica's measured load from metering reports: ``idle`` by replica,
    ``gpu`` at any granularity (device type and MIG profile of the replica), and per model
    the hourly cost report by replica (``hourly_by_model[model]``)."""
    cost: dict[str, float] = {}
    busy: dict[str, float] = {}
    prov: dict[str, float] = {}
    for r in idle.get("rows", []):
        key = r.get("replica") or ""
        cost[key] = cost.get(key, 0.0) + float(r.get("cost_usd") or 0.0)
        busy[key] = busy.get(key, 0.0) + float(r.get("busy_s") or 0.0)
        prov[key] = prov.get(key, 0.0) + float(r.get("provisioned_s") or 0.0)
    device: dict[str, tuple[str, str]] = {}
    for r in gpu.get("rows", []):
        if r.get("replica"):
            device.setdefault(r["replica"], (r.get("gpu_model", ""), r.get("mig_profile") or ""))
    out = []
    for model, report in sorted(hourly_by_model.items()):
        per: dict[str, list[Mapping[str, Any]]] = {}
        for r in report.get("rows", []):
            if r.get("replica"):
                per.setdefault(r["replica"], []).append(r)
        for replica, rows in sorted(per.items()):
            if replica not in device:
                continue
            peak = max(rows, key=lambda r: r["prompt_tokens"] + r["completion_tokens"])
            requests = sum(r["requests"] for r in rows) or 1
            out.append(
                ReplicaLoad(
                    replica=replica,
                    model=model,
                    gpu_model=device[replica][0],
                    mig_profile=device[replica][1],
                    quantization=quantization,
                    utilization=busy[replica] / prov[replica] if prov.get(replica) else None,
                    cost_usd_per_day=cost.get(replica, 0.0) / days if days > 0 else 0.0,
                    peak_prompt_tokens_per_s=peak["prompt_tokens"] / 3600.0,
                    peak_completion_tokens_per_s=peak["completion_tokens"] / 3600.0,
                    mean_prompt_tokens=sum(r["prompt_tokens"] for r in rows) / requests,
                    mean_completion_tokens=sum(r["completion_tokens"] for r in rows) / requests,
                )
            )
    return out


def advise_all(loads: Iterable[ReplicaLoad], headroom: float = HEADROOM) -> list[Advice]:
    """Advice for every replica, biggest saving first."""
    return sorted((advise(x, headroom) for x in loads), key=lambda a: -a.saving_usd_per_day)
