"""``infermeter engine simulate``: options, config precedence, clear errors, a real process."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from infermeter.kernel.cli import build_parser, main
from infermeter.kernel.errors import ConfigError, PortInUse
from infermeter.kernel.settings import load_config
from infermeter.serving.simulator.cli import _OPTIONS, bind, settings_from
from tests.conftest import REPO, free_port, wait_http


def parse(*argv: str):
    return build_parser().parse_args(["engine", "simulate", *argv])


def test_help_documents_every_option() -> None:
    text = build_parser()._subparsers._group_actions[0].choices["engine"]  # type: ignore[union-attr]
    simulate = text._subparsers._group_actions[0].choices["simulate"]
    help_text = simulate.format_help()
    for flag, *_ in _OPTIONS:
        assert flag in help_text
    for required in (
        "--host",
        "--port",
        "--model",
        "--served-model-name",
        "--gpu",
        "--seed",
        "--quantization",
        "--max-num-seqs",
        "--max-model-len",
        "--time-scale",
        "--max-num-batched-tokens",
        "--gpu-memory-utilization",
        "--replica-name",
    ):
        assert required in help_text  # fmt: skip


def test_flags_override_the_simulator_table(tmp_path: Path) -> None:
    config_file = tmp_path / "infermeter.toml"
    config_file.write_text('[simulator]\ngpu = "a100-80gb"\nmax_num_seqs = 8\nseed = 3\n')
    config = load_config(str(config_file), environ={})
    settings = settings_from(parse("--max-num-seqs", "16"), config)
    assert settings.gpu == "a100-80gb" and settings.seed == 3  # from the file
    assert settings.max_num_seqs == 16  # the flag wins
    env = load_config(str(config_file), environ={"INFERMETER__SIMULATOR__SEED": "9"})
    assert settings_from(parse(), env).seed == 9


def test_bad_values_are_clear_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = load_config(None, environ={})
    with pytest.raises(ConfigError, match="--max-num-seqs"):
        settings_from(parse("--max-num-seqs", "0"), config)
    bad_file = tmp_path / "bad.toml"
    bad_file.write_text("[simulator]\ntime_scale = -2\n")
    with pytest.raises(ConfigError, match=r"simulator\.time_scale"):
        settings_from(parse(), load_config(str(bad_file), environ={}))
    assert main(["engine", "simulate", "--gpu", "h100-sxm:1g.10gb"]) == 2
    assert "does not fit" in capsys.readouterr().err
    assert main(["engine", "simulate", "--model", "gpt-9"]) == 2
    assert "unknown model profile" in capsys.readouterr().err
    assert main(["engine", "simulate", "--max-model-len", "200000"]) == 2
    assert "max_model_len=200000" in capsys.readouterr().err


def test_taken_port_names_the_port() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(PortInUse, match=f"127.0.0.1:{port}"):
            bind("127.0.0.1", port)


def test_runs_as_a_process() -> None:
    port = free_port()
    argv = [sys.executable, "-m", "infermeter", "engine", "simulate", "--port", str(port),
            "--served-model-name", "tiny-llama", "--max-model-len", "512",
            "--time-scale", "0"]  # fmt: skip
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", timeout=30)
        body = {"model": "tiny-llama", "prompt": "hi", "max_tokens": 3}
        resp = httpx.post(f"http://127.0.0.1:{port}/v1/completions", json=body, timeout=10)
        assert resp.json()["usage"]["completion_tokens"] <= 3
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=15)
    assert proc.returncode in (0, -15)  # uvicorn re-raises SIGTERM after a graceful shutdown
    assert f"listening on http://127.0.0.1:{port}" in out.decode()
