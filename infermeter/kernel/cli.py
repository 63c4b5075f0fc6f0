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

from infermeter.kernel.errors import ConfigError, InfermeterError
from infermeter.kernel.settings import Config, load_config

# (command, module that registers it, extra that brings what the module imports), in the
# order they appear in --help; the extra is named by `pip install "infermeter[EXTRA]"`.
COMMAND_MODULES = (
    ("up", "infermeter.stack.up_cli", "all"),
    ("engine", "infermeter.serving.engine_cli", "simulator"),
    ("collector", "infermeter.collector.cli", "collector"),
    ("metering", "infermeter.metering.cli", "metering"),
    ("throttle", "infermeter.throttle.cli", "throttle"),
    ("gateway", "infermeter.serving.gateway.cli", "gateway"),
    ("dashboard", "infermeter.dashboards.cli", "dashboards"),
)

Handler = Callable[[argparse.Namespace, Config], int]


class _Registrar(Protocol):
    def __call__(
        self, subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser
    ) -> None: ...


def common_options(*, top: bool = False) -> argparse.ArgumentParser:
    """Options every subcommand accepts, before or after the subcommand's name.

    Only the top-level parser sets defaults: a subcommand's parser that did not see the
    option leaves what the top level parsed alone (``infermeter --config X metering serve``
    and ``infermeter metering serve --config X`` read the same file).
    """
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        metavar="FILE",
        default=None if top else argparse.SUPPRESS,
        help="TOML configuration file (default: $INFERMETER_CONFIG, else ./infermeter.toml "
        "if present); INFERMETER__<TABLE>__<KEY> environment variables override it",
    )
    common.add_argument(
        "--insecure",
        action="store_true",
        default=False if top else argparse.SUPPRESS,
        help="let a service listen off loopback with a scope that has no token (it warns at "
        "every start); same as `insecure = true` in its table",
    )
    return common


def optional_module(name: str) -> ModuleType | None:
    """Import ``name`` if it (and its parent packages) exist, else return None.

    A module whose third-party dependencies are not installed (a per-component install
    without that component's extra) raises :class:`MissingExtra`.
    """
    try:
        if importlib.util.find_spec(name) is None:
            return None
    except ModuleNotFoundError:
        return None
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] == "infermeter":
            raise
        raise MissingExtra(name, exc.name or "?") from exc


class MissingExtra(ConfigError):
    """A command's module imports a distribution that this install does not have."""

    def __init__(self, module: str, missing: str) -> None:
        self.module = module
        self.missing = missing
        super().__init__(f"{module} needs the Python module {missing!r}, which is not installed")


def _unavailable(
    subparsers: argparse._SubParsersAction, command: str, extra: str, missing: str
) -> None:
    """Register ``command`` as a stub that says which extra to install."""
    hint = f'pip install "infermeter[{extra}]"'
    stub = subparsers.add_parser(
        # prefix_chars NUL: every argument, flags included, lands in `rest` unparsed
        command,
        help=f"(not installed: {hint})",
        add_help=False,
        prefix_chars="\0",
    )
    stub.add_argument("rest", nargs=argparse.REMAINDER)

    def refuse(_: argparse.Namespace, __: Config) -> int:
        raise ConfigError(f"`infermeter {command}` needs {missing!r}: {hint}")

    stub.set_defaults(func=refuse)


def register_installed(
    subparsers: argparse._SubParsersAction,
    common: argparse.ArgumentParser,
    commands: Sequence[tuple[str, str, str]],
) -> None:
    """Register each ``(command, module, extra)`` whose module is installed; a module whose
    dependencies are missing becomes a stub that names the extra to install."""
    for command, name, extra in commands:
        try:
            module = optional_module(name)
        except MissingExtra as exc:
            _unavailable(subparsers, command, extra, exc.missing)
            continue
        if module is None:
            continue
        register: _Registrar = module.register
        register(subparsers, common)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every installed subcommand."""
    common = common_options()
    parser = argparse.ArgumentParser(
        prog="infermeter",
        description="Observability and FinOps for self-hosted LLM inference.",
        parents=[common_options(top=True)],
    )
    register_installed(parser.add_subparsers(dest="command", metavar="COMMAND"), common,
                       COMMAND_MODULES)  # fmt: skip
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
    except InfermeterError as exc:
        print(f"infermeter: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def run_as_module(prefix: Sequence[str]) -> None:
    """Run ``python -m <package>`` as ``infermeter <prefix...> <args>``."""
    raise SystemExit(main([*prefix, *sys.argv[1:]]))


if __name__ == "__main__":
    raise SystemExit(main())
