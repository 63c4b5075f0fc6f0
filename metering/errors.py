"""Errors of the metering package.

Hierarchy::

    InfermeterError        infermeter.kernel.errors (also RecordError and CatalogError, which
    │                      metering raises for bad records and a bad price catalog)
    └── MeteringError
        ├── BatchError     a whole ingest body is unreadable (not JSON, not an array, bad Arrow)
        ├── QueryError     a report / query parameter is invalid (names the parameter)
        │   └── RangeError a time range bound (since / until) is unparsable or inverted
        └── StorageError   the DuckDB / DuckLake store failed or the URI is unsupported

They become HTTP codes only in ``metering/api.py``.
"""

from __future__ import annotations

from infermeter.kernel.errors import CatalogError, InfermeterError, RecordError

__all__ = [
    "BatchError",
    "CatalogError",
    "MeteringError",
    "QueryError",
    "RangeError",
    "RecordError",
    "StorageError",
]


class MeteringError(InfermeterError):
    """Base class of every metering error."""


class BatchError(MeteringError):
    """An ingest body cannot be read as a batch at all; ``field`` names what is wrong."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class QueryError(MeteringError):
    """A query parameter is invalid; ``param`` names it."""

    def __init__(self, param: str, message: str) -> None:
        self.param = param
        self.message = message
        super().__init__(f"{param}: {message}")


class RangeError(QueryError):
    """``since`` or ``until`` is not a time, or the range is inverted; ``param`` names the
    bound (HTTP 422)."""


class StorageError(MeteringError):
    """The store failed, or its URI names an unsupported backend."""
