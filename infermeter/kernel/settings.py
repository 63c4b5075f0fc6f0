"""One configuration file for every service, plus environment overrides.

The file is TOML (see ``infermeter.example.toml``); each service reads its own table
(``[simulator]``, ``[collector]``, ``[metering]``, ``[throttle]``, ``[gateway]``,
``[dashboard]``, ``[up]``) and validates it with its own pydantic model through
:func:`section`.

Where the file comes from, first match wins: an explicit ``--config`` path, the
``INFERMETER_CONFIG`` environment variable, ``./infermeter.toml`` if it exists, else no file.

Environment overrides: ``INFERMETER__<TABLE>__<KEY>[__<SUBKEY>...]=value`` sets
``[table] key = value``. The value is parsed as a TOML value when it parses (numbers, booleans,
arrays, quoted strings) and taken as a plain string otherwise.

Secrets from files: for a string field ``key`` of a table, ``key_file = "/path"`` reads the
value from that file (trailing newline stripped), so a Kubernetes Secret mounted as a file
never has to appear in the config, the environment or ``ps``. A missing or unreadable file
is a :class:`ConfigError` naming the field.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from infermeter.kernel.errors import ConfigError

ENV_PREFIX = "INFERMETER__"
CONFIG_ENV = "INFERMETER_CONFIG"
DEFAULT_FILE = "infermeter.toml"

M = TypeVar("M", bound=BaseModel)


class Config:
    """The merged configuration: file tables with environment overrides applied."""

    def __init__(self, data: dict[str, Any], source: str = "") -> None:
        self.data = data
        self.source = source

    def table(self, name: str) -> dict[str, Any]:
        """The raw table ``[name]`` (empty when absent)."""
        value = self.data.get(name, {})
        if not isinstance(value, dict):
            raise ConfigError("must be a table", source=self.source, field=name)
        return value


def _parse_env_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def apply_env_overrides(data: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """Return ``data`` with every ``INFERMETER__TABLE__KEY`` variable applied."""
    merged: dict[str, Any] = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX) :].split("__") if p]
        if len(path) < 2:
            raise ConfigError(
                "expected INFERMETER__<TABLE>__<KEY>", source="environment", field=name
            )
        node = merged
        for part in path[:-1]:
            child = node.get(part)
            child = dict(child) if isinstance(child, dict) else {}
            node[part] = child
            node = child
        node[path[-1]] = _parse_env_value(raw)
    return merged


def resolve_path(explicit: str | None, environ: Mapping[str, str]) -> Path | None:
    """Which config file to read, or None when there is none."""
    if explicit:
        return Path(explicit)
    if environ.get(CONFIG_ENV):
        return Path(environ[CONFIG_ENV])
    default = Path(DEFAULT_FILE)
    return default if default.exists() else None


def load_config(path: str | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Read the TOML file (if any) and apply the environment overrides.

    Raises :class:`ConfigError` naming the file, line and column when the TOML is malformed.
    """
    env = os.environ if environ is None else environ
    file = resolve_path(path, env)
    data: dict[str, Any] = {}
    source = "defaults"
    if file is not None:
        source = str(file)
        try:
            data = tomllib.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError("file not found", source=source) from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"invalid TOML: {exc}", source=source) from exc
    return Config(apply_env_overrides(data, env), source=source)


FILE_SUFFIX = "_file"


def read_secret_files(
    table: Mapping[str, Any], model: type[BaseModel], where: str, prefix: str = ""
) -> dict[str, Any]:
    """``table`` with each ``key_file`` of a string field ``key`` replaced by the file's text."""
    out = dict(table)
    fields = model.model_fields
    for key, value in table.items():
        stem = key[: -len(FILE_SUFFIX)]
        if not key.endswith(FILE_SUFFIX) or key in fields or fields.get(stem) is None:
            continue
        if fields[stem].annotation is not str:
            continue
        del out[key]
        if not isinstance(value, str) or not value:
            raise ConfigError("must be a file path", source=where, field=prefix + key)
        try:
            out[stem] = Path(value).read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            message = f"cannot read {value}: {exc}"
            raise ConfigError(message, source=where, field=prefix + key) from exc
    return out


def section(config: Config, name: str, model: type[M]) -> M:
    """Validate table ``[name]`` with ``model``; errors name the file and the field."""
    table = read_secret_files(config.table(name), model, config.source, f"{name}.")
    try:
        return model.model_validate(table)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in (name, *first["loc"]))
        raise ConfigError(first["msg"], source=config.source, field=field) from exc
