"""``infermeter engine simulate|vllm``: the inference engines a collector sits in front of."""

from __future__ import annotations

import argparse

from infermeter.kernel.cli import optional_module

# Each module exposes register(engine_subparsers, common) adding one engine subcommand.
ENGINE_MODULES = ("infermeter.serving.simulator.cli", "infermeter.serving.vllm.cli")


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add the ``engine`` command group and every installed engine under it."""
    engine = subparsers.add_parser(
        "engine",
        help="run an inference engine (real vLLM or the vLLM-compatible simulator)",
        description="Run an inference engine: `simulate` (vLLM-compatible simulator, no GPU) "
        "or `vllm` (real vLLM, on a GPU or the CPU build).",
    )
    engine_sub = engine.add_subparsers(dest="engine", metavar="ENGINE")
    for name in ENGINE_MODULES:
        module = optional_module(name)
        if module is not None:
            module.register(engine_sub, common)
