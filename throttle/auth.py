"""The throttle's token scopes: who may decide, push signals, read and change the policy.

Each scope is a :class:`~infermeter.kernel.service_auth.BearerCheck` built once from the
settings; routes ask the scope they belong to. ``signals`` and ``read`` fall back to the
decisions token (``api_token``) when they have none of their own; ``admin`` has no fallback
(no admin token: the admin API is off).
"""

from __future__ import annotations

from dataclasses import dataclass

from infermeter.kernel.service_auth import BearerCheck
from infermeter.throttle.settings import ThrottleSettings


@dataclass(frozen=True, slots=True)
class ThrottleAuth:
    """One check per scope."""

    decisions: BearerCheck
    signals: BearerCheck
    read: BearerCheck
    admin: BearerCheck

    @classmethod
    def from_settings(cls, s: ThrottleSettings) -> ThrottleAuth:
        return cls(
            decisions=BearerCheck("decisions", s.api_token),
            signals=BearerCheck("signals", s.signals_token or s.api_token),
            read=BearerCheck("read", s.read_token or s.api_token),
            admin=BearerCheck("admin", s.admin_token),
        )


def exposed_scopes(s: ThrottleSettings) -> dict[str, str]:
    """Scope → token for the exposure guard (the admin API is off without its token)."""
    return {
        "api_token": s.api_token,
        "signals_token": s.signals_token or s.api_token,
        "read_token": s.read_token or s.api_token,
    }
