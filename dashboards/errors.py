"""Errors of the dashboards package.

Hierarchy::

    DashboardError
    ├── ServiceUnavailable   a service did not answer (connection refused, timeout)
    └── ServiceError         a service answered with an error status (4xx/5xx)

Pages catch :class:`DashboardError` and show its message; nothing reaches the user as a
traceback.
"""

from __future__ import annotations

from infermeter.kernel.errors import InfermeterError


class DashboardError(InfermeterError):
    """Base of every dashboards error; ``str()`` is a message fit for the page."""


class ServiceUnavailable(DashboardError):
    """A service could not be reached."""

    def __init__(self, service: str, url: str, reason: str) -> None:
        super().__init__(f"{service} is not reachable at {url}: {reason}")
        self.service = service
        self.url = url


class ServiceError(DashboardError):
    """A service answered with an error status."""

    def __init__(self, service: str, status: int, message: str, param: str | None = None) -> None:
        where = f" (field {param})" if param else ""
        super().__init__(f"{service} answered {status}: {message}{where}")
        self.service = service
        self.status = status
        self.param = param
