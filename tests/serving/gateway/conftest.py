"""Gateway fixtures: the real embedding model (loaded once), a metering contract."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from infermeter.serving.gateway.embeddings.local import LocalEmbedder
from tests.serving.gateway.gateway_helpers import MODEL, MeteringContract


@pytest.fixture(scope="session")
def embedder() -> LocalEmbedder:
    """The real MiniLM, loaded once."""
    return LocalEmbedder()


@pytest.fixture
def metering_contract() -> Iterator[MeteringContract]:
    yield MeteringContract(
        rates={MODEL: {"usd_per_prompt_token": 1e-6, "usd_per_completion_token": 4e-6}}
    )
