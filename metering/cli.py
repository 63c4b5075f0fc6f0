"""``infermeter metering serve|report|export-focus|allocate``.

``serve`` runs the service (the only writer of its DuckDB file). ``report`` and
``export-focus`` ask a running service over HTTP (``--url``, read token from ``--token`` or
``[metering] read_token``), or, with ``--storage URI``, open a store directly (when no service
holds it) and run the same queries in process.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import Any

import httpx

from infermeter.kernel.settings import Config, section
from infermeter.metering.errors import MeteringError
from infermeter.metering.settings import MeteringSettings

DIMENSIONS = ("tenant", "model", "feature", "api_key", "replica", "pool")


def _settings(args: argparse.Namespace, config: Config) -> MeteringSettings:
    settings = section(config, "metering", MeteringSettings)
    updates = {
        key: getattr(args, key)
        for key in ("host", "port", "storage", "catalog", "ingest_token", "read_token")
        if getattr(args, key, None) not in (None, "")
    }
    return settings.model_copy(update=updates)


def _serve(args: argparse.Namespace, config: Config) -> int:
    import uvicorn

    from infermeter.kernel.service_auth import guard_exposure
    from infermeter.metering.api import create_app
    from infermeter.metering.service import MeteringService

    settings = _settings(args, config)
    guard_exposure(
        "metering",
        settings.host,
        {
            "ingest_token": settings.ingest_token,
            "read_token": settings.read_token or settings.ingest_token,
            "admin_token": settings.admin_token or settings.ingest_token,
        },
        insecure=settings.insecure or getattr(args, "insecure", False),
        log=logging.getLogger("infermeter.metering"),
    )
    try:
        service = MeteringService(settings)
    except MeteringError as exc:
        print(f"infermeter metering: {exc}", file=sys.stderr)
        return 2
    app = create_app(service)
    try:
        uvicorn.run(app, host=settings.host, port=settings.port, log_level=args.log_level)
    finally:
        service.stop()
    return 0


def _client(args: argparse.Namespace, settings: MeteringSettings) -> tuple[str, dict[str, str]]:
    url = args.url or f"http://{settings.host}:{settings.port}"
    token = args.token or settings.read_token or settings.ingest_token
    return url.rstrip("/"), ({"Authorization": f"Bearer {token}"} if token else {})


def _fetch(
    args: argparse.Namespace, settings: MeteringSettings, path: str, params: dict[str, str]
) -> Any:
    url, headers = _client(args, settings)
    response = httpx.get(f"{url}{path}", params=params, headers=headers, timeout=args.timeout)
    if response.status_code != 200:
        raise MeteringError(f"{path}: HTTP {response.status_code}: {response.text[:300]}")
    return response


def _report(args: argparse.Namespace, config: Config) -> int:
    from infermeter.metering.table_format import render

    settings = _settings(args, config)
    try:
        if args.storage:
            data = _local_report(args, settings)
        else:
            params = {
                "by": args.by,
                "since": args.since,
                "until": args.until,
                "granularity": args.granularity,
            }
            data = _fetch(args, settings, "/v1/reports/cost", params).json()
    except (MeteringError, httpx.HTTPError) as exc:
        print(f"infermeter metering report: {exc}", file=sys.stderr)
        return 2
    if args.json:
        import json

        print(json.dumps(data, indent=2))
        return 0
    by = data["by"]
    rows = [
        [
            r["bucket"][:16].replace("T", " "),
            r[by],
            r["requests"],
            r["prompt_tokens"],
            r["completion_tokens"],
            r["gpu_seconds"],
            r["cost_usd"],
            r["idle_share_usd"],
            r["total_usd"],
            r["usd_per_mtok"],
        ]
        for r in data["rows"]
    ]
    print(
        render(
            [
                "bucket",
                by,
                "requests",
                "prompt_tok",
                "output_tok",
                "gpu_s",
                "cost_usd",
                "idle_share",
                "total_usd",
                "usd/Mtok",
            ],
            rows,
        )
    )
    idle = [
        [
            r["bucket"][:16].replace("T", " "),
            r["replica"],
            r["utilization"],
            r["cost_usd"],
            r["idle_usd"],
        ]
        for r in data["idle"]
    ]
    if idle:
        print()
        print(render(["bucket", "replica (idle)", "utilization", "replica_usd", "idle_usd"], idle))
    t = data["totals"]
    print(
        f"\nallocated ${t['allocated_usd']:.4f}  idle ${t['idle_usd']:.4f} "
        f"(shared ${t['idle_shared_usd']:.4f})  replica cost ${t['replica_cost_usd']:.4f}"
    )
    return 0


def _local_report(args: argparse.Namespace, settings: MeteringSettings) -> dict[str, Any]:
    from infermeter.kernel.price_catalog import load_catalog
    from infermeter.metering.reports import Reports
    from infermeter.metering.store import open_store
    from infermeter.metering.timeparse import parse_time

    store = open_store(args.storage)
    try:
        reports = Reports(
            store,
            load_catalog(settings.catalog or None),
            share_idle=settings.share_idle,
            window_s=settings.window_s,
        )
        now = time.time()
        return reports.cost(
            args.by,
            parse_time(args.since, now, "since", 7 * 86400.0),
            parse_time(args.until, now, "until", 0.0),
            args.granularity,
        )
    finally:
        store.close()


def _export(args: argparse.Namespace, config: Config) -> int:
    from infermeter.metering.focus.export import export_focus, format_for
    from infermeter.metering.timeparse import parse_time

    settings = _settings(args, config)
    try:
        fmt = format_for(args.out, args.format or "")
        if args.storage:
            from infermeter.metering.store import open_store

            now = time.time()
            store = open_store(args.storage)
            try:
                n = export_focus(
                    store,
                    parse_time(args.since, now, "since", 30 * 86400.0),
                    parse_time(args.until, now, "until", 0.0),
                    args.out,
                    fmt,
                )
            finally:
                store.close()
            print(f"wrote {n} FOCUS rows to {args.out}")
            return 0
        params = {"since": args.since or "30d", "until": args.until or "now", "format": fmt}
        response = _fetch(args, settings, "/v1/export/focus", params)
        with open(args.out, "wb") as fh:
            fh.write(response.content)
        print(f"wrote {len(response.content)} bytes of FOCUS {fmt} to {args.out}")
    except (MeteringError, httpx.HTTPError, OSError) as exc:
        print(f"infermeter metering export-focus: {exc}", file=sys.stderr)
        return 2
    return 0


def _allocate(args: argparse.Namespace, config: Config) -> int:
    from infermeter.metering.service import MeteringService
    from infermeter.metering.timeparse import parse_time

    settings = _settings(args, config)
    try:
        service = MeteringService(settings)
        try:
            now = time.time()
            result = service.allocate(
                parse_time(args.since, now, "since", 86400.0),
                parse_time(args.until, now, "until", settings.allocation_lag_s),
            )
        finally:
            service.stop()
    except MeteringError as exc:
        print(f"infermeter metering allocate: {exc}", file=sys.stderr)
        return 2
    import json

    print(json.dumps(result.to_json(), indent=2))
    return 0


def _client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url", default="", help="metering service URL (default: http://[metering] host:port)"
    )
    parser.add_argument(
        "--token",
        default="",
        help="bearer token (default: [metering] read_token, else ingest_token)",
    )
    parser.add_argument(
        "--storage",
        default="",
        metavar="URI",
        help="query this store "
        "directly instead of the service, e.g. duckdb:///.data/metering.duckdb "
        "(only when no service holds the file)",
    )
    parser.add_argument(
        "--since",
        default="",
        help="start: RFC 3339 time, date, or a duration ago such as 24h or 7d",
    )
    parser.add_argument("--until", default="", help="end (exclusive); same forms; default now")
    parser.add_argument("--timeout", type=float, default=60.0, help="HTTP timeout in seconds")
    parser.add_argument("--catalog", default="", help="price catalog override file (TOML)")


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add ``metering`` and its subcommands."""
    parser = subparsers.add_parser(
        "metering",
        parents=[common],
        help="usage metering, GPU cost allocation, reports and FOCUS export",
        description="Usage metering and cost allocation ([metering] table of the config).",
    )
    sub = parser.add_subparsers(dest="metering_command", metavar="SUBCOMMAND")

    serve = sub.add_parser(
        "serve",
        parents=[common],
        help="run the metering service",
        description="Run the metering HTTP service (the only writer of its "
        "DuckDB file); allocation and budget checks run in the background.",
    )
    serve.add_argument(
        "--host", default=None, help="listen address (default [metering] host, 127.0.0.1)"
    )
    serve.add_argument("--port", type=int, default=None, help="listen port (default 8200)")
    serve.add_argument(
        "--storage",
        default=None,
        metavar="URI",
        help="duckdb:///path.duckdb or duckdb:///:memory: (default under [metering] data_dir)",
    )
    serve.add_argument("--catalog", default=None, help="price catalog override file (TOML)")
    serve.add_argument(
        "--ingest-token",
        dest="ingest_token",
        default=None,
        help="bearer token for ingest and admin endpoints",
    )
    serve.add_argument(
        "--read-token", dest="read_token", default=None, help="bearer token for queries"
    )
    serve.add_argument("--log-level", default="info", help="uvicorn log level")
    serve.set_defaults(func=_serve)

    report = sub.add_parser(
        "report",
        parents=[common],
        help="print a cost report table",
        description="Cost per tenant/model/feature/key/replica/pool, with idle cost per replica.",
    )
    report.add_argument("--by", choices=DIMENSIONS, default="tenant", help="group rows by")
    report.add_argument(
        "--granularity",
        choices=("hour", "day", "total"),
        default="day",
        help="time bucket of each row",
    )
    report.add_argument("--json", action="store_true", help="print the JSON instead of a table")
    _client_options(report)
    report.set_defaults(func=_report)

    export = sub.add_parser(
        "export-focus",
        parents=[common],
        help="write a FOCUS 1.0 export",
        description="FOCUS 1.0 cost export: one row per tenant x model x "
        "replica x hour, plus idle rows.",
    )
    export.add_argument("--out", required=True, help="output file (.csv or .parquet)")
    export.add_argument(
        "--format",
        choices=("csv", "parquet"),
        default=None,
        help="file format (default from the --out suffix)",
    )
    _client_options(export)
    export.set_defaults(func=_export)

    allocate = sub.add_parser(
        "allocate",
        parents=[common],
        help="run allocation once",
        description="Allocate a range of windows in the store directly (when no service holds it).",
    )
    allocate.add_argument("--storage", default=None, metavar="URI", help="store URI")
    allocate.add_argument("--catalog", default=None, help="price catalog override file")
    allocate.add_argument("--since", default="", help="start (default 24h ago)")
    allocate.add_argument("--until", default="", help="end (default now minus the lag)")
    allocate.set_defaults(func=_allocate)

    def _help(args: argparse.Namespace, config: Config) -> int:
        parser.print_help()
        return 2

    parser.set_defaults(func=_help)
