#!/usr/bin/env bash
# Installs everything, lints, and runs the whole test suite (what CI runs): tests/unit (no
# services, no ../shared) first, then tests/integration (Redis, moto_server, worker processes,
# the real photos in ../shared/faces). Extra arguments go to both pytest runs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
bash scripts/services.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1
export VEIL_FACES_DIR="${VEIL_FACES_DIR:-$(cd .. && pwd)/shared/faces}"
bash scripts/lint.sh
echo "== unit tests"
python -m pytest -q --durations=15 tests/unit "$@"
echo "== integration tests"
python -m pytest -q --durations=30 tests/integration "$@"
