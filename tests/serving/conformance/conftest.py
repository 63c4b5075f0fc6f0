"""Engines under test: real vLLM (CPU build) and the simulator, each started once per session.

Every conformance test takes the ``engine`` fixture and so runs against both: pytest groups
the tests by engine, starts each engine once and stops it before starting the next, so real
vLLM (about 3 GB of RAM) does not outlive its tests. The real-vLLM runs carry the ``vllm``
marker; when the CPU install is missing they FAIL with instructions
(``bash serving/vllm_cpu/setup.sh``), they are never skipped.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from serving import vllm_cpu
from serving.errors import EngineNotInstalled
from serving.vllm_process import ensure_installed
from tests.conftest import free_port
from tests.serving.conformance.conformance_reference import MAX_MODEL_LEN, SERVED_MODEL

REPO = Path(__file__).resolve().parents[3]
# vLLM needs ~35 CPU-seconds to start (3 Python processes importing torch): ~30-40 s on an idle
# 2-core box, 2-3 minutes when the box is shared. The test that happens to start it gets a
# longer pytest timeout than the suite's 300 s (see pytest_collection_modifyitems).
VLLM_START_TIMEOUT_S = 480.0
SIMULATOR_START_TIMEOUT_S = 30.0
_STARTUP: dict[str, float] = {}


@dataclass(frozen=True)
class Engine:
    """One running engine: which kind, where, and what it serves."""

    name: str
    base_url: str
    served_model: str = SERVED_MODEL
    max_model_len: int = MAX_MODEL_LEN

    @property
    def is_simulator(self) -> bool:
        return self.name == "simulator"


def _log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _isolated_env() -> dict[str, str]:
    """This environment without INFERMETER__* overrides, which would reconfigure the engines."""
    return {k: v for k, v in os.environ.items() if not k.startswith("INFERMETER__")}


def _stop_group(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _wait_healthy(proc: subprocess.Popen[Any], url: str, log: Path, timeout: float) -> float:
    started = time.monotonic()
    while True:
        if proc.poll() is not None:
            pytest.fail(f"exited with {proc.returncode}:\n{_log_tail(log)}", pytrace=False)
        try:
            if httpx.get(f"{url}/health", timeout=2.0).status_code == 200:
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        if time.monotonic() - started > timeout:
            _stop_group(proc)
            pytest.fail(f"not healthy after {timeout:.0f} s:\n{_log_tail(log)}", pytrace=False)
        time.sleep(0.2)


@contextmanager
def _serving(name: str, argv: list[str], port: int, workdir: Path, timeout: float) -> Iterator[str]:
    """Run ``argv`` (an infermeter command taking --config/--port) until healthy; yield its URL.

    The process gets an empty config file and no INFERMETER__* variables, so nothing on the
    machine reconfigures it, and its own process group; its log goes to ``workdir``.
    """
    config = workdir / "empty.toml"
    config.write_text("", encoding="utf-8")
    log_path = workdir / f"{name}.log"
    url = f"http://127.0.0.1:{port}"
    full = [*argv, "--config", str(config), "--port", str(port)]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            full,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env=_isolated_env(),
            start_new_session=True,
        )
        try:
            _STARTUP[name] = _wait_healthy(proc, url, log_path, timeout)
            yield url
        finally:
            if name == "vllm":
                _stop_launcher(proc, log_path)
            else:
                _stop_group(proc)


_VLLM_PID = re.compile(r"vLLM started \(pid (\d+)")


def _stop_launcher(proc: subprocess.Popen[Any], log: Path) -> None:
    """SIGTERM the launcher only: it must stop vLLM's process group by itself, exit 0."""
    found = _VLLM_PID.search(log.read_text(errors="replace"))
    engine_pgid = int(found.group(1)) if found else None
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            _stop_group(proc)
    leftovers = False
    if engine_pgid is not None:
        try:
            os.killpg(engine_pgid, signal.SIGKILL)
            leftovers = True
        except ProcessLookupError:
            pass
    assert proc.returncode == 0, f"launcher exit code {proc.returncode}:\n{_log_tail(log)}"
    assert not leftovers, "vLLM processes outlived the launcher's SIGTERM"


def _require_vllm_cpu() -> None:
    problem = ""
    try:
        ensure_installed(str(vllm_cpu.require_install().python))
    except EngineNotInstalled as exc:
        problem = str(exc)
    if problem:
        pytest.fail(
            f"real vLLM is needed for the conformance suite: {problem}\n"
            "(./dev.sh test runs the setup script unless INFERMETER_SKIP_VLLM=1)",
            pytrace=False,
        )


# The engines as `infermeter` commands (each also gets --config and --port).
COMMANDS = {
    # real vLLM through our own launcher; teardown checks its clean SIGTERM stop
    "vllm": [
        sys.executable, "-m", "serving", "engine", "vllm", "--cpu-dev",
        "--max-model-len", str(MAX_MODEL_LEN), "--stop-grace", "20",
    ],
    "simulator": [
        sys.executable, "-m", "serving", "engine", "simulate",
        "--served-model-name", SERVED_MODEL, "--max-model-len", str(MAX_MODEL_LEN),
        "--time-scale", "0",
    ],
}  # fmt: skip
START_TIMEOUT_S = {"vllm": VLLM_START_TIMEOUT_S, "simulator": SIMULATOR_START_TIMEOUT_S}


@pytest.fixture(scope="session", params=[pytest.param("vllm", marks=pytest.mark.vllm), "simulator"])
def engine(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Engine]:
    """Each engine in turn, started once, stopped when its tests are done."""
    name: str = request.param
    if name == "vllm":
        _require_vllm_cpu()
    workdir = tmp_path_factory.mktemp(name)
    port = free_port()
    with _serving(name, COMMANDS[name], port, workdir, START_TIMEOUT_S[name]) as url:
        yield Engine(name, url)


@pytest.fixture
def client(engine: Engine) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=engine.base_url, timeout=60.0) as http:
        yield http


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("engine") == "vllm":
            item.add_marker(pytest.mark.timeout(VLLM_START_TIMEOUT_S + 120))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for name, seconds in _STARTUP.items():
        terminalreporter.write_line(f"conformance: {name} healthy after {seconds:.1f} s")
