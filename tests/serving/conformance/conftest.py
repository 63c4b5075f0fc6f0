"""Engines under test: real vLLM (CPU build) and the simulator, each started once per session.

Every conformance test takes the ``engine`` fixture and so runs against both. The real-vLLM
runs carry the ``vllm`` marker; when the CPU install is missing they FAIL with instructions
(``bash serving/vllm_cpu/setup.sh``), they are never skipped.
"""

from __future__ import annotations

import os
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
from serving.errors import EngineError, EngineNotInstalled
from serving.vllm_launcher import VllmSettings, apply_cpu_dev, build_command
from serving.vllm_process import VllmProcess, ensure_installed

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


@pytest.fixture(scope="session")
def vllm_engine(
    pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Engine]:
    """Real vLLM (CPU build, tiny model) on a free port, started by our own launcher."""
    try:
        install = vllm_cpu.require_install()
        ensure_installed(str(install.python))
    except EngineNotInstalled as exc:
        pytest.fail(
            f"real vLLM is needed for the conformance suite: {exc}\n"
            "(./dev.sh test runs the setup script unless INFERMETER_SKIP_VLLM=1)",
            pytrace=False,
        )
    port = _root_conftest(pytestconfig).free_port()
    settings = apply_cpu_dev(
        VllmSettings(cpu_dev=True, port=port, max_model_len=MAX_MODEL_LEN), install
    )
    command = build_command(settings)
    log_path = tmp_path_factory.mktemp("vllm") / "server.log"
    with log_path.open("w", encoding="utf-8", buffering=1) as log:
        proc = VllmProcess(command, sink=lambda line: log.write(line + "\n")).start()
        try:
            _STARTUP["vllm"] = proc.wait_healthy(VLLM_START_TIMEOUT_S)
        except EngineError as exc:
            proc.stop(grace=10)
            pytest.fail(f"real vLLM did not start ({command.render()}): {exc}", pytrace=False)
        try:
            yield Engine("vllm", command.base_url)
        finally:
            proc.stop(grace=20)


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
    argv = [
        sys.executable, "-m", "serving", "engine", "simulate",
        "--port", str(port), "--served-model-name", SERVED_MODEL,
        "--max-model-len", str(MAX_MODEL_LEN), "--time-scale", "0",
    ]  # fmt: skip
    log_path = tmp_path_factory.mktemp("simulator") / "simulator.log"
    url = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True
        )
        try:
            started = time.monotonic()
            while True:
                if proc.poll() is not None:
                    pytest.fail(
                        f"simulator exited with {proc.returncode}: {' '.join(argv)}\n"
                        f"{_log_tail(log_path)}",
                        pytrace=False,
                    )
                try:
                    if httpx.get(f"{url}/health", timeout=1.0).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() - started > SIMULATOR_START_TIMEOUT_S:
                    pytest.fail(f"simulator not healthy: {_log_tail(log_path)}", pytrace=False)
                time.sleep(0.1)
            _STARTUP["simulator"] = time.monotonic() - started
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
