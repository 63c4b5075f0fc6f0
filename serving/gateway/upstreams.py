"""Where a pool's requests go, behind one interface: self-hosted replicas or a managed API.

:class:`SelfHosted` sends to a replica's collector (which proxies to vLLM or the
simulator) chosen by :class:`~infermeter.serving.gateway.routing.Router`, with the trusted tenant
headers. If connecting fails it tries another replica, up to ``connect_retries`` times; a
request that reached a replica is never re-sent, because it may have generated tokens.
:class:`Managed` sends to an OpenAI-compatible API with a key from the environment and no
internal headers. Both return an :class:`UpstreamResponse` whose body is read as a stream.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Protocol

import aiohttp

from infermeter.serving.gateway.errors import UpstreamConnectError, UpstreamError
from infermeter.serving.gateway.routing import Replica, Router

# aiohttp's connect failures (refused, DNS, connect timeout): nothing reached the upstream.
CONNECT_ERRORS: tuple[type[BaseException], ...] = (
    aiohttp.ClientConnectorError,
    aiohttp.ConnectionTimeoutError,
)
RESPONSE_HEADERS_KEPT = ("content-type", "x-request-id", "x-infermeter-request-id")


@dataclass(slots=True)
class UpstreamResponse:
    """An open upstream response; call :meth:`release` when done with it."""

    status: int
    headers: dict[str, str]
    replica: str
    _resp: aiohttp.ClientResponse
    _replica: Replica | None = None

    def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives."""
        return self._resp.content.iter_any()

    async def read(self) -> bytes:
        """The whole body."""
        return await self._resp.read()

    def release(self) -> None:
        """Close the response and return the replica's in-flight slot."""
        if self._replica is not None:
            self._replica.outstanding -= 1
            self._replica = None
        self._resp.release()

    def close(self) -> None:
        """Abort the upstream connection (client went away)."""
        if self._replica is not None:
            self._replica.outstanding -= 1
            self._replica = None
        self._resp.close()


class Upstream(Protocol):
    """A pool's upstream."""

    kind: str  # self_hosted | managed
    pool: str

    async def send(self, path: str, body: bytes, headers: Mapping[str, str]) -> UpstreamResponse:
        """POST ``body`` to ``path`` (e.g. ``/v1/chat/completions``)."""
        ...


class SelfHosted:
    """Replicas reached through their collectors."""

    kind = "self_hosted"

    def __init__(
        self,
        pool: str,
        router: Router,
        session: aiohttp.ClientSession,
        *,
        connect_timeout_s: float,
        read_timeout_s: float,
        connect_retries: int,
        upstream_model: str = "",
    ) -> None:
        self.pool = pool
        self.router = router
        self.upstream_model = upstream_model
        self._session = session
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout_s, sock_read=read_timeout_s
        )
        self._retries = connect_retries

    async def send(self, path: str, body: bytes, headers: Mapping[str, str]) -> UpstreamResponse:
        """Send to the least-loaded replica; only connect failures move to another."""
        tried: set[str] = set()
        last: BaseException | None = None
        for _ in range(self._retries + 1):
            replica = self.router.pick(frozenset(tried))
            if replica is None:
                break
            tried.add(replica.name)
            replica.outstanding += 1
            try:
                resp = await self._session.post(
                    replica.url + path, data=body, headers=dict(headers), timeout=self._timeout
                )
            except CONNECT_ERRORS as exc:
                replica.outstanding -= 1
                replica.connect_failures += 1
                last = exc
                continue
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                replica.outstanding -= 1
                raise UpstreamError(f"replica {replica.name} failed: {exc}") from exc
            kept = {k: v for k, v in resp.headers.items() if k.lower() in RESPONSE_HEADERS_KEPT}
            return UpstreamResponse(resp.status, kept, replica.name, resp, replica)
        raise UpstreamConnectError(
            f"no replica of pool {self.pool} could be reached ({len(tried)} tried): {last}"
        )


class Managed:
    """An OpenAI-compatible managed API."""

    kind = "managed"

    def __init__(
        self,
        pool: str,
        base_url: str,
        api_key_env: str,
        session: aiohttp.ClientSession,
        *,
        connect_timeout_s: float,
        read_timeout_s: float,
        upstream_model: str = "",
    ) -> None:
        self.pool = pool
        self.upstream_model = upstream_model
        self._base = base_url.rstrip("/")
        if self._base.endswith("/v1"):
            self._base = self._base[:-3]
        self._key_env = api_key_env
        self._session = session
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout_s, sock_read=read_timeout_s
        )

    async def send(self, path: str, body: bytes, headers: Mapping[str, str]) -> UpstreamResponse:
        """Send with the managed API's key; internal headers never leave the gateway."""
        out = {"content-type": "application/json"}
        key = os.environ.get(self._key_env, "") if self._key_env else ""
        if key:
            out["authorization"] = f"Bearer {key}"
        try:
            resp = await self._session.post(
                self._base + path, data=body, headers=out, timeout=self._timeout
            )
        except CONNECT_ERRORS as exc:
            raise UpstreamConnectError(f"managed API {self._base} unreachable: {exc}") from exc
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise UpstreamError(f"managed API {self._base} failed: {exc}") from exc
        kept = {k: v for k, v in resp.headers.items() if k.lower() in RESPONSE_HEADERS_KEPT}
        return UpstreamResponse(resp.status, kept, "managed", resp)
