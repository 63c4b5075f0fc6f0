"""Errors of the serving engines (vLLM launcher, simulator).

Hierarchy::

    InfermeterError                 infermeter.kernel.errors
    └── ServingError
        └── EngineError             an engine (vLLM or simulator) cannot start or answer
            └── EngineNotInstalled  vLLM is not importable / `vllm` not on PATH

They become HTTP codes or exit codes only at the API / CLI boundary.
"""

from __future__ import annotations

from infermeter.kernel.errors import InfermeterError


class ServingError(InfermeterError):
    """Base class of every serving-engine error."""


class EngineError(ServingError):
    """An inference engine failed to start, died, or did not become healthy."""


class EngineNotInstalled(EngineError):
    """The requested engine is not installed on this machine."""
