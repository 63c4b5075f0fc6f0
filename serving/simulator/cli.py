"""``infermeter engine simulate``: run one simulated vLLM replica on loopback.

Options come from the ``[simulator]`` table of the config file (and its environment
overrides); every flag given on the command line wins over the file.
"""

from __future__ import annotations

import argparse
import errno
import json
import socket
import sys
from typing import Any

from pydantic import ValidationError

from infermeter.capacity.profiles import GPUS, MODELS, QUANTIZATIONS
from infermeter.kernel.errors import ConfigError, PortInUse
from infermeter.kernel.settings import Config, section
from infermeter.serving.simulator.settings import SimulatorSettings

# flag -> (settings field, type, help). Defaults shown are SimulatorSettings'.
_OPTIONS: tuple[tuple[str, str, Any, str], ...] = (
    ("--host", "host", str, "address to listen on"),
    ("--port", "port", int, "TCP port to listen on"),
    ("--model", "model", str, f"model profile: {', '.join(MODELS)}"),
    ("--served-model-name", "served_model_name", str,
     "model name clients send and /v1/models lists (default: the model profile)"),
    ("--gpu", "gpu", str,
     f"GPU profile: {', '.join(GPUS)}; a MIG slice as GPU:PROFILE, e.g. h100-sxm:3g.40gb"),
    ("--quantization", "quantization", str,
     f"weight format: {', '.join(QUANTIZATIONS)} (aliases: awq, gptq, auto)"),
    ("--tensor-parallel-size", "tensor_parallel_size", int,
     "GPUs the model is split over (tensor parallelism; whole GPUs only)"),
    ("--max-num-seqs", "max_num_seqs", int, "most sequences in one batch (vLLM --max-num-seqs)"),
    ("--max-model-len", "max_model_len", int,
     "context length (default: the model's, capped at what the KV cache holds)"),
    ("--max-num-batched-tokens", "max_num_batched_tokens", int,
     "token budget of one step; longer prompts are prefilled in chunks"),
    ("--gpu-memory-utilization", "gpu_memory_utilization", float,
     "fraction of GPU memory for weights + KV cache (vLLM's flag)"),
    ("--block-size", "block_size", int, "KV-cache block size in tokens"),
    ("--kv-cache-dtype", "kv_cache_dtype", str,
     "KV-cache element type: auto (the model's 16-bit type) or fp8/fp8_e4m3/fp8_e5m2 (1 byte)"),
    ("--seed", "seed", int, "seed of generated text and output lengths"),
    ("--time-scale", "time_scale", float,
     "wall seconds per modelled second: 1 = real time, 0.1 = 10x faster, 0 = no waiting"),
    ("--replica-name", "replica_name", str,
     "replica label in infermeter_simulator_info (default: HOST:PORT)"),
    ("--output-tokens-median", "output_tokens_median", float,
     "median completion length before end-of-sequence (log-normal)"),
    ("--output-tokens-sigma", "output_tokens_sigma", float,
     "spread (sigma of the log) of completion lengths"),
    ("--mfu", "mfu", float, "model FLOPs utilisation of compute-bound steps"),
    ("--bandwidth-efficiency", "bandwidth_efficiency", float,
     "achieved fraction of peak memory bandwidth in memory-bound steps"),
    ("--step-overhead-ms", "step_overhead_ms", float, "fixed time per engine step"),
    ("--ledger", "ledger", str,
     "write the ground-truth ledger (each step's GPU time split over its requests) to this "
     "JSON-lines file; off by default, for accuracy tests (docs/metering.md)"),
)  # fmt: skip


