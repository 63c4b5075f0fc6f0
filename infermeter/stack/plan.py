"""What one ``infermeter up`` run starts, decided before anything is written or started.

The ``[up]`` table (:class:`UpSettings`, with the command line's flags applied by
:mod:`infermeter.stack.up_cli`) and the number of GPUs found become a :class:`Plan`: the
layout of ports and the data directory (:class:`~infermeter.stack.demo_stack.StackLayout`),
the engine tables that go into the generated configuration, the price catalog it names, and
one :class:`~infermeter.stack.supervisor.ServiceSpec` per service, in start stages (``CORE``
metering, throttle and the engines; ``SIDECARS`` the collectors; ``FRONT`` the gateway and the
dashboards; ``TRAFFIC`` the demo traffic). Nothing here binds a port or starts a process.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from infermeter.kernel.errors import ConfigError
from infermeter.kernel.settings import Config, section
from infermeter.serving.simulator.settings import SimulatorSettings
from infermeter.serving.vllm.launcher import VllmSettings
from infermeter.stack.demo_stack import DEMO_MODEL, TENANTS, Replica, StackLayout
from infermeter.stack.demo_traffic import is_loopback
from infermeter.stack.supervisor import ServiceSpec

PY = sys.executable
CPU_VLLM_MODEL_LEN = 512  # serving/vllm_launcher.py CPU_DEV_DEFAULTS
# Start stages: each starts once the previous one is healthy; they stop in reverse order.
CORE, SIDECARS, FRONT, TRAFFIC = 0, 1, 2, 3


class UpSettings(BaseModel):
    """The ``[up]`` table."""

    model_config = ConfigDict(extra="forbid")

    data_dir: str = ".data"
    host: str = "127.0.0.1"
    engine: Literal["simulator", "vllm"] = "simulator"
    simulator_gpus: list[str] = Field(default_factory=lambda: ["h100-sxm", "a100-80gb:3g.40gb"])
    simulator_time_scale: float | None = Field(default=None, ge=0.0)
    vllm_gpus: list[str] = Field(default_factory=lambda: ["h100-sxm"])
    simulator_base_port: int = Field(default=8000, ge=1, le=65535)
    collector_base_port: int = Field(default=8100, ge=1, le=65535)
    metering_port: int = Field(default=8200, ge=1, le=65535)
    throttle_port: int = Field(default=8300, ge=1, le=65535)
    gateway_port: int = Field(default=8080, ge=1, le=65535)
    dashboard_port: int = Field(default=8501, ge=1, le=65535)
    traffic: bool = True
    traffic_seed: int = 0
    traffic_rate: float = Field(default=3.0, gt=0.0, le=50.0)
    startup_timeout: float = Field(default=60.0, gt=0.0)
    insecure: bool = False  # --insecure: lets the dashboards (no login) bind off loopback


PORT_OPTIONS = {
    "metering": "--metering-port",
    "throttle": "--throttle-port",
    "simulator": "--simulator-base-port",
    "vllm": "--simulator-base-port",
    "collector": "--collector-base-port",
    "gateway": "--gateway-port",
    "dashboards": "--dashboard-port",
}


class Plan:
    """What one ``up`` run starts: the layout, the engine tables and the service specs."""

    def __init__(self, settings: UpSettings, config: Config, gpus: int) -> None:
        self.settings = settings
        self.gpus = gpus
        self.cpu_vllm = settings.engine == "vllm" and gpus == 0
        self.engine_tables: dict[str, dict[str, Any]] = {}
        catalog = str(config.table("metering").get("catalog", "") or "")
        self.catalog = str(Path(catalog).resolve()) if catalog else ""
        if settings.engine == "simulator":
            table = dict(config.table("simulator"))
            table.setdefault("served_model_name", DEMO_MODEL)
            self.engine_tables["simulator"] = table
            model = section(Config({"simulator": table}), "simulator", SimulatorSettings)
            self.model = model.served_name
            self.max_model_len = model.max_model_len or 8192
            profiles = settings.simulator_gpus
        else:
            table = dict(config.table("vllm"))
            self.engine_tables["vllm"] = table
            vllm = section(config, "vllm", VllmSettings)
            if self.cpu_vllm:
                self.model = "tiny-llama"
                self.max_model_len = CPU_VLLM_MODEL_LEN
                profiles = settings.vllm_gpus[:1]  # one CPU replica, priced as a nominal GPU
            else:
                self.model = vllm.served_model_name or vllm.model or DEMO_MODEL
                self.max_model_len = vllm.max_model_len or 8192
                profiles = settings.vllm_gpus[: max(gpus, 1)]
        if not profiles:
            raise ConfigError("needs at least one GPU profile", field="up.simulator_gpus")
        prefix = "simulator" if settings.engine == "simulator" else "vllm"
        self.layout = StackLayout(
            host=settings.host,
            data_dir=Path(settings.data_dir).resolve(),
            model=self.model,
            replicas=tuple(
                Replica(
                    name=f"{prefix}-{i}",
                    gpu=gpu,
                    engine_port=settings.simulator_base_port + i,
                    collector_port=settings.collector_base_port + i,
                )
                for i, gpu in enumerate(profiles)
            ),
            metering_port=settings.metering_port,
            throttle_port=settings.throttle_port,
            gateway_port=settings.gateway_port,
            dashboard_port=settings.dashboard_port,
            insecure=settings.insecure,
        )

    def unpriced(self) -> list[str]:
        """Replicas metering's price catalog cannot price (their costs would be missing)."""
        from infermeter.kernel.errors import CatalogError
        from infermeter.kernel.price_catalog import load_catalog

        try:
            catalog = load_catalog(self.catalog or None)
        except CatalogError as exc:
            return [f"price catalog: {exc}"]
        missing = []
        for replica in self.layout.replicas:
            try:
                catalog.usd_per_hour(*replica.catalog_gpu)
            except CatalogError as exc:
                missing.append(f"{replica.name} on {replica.gpu}: {exc}")
        return missing

    def services(self) -> list[ServiceSpec]:
        """Every service ``up`` starts, with its stage."""
        lay = self.layout
        if not is_loopback(lay.host) and not lay.insecure:
            raise ConfigError(
                f"the dashboards have no login of their own: binding every service on "
                f"{lay.host} needs --insecure (then put the dashboards behind your SSO proxy), "
                "or bind 127.0.0.1",
                field="--host",
            )
        specs = [
            self._spec("metering", ["metering", "serve", "--log-level", "warning"],
                       lay.metering_port, "/readyz", f"costs, DuckDB {lay.storage_path}",
                       CORE, stop_timeout=30.0, stop_rank=-1),  # last: the others flush into it
            self._spec("throttle", ["throttle", "serve"], lay.throttle_port, "/healthz",
                       f"limits + autoscale signals, policy {lay.policy_path.name}", CORE),
        ]  # fmt: skip
        specs += [self._engine(i, r) for i, r in enumerate(lay.replicas)]
        specs += [self._collector(i, r) for i, r in enumerate(lay.replicas)]
        specs += [
            self._spec("gateway", ["gateway"], lay.gateway_port, "/healthz",
                       f"OpenAI API for {lay.model}", FRONT, stop_timeout=20.0),
            self._spec("dashboards", ["dashboard"], lay.dashboard_port, "/_stcore/health",
                       "Streamlit: fleet, costs, tenants, capacity", FRONT,
                       startup_timeout=max(self.settings.startup_timeout, 90.0)),
        ]  # fmt: skip
        if self.settings.traffic:
            if not is_loopback(lay.connect_host):
                raise ConfigError(
                    f"the demo traffic only targets loopback, not {lay.connect_host}: add "
                    "--no-traffic, or bind 127.0.0.1 or 0.0.0.0",
                    field="--host",
                )
            specs.append(self._traffic())
        return specs

    def _spec(
        self, name: str, command: list[str], port: int | None, health: str | None,
        what: str, stage: int, **kw: Any,
    ) -> ServiceSpec:  # fmt: skip
        lay = self.layout
        argv = [PY, "-m", "infermeter", *command, "--config", str(lay.config_path)]
        url = f"{lay.url(port)}{health}" if port is not None and health else None
        option = PORT_OPTIONS.get(name.rstrip("0123456789").rstrip("-"), "")
        hint = f"{option} or --base-port" if option else ""
        return ServiceSpec(name, argv, url, lay.host, port, what, stage=stage,
                           port_option=hint, **kw)  # fmt: skip

    def _engine(self, index: int, replica: Replica) -> ServiceSpec:
        s = self.settings
        where = ["--host", s.host, "--port", str(replica.engine_port)]
        if s.engine == "simulator":
            argv = ["engine", "simulate", *where, "--gpu", replica.gpu,
                    "--replica-name", replica.name]  # fmt: skip
            if s.simulator_time_scale is not None:
                argv += ["--time-scale", str(s.simulator_time_scale)]
            what = f"vLLM-compatible simulator on {replica.gpu}"
            return self._spec(replica.name, argv, replica.engine_port, "/health", what, CORE)
        argv = ["engine", "vllm", *where]
        argv += ["--cpu-dev"] if self.cpu_vllm else ["--device", str(index)]
        vllm = section(Config({"vllm": self.engine_tables["vllm"]}), "vllm", VllmSettings)
        device = "CPU build, tiny model" if self.cpu_vllm else f"GPU {index}"
        what = f"real vLLM ({device}), priced as {replica.gpu}"
        return self._spec(replica.name, argv, replica.engine_port, "/health", what, CORE,
                          startup_timeout=vllm.health_timeout_s,
                          stop_timeout=vllm.stop_grace_s + 10)  # fmt: skip

    def _collector(self, index: int, replica: Replica) -> ServiceSpec:
        lay = self.layout
        argv = ["collector", "--upstream", lay.url(replica.engine_port),
                "--port", str(replica.collector_port), "--replica", replica.name,
                "--spool-dir", str(lay.spool_dir(replica)), "--log-level", "warning"]  # fmt: skip
        if self.settings.engine == "simulator":
            argv.append("--no-nvml")  # simulated GPUs: metering prices [metering.replicas]
        return self._spec(f"collector-{index}", argv, replica.collector_port, "/healthz",
                          f"sidecar of {replica.name}", SIDECARS, stop_timeout=20.0)  # fmt: skip

    def _traffic(self) -> ServiceSpec:
        s, lay = self.settings, self.layout
        argv = [PY, "-m", "infermeter.stack.demo_traffic", "--gateway", lay.gateway_url,
                "--model", lay.model, "--keys", str(lay.secrets_path),
                "--stats", str(lay.traffic_stats_path), "--seed", str(s.traffic_seed),
                "--rate", str(s.traffic_rate),
                "--max-model-len", str(self.max_model_len)]  # fmt: skip
        what = "tenants " + ", ".join(t.name for t in TENANTS)
        return ServiceSpec("demo-traffic", argv, None, lay.host, None, what, stage=TRAFFIC,
                           stop_timeout=15.0)  # fmt: skip
