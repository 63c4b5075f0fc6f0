"""The one base error of infermeter, and the errors of the shared kernel.

Every package's errors derive from :class:`InfermeterError`; each package draws its own
subtree in its ``errors.py``. Hierarchy::

    InfermeterError
    ├── ConfigError            configuration file, flag or environment override is invalid
    ├── PortInUse              a port this process must bind is already taken
    ├── RecordError            one usage record / GPU sample is invalid (names index and field)
    ├── CatalogError           the price catalog is malformed (names file, line and field)
    ├── MeteringClientError    a call to metering's usage or rates endpoint failed
    │   ├── MeteringUnavailable    not reached, timed out, or 5xx/408/425/429 on every attempt
    │   ├── MeteringRefused        a 4xx: the status, metering's message and the field it names
    │   └── MeteringReplyError     a 2xx whose body is not the documented reply (names the field)
    ├── SpoolError             an on-disk spool (infermeter.kernel.spool) is full or corrupt
    │   ├── SpoolWriteError        the disk refused a write (ENOSPC, EIO, EROFS): retry later
    │   └── SpoolLocked            another process owns the spool directory
    ├── CollectorError         infermeter.collector.errors
    ├── MeteringError          infermeter.metering.errors
    ├── ThrottleError          infermeter.throttle.errors
    ├── ServingError           infermeter.serving.errors (engines, simulator)
    ├── GatewayError           infermeter.serving.gateway.errors
    ├── ProfileError           infermeter.capacity.errors
    └── DashboardError         infermeter.dashboards.errors

They become HTTP codes or exit codes only at the API / CLI boundary.
"""

from __future__ import annotations


class InfermeterError(Exception):
    """Base class of every infermeter error."""


class ConfigError(InfermeterError):
    """A configuration value is missing or invalid; the message names the file and field."""

    def __init__(self, message: str, *, source: str = "", field: str = "") -> None:
        self.source = source
        self.field = field
        where = ", ".join(p for p in (source, f"field {field!r}" if field else "") if p)
        super().__init__(f"{where}: {message}" if where else message)


class PortInUse(InfermeterError):
    """A port that must be bound is already taken by another process."""

    def __init__(self, host: str, port: int, what: str = "") -> None:
        self.host = host
        self.port = port
        label = f" for {what}" if what else ""
        super().__init__(f"port {host}:{port}{label} is already in use; free it or pick another")


class RecordError(InfermeterError):
    """A usage record or GPU sample failed validation; ``field`` names the offending field."""

    def __init__(self, field: str, message: str, index: int | None = None) -> None:
        self.field = field
        self.index = index
        self.message = message
        at = f"record {index}: " if index is not None else ""
        super().__init__(f"{at}{field}: {message}")


class CatalogError(InfermeterError):
    """The price catalog is malformed."""

    def __init__(self, message: str, *, source: str = "", field: str = "", line: int = 0) -> None:
        self.source = source
        self.field = field
        self.line = line
        parts = [p for p in (source, f"line {line}" if line else "", field) if p]
        super().__init__(f"{': '.join(parts)}: {message}" if parts else message)


class MeteringClientError(InfermeterError):
    """A call to metering's ``/v1/usage``, ``/v1/gpu-samples`` or ``/v1/rates`` failed."""


class MeteringUnavailable(MeteringClientError):
    """Metering could not take the call: transient, worth trying again later."""

    def __init__(
        self, url: str, reason: str, *, status: int | None = None, attempts: int = 1
    ) -> None:
        self.url = url
        self.reason = reason
        self.status = status
        self.attempts = attempts
        tries = f" ({attempts} attempts)" if attempts > 1 else ""
        super().__init__(f"metering at {url} unavailable{tries}: {reason}")


class MeteringRefused(MeteringClientError):
    """Metering answered a 4xx that trying again will not change; ``field`` is what it names."""

    def __init__(self, url: str, status: int, message: str, field: str | None = None) -> None:
        self.url = url
        self.status = status
        self.message = message
        self.field = field
        where = f" (field {field})" if field else ""
        super().__init__(f"metering at {url} answered HTTP {status}: {message}{where}")


class MeteringReplyError(MeteringClientError):
    """A success reply that does not have the documented shape; ``field`` names the culprit."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"metering reply: {field}: {message}")


class SpoolError(InfermeterError):
    """An on-disk spool cannot accept more data or holds a corrupt segment."""


class SpoolWriteError(SpoolError):
    """The disk refused a spool write (ENOSPC, EIO, read-only file system): nothing was
    written, the spool is as before, and the same write may succeed later."""


class SpoolLocked(SpoolError):
    """Another process owns the spool directory."""
