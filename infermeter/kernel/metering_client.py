"""The asynchronous HTTP client of metering's ingest and rates endpoints (aiohttp).

One client for every service that ships usage or reads rates: the collector's shipper (usage
records and GPU samples out of its spool), the gateway (its own usage records, rates for
cache savings) and the throttle (rates for admission prices). The wire is
:mod:`infermeter.kernel.metering_wire`.

Each call carries the bearer token and a per-attempt timeout. A transient failure (connection
refused or reset, timeout, 5xx, 408, 425, 429) is tried again up to ``attempts`` times in all,
after an exponential :class:`Backoff` with jitter; the random source and the sleep are
constructor arguments, so tests decide both. Failures are raised, never swallowed:

- :class:`~infermeter.kernel.errors.MeteringUnavailable` when every attempt failed
  transiently (the caller keeps its data and tries later);
- :class:`~infermeter.kernel.errors.MeteringRefused` on any other 4xx, at once (its ``field``
  is the ``param`` metering's error body names);
- :class:`~infermeter.kernel.errors.MeteringReplyError` when a 2xx body is not the
  documented reply (for ingest, the batch *was* stored).

A caller with its own retry loop (the collector retries from its spool) passes
``attempts=1`` and uses the same :class:`Backoff` between its tries. Needs aiohttp and orjson:
only components whose extra declares them (collector, gateway, throttle) import this module.
"""

from __future__ import annotations

import asyncio
import random as _random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import aiohttp
import orjson

from infermeter.kernel.errors import MeteringRefused, MeteringReplyError, MeteringUnavailable
from infermeter.kernel.metering_wire import (
    BATCH_CONTENT_TYPE,
    INGEST_PATHS,
    RATES_PATH,
    USAGE_PATH,
    IngestReply,
    Rates,
    batch_body,
    parse_ingest_reply,
    parse_rates,
)
from infermeter.kernel.openai_errors import read_error
from infermeter.kernel.records import UsageRecord

TRANSIENT_STATUSES = frozenset({408, 425, 429})  # and every 5xx


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential delays with jitter: try ``n`` (0-based) waits
    ``min(max_s, initial_s * factor**n)`` less a random share of up to ``jitter`` of it."""

    initial_s: float = 0.2
    max_s: float = 5.0
    factor: float = 2.0
    jitter: float = 0.5

    def delay(self, retry: int, random: Callable[[], float]) -> float:
        """Seconds to wait before try ``retry + 1``; ``random()`` returns a float in [0, 1)."""
        cap = min(self.max_s, self.initial_s * self.factor ** min(retry, 64))
        return cap * (1.0 - self.jitter * random())


def is_transient(status: int) -> bool:
    """Whether an HTTP status is worth trying again as it is."""
    return status >= 500 or status in TRANSIENT_STATUSES


def encode_records(records: Sequence[UsageRecord]) -> list[bytes]:
    """Each record as the JSON object that travels in an ingest batch."""
    return [orjson.dumps(r.to_json()) for r in records]


class MeteringClient:
    """Calls metering at ``base_url`` with a bearer ``token``.

    ``session`` is the caller's aiohttp session (left open); without one the client opens its
    own on first use and closes it in :meth:`close` (or ``async with``).
    """

    def __init__(
        self,
        base_url: str,
        token: str = "",
        *,
        session: aiohttp.ClientSession | None = None,
        timeout_s: float = 10.0,
        attempts: int = 3,
        backoff: Backoff | None = None,
        random: Callable[[], float] = _random.random,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.attempts = attempts
        self.backoff = backoff or Backoff()
        self._session = session
        self._own_session = session is None
        self._headers = {"authorization": f"Bearer {token}"} if token else {}
        self._random = random
        self._sleep = sleep

    # -- endpoints ---------------------------------------------------------------------------

    async def post_usage(
        self,
        records: Sequence[UsageRecord],
        *,
        timeout_s: float | None = None,
        attempts: int | None = None,
    ) -> IngestReply:
        """Ship usage records (``POST /v1/usage``)."""
        return await self.post_batch(
            USAGE_PATH, encode_records(records), timeout_s=timeout_s, attempts=attempts
        )

    async def post_batch(
        self,
        path: str,
        payloads: Sequence[bytes],
        *,
        timeout_s: float | None = None,
        attempts: int | None = None,
    ) -> IngestReply:
        """Ship items already encoded as JSON objects to an ingest ``path``
        (``/v1/usage`` or ``/v1/gpu-samples``)."""
        if path not in INGEST_PATHS:
            raise ValueError(f"not an ingest path: {path!r}")
        body = batch_body(payloads)
        raw = await self._call("POST", path, body, timeout_s, attempts)
        return parse_ingest_reply(_json(raw))

    async def rates(self, *, timeout_s: float | None = None, attempts: int | None = None) -> Rates:
        """Metering's current rates table (``GET /v1/rates``)."""
        raw = await self._call("GET", RATES_PATH, None, timeout_s, attempts)
        return parse_rates(_json(raw))

    # -- transport ---------------------------------------------------------------------------

    def url(self, path: str) -> str:
        """The full URL of an endpoint path."""
        return self.base_url + path

    async def _call(
        self,
        method: str,
        path: str,
        body: bytes | None,
        timeout_s: float | None,
        attempts: int | None,
    ) -> bytes:
        url = self.url(path)
        tries = attempts or self.attempts
        timeout = aiohttp.ClientTimeout(total=self.timeout_s if timeout_s is None else timeout_s)
        headers = dict(self._headers)
        if body is not None:
            headers["content-type"] = BATCH_CONTENT_TYPE
        session = self._open()
        reason = ""
        status_seen: int | None = None
        for attempt in range(tries):
            if attempt:
                await self._sleep(self.backoff.delay(attempt - 1, self._random))
            try:
                async with session.request(
                    method, url, data=body, headers=headers, timeout=timeout
                ) as resp:
                    code = resp.status
                    raw = await resp.read()
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                reason = type(exc).__name__ + (f": {exc}" if str(exc) else "")
                status_seen = None
                continue
            if 200 <= code < 300:
                return raw
            message, param = read_error(raw, fallback=f"HTTP {code}")
            if not is_transient(code):
                raise MeteringRefused(url, code, message, param)
            reason, status_seen = f"HTTP {code}: {message}", code
        raise MeteringUnavailable(url, reason, status=status_seen, attempts=tries)

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def close(self) -> None:
        """Close the session this client opened itself (never the caller's)."""
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> MeteringClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


def _json(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MeteringReplyError("body", f"not valid JSON: {exc}") from None
