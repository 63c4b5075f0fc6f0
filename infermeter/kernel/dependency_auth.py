"""Whether each dependency accepts this service's token: a 401/403 is a configuration error.

A dependency that refuses our token is not "unreachable": failing open on it would silently
turn protection off (every admission let through, signals dropped). A component records each
refusal here; the refusal turns its readiness red (:meth:`DependencyAuth.problems`), counts in
``infermeter_<service>_dependency_auth_failures_total{dependency}`` and is logged once when it
starts and once when it clears (the next accepted call).
"""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter

AUTH_STATUSES = frozenset({401, 403})


class DependencyAuth:
    """The refusals of one service's dependencies (``throttle``, ``metering``, …)."""

    def __init__(self, service: str, registry: CollectorRegistry, log: logging.Logger) -> None:
        self._service = service
        self._log = log
        self._refused: dict[str, str] = {}
        self.failures = Counter(
            f"infermeter_{service}_dependency_auth_failures",
            "Calls a dependency refused with 401/403 (our token is missing, wrong or of the "
            "wrong scope): a configuration error, never treated as the dependency being down",
            ["dependency"],
            registry=registry,
        )

    def refused(self, dependency: str, status: int, setting: str) -> None:
        """Record a 401/403 from ``dependency``; ``setting`` names the token to fix."""
        self.failures.labels(dependency).inc()
        if dependency not in self._refused:
            self._log.error(
                "%s refused %s's token (HTTP %d): set %s to a token of the right scope",
                dependency, self._service, status, setting,
            )  # fmt: skip
        self._refused[dependency] = f"refused our token (HTTP {status}): check {setting}"

    def accepted(self, dependency: str) -> None:
        """A call to ``dependency`` was authorised: clear its refusal."""
        if self._refused.pop(dependency, None) is not None:
            self._log.warning("%s accepts %s's token again", dependency, self._service)

    def is_refused(self, dependency: str) -> bool:
        return dependency in self._refused

    def problems(self) -> dict[str, str]:
        """Dependency → why its token is refused (empty when every token is accepted)."""
        return dict(self._refused)
