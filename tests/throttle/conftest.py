"""Throttle fixtures: policies, backends (memory and a real Redis), a private redis-server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from infermeter.throttle.storage.base import Storage
from infermeter.throttle.storage.memory import MemoryStorage
from infermeter.throttle.storage.redis import RedisStorage
from tests.throttle.throttle_helpers import RedisServer, redis_uri


@pytest.fixture(params=["memory", "redis"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Storage]:
    """Every storage backend, the Redis one on the machine's real Redis (own key prefix)."""
    if request.param == "memory":
        yield MemoryStorage()
        return
    storage = RedisStorage(redis_uri())
    await storage.clear()
    try:
        yield storage
    finally:
        await storage.clear()
        await storage.close()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path).start()
    try:
        yield server
    finally:
        server.stop()
