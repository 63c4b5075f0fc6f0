"""Bearer tokens between infermeter's services, and the rule that keeps an open API on loopback.

Every service-to-service API is protected by *scoped* tokens (metering: ingest, read, admin;
throttle: decisions, signals, read, admin). A service checks a request with a
:class:`BearerCheck`; a client sends its token with :func:`auth_header`.

Secure by default (:func:`guard_exposure`): a service that binds anything but a loopback
address refuses to start while one of its scopes has no token, unless the operator said
``insecure`` (flag ``--insecure`` or config key ``insecure = true``); then it starts, and says
so in a warning at every start. Tokens come from the config value, the environment
(``INFERMETER__<TABLE>__<KEY>``) or a file (``<key>_file = "/run/secrets/…"``: a Kubernetes
Secret mount), see :func:`infermeter.kernel.settings.section`; never only from a flag.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from collections.abc import Mapping

from infermeter.kernel.errors import ConfigError
from infermeter.kernel.tenancy import bearer_token

LOOPBACK_NAMES = frozenset({"localhost", "ip6-localhost", "ip6-loopback"})
# Where a proxy's subrequest (nginx auth_request, Envoy ext_authz) carries the service token,
# because its Authorization header is the end client's API key.
SERVICE_TOKEN_HEADER = "x-infermeter-token"


def _bytes(value: str) -> bytes:
    # ASGI servers decode header bytes as latin-1; any str must compare without raising.
    return value.encode("utf-8", "surrogateescape")


class BearerCheck:
    """Whether an ``Authorization`` header carries one of the tokens of a scope.

    A scope with no token is open (allowed only on loopback by :func:`guard_exposure`).
    Comparison is constant-time and never raises, whatever the bytes presented.
    """

    __slots__ = ("_tokens", "scope")

    def __init__(self, scope: str, *tokens: str) -> None:
        self.scope = scope
        self._tokens = tuple(_bytes(t) for t in tokens if t)

    @property
    def open(self) -> bool:
        """True when no token protects the scope."""
        return not self._tokens

    def allows(self, authorization: str | None) -> bool:
        """Whether the header value ``authorization`` may call this scope."""
        if not self._tokens:
            return True
        return self.matches(bearer_token(authorization) or "")

    def matches(self, presented: str) -> bool:
        """Whether the bare token ``presented`` is one of the scope's (True when open)."""
        if not self._tokens:
            return True
        given = _bytes(presented)
        ok = False
        for token in self._tokens:  # no early exit: time does not tell which token matched
            ok |= hmac.compare_digest(given, token)
        return ok


def auth_header(token: str) -> dict[str, str]:
    """The header a client sends to a protected API (empty when it has no token)."""
    return {"Authorization": f"Bearer {token}"} if token else {}


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or name a server binds) is reachable only from this box."""
    name = host.strip().strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False  # a host name, or "" / "0.0.0.0" / "::": every interface


def guard_exposure(
    service: str,
    host: str,
    scopes: Mapping[str, str],
    *,
    insecure: bool,
    log: logging.Logger,
) -> list[str]:
    """Refuse to serve ``scopes`` (name → token) without tokens off loopback.

    Returns the open scopes. Raises :class:`ConfigError` naming the first one when ``host``
    is not loopback and ``insecure`` is not set; logs a warning naming them when it is.
    """
    unprotected = [name for name, token in scopes.items() if not token]
    if not unprotected or is_loopback(host):
        return unprotected
    if not insecure:
        raise ConfigError(
            f"{service} would listen on {host} with no token for {', '.join(unprotected)}: "
            f"set the token (config, INFERMETER__ environment or a *_file), bind 127.0.0.1, "
            f"or pass --insecure to serve it open",
            field=f"{service}.{unprotected[0]}",
        )
    log.warning(
        "INSECURE: %s listens on %s with no token for %s (--insecure); anyone who can reach "
        "it may call these APIs",
        service,
        host,
        ", ".join(unprotected),
    )
    return unprotected
