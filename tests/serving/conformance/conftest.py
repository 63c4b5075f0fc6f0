"""Engines under test: real vLLM (CPU build) and the simulator, each started once per session.

Every conformance test takes the ``engine`` fixture and so runs against both. The real-vLLM
runs carry the ``vllm`` marker; when the CPU install is missing they FAIL with instructions
(``bash serving/vllm_cpu/setup.sh``), they are never skipped.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from conformance_reference import MAX_MODEL_LEN, SERVED_MODEL

from serving import vllm_cpu
from serving.errors import EngineNotInstalled
from serving.vllm_process import ensure_installed

REPO = Path(__file__).resolve().parents[3]
VLLM_START_TIMEOUT_S = 240.0
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


def _root_conftest(config: pytest.Config) -> ModuleType:
    """tests/conftest.py as pytest loaded it (free_port, wait_http, promtool_check...)."""
    module = config.pluginmanager.get_plugin(str(REPO / "tests" / "conftest.py"))
    assert isinstance(module, ModuleType), "tests/conftest.py is not loaded"
    return module


@pytest.fixture(scope="session")
def promtool(pytestconfig: pytest.Config) -> Callable[[str], tuple[int, list[str]]]:
    """``promtool_check`` from tests/conftest.py."""
    check: Callable[[str], tuple[int, list[str]]] = _root_conftest(pytestconfig).promtool_check
    return check


def _log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _isolated_env() -> dict[str, str]:
    """This environment without INFERMETER__* overrides, which would reconfigure the engines."""
    return {k: v for k, v in os.environ.items() if not k.startswith("INFERMETER__")}


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


_VLLM_PID = re.compile(r"vLLM started \(pid (\d+)")


@pytest.fixture(scope="session")
def vllm_engine(
    pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Engine]:
    """Real vLLM (CPU build, tiny model) started through ``infermeter engine vllm --cpu-dev``.

    Teardown checks the launcher itself: SIGTERM must stop it with exit code 0 and leave no
    vLLM process behind.
    """
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
    port = _root_conftest(pytestconfig).free_port()
    workdir = tmp_path_factory.mktemp("vllm")
    (workdir / "empty.toml").write_text("", encoding="utf-8")
    argv = [
        sys.executable, "-m", "serving", "engine", "vllm", "--cpu-dev",
        "--config", str(workdir / "empty.toml"), "--port", str(port),
        "--max-model-len", str(MAX_MODEL_LEN), "--stop-grace", "20",
    ]  # fmt: skip
    log_path = workdir / "vllm.log"
    url = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env=_isolated_env(),
            start_new_session=True,
        )
        try:
            _STARTUP["vllm"] = _wait_healthy(proc, url, log_path, VLLM_START_TIMEOUT_S)
            yield Engine("vllm", url)
        finally:
            _stop_launcher(proc, log_path)


def _stop_launcher(proc: subprocess.Popen[Any], log: Path) -> None:
    """SIGTERM the launcher only; it must stop vLLM's process group by itself."""
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


def _stop_group(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="session")
def simulator_engine(
    pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Engine]:
    """The simulator as a subprocess (``infermeter engine simulate``), zero time scale."""
    port = _root_conftest(pytestconfig).free_port()
    workdir = tmp_path_factory.mktemp("simulator")
    (workdir / "empty.toml").write_text("", encoding="utf-8")
    argv = [
        sys.executable, "-m", "serving", "engine", "simulate",
        "--config", str(workdir / "empty.toml"), "--port", str(port),
        "--served-model-name", SERVED_MODEL,
        "--max-model-len", str(MAX_MODEL_LEN), "--time-scale", "0",
    ]  # fmt: skip
    log_path = workdir / "simulator.log"
    url = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env=_isolated_env(),
            start_new_session=True,
        )
        try:
            _STARTUP["simulator"] = _wait_healthy(proc, url, log_path, SIMULATOR_START_TIMEOUT_S)
            yield Engine("simulator", url)
        finally:
            _stop_group(proc)


@pytest.fixture(scope="session", params=[pytest.param("vllm", marks=pytest.mark.vllm), "simulator"])
def engine(request: pytest.FixtureRequest) -> Engine:
    """Each engine in turn (tests are grouped per engine: one start each)."""
    found: Engine = request.getfixturevalue(f"{request.param}_engine")
    return found


@pytest.fixture
def client(engine: Engine) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=engine.base_url, timeout=60.0) as http:
        yield http


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for name, seconds in _STARTUP.items():
        terminalreporter.write_line(f"conformance: {name} healthy after {seconds:.1f} s")
