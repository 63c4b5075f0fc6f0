"""``infermeter throttle serve|check-policy|nginx-config``."""

from __future__ import annotations

import argparse
import logging
import sys

from infermeter.kernel.settings import Config
from infermeter.throttle import settings as throttle_settings
from infermeter.throttle.errors import ThrottleError


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add the ``throttle`` command group."""
    parser = subparsers.add_parser(
        "throttle",
        help="compute-priced admission, fair share and autoscale signals (port 8300)",
        description="The throttle service: gateways ask it before sending an inference "
        "(reserve, then settle), proxies use its header-only check, KEDA reads its replica "
        "recommendations. Settings: the [throttle] table; tenants: the [tenancy] table.",
    )
    sub = parser.add_subparsers(dest="throttle_command", metavar="SUBCOMMAND")

    def usage(args: argparse.Namespace, config: Config) -> int:
        parser.print_help()
        return 2

    parser.set_defaults(func=usage)

    serve = sub.add_parser(
        "serve",
        parents=[common],
        help="run the throttle HTTP service",
        description="Run the throttle HTTP service (OpenAPI at /docs and /openapi.json).",
    )
    serve.add_argument("--host", default=None, help="bind address ([throttle] host, 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port ([throttle] port, 8300)")
    serve.add_argument(
        "--storage",
        default=None,
        metavar="URI",
        help="state backend: memory:// (default) or redis://HOST:PORT/DB?prefix=NAME "
        "([throttle] storage)",
    )
    serve.add_argument(
        "--policy",
        default=None,
        metavar="FILE",
        help="policy TOML, reloaded when it changes ([throttle] policy_file)",
    )
    serve.add_argument(
        "--admin-token",
        default=None,
        help="bearer token for GET/PUT /v1/policy ([throttle] admin_token; empty disables)",
    )
    serve.add_argument(
        "--fail-closed",
        action="store_true",
        default=None,
        help="refuse admissions while the shared storage is unreachable ([throttle] "
        "fail_closed; default: decide from local state)",
    )
    serve.add_argument(
        "--metering-url",
        default=None,
        help="metering base URL for current prices ([throttle] metering_url)",
    )
    serve.add_argument(
        "--log-level",
        default="warning",
        choices=["debug", "info", "warning", "error"],
        help="log level (default warning)",
    )
    serve.set_defaults(func=run_serve)

    check = sub.add_parser(
        "check-policy",
        parents=[common],
        help="validate a policy file and print the field at fault",
        description="Validate a policy file; exit 0 when valid, 2 naming the field otherwise.",
    )
    check.add_argument("file", help="policy TOML (or JSON) file")
    check.set_defaults(func=run_check_policy)

    nginx = sub.add_parser(
        "nginx-config",
        parents=[common],
        help="print the nginx auth_request configuration for this throttle",
        description="Print the shipped nginx config (throttle/nginx/throttle.conf) filled in.",
    )
    nginx.add_argument("--listen", default="8088", help="nginx listen address (default 8088)")
    nginx.add_argument(
        "--throttle", default="127.0.0.1:8300", help="throttle host:port (default 127.0.0.1:8300)"
    )
    nginx.add_argument(
        "--upstream", default="127.0.0.1:8080", help="upstream host:port (default 127.0.0.1:8080)"
    )
    nginx.set_defaults(func=run_nginx_config)

    spec = sub.add_parser(
        "openapi",
        parents=[common],
        help="print the OpenAPI document of the throttle API (JSON)",
        description="Print the OpenAPI 3 document served at /openapi.json, without a server.",
    )
    spec.set_defaults(func=run_openapi)


def run_serve(args: argparse.Namespace, config: Config) -> int:
    import uvicorn

    from infermeter.kernel.service_auth import guard_exposure
    from infermeter.throttle.app import Runtime, create_app
    from infermeter.throttle.auth import exposed_scopes

    settings, resolver = throttle_settings.load(config)
    settings = throttle_settings.override(
        settings,
        host=args.host,
        port=args.port,
        storage=args.storage,
        policy_file=args.policy,
        admin_token=args.admin_token,
        fail_closed=args.fail_closed,
        metering_url=args.metering_url,
    )
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s %(message)s")
    guard_exposure(
        "throttle",
        settings.host,
        exposed_scopes(settings),
        insecure=settings.insecure or args.insecure,
        log=logging.getLogger("infermeter.throttle"),
    )
    try:
        runtime = Runtime(settings, resolver)
    except (ThrottleError, OSError) as exc:
        print(f"infermeter throttle: error: {exc}", file=sys.stderr)
        return 2
    uvicorn.run(
        create_app(runtime),
        host=settings.host,
        port=settings.port,
        log_level=args.log_level,
        access_log=False,
        proxy_headers=False,
        server_header=False,
    )
    return 0


def run_check_policy(args: argparse.Namespace, config: Config) -> int:
    from infermeter.throttle.policy_source import parse_document

    try:
        with open(args.file, encoding="utf-8") as handle:
            policy = parse_document(handle.read(), source=args.file)
    except (ThrottleError, OSError) as exc:
        print(f"{args.file}: invalid: {exc}", file=sys.stderr)
        return 2
    doc = policy.doc
    print(
        f"{args.file}: valid ({len(doc.tiers)} tiers, {len(doc.tenants)} tenants, "
        f"{len(doc.models)} models, {len(doc.pools)} pools, unit {doc.unit})"
    )
    return 0


def run_openapi(args: argparse.Namespace, config: Config) -> int:
    import json

    from infermeter.throttle.app import Runtime, build_api
    from infermeter.throttle.policy import default_policy
    from infermeter.throttle.settings import ThrottleSettings

    api = build_api(Runtime(ThrottleSettings(), policy=default_policy()), background=False)
    print(json.dumps(api.openapi(), indent=2, sort_keys=True))
    return 0


def run_nginx_config(args: argparse.Namespace, config: Config) -> int:
    from infermeter.throttle.nginx import render

    settings, _ = throttle_settings.load(config)
    try:
        text = render(args.listen, args.throttle, args.upstream, settings.api_token)
    except ValueError as exc:
        print(f"infermeter throttle: error: [throttle] api_token: {exc}", file=sys.stderr)
        return 2
    print(text)
    return 0
