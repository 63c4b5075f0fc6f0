"""The layers of docs/architecture.md hold, and the namespace is the only way in."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

COMPONENT_FOLDERS = ("collector", "metering", "throttle", "serving", "dashboards")


def test_import_linter_contracts_hold() -> None:
    lint_imports = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert lint_imports, "import-linter is a dev dependency (pip install -e '.[all,dev]')"
    run = subprocess.run(
        [lint_imports, "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "0 broken" in run.stdout


@pytest.mark.parametrize("name", COMPONENT_FOLDERS)
def test_component_folders_import_only_under_the_namespace(name: str) -> None:
    # From the repository root the bare folder is on sys.path, and still it must refuse.
    bare = subprocess.run(
        [sys.executable, "-c", f"import {name}"], cwd=REPO, capture_output=True, text=True
    )
    assert bare.returncode != 0 and f"import infermeter.{name}" in bare.stderr
    spaced = subprocess.run(
        [sys.executable, "-c", f"import infermeter.{name} as m; print(m.__name__)"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert spaced.returncode == 0, spaced.stderr
    assert spaced.stdout.strip() == f"infermeter.{name}"


def test_namespace_links_point_at_the_design_card_folders() -> None:
    for name in COMPONENT_FOLDERS:
        link = REPO / "infermeter" / name
        assert link.is_symlink(), f"{link} must map the top-level folder {name}/"
        assert link.resolve() == (REPO / name).resolve()
