"""``infermeter engine simulate|vllm``: the inference engines a collector sits in front of."""

from __future__ import annotations

import argparse

from infermeter.kernel.cli import register_installed

# (engine, module exposing register(engine_subparsers, common), extra it needs)
ENGINE_MODULES = (
    ("simulate", "infermeter.serving.simulator.cli", "simulator"),
    ("vllm", "infermeter.serving.vllm.cli", "vllm"),
)


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add the ``engine`` command group and every installed engine under it."""
    engine = subparsers.add_parser(
        "engine",
        help="run an inference engine (real vLLM or the vLLM-compatible simulator)",
        description="Run an inference engine: `simulate` (vLLM-compatible simulator, no GPU) "
        "or `vllm` (real vLLM, on a GPU or the CPU build).",
    )
    engine_sub = engine.add_subparsers(dest="engine", metavar="ENGINE")
    register_installed(engine_sub, common, ENGINE_MODULES)
