"""State backends chosen by URI: ``memory://`` (default) or ``redis://host:port/db``.

See :mod:`infermeter.throttle.storage.base` for the protocol, :mod:`.memory` and :mod:`.redis` for
the backends and :mod:`.failover` for deciding locally while Redis is unreachable.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

from infermeter.throttle.errors import StorageError
from infermeter.throttle.storage.base import Capabilities, InProcessDecisions, Storage
from infermeter.throttle.storage.memory import MemoryStorage

SCHEMES = ("memory", "redis", "rediss", "unix")


def from_uri(uri: str) -> Storage:
    """The backend for ``uri``: ``memory://`` or ``redis://[:password@]host:port/db``."""
    scheme = urlsplit(uri).scheme
    if scheme == "memory":
        return MemoryStorage()
    if scheme in ("redis", "rediss", "unix"):
        from infermeter.throttle.storage.redis import RedisStorage

        return RedisStorage(uri)
    raise StorageError(f"unknown storage scheme {scheme!r} in {uri!r} (known: {SCHEMES})")


def with_failover(storage: Storage, now: Callable[[], float], fail_closed: bool = False) -> Storage:
    """Wrap a shared backend so decisions go on locally when it is unreachable; a local one
    (state not shared, nothing to lose contact with) is returned as it is."""
    if not storage.capabilities.shared_state:
        return storage
    from infermeter.throttle.storage.failover import FailoverStorage

    return FailoverStorage(storage, now, fail_closed=fail_closed)


__all__ = [
    "Capabilities",
    "InProcessDecisions",
    "MemoryStorage",
    "Storage",
    "from_uri",
    "with_failover",
]
