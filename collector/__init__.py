"""Collector sidecar: streaming-transparent proxy, engine and GPU telemetry, usage shipping."""

if (
    __name__ != "infermeter.collector"
):  # this folder is mapped into the namespace, never imported bare
    raise ImportError(f"import infermeter.collector, not {__name__}")
