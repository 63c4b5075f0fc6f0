"""Data sheets the performance model runs on: GPUs (and MIG slices), models, quantizations.

GPU figures are the vendors' published dense (no sparsity) peak numbers; memory sizes are
what NVML reports as total memory. A MIG slice is written ``<gpu>:<N>g.<M>gb``: it gets N/7
of the compute and the fraction of memory (and memory bandwidth) of its memory slices (an
H100 80GB has 8 memory slices of 10 GB; ``3g.40gb`` holds 4 of them).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace

from infermeter.capacity.errors import ProfileError

GIB = 1 << 30
MIB = 1 << 20
TERA = 1e12


@dataclass(frozen=True)
class GpuProfile:
    """One GPU, or one MIG slice of it (then ``mig_profile`` is set)."""

    name: str
    memory_bytes: int
    bandwidth_bytes_s: float
    bf16_flops: float
    fp8_flops: float | None  # None: no FP8 tensor cores (FP8 weights run as W8A16)
    interconnect_bytes_s: float  # GPU-to-GPU bandwidth per direction (NVLink or PCIe)
    mig_profiles: tuple[str, ...] = ()
    mig_profile: str = ""
    compute_fraction: float = 1.0
    memory_fraction: float = 1.0

    @property
    def model_name(self) -> str:
        """The GPU model this profile (or slice) belongs to."""
        return self.name.split(":", 1)[0]


@dataclass(frozen=True)
class ModelProfile:
    """A dense decoder-only transformer, described by what its costs depend on."""

    name: str
    params: float
    layers: int
    hidden_size: int
    attention_heads: int
    kv_heads: int
    head_dim: int
    vocab_size: int
    max_context: int

    def kv_bytes_per_token(self, kv_dtype_bytes: float = 2.0) -> float:
        """Bytes of K and V cache one token occupies over all layers."""
        return 2 * self.layers * self.kv_heads * self.head_dim * kv_dtype_bytes


@dataclass(frozen=True)
class Quantization:
    """How weights are stored and which tensor-core rate the matmuls use."""

    name: str
    bytes_per_param: float
    fp8_compute: bool


_H100_MIG = ("1g.10gb", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb")
NVLINK4, NVLINK3, PCIE5, PCIE4 = 450e9, 300e9, 64e9, 32e9  # bytes/s per direction

GPUS: dict[str, GpuProfile] = {
    g.name: g
    for g in (
        # name, memory, bandwidth, dense BF16, dense FP8, interconnect, MIG profiles
        GpuProfile(
            "h100-sxm", 81559 * MIB, 3.35 * TERA, 989 * TERA, 1979 * TERA, NVLINK4, _H100_MIG
        ),
        GpuProfile("h100-pcie", 81559 * MIB, 2.0 * TERA, 756 * TERA, 1513 * TERA, PCIE5, _H100_MIG),
        GpuProfile(
            "h200", 143771 * MIB, 4.8 * TERA, 989 * TERA, 1979 * TERA, NVLINK4,
            ("1g.18gb", "1g.35gb", "2g.35gb", "3g.71gb", "4g.71gb", "7g.141gb"),
        ),
        GpuProfile(
            "a100-80gb", 81920 * MIB, 2.039 * TERA, 312 * TERA, None, NVLINK3,
            ("1g.10gb", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb"),
        ),
        GpuProfile(
            "a100-40gb", 40960 * MIB, 1.555 * TERA, 312 * TERA, None, NVLINK3,
            ("1g.5gb", "1g.10gb", "2g.10gb", "3g.20gb", "4g.20gb", "7g.40gb"),
        ),
        GpuProfile("l40s", 46068 * MIB, 0.864 * TERA, 362 * TERA, 733 * TERA, PCIE4),
        GpuProfile("l4", 23034 * MIB, 0.300 * TERA, 121 * TERA, 242.5 * TERA, PCIE4),
    )
}  # fmt: skip

MODELS: dict[str, ModelProfile] = {
    m.name: m
    for m in (
        ModelProfile("llama-3.1-8b", 8.03e9, 32, 4096, 32, 8, 128, 128256, 131072),
        ModelProfile("llama-3.1-70b", 70.6e9, 80, 8192, 64, 8, 128, 128256, 131072),
        ModelProfile("llama-3.2-1b", 1.24e9, 16, 2048, 32, 8, 64, 128256, 131072),
        ModelProfile("llama-3.2-3b", 3.21e9, 28, 3072, 24, 8, 128, 128256, 131072),
        ModelProfile("mistral-7b", 7.25e9, 32, 4096, 32, 8, 128, 32768, 32768),
        ModelProfile("qwen2.5-7b", 7.62e9, 28, 3584, 28, 4, 128, 152064, 32768),
        ModelProfile("qwen2.5-32b", 32.8e9, 64, 5120, 40, 8, 128, 152064, 32768),
    )
}

QUANTIZATIONS: dict[str, Quantization] = {
    q.name: q
    for q in (
        Quantization("bf16", 2.0, False),
        Quantization("fp16", 2.0, False),
        Quantization("fp8", 1.0, True),
        # 4-bit weights + one fp16 scale and zero point per group of 128: 4.25 bits/param.
        Quantization("awq-int4", 0.53125, False),
        Quantization("gptq-int4", 0.53125, False),
    )
}
_QUANT_ALIASES = {"auto": "bf16", "none": "bf16", "awq": "awq-int4", "gptq": "gptq-int4"}

_MIG_RE = re.compile(r"^(?P<g>[1-7])g\.(?P<m>\d+)gb$")


def _names(table: Mapping[str, object]) -> str:
    return ", ".join(sorted(table))


def resolve_gpu(spec: str) -> GpuProfile:
    """The profile for ``"h100-sxm"`` or a MIG slice such as ``"h100-sxm:3g.40gb"``."""
    base_name, _, mig = spec.strip().lower().partition(":")
    base = GPUS.get(base_name)
    if base is None:
        raise ProfileError(f"unknown GPU profile {base_name!r}; known: {_names(GPUS)}")
    if not mig:
        return base
    if mig not in base.mig_profiles:
        allowed = ", ".join(base.mig_profiles) or "none (no MIG support)"
        raise ProfileError(f"{base_name} has no MIG profile {mig!r}; valid: {allowed}")
    match = _MIG_RE.match(mig)
    if match is None:  # every listed profile matches; kept for type narrowing
        raise ProfileError(f"malformed MIG profile {mig!r}")
    total_gb = int(base.mig_profiles[-1].split(".")[1][:-2])
    memory_slices = max(1, round(int(match["m"]) / (total_gb / 8)))
    compute = int(match["g"]) / 7
    memory = memory_slices / 8
    return replace(
        base,
        name=f"{base_name}:{mig}",
        memory_bytes=int(base.memory_bytes * memory),
        bandwidth_bytes_s=base.bandwidth_bytes_s * memory,
        bf16_flops=base.bf16_flops * compute,
        fp8_flops=None if base.fp8_flops is None else base.fp8_flops * compute,
        mig_profile=mig,
        compute_fraction=compute,
        memory_fraction=memory,
    )


def resolve_model(name: str) -> ModelProfile:
    """The model profile called ``name``."""
    model = MODELS.get(name.strip().lower())
    if model is None:
        raise ProfileError(f"unknown model profile {name!r}; known: {_names(MODELS)}")
    return model


def resolve_quantization(name: str) -> Quantization:
    """The quantization called ``name`` (``awq``/``gptq``/``auto`` are accepted aliases)."""
    key = name.strip().lower()
    quant = QUANTIZATIONS.get(_QUANT_ALIASES.get(key, key))
    if quant is None:
        raise ProfileError(f"unknown quantization {name!r}; known: {_names(QUANTIZATIONS)}")
    return quant
