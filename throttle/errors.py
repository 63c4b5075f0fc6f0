"""Errors of the throttle service.

Hierarchy::

    ThrottleError
    ├── PolicyError            a policy document is invalid (names the field at fault)
    ├── RequestError           an API request is invalid (names the field at fault)
    │   └── ClockSkew          a valid signal dated too far from the throttle's clock
    ├── LimitReached           a bounded table is full (pools, replicas per pool)
    ├── UnknownReservation     settle of a reservation id that does not exist (or expired long ago)
    ├── UnknownPool            autoscale read of a pool the policy does not declare
    └── StorageError           the state backend failed
        └── StorageUnavailable the backend cannot be reached (connection refused, timeout)

They become HTTP status codes only in :mod:`infermeter.throttle.api`.
"""

from __future__ import annotations

from infermeter.kernel.errors import InfermeterError


class ThrottleError(InfermeterError):
    """Base class of every throttle error."""


class PolicyError(ThrottleError):
    """A policy document is invalid; ``field`` is the dotted path of the value at fault."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}" if field else message)


class RequestError(ThrottleError):
    """An API request is invalid; ``field`` names the value at fault."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class ClockSkew(RequestError):
    """A well-formed signal whose ``ts`` is outside the accepted skew: refused on its content
    (422), where a malformed request is a 400."""


class LimitReached(ThrottleError):
    """A bounded table (pools, replicas per pool) is full; ``field`` names what was refused."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class UnknownReservation(ThrottleError):
    """No reservation with this id (never made, or its record expired)."""

    def __init__(self, reservation_id: str) -> None:
        self.reservation_id = reservation_id
        super().__init__(f"unknown reservation {reservation_id!r}")


class UnknownPool(ThrottleError):
    """The pool is neither declared in the policy nor seen in any signal."""

    def __init__(self, pool: str) -> None:
        self.pool = pool
        super().__init__(f"unknown pool {pool!r}")


class StorageError(ThrottleError):
    """The state backend failed."""


class StorageUnavailable(StorageError):
    """The state backend cannot be reached."""
