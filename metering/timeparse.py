"""Time-range parameters of queries: RFC 3339 / ISO dates, or durations back from now."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from infermeter.metering.errors import RangeError

_DURATION = re.compile(r"^-?(\d+(?:\.\d+)?)\s*(s|m|h|d|w)$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_time(text: str | None, now: float, param: str, default_ago_s: float = 0.0) -> datetime:
    """``2026-11-24``, ``2026-11-24T10:00:00Z`` or a duration ago (``24h``, ``7d``, ``-30m``)
    as a naive UTC datetime; empty means ``now - default_ago_s``."""
    if not text:
        return _naive(now - default_ago_s)
    text = text.strip()
    match = _DURATION.match(text)
    if text == "now":
        return _naive(now)
    try:
        if match:
            return _naive(now - float(match.group(1)) * _UNITS[match.group(2)])
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
        if value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
    except (ValueError, OverflowError, OSError) as exc:
        raise RangeError(param, f"not a timestamp, date or duration (24h, 7d): {text!r}") from exc
    return value


def naive_utc(value: datetime) -> datetime:
    """An aware datetime as naive UTC; a naive one (already UTC) as it is."""
    return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value


def check_range(since: datetime, until: datetime) -> None:
    """Refuse an empty or inverted range (``until`` not after ``since``), naming ``until``."""
    if until <= since:
        raise RangeError("until", f"must be after since ({iso(since)} >= {iso(until)})")


def _naive(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=UTC).replace(tzinfo=None)


def iso(value: datetime | None) -> str | None:
    """A naive-UTC datetime as RFC 3339 with ``Z``."""
    if value is None:
        return None
    return value.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def start_of_day(value: datetime) -> datetime:
    return value.replace(hour=0, minute=0, second=0, microsecond=0)


def start_of_month(value: datetime) -> datetime:
    return start_of_day(value).replace(day=1)


def end_of_month(value: datetime) -> datetime:
    first = start_of_month(value)
    return (first + timedelta(days=32)).replace(day=1)
