"""``infermeter up``: flags, the plan of services, the generated configuration (validated by
every service's own settings models), secrets kept across runs, and the supervisor (stages,
ordered stop, a taken port, a child dying at start) with real child processes."""

from __future__ import annotations

import io
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from infermeter.collector.settings import CollectorSettings
from infermeter.dashboards.settings import load_settings as dashboard_settings
from infermeter.kernel.cli import build_parser
from infermeter.kernel.errors import ConfigError, PortInUse
from infermeter.kernel.settings import Config, load_config, section
from infermeter.metering.settings import MeteringSettings
from infermeter.serving.errors import EngineError
from infermeter.serving.gateway.settings import GatewaySettings
from infermeter.serving.simulator.settings import SimulatorSettings
from infermeter.stack.demo_stack import TENANTS, Secrets, write_stack
from infermeter.stack.plan import Plan
from infermeter.stack.supervisor import ServiceSpec, Supervisor
from infermeter.stack.up_cli import settings_from
from infermeter.throttle import settings as throttle_settings
from infermeter.throttle.policy_source import parse_document
from tests.conftest import free_port_range, free_ports

PY = sys.executable


def plan(argv: list[str], tmp_path: Path, gpus: int = 0, config: Config | None = None) -> Plan:
    args = build_parser().parse_args(["up", "--data-dir", str(tmp_path / "data"), *argv])
    config = config or Config({})
    return Plan(settings_from(args, config), config, gpus)


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_default_layout_matches_the_documented_ports(tmp_path: Path) -> None:
    specs = {s.name: s for s in plan([], tmp_path).services()}
    assert {n: s.port for n, s in specs.items()} == {
        "metering": 8200, "throttle": 8300, "simulator-0": 8000, "simulator-1": 8001,
        "collector-0": 8100, "collector-1": 8101, "gateway": 8080, "dashboards": 8501,
        "demo-traffic": None,
    }  # fmt: skip
    sim = list(specs["simulator-1"].argv)
    assert (
        flag(sim, "--gpu") == "a100-80gb:3g.40gb" and flag(sim, "--replica-name") == "simulator-1"
    )
    collector = list(specs["collector-1"].argv)
    assert flag(collector, "--upstream") == "http://127.0.0.1:8001"
    assert flag(collector, "--replica") == "simulator-1" and "--no-nvml" in collector
    config_file = str((tmp_path / "data" / "infermeter.toml").resolve())
    assert all(flag(list(s.argv), "--config") == config_file for n, s in specs.items()
               if n != "demo-traffic")  # fmt: skip
    traffic = list(specs["demo-traffic"].argv)
    assert flag(traffic, "--gateway") == "http://127.0.0.1:8080"
    assert flag(traffic, "--model") == "meta-llama/Llama-3.1-8B-Instruct"


def test_start_stages_follow_the_dependencies_and_metering_stops_last(tmp_path: Path) -> None:
    specs = plan([], tmp_path).services()
    stage = {s.name: s.stage for s in specs}
    assert stage["metering"] <= stage["throttle"] == stage["simulator-0"] < stage["collector-0"]
    assert stage["collector-0"] < stage["gateway"] == stage["dashboards"] < stage["demo-traffic"]
    order = [[s.name for s in group] for group in Supervisor(specs, log_dir=tmp_path).stop_groups()]
    assert order[0] == ["demo-traffic"] and order[-1] == ["metering"]
    assert order.index(["gateway", "dashboards"]) < order.index(["collector-0", "collector-1"])


def test_base_port_puts_everything_in_one_range_and_explicit_ports_win(tmp_path: Path) -> None:
    argv = ["--base-port", "20000", "--gateway-port", "20100", "--no-traffic"]
    specs = {s.name: s.port for s in plan(argv, tmp_path).services()}
    assert specs == {
        "simulator-0": 20000, "simulator-1": 20001, "collector-0": 20010, "collector-1": 20011,
        "metering": 20020, "throttle": 20021, "gateway": 20100, "dashboards": 20023,
    }  # fmt: skip


