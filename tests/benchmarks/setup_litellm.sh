#!/usr/bin/env bash
# Create LiteLLM's proxy in its own virtualenv (never the project venv) for the collector
# overhead benchmark. Idempotent. Version per shared FACTS.md: 1.101+ needs a certifi the
# registry here does not serve.
set -euo pipefail
VENV="${LITELLM_VENV:-$HOME/.cache/infermeter/litellm-venv}"
VERSION="${LITELLM_VERSION:-1.100.0}"
if [ -x "$VENV/bin/litellm" ] && "$VENV/bin/python" -c "import litellm" 2>/dev/null; then
  echo "litellm already in $VENV"
  exit 0
fi
mkdir -p "$(dirname "$VENV")"
python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --upgrade pip
"$VENV/bin/pip" install --quiet "litellm[proxy]==$VERSION"
"$VENV/bin/litellm" --version
