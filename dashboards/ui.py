"""What every page shares: settings and clients, the sidebar (time range, auto-refresh), and
the helpers that show a table with its CSV download or a clear message instead of an error.

Pages call :func:`context` once, then wrap their body in :func:`live` so it re-runs on the
auto-refresh interval with a time range recomputed from the current time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import TypeVar

import pandas as pd
import streamlit as st

from infermeter.dashboards.client import MeteringClient, ThrottleClient, TimeRange
from infermeter.dashboards.errors import DashboardError, ServiceUnavailable
from infermeter.dashboards.settings import DashboardSettings, load_settings
from infermeter.kernel.errors import InfermeterError
from infermeter.kernel.settings import load_config

T = TypeVar("T")
log = logging.getLogger(__name__)

RANGES = {
    "Last 1 hour": timedelta(hours=1),
    "Last 6 hours": timedelta(hours=6),
    "Last 24 hours": timedelta(hours=24),
    "Last 7 days": timedelta(days=7),
}
CUSTOM = "Custom"
REFRESH = {"Off": 0, "10 s": 10, "30 s": 30, "1 min": 60, "5 min": 300}
START_HINT = {
    "metering": "start it with `infermeter metering serve` (or `./dev.sh up`)",
    "throttle": "start it with `infermeter throttle serve` (or `./dev.sh up`)",
}


@dataclass(frozen=True)
class Context:
    """The sidebar's choices and the clients, for one script run."""

    settings: DashboardSettings
    metering: MeteringClient
    throttle: ThrottleClient
    range_name: str
    custom: tuple[date, date] | None
    refresh_s: int
    now: Callable[[], float] = time.time

    def window(self) -> TimeRange:
        """The chosen range, relative ranges ending now."""
        if self.custom is not None:
            start, end = self.custom
            since = datetime(start.year, start.month, start.day, tzinfo=UTC)
            until = datetime(end.year, end.month, end.day, tzinfo=UTC) + timedelta(days=1)
            return TimeRange(since, until)
        until = datetime.fromtimestamp(self.now(), tz=UTC)
        return TimeRange(until - RANGES[self.range_name], until)

    def series_granularity(self) -> str:
        """Bucket of the latency and GPU series: minutes up to 6 h, hours up to 7 d."""
        seconds = self.window().seconds
        return "minute" if seconds <= 6 * 3600 else "hour" if seconds <= 8 * 86400 else "day"

    def cost_granularity(self) -> str:
        """Bucket of cost series (hour at the finest)."""
        return "hour" if self.window().seconds <= 2 * 86400 else "day"


@st.cache_resource
def _clients(settings_json: str) -> tuple[MeteringClient, ThrottleClient]:
    s = DashboardSettings.model_validate_json(settings_json)
    return (
        MeteringClient(s.metering_url, s.read_token, s.timeout_s),
        ThrottleClient(s.throttle_url, s.throttle_token, s.timeout_s),
    )


def context() -> Context | None:
    """Draw the shared sidebar and return the run's context (None, with the reason shown,
    when the configuration is invalid)."""
    try:
        settings = load_settings(load_config())
    except InfermeterError as exc:
        st.error(f"Invalid configuration: {exc}")
        return None
    metering, throttle = _clients(settings.model_dump_json())
    side = st.sidebar
    side.caption(f"metering: {settings.metering_url}  \nthrottle: {settings.throttle_url}")
    names = [*RANGES, CUSTOM]
    range_name = side.selectbox("Time range", names, index=2, key="range")
    custom = None
    if range_name == CUSTOM:
        today = datetime.now(UTC).date()
        picked = side.date_input("From / to (UTC)", (today - timedelta(days=7), today), key="dates")
        if isinstance(picked, tuple) and len(picked) == 2:
            custom = (picked[0], picked[1])
        else:
            side.info("Pick a start and an end date.")
            custom = (today, today)
    default = next((k for k, v in REFRESH.items() if v == settings.refresh_s), "30 s")
    if default not in REFRESH:
        default = "Off"
    refresh = side.selectbox("Auto-refresh", list(REFRESH), index=list(REFRESH).index(default),
                             key="refresh")  # fmt: skip
    return Context(settings, metering, throttle, range_name, custom, REFRESH[refresh])


def guarded(ctx: Context, body: Callable[[Context], None]) -> None:
    """Run a page body; an unexpected error is logged with its traceback and shown as one
    line (Streamlit's own rerun/stop signals are BaseExceptions and pass through)."""
    try:
        body(ctx)
    except Exception as exc:
        log.exception("dashboard page %s failed", getattr(body, "__module__", "?"))
        st.error(
            f"This page could not be drawn ({type(exc).__name__}: {exc}). The dashboard's log "
            "has the details; the other pages are unaffected."
        )


def live(ctx: Context, body: Callable[[Context], None]) -> None:
    """Run ``body`` now, and again every refresh interval (as a Streamlit fragment)."""
    if ctx.refresh_s > 0:

        def refreshed() -> None:
            guarded(ctx, body)

        st.fragment(run_every=ctx.refresh_s)(refreshed)()
    else:
        guarded(ctx, body)


def fetch(call: Callable[[], T], what: str) -> T | None:
    """Call a client; on failure show why (service down, or its error) and return None."""
    try:
        return call()
    except ServiceUnavailable as exc:
        hint = START_HINT.get(exc.service, "")
        st.warning(f"Cannot show {what}: {exc}" + (f" — {hint}." if hint else "."))
    except DashboardError as exc:
        st.error(f"Cannot show {what}: {exc}")
    return None


def table(frame: pd.DataFrame, name: str, empty: str) -> None:
    """A table with a CSV download of exactly what it shows, or ``empty`` when no rows."""
    if frame.empty:
        st.info(empty)
        return
    st.dataframe(frame, hide_index=True, width="stretch")
    st.download_button(
        "Download CSV",
        frame.to_csv(index=False).encode("utf-8"),
        file_name=f"infermeter-{name}.csv",
        mime="text/csv",
        key=f"csv-{name}",
    )


def usd(value: float | None, digits: int = 2) -> str:
    """A dollar amount for a metric tile."""
    if value is None:
        return "—"
    if abs(value) < 1 and value != 0:
        return f"${value:,.4f}"
    return f"${value:,.{digits}f}"
