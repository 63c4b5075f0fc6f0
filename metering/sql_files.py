"""SQL lives in ``metering/sql/*.sql`` and ``metering/migrations/*.sql``; this loads it.

A file holds one or more statements, each introduced by a ``-- name: <name>`` line. A
statement's bound parameters are DuckDB named parameters (``$since``); :func:`bind` keeps only
those a statement uses, so callers can pass one dict to every statement of a step.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any

SQL_DIR = Path(__file__).with_name("sql")
_NAME = re.compile(r"^--\s*name:\s*([A-Za-z0-9_]+)\s*$", re.MULTILINE)
_PARAM = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")


@cache
def statements(file: str) -> dict[str, str]:
    """The named statements of ``sql/<file>.sql``, in file order."""
    text = (SQL_DIR / f"{file}.sql").read_text(encoding="utf-8")
    parts = _NAME.split(text)
    out: dict[str, str] = {}
    for i in range(1, len(parts), 2):
        out[parts[i]] = parts[i + 1].strip().rstrip(";")
    if not out:
        raise KeyError(f"{file}.sql has no '-- name:' statements")
    return out


def query(file: str, name: str) -> str:
    """One named statement of ``sql/<file>.sql``."""
    return statements(file)[name]


def bind(sql: str, params: dict[str, Any]) -> dict[str, Any]:
    """The subset of ``params`` that ``sql`` references as ``$name``."""
    used = set(_PARAM.findall(_strip_strings(sql)))
    missing = used - params.keys()
    if missing:
        raise KeyError(f"SQL parameters not provided: {sorted(missing)}")
    return {k: v for k, v in params.items() if k in used}


def _strip_strings(sql: str) -> str:
    return re.sub(r"'(?:[^']|'')*'|--[^\n]*", "''", sql)
