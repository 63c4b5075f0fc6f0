"""Shared helpers of the throttle tests (the repo-wide ones re-exported from tests/conftest.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def _root_conftest() -> ModuleType:
    name = "infermeter_tests_root_conftest"
    if name in sys.modules:
        return sys.modules[name]
    path = Path(__file__).resolve().parents[1] / "conftest.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


_root = _root_conftest()
free_port = _root.free_port
wait_http = _root.wait_http
ServerThread = _root.ServerThread
ManualClock = _root.ManualClock
promtool_check = _root.promtool_check

MACHINE_REDIS = "redis://127.0.0.1:6379/0"

POLICY = """
unit = "usd"
default_tier = "free"
lease_s = 60
settle_grace_s = 600

[tiers.free]
rate = 0.6          # 0.01 usd/s
per_s = 60
burst = 0.05
concurrency = 3
daily_budget = 1.0
monthly_budget = 5.0
weight = 1.0

[tiers.pro]
rate = 60.0
per_s = 60
burst = 10.0
concurrency = 100
weight = 2.0

[tenants.acme]
tier = "pro"

[tenants.tiny]
tier = "free"
concurrency = 1

[models."m"]
prompt = 1.0e-5
completion = 2.0e-5
pool = "p1"

[models."*"]
prompt = 1.0e-6
completion = 1.0e-6

[pools.p1]
queue_per_replica = 5
kv_cache_usage = 0.8
ttft_p95_slo_s = 2.0
pressure_hold_s = 10
active_window_s = 30
fair_retry_s = 2

[pools.p1.autoscale]
min_replicas = 1
max_replicas = 8
tolerance = 0.1
scale_up_window_s = 0
scale_down_window_s = 300
targets = { num_requests_waiting = 5, kv_cache_usage_perc = 0.8 }
"""
