"""Errors of the collector package.

Hierarchy::

    CollectorError
    └── RequestError        a client request the collector itself refuses (names the field)

``RequestError`` becomes an HTTP 4xx only in ``collector/proxy.py`` (the request path, where
the engine being unreachable or slow maps aiohttp's own errors to 502 / 504). Telemetry,
spool and shipping failures stay counters and log lines, never reaching proxied traffic: they
are the kernel's ``MeteringClientError`` and ``SpoolError`` subtrees (infermeter.kernel.errors;
the spool and its shipper are the kernel's, shared with the gateway), kept and retried.
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
