"""Errors of the capacity model.

Hierarchy::

    InfermeterError        infermeter.kernel.errors
    └── ProfileError       unknown GPU/model profile, bad MIG slice, model does not fit
"""

from __future__ import annotations

from infermeter.kernel.errors import InfermeterError


class ProfileError(InfermeterError):
    """A GPU or model profile is unknown, or the chosen configuration cannot run."""
