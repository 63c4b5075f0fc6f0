"""``infermeter gateway``: the OpenAI-compatible front door (keys, throttle, routing, jobs, cache).

Configuration is the ``[gateway]`` table (pools under ``[gateway.models."<model>"]``, cache
under ``[gateway.cache]``, jobs under ``[gateway.jobs]``) and API keys under the shared
``[tenancy.keys]`` table (SHA-256 of each key; ``infermeter gateway hash-key KEY`` prints
it). Flags override the file. ``infermeter gateway openapi`` prints the OpenAPI document.
"""

from __future__ import annotations

import argparse
import json
import math
import socket
from typing import Any

from infermeter.kernel.settings import Config, section
from infermeter.kernel.tenancy import TenantResolver, hash_key, tenancy_from_config
from infermeter.serving.gateway.settings import GatewaySettings

_FLAGS: tuple[tuple[str, type, str], ...] = (
    ("host", str, "address to bind (default 127.0.0.1)"),
    ("port", int, "port to bind (default 8080)"),
    ("throttle_url", str, "throttle base URL, e.g. http://127.0.0.1:8300 (empty: no limits)"),
    ("throttle_timeout_s", float, "seconds to wait for an admission decision (default 0.5)"),
    ("throttle_failure_mode", str, "when the throttle is unreachable: open or closed"),
    ("throttle_token", str, "the throttle's decisions token (prefer throttle_token_file)"),
    ("metering_url", str, "metering base URL for cache-hit/managed/throttled usage records"),
    ("metering_token", str, "bearer token for metering"),
    ("spool_dir", str, "on-disk spool of gateway-made usage records (default .data/gateway-spool)"),
    ("max_jobs_per_tenant", int, "async jobs one tenant may have queued or running (default 100)"),
    ("connect_retries", int, "other replicas tried when connecting fails (default 2)"),
    (
        "shutdown_grace_s",
        float,
        "on SIGTERM, seconds requests in flight may take to finish (default 5)",
    ),
)


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add ``gateway`` (serve) and ``gateway hash-key``."""
    parser = subparsers.add_parser(
        "gateway",
        parents=[common],
        help="OpenAI-compatible gateway: API keys, throttle, routing, async jobs, cache",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for name, kind, text in _FLAGS:
        parser.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, help=text)
    parser.add_argument(
        "--jobs-queue",
        dest="jobs_queue",
        help="job queue URI: memory:// (default) or redis://host:port/db?prefix=NAME",
    )
    parser.add_argument(
        "--cache",
        dest="cache_enabled",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="enable the semantic cache ([gateway.cache] enabled)",
    )
    parser.add_argument(
        "--no-workers",
        dest="no_workers",
        action="store_true",
        help="accept jobs but run no job workers in this process",
    )
    parser.add_argument(
        "--log-level", default="warning", help="uvicorn log level (default warning)"
    )
    parser.set_defaults(func=run)
    sub = parser.add_subparsers(dest="gateway_command", metavar="SUBCOMMAND")
    hk = sub.add_parser(
        "hash-key",
        parents=[common],
        help="print the SHA-256 digest to store under [tenancy.keys] for an API key",
    )
    hk.add_argument("key", help="the clear-text API key")
    hk.set_defaults(func=run_hash_key)
    spec = sub.add_parser(
        "openapi",
        parents=[common],
        help="print the OpenAPI document served at /openapi.json (JSON)",
        description="Print the gateway's OpenAPI 3.1 document for the models the [gateway] "
        "table routes, without a server.",
    )
    spec.set_defaults(func=run_openapi)


def settings_from(args: argparse.Namespace, config: Config) -> GatewaySettings:
    """The ``[gateway]`` table with command-line overrides."""
    base = section(config, "gateway", GatewaySettings)
    data: dict[str, Any] = base.model_dump()
    for name, _, _ in _FLAGS:
        value = getattr(args, name, None)
        if value is not None:
            data[name] = value
    if getattr(args, "jobs_queue", None):
        data["jobs"]["queue"] = args.jobs_queue
    if getattr(args, "cache_enabled", None) is not None:
        data["cache"]["enabled"] = args.cache_enabled
    return GatewaySettings.model_validate(data)


def resolver_from(config: Config) -> tuple[TenantResolver, str]:
    """Tenant attribution and the shared secret from the ``[tenancy]`` table."""
    resolver, tenancy = tenancy_from_config(config)
    return resolver, tenancy.shared_secret


def run(args: argparse.Namespace, config: Config) -> int:
    """Serve until interrupted."""
    import uvicorn

    from infermeter.serving.gateway.app import GatewayApp

    settings = settings_from(args, config)
    resolver, secret = resolver_from(config)
    app = GatewayApp(settings, resolver, shared_secret=secret, run_workers=not args.no_workers)
    server_config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=args.log_level,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=math.ceil(settings.shutdown_grace_s),
    )

    class GatewayServer(uvicorn.Server):
        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            app.begin_shutdown()  # event streams end now; requests in flight may finish
            await super().shutdown(sockets)

    GatewayServer(server_config).run()
    return 0


def run_openapi(args: argparse.Namespace, config: Config) -> int:
    """Print the document ``GET /openapi.json`` serves."""
    from infermeter.serving.gateway.openapi import gateway_openapi

    settings = settings_from(args, config)
    print(json.dumps(gateway_openapi(sorted(settings.models)), indent=2, sort_keys=True))
    return 0


def run_hash_key(args: argparse.Namespace, config: Config) -> int:
    """Print the stored form of an API key."""
    print(hash_key(args.key))
    return 0
