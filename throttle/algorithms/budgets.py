"""Daily and monthly budgets in cost units, over UTC calendar windows.

A window is named by a key (``20261124`` for a day, ``202611`` for a month) so that counters
of a past window are simply never read again (and expire in storage after the window ends).
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta


@dataclass(frozen=True, slots=True)
class Window:
    """One budget window: its key, end (epoch seconds) and length in seconds."""

    key: str
    end: float
    length_s: float


def day_window(now: float) -> Window:
    """The UTC day containing ``now``."""
    moment = datetime.fromtimestamp(now, UTC)
    start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    end = start + timedelta(days=1)
    return Window(start.strftime("%Y%m%d"), end.timestamp(), 86400.0)


def month_window(now: float) -> Window:
    """The UTC calendar month containing ``now``."""
    moment = datetime.fromtimestamp(now, UTC)
    days = calendar.monthrange(moment.year, moment.month)[1]
    start = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = start + timedelta(days=days)
    return Window(start.strftime("%Y%m"), end.timestamp(), days * 86400.0)


class WindowCache:
    """The day and month windows of ``now``, recomputed only when a day boundary passes."""

    __slots__ = ("_day", "_month", "_start")

    def __init__(self) -> None:
        self._start = 0.0
        self._day = Window("", 0.0, 0.0)
        self._month = Window("", 0.0, 0.0)

    def get(self, now: float) -> tuple[Window, Window]:
        if not self._start <= now < self._day.end:
            self._day = day_window(now)
            self._month = month_window(now)
            self._start = self._day.end - self._day.length_s
        return self._day, self._month


def fits(spent: float, cost: float, limit: float) -> bool:
    """Whether spending ``cost`` more stays within ``limit`` (``limit <= 0`` is unlimited)."""
    return limit <= 0 or spent + cost <= limit


def remaining(spent: float, limit: float) -> float:
    """Units left in the window (infinite when unlimited)."""
    return float("inf") if limit <= 0 else max(0.0, limit - spent)
