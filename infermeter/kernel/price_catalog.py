"""The price catalog: GPU $/hour (on-demand, reserved, spot), MIG fractions, energy, overhead
and managed-API token prices.

The shipped catalog (``metering/prices.toml``) holds public list prices with their source and
date; a user file overrides any entry key by key (deep merge). Every value is validated at
start: a malformed catalog raises :class:`CatalogError` naming the file, the line and the
field (``gpus.h100-sxm.on_demand``).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infermeter.kernel.errors import CatalogError

SHIPPED = Path(__file__).with_name("prices.toml")
PRICING_TIERS = ("on_demand", "reserved", "spot")


@dataclass(frozen=True, slots=True)
class GpuPrice:
    """One GPU type: USD per GPU-hour by pricing tier and its MIG profiles' fractions."""

    name: str
    prices: dict[str, float]
    mig: dict[str, float] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    memory_gb: float = 0.0
    source: str = ""
    as_of: str = ""


@dataclass(frozen=True, slots=True)
class ManagedPrice:
    """A managed API's list price in USD per million input / output tokens."""

    name: str
    input_per_mtok: float
    output_per_mtok: float
    source: str = ""
    as_of: str = ""


@dataclass(frozen=True, slots=True)
class Catalog:
    """The validated, merged catalog."""

    gpus: dict[str, GpuPrice]
    managed: dict[str, ManagedPrice]
    currency: str = "USD"
    as_of: str = ""
    overhead_multiplier: float = 1.0
    energy_usd_per_kwh: float = 0.0
    energy_source: str = ""
    sources: tuple[str, ...] = ()

    def gpu(self, name: str) -> GpuPrice:
        """The GPU entry for a catalog key, an alias or an NVML name (case-insensitive)."""
        wanted = name.strip().lower()
        for gpu in self.gpus.values():
            if wanted == gpu.name.lower() or wanted in (a.lower() for a in gpu.aliases):
                return gpu
        raise CatalogError(f"unknown GPU type {name!r}", field="gpus")

    def fraction(self, gpu: str, mig_profile: str) -> float:
        """The fraction of a whole GPU a MIG profile holds (1.0 for no profile)."""
        if not mig_profile:
            return 1.0
        entry = self.gpu(gpu)
        if mig_profile not in entry.mig:
            raise CatalogError(
                f"unknown MIG profile {mig_profile!r} for {entry.name}", field=f"gpus.{entry.name}"
            )
        return entry.mig[mig_profile]

    def usd_per_hour(self, gpu: str, mig_profile: str = "", pricing: str = "on_demand") -> float:
        """Price of one GPU (or one MIG slice) for an hour, overhead not included."""
        entry = self.gpu(gpu)
        if pricing not in entry.prices:
            raise CatalogError(f"no {pricing} price", field=f"gpus.{entry.name}.{pricing}")
        return entry.prices[pricing] * self.fraction(gpu, mig_profile)

    def price_rows(self) -> list[tuple[str, str, str, str, float, float]]:
        """``(gpu, lookup name, mig_profile, pricing, fraction, usd_per_hour)`` for SQL joins."""
        rows: list[tuple[str, str, str, str, float, float]] = []
        for gpu in self.gpus.values():
            names = {gpu.name.lower(), *(a.lower() for a in gpu.aliases)}
            profiles = {"": 1.0, **gpu.mig}
            for tier, price in gpu.prices.items():
                for lookup in sorted(names):
                    for profile, frac in profiles.items():
                        rows.append((gpu.name, lookup, profile, tier, frac, price * frac))
        return rows


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``override`` applied key by key (tables merge, values replace)."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


_HEADER = re.compile(r"^\s*\[\s*([^\]]+?)\s*\]\s*(#.*)?$")
_KEY = re.compile(r"""^\s*("[^"]+"|'[^']+'|[A-Za-z0-9_.\-]+)\s*=""")


def _split_dotted(text: str) -> list[str]:
    return [p.strip().strip("\"'") for p in re.findall(r'"[^"]*"|\'[^\']*\'|[^.]+', text)]


def locate(text: str, path: list[str]) -> int:
    """The 1-based line where ``path`` (table parts + key) is defined in TOML ``text``; 0 if
    not found (the nearest enclosing table's header line is returned when the key is absent)."""
    table: list[str] = []
    best = 0
    for number, line in enumerate(text.splitlines(), start=1):
        header = _HEADER.match(line)
        if header:
            table = _split_dotted(header.group(1))
            if table == path[: len(table)] and len(table) <= len(path):
                best = number
            continue
        key = _KEY.match(line)
        if key and [*table, *_split_dotted(key.group(1))] == path:
            return number
    return best


