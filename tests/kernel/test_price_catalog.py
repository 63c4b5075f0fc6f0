"""The price catalog: shipped entries, overrides, and errors naming file, line and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from infermeter.kernel.price_catalog import load_catalog
from infermeter.metering.errors import CatalogError


def test_shipped_catalog_covers_common_gpus_mig_and_managed() -> None:
    cat = load_catalog()
    for gpu in ("h100-sxm", "h200", "a100-40gb", "a100-80gb", "l40s", "l4", "a10g"):
        entry = cat.gpus[gpu]
        assert set(entry.prices) == {"on_demand", "reserved", "spot"}
        assert entry.prices["spot"] < entry.prices["reserved"] < entry.prices["on_demand"]
        assert entry.source and entry.as_of
    assert list(cat.gpus["h100-sxm"].mig) == [
        "1g.10gb",
        "1g.20gb",
        "2g.20gb",
        "3g.40gb",
        "4g.40gb",
        "7g.80gb",
    ]
    assert cat.usd_per_hour("NVIDIA H100 80GB HBM3", "7g.80gb") == cat.usd_per_hour("h100-sxm")
    assert cat.usd_per_hour("h100-sxm", "3g.40gb", "spot") == pytest.approx(
        cat.gpus["h100-sxm"].prices["spot"] / 2
    )
    assert cat.energy_usd_per_kwh > 0 and cat.overhead_multiplier >= 1.0
    assert len(cat.managed) >= 5
    assert all(m.input_per_mtok > 0 and m.output_per_mtok > 0 for m in cat.managed.values())


def test_user_file_overrides_single_keys(tmp_path: Path) -> None:
    f = tmp_path / "mine.toml"
    f.write_text(
        "[catalog]\noverhead_multiplier = 1.2\n\n[gpus.h100-sxm]\non_demand = 2.5\n\n"
        '[gpus.my-gpu]\non_demand = 1.0\n\n[managed."acme/model"]\ninput_per_mtok = 1\n'
        "output_per_mtok = 2\n"
    )
    cat = load_catalog(f)
    assert cat.gpus["h100-sxm"].prices["on_demand"] == 2.5
    assert cat.gpus["h100-sxm"].prices["spot"] == load_catalog().gpus["h100-sxm"].prices["spot"]
    assert cat.overhead_multiplier == 1.2 and cat.usd_per_hour("my-gpu") == 1.0
    assert cat.managed["acme/model"].output_per_mtok == 2


@pytest.mark.parametrize(
    ("text", "line", "field"),
    [
        ('[gpus.h100-sxm]\nspot = "cheap"\n', 2, "gpus.h100-sxm.spot"),
        ('[gpus.l4]\n\n[gpus.l4.mig]\n"9g.99gb" = 1.5\n', 4, "gpus.l4.mig.9g.99gb"),
        ("[gpus.new]\nreserved = 1.0\n", 1, "gpus.new.on_demand"),
        (
            '[managed."x/y"]\ninput_per_mtok = 1\noutput_per_mtok = -2\n',
            3,
            "managed.x/y.output_per_mtok",
        ),
        ("[catalog]\noverhead_multiplier = 0.5\n", 2, "catalog.overhead_multiplier"),
        ("[gpus.l4]\ncolour = 1\n", 2, "gpus.l4.colour"),
        ("[gpus.l4\n", 1, ""),
    ],
)
def test_malformed_catalog_names_file_line_and_field(
    tmp_path: Path, text: str, line: int, field: str
) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(CatalogError) as info:
        load_catalog(f)
    err = info.value
    assert (err.source, err.line, err.field) == (str(f), line, field)
    assert str(f) in str(err) and f"line {line}" in str(err)


def test_unknown_gpu_and_profile() -> None:
    cat = load_catalog()
    with pytest.raises(CatalogError):
        cat.usd_per_hour("tpu-v5")
    with pytest.raises(CatalogError):
        cat.usd_per_hour("l4", "3g.40gb")
