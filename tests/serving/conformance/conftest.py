"""Engines under test: real vLLM (CPU build) and the simulator.

Every conformance test takes the ``engine`` fixture and so runs against both. Real vLLM is the
session's shared ``real_vllm`` (tests/conftest.py, started once for every package's tests;
its teardown checks the launcher's clean SIGTERM stop); the simulator is started here once.
The real-vLLM runs carry the ``vllm`` marker; when the CPU install is missing they FAIL with
instructions (``bash serving/vllm/cpu/setup.sh``), they are never skipped.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.conftest import free_port
from tests.real_vllm import START_TIMEOUT_S, serving_command
from tests.serving.conformance.conformance_reference import MAX_MODEL_LEN, SERVED_MODEL

SIMULATOR_START_TIMEOUT_S = 30.0
# Real time (--time-scale 1), like vLLM: in fast mode a 400-token stream the client reads
# slowly can still finish into the socket buffers before the test scrapes its gauges.
SIMULATOR_COMMAND = [
    sys.executable, "-m", "infermeter", "engine", "simulate",
    "--served-model-name", SERVED_MODEL, "--max-model-len", str(MAX_MODEL_LEN),
    "--time-scale", "1",
]  # fmt: skip


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


@pytest.fixture(scope="session")
def simulator_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    workdir = tmp_path_factory.mktemp("simulator")
    with serving_command(
        "simulator", SIMULATOR_COMMAND, free_port(), workdir, SIMULATOR_START_TIMEOUT_S
    ) as url:
        yield url


@pytest.fixture(scope="session", params=[pytest.param("vllm", marks=pytest.mark.vllm), "simulator"])
def engine(request: pytest.FixtureRequest) -> Engine:
    """Each engine in turn."""
    name: str = request.param
    fixture = "real_vllm" if name == "vllm" else "simulator_engine"
    return Engine(name, str(request.getfixturevalue(fixture)))


@pytest.fixture
def client(engine: Engine) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=engine.base_url, timeout=60.0) as http:
        yield http


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("engine") == "vllm":
            item.add_marker(pytest.mark.timeout(START_TIMEOUT_S + 120))
