"""Errors of the serving tier (CLI, configuration, engines, gateway).

Hierarchy::

    ServingError
    ├── ConfigError            configuration file or environment override is invalid
    ├── EngineError            an engine (vLLM or simulator) cannot start or answer
    │   └── EngineNotInstalled vLLM is not importable / `vllm` not on PATH
    └── PortInUse              a port this process must bind is already taken

They become HTTP codes or exit codes only at the API / CLI boundary.
"""

from __future__ import annotations


class ServingError(Exception):
    """Base class of every serving-tier error."""


class ConfigError(ServingError):
    """A configuration value is missing or invalid; the message names the file and field."""

    def __init__(self, message: str, *, source: str = "", field: str = "") -> None:
        self.source = source
        self.field = field
        where = ", ".join(p for p in (source, f"field {field!r}" if field else "") if p)
        super().__init__(f"{where}: {message}" if where else message)


class EngineError(ServingError):
    """An inference engine failed to start, died, or did not become healthy."""


class EngineNotInstalled(EngineError):
    """The requested engine is not installed on this machine."""


class PortInUse(ServingError):
    """A port that must be bound is already taken by another process."""

    def __init__(self, host: str, port: int, what: str = "") -> None:
        self.host = host
        self.port = port
        label = f" for {what}" if what else ""
        super().__init__(f"port {host}:{port}{label} is already in use; free it or pick another")