def test_up_table_and_flags(tmp_path: Path) -> None:
    config = Config({"up": {"simulator_gpus": ["l4", "h100-sxm:1g.10gb", "h200"],
                            "traffic_rate": 1.5, "host": "127.0.0.2"}})  # fmt: skip
    p = plan(["--traffic-seed", "9", "--simulator-time-scale", "0.5"], tmp_path, config=config)
    specs = {s.name: s for s in p.services()}
    assert [r.gpu for r in p.layout.replicas] == ["l4", "h100-sxm:1g.10gb", "h200"]
    assert specs["simulator-2"].health_url == "http://127.0.0.2:8002/health"
    assert flag(list(specs["simulator-0"].argv), "--time-scale") == "0.5"
    traffic = list(specs["demo-traffic"].argv)
    assert flag(traffic, "--seed") == "9" and flag(traffic, "--rate") == "1.5"
    assert p.unpriced() == []  # every profile above is in metering's catalog
    with pytest.raises(Exception, match="up"):
        plan([], tmp_path, config=Config({"up": {"no_such_key": 1}}))


def test_unpriced_gpu_profiles_are_reported(tmp_path: Path) -> None:
    p = plan(["--simulator-gpus", "h100-pcie,a100-80gb:3g.40gb"], tmp_path)
    problems = p.unpriced()
    assert len(problems) == 1 and "simulator-0 on h100-pcie" in problems[0]


def test_engine_vllm_without_a_gpu_runs_one_cpu_replica(tmp_path: Path) -> None:
    p = plan(["--engine", "vllm"], tmp_path, gpus=0)
    specs = {s.name: s for s in p.services()}
    assert [r.name for r in p.layout.replicas] == ["vllm-0"] and p.model == "tiny-llama"
    engine = list(specs["vllm-0"].argv)
    assert engine[3:5] == ["engine", "vllm"] and "--cpu-dev" in engine
    assert specs["vllm-0"].startup_timeout == 900.0  # [vllm] health_timeout_s
    assert "--no-nvml" not in specs["collector-0"].argv  # real engine: NVML when present
    assert flag(list(specs["demo-traffic"].argv), "--max-model-len") == "512"


def test_engine_vllm_on_gpus_runs_one_replica_per_gpu(tmp_path: Path) -> None:
    config = Config({"vllm": {"model": "org/model", "served_model_name": "served"}})
    argv = ["--engine", "vllm", "--vllm-gpus", "h100-sxm,h100-sxm,l4"]
    p = plan(argv, tmp_path, gpus=2, config=config)
    specs = {s.name: s for s in p.services()}
    assert [r.name for r in p.layout.replicas] == ["vllm-0", "vllm-1"] and p.model == "served"
    assert flag(list(specs["vllm-1"].argv), "--device") == "1"
    assert "--cpu-dev" not in specs["vllm-1"].argv


def test_generated_configuration_is_valid_for_every_service(tmp_path: Path) -> None:
    user = Config({"simulator": {"seed": 3}, "metering": {"catalog": "my-prices.toml"}})
    p = plan(["--base-port", "30000"], tmp_path, config=user)
    keys = Secrets.load_or_create(p.layout.secrets_path)
    write_stack(p.layout, keys, p.engine_tables, p.catalog)
    config = load_config(str(p.layout.config_path), environ={})
    metering = section(config, "metering", MeteringSettings)
    assert metering.port == 30020 and metering.storage_uri().endswith("data/metering.duckdb")
    assert metering.catalog.endswith("my-prices.toml")
    assert {n: (r.gpu, r.mig_profile) for n, r in metering.replicas.items()} == {
        "simulator-0": ("h100-sxm", ""), "simulator-1": ("a100-80gb", "3g.40gb")}  # fmt: skip
    throttle, resolver = throttle_settings.load(config)
    assert throttle.port == 30021 and throttle.metering_url == "http://127.0.0.1:30020"
    for tenant in TENANTS:
        entry = resolver.lookup_key(keys.api_keys[tenant.name])
        assert entry is not None and (entry.tenant, entry.tier) == (tenant.name, tenant.tier)
    policy = parse_document(Path(throttle.policy_file).read_text(), source="policy").doc
    assert set(policy.tenants) == {t.name for t in TENANTS}
    gateway = section(config, "gateway", GatewaySettings)
    pool = gateway.models["meta-llama/Llama-3.1-8B-Instruct"]
    assert [r.url for r in pool.replicas] == ["http://127.0.0.1:30010", "http://127.0.0.1:30011"]
    assert gateway.cache.enabled and gateway.throttle_url == "http://127.0.0.1:30021"
    collector = section(config, "collector", CollectorSettings)
    assert collector.metering_url == "http://127.0.0.1:30020" and collector.ingest_token
    dashboard = dashboard_settings(config)
    assert dashboard.port == 30023 and dashboard.read_token == keys.read_token
    simulator = section(config, "simulator", SimulatorSettings)
    assert simulator.seed == 3 and simulator.served_name == p.model  # the user's table kept
    assert stat.S_IMODE(os.stat(p.layout.config_path).st_mode) == 0o600  # holds secrets


