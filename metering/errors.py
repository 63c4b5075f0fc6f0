"""Errors of the metering package.

Hierarchy::

    MeteringError
    ├── RecordError        one usage record / GPU sample is invalid (names index and field)
    ├── BatchError         a whole ingest body is unreadable (not JSON, not an array, bad Arrow)
    ├── QueryError         a report / query parameter is invalid (names the parameter)
    ├── CatalogError       the price catalog is malformed (names file, line and field)
    └── StorageError       the DuckDB / DuckLake store failed or the URI is unsupported

They become HTTP codes only in ``metering/api.py``.
"""

from __future__ import annotations


class MeteringError(Exception):
    """Base class of every metering error."""


class RecordError(MeteringError):
    """A record failed validation; ``field`` names the offending field."""

    def __init__(self, field: str, message: str, index: int | None = None) -> None:
        self.field = field
        self.index = index
        self.message = message
        at = f"record {index}: " if index is not None else ""
        super().__init__(f"{at}{field}: {message}")


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


class CatalogError(MeteringError):
    """The price catalog is malformed."""

    def __init__(self, message: str, *, source: str = "", field: str = "", line: int = 0) -> None:
        self.source = source
        self.field = field
        self.line = line
        parts = [p for p in (source, f"line {line}" if line else "", field) if p]
        super().__init__(f"{': '.join(parts)}: {message}" if parts else message)


class StorageError(MeteringError):
    """The store failed, or its URI names an unsupported backend."""
