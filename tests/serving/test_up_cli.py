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
