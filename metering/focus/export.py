"""Write the FOCUS 1.0 export (CSV or Parquet) for any period.

One row per tenant x model x replica x hour with cost columns (Billed/Effective/List/
Contracted), the charge period, service and resource identifiers, consumed quantity and unit
(GPU-Hours, or Tokens for managed APIs) and tags; plus one idle row per replica-hour, so the
file sums to what the replicas cost. Timestamps are UTC ISO 8601 with ``Z`` in CSV and
``TIMESTAMP WITH TIME ZONE`` in Parquet.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from infermeter.metering.errors import QueryError
from infermeter.metering.sql_files import bind, query
from infermeter.metering.store import Store

FORMATS = ("csv", "parquet")
TIMESTAMP_COLUMNS = (
    "BillingPeriodEnd",
    "BillingPeriodStart",
    "ChargePeriodEnd",
    "ChargePeriodStart",
)


@dataclass(frozen=True, slots=True)
class FocusIdentity:
    """Who issues and provides the exported charges."""

    account_id: str = "infermeter"
    account_name: str = "infermeter self-hosted inference"
    provider: str = "infermeter"
    issuer: str = "infermeter"
    currency: str = "USD"


def format_for(path: str | Path, explicit: str = "") -> str:
    """The export format: explicit, else from the file suffix (``.parquet`` or CSV)."""
    fmt = explicit or ("parquet" if str(path).endswith(".parquet") else "csv")
    if fmt not in FORMATS:
        raise QueryError("format", f"must be one of {list(FORMATS)}")
    return fmt


def export_focus(
    store: Store,
    since: datetime,
    until: datetime,
    out: str | Path,
    fmt: str = "",
    identity: FocusIdentity | None = None,
    *,
    compat: bool = True,
) -> int:
    """Write the export to ``out``; returns the number of rows written."""
    if until <= since:
        raise QueryError("until", "must be after since")
    fmt = format_for(out, fmt)
    ident = identity or FocusIdentity()
    params = {
        "since": since,
        "until": until,
        "account_id": ident.account_id,
        "account_name": ident.account_name,
        "provider": ident.provider,
        "issuer": ident.issuer,
        "currency": ident.currency,
    }
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    cur = store.cursor()
    try:
        sql = query("focus", "focus_rows")
        cur.execute(sql, bind(sql, params))
        columns = [row[0] for row in cur.execute("DESCRIBE focus_export").fetchall()]
        if fmt == "csv":
            select = ", ".join(
                f"strftime({c}, '%Y-%m-%dT%H:%M:%SZ') AS {c}" if c in TIMESTAMP_COLUMNS else c
                for c in columns
            )
        else:
            select = ", ".join(
                f"{c}::TIMESTAMPTZ AS {c}" if c in TIMESTAMP_COLUMNS else c for c in columns
            )
        table = cur.execute(f"SELECT {select} FROM focus_export").fetch_arrow_table()
        cur.execute("DROP TABLE focus_export")
    finally:
        cur.close()
    if fmt == "parquet":
        # UTC timestamps; decimals as doubles (what pandas-based readers, focus-validator
        # included, recognise as decimal columns)
        for i, field in enumerate(table.schema):
            if field.name in TIMESTAMP_COLUMNS:
                table = table.set_column(
                    i, field.name, table.column(i).cast(pa.timestamp("us", tz="UTC"))
                )
            elif pa.types.is_decimal(field.type):
                table = table.set_column(i, field.name, table.column(i).cast(pa.float64()))
    if compat:
        table = _validator_compat(table)
    if fmt == "csv":
        pacsv.write_csv(table, target)
    else:
        pq.write_table(table, target)
    return table.num_rows


def _validator_compat(table: pa.Table) -> pa.Table:
    """Columns focus-validator 1.0.0 checks under pre-1.0 names: ``ResourceID`` (FOCUS 1.0
    spells it ``ResourceId``) and ``ChargeType`` (renamed ``ChargeCategory`` in 1.0). They
    repeat the 1.0 columns' values, so 1.0 readers can ignore them."""
    table = table.append_column("ResourceID", table.column("ResourceId"))
    return table.append_column("ChargeType", table.column("ChargeCategory"))


def _quote(path: Path) -> str:
    return str(path).replace("'", "''")
