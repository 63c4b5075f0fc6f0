"""Collector sidecar: streaming-transparent proxy, engine and GPU telemetry, usage shipping."""
