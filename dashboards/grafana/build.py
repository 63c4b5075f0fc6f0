"""Generate ``infermeter.json``, the Grafana dashboard over the collector's series (requests,
tokens, latency histograms, engine signals), the DCGM-named GPU series and the throttle's
series (decisions, autoscale, pool pressure)::

    python -m infermeter.dashboards.grafana.build > dashboards/grafana/infermeter.json

Collector series carry no pool/replica labels: group by the scrape target's ``instance`` (or
the pod labels a ServiceMonitor adds).
"""

from __future__ import annotations

import itertools
import json
import sys
from typing import Any

DS = {"type": "prometheus", "uid": "${datasource}"}
RATE = "[$__rate_interval]"
MODEL = 'model=~"$model"'
_ids = itertools.count(1)


def _panel(
    title: str,
    targets: list[tuple[str, str]],
    unit: str,
    x: int,
    y: int,
    w: int = 8,
    h: int = 8,
    kind: str = "timeseries",
    description: str = "",
) -> dict[str, Any]:
    return {
        "id": next(_ids),
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DS,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {
            "legend": {"displayMode": "table", "placement": "bottom", "calcs": ["mean", "max"]}
        }
        if kind == "timeseries"
        else {},
        "targets": [
            {"refId": chr(65 + i), "datasource": DS, "expr": expr, "legendFormat": legend}
            for i, (expr, legend) in enumerate(targets)
        ],
    }


def _row(title: str, y: int) -> dict[str, Any]:
    return {"id": next(_ids), "type": "row", "title": title, "collapsed": False,
            "gridPos": {"x": 0, "y": y, "w": 24, "h": 1}, "panels": []}  # fmt: skip


def _quantiles(metric: str) -> list[tuple[str, str]]:
    return [
        (
            f"histogram_quantile({q}, sum by (le, model) (rate({metric}_bucket{{{MODEL}}}{RATE})))",
            f"p{int(q * 100)} {{{{model}}}}",
        )
        for q in (0.5, 0.95, 0.99)
    ]


