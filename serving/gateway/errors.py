"""Errors of the gateway.

Hierarchy::

    GatewayError
    ├── RequestError          the client's request is invalid (field named) → 400
    │   └── BodyTooLarge      the request body exceeds the limit → 413
    ├── AuthError             missing or unknown API key → 401
    ├── ModelNotFound         no pool serves the requested model → 404
    ├── JobNotFound           unknown job id → 404
    ├── Throttled             the throttle denied admission → 429 (Retry-After, RateLimit)
    ├── ThrottleUnavailable   the throttle could not be reached and fail-closed is set → 503
    │   └── ThrottleMisconfigured  the throttle refuses our token (401/403): never fail-open
    ├── UpstreamError         no replica could be reached / upstream failed → 502
    │   └── UpstreamConnectError  connecting failed: safe to retry on another replica
    ├── TooManyJobs           the tenant has max_jobs_per_tenant jobs queued or running → 429
    ├── QueueError            the job queue backend failed → 503
    └── EmbeddingError        the embedding model cannot be loaded or called

They become HTTP statuses only in :mod:`infermeter.serving.gateway.api`.
"""

from __future__ import annotations

from infermeter.kernel.errors import InfermeterError


class GatewayError(InfermeterError):
    """Base class of every gateway error."""


class RequestError(GatewayError):
    """The client's request is invalid; ``param`` names the field at fault."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class BodyTooLarge(RequestError):
    """The request body is larger than the gateway accepts."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body larger than {limit} bytes", None)
        self.limit = limit


class AuthError(GatewayError):
    """Missing or unknown API key."""


class ModelNotFound(GatewayError):
    """No pool is configured for the requested model."""

    def __init__(self, model: str) -> None:
        super().__init__(f"The model `{model}` does not exist.")
        self.model = model


class JobNotFound(GatewayError):
    """No job has this id."""


class Throttled(GatewayError):
    """Admission denied; carries the throttle's reason, retry delay and RateLimit headers."""

    def __init__(self, reason: str, retry_after_s: float, headers: dict[str, str]) -> None:
        super().__init__(f"rate limited ({reason}); retry after {retry_after_s:g} s")
        self.reason = reason
        self.retry_after_s = retry_after_s
        self.headers = headers


class ThrottleUnavailable(GatewayError):
    """The throttle did not answer and the gateway is configured to fail closed."""


class ThrottleMisconfigured(ThrottleUnavailable):
    """The throttle answered 401/403 to this gateway: its token is missing or wrong."""


class UpstreamError(GatewayError):
    """The upstream failed or could not be reached."""


class UpstreamConnectError(UpstreamError):
    """Connecting to an upstream failed before any request byte was accepted."""


class TooManyJobs(GatewayError):
    """The tenant already has ``limit`` jobs queued or running (``[gateway]
    max_jobs_per_tenant``); others' jobs are unaffected."""

    def __init__(self, tenant: str, limit: int) -> None:
        super().__init__(
            f"tenant {tenant!r} has {limit} jobs queued or running, the most allowed "
            f"(max_jobs_per_tenant = {limit}); wait for one to finish"
        )
        self.tenant = tenant
        self.limit = limit


class QueueError(GatewayError):
    """The job queue backend failed."""


class EmbeddingError(GatewayError):
    """The embedding backend cannot be loaded or did not answer."""
