"""``infermeter up``: the whole stack on loopback, for demos and development.

This first version starts simulated vLLM replicas (default two: a whole H100 and a MIG
slice of an A100, on ports 8000 and 8001) under :class:`serving.supervisor.Supervisor`.
Other services join by appending :class:`ServiceSpec` entries in :func:`services`.
Options come from the ``[up]`` table (the replicas also read ``[simulator]``); flags win.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from serving.settings import Config, section
from serving.supervisor import ServiceSpec, Supervisor


class UpSettings(BaseModel):
    """The ``[up]`` table."""

    model_config = ConfigDict(extra="allow")

    data_dir: str = ".data"
    host: str = "127.0.0.1"
    simulator_gpus: list[str] = Field(default_factory=lambda: ["h100-sxm", "a100-80gb:3g.40gb"])
    simulator_base_port: int = Field(default=8000, ge=1, le=65535)
    simulator_time_scale: float | None = Field(default=None, ge=0.0)
    startup_timeout: float = Field(default=60.0, gt=0.0)


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add ``infermeter up``."""
    parser = subparsers.add_parser(
        "up",
        parents=[common],
        help="start the whole stack on 127.0.0.1 (Ctrl-C stops it)",
        description="Start every infermeter service on loopback and print where each "
        "listens; Ctrl-C (or SIGTERM) stops them all. Today: simulated vLLM replicas, one per "
        "GPU profile in --simulator-gpus, on consecutive ports from --simulator-base-port. "
        "Flags override the [up] table of the config file.",
    )
    parser.add_argument("--host", default=None, help="address every service binds [127.0.0.1]")
    parser.add_argument(
        "--simulator-gpus",
        default=None,
        metavar="GPU[,GPU...]",
        help="one simulated replica per GPU profile, comma-separated; a MIG slice as "
        "GPU:PROFILE [h100-sxm,a100-80gb:3g.40gb]",
    )
    parser.add_argument(
        "--simulator-base-port",
        type=int,
        default=None,
        help="port of the first replica; the next ones follow [8000]",
    )
    parser.add_argument(
        "--simulator-time-scale",
        type=float,
        default=None,
        help="time scale of the replicas (default: the [simulator] table's, else 1.0)",
    )
    parser.add_argument(
        "--data-dir", default=None, help="where logs (and later data files) go [.data]"
    )
    parser.add_argument(
        "--startup-timeout",
        type=float,
        default=None,
        help="seconds to wait for every service to become healthy [60]",
    )
    parser.set_defaults(func=run)


def settings_from(args: argparse.Namespace, config: Config) -> UpSettings:
    base = section(config, "up", UpSettings)
    updates: dict[str, object] = {}
    for name in ("host", "simulator_base_port", "simulator_time_scale", "data_dir"):
        if getattr(args, name) is not None:
            updates[name] = getattr(args, name)
    if args.startup_timeout is not None:
        updates["startup_timeout"] = args.startup_timeout
    if args.simulator_gpus is not None:
        updates["simulator_gpus"] = [g.strip() for g in args.simulator_gpus.split(",") if g]
    return UpSettings.model_validate({**base.model_dump(), **updates})


def services(settings: UpSettings, config_path: str | None) -> list[ServiceSpec]:
    """Every service ``up`` starts, in start order."""
    specs = []
    for i, gpu in enumerate(settings.simulator_gpus):
        port = settings.simulator_base_port + i
        name = f"simulator-{i}"
        argv = [sys.executable, "-m", "serving"]
        argv += ["engine", "simulate", "--host", settings.host, "--port", str(port)]
        argv += ["--gpu", gpu, "--replica-name", name]
        if config_path:
            argv += ["--config", config_path]
        if settings.simulator_time_scale is not None:
            argv += ["--time-scale", str(settings.simulator_time_scale)]
        specs.append(
            ServiceSpec(
                name=name,
                argv=argv,
                health_url=f"http://{settings.host}:{port}/health",
                host=settings.host,
                port=port,
                description=f"vLLM-compatible simulator on {gpu}",
            )
        )
    return specs


def run(args: argparse.Namespace, config: Config) -> int:
    """Handler of ``infermeter up``."""
    settings = settings_from(args, config)
    supervisor = Supervisor(
        services(settings, args.config),
        log_dir=Path(settings.data_dir) / "logs",
        startup_timeout=settings.startup_timeout,
        out=sys.stdout,
    )
    return supervisor.run()