def register(
    engine_subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser
) -> None:
    """Add ``simulate`` under ``infermeter engine``."""
    parser = engine_subparsers.add_parser(
        "simulate",
        parents=[common],
        help="vLLM-compatible simulator (no GPU): same API, streams and /metrics",
        description="Serve the vLLM OpenAI API with timings from a performance model of "
        "continuous batching on a named GPU (docs/simulator.md). Each option overrides the "
        "[simulator] table of the config file.",
    )
    defaults = SimulatorSettings()
    for flag, name, kind, text in _OPTIONS:
        default = getattr(defaults, name)
        parser.add_argument(
            flag,
            dest=name,
            type=kind,
            default=None,
            help=f"{text} [default: {default}]" if default is not None else text,
        )
    parser.add_argument(
        "--enable-prefix-caching",
        dest="enable_prefix_caching",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="reuse the KV blocks of identical prompt prefixes, as vLLM does by default "
        "[default: on]",
    )
    parser.add_argument(
        "--enable-prompt-tokens-details",
        dest="enable_prompt_tokens_details",
        action="store_true",
        default=None,
        help="report prefix-cache hits as usage.prompt_tokens_details.cached_tokens, as vLLM "
        "does with this flag (metering then charges only the prompt tokens computed)",
    )
    parser.add_argument(
        "--log-level",
        default="warning",
        choices=["critical", "error", "warning", "info", "debug"],
        help="uvicorn log level",
    )
    parser.set_defaults(func=run)
    sub = parser.add_subparsers(dest="simulate_command", metavar="SUBCOMMAND")
    spec = sub.add_parser(
        "openapi",
        parents=[common],
        help="print the OpenAPI document served at /openapi.json (JSON)",
        description="Print the simulator's OpenAPI 3.1 document for the model and context "
        "length the options give, without a server.",
    )
    spec.set_defaults(func=run_openapi)


def settings_from(args: argparse.Namespace, config: Config) -> SimulatorSettings:
    """The [simulator] table with the command-line flags applied over it."""
    base = section(config, "simulator", SimulatorSettings)
    overrides = {name: getattr(args, name) for _, name, _, _ in _OPTIONS}
    overrides["enable_prefix_caching"] = args.enable_prefix_caching
    overrides["enable_prompt_tokens_details"] = args.enable_prompt_tokens_details
    merged = {**base.model_dump(), **{k: v for k, v in overrides.items() if v is not None}}
    try:
        return SimulatorSettings.model_validate(merged)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = str(first["loc"][0]) if first["loc"] else ""
        flag = "--" + name.replace("_", "-")
        raise ConfigError(first["msg"], source="command line", field=flag) from exc


def run_openapi(args: argparse.Namespace, config: Config) -> int:
    """Handler of ``infermeter engine simulate openapi``."""
    from infermeter.serving.simulator.openapi import simulator_openapi
    from infermeter.serving.simulator.settings import build_profile

    settings = settings_from(args, config)
    doc = simulator_openapi(settings.served_name, build_profile(settings).max_model_len)
    print(json.dumps(doc, indent=2, sort_keys=True))
    return 0


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port, or PortInUse naming it."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortInUse(host, port, "the simulator") from exc
        raise
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def run(args: argparse.Namespace, config: Config) -> int:
    """Handler of ``infermeter engine simulate``."""
    import uvicorn

    from infermeter.serving.simulator.server import create_app

    settings = settings_from(args, config)
    app = create_app(settings)
    sock = bind(settings.host, settings.port)
    port = sock.getsockname()[1]
    perf = app.profile.perf
    print(
        f"infermeter simulator: {settings.served_name} ({perf.model.name}, "
        f"{perf.quantization.name}) on {perf.gpu.name}, KV cache {perf.kv_capacity_tokens} "
        f"tokens, max_model_len {app.max_model_len}, time scale {settings.time_scale}; "
        f"listening on http://{settings.host}:{port}",
        flush=True,
    )
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            loop="uvloop",
            http="httptools",
            lifespan="on",
            log_level=args.log_level,
            access_log=False,
            timeout_graceful_shutdown=3,
        )
    )
    server.run(sockets=[sock])
    sys.stdout.flush()
    return 0
