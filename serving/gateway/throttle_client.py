"""Admission and settlement at the throttle (``POST /v1/admit``, ``POST /v1/settle``).

Every call is bounded by a timeout. When the throttle cannot be reached (connection refused,
timeout, 5xx) the gateway fails open (admits without a reservation) or fails closed
(:class:`ThrottleUnavailable`) by setting; either way the event is counted, never a hang.
A 429 becomes :class:`Throttled` carrying ``Retry-After`` and the IETF RateLimit headers.

A 401/403 is different: the throttle is up and refuses our token (``[gateway]
throttle_token`` missing or wrong). Failing open on it would turn every limit off, so the
request is refused (:class:`ThrottleMisconfigured`, 503) whatever the failure mode, and the
refusal turns readiness red (:class:`~infermeter.kernel.dependency_auth.DependencyAuth`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from prometheus_client import CollectorRegistry, Counter

from infermeter.kernel.dependency_auth import AUTH_STATUSES, DependencyAuth
from infermeter.kernel.service_auth import auth_header
from infermeter.serving.gateway.errors import Throttled, ThrottleMisconfigured, ThrottleUnavailable

PASS_HEADERS = ("retry-after", "ratelimit-policy", "ratelimit")
TOKEN_SETTING = "[gateway] throttle_token"


@dataclass(frozen=True, slots=True)
class Admission:
    """The outcome of an admission: ``reservation_id`` empty when failed open or disabled."""

    reservation_id: str = ""
    failed_open: bool = False


@dataclass(frozen=True, slots=True)
class AdmitRequest:
    """What the gateway knows about a request before forwarding it."""

    tenant: str
    model: str
    pool: str
    request_id: str
    prompt_chars: int
    max_tokens: int


class ThrottleClient:
    """Talks to the throttle; ``base_url`` empty disables admission control."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        *,
        timeout_s: float,
        failure_mode: str,
        registry: CollectorRegistry,
        auth: DependencyAuth,
        token: str = "",
    ) -> None:
        self._session = session
        self._base = base_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._fail_open = failure_mode == "open"
        self._headers = {"content-type": "application/json", **auth_header(token)}
        self.auth = auth
        self.unreachable = Counter(
            "infermeter_gateway_throttle_unreachable",
            "Throttle calls that failed (timeout, refused, 5xx), by call and outcome",
            ["call", "mode"],
            registry=registry,
        )
        self.denied = Counter(
            "infermeter_gateway_throttled",
            "Requests denied by the throttle, by reason",
            ["reason"],
            registry=registry,
        )

    @property
    def enabled(self) -> bool:
        """Whether a throttle is configured."""
        return bool(self._base)

    async def _post(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any], Any]:
        async with self._session.post(
            self._base + path,
            data=orjson.dumps(body),
            headers=self._headers,
            timeout=self._timeout,
        ) as resp:
            raw = await resp.read()
            try:
                payload = orjson.loads(raw) if raw else {}
            except orjson.JSONDecodeError:
                payload = {}
            return resp.status, dict(resp.headers), payload

    async def admit(self, req: AdmitRequest) -> Admission:
        """Reserve the request's estimated cost; raises :class:`Throttled` on a denial."""
        if not self.enabled:
            return Admission()
        body = {
            "tenant": req.tenant,
            "model": req.model,
            "pool": req.pool,
            "request_id": req.request_id,
            "prompt_chars": req.prompt_chars,
            "max_tokens": req.max_tokens,
        }
        try:
            status, headers, payload = await self._post("/v1/admit", body)
        except (TimeoutError, aiohttp.ClientError, OSError):
            return self._unreachable("admit")
        if status in AUTH_STATUSES:
            self.auth.refused("throttle", status, TOKEN_SETTING)
            raise ThrottleMisconfigured(
                f"the throttle refused this gateway's token (HTTP {status}); set {TOKEN_SETTING}"
            )
        if status < 500:
            self.auth.accepted("throttle")
        if status == 429:
            reason = str(payload.get("reason", "rate")) if isinstance(payload, dict) else "rate"
            self.denied.labels(reason).inc()
            lower = {k.lower(): v for k, v in headers.items()}
            passed = {k: lower[k] for k in PASS_HEADERS if k in lower}
            retry = _retry_after(payload, lower)
            passed.setdefault("retry-after", str(max(1, round(retry))))
            raise Throttled(reason, retry, passed)
        if status >= 500 or not isinstance(payload, dict):
            return self._unreachable("admit")
        if status >= 400:
            # A contract error between gateway and throttle: never the client's fault.
            return self._unreachable("admit")
        return Admission(reservation_id=str(payload.get("reservation_id", "")))

    def _unreachable(self, call: str) -> Admission:
        mode = "open" if self._fail_open else "closed"
        self.unreachable.labels(call, mode).inc()
        if self._fail_open:
            return Admission(failed_open=True)
        raise ThrottleUnavailable("the throttle did not answer and failure mode is closed")

    async def settle(
        self,
        admission: Admission,
        *,
        prompt_tokens: int,
        cached_prompt_tokens: int,
        completion_tokens: int,
        status: str,
    ) -> bool:
        """Replace the reservation by the actual usage; False when it could not be sent."""
        if not self.enabled or not admission.reservation_id:
            return False
        body = {
            "reservation_id": admission.reservation_id,
            "prompt_tokens": prompt_tokens,
            "cached_prompt_tokens": min(cached_prompt_tokens, prompt_tokens),
            "completion_tokens": completion_tokens,
            "status": status,
        }
        try:
            code, _, _ = await self._post("/v1/settle", body)
        except (TimeoutError, aiohttp.ClientError, OSError):
            self.unreachable.labels("settle", "open" if self._fail_open else "closed").inc()
            return False
        if code in AUTH_STATUSES:
            self.auth.refused("throttle", code, TOKEN_SETTING)
            return False
        if code >= 300:
            self.unreachable.labels("settle", "open" if self._fail_open else "closed").inc()
            return False
        self.auth.accepted("throttle")
        return True

    async def probe_auth(self) -> None:
        """Ask the throttle whether it takes our token, without deciding anything: an empty
        admission body is refused as invalid (422) past the token check, or 401/403 at it."""
        if not self.enabled:
            return
        try:
            status, _, _ = await self._post("/v1/admit", {})
        except (TimeoutError, aiohttp.ClientError, OSError):
            return  # reachability is readiness' other probe
        if status in AUTH_STATUSES:
            self.auth.refused("throttle", status, TOKEN_SETTING)
        elif status < 500:
            self.auth.accepted("throttle")


def _retry_after(payload: Any, headers: dict[str, str]) -> float:
    if isinstance(payload, dict):
        value = payload.get("retry_after_s")
        if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
            return float(value)
    try:
        return max(0.0, float(headers.get("retry-after", "1")))
    except ValueError:
        return 1.0
