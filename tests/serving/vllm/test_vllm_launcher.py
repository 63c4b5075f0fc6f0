"""``infermeter engine vllm``: argv/env building (pure), settings layering, process control.

The process tests run a small real HTTP server script as a *stand-in engine* (it is not
vLLM): it lets the health wait, log streaming, SIGTERM-to-group and SIGKILL escalation run
in a second instead of vLLM's 30-40 s start. Real vLLM is launched by the conformance suite
through this same CLI (tests/serving/conformance/conftest.py).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from infermeter.kernel.cli import common_options
from infermeter.kernel.errors import ConfigError, InfermeterError, PortInUse
from infermeter.kernel.settings import load_config
from infermeter.serving.errors import EngineError, EngineNotInstalled
from infermeter.serving.vllm import cli as vllm_cli
from infermeter.serving.vllm import cpu as vllm_cpu
from infermeter.serving.vllm.launcher import (
    CPU_DEV_ENV,
    LaunchCommand,
    VllmSettings,
    apply_cpu_dev,
    build_command,
    merge,
    resolve_entrypoint,
)
from infermeter.serving.vllm.process import VllmProcess, ensure_installed, ensure_port_free
from tests.conftest import REPO

SERVE = "vllm.entrypoints.cli.main"
API_SERVER = "vllm.entrypoints.openai.api_server"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---- build_command: pure ---------------------------------------------------------------------


def test_minimal_command_uses_vllm_serve():
    cmd = build_command(VllmSettings(model="meta-llama/Llama-3.1-8B"), default_python="/py")
    assert cmd.argv == [
        "/py", "-m", SERVE, "serve", "meta-llama/Llama-3.1-8B",
        "--host", "127.0.0.1", "--port", "8000",
    ]  # fmt: skip
    assert cmd.env == {}
    assert cmd.base_url == "http://127.0.0.1:8000"


def test_every_option_maps_to_its_vllm_flag():
    settings = VllmSettings(
        model="/models/qwen-awq",
        host="0.0.0.0",
        port=8123,
        served_model_name="qwen",
        quantization="awq",
        kv_cache_dtype="fp8",
        tensor_parallel_size=2,
        max_model_len=8192,
        gpu_memory_utilization=0.85,
        max_num_seqs=64,
        dtype="bfloat16",
        enforce_eager=True,
        device="0,1",
        python="/opt/vllm/bin/python",
        extra_args=["--seed", "1"],
    )
    cmd = build_command(settings)
    assert cmd.argv[:5] == ["/opt/vllm/bin/python", "-m", SERVE, "serve", "/models/qwen-awq"]
    flags = cmd.argv[5:]
    pairs = dict(zip(flags[0:-3:2], flags[1:-3:2], strict=True))
    assert pairs == {
        "--host": "0.0.0.0",
        "--port": "8123",
        "--served-model-name": "qwen",
        "--quantization": "awq",
        "--kv-cache-dtype": "fp8",
        "--max-model-len": "8192",
        "--gpu-memory-utilization": "0.85",
        "--max-num-seqs": "64",
        "--dtype": "bfloat16",
        "--tensor-parallel-size": "2",
    }
    assert flags[-3:] == ["--enforce-eager", "--seed", "1"]  # passthrough last: it wins
    assert cmd.env == {"CUDA_VISIBLE_DEVICES": "0,1"}
    # a wildcard bind address is reached on loopback
    assert cmd.base_url == "http://127.0.0.1:8123"


def test_api_server_entrypoint_takes_model_as_flag():
    cmd = build_command(VllmSettings(model="m", entrypoint="api_server"), default_python="/py")
    assert cmd.argv[:5] == ["/py", "-m", API_SERVER, "--model", "m"]


@pytest.mark.parametrize(
    ("distribution", "expected"), [("vllm", "serve"), ("vllm-cpu", "api_server")]
)
def test_auto_entrypoint_follows_the_installed_distribution(distribution, expected):
    resolved = resolve_entrypoint(VllmSettings(model="m"), distribution)
    assert resolved.entrypoint == expected
    explicit = resolve_entrypoint(VllmSettings(model="m", entrypoint="serve"), "vllm-cpu")
    assert explicit.entrypoint == "serve"


@pytest.mark.parametrize(
    "device",
    [
        "3",
        "GPU-5a8e7c1b-2f3d-4e5f-8a9b-0c1d2e3f4a5b",
        "MIG-4f0e8d2c-1b3a-5c6d-7e8f-9a0b1c2d3e4f",
        "MIG-GPU-5a8e7c1b-2f3d-4e5f-8a9b-0c1d2e3f4a5b/1/0",
    ],
)
def test_device_selects_a_gpu_or_mig_instance(device):
    cmd = build_command(VllmSettings(model="m", device=device))
    assert cmd.env["CUDA_VISIBLE_DEVICES"] == device


@pytest.mark.parametrize(("value", "expected"), [(0, "0"), ([0, 1], "0,1"), (" 2, 3 ", "2,3")])
def test_device_index_may_be_a_toml_number_or_list(value, expected):
    assert VllmSettings(device=value).device == expected


@pytest.mark.parametrize(
    ("overrides", "field", "words"),
    [
        ({"device": "gpu0"}, "vllm.device", "gpu0"),
        ({"device": "MIG-aa,MIG-bb"}, "vllm.device", "one MIG instance"),
        ({"quantization": "int3"}, "vllm.quantization", ""),
        ({"gpu_memory_utilization": 1.5}, "vllm.gpu_memory_utilization", ""),
        ({"port": 0}, "vllm.port", ""),
        ({"max_num_seqs": 0}, "vllm.max_num_seqs", ""),
    ],
)
def test_invalid_flags_name_the_field(overrides, field, words):
    with pytest.raises(ConfigError) as err:
        merge(VllmSettings(), {"model": "m", **overrides})
    assert err.value.field == field
    assert words in str(err.value)


def test_tensor_parallelism_needs_as_many_whole_gpus():
    with pytest.raises(ConfigError, match="needs as many devices"):
        build_command(VllmSettings(model="m", device="0", tensor_parallel_size=2))
    with pytest.raises(ConfigError, match="MIG instance is one device"):
        build_command(VllmSettings(model="m", device="MIG-abc", tensor_parallel_size=2))


def test_no_model_is_a_config_error():
    with pytest.raises(ConfigError, match="--cpu-dev"):
        build_command(VllmSettings())


def test_render_is_a_shell_line():
    cmd = build_command(
        VllmSettings(model="my model", device="1", extra_args=["--chat-template", "{{ x }}"]),
        default_python="/py",
    )
    line = cmd.render()
    assert line.startswith("CUDA_VISIBLE_DEVICES=1 /py -m ")
    assert "'my model'" in line and "'{{ x }}'" in line


def _fake_install(home: Path) -> vllm_cpu.CpuDevInstall:
    install = vllm_cpu.CpuDevInstall(home)
    install.python.parent.mkdir(parents=True)
    install.python.write_text("")
    install.model_dir.mkdir()
    (install.model_dir / "config.json").write_text("{}")
    install.stamp.write_text("stamp")
    return install


def test_cpu_dev_fills_what_the_cpu_build_needs(tmp_path):
    install = _fake_install(tmp_path)
    settings = apply_cpu_dev(VllmSettings(cpu_dev=True, port=8011), install)
    cmd = build_command(settings)
    assert cmd.argv[:5] == [
        str(install.python),
        "-m",
        API_SERVER,
        "--model",
        str(install.model_dir),
    ]
    argv = " ".join(cmd.argv)
    for flag in ("--served-model-name tiny-llama", "--dtype float32", "--max-model-len 512"):
        assert flag in argv
    assert cmd.argv[-1] == "--enforce-eager"
    assert cmd.env == {**CPU_DEV_ENV, "VLLM_CPU_KVCACHE_SPACE": str(vllm_cpu.KV_CACHE_GIB)}
    assert cmd.env["HF_HUB_OFFLINE"] == "1"


def test_cpu_dev_keeps_what_the_user_set(tmp_path):
    install = _fake_install(tmp_path)
    settings = apply_cpu_dev(
        VllmSettings(cpu_dev=True, max_model_len=256, served_model_name="t", model="/other"),
        install,
    )
    assert (settings.max_model_len, settings.served_model_name) == (256, "t")
    assert settings.model == "/other"
    assert settings.python == str(install.python)


def test_missing_cpu_install_points_to_the_setup_script(tmp_path):
    with pytest.raises(EngineNotInstalled) as err:
        vllm_cpu.require_install({vllm_cpu.HOME_ENV: str(tmp_path / "nothing")})
    assert "serving/vllm/cpu/setup.sh" in str(err.value)
    assert "virtualenv python" in str(err.value)


# ---- the CLI: settings layering, help, errors ------------------------------------------------


def _vllm_parser() -> argparse.ArgumentParser:
    """Only this command (other packages' commands play no part in these unit tests)."""
    common = common_options()
    parser = argparse.ArgumentParser(prog="infermeter engine", parents=[common_options(top=True)])
    vllm_cli.register(parser.add_subparsers(dest="engine"), common)
    return parser


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    """Run ``infermeter engine vllm ARGS`` as serving.cli.main does (errors -> exit 2)."""
    parsed = _vllm_parser().parse_args(["vllm", *args])
    try:
        code = parsed.func(parsed, load_config(parsed.config))
    except InfermeterError as exc:
        print(f"infermeter: error: {exc}", file=sys.stderr)
        code = 2
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def config_file(tmp_path, monkeypatch):
    for name in list(os.environ):
        if name.startswith("INFERMETER__"):
            monkeypatch.delenv(name)
    path = tmp_path / "infermeter.toml"
    path.write_text("")
    return path


def test_help_documents_every_setting():
    subparsers = _vllm_parser()._subparsers
    assert subparsers is not None
    vllm = subparsers._group_actions[0].choices["vllm"]
    dests = {a.dest for a in vllm._actions if a.help}
    assert set(VllmSettings.model_fields) <= dests | {"extra_args"}
    assert all(a.help for a in vllm._actions)
    text = vllm.format_help()
    for flag in ("--device", "--quantization", "--kv-cache-dtype", "--cpu-dev", "--python"):
        assert flag in text


def test_flags_override_the_vllm_table(capsys, config_file, monkeypatch):
    config_file.write_text(
        '[vllm]\nmodel = "m"\nport = 9000\nmax_num_seqs = 64\nextra_args = ["--seed", "1"]\n'
    )
    monkeypatch.setenv("INFERMETER__VLLM__DTYPE", "half")
    code, out, _ = _cli(
        capsys,
        "--config", str(config_file), "--port", "9100", "--print-command",
        "--extra-args", "--swap-space 4", "--", "--disable-log-stats",
    )  # fmt: skip
    assert code == 0
    argv = out.split()
    assert argv[argv.index("--port") + 1] == "9100"
    assert argv[argv.index("--max-num-seqs") + 1] == "64"
    assert argv[argv.index("--dtype") + 1] == "half"
    assert out.rstrip().endswith("--seed 1 --swap-space 4 --disable-log-stats")


def test_unknown_table_key_is_reported(capsys, config_file):
    config_file.write_text('[vllm]\nmodel = "m"\nmax_num_seq = 4\n')
    code, _, err = _cli(capsys, "--config", str(config_file), "--print-command")
    assert code == 2
    assert "vllm.max_num_seq" in err


def test_vllm_missing_is_a_clear_error(capsys, config_file):
    code, _, err = _cli(capsys, "--config", str(config_file), "--model", "m")
    assert code == 2
    assert f"vLLM is not installed for {sys.executable}" in err
    assert "--cpu-dev" in err


def test_missing_python_is_a_clear_error(capsys, config_file, tmp_path):
    nowhere = str(tmp_path / "venv" / "bin" / "python")
    code, _, err = _cli(capsys, "--config", str(config_file), "--model", "m", "--python", nowhere)
    assert code == 2
    assert f"{nowhere} does not exist" in err


def test_cpu_dev_print_command(capsys, config_file, tmp_path, monkeypatch):
    install = _fake_install(tmp_path / "home")
    monkeypatch.setenv(vllm_cpu.HOME_ENV, str(install.home))
    code, out, _ = _cli(capsys, "--config", str(config_file), "--cpu-dev", "--print-command")
    assert code == 0
    assert "HF_HUB_OFFLINE=1" in out and "VLLM_CPU_KVCACHE_SPACE=1" in out
    assert f"{install.python} -m {API_SERVER} --model {install.model_dir}" in out


def test_cpu_dev_flag_ignores_the_gpu_table(capsys, config_file, tmp_path, monkeypatch):
    install = _fake_install(tmp_path / "home")
    monkeypatch.setenv(vllm_cpu.HOME_ENV, str(install.home))
    config_file.write_text(
        '[vllm]\nmodel = "meta-llama/Llama-3.1-70B"\nquantization = "awq"\n'
        'device = "MIG-4f0e8d2c"\nmax_model_len = 8192\n'
    )
    code, out, _ = _cli(
        capsys, "--config", str(config_file), "--cpu-dev", "--max-num-seqs", "4", "--print-command"
    )
    assert code == 0
    assert "Llama-3.1-70B" not in out and "--quantization" not in out
    assert "CUDA_VISIBLE_DEVICES" not in out
    assert "--max-model-len 512" in out and "--max-num-seqs 4" in out


def test_cpu_dev_in_the_table_keeps_its_values(capsys, config_file, tmp_path, monkeypatch):
    install = _fake_install(tmp_path / "home")
    monkeypatch.setenv(vllm_cpu.HOME_ENV, str(install.home))
    config_file.write_text("[vllm]\ncpu_dev = true\nmax_model_len = 1024\n")
    code, out, _ = _cli(capsys, "--config", str(config_file), "--print-command")
    assert code == 0
    assert "--max-model-len 1024" in out and "--dtype float32" in out


def test_port_in_use_is_detected():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(PortInUse, match=str(port)):
            ensure_port_free("127.0.0.1", port)
    ensure_port_free("127.0.0.1", port)


def test_python_without_vllm_is_not_installed():
    with pytest.raises(EngineNotInstalled, match="not installed"):
        ensure_installed(sys.executable)


@pytest.mark.vllm
def test_cpu_install_is_found_as_vllm_cpu():
    install = vllm_cpu.require_install()
    assert ensure_installed(str(install.python)) == "vllm-cpu"


# ---- the process: health, log, stop ----------------------------------------------------------

STAND_IN = textwrap.dedent(
    """
    # Stand-in engine for launcher tests (not vLLM): answers /health, logs, forks a child.
    import http.server, os, signal, sys, time
    port, mode = int(sys.argv[1]), sys.argv[2]
    print("stand-in starting", flush=True)
    if mode == "die":
        print("fatal: no GPU found", flush=True)
        sys.exit(3)
    if mode == "ignore-term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    child = os.fork()
    if child == 0:  # like vLLM's EngineCore: same process group, sleeps until killed
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        time.sleep(600)
        os._exit(0)
    print(f"child {child}", flush=True)
    if mode == "no-health":
        time.sleep(600)

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", port), Health)
    print("stand-in ready", flush=True)
    server.serve_forever()
    """
)


def _stand_in(tmp_path: Path, mode: str, lines: list[str]) -> VllmProcess:
    script = tmp_path / "stand_in_engine.py"
    script.write_text(STAND_IN)
    port = _free_port()
    command = LaunchCommand(
        argv=[sys.executable, str(script), str(port), mode],
        base_url=f"http://127.0.0.1:{port}",
    )
    return VllmProcess(command, sink=lines.append, prefix="[engine] ")


def _child_pid(lines: list[str]) -> int:
    for _ in range(100):
        for line in list(lines):
            if line.startswith("[engine] child "):
                return int(line.split()[-1])
        time.sleep(0.05)
    raise AssertionError(f"no child line in {lines}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped) is not alive
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_health_wait_log_and_stop_of_the_whole_group(tmp_path):
    lines: list[str] = []
    proc = _stand_in(tmp_path, "serve", lines).start()
    try:
        took = proc.wait_healthy(20, interval=0.05)
        assert 0 <= took < 20
        child = _child_pid(lines)
        assert "[engine] stand-in starting" in lines
        assert _alive(child)
    finally:
        code = proc.stop(grace=5)
    assert code == 0
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child), "the engine's child outlived stop()"


def test_stop_escalates_to_sigkill_after_the_grace(tmp_path):
    lines: list[str] = []
    proc = _stand_in(tmp_path, "ignore-term", lines).start()
    proc.wait_healthy(20, interval=0.05)
    code = proc.stop(grace=0.5)
    assert code == -signal.SIGKILL
    assert any("SIGKILL" in line for line in lines)


def test_engine_dying_at_start_reports_its_log(tmp_path):
    proc = _stand_in(tmp_path, "die", []).start()
    with pytest.raises(EngineError) as err:
        proc.wait_healthy(20, interval=0.05)
    assert "exited with code 3" in str(err.value)
    assert "fatal: no GPU found" in str(err.value)


def test_health_timeout_uses_the_injected_clock(tmp_path, manual_clock):
    proc = _stand_in(tmp_path, "no-health", []).start()
    try:
        with pytest.raises(EngineError, match=r"not healthy .* after 30 s"):
            proc.wait_healthy(30, now=manual_clock, sleep=manual_clock.advance)
        assert manual_clock.now - 1_800_000_000.0 > 30
    finally:
        proc.stop(grace=5)


SERVE_SCRIPT = textwrap.dedent(
    """
    import sys
    from infermeter.serving.vllm.cli import serve
    from infermeter.serving.vllm.launcher import LaunchCommand, VllmSettings
    script, port, mode, grace = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    command = LaunchCommand(
        argv=[sys.executable, script, port, mode], base_url=f"http://127.0.0.1:{port}"
    )
    sys.exit(serve(command, VllmSettings(model="stand-in", stop_grace_s=grace)))
    """
)


@pytest.fixture
def launch_cli(tmp_path):
    """Run serving.vllm_cli.serve on the stand-in engine until it reports healthy.

    Teardown SIGKILLs whatever a failed test left running (launcher and engine group).
    """
    script = tmp_path / "stand_in_engine.py"
    script.write_text(STAND_IN)
    started: list[tuple[subprocess.Popen[str], list[str]]] = []

    def launch(mode: str, grace: float) -> tuple[subprocess.Popen[str], list[str]]:
        argv = [sys.executable, "-c", SERVE_SCRIPT, str(script), str(_free_port()), mode]
        launcher = subprocess.Popen(
            [*argv, str(grace)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        seen: list[str] = []
        started.append((launcher, seen))
        assert launcher.stdout is not None
        for line in launcher.stdout:
            seen.append(line)
            if "healthy at" in line:
                break
        return launcher, seen

    yield launch
    for launcher, seen in started:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
        with contextlib.suppress(StopIteration, ProcessLookupError):
            os.killpg(_pid_after(seen, "started (pid "), signal.SIGKILL)


def _pid_after(seen: list[str], marker: str) -> int:
    line = next(s for s in seen if marker in s)
    return int(line.split(marker)[1].split(",")[0].split()[0].rstrip(")"))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_cli_stops_the_engine_cleanly_on_a_signal(launch_cli, sig):
    launcher, seen = launch_cli("serve", grace=5)
    engine_pid = _pid_after(seen, "started (pid ")
    child = _pid_after(seen, "[vllm] child ")
    launcher.send_signal(sig)
    rest, _ = launcher.communicate(timeout=20)
    assert launcher.returncode == 0, [*seen, rest]
    assert f"{sig.name} received, stopping vLLM" in rest
    assert "vLLM stopped (exit code 0)" in rest
    assert not _alive(engine_pid) and not _alive(child)


def test_second_signal_kills_an_engine_that_ignores_sigterm(launch_cli):
    launcher, seen = launch_cli("ignore-term", grace=120)
    engine_pid = _pid_after(seen, "started (pid ")
    launcher.send_signal(signal.SIGTERM)
    assert launcher.stdout is not None
    for line in launcher.stdout:
        if "signal again to kill it now" in line:
            break
    launcher.send_signal(signal.SIGINT)
    rest, _ = launcher.communicate(timeout=20)  # far less than the 120 s grace
    assert launcher.returncode == 0, rest
    assert f"vLLM stopped (exit code {-signal.SIGKILL})" in rest
    assert not _alive(engine_pid)


def test_engine_is_stopped_even_when_output_breaks(tmp_path):
    """A closed stdout (or any error) after the start must not leave vLLM running."""
    script = tmp_path / "stand_in_engine.py"
    script.write_text(STAND_IN)
    port = _free_port()
    command = LaunchCommand(
        argv=[sys.executable, str(script), str(port), "serve"],
        base_url=f"http://127.0.0.1:{port}",
    )
    seen: list[str] = []

    def out(line: str) -> None:
        seen.append(line)
        if "healthy at" in line:
            raise BrokenPipeError("stdout closed")

    with pytest.raises(BrokenPipeError):
        vllm_cli.serve(command, VllmSettings(model="stand-in", stop_grace_s=5), out=out)
    engine_pid = _pid_after(seen, "started (pid ")
    assert not _alive(engine_pid)


def test_example_config_documents_a_valid_vllm_table():
    table = load_config(str(REPO / "infermeter.example.toml")).table("vllm")
    settings = VllmSettings.model_validate(table)
    assert set(table) >= set(VllmSettings.model_fields) - {
        "quantization", "kv_cache_dtype", "dtype", "device", "python",
    }  # fmt: skip
    assert build_command(settings).argv[3:5] == ["serve", settings.model]
