"""One real vLLM (CPU build, tiny model) for the whole test session.

Started through our own launcher (``infermeter engine vllm --cpu-dev``) on first use and
stopped at the end of the session, where the teardown also checks that the launcher stops
vLLM's whole process group on SIGTERM and exits 0. Starting vLLM costs about 35 CPU-seconds
(three Python processes importing torch), so every package's real-vLLM tests share this one.
When the CPU install is missing the fixture FAILS with instructions; it never skips.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from infermeter.serving.errors import EngineNotInstalled
from infermeter.serving.vllm import cpu as vllm_cpu
from infermeter.serving.vllm.process import ensure_installed

REPO = Path(__file__).resolve().parents[1]
SERVED_MODEL = "tiny-llama"
MAX_MODEL_LEN = 512
# ~30-40 s on an idle 2-core box, 2-3 minutes when the box is shared.
START_TIMEOUT_S = 480.0
STARTUP_SECONDS: dict[str, float] = {}
_VLLM_PID = re.compile(r"vLLM started \(pid (\d+)")


def isolated_env() -> dict[str, str]:
    """This environment without INFERMETER__* overrides, which would reconfigure a child."""
    return {k: v for k, v in os.environ.items() if not k.startswith("INFERMETER__")}


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def stop_group(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM a child's process group, SIGKILL it after 10 s."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def wait_healthy(proc: subprocess.Popen[Any], url: str, log: Path, timeout: float) -> float:
    """Poll ``url/health`` until 200; fail with the log tail if the child dies or times out."""
    started = time.monotonic()
    while True:
        if proc.poll() is not None:
            pytest.fail(f"exited with {proc.returncode}:\n{log_tail(log)}", pytrace=False)
        try:
            if httpx.get(f"{url}/health", timeout=2.0).status_code == 200:
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        if time.monotonic() - started > timeout:
            stop_group(proc)
            pytest.fail(f"not healthy after {timeout:.0f} s:\n{log_tail(log)}", pytrace=False)
        time.sleep(0.2)


def stop_launcher(proc: subprocess.Popen[Any], log: Path) -> None:
    """SIGTERM the launcher only: it must stop vLLM's process group by itself and exit 0."""
    found = _VLLM_PID.search(log.read_text(errors="replace"))
    engine_pgid = int(found.group(1)) if found else None
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            stop_group(proc)
    leftovers = False
    if engine_pgid is not None:
        try:
            os.killpg(engine_pgid, signal.SIGKILL)
            leftovers = True
        except ProcessLookupError:
            pass
    assert proc.returncode == 0, f"launcher exit code {proc.returncode}:\n{log_tail(log)}"
    assert not leftovers, "vLLM processes outlived the launcher's SIGTERM"


def require_vllm_cpu() -> None:
    """Fail the test (never skip) when the vLLM CPU build is not installed."""
    problem = ""
    try:
        ensure_installed(str(vllm_cpu.require_install().python))
    except EngineNotInstalled as exc:
        problem = str(exc)
    if problem:
        pytest.fail(
            f"real vLLM (CPU build) is needed: {problem}\n"
            "(./dev.sh test runs serving/vllm/cpu/setup.sh unless INFERMETER_SKIP_VLLM=1)",
            pytrace=False,
        )


@contextmanager
def serving_command(
    name: str, argv: list[str], port: int, workdir: Path, timeout: float
) -> Iterator[str]:
    """Run an infermeter command taking --config/--port until healthy; yield its URL.

    The process gets an empty config file, no INFERMETER__* variables and its own process
    group; its log goes to ``workdir/<name>.log``.
    """
    config = workdir / "empty.toml"
    config.write_text("", encoding="utf-8")
    log_path = workdir / f"{name}.log"
    url = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [*argv, "--config", str(config), "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env=isolated_env(),
            start_new_session=True,
        )
        try:
            STARTUP_SECONDS[name] = wait_healthy(proc, url, log_path, timeout)
            yield url
        finally:
            if name == "vllm":
                stop_launcher(proc, log_path)
            else:
                stop_group(proc)


VLLM_COMMAND = [
    sys.executable, "-m", "infermeter", "engine", "vllm", "--cpu-dev",
    "--max-model-len", str(MAX_MODEL_LEN), "--stop-grace", "20",
]  # fmt: skip


def start_real_vllm(workdir: Path, port: int) -> Iterator[str]:
    """Generator behind the session fixture ``real_vllm`` (tests/conftest.py)."""
    require_vllm_cpu()
    with serving_command("vllm", VLLM_COMMAND, port, workdir, START_TIMEOUT_S) as url:
        yield url
