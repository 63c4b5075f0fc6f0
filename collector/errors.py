"""Errors of the collector package.

Hierarchy::

    CollectorError
    ├── RequestError        a client request the collector itself refuses (names the field)
    └── SpoolError          the on-disk spool is full or corrupt
        ├── SpoolWriteError the disk refused a write (ENOSPC, EIO, EROFS): retry later
        └── SpoolLocked     another collector owns the spool directory

``RequestError`` becomes an HTTP 4xx only in ``collector/proxy.py`` (the request path, where
the engine being unreachable or slow maps aiohttp's own errors to 502 / 504); the others
stay counters and log lines: telemetry and shipping failures never reach proxied traffic.
Shipping failures are the kernel's ``MeteringClientError`` (infermeter.kernel.errors), kept
spooled and retried.
"""

from __future__ import annotations

from infermeter.kernel.errors import InfermeterError


class CollectorError(InfermeterError):
    """Base class of every collector error."""


class RequestError(CollectorError):
    """A request the collector refuses before forwarding it; ``field`` names the culprit."""

    def __init__(self, field: str, message: str, status: int = 400) -> None:
        self.field = field
        self.message = message
        self.status = status
        super().__init__(f"{field}: {message}")


class SpoolError(CollectorError):
    """The on-disk spool cannot accept more data or holds a corrupt segment."""


class SpoolWriteError(SpoolError):
    """The disk refused a spool write (ENOSPC, EIO, read-only file system): nothing was
    written, the spool is as before, and the same write may succeed later."""


class SpoolLocked(SpoolError):
    """Another process owns the spool directory."""