class _Reader:
    """Validates one merged catalog document, remembering which file set which key."""

    def __init__(self, texts: list[tuple[str, str, dict[str, Any]]]) -> None:
        self.texts = texts

    def fail(self, path: list[str], message: str) -> CatalogError:
        best: tuple[int, str, str] | None = None
        for source, text, doc in self.texts:
            node: Any = doc
            depth = 0
            for part in path:
                if not isinstance(node, dict) or part not in node:
                    break
                node = node[part]
                depth += 1
            if depth and (best is None or depth >= best[0]):
                best = (depth, source, text)
        if best is None:
            source, text, _ = self.texts[-1]
        else:
            _, source, text = best
        return CatalogError(message, source=source, field=".".join(path), line=locate(text, path))

    def number(self, table: dict[str, Any], path: list[str], *, required: bool = True) -> float:
        value = table.get(path[-1])
        if value is None:
            if required:
                raise self.fail(path, "is required")
            return 0.0
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(path, f"must be a number, got {type(value).__name__}")
        if value < 0 or value != value:
            raise self.fail(path, "must be a non-negative number")
        return float(value)

    def text(self, table: dict[str, Any], path: list[str]) -> str:
        value = table.get(path[-1], "")
        if not isinstance(value, str):
            raise self.fail(path, "must be a string")
        return value

    def table(self, doc: dict[str, Any], path: list[str]) -> dict[str, Any]:
        value = doc.get(path[-1], {})
        if not isinstance(value, dict):
            raise self.fail(path, "must be a table")
        return value


def _gpu(reader: _Reader, name: str, entry: Any) -> GpuPrice:
    base = ["gpus", name]
    if not isinstance(entry, dict):
        raise reader.fail(base, "must be a table")
    prices = {}
    for tier in PRICING_TIERS:
        if tier in entry or tier == "on_demand":
            prices[tier] = reader.number(entry, [*base, tier])
    mig: dict[str, float] = {}
    for profile, frac in reader.table(entry, [*base, "mig"]).items():
        value = reader.number({profile: frac}, [*base, "mig", profile])
        if not 0 < value <= 1:
            raise reader.fail([*base, "mig", profile], "MIG fraction must be in (0, 1]")
        if not re.fullmatch(r"\d+g\.\d+gb", profile):
            raise reader.fail([*base, "mig", profile], "MIG profile must look like 3g.40gb")
        mig[profile] = value
    aliases = entry.get("aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
        raise reader.fail([*base, "aliases"], "must be a list of strings")
    unknown = set(entry) - {*PRICING_TIERS, "mig", "aliases", "memory_gb", "source", "as_of"}
    if unknown:
        raise reader.fail([*base, sorted(unknown)[0]], "unknown key")
    return GpuPrice(
        name=name,
        prices=prices,
        mig=mig,
        aliases=tuple(aliases),
        memory_gb=reader.number(entry, [*base, "memory_gb"], required=False),
        source=reader.text(entry, [*base, "source"]),
        as_of=reader.text(entry, [*base, "as_of"]),
    )


def _managed(reader: _Reader, name: str, entry: Any) -> ManagedPrice:
    base = ["managed", name]
    if not isinstance(entry, dict):
        raise reader.fail(base, "must be a table")
    unknown = set(entry) - {"input_per_mtok", "output_per_mtok", "source", "as_of"}
    if unknown:
        raise reader.fail([*base, sorted(unknown)[0]], "unknown key")
    return ManagedPrice(
        name=name,
        input_per_mtok=reader.number(entry, [*base, "input_per_mtok"]),
        output_per_mtok=reader.number(entry, [*base, "output_per_mtok"]),
        source=reader.text(entry, [*base, "source"]),
        as_of=reader.text(entry, [*base, "as_of"]),
    )


def _read(path: Path) -> tuple[str, str, dict[str, Any]]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CatalogError(f"cannot read: {exc.strerror}", source=str(path)) from exc
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"line (\d+)", str(exc))
        raise CatalogError(
            f"invalid TOML: {exc}", source=str(path), line=int(match.group(1)) if match else 0
        ) from exc
    return str(path), text, doc


def load_catalog(override: str | Path | None = None) -> Catalog:
    """The shipped catalog with ``override`` (a TOML file path) merged on top."""
    texts = [_read(SHIPPED)]
    if override:
        texts.append(_read(Path(override)))
    merged: dict[str, Any] = {}
    for _, _, doc in texts:
        merged = deep_merge(merged, doc)
    reader = _Reader(texts)
    unknown = set(merged) - {"catalog", "energy", "gpus", "managed"}
    if unknown:
        raise reader.fail([sorted(unknown)[0]], "unknown table")
    head = reader.table(merged, ["catalog"])
    energy = reader.table(merged, ["energy"])
    gpus = {n: _gpu(reader, n, e) for n, e in reader.table(merged, ["gpus"]).items()}
    managed = {n: _managed(reader, n, e) for n, e in reader.table(merged, ["managed"]).items()}
    overhead = reader.number(head, ["catalog", "overhead_multiplier"], required=False) or 1.0
    if overhead < 1.0:
        raise reader.fail(["catalog", "overhead_multiplier"], "must be at least 1.0")
    return Catalog(
        gpus=gpus,
        managed=managed,
        currency=reader.text(head, ["catalog", "currency"]) or "USD",
        as_of=reader.text(head, ["catalog", "as_of"]),
        overhead_multiplier=overhead,
        energy_usd_per_kwh=reader.number(energy, ["energy", "usd_per_kwh"], required=False),
        energy_source=reader.text(energy, ["energy", "source"]),
        sources=tuple(s for s, _, _ in texts),
    )