def panels() -> list[dict[str, Any]]:
    """Every row and panel, top to bottom."""
    gpu = "gpu, GPU_I_PROFILE, Hostname"
    legend_gpu = "{{Hostname}} gpu {{gpu}} {{GPU_I_PROFILE}}"
    out = [
        _row("Traffic (collector)", 0),
        _panel("Requests/s by status", [
            (f"sum by (model, status) (rate(infermeter_requests_total{{{MODEL}}}{RATE}))",
             "{{model}} {{status}}")], "reqps", 0, 1),
        _panel("Tokens/s", [
            (f"sum by (model) (rate(infermeter_prompt_tokens_total{{{MODEL}}}{RATE}))",
             "prompt {{model}}"),
            (f"sum by (model) (rate(infermeter_completion_tokens_total{{{MODEL}}}{RATE}))",
             "completion {{model}}"),
            (f"sum by (model) (rate(infermeter_cached_prompt_tokens_total{{{MODEL}}}{RATE}))",
             "cached prompt {{model}}")], "short", 8, 1),
        _panel("Tokens/s per replica (last 60 s)", [
            (f"sum by (instance) (infermeter_generation_tokens_per_second{{{MODEL}}})",
             "{{instance}}")], "short", 16, 1),
        _row("Latency (collector, per request)", 9),
        _panel("Time to first token", _quantiles("infermeter_time_to_first_token_seconds"),
               "s", 0, 10),
        _panel("Inter-token latency", _quantiles("infermeter_inter_token_latency_seconds"),
               "s", 8, 10),
        _panel("End-to-end latency", _quantiles("infermeter_e2e_request_latency_seconds"),
               "s", 16, 10),
        _row("Engine (vLLM signals via the collector)", 18),
        _panel("Queue: waiting and running", [
            (f"sum by (instance) (infermeter_engine_num_requests_waiting{{{MODEL}}})",
             "waiting {{instance}}"),
            (f"sum by (instance) (infermeter_engine_num_requests_running{{{MODEL}}})",
             "running {{instance}}")], "short", 0, 19),
        _panel("KV-cache usage", [
            (f"max by (instance) (infermeter_engine_kv_cache_usage_perc{{{MODEL}}})",
             "{{instance}}")], "percentunit", 8, 19),
        _panel("Engine TTFT p95 and preemptions", [
            (f"max by (instance) (infermeter_engine_ttft_p95_seconds{{{MODEL}}})",
             "ttft p95 {{instance}}"),
            (f"sum by (instance) (infermeter_engine_preemptions_per_second{{{MODEL}}})",
             "preemptions/s {{instance}}")], "short", 16, 19),
        _row("GPUs and MIG slices (DCGM names)", 27),
        _panel("GPU utilisation", [(f"avg by ({gpu}) (DCGM_FI_DEV_GPU_UTIL)", legend_gpu)],
               "percent", 0, 28, w=6),
        _panel("Framebuffer used", [(f"sum by ({gpu}) (DCGM_FI_DEV_FB_USED) * 1048576",
                                     legend_gpu)], "bytes", 6, 28, w=6),
        _panel("Power", [(f"sum by ({gpu}) (DCGM_FI_DEV_POWER_USAGE)", legend_gpu)],
               "watt", 12, 28, w=6),
        _panel("Energy in range (kWh)", [
            (f"sum by ({gpu}) (increase(DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION[$__range])) / 3.6e9",
             legend_gpu)], "short", 18, 28, w=6, kind="stat",
            description="DCGM reports energy in mJ."),
        _row("Throttle: admission and fair share", 36),
        _panel("Decisions/s by reason", [
            (f"sum by (decision, reason) (rate(infermeter_throttle_decisions_total{RATE}))",
             "{{decision}} {{reason}}")], "reqps", 0, 37),
        _panel("Pools under pressure (fair share)", [
            ('max by (pool) (infermeter_throttle_pool_pressure{pool=~"$pool"})', "{{pool}}")],
            "bool_on_off", 8, 37),
        _panel("Throttle state backend up", [
            ("min by (backend) (infermeter_throttle_storage_up)", "{{backend}}"),
            ("sum(rate(infermeter_throttle_local_decisions_total[$__rate_interval]))",
             "local decisions/s")], "short", 16, 37),
        _row("Autoscale (throttle)", 45),
        _panel("Desired vs current replicas", [
            ('max by (pool, driver) (infermeter_throttle_desired_replicas{pool=~"$pool"})',
             "desired {{pool}} (driver {{driver}})"),
            ('max by (pool) (infermeter_throttle_current_replicas{pool=~"$pool"})',
             "current {{pool}}")], "short", 0, 46, w=12),
        _panel("Pool signals (per-replica mean)", [
            ('max by (pool, signal) (infermeter_throttle_pool_signal{pool=~"$pool"})',
             "{{pool}} {{signal}}")], "short", 12, 46, w=12),
        _row("infermeter health", 54),
        _panel("Collector overhead p99", [
            ("histogram_quantile(0.99, sum by (le, instance) "
             "(rate(infermeter_collector_overhead_seconds_bucket[$__rate_interval])))",
             "{{instance}}")], "s", 0, 55),
        _panel("Records dropped/s", [
            ("sum by (reason) (rate(infermeter_collector_records_dropped_total[$__rate_interval]))",
             "{{reason}}")], "short", 8, 55),
        _panel("Scrapes up", [
            ("min by (instance) (infermeter_engine_up)", "engine {{instance}}"),
            ("min by (instance) (infermeter_nvml_up)", "nvml {{instance}}")], "short", 16, 55),
    ]  # fmt: skip
    return out


def dashboard() -> dict[str, Any]:
    """The whole dashboard document (Grafana schema 39)."""
    return {
        "uid": "infermeter-overview",
        "title": "infermeter: LLM inference fleet",
        "description": "Traffic, latency, engine signals, GPUs (DCGM), throttle and autoscale.",
        "tags": ["infermeter", "llm", "vllm", "dcgm"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "type": "datasource",
                    "query": "prometheus",
                    "label": "Prometheus",
                },
                {
                    "name": "model",
                    "type": "query",
                    "datasource": DS,
                    "includeAll": True,
                    "multi": True,
                    "allValue": ".*",
                    "current": {"text": "All", "value": "$__all"},
                    "definition": "label_values(infermeter_requests_total, model)",
                    "query": {
                        "query": "label_values(infermeter_requests_total, model)",
                        "refId": "model",
                    },
                    "refresh": 2,
                },
                {
                    "name": "pool",
                    "type": "query",
                    "datasource": DS,
                    "includeAll": True,
                    "multi": True,
                    "allValue": ".*",
                    "current": {"text": "All", "value": "$__all"},
                    "definition": "label_values(infermeter_throttle_current_replicas, pool)",
                    "query": {
                        "query": "label_values(infermeter_throttle_current_replicas, pool)",
                        "refId": "pool",
                    },
                    "refresh": 2,
                },
            ]
        },
        "annotations": {"list": []},
        "panels": panels(),
    }


def main() -> None:
    json.dump(dashboard(), sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
