#!/usr/bin/env bash
# Install the FinOps Foundation's focus-validator into its own virtualenv (it pins pandas and
# pandera, which must not leak into infermeter's environment). Idempotent: a stamp file records
# the installed requirement; re-running with the same requirement does nothing.
#   bash metering/focus/setup_validator.sh        -> .venv-focus/bin/focus-validator
# On Python 3.11 pip resolves focus-validator 1.0.0 (FOCUS 1.0); pandera 0.17 needs
# multimethod<2 (it imports `overload`, removed in multimethod 2). pyarrow (for Parquet input)
# must still support the numpy 1.26 that the validator's pandas pins: pyarrow<20.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${INFERMETER_FOCUS_VENV:-$ROOT/.venv-focus}"
PY="${PYTHON:-python3}"
REQ="focus-validator==1.0.0 multimethod<2 pyarrow<20"
STAMP="$VENV/.infermeter-focus-installed"
if [[ -x "$VENV/bin/focus-validator" && -f "$STAMP" && "$(cat "$STAMP")" == "$REQ" ]]; then
  exit 0
fi
printf '[setup_validator] installing %s into %s\n' "$REQ" "$VENV" >&2
"$PY" -m venv "$VENV"
"$VENV/bin/pip" install -q -U pip
# shellcheck disable=SC2086
"$VENV/bin/pip" install -q $REQ
"$VENV/bin/focus-validator" --supported-versions >/dev/null
echo "$REQ" >"$STAMP"
