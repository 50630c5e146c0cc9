#!/usr/bin/env bash
# Lints, format-checks and type-checks the code (ruff with ruff.toml, mypy with mypy.ini); installs
# ruff and mypy into the venv if they are missing. Checks only: it never reformats a file (run
# `ruff format shared workers orchestrator models` for that). Exit 1 on findings.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
PACKAGES=(shared workers orchestrator models)
if ! "$PY" -c "import ruff, mypy" 2>/dev/null; then
  echo "== installing ruff and mypy into $("$PY" -c 'import sys; print(sys.prefix)')"
  "$PY" -m pip install --disable-pip-version-check --progress-bar on ruff mypy || exit 2
fi
status=0
echo "== ruff check ${PACKAGES[*]}"
"$PY" -m ruff check --config ruff.toml "${PACKAGES[@]}" || status=1
echo "== ruff format --check ${PACKAGES[*]}"
"$PY" -m ruff format --config ruff.toml --check "${PACKAGES[@]}" || status=1
echo "== mypy ${PACKAGES[*]}"
"$PY" -m mypy --config-file mypy.ini "${PACKAGES[@]}" || status=1
exit $status
