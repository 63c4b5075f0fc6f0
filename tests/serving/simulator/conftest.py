"""Fixtures of the simulator tests: the root conftest helpers."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest

ROOT_CONFTEST = Path(__file__).resolve().parents[2] / "conftest.py"


@pytest.fixture(scope="session")
def helpers(pytestconfig: pytest.Config) -> ModuleType:
    """tests/conftest.py as pytest loaded it (free_port, wait_http, promtool_check, ...)."""
    module = pytestconfig.pluginmanager.get_plugin(str(ROOT_CONFTEST))
    assert isinstance(module, ModuleType)
    return module
