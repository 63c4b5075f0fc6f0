"""``infermeter collector``: run the sidecar next to one engine replica."""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any

from infermeter.collector.settings import CollectorSettings
from infermeter.kernel.settings import Config, section
from infermeter.kernel.tenancy import TenantResolver, tenancy_from_config

# flag -> (settings key, help); booleans are handled separately below
_OPTIONS: tuple[tuple[str, str, type, str], ...] = (
    ("--upstream", "upstream", str, "engine base URL, e.g. "
     "http://127.0.0.1:8000"),
    ("--host", "host", str, "address to listen on (default 127.0.0.1)"),
    ("--port", "port", int, "port to listen on (default 8100)"),
    ("--pool", "pool", str, "pool name written into records and signals (default 'default')"),
    ("--replica", "replica", str, "replica name in records and signals (default <host>:<port>)"),
    ("--node", "node", str, "node name in GPU samples (default: hostname)"),
    ("--metering-url", "metering_url", str,
     "metering base URL; usage records and GPU samples are shipped to /v1/usage and "
     "/v1/gpu-samples (empty: records only feed /metrics and OTLP)"),
    ("--ingest-token", "ingest_token", str, "bearer token for metering's ingest API"),
    ("--throttle-url", "throttle_url", str, "throttle base URL; engine signals are POSTed to "
     "/v1/signals after every scrape"),
    ("--throttle-token", "throttle_token", str, "the throttle's signals token (prefer "
     "throttle_token_file or INFERMETER__COLLECTOR__THROTTLE_TOKEN: flags show in ps)"),
    ("--spool-dir", "spool_dir", str, "directory of the "
     "on-disk spool (default .data/collector-spool)"),
    ("--spool-max-bytes", "spool_max_bytes", int, "spool size limit in bytes (default 256 MiB)"),
    ("--batch-size", "batch_size", int, "records per shipped batch (default 500)"),
    ("--batch-interval", "batch_interval_s", float, "longest wait "
     "before shipping a partial batch, s"),
    ("--scrape-interval", "scrape_interval_s", float, "engine /metrics "
     "scrape interval, s (default 5)"),
    ("--gpu-interval", "gpu_interval_s", float, "NVML sampling interval, s (default 10)"),
    ("--engine-pid", "engine_pid", int, "engine process id, to tell which GPUs it uses"),
    ("--read-timeout", "read_timeout_s", float, "longest engine "
     "silence before a 504, s (default 300)"),
    ("--connect-timeout", "connect_timeout_s", float, "engine connect timeout before a 502, s"),
    ("--tenant-label-limit", "tenant_label_limit", int, "distinct tenant "
     "label values before 'other'"),
    ("--model-label-limit", "model_label_limit", int, "distinct model "
     "label values before 'other' (the model name is client-chosen)"),
)  # fmt: skip
_BOOLS = (
    ("force_usage", "ask vLLM for usage on streams whose client did not, and strip that extra "
     "chunk from the client's copy (default on)"),
    ("durable_ack", "end a response only once its usage record is fsync'd to the spool "
     "(default on when shipping)"),
    ("overhead_header", "add x-infermeter-overhead-ms to proxied responses (default on)"),
    ("nvml", "sample GPUs through NVML (default on; off or absent: nvml_up 0)"),
)  # fmt: skip


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add ``collector`` to the ``infermeter`` command line."""
    parser = subparsers.add_parser(
        "collector",
        parents=[common],
        help="proxy + telemetry sidecar in front of one engine replica",
        description="Run the collector next to one vLLM replica: a streaming-transparent proxy "
        "that meters every inference, scrapes engine and GPU telemetry, exports Prometheus "
        "(/metrics) and OpenTelemetry (OTEL_EXPORTER_OTLP_* variables) and ships usage "
        "records to metering through an on-disk spool. Every option is also a key of the "
        "[collector] table; see docs/collector.md.",
    )
    for flag, key, typ, help_text in _OPTIONS:
        parser.add_argument(flag, dest=key, type=typ, default=None, help=help_text)
    for key, help_text in _BOOLS:
        flag = key.replace("_", "-")
        parser.add_argument(f"--{flag}", dest=key, action=argparse.BooleanOptionalAction,
                            default=None, help=help_text)  # fmt: skip
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"],
        help="log level (default info)",
    )  # fmt: skip
    parser.set_defaults(func=run)
    sub = parser.add_subparsers(
        dest="collector_command", metavar="SUBCOMMAND", help="openapi: print the OpenAPI document"
    )
    spec = sub.add_parser(
        "openapi",
        parents=[common],
        help="print the OpenAPI document served at /openapi.json (JSON)",
        description="Print the collector's OpenAPI 3.1 document, without a server.",
    )
    spec.set_defaults(func=run_openapi)


def settings_from(args: argparse.Namespace, config: Config) -> CollectorSettings:
    """The [collector] table with command-line flags applied on top."""
    base = section(config, "collector", CollectorSettings)
    updates: dict[str, Any] = {}
    for _flag, key, _typ, _help in _OPTIONS:
        if getattr(args, key, None) is not None:
            updates[key] = getattr(args, key)
    for key, _help in _BOOLS:
        if getattr(args, key, None) is not None:
            updates[key] = getattr(args, key)
    return CollectorSettings.model_validate({**base.model_dump(), **updates})


def resolver_from(config: Config) -> TenantResolver:
    """Tenant attribution from the shared [tenancy] table."""
    return tenancy_from_config(config)[0]


def run_openapi(args: argparse.Namespace, config: Config) -> int:
    """Print the document ``GET /openapi.json`` serves."""
    from infermeter.collector.openapi import collector_openapi

    settings = settings_from(args, config)
    doc = collector_openapi(settings.metered_paths, settings.max_tags_bytes)
    print(json.dumps(doc, indent=2, sort_keys=True))
    return 0


def run(args: argparse.Namespace, config: Config) -> int:
    """Serve until interrupted."""
    import uvicorn

    from infermeter.collector.app import CollectorApp

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = settings_from(args, config)
    app = CollectorApp(settings, resolver_from(config))
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        proxy_headers=False,  # the gateway is the edge; forwarded-for is passed on as is
        server_header=False,  # the engine's own date/server headers pass through
        date_header=False,
        log_level=args.log_level,
        timeout_graceful_shutdown=5,
    )
    return 0
