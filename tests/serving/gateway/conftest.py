"""Gateway fixtures: the real embedding model (loaded once), free ports, a metering contract."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from gateway_fixtures import MODEL, MeteringContract, root_conftest

from infermeter.serving.gateway.embeddings.local import LocalEmbedder


@pytest.fixture
def free_port(pytestconfig: pytest.Config) -> Callable[[], int]:
    port: Callable[[], int] = root_conftest(pytestconfig).free_port
    return port


@pytest.fixture(scope="session")
def embedder() -> LocalEmbedder:
    """The real MiniLM, loaded once."""
    return LocalEmbedder()


@pytest.fixture
def metering_contract() -> Iterator[MeteringContract]:
    yield MeteringContract(
        rates={MODEL: {"usd_per_prompt_token": 1e-6, "usd_per_completion_token": 4e-6}}
    )
