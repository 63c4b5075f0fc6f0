"""The CPU dev install: tiny model builder and the setup script's idempotence."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from infermeter.serving.vllm import cpu as vllm_cpu
from infermeter.serving.vllm.cpu import tiny_model
from infermeter.serving.vllm.cpu.tiny_model import REQUIRED_FILES, TinySpec, is_built

BUILDER = Path(tiny_model.__file__)


def _complete_build(out: Path, spec: TinySpec) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name in REQUIRED_FILES:
        (out / name).write_text("{}")
    (out / tiny_model.MANIFEST).write_text(json.dumps({"spec": asdict(spec)}))


def test_is_built_needs_every_file_and_the_same_spec(tmp_path):
    spec = TinySpec()
    assert not is_built(tmp_path, spec)
    _complete_build(tmp_path, spec)
    assert is_built(tmp_path, spec)
    assert not is_built(tmp_path, TinySpec(hidden=256))  # another shape: rebuild
    (tmp_path / "model.safetensors").unlink()
    assert not is_built(tmp_path, spec)


def test_corrupt_manifest_means_not_built(tmp_path):
    _complete_build(tmp_path, TinySpec())
    (tmp_path / tiny_model.MANIFEST).write_text("{not json")
    assert not is_built(tmp_path, TinySpec())


def test_tokenizer_corpus_is_local_python_source():
    files = tiny_model.corpus(limit=5)
    assert len(files) == 5
    assert all(f.endswith(".py") and Path(f).is_file() for f in files)


@pytest.mark.vllm
def test_builder_makes_a_servable_model_offline(tmp_path):
    """Runs the builder with the CPU venv (torch, tokenizers, transformers), small shape."""
    python = str(vllm_cpu.require_install().python)
    out = tmp_path / "m"
    args = [python, str(BUILDER), str(out), "--vocab", "600", "--hidden", "32", "--layers", "1"]
    args += ["--corpus-files", "20"]
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    first = subprocess.run(args, capture_output=True, text=True, timeout=180, env=env)
    assert first.returncode == 0, first.stderr
    assert "built tiny Llama" in first.stdout
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert (config["hidden_size"], config["num_hidden_layers"]) == (32, 1)
    tokenizer_config = json.loads((out / "tokenizer_config.json").read_text())
    assert tokenizer_config["chat_template"] == tiny_model.CHAT_TEMPLATE
    manifest = json.loads((out / tiny_model.MANIFEST).read_text())
    assert manifest["vocab"] == config["vocab_size"] <= 600
    again = subprocess.run(args, capture_output=True, text=True, timeout=60, env=env)
    assert again.returncode == 0
    assert "already built" in again.stdout


@pytest.mark.vllm
def test_setup_script_is_a_no_op_when_done():
    vllm_cpu.require_install()  # made by ./dev.sh test; fails with instructions otherwise
    result = subprocess.run(
        ["bash", str(vllm_cpu.SETUP_SCRIPT)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "nothing to do" in result.stdout
    assert "pip install" not in result.stdout


def test_setup_script_is_valid_bash():
    result = subprocess.run(["bash", "-n", str(vllm_cpu.SETUP_SCRIPT)], capture_output=True)
    assert result.returncode == 0, result.stderr


def test_builder_imports_without_torch():
    """The project's own venv has no torch: the module must import (torch only at build)."""
    code = "import infermeter.serving.vllm.cpu.tiny_model as m; print(m.TinySpec().vocab)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "4096", result.stderr
