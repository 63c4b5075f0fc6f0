"""Throttle fixtures: policies, backends (memory and a real Redis), a private redis-server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from infermeter.throttle.storage.base import Storage
from infermeter.throttle.storage.redis import RedisStorage
from tests.throttle.throttle_helpers import BACKENDS, RedisServer, open_backend, redis_uri


@pytest.fixture(params=BACKENDS)
def backend_kind(request: pytest.FixtureRequest) -> str:
    """The name of each storage backend in turn (see ``throttle_helpers.BACKENDS``)."""
    return str(request.param)


@pytest.fixture
def backend_uri() -> str:
    """The machine's real Redis with a key prefix of this test alone."""
    return redis_uri()


@pytest.fixture
async def backend(backend_kind: str, backend_uri: str) -> AsyncIterator[Storage]:
    """Every storage backend, the shared ones on the machine's real Redis (own key prefix)."""
    storage = open_backend(backend_kind, backend_uri)
    if backend_kind == "memory":
        yield storage
        return
    keys = RedisStorage(backend_uri)  # the same keys, to clear them
    await keys.clear()
    try:
        yield storage
    finally:
        await keys.clear()
        await keys.close()
        await storage.close()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path).start()
    try:
        yield server
    finally:
        server.stop()
