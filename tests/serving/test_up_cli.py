"""``infermeter up``: starts the simulator replicas, prints them, stops cleanly."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]


def two_free_ports() -> int:
    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            with socket.socket() as b:
                try:
                    b.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
                return port
    raise RuntimeError("no two consecutive free ports")


def up(tmp_path: Path, port: int) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "serving", "up", "--simulator-base-port", str(port),
            "--data-dir", str(tmp_path), "--simulator-time-scale", "0",
            "--startup-timeout", "30"]  # fmt: skip
    return subprocess.Popen(
        argv, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def test_up_starts_two_replicas_and_ctrl_c_stops_them(tmp_path: Path) -> None:
    port = two_free_ports()
    proc = up(tmp_path, port)
    try:
        lines = []
        assert proc.stdout is not None
        deadline = time.monotonic() + 40
        while not any("logs:" in line for line in lines):
            assert time.monotonic() < deadline and proc.poll() is None, "".join(lines)
            lines.append(proc.stdout.readline())
        table = "".join(lines)
        assert f"http://127.0.0.1:{port} " in table and f"http://127.0.0.1:{port + 1} " in table
        assert "h100-sxm" in table and "a100-80gb:3g.40gb" in table
        first = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        second = httpx.get(f"http://127.0.0.1:{port + 1}/metrics").text
        assert 'gpu="h100-sxm"' in first and 'mig_profile=""' in first
        assert 'mig_profile="3g.40gb"' in second
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    for p in (port, port + 1):
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{p}/health", timeout=1)
    assert (tmp_path / "logs" / "simulator-0.log").exists()


def test_taken_port_is_named_and_nothing_starts(tmp_path: Path) -> None:
    port = two_free_ports()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port + 1))
        taken.listen(1)
        proc = up(tmp_path, port)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert f"port 127.0.0.1:{port + 1} for simulator-1 is already in use" in out
    assert not (tmp_path / "logs").exists()


def test_replicas_get_their_gpu_port_name_and_the_shared_config(tmp_path: Path) -> None:
    from serving.cli import build_parser
    from serving.settings import load_config
    from serving.up_cli import services, settings_from

    config_file = tmp_path / "infermeter.toml"
    config_file.write_text('[up]\nsimulator_gpus = ["l4", "h100-sxm:1g.20gb", "h200"]\n')
    args = build_parser().parse_args(["up", "--config", str(config_file), "--host", "127.0.0.2"])
    settings = settings_from(args, load_config(str(config_file), environ={}))
    specs = services(settings, args.config)
    assert [s.port for s in specs] == [8000, 8001, 8002]
    assert [s.name for s in specs] == ["simulator-0", "simulator-1", "simulator-2"]
    second = list(specs[1].argv)
    assert second[second.index("--gpu") + 1] == "h100-sxm:1g.20gb"
    assert second[second.index("--config") + 1] == str(config_file)  # replicas read [simulator]
    assert second[second.index("--host") + 1] == "127.0.0.2"
    assert specs[2].health_url == "http://127.0.0.2:8002/health"
    assert "--time-scale" not in second  # the [simulator] table decides unless [up] says
