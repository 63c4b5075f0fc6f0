"""What every frame module builds on: an empty-safe table constructor, UTC timestamps, the
(since, until) clip of a range and the wide pivot a line chart takes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import pandas as pd

Clip = tuple[datetime, datetime]  # (since, until) of the range a page shows


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> pd.DataFrame:
    """``rows`` as a frame with exactly ``columns`` (present, in order, even with no rows)."""
    return pd.DataFrame(list(rows), columns=list(columns))


def utc(values: pd.Series) -> pd.Series:
    """ISO 8601 strings (metering's buckets) as UTC timestamps."""
    return pd.to_datetime(values, utc=True, format="ISO8601")


def pivot(frame: pd.DataFrame, index: str, columns: str, values: str) -> pd.DataFrame:
    """A wide frame for a line chart: one column per ``columns`` value, indexed by ``index``."""
    if frame.empty:
        return pd.DataFrame()
    return frame.pivot_table(index=index, columns=columns, values=values, aggfunc="mean")
