"""The ``infermeter`` command line: one console script, one subcommand per service.

Each package owns its subcommands in a module that exposes ``register(subparsers, common)``;
this module only discovers those modules, parses arguments and maps errors to exit codes.
Subcommands (stable names): ``up``, ``engine simulate``, ``engine vllm``, ``collector``,
``metering serve|report|export-focus``, ``throttle serve``, ``gateway``, ``dashboard``.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Protocol

from serving.errors import ServingError
from serving.settings import Config, load_config

# Modules that register subcommands, in the order they appear in --help.
COMMAND_MODULES = (
    "serving.up_cli",
    "serving.engine_cli",
    "collector.cli",
    "metering.cli",
    "throttle.cli",
    "serving.gateway_cli",
    "dashboards.cli",
)

Handler = Callable[[argparse.Namespace, Config], int]


class _Registrar(Protocol):
    def __call__(
        self, subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser
    ) -> None: ...


def common_options() -> argparse.ArgumentParser:
    """Options every subcommand accepts."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        metavar="FILE",
        default=None,
        help="TOML configuration file (default: $INFERMETER_CONFIG, else ./infermeter.toml "
        "if present); INFERMETER__<TABLE>__<KEY> environment variables override it",
    )
    return common


def optional_module(name: str) -> ModuleType | None:
    """Import ``name`` if it (and its parent packages) exist, else return None."""
    try:
        if importlib.util.find_spec(name) is None:
            return None
    except ModuleNotFoundError:
        return None
    return importlib.import_module(name)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every installed subcommand."""
    common = common_options()
    parser = argparse.ArgumentParser(
        prog="infermeter",
        description="Observability and FinOps for self-hosted LLM inference.",
        parents=[common],
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        module = optional_module(name)
        if module is None:
            continue
        register: _Registrar = module.register
        register(subparsers, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``infermeter`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    func: Handler | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        config = load_config(args.config)
        return func(args, config)
    except ServingError as exc:
        print(f"infermeter: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def run_as_module(prefix: Sequence[str]) -> None:
    """Run ``python -m <package>`` as ``infermeter <prefix...> <args>``."""
    raise SystemExit(main([*prefix, *sys.argv[1:]]))


if __name__ == "__main__":
    raise SystemExit(main())
