from infermeter.kernel.cli import run_as_module

run_as_module(["dashboard"])
