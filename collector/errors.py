"""Errors of the collector package.

Hierarchy::

    CollectorError
    ├── RequestError        a client request the collector itself refuses (names the field)
    ├── ShippingError       metering refused or could not take a batch (retried, then spooled)
    └── SpoolError          the on-disk spool is full or corrupt

``RequestError`` becomes an HTTP 4xx only in ``collector/proxy.py`` (the request path, where
the engine being unreachable or slow maps aiohttp's own errors to 502 / 504); the others
stay counters and log lines: telemetry and shipping failures never reach proxied traffic.
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


class ShippingError(CollectorError):
    """A batch could not be delivered to metering (network error or non-2xx status)."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        self.retryable = retryable
        super().__init__(message)


class SpoolError(CollectorError):
    """The on-disk spool cannot accept more data or holds a corrupt segment."""
