"""``infermeter up``: the whole stack on loopback, for demos and development.

Starts, in this order, each stage once the previous one is healthy: metering (DuckDB file in
the data directory); throttle and the engines (simulated vLLM replicas, default a whole H100
and a MIG slice of an A100, or real vLLM with ``--engine vllm``); one collector per engine;
the gateway (demo API keys, semantic cache, async jobs) and the dashboards; then the demo
traffic generator (``--no-traffic`` turns it off). Every service reads one configuration
generated under the data directory (:mod:`infermeter.stack.demo_stack`); the engines also keep the
user's ``[simulator]`` / ``[vllm]`` table. Ctrl-C stops everything in reverse order.
Options come from the ``[up]`` table; flags win.

This module is the command: its flags, the ``[up]`` table they override, the data
directory's lock, the banner and the run (supervision, the first-costs notice); what the run
starts is decided by :mod:`infermeter.stack.plan`.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import httpx

from infermeter.kernel.errors import ConfigError
from infermeter.kernel.settings import Config, section
from infermeter.stack.demo_stack import TENANTS, Secrets, StackLayout, write_stack
from infermeter.stack.plan import Plan, UpSettings
from infermeter.stack.supervisor import Supervisor

# flag -> (field, type, help)
_FLAGS: tuple[tuple[str, str, Any, str], ...] = (
    ("--host", "host", str, "address every service binds [127.0.0.1]"),
    ("--data-dir", "data_dir", str, "configuration, secrets, DuckDB file, spools and logs; "
     "reused by the next `up` [.data]"),
    ("--simulator-gpus", "simulator_gpus", str, "one simulated replica per GPU profile, "
     "comma-separated; a MIG slice as GPU:PROFILE [h100-sxm,a100-80gb:3g.40gb]"),
    ("--simulator-time-scale", "simulator_time_scale", float, "time scale of the simulated "
     "replicas (default: the [simulator] table's, else 1.0 = real time)"),
    ("--vllm-gpus", "vllm_gpus", str, "with --engine vllm on a GPU machine: one replica per "
     "entry (GPU i runs replica i), priced as this catalog GPU when NVML does not say; "
     "without a GPU one CPU replica, priced as the first entry [h100-sxm]"),
    ("--simulator-base-port", "simulator_base_port", int, "port of the first engine; the "
     "next ones follow [8000]"),
    ("--collector-base-port", "collector_base_port", int, "port of the first collector; "
     "the next ones follow [8100]"),
    ("--metering-port", "metering_port", int, "metering port [8200]"),
    ("--throttle-port", "throttle_port", int, "throttle port [8300]"),
    ("--gateway-port", "gateway_port", int, "gateway port [8080]"),
    ("--dashboard-port", "dashboard_port", int, "dashboards port [8501]"),
    ("--traffic-seed", "traffic_seed", int, "seed of the demo traffic [0]"),
    ("--traffic-rate", "traffic_rate", float, "demo requests per second, on average [3]"),
    ("--startup-timeout", "startup_timeout", float, "seconds each stage may take to become "
     "healthy (real vLLM: its own health_timeout_s) [60]"),
)  # fmt: skip
BASE_OFFSETS = {
    "simulator_base_port": 0,
    "collector_base_port": 10,
    "metering_port": 20,
    "throttle_port": 21,
    "gateway_port": 22,
    "dashboard_port": 23,
}


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add ``infermeter up``."""
    parser = subparsers.add_parser(
        "up",
        parents=[common],
        help="start the whole stack on 127.0.0.1 with demo traffic (Ctrl-C stops it)",
        description="Start every infermeter service on loopback, in order, and print where "
        "each listens: metering, throttle, the engines (simulated vLLM replicas, or real vLLM "
        "with --engine vllm), a collector per engine, the gateway, the dashboards and a demo "
        "traffic generator (five tenants with different tiers and habits). The configuration "
        "is generated under --data-dir; secrets, API keys and the DuckDB file there are "
        "reused by the next run. Ctrl-C (or SIGTERM) stops everything in reverse order, "
        "flushing pending usage records. Flags override the [up] table of the config file.",
    )
    parser.add_argument(
        "--engine",
        choices=["simulator", "vllm"],
        default=None,
        help="simulator: vLLM-compatible simulated replicas (default); vllm: real vLLM "
        "(`infermeter engine vllm`, with --cpu-dev when there is no GPU)",
    )
    for flag, name, kind, text in _FLAGS:
        parser.add_argument(flag, dest=name, type=kind, default=None, help=text)
    parser.add_argument(
        "--base-port",
        type=int,
        default=None,
        help="put every port in one range: engines at BASE, collectors BASE+10, metering "
        "BASE+20, throttle +21, gateway +22, dashboards +23 (explicit port flags win)",
    )
    parser.add_argument(
        "--traffic",
        dest="traffic",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run the demo traffic generator (--no-traffic: only your own requests)",
    )
    parser.set_defaults(func=run)


def settings_from(args: argparse.Namespace, config: Config) -> UpSettings:
    """The ``[up]`` table with the command-line flags applied."""
    base = section(config, "up", UpSettings).model_dump()
    updates: dict[str, object] = {}
    if args.base_port is not None:
        updates.update({k: args.base_port + off for k, off in BASE_OFFSETS.items()})
    for _flag, name, _kind, _text in _FLAGS:
        value = getattr(args, name, None)
        if value is not None:
            updates[name] = value
    for name in ("simulator_gpus", "vllm_gpus"):
        if isinstance(updates.get(name), str):
            updates[name] = [g.strip() for g in str(updates[name]).split(",") if g.strip()]
    if getattr(args, "insecure", False):
        updates["insecure"] = True
    for name in ("engine", "traffic"):
        if getattr(args, name, None) is not None:
            updates[name] = getattr(args, name)
    try:
        return UpSettings.model_validate({**base, **updates})
    except ValueError as exc:
        raise ConfigError(str(exc).splitlines()[-1], source="command line") from exc


