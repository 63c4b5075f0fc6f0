"""Throttle fixtures: policies, backends (memory and a real Redis), a private redis-server."""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis
from tests.throttle.throttle_helpers import MACHINE_REDIS, free_port

from infermeter.throttle.storage.base import Storage
from infermeter.throttle.storage.memory import MemoryStorage
from infermeter.throttle.storage.redis import RedisStorage


def redis_uri(prefix: str | None = None) -> str:
    """The machine's Redis with a key prefix unique to the caller."""
    return f"{MACHINE_REDIS}?prefix=test:{prefix or uuid.uuid4().hex[:12]}&timeout_ms=3000"


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


class RedisServer:
    """A private redis-server child process that tests may stop and restart."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0?prefix=t&timeout_ms=1500"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server not installed: run ./dev.sh test")
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(host="127.0.0.1", port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        client.close()
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path).start()
    try:
        yield server
    finally:
        server.stop()