def test_secrets_are_created_once_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "secrets.json"
    first = Secrets.load_or_create(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert Secrets.load_or_create(path) == first
    assert len(set(first.api_keys.values())) == len(TENANTS)
    data = path.read_text().replace(f'"{first.api_keys["hooli"]}"', '""')
    path.write_text(data)
    again = Secrets.load_or_create(path)
    assert again.api_keys["acme"] == first.api_keys["acme"]
    assert again.api_keys["hooli"] not in ("", first.api_keys["hooli"])
    path.write_text("[1, 2]")
    with pytest.raises(Exception, match="JSON object"):
        Secrets.load_or_create(path)


def test_taken_port_is_named_and_nothing_is_written(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        argv = [PY, "-m", "infermeter", "up", "--gateway-port", str(port), "--base-port",
                str(free_port_range()), "--data-dir", str(tmp_path / "data")]  # fmt: skip
        proc = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert (
        f"port 127.0.0.1:{port} for gateway (set by --gateway-port or --base-port) is already "
        "in use" in proc.stderr
    )
    assert not (tmp_path / "data").exists()


def test_up_help_documents_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["up", "--help"])
    text = capsys.readouterr().out
    options = ("--engine", "--no-traffic", "--base-port", "--gateway-port", "--data-dir",
               "--simulator-gpus", "--vllm-gpus", "--traffic-seed", "--dashboard-port")  # fmt: skip
    for option in options:
        assert option in text


def http_server(name: str, port: int, stage: int, **kw: Any) -> ServiceSpec:
    argv = [PY, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
    return ServiceSpec(name, argv, f"http://127.0.0.1:{port}/", "127.0.0.1", port,
                       stage=stage, **kw)  # fmt: skip


def test_supervisor_starts_stage_by_stage_and_stops_in_reverse(tmp_path: Path) -> None:
    a, b, c = free_ports(3)
    out = io.StringIO()
    specs = [http_server("store", a, 0, stop_rank=-1), http_server("web", b, 1),
             http_server("api", c, 1)]  # fmt: skip
    supervisor = Supervisor(specs, log_dir=tmp_path / "logs", out=out)
    assert supervisor.run(on_ready=supervisor.request_stop) == 0
    lines = [line.split()[:2] for line in out.getvalue().splitlines()]
    starts = [name for verb, name in lines if verb == "starting"]
    stops = [name for verb, name in lines if verb == "stopped"]
    assert starts[0] == "store" and set(starts[1:]) == {"web", "api"}
    assert lines.index(["ready", "store"]) < lines.index(["starting", "web"])
    assert set(stops[:2]) == {"web", "api"} and stops[2] == "store"
    assert all(child.poll() is not None for child in supervisor.children.values())
    assert (tmp_path / "logs" / "web.log").exists()


def test_supervisor_reports_a_child_that_dies_while_starting(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    dying = ServiceSpec("broken", [PY, "-c", "print('boom: bad flag'); raise SystemExit(3)"],
                        f"http://127.0.0.1:{port}/", "127.0.0.1", port)  # fmt: skip
    with pytest.raises(EngineError, match=r"broken exited with code 3(.|\n)*boom: bad flag"):
        Supervisor([dying], log_dir=tmp_path).run()


def test_supervisor_refuses_one_port_for_two_services(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    specs = [http_server("one", port, 0), http_server("two", port, 1)]
    with pytest.raises(PortInUse, match=r"two \(also given to one\)"):
        Supervisor(specs, log_dir=tmp_path).check_ports()


def test_example_config_documents_every_up_key() -> None:
    import tomllib

    from infermeter.stack.plan import UpSettings

    repo = Path(__file__).resolve().parents[2]
    table = tomllib.loads((repo / "infermeter.example.toml").read_text())["up"]
    text = (repo / "infermeter.example.toml").read_text()
    assert UpSettings.model_validate(table) == UpSettings()  # the example shows the defaults
    for key in UpSettings.model_fields:
        assert f"\n{key} = " in text or f"\n# {key} = " in text, key


def test_ctrl_c_while_starting_stops_what_was_started(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    never = ServiceSpec("slow", [PY, "-c", "import time; time.sleep(60)"],
                        f"http://127.0.0.1:{port}/", "127.0.0.1", port)  # fmt: skip
    supervisor = Supervisor([never], log_dir=tmp_path, out=io.StringIO())
    timer = threading.Timer(0.5, supervisor.request_stop)
    timer.start()
    began = time.monotonic()
    assert supervisor.run() == 0
    assert time.monotonic() - began < 10
    assert supervisor.children["slow"].poll() is not None


def test_a_service_that_dies_later_stops_the_others(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    short = ServiceSpec("short-lived", [PY, "-c", "import time; time.sleep(1)"], None,
                        "127.0.0.1", None)  # fmt: skip
    out = io.StringIO()
    supervisor = Supervisor([http_server("web", port, 0), short], log_dir=tmp_path, out=out)
    assert supervisor.run() == 1
    assert "short-lived exited with code 0; stopping all" in out.getvalue()
    assert supervisor.children["web"].poll() is not None


def test_a_service_never_healthy_is_named_with_its_url(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    mute = ServiceSpec("mute", [PY, "-c", "import time; time.sleep(60)"],
                       f"http://127.0.0.1:{port}/", "127.0.0.1", port,
                       startup_timeout=1.0)  # fmt: skip
    supervisor = Supervisor([mute], log_dir=tmp_path)
    with pytest.raises(
        EngineError, match=rf"mute not healthy after 1 s at http://127.0.0.1:{port}/"
    ):
        supervisor.run()
    assert supervisor.children["mute"].poll() is not None


def test_wildcard_host_is_reached_on_loopback_and_remote_hosts_get_no_traffic(
    tmp_path: Path,
) -> None:
    with pytest.raises(ConfigError, match="--insecure") as refused:  # dashboards: no login
        plan(["--host", "0.0.0.0"], tmp_path).services()
    assert refused.value.field == "--host"
    specs = {s.name: s for s in plan(["--host", "0.0.0.0", "--insecure"], tmp_path).services()}
    assert flag(list(specs["simulator-0"].argv), "--host") == "0.0.0.0"
    assert flag(list(specs["demo-traffic"].argv), "--gateway") == "http://127.0.0.1:8080"
    assert specs["gateway"].health_url == "http://127.0.0.1:8080/healthz"
    with pytest.raises(ConfigError, match="--no-traffic"):
        plan(["--host", "10.1.2.3", "--insecure"], tmp_path).services()
    remote = plan(["--host", "10.1.2.3", "--no-traffic", "--insecure"], tmp_path).services()
    assert "demo-traffic" not in {s.name for s in remote}


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux's")
def test_services_do_not_outlive_a_killed_supervisor(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    script = (
        "import sys\nfrom pathlib import Path\n"
        "from infermeter.stack.supervisor import ServiceSpec, Supervisor\n"
        f"spec = ServiceSpec('web', [sys.executable, '-m', 'http.server', '{port}', '--bind', "
        f"'127.0.0.1'], 'http://127.0.0.1:{port}/', '127.0.0.1', {port})\n"
        f"Supervisor([spec], log_dir=Path({str(tmp_path)!r}), out=sys.stdout).run()\n"
    )
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen([PY, "-c", script], cwd=repo, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        while "ready" not in proc.stdout.readline():
            assert proc.poll() is None
        proc.kill()  # SIGKILL: no handler, no orderly stop
        proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while True:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) != 0:
                    break  # the service is gone
            assert time.monotonic() < deadline, "the service outlived its supervisor"
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_one_up_per_data_directory(tmp_path: Path) -> None:
    from infermeter.stack.up_cli import lock_data_dir

    held = lock_data_dir(tmp_path / "data")
    try:
        argv = [PY, "-m", "infermeter", "up", "--base-port", str(free_port_range()),
                "--data-dir", str(tmp_path / "data")]  # fmt: skip
        proc = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2
        assert f"is used by another `infermeter up` (pid {os.getpid()})" in proc.stderr
        assert not (tmp_path / "data" / "infermeter.toml").exists()
    finally:
        held.close()
    lock_data_dir(tmp_path / "data").close()  # free again once the holder is gone
