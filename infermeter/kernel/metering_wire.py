"""The wire of metering's ingest and rates endpoints, defined once for every caller.

Ingest (``POST /v1/usage`` for usage records, ``POST /v1/gpu-samples`` for GPU samples,
``content-type: application/json``): the body is a JSON array whose items are the record
objects of :mod:`infermeter.kernel.records` (``to_json()``), or CloudEvents carrying them.
Metering answers 200 once the batch is durably stored::

    {"accepted": 3, "duplicates": 1, "rejected": [{"index": 4, "field": "tenant",
                                                   "error": "is required"}]}

``accepted`` records were stored, ``duplicates`` were already known (the key is the record's
idempotency key), and each ``rejected`` item names a record's index in the batch and its bad
field (metering keeps it in its dead-letter table). A batch refused as a whole is a 4xx with
the OpenAI error body (:mod:`infermeter.kernel.openai_errors`) whose ``param`` names the
field (``body`` for an unreadable or oversized body).

Rates (``GET /v1/rates``, read token): the current price of a token of each model::

    {"models": {"llama": {"usd_per_prompt_token": 1e-7, "usd_per_completion_token": 4e-6,
                          "usd_per_gpu_second": 0.0019, "calibration": "fit"}},
     "default": {...same fields...}, "as_of": "2026-11-24T13:45:00.000000Z"}

``default`` prices a model metering has no figures for yet. This module needs nothing but the
standard library, so the synchronous dashboards parse with it too; the asynchronous client is
:mod:`infermeter.kernel.metering_client`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from infermeter.kernel.errors import MeteringReplyError, RecordError
from infermeter.kernel.records import parse_ts

USAGE_PATH = "/v1/usage"
GPU_SAMPLES_PATH = "/v1/gpu-samples"
RATES_PATH = "/v1/rates"
INGEST_PATHS = frozenset({USAGE_PATH, GPU_SAMPLES_PATH})
BATCH_CONTENT_TYPE = "application/json"
RATE_FIELDS = ("usd_per_prompt_token", "usd_per_completion_token", "usd_per_gpu_second")


def batch_body(payloads: Iterable[bytes]) -> bytes:
    """An ingest body from items already encoded as JSON objects (one record each)."""
    return b"[" + b",".join(payloads) + b"]"


# -- ingest reply ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rejection:
    """One record metering refused: its index in the batch, the field and why."""

    index: int
    field: str
    error: str

    def __str__(self) -> str:
        return f"record {self.index}: {self.field}: {self.error}"


@dataclass(frozen=True, slots=True)
class IngestReply:
    """Metering's answer to one stored batch."""

    accepted: int = 0
    duplicates: int = 0
    rejected: tuple[Rejection, ...] = ()
    conflicts: int = 0  # duplicates whose content differed from the stored record


def parse_ingest_reply(obj: Any) -> IngestReply:
    """Read the decoded JSON of an ingest reply; :class:`MeteringReplyError` names the field."""
    if not isinstance(obj, dict):
        raise MeteringReplyError("body", "must be a JSON object")
    rejected = obj.get("rejected")
    if rejected is None:
        rejected = []
    if not isinstance(rejected, list):
        raise MeteringReplyError("rejected", "must be an array")
    items: list[Rejection] = []
    for i, item in enumerate(rejected):
        name = f"rejected[{i}]"
        if not isinstance(item, dict):
            raise MeteringReplyError(name, "must be an object")
        index = item.get("index")
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise MeteringReplyError(f"{name}.index", "must be a non-negative integer")
        items.append(Rejection(index, str(item.get("field") or ""), str(item.get("error") or "")))
    return IngestReply(
        _count(obj, "accepted"), _count(obj, "duplicates"), tuple(items), _count(obj, "conflicts")
    )


def _count(obj: dict[str, Any], name: str) -> int:
    value = obj.get(name)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise MeteringReplyError(name, "must be a non-negative integer")
    return value


# -- rates -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rate:
    """What one token of a model costs now, in USD, and where the figures come from."""

    usd_per_prompt_token: float = 0.0
    usd_per_completion_token: float = 0.0
    usd_per_gpu_second: float = 0.0
    calibration: str = ""

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        """USD of ``prompt_tokens`` and ``completion_tokens`` at this rate."""
        return (
            prompt_tokens * self.usd_per_prompt_token
            + completion_tokens * self.usd_per_completion_token
        )


@dataclass(frozen=True, slots=True)
class Rates:
    """Metering's rates table.

    A model whose entry is unusable (not an object, a price that is not a finite number at
    least 0) is left out of ``models`` and listed in ``invalid`` (model -> reason naming the
    field), so one bad row never blinds a caller to the others.
    """

    models: Mapping[str, Rate] = field(default_factory=dict)
    default: Rate | None = None
    as_of: datetime | None = None
    invalid: Mapping[str, str] = field(default_factory=dict)

    def for_model(self, model: str) -> Rate | None:
        """The model's rate, else the ``default`` one (None when metering gave neither)."""
        return self.models.get(model) or self.default


def parse_rates(obj: Any) -> Rates:
    """Read the decoded JSON of a ``GET /v1/rates`` reply.

    Raises :class:`MeteringReplyError` (naming the field) when the body, ``models`` or
    ``as_of`` is not the documented shape; a bad model entry only lands in ``invalid``.
    """
    if not isinstance(obj, dict):
        raise MeteringReplyError("body", "must be a JSON object")
    models = obj.get("models")
    if not isinstance(models, dict):
        raise MeteringReplyError("models", "must be an object of model -> rate")
    rates: dict[str, Rate] = {}
    invalid: dict[str, str] = {}
    for name, entry in models.items():
        try:
            rates[str(name)] = _rate(entry, f"models.{name}")
        except MeteringReplyError as exc:
            invalid[str(name)] = str(exc)
    default: Rate | None = None
    raw_default = obj.get("default")
    if raw_default is not None:
        try:
            default = _rate(raw_default, "default")
        except MeteringReplyError as exc:
            invalid["default"] = str(exc)
    return Rates(rates, default, _as_of(obj.get("as_of")), invalid)


def _rate(entry: Any, where: str) -> Rate:
    if not isinstance(entry, dict):
        raise MeteringReplyError(where, "must be an object")
    prices: dict[str, float] = {}
    for name in RATE_FIELDS:
        value = entry.get(name)
        if value is None:
            value = 0.0
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise MeteringReplyError(f"{where}.{name}", "must be a number")
        if not math.isfinite(value) or value < 0:
            raise MeteringReplyError(f"{where}.{name}", "must be a finite number >= 0")
        prices[name] = float(value)
    calibration = entry.get("calibration")
    return Rate(
        usd_per_prompt_token=prices["usd_per_prompt_token"],
        usd_per_completion_token=prices["usd_per_completion_token"],
        usd_per_gpu_second=prices["usd_per_gpu_second"],
        calibration=calibration if isinstance(calibration, str) else "",
    )


def _as_of(value: Any) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_ts(value, "as_of")
    except (RecordError, ValueError, OverflowError, OSError) as exc:
        raise MeteringReplyError("as_of", str(exc)) from None