def gpu_count() -> int:
    """NVIDIA GPUs NVML can see (0 without a driver)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return int(pynvml.nvmlDeviceGetCount())
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no library, no driver, no device: all mean "none"
        return 0


class FirstCostWatch:
    """Prints how long after ``up`` started metering first shows costs of this run."""

    def __init__(self, layout: StackLayout, read_token: str, started: float, out: Any) -> None:
        self.layout = layout
        self.headers = {"authorization": f"Bearer {read_token}"}
        self.started = started  # time.time() when `up` began
        self.out = out
        self.stop = threading.Event()
        hour = int(started // 3600 * 3600)
        self.params = {
            "by": "tenant",
            "granularity": "total",
            "since": datetime.fromtimestamp(hour, UTC).isoformat(),
        }
        self.baseline: float | None = None

    def total(self) -> float | None:
        try:
            resp = httpx.get(
                f"{self.layout.metering_url}/v1/reports/cost",
                params=self.params,
                headers=self.headers,
                timeout=5.0,
            )
        except httpx.HTTPError:
            return None
        if resp.status_code != 200:
            return None
        return float(sum(row["total_usd"] for row in resp.json()["rows"]))

    def run(self) -> None:
        while self.baseline is None and not self.stop.is_set():
            self.baseline = self.total()
            self.stop.wait(0.5)
        while not self.stop.wait(1.0):
            total = self.total()
            if total is not None and self.baseline is not None and total > self.baseline:
                took = time.time() - self.started
                print(
                    f"infermeter up: first costs visible {took:.1f} s after start "
                    f"(${total - self.baseline:.6f} so far; dashboard "
                    f"{self.layout.dashboard_url})",
                    file=self.out,
                    flush=True,
                )
                return

    def start(self) -> None:
        threading.Thread(target=self.run, name="first-costs", daemon=True).start()


def lock_data_dir(data_dir: Path) -> IO[str]:
    """An exclusive lock on ``data_dir`` (one ``up`` per data directory: one DuckDB writer)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    handle = (data_dir / "up.lock").open("a+", encoding="utf-8")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        handle.seek(0)
        owner = handle.read().strip() or "?"
        handle.close()
        raise ConfigError(
            f"{data_dir} is used by another `infermeter up` (pid {owner}); stop it or pass "
            "another --data-dir",
            field="--data-dir",
        ) from exc
    handle.truncate(0)
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def banner(plan: Plan, keys: Secrets) -> str:
    lay = plan.layout
    lines = [
        f"  dashboards: {lay.dashboard_url}",
        f"  gateway:    {lay.gateway_url}/v1  (model {lay.model!r})",
        f"  config:     {lay.config_path}  (secrets: {lay.secrets_path})",
        "  demo API keys:",
    ]
    lines += [
        f"    {t.name:<9} {t.tier:<7} {keys.api_keys[t.name]}  ({t.description})" for t in TENANTS
    ]
    key = keys.api_keys[TENANTS[0].name]
    lines.append(
        f"  try: curl {lay.gateway_url}/v1/chat/completions -H 'authorization: Bearer {key}' "
        f'-H \'content-type: application/json\' -d \'{{"model": "{lay.model}", '
        '"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 32}\''
    )
    return "\n".join(lines)


def run(args: argparse.Namespace, config: Config) -> int:
    """Handler of ``infermeter up``."""
    started = time.time()
    settings = settings_from(args, config)
    gpus = gpu_count() if settings.engine == "vllm" else 0
    plan = Plan(settings, config, gpus)
    supervisor = Supervisor(
        plan.services(),
        log_dir=plan.layout.log_dir,
        startup_timeout=settings.startup_timeout,
        out=sys.stdout,
    )
    supervisor.check_ports()  # before anything is written
    lock = lock_data_dir(plan.layout.data_dir)  # held until this process exits
    keys = Secrets.load_or_create(plan.layout.secrets_path)
    write_stack(plan.layout, keys, plan.engine_tables, plan.catalog)
    for problem in plan.unpriced():
        print(f"infermeter up: warning: no price for {problem}; its costs will be missing "
              "(add it to a catalog override, [metering] catalog)", file=sys.stderr)  # fmt: skip
    if plan.cpu_vllm:
        print(
            "infermeter up: no GPU found: real vLLM runs its CPU build (one replica, tiny "
            f"model), priced as {plan.layout.replicas[0].gpu} for the demo"
        )
    print(
        f"infermeter up: starting {len(supervisor.specs)} services "
        f"(data in {plan.layout.data_dir})",
        flush=True,
    )
    watch = FirstCostWatch(plan.layout, keys.read_token, started, sys.stdout)

    def ready() -> None:
        took = time.time() - started
        print(
            f"infermeter up: all {len(supervisor.specs)} services running after {took:.1f} s "
            f"(Ctrl-C stops them all)\n{supervisor.table()}\n{banner(plan, keys)}\n"
            f"  logs: {plan.layout.log_dir}",
            flush=True,
        )
        watch.start()

    try:
        return supervisor.run(on_ready=ready)
    finally:
        watch.stop.set()
        lock.close()
