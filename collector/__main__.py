from serving.cli import run_as_module

run_as_module(["collector"])
